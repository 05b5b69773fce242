//! Pipelined starts (ADR 0017): a worker runs an `executor.run` delivery while its start is
//! written. What must hold whatever the timing: an outcome is never recorded without its
//! start, a copy from an earlier dispatch starts nothing, and a job cancelled before its
//! start was written neither reports success nor keeps its worker busy.

use std::time::Duration;

use serde_json::json;
use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::{Change, Ledger, NewJob, Outcome, Scope, Started, Tenants};
use taskfleet_tests::{TestEnv, finish_of, start_due, start_requests};
use uuid::Uuid;

async fn queued_noop(env: &TestEnv) -> (Ledger, Uuid) {
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let ledger = Ledger::new(&env.db);
    let job = NewJob::new(
        serde_json::from_value(json!({"kind": "executor.run", "tool": "noop"})).unwrap(),
        None,
    );
    ledger
        .insert(tenant.id, std::slice::from_ref(&job), "test")
        .await
        .unwrap();
    (ledger, job.id)
}

/// A queued no-op job and the deliveries of the dispatcher's next round: its own.
async fn dispatched_noop(env: &TestEnv) -> (Ledger, Uuid, Vec<Dispatch>) {
    let (ledger, id) = queued_noop(env).await;
    let deliveries = ledger
        .dispatch_due(Queue::Executor, 10, "dispatcher")
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!((deliveries[0].job_id, deliveries[0].attempt), (id, 1));
    (ledger, id, deliveries)
}

async fn events(env: &TestEnv, id: Uuid) -> Vec<String> {
    env.job_events(id)
        .await
        .into_iter()
        .map(|(event, _)| event)
        .collect()
}

#[tokio::test]
async fn a_copy_from_an_earlier_dispatch_starts_nothing() {
    let env = TestEnv::new().await;
    let (ledger, id, first) = dispatched_noop(&env).await;
    // Its Redis copy was lost (as far as the sweep can tell): dispatched again.
    let again = ledger
        .redispatch_stale(Queue::Executor, Duration::ZERO, &[], 10, "dispatcher")
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].epoch > first[0].epoch);
    assert_eq!(again[0].attempt, 1, "a dispatch is not an attempt");

    // Both copies reach workers, the older one first: only the newer starts.
    let start = async |deliveries: &[Dispatch], worker| {
        let requests = start_requests(deliveries);
        ledger.start_many(&requests, worker).await.unwrap()
    };
    assert_eq!(start(&first, "worker-a").await, [None]);
    assert_eq!(
        start(&again, "worker-b").await,
        [Some(Started { payload: None })],
        "the delivery carried the spec"
    );
    let job = ledger.get(Scope::All, id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt, job.worker.as_deref()),
        ("running", 1, Some("worker-b"))
    );
    // The older copy's outcome changes nothing either.
    let outcome =
        |delivery, worker| finish_of(delivery, worker, Outcome::Succeeded(json!({"by": worker})));
    assert_eq!(
        ledger
            .finish_many(&[outcome(&first[0], "worker-a")])
            .await
            .unwrap(),
        [None]
    );
    assert_eq!(
        ledger
            .finish_many(&[outcome(&again[0], "worker-b")])
            .await
            .unwrap(),
        [Some("succeeded".to_owned())]
    );
    let job = ledger.get(Scope::All, id).await.unwrap().unwrap();
    assert_eq!(job.result, Some(json!({"by": "worker-b"})));
    env.finish().await;
}

#[tokio::test]
async fn an_outcome_written_before_its_start_changes_nothing() {
    let env = TestEnv::new().await;
    let (ledger, id, delivery) = dispatched_noop(&env).await;
    let finish = finish_of(&delivery[0], "worker-a", Outcome::Succeeded(json!(null)));
    assert_eq!(
        ledger
            .finish_many(std::slice::from_ref(&finish))
            .await
            .unwrap(),
        [None]
    );
    let job = ledger.get(Scope::All, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("queued", 0));
    assert!(job.dispatched_at.is_some(), "still in its window");

    // Once the start is in, the same outcome lands, after it.
    let started = ledger
        .start_many(&start_requests(&delivery), "worker-a")
        .await;
    assert!(started.unwrap()[0].is_some());
    assert_eq!(
        ledger.finish_many(&[finish]).await.unwrap(),
        [Some("succeeded".to_owned())]
    );
    assert_eq!(
        events(&env, id).await,
        [
            "job_enqueued",
            "job_dispatched",
            "stale_write_rejected",
            "job_started",
            "job_succeeded"
        ]
    );
    env.finish().await;
}

