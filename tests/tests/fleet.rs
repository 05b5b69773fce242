//! Many jobs across several worker processes: every job succeeds exactly once in the ledger,
//! the Redis window stays bounded, duplicate deliveries are harmless, and Redis forgets
//! finished tasks.

use std::time::Duration;

use redis::AsyncCommands;
use taskfleet_tests::{TestEnv, json, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_jobs_across_two_workers_each_succeed_exactly_once() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let workers = [
        env.start_worker(&["--concurrency", "8"]),
        env.start_worker(&["--concurrency", "8"]),
    ];
    let key = env.create_key("acme");
    for _ in 0..2 {
        let jobs: Vec<_> = (0..500)
            .map(|i| json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": i % 7}}))
            .collect();
        api.submit_batch(&key, &jobs).await;
    }
    wait_until(
        Duration::from_secs(120),
        "all 1,000 jobs succeeded",
        || async { env.count_state("succeeded").await == 1000 },
    )
    .await;

    let starts: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM all_job_events e WHERE e.job_id = j.id AND e.event = 'job_started'),
                j.attempt
         FROM jobs j",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(starts.len(), 1000);
    assert!(
        starts.iter().all(|&(n, attempt)| n == 1 && attempt == 1),
        "a job started twice"
    );
    let per_worker: Vec<(String, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM jobs GROUP BY worker")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        per_worker.len(),
        2,
        "both worker processes ran jobs: {per_worker:?}"
    );
    for w in workers {
        assert!(env.is_running(w), "a worker died");
    }

    // The leader deletes Redis copies of finished tasks: the ledger keeps the outcome.
    let data_key = format!("{}:queue:executor:data", env.redis_prefix);
    let mut conn = env.redis.clone();
    wait_until(
        Duration::from_secs(20),
        "Redis forgot the finished tasks",
        || {
            let (mut conn, data_key) = (conn.clone(), data_key.clone());
            async move { conn.hlen::<_, i64>(&data_key).await.unwrap() == 0 }
        },
    )
    .await;
    let done: i64 = conn
        .scard(format!("{}:queue:executor:done", env.redis_prefix))
        .await
        .unwrap();
    assert_eq!(done, 0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_delivery_runs_the_job_once() {
    use apalis::prelude::TaskSink;
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let id = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 200}}),
        )
        .await;
    // Deliver the same job twice more behind the dispatcher's back, before any worker runs.
    let keys = taskfleet_storage::redis::Keys::new(&env.redis_prefix);
    let mut storage = taskfleet_worker::redis_queue::storage(
        env.redis.clone(),
        &keys,
        taskfleet_jobs::Queue::Executor,
    );
    let dispatch = taskfleet_jobs::Dispatch { job_id: id };
    storage.push_bulk(vec![dispatch, dispatch]).await.unwrap();
    env.start_worker(&["--concurrency", "4"]);
    env.start_worker(&["--concurrency", "4"]);
    let job = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempt"], 1);
    // Let the surplus deliveries arrive and be skipped.
    wait_until(
        Duration::from_secs(20),
        "every delivery was consumed",
        || async { env.redis_active_len("executor").await == 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let starts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM all_job_events WHERE job_id = $1 AND event = 'job_started'",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(starts, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_waiting_for_the_ledger_keeps_its_lease_and_frees_its_slot() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_FAULT_INJECTION", "true")])
        .await;
    env.start_worker(&["--concurrency", "1", "--fault-injection"]);
    let key = env.create_key("acme");
    let state_of = |id: uuid::Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let slow = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "fault", "args": {"mode": "slow", "ms": 5000}}),
        )
        .await;
    wait_until(Duration::from_secs(20), "the slow job runs", || async {
        state_of(slow).await == "running"
    })
    .await;
    // Hold the slow job's row, so its outcome cannot be written when its handler ends.
    let mut blocker = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(slow)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let quick = api
        .submit(&key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    // One slot: the quick job can start only once the slow one's handler has ended and the
    // slot no longer waits for the ledger.
    wait_until(Duration::from_secs(20), "the quick job starts", || async {
        state_of(quick).await == "running"
    })
    .await;
    assert_eq!(
        state_of(slow).await,
        "running",
        "its outcome is not written yet"
    );
    let lease = format!("{}:lease:job:{slow}", env.redis_prefix);
    let mut conn = env.redis.clone();
    assert!(
        conn.exists::<_, bool>(&lease).await.unwrap(),
        "a job keeps its lease until its outcome is recorded"
    );

    blocker.rollback().await.unwrap();
    for id in [slow, quick] {
        let job = api.wait_finished(&key, id, Duration::from_secs(20)).await;
        assert_eq!(job["state"], "succeeded");
        assert_eq!(job["attempt"], 1);
    }
    wait_until(Duration::from_secs(10), "the lease is released", || {
        let (mut conn, lease) = (conn.clone(), lease.clone());
        async move { !conn.exists::<_, bool>(&lease).await.unwrap() }
    })
    .await;
    env.finish().await;
}
