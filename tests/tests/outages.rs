//! Redis and Postgres outages in the middle of a run: nothing accepted is lost, every job
//! completes, and the API answers 503s (never 500s) while Postgres is away.

use std::time::Duration;

use taskfleet_tests::{FAST_FAILOVER as WORKER, TestEnv, json, wait_until};

async fn submit(api: &taskfleet_tests::Api, key: &str, n: usize) {
    for _ in 0..n / 500 {
        let jobs: Vec<_> = (0..500)
            .map(|i| json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": i % 20}}))
            .collect();
        api.submit_batch(key, &jobs).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_and_flushed_mid_run_loses_no_job() {
    let mut env = TestEnv::new().await;
    let redis = env.proxy_redis().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(WORKER);
    env.start_worker(WORKER);
    submit(&api, &key, 2000).await;
    wait_until(
        Duration::from_secs(60),
        "part of the run is done",
        || async { env.count_state("succeeded").await >= 300 },
    )
    .await;

    // A restart of a Redis that keeps nothing on disk: connections drop, every key is gone.
    redis.cut();
    env.flush_redis().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restore();

    wait_until(
        Duration::from_secs(180),
        "all 2,000 jobs succeeded",
        || async { env.count_state("succeeded").await == 2000 },
    )
    .await;
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM all_job_events WHERE event = 'job_succeeded'
                               GROUP BY job_id HAVING count(*) > 1) AS t",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(twice, 0);
    env.finish().await;
}

/// Redis emptied while jobs run (flushed here; a restart without persistence loses the same):
/// each worker takes its leases back, the reclaimer gives them the time to, and every job
/// succeeds on its first attempt. Nothing is reclaimed, nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn running_jobs_keep_their_attempts_when_redis_loses_their_leases() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(&["--concurrency", "8", "--lease-ttl-ms", "3000"]);
    let long = json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 8000}});
    let body = api.submit_batch(&key, &vec![long; 8]).await;
    let ids: Vec<uuid::Uuid> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().parse().unwrap())
        .collect();
    wait_until(Duration::from_secs(30), "all eight run", || async {
        env.count_state("running").await == 8
    })
    .await;

    env.flush_redis().await;

    for id in ids {
        let job = api.wait_finished(&key, id, Duration::from_secs(60)).await;
        assert_eq!(
            (job["state"].as_str(), job["attempt"].as_i64()),
            (Some("succeeded"), Some(1)),
            "{job}"
        );
    }
    let reclaimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM all_job_events WHERE event = 'lease_reclaimed'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(reclaimed, 0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_does_not_hold_up_lone_submissions() {
    let mut env = TestEnv::new().await;
    let redis = env.proxy_redis().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(WORKER);
    let noop = || json!({"kind": "executor.run", "tool": "noop"});
    let before = api.submit(&key, noop()).await;
    api.wait_finished(&key, before, Duration::from_secs(30))
        .await;

    // Redis hangs: the API, which pushes a lone job to an empty queue itself, answers
    // anyway, leaving the push to the dispatcher instead of waiting on Redis.
    redis.stall();
    let mut during = Vec::new();
    for _ in 0..3 {
        let submitted = tokio::time::timeout(Duration::from_secs(1), api.submit(&key, noop()));
        during.push(
            submitted
                .await
                .expect("a lone submission is answered while Redis hangs"),
        );
    }
    redis.restore();
    for id in during {
        let job = api.wait_finished(&key, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "succeeded");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_for_ten_seconds_gives_503s_and_loses_nothing() {
    let mut env = TestEnv::new().await;
    let postgres = env.proxy_postgres().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(WORKER);
    env.start_worker(WORKER);
    submit(&api, &key, 1000).await;
    wait_until(
        Duration::from_secs(60),
        "part of the run is done",
        || async { env.count_state("succeeded").await >= 200 },
    )
    .await;

    postgres.cut();
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    while tokio::time::Instant::now() < outage_ends {
        let (status, body) = api
            .post(
                &key,
                "/v1/jobs",
                &json!({"kind": "executor.run", "tool": "noop"}),
            )
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "ledger_unavailable", "{body}");
        let (status, _) = api.get(&key, "/v1/jobs").await;
        assert_eq!(status, 503);
        refused += 1;
    }
    postgres.restore();
    assert!(refused > 0);

    // Accepted again once Postgres is back; every job of the run completes.
    let after = api
        .submit(&key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    wait_until(
        Duration::from_secs(180),
        "all 1,001 jobs succeeded",
        || async { env.count_state("succeeded").await == 1001 },
    )
    .await;
    let (_, job) = api.get(&key, &format!("/v1/jobs/{after}")).await;
    assert_eq!(job["state"], "succeeded");
    env.finish().await;
}
