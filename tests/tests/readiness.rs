//! `/healthz` and `/readyz`: ready only when Postgres (with migrations), Redis and a worker
//! round trip all answer; otherwise 503 naming the failing check.

use taskfleet_tests::TestEnv;

#[tokio::test]
async fn readyz_names_the_failing_check_and_tells_only_operators_why() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_READY_TIMEOUT_MS", "1500")])
        .await;
    let ops = env.create_operator_key("ops");
    let tenant = env.create_key("acme");
    let get = |path: &'static str, key: Option<String>| {
        let api = api.clone();
        async move {
            let mut request = api.http.get(api.url(path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = get("/healthz", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    // No worker yet: the round trip fails, the rest pass. Anyone learns which check failed;
    // only an operator learns why.
    let (status, body) = get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(body["checks"]["queue_round_trip"], "failed", "{body}");
    let (_, body) = get("/readyz", Some(tenant.clone())).await;
    assert_eq!(body["checks"]["queue_round_trip"], "failed", "{body}");
    let (status, body) = get("/readyz", Some(ops.clone())).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["queue_round_trip"]
            .as_str()
            .unwrap()
            .contains("no worker"),
        "{body}"
    );
    // Probes come no faster than one each two seconds, however often /readyz is asked: the
    // answers above reused one outcome.
    let probes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j JOIN tenants t ON t.id = j.tenant_id WHERE t.name = '_system'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(probes, 1);

    env.start_worker(&[]);
    let ready = taskfleet_tests::wait_for_some(
        std::time::Duration::from_secs(30),
        "ready once a worker runs",
        || async {
            let (status, body) = get("/readyz", None).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(ready["status"], "ready");

    // A ledger whose migrations are not all applied is not ready.
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&env.pool)
        .await
        .unwrap();
    let (status, body) = get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["postgres"], "failed");
    let (_, body) = get("/readyz", Some(ops)).await;
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
        logs.matches("the database could not be migrated at start")
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
