//! The API's contract for callers: authentication, tenant isolation, validation errors,
//! size limits, batches, listing with filters and cursors. No worker runs here, so accepted
//! jobs stay queued.

use std::time::Duration;

use taskfleet_tests::{TestEnv, json, wait_until};

#[tokio::test]
async fn requests_need_a_valid_key_and_see_only_their_tenant() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let acme = env.create_key("acme");
    let globex = env.create_key("globex");

    let resp = api.http.get(api.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(body["message"].as_str().unwrap().contains("Bearer"));

    let (status, body) = api.get("tfk_0000", "/v1/jobs").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = api.get("not-a-key", "/v1/jobs").await;
    assert_eq!(status, 401);

    let id = api
        .submit(&acme, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    let (status, job) = api.get(&acme, &format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(job["state"], "queued");
    assert_eq!(job["queue"], "executor");

    // Another tenant's job does not exist for globex, not even in listings.
    let (status, body) = api.get(&globex, &format!("/v1/jobs/{id}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (_, page) = api.get(&globex, "/v1/jobs").await;
    assert_eq!(page["jobs"], json!([]));
    let (status, body) = api
        .get(&acme, &format!("/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404, "{body}");
    env.finish().await;
}

#[tokio::test]
async fn bad_payloads_get_422_naming_the_problem() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_MAX_BODY_BYTES", "65536")])
        .await;
    let key = env.create_key("acme");
    let cases = [
        (
            json!({"kind": "email.send"}),
            "unknown variant `email.send`, expected one of `ingest.connector`",
        ),
        (json!({"tool": "noop"}), "missing field `kind`"),
        (json!({"kind": "executor.run"}), "missing field `tool`"),
        (
            json!({"kind": "executor.run", "tool": 5}),
            "unknown tool `5`; the tools are: noop",
        ),
        (
            json!({"kind": "executor.run", "tool": "rm -rf"}),
            "unknown tool `rm -rf`; the tools are: noop, sleep, markdown.format",
        ),
        (json!({"kind": "executor.run", "tool": "sleep"}), "args.ms"),
        (
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 99_999_999}}),
            "most a sleep",
        ),
        (
            json!({"kind": "executor.run", "tool": "markdown.format"}),
            "needs `input`",
        ),
        (
            json!({"kind": "executor.run", "tool": "noop", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"kind": "executor.run", "tool": "noop", "priority": 1000}),
            "priority",
        ),
        (
            json!({"kind": "embed.items", "item_ids": []}),
            "at least one task",
        ),
        (json!({"kind": "agent.chat", "message": " "}), "empty"),
        (json!({"kind": "agent.chat", "message": ""}), "message"),
        (json!({"kind": "embed.items"}), "missing field `item_ids`"),
    ];
    for (payload, expected) in cases {
        let (status, body) = api.post(&key, "/v1/jobs", &payload).await;
        assert_eq!(status, 422, "{payload} -> {body}");
        assert_eq!(body["error"], "invalid_payload", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{payload}: `{message}` lacks `{expected}`"
        );
    }

    let resp = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);

    let huge = "x".repeat(70_000);
    let (status, body) = api
        .post(
            &key,
            "/v1/jobs",
            &json!({"kind": "executor.run", "tool": "markdown.format", "input": huge}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );

    // Nothing invalid was recorded.
    assert_eq!(env.count_state("queued").await, 0);
    env.finish().await;
}

#[tokio::test]
async fn batches_are_all_or_nothing_and_listings_page_newest_first() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");

    let bad = json!({"jobs": [
        {"kind": "executor.run", "tool": "noop"},
        {"kind": "executor.run", "tool": "sleep"}
    ]});
    let (status, body) = api.post(&key, "/v1/jobs/batch", &bad).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("jobs[1]:"),
        "{body}"
    );
    assert_eq!(env.count_state("queued").await, 0);

    let too_many: Vec<_> = (0..1001)
        .map(|_| json!({"kind": "executor.run", "tool": "noop"}))
        .collect();
    let (status, body) = api
        .post(&key, "/v1/jobs/batch", &json!({"jobs": too_many}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api.post(&key, "/v1/jobs/batch", &json!({"jobs": []})).await;
    assert_eq!(status, 422);

    let jobs: Vec<_> = (0..1000)
        .map(|i| {
            if i % 10 == 0 {
                json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": i}})
            } else {
                json!({"kind": "executor.run", "tool": "noop", "priority": 1})
            }
        })
        .collect();
    let body = api.submit_batch(&key, &jobs).await;
    let created = body["jobs"].as_array().unwrap();
    assert_eq!(created.len(), 1000);
    assert_eq!(
        created[10]["payload"]["args"]["ms"], 10,
        "answers keep submission order"
    );

    // Page through everything newest first with the cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=300".to_owned();
    loop {
        let (status, page) = api.get(&key, &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/jobs?limit=300&cursor={cursor}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = created
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    expected.reverse();
    assert_eq!(seen, expected);

    let (_, page) = api
        .get(
            &key,
            "/v1/jobs?limit=500&state=queued&queue=executor&kind=executor.run",
        )
        .await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 500);
    let (_, page) = api.get(&key, "/v1/jobs?state=succeeded").await;
    assert_eq!(page["jobs"], json!([]));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, page) = api
        .get(
            &key,
            &format!("/v1/jobs?created_after={}", urlencode(&future)),
        )
        .await;
    assert_eq!((status, page["jobs"].clone()), (200, json!([])));
    let (status, page) = api
        .get(
            &key,
            &format!("/v1/jobs?limit=5&created_before={}", urlencode(&future)),
        )
        .await;
    assert_eq!((status, page["jobs"].as_array().unwrap().len()), (200, 5));

    let (status, body) = api.get(&key, "/v1/jobs?state=bogus").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request");
    let (status, _) = api.get(&key, "/v1/jobs?limit=0").await;
    assert_eq!(status, 400);
    let (status, body) = api.get(&key, "/v1/jobs?cursor=xyz").await;
    assert_eq!(status, 422, "{body}");
    env.finish().await;
}

#[tokio::test]
async fn openapi_document_and_swagger_ui_are_served() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let spec: serde_json::Value = api
        .http
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_spec = &spec["components"]["schemas"]["JobSpec"];
    assert_eq!(
        job_spec["discriminator"]["propertyName"], "kind",
        "{job_spec}"
    );
    let mapping = job_spec["discriminator"]["mapping"].as_object().unwrap();
    for kind in taskfleet_jobs::spec::KINDS {
        assert!(
            mapping.contains_key(kind),
            "{kind} missing from the OpenAPI union"
        );
    }
    assert!(spec["paths"]["/v1/jobs/batch"]["post"].is_object());
    // Tools are named by string (built-ins or the operator's allow list, listed at
    // /v1/executor/tools); a command's files are a map of path to content.
    assert!(spec["paths"]["/v1/executor/tools"]["get"].is_object());
    let run = &spec["components"]["schemas"]["ExecutorRun"]["properties"];
    assert_eq!(run["tool"]["type"], "string", "{run}");
    assert_eq!(run["files"]["type"], "object", "{run}");
    assert_eq!(
        run["files"]["additionalProperties"]["type"], "string",
        "{run}"
    );
    let docs = api.http.get(api.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let docs = docs.text().await.unwrap();
    assert!(docs.contains("swagger"));
    // The document the UI shows is the one served, links included.
    assert!(
        docs.contains(r#""operationId":"getJob","parameters":{"id":"$response.body#/id"}"#),
        "the Swagger UI lacks the links"
    );
    env.finish().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread")]
async fn single_submissions_of_two_tenants_written_together_stay_each_tenants_own() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let keys = [env.create_key("acme"), env.create_key("globex")];
    // Interleaved and concurrent, so the API's group commit writes both tenants' jobs in the
    // same statements: rounds go on until one statement (one `created_at`, the transaction's
    // time) held jobs of both.
    let (mut submitted, mut mixed) = (Vec::<(usize, uuid::Uuid)>::new(), 0_i64);
    // At most 10 rounds: 500 jobs a tenant, one page.
    for _round in 0..10 {
        let mut sent = tokio::task::JoinSet::new();
        for n in 0..100 {
            let (api, key) = (api.clone(), keys[n % 2].clone());
            sent.spawn(async move {
                let job = json!({"kind": "executor.run", "tool": "noop"});
                (n % 2, api.submit(&key, job).await)
            });
        }
        submitted.extend(sent.join_all().await);
        mixed = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT created_at FROM jobs GROUP BY created_at
                                   HAVING count(DISTINCT tenant_id) > 1) AS shared",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if mixed > 0 {
            break;
        }
    }
    assert!(
        mixed > 0,
        "no statement held both tenants' jobs in 10 rounds"
    );
    for (tenant, key) in keys.iter().enumerate() {
        let (status, page) = api.get(key, "/v1/jobs?limit=500").await;
        assert_eq!(status, 200, "{page}");
        let mut listed: Vec<&str> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap())
            .collect();
        let mut own: Vec<String> = submitted
            .iter()
            .filter(|(owner, _)| *owner == tenant)
            .map(|(_, id)| id.to_string())
            .collect();
        listed.sort();
        own.sort();
        assert_eq!(listed, own, "tenant {tenant} lists exactly its own jobs");
        let (theirs, _) = submitted
            .iter()
            .find(|(owner, _)| *owner != tenant)
            .unwrap();
        let (_, other_id) = submitted.iter().find(|(owner, _)| owner == theirs).unwrap();
        let (status, _) = api.get(key, &format!("/v1/jobs/{other_id}")).await;
        assert_eq!(status, 404, "another tenant's job is not found");
    }
    assert_eq!(
        env.count_events("job_enqueued").await,
        submitted.len() as i64
    );
    env.finish().await;
}