#[tokio::test]
async fn a_start_of_a_job_cancelled_since_its_dispatch_is_refused() {
    let env = TestEnv::new().await;
    let (ledger, id, delivery) = dispatched_noop(&env).await;
    let cancelled = ledger.cancel(Scope::All, id).await.unwrap();
    assert!(matches!(cancelled, Change::Done(_)));
    assert_eq!(
        ledger
            .start_many(&start_requests(&delivery), "worker-a")
            .await
            .unwrap(),
        [None]
    );
    let job = ledger.get(Scope::All, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("cancelled", 0));
    env.finish().await;
}

/// A long job cancelled while its delivery waits in Redis: the only executor takes it, runs
/// it while the start is written, and stops it when the start is refused; the next job runs
/// long before the cancelled one would have ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_cancelled_before_its_start_is_written_is_stopped_and_reports_nothing() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let long = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 60_000}}),
        )
        .await;
    assert_eq!(
        env.redis_waiting_len(Queue::Executor).await,
        1,
        "the API pushed it"
    );
    let (status, body) = api
        .post(&key, &format!("/v1/jobs/{long}/cancel"), &json!({}))
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")));
    let next = api
        .submit(&key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;

    env.start_worker(&["--concurrency", "1"]);
    let done = api.wait_finished(&key, next, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        events(&env, long).await,
        ["job_enqueued", "job_dispatched", "job_cancelled"],
        "the cancelled job never started"
    );
    let job = api.get(&key, &format!("/v1/jobs/{long}")).await.1;
    assert_eq!(
        (job["state"].as_str(), job["attempt"].as_i64()),
        (Some("cancelled"), Some(0))
    );
    env.finish().await;
}

/// Through a fleet whose starts and outcomes travel in separate batches: every job's
/// history is its enqueue, dispatch, start and success, in that order, once each.
#[tokio::test(flavor = "multi_thread")]
async fn every_outcome_follows_its_start_in_a_jobs_history() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(&[]);
    env.start_worker(&[]);
    let jobs = vec![json!({"kind": "executor.run", "tool": "noop"}); 500];
    for _ in 0..4 {
        api.submit_batch(&key, &jobs).await;
    }
    taskfleet_tests::wait_until(Duration::from_secs(120), "2,000 jobs succeeded", || async {
        env.count_state("succeeded").await == 2_000
    })
    .await;
    let histories: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT job_id, array_agg(event ORDER BY id) FROM all_job_events
         WHERE job_id IS NOT NULL GROUP BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(histories.len(), 2_000);
    for (job, history) in histories {
        assert_eq!(
            history,
            [
                "job_enqueued",
                "job_dispatched",
                "job_started",
                "job_succeeded"
            ],
            "job {job}"
        );
    }
    env.finish().await;
}

/// The deliveries made for a test's own start are the ledger's: `start_due` is the
/// dispatcher's round followed by the workers' start.
#[tokio::test]
async fn a_delivery_runs_the_attempt_after_the_last_one() {
    let env = TestEnv::new().await;
    let (ledger, id) = queued_noop(&env).await;
    let first = start_due(&ledger, &[id], "worker-a").await.remove(0);
    let failed = finish_of(
        &first,
        "worker-a",
        Outcome::Failed {
            error: "boom".to_owned(),
            retry_at: Some(chrono::Utc::now()),
        },
    );
    assert_eq!(
        ledger.finish_many(&[failed]).await.unwrap(),
        [Some("retrying".to_owned())]
    );
    assert_eq!(ledger.promote_due(10).await.unwrap(), 1);
    let second = start_due(&ledger, &[id], "worker-a").await.remove(0);
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert!(second.epoch > first.epoch);
    assert_eq!(second.payload, first.payload);
    env.finish().await;
}

/// A spec too large to travel through Redis stays out of the delivery; the job's start
/// brings it, and the job runs as any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_spec_is_brought_by_the_start_instead_of_redis() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let input = format!("# Notes\n\n{}\n", "word ".repeat(8_000));
    let id = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "markdown.format", "input": input}),
        )
        .await;
    let keys = taskfleet_storage::redis::Keys::new(&env.redis_prefix);
    let list = keys.queue_list(Queue::Executor);
    let entries: Vec<String> = redis::AsyncCommands::lrange(&mut env.redis.clone(), &list, 0, -1)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "the API pushed it");
    assert!(entries[0].len() <= taskfleet_storage::redis::MAX_ENTRY_BYTES);
    let delivery = taskfleet_storage::redis::deliveries(&list, entries).remove(0);
    assert_eq!((delivery.job_id, delivery.payload.is_none()), (id, true));

    env.start_worker(&[]);
    let done = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["result"].to_string().contains("word word"),
        "the handler had the whole spec: {done}"
    );
    env.finish().await;
}
