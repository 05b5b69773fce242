//! Each API key has a quota per class of route (submit, read, stream): answers carry the
//! `RateLimit-*` headers, and a request past the quota is a 429 with `Retry-After`, while other
//! keys and other classes go on. An operator may give a tenant's keys limits of their own.

use std::time::Duration;

use reqwest::{Method, Response, header::HeaderMap};
use serde_json::Value;
use taskfleet_tests::{Api, TestEnv, json, wait_until};

fn header(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn status_and_headers(resp: Response) -> (u16, HeaderMap, serde_json::Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or_default();
    (status, headers, body)
}

#[tokio::test]
async fn a_key_past_its_quota_is_told_when_to_come_back() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[
            ("TASKFLEET_RATE_LIMIT_SUBMIT", "1/s:3"),
            ("TASKFLEET_RATE_LIMIT_READ", "1/s:5"),
            ("TASKFLEET_RATE_LIMIT_STREAM", "1/m:1"),
        ])
        .await;
    let (acme, globex) = (env.create_key("acme"), env.create_key("globex"));
    let submit = |key: &str| {
        api.http
            .post(api.url("/v1/jobs"))
            .bearer_auth(key)
            .json(&json!({"kind": "executor.run", "tool": "noop"}))
            .send()
    };

    // A burst of three submissions, counted down in the headers.
    for remaining in [2, 1, 0] {
        let (status, headers, body) = status_and_headers(submit(&acme).await.unwrap()).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(header(&headers, "ratelimit-limit"), 3);
        assert_eq!(header(&headers, "ratelimit-remaining"), remaining);
        assert!(header(&headers, "ratelimit-reset") <= 3);
    }
    let (status, headers, body) = status_and_headers(submit(&acme).await.unwrap()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("submit requests"),
        "{body}"
    );
    assert_eq!(header(&headers, "retry-after"), 1);
    assert_eq!(header(&headers, "ratelimit-remaining"), 0);
    assert_eq!(
        env.count_state("queued").await + env.count_state("running").await,
        3
    );
    // Another spelling of the same key, which authenticates just the same, is the same key
    // to the limiter.
    for spelling in [format!("bearer {acme}"), format!("Bearer    {acme}")] {
        let resp = api
            .http
            .post(api.url("/v1/jobs"))
            .header("authorization", spelling)
            .json(&json!({"kind": "executor.run", "tool": "noop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
    }

    // Another key, and another class of the same key, are not held back.
    let (status, _, _) = status_and_headers(submit(&globex).await.unwrap()).await;
    assert_eq!(status, 201);
    let read = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(header(read.headers(), "ratelimit-limit"), 5);

    // Once Retry-After has passed, the key may submit again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = status_and_headers(submit(&acme).await.unwrap()).await;
    assert_eq!(status, 201, "{body}");

    // Reads run out on their own quota.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = api
            .http
            .get(api.url("/v1/queues"))
            .bearer_auth(&acme)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // Opening streams has a quota of its own.
    let open = || {
        api.http
            .get(api.url("/v1/events"))
            .bearer_auth(&globex)
            .header("accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = open().await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(header(second.headers(), "retry-after") > 1);

    // What is not a tenant's route is never limited: health, metrics, documents.
    for path in ["/healthz", "/openapi.json", "/metrics"] {
        for _ in 0..10 {
            let resp = api
                .http
                .get(api.url(path))
                .bearer_auth(&acme)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            assert!(resp.headers().get("ratelimit-limit").is_none(), "{path}");
        }
    }
    drop(first);
    env.finish().await;
}

/// An operator's `PUT /v1/tenants/{tenant}/rate-limits`.
async fn put_limits(api: &Api, key: &str, tenant: &str, limits: Value) -> (u16, Value) {
    let path = format!("/v1/tenants/{tenant}/rate-limits");
    api.call(Method::PUT, key, &path, Some(&limits)).await
}

/// The `RateLimit-Limit` of a read by `key`.
async fn read_limit(api: &Api, key: &str) -> u64 {
    let resp = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    header(resp.headers(), "ratelimit-limit")
}

#[tokio::test]
async fn an_operator_gives_one_tenant_more_room_and_another_less() {
    let mut env = TestEnv::new().await;
    // Slow rates, so no submission comes back during the test: only the bursts count.
    let fleet = [
        ("TASKFLEET_RATE_LIMIT_SUBMIT", "1/m:4"),
        ("TASKFLEET_RATE_LIMIT_READ", "1000/s:1000"),
    ];
    let api = env.start_api(&fleet).await;
    // A second replica, which hears of the operator's changes from Postgres only.
    let replica = env.start_api(&fleet).await;
    let (acme, globex) = (env.create_key("acme"), env.create_key("globex"));
    let operator = env.create_operator_key("ops");

    // `off` lifts a limit: the operator makes more changes below than a burst of 4 allows.
    let (status, body) = put_limits(&api, &operator, "ops", json!({"submit": "off"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["submit"],
        json!({"override": "off", "effective": "off"})
    );

    // A tenant that exists, limits that read as limits.
    let (status, body) = put_limits(&api, &operator, "nobody", json!({"read": "1/s"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = put_limits(&api, &operator, "acme", json!({"stream": "lots"})).await;
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("`stream`") && message.contains("`lots`"),
        "{body}"
    );

    // acme may submit twice the fleet's burst of 4, globex half of it.
    let raised = json!({"submit": "1/m:8", "read": "1000/s:2000"});
    let (status, body) = put_limits(&api, &operator, "acme", raised).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(
        body["submit"],
        json!({"override": "1/m:8", "effective": "1/m:8"})
    );
    assert_eq!(
        body["stream"],
        json!({"override": null, "effective": "off"})
    );
    let (status, body) = put_limits(&api, &operator, "globex", json!({"submit": "1/m:2"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.get(&operator, "/v1/tenants/globex/rate-limits").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["submit"],
        json!({"override": "1/m:2", "effective": "1/m:2"})
    );
    assert_eq!(
        body["read"],
        json!({"override": null, "effective": "1000/s:1000"})
    );

    // A key's first request, counted against the fleet's limits, tells the API its tenant.
    assert_eq!(read_limit(&api, &acme).await, 1000);
    assert_eq!(read_limit(&api, &acme).await, 2000);
    assert_eq!(read_limit(&api, &globex).await, 1000);
    let submit = |key: &str| {
        api.http
            .post(api.url("/v1/jobs"))
            .bearer_auth(key)
            .json(&json!({"kind": "executor.run", "tool": "noop"}))
            .send()
    };
    for remaining in (0..8).rev() {
        let (status, headers, body) = status_and_headers(submit(&acme).await.unwrap()).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(header(&headers, "ratelimit-limit"), 8);
        assert_eq!(header(&headers, "ratelimit-remaining"), remaining);
    }
    let (status, headers, body) = status_and_headers(submit(&acme).await.unwrap()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(header(&headers, "ratelimit-limit"), 8);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, headers, body) = status_and_headers(submit(&globex).await.unwrap()).await;
        assert_eq!(header(&headers, "ratelimit-limit"), 2, "{body}");
        if status == 429 {
            assert_eq!(body["error"], "rate_limited", "{body}");
            assert!((55..=60).contains(&header(&headers, "retry-after")));
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [201, 201, 429, 429, 429]);

    // The other replica reads the limits from Postgres within its refresh.
    wait_until(
        Duration::from_secs(10),
        "the replica holds acme's keys to acme's limits",
        || async { read_limit(&replica, &acme).await == 2000 },
    )
    .await;

    // Cleared, a class is back on the fleet's limit: at once where the change was made, within
    // a refresh elsewhere, and no refresh brings the old limit back.
    let (status, body) = put_limits(&api, &operator, "globex", json!({"submit": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["submit"],
        json!({"override": null, "effective": "1/m:4"})
    );
    let (status, body) = put_limits(&api, &operator, "acme", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(read_limit(&api, &acme).await, 1000);
    // Past a refresh (every 5 s) of both replicas.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(read_limit(&replica, &acme).await, 1000);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, headers, body) = status_and_headers(submit(&globex).await.unwrap()).await;
        assert_eq!(header(&headers, "ratelimit-limit"), 4, "{body}");
        statuses.push(status);
    }
    assert_eq!(statuses, [201, 201, 201, 201, 429]);
    let (_, body) = api.get(&operator, "/v1/tenants/globex/rate-limits").await;
    assert_eq!(body["submit"]["override"], Value::Null, "{body}");

    // Operators only.
    let (status, body) = put_limits(&api, &acme, "acme", json!({"submit": "100/s"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = api.get(&acme, "/v1/tenants/acme/rate-limits").await;
    assert_eq!(status, 403, "{body}");
    env.finish().await;
}