/// `keys revoke` ends a key: at once on an API that looks every key up, within
/// `TASKFLEET_API_KEY_CACHE_SECS` on one that remembers keys. A shown prefix revokes only
/// when it names one key, and the tenant's other keys keep working.
#[tokio::test]
async fn a_revoked_key_is_refused_once_no_api_remembers_it() {
    let mut env = TestEnv::new().await;
    let remembers = env
        .start_api(&[("TASKFLEET_API_KEY_CACHE_SECS", "1")])
        .await;
    let looks_up = env
        .start_api(&[("TASKFLEET_API_KEY_CACHE_SECS", "0")])
        .await;
    let key = env.create_key("acme");
    let other = env.create_key("acme");
    for api in [&remembers, &looks_up] {
        assert_eq!(api.get(&key, "/v1/jobs").await.0, 200);
    }

    let out = env.api_command(&["keys", "revoke", &key[..12]]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&key[..12]) && said.contains("acme"), "{said}");
    assert!(
        !said.contains(&key),
        "the whole key is never printed: {said}"
    );
    assert_eq!(looks_up.get(&key, "/v1/jobs").await.0, 401);
    wait_until(
        Duration::from_secs(5),
        "the API that remembers keys refuses the revoked one",
        || async { remembers.get(&key, "/v1/jobs").await.0 == 401 },
    )
    .await;
    for api in [&remembers, &looks_up] {
        assert_eq!(api.get(&other, "/v1/jobs").await.0, 200);
    }

    // Revoked already: nothing to revoke, and the command says so.
    let out = env.api_command(&["keys", "revoke", &key]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no unrevoked API key matches"), "{said}");
    assert!(
        !said.contains(&key),
        "the whole key is never printed: {said}"
    );

    // A prefix two keys share revokes neither.
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix, role)
         SELECT gen_random_uuid(), tenant_id, '\\x00', key_prefix, role FROM api_keys
         WHERE key_prefix = $1",
    )
    .bind(&other[..12])
    .execute(&env.pool)
    .await
    .unwrap();
    let out = env.api_command(&["keys", "revoke", &other[..12]]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("give the whole key"), "{said}");
    assert_eq!(looks_up.get(&other, "/v1/jobs").await.0, 200);

    // The whole key names it.
    let out = env.api_command(&["keys", "revoke", &other]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(looks_up.get(&other, "/v1/jobs").await.0, 401);
    env.finish().await;
}
