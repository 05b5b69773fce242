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

/// A build that does not know a migration the database has (an older build started after an
/// upgrade) stops and says which, instead of waiting forever as if Postgres were down.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_older_than_its_database_stops_and_says_why() {
    let mut env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from a newer build', true, '\\x00', 0)",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    env.capture_logs();
    let processes = [env.start_worker(&[]), env.spawn_api(&[]).0];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while processes.iter().any(|&process| env.is_running(process)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a process kept waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let logs = env.logs();
    assert_eq!(
        logs.matches("the database cannot be migrated by this build")
            .count(),
        2,
        "{logs}"
    );
    assert!(logs.contains("migration 99990101000000"), "{logs}");
    env.finish().await;
}

/// The other side of it: a process started while Postgres cannot be reached waits for it,
/// and comes up once it answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_started_while_postgres_is_away_waits_for_it() {
    let mut env = TestEnv::new().await;
    let postgres = env.proxy_postgres().await;
    postgres.cut();
    let worker = env.start_worker(&[]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(env.is_running(worker), "the worker waits for Postgres");

    postgres.restore();
    taskfleet_tests::wait_until(
        std::time::Duration::from_secs(30),
        "the worker registers once Postgres answers",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workers")
                .fetch_one(&env.pool)
                .await
                .unwrap()
                == 1
        },
    )
    .await;
    env.finish().await;
}
