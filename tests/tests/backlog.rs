//! Backlogs: 20,000 queued jobs drain without a worker dying and without the Redis window
//! growing past its bound (the ledger holds the backlog, Redis only a window of it); and one
//! tenant's backlog does not hold another tenant's job back.

use std::time::Duration;

use taskfleet_jobs::Queue;
use taskfleet_tests::{TestEnv, json, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_queued_jobs_drain_with_a_bounded_window() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let batch: Vec<_> = (0..1000)
        .map(|_| json!({"kind": "executor.run", "tool": "noop"}))
        .collect();
    for _ in 0..20 {
        api.submit_batch(&key, &batch).await;
    }
    assert_eq!(env.count_state("queued").await, 20_000);

    let window = 500;
    let workers = [
        env.start_worker(&["--concurrency", "32", "--dispatch-window", "500"]),
        env.start_worker(&["--concurrency", "32", "--dispatch-window", "500"]),
    ];
    let mut largest_window = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while env.count_state("succeeded").await < 20_000 {
        largest_window = largest_window.max(env.redis_waiting_len(Queue::Executor).await);
        for &w in &workers {
            assert!(env.is_running(w), "a worker died during the drain");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog did not drain in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        largest_window <= window,
        "Redis held {largest_window} > {window} jobs"
    );
    assert!(
        largest_window > 0,
        "the window was sampled while it held work"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_backlog_does_not_delay_another_tenants_job() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let busy = env.create_key("busy");
    let quiet = env.create_key("quiet");
    let window: i64 = 50;
    env.start_worker(&["--concurrency", "4", "--dispatch-window", "50"]);
    let batch: Vec<_> = (0..1000)
        .map(|_| json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 5}}))
        .collect();
    for _ in 0..5 {
        api.submit_batch(&busy, &batch).await;
    }
    wait_until(
        Duration::from_secs(30),
        "the busy tenant's backlog is running",
        || async { env.count_state("succeeded").await >= 100 },
    )
    .await;

    let started_before: i64 = started_count(&env).await;
    let id = api
        .submit(&quiet, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    let job = api.wait_finished(&quiet, id, Duration::from_secs(60)).await;
    let started_at =
        chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
    let busy_started_meanwhile: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE started_at < $1 AND id <> $2")
            .bind(started_at)
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    // Ahead of the quiet tenant's job: at most what was already in the window when it
    // arrived, plus the busy tenant's turn in the next dispatch round.
    let ahead = busy_started_meanwhile - started_before;
    assert!(
        ahead <= 2 * window,
        "{ahead} busy jobs started first; a round holds {window}"
    );
    let backlog = 5000 - busy_started_meanwhile;
    assert!(
        backlog > 1000,
        "the quiet job did not wait for the backlog ({backlog} left)"
    );
    env.finish().await;
}

async fn started_count(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}
