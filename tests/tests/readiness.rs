//! `/healthz` and `/readyz`: ready only when Postgres (with migrations), Redis and a worker
//! round trip all answer; otherwise 503 naming the failing check.

use taskfleet_tests::TestEnv;

#[tokio::test]
async fn readyz_names_the_failing_check() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_READY_TIMEOUT_MS", "1500")])
        .await;
    let get = |path: &'static str| {
        let api = api.clone();
        async move {
            let resp = api.http.get(api.url(path)).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    // No worker yet: the round trip fails, the rest pass.
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    assert!(
        body["checks"]["queue_round_trip"]
            .as_str()
            .unwrap()
            .contains("no worker"),
        "{body}"
    );

    env.start_worker(&[]);
    let mut ready = None;
    for _ in 0..40 {
        let (status, body) = get("/readyz").await;
        if status == 200 {
            ready = Some(body);
            break;
        }
    }
    let body = ready.expect("ready once a worker runs");
    assert_eq!(body["status"], "ready");

    // A ledger whose migrations are not all applied is not ready.
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&env.pool)
        .await
        .unwrap();
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["postgres"], "migrations are not all applied");
    env.finish().await;
}
