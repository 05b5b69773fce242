//! Each API key has a quota per class of route (submit, read, stream): answers carry the
//! `RateLimit-*` headers, and a request past the quota is a 429 with `Retry-After`, while other
//! keys and other classes go on.

use std::time::Duration;

use reqwest::{Response, header::HeaderMap};
use taskfleet_tests::{TestEnv, json};

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
