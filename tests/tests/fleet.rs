//! Many jobs across several worker processes: every job succeeds exactly once in the ledger,
//! duplicate deliveries are harmless, Redis keeps nothing of finished jobs, and an outcome
//! waiting for the ledger frees its slot but keeps its lease.

use std::time::Duration;

use redis::AsyncCommands;
use taskfleet_jobs::Queue;
use taskfleet_tests::{FAST_FAILOVER, TestEnv, json, wait_until};

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

    // Redis keeps nothing of a finished job: its id left the queue's list when a worker
    // took it, and its lease went when its outcome was recorded.
    let prefix = env.redis_prefix.clone();
    wait_until(
        Duration::from_secs(20),
        "Redis holds nothing of the finished jobs",
        || {
            let (mut conn, prefix) = (env.redis.clone(), prefix.clone());
            async move {
                let lists: Vec<String> = conn.keys(format!("{prefix}:queue:*")).await.unwrap();
                let leases: Vec<String> = conn.keys(format!("{prefix}:lease:job:*")).await.unwrap();
                lists.is_empty() && leases.is_empty()
            }
        },
    )
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_delivery_runs_the_job_once() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let id = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 200}}),
        )
        .await;
    // The API pushed the job's delivery itself (its list was empty); deliver the same copy
    // twice more behind the dispatcher's back, before any worker runs.
    let keys = taskfleet_storage::redis::Keys::new(&env.redis_prefix);
    let list = keys.queue_list(Queue::Executor);
    let entries: Vec<String> = env.redis.clone().lrange(&list, 0, -1).await.unwrap();
    let delivery = taskfleet_storage::redis::deliveries(&list, entries);
    assert_eq!(delivery.len(), 1);
    assert_eq!(delivery[0].job_id, id);
    let copies = [delivery[0].clone(), delivery[0].clone()];
    taskfleet_storage::redis::push_jobs(&mut env.redis.clone(), &keys, Queue::Executor, &copies)
        .await
        .unwrap();
    env.start_worker(&["--concurrency", "4"]);
    env.start_worker(&["--concurrency", "4"]);
    let job = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempt"], 1);
    // Let the surplus deliveries arrive and be skipped.
    wait_until(
        Duration::from_secs(20),
        "every delivery was consumed",
        || async { env.redis_waiting_len(Queue::Executor).await == 0 },
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
    let lease = env.keys().job_lease(slow);
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

#[tokio::test(flavor = "multi_thread")]
async fn jobs_whose_redis_copies_were_lost_are_pushed_again_exactly() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    // A leader that serves only the schedule queue: it dispatches executor jobs to Redis,
    // where nobody takes them.
    let mut leader_flags = FAST_FAILOVER.to_vec();
    leader_flags.extend(["--queues", "schedule"]);
    env.start_worker(&leader_flags);
    let jobs: Vec<_> = (0..6)
        .map(|_| json!({"kind": "executor.run", "tool": "noop"}))
        .collect();
    let body = api.submit_batch(&key, &jobs).await;
    let mut ids: Vec<uuid::Uuid> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    wait_until(
        Duration::from_secs(20),
        "the jobs were pushed to Redis",
        || async { env.redis_waiting_len(Queue::Executor).await == 6 },
    )
    .await;
    // Three copies are lost, not the oldest: all six were dispatched in one round, so only
    // the list tells which (a worker that took some and died loses the head instead).
    let keys = taskfleet_storage::redis::Keys::new(&env.redis_prefix);
    let list = keys.queue_list(Queue::Executor);
    let mut conn = env.redis.clone();
    let pushed: Vec<String> = conn.lrange(&list, 0, -1).await.unwrap();
    for lost in pushed.iter().skip(1).step_by(2) {
        let removed: i64 = conn.lrem(&list, 1, lost).await.unwrap();
        assert_eq!(removed, 1);
    }

    // The leader's sweep pushes exactly those three again: the list holds each job once.
    wait_until(
        Duration::from_secs(20),
        "the lost jobs were pushed again",
        || async { env.redis_waiting_len(Queue::Executor).await == 6 },
    )
    .await;
    let waiting: Vec<String> = conn.lrange(&list, 0, -1).await.unwrap();
    let mut waiting: Vec<uuid::Uuid> = taskfleet_storage::redis::deliveries(&list, waiting)
        .iter()
        .map(|delivery| delivery.job_id)
        .collect();
    waiting.sort();
    assert_eq!(waiting, ids, "each job waits once, none twice");

    // A live worker runs each once.
    let mut worker_flags = FAST_FAILOVER.to_vec();
    worker_flags.extend(["--queues", "executor"]);
    env.start_worker(&worker_flags);
    for &id in &ids {
        let job = api.wait_finished(&key, id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded");
        assert_eq!(job["attempt"], 1);
    }
    let redispatches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM all_job_events
         WHERE event = 'job_dispatched' AND details->>'redispatch' = 'true'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(redispatches, 3, "only the lost jobs were dispatched again");
    env.finish().await;
}

/// Who pushed job `id` to Redis, for each time it was pushed: `api` or a worker's name.
async fn dispatched_by(env: &TestEnv, id: uuid::Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT actor FROM all_job_events WHERE job_id = $1 AND event = 'job_dispatched'
         ORDER BY ts",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_pushes_a_lone_job_while_its_queue_is_empty_and_leaves_the_rest_to_the_dispatcher()
{
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let ops = env.create_operator_key("ops");
    // A leader that serves only the schedule queue, so executor jobs stay in the list.
    let mut leader_flags = FAST_FAILOVER.to_vec();
    leader_flags.extend(["--queues", "schedule"]);
    env.start_worker(&leader_flags);
    let noop = || json!({"kind": "executor.run", "tool": "noop"});

    // An empty list: the API pushes the job itself.
    let first = api.submit(&key, noop()).await;
    assert_eq!(env.redis_waiting_len(Queue::Executor).await, 1);
    assert_eq!(dispatched_by(&env, first).await, ["api"]);

    // The list is not empty: the dispatcher pushes the next one.
    let second = api.submit(&key, noop()).await;
    wait_until(
        Duration::from_secs(20),
        "the dispatcher pushed the second job",
        || async { env.redis_waiting_len(Queue::Executor).await == 2 },
    )
    .await;
    let pushers = dispatched_by(&env, second).await;
    assert_eq!(pushers.len(), 1);
    assert_ne!(pushers[0], "api");

    // A worker empties the list. A job scheduled for later is not pushed even so…
    let mut worker_flags = FAST_FAILOVER.to_vec();
    worker_flags.extend(["--queues", "executor"]);
    env.start_worker(&worker_flags);
    for id in [first, second] {
        let job = api.wait_finished(&key, id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded");
    }
    let later = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "noop", "run_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    // …nor a job of a paused queue.
    let (status, body) = api
        .post(&ops, "/v1/queues/executor/pause", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let held = api.submit(&key, noop()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dispatched_by(&env, later).await.is_empty());
    assert!(dispatched_by(&env, held).await.is_empty());
    assert_eq!(env.count_state("scheduled").await, 1);
    assert_eq!(env.count_state("queued").await, 1);

    // Resumed, the held job is dispatched and runs.
    let (status, body) = api
        .post(&ops, "/v1/queues/executor/resume", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let job = api.wait_finished(&key, held, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "succeeded");
    env.finish().await;
}
