//! A worker paused past its lease ttl loses the job: the reclaimer gives it to another
//! worker, and nothing the paused worker does after waking lands in the ledger. The fence
//! itself, a write naming an old epoch, is checked directly against the ledger too, with
//! batched starts and outcomes.

use std::time::Duration;

use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::{
    Finish, GroupCommit, Ledger, NewJob, Outcome, Rescue, Scope, Tenants,
    group_commit::LINGER_WHILE_CALLERS_WAIT,
};
use uuid::Uuid;

use taskfleet_tests::{
    TestEnv, finish_of, free_port, json,
    prometheus::{sample, scrape},
    start_due, start_requests, wait_until,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_workers_late_completion_is_rejected() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_FAULT_INJECTION", "true")])
        .await;
    let key = env.create_key("acme");
    let lease = [
        "--lease-ttl-ms",
        "1500",
        "--leader-ttl-ms",
        "1500",
        "--fault-injection",
    ];
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let paused = env.start_worker(&[&lease[..], &["--metrics-addr", &metrics_addr]].concat());
    let id = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 2500}}),
        )
        .await;
    wait_until(Duration::from_secs(20), "the job runs", || async {
        env.count_state("running").await == 1
    })
    .await;
    let first_worker: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();

    env.signal(paused, "STOP");
    env.start_worker(&lease);
    let done = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_ne!(done["worker"].as_str(), Some(first_worker.as_str()));

    let succeeded_at = env.job_events(id).await.len();
    env.signal(paused, "CONT");
    // The woken worker either notices it lost the lease and drops its attempt, or finishes
    // first and has its write refused by the epoch fence. Either way nothing of it lands.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = env.job_events(id).await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"lease_reclaimed"), "{names:?}");
    assert_eq!(
        names.iter().filter(|e| **e == "job_succeeded").count(),
        1,
        "{names:?}"
    );
    for (event, actor) in &events[succeeded_at..] {
        assert!(
            actor != &first_worker || event == "stale_write_rejected",
            "the paused worker changed the job after waking: {event}"
        );
    }
    let (_, job) = api.get(&key, &format!("/v1/jobs/{id}")).await;
    assert_eq!(job, done, "the ledger kept the second worker's outcome");
    // The woken worker's metrics count exactly the refusals the ledger recorded for it.
    let refused = events
        .iter()
        .filter(|(event, actor)| event == "stale_write_rejected" && actor == &first_worker)
        .count();
    let metrics = scrape(&format!("http://{metrics_addr}")).await;
    assert_eq!(
        sample(
            &metrics,
            "taskfleet_stale_writes_rejected_total",
            &[("queue", "executor")]
        ),
        refused as f64
    );
    env.finish().await;
}

/// `n` queued no-op jobs of the `acme` tenant, put straight into the ledger; returns the
/// tenant's id and the jobs' ids.
async fn queued_jobs(env: &TestEnv, n: usize) -> (Ledger, Uuid, Vec<Uuid>) {
    let ledger = Ledger::new(&env.db);
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| {
            let spec = json!({"kind": "executor.run", "tool": "noop", "max_attempts": 3});
            NewJob::new(serde_json::from_value(spec).unwrap(), None)
        })
        .collect();
    ledger.insert(tenant.id, &jobs, "test").await.unwrap();
    (ledger, tenant.id, jobs.iter().map(|job| job.id).collect())
}

/// `n` jobs of the `acme` tenant, started by `worker-a`, ready for outcomes.
async fn started_jobs(env: &TestEnv, n: usize) -> (Ledger, Vec<Dispatch>) {
    let (ledger, _, ids) = queued_jobs(env, n).await;
    let started = start_due(&ledger, &ids, "worker-a").await;
    (ledger, started)
}

#[tokio::test]
async fn a_write_with_a_superseded_epoch_changes_nothing_and_is_counted() {
    let env = TestEnv::new().await;
    let (ledger, tenant, ids) = queued_jobs(&env, 1).await;
    let id = ids[0];
    let start = |worker| {
        let ledger = ledger.clone();
        async move { start_due(&ledger, &[id], worker).await.remove(0) }
    };
    let first = start("worker-a").await;
    let rescue = Rescue {
        id: first.job_id,
        epoch: first.epoch,
        retry_at: chrono::Utc::now(),
    };
    let reclaimed = ledger.reclaim_many(&[rescue], 3, "leader").await.unwrap();
    assert_eq!(reclaimed[0].next, "retrying");
    assert_eq!(ledger.promote_due(10).await.unwrap(), 1);
    let second = start("worker-b").await;
    assert!(second.epoch > first.epoch);

    let late = finish_of(&first, "worker-a", Outcome::Succeeded(json!({"from": "a"})));
    assert_eq!(ledger.finish_many(&[late]).await.unwrap(), [None]);
    assert_eq!(env.count_events("stale_write_rejected").await, 1);
    let on_time = json!({"from": "b"});
    let on_time_write = finish_of(&second, "worker-b", Outcome::Succeeded(on_time.clone()));
    assert_eq!(
        ledger.finish_many(&[on_time_write]).await.unwrap(),
        [Some("succeeded".to_owned())]
    );
    let record = ledger
        .get(Scope::Tenant(tenant), first.job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.state.as_str(), record.result),
        ("succeeded", Some(on_time))
    );
    assert_eq!(record.attempt, 2);
    env.finish().await;
}

#[tokio::test]
async fn one_batch_starts_each_job_once_and_records_every_outcome_refusing_only_the_stale_one() {
    let env = TestEnv::new().await;
    let (ledger, _, ids) = queued_jobs(&env, 5).await;
    let mut deliveries = ledger
        .dispatch_due(Queue::Executor, 10, "dispatcher")
        .await
        .unwrap();
    assert_eq!(deliveries.len(), ids.len());
    // One start for all five, with job 0 delivered twice: only its first copy starts it.
    deliveries.push(deliveries[0].clone());
    let mut outcome = ledger
        .start_many(&start_requests(&deliveries), "worker-a")
        .await
        .unwrap();
    assert!(
        outcome.pop().unwrap().is_none(),
        "a duplicate delivery does not start"
    );
    assert!(outcome.iter().all(Option::is_some));
    deliveries.pop();
    let started = deliveries;
    assert!(started.iter().all(|job| job.attempt == 1 && job.epoch == 1));
    assert_eq!(env.count_events("job_started").await, 5);
    let finish = |n: usize, outcome| finish_of(&started[n], "worker-a", outcome);
    let retry_at = chrono::Utc::now() + chrono::Duration::seconds(30);
    let failed = |retry_at| Outcome::Failed {
        error: "boom".to_owned(),
        retry_at,
    };
    let states = ledger
        .finish_many(&[
            finish(0, Outcome::Succeeded(json!({"n": 0}))),
            finish(1, failed(Some(retry_at))),
            finish(2, failed(None)),
            Finish {
                epoch: started[3].epoch - 1,
                ..finish(3, Outcome::Succeeded(json!({"late": true})))
            },
            finish(4, Outcome::Succeeded(json!({"n": 4}))),
        ])
        .await
        .unwrap();
    assert_eq!(
        states,
        [
            Some("succeeded".to_owned()),
            Some("retrying".to_owned()),
            Some("dead".to_owned()),
            None,
            Some("succeeded".to_owned()),
        ]
    );
    assert_eq!(env.count_events("stale_write_rejected").await, 1);
    assert_eq!(
        env.count_state("running").await,
        1,
        "the stale write changed nothing"
    );
    // Each job's events end with its outcome's events, the last naming its state.
    for (n, ending) in [
        (0, ["job_started", "job_succeeded"]),
        (1, ["job_failed", "job_retry_scheduled"]),
        (2, ["job_failed", "job_dead"]),
    ] {
        let events = env.job_events(started[n].job_id).await;
        let names: Vec<&str> = events.iter().map(|(event, _)| event.as_str()).collect();
        assert_eq!(&names[names.len() - 2..], ending, "{names:?}");
    }
    env.finish().await;
}

/// Postgres cannot store a NUL in text: an outcome carrying one is refused.
fn refused_outcome() -> Outcome {
    Outcome::Failed {
        error: "bad\0byte".to_owned(),
        retry_at: None,
    }
}

#[tokio::test]
async fn a_batch_of_outcomes_lands_whole_or_not_at_all() {
    let env = TestEnv::new().await;
    let (ledger, started) = started_jobs(&env, 2).await;
    // The success is written first (its own statement); the refused failure fails the batch.
    let batch = [
        finish_of(
            &started[0],
            "worker-a",
            Outcome::Succeeded(json!({"ok": true})),
        ),
        finish_of(&started[1], "worker-a", refused_outcome()),
    ];
    assert!(ledger.finish_many(&batch).await.is_err());
    assert_eq!(
        env.count_state("running").await,
        2,
        "nothing of the batch landed"
    );
    assert_eq!(env.count_events("job_succeeded").await, 0);
    env.finish().await;
}

#[tokio::test]
async fn an_outcome_the_ledger_refuses_does_not_fail_the_others_batched_with_it() {
    let env = TestEnv::new().await;
    let (ledger, started) = started_jobs(&env, 2).await;
    let finishes = GroupCommit::start(
        LINGER_WHILE_CALLERS_WAIT,
        move |batch: std::sync::Arc<Vec<Finish>>| {
            let ledger = ledger.clone();
            async move { ledger.finish_many(&batch).await }
        },
    );
    // A single-threaded runtime queues both before the writer runs: they share one batch.
    let (good, bad) = tokio::join!(
        finishes.submit(finish_of(
            &started[0],
            "worker-a",
            Outcome::Succeeded(json!({"ok": true}))
        )),
        finishes.submit(finish_of(&started[1], "worker-a", refused_outcome())),
    );
    assert_eq!(good.unwrap().as_deref(), Some("succeeded"));
    assert!(
        bad.is_err(),
        "the refused outcome is reported to its own sender"
    );
    assert_eq!(env.count_state("succeeded").await, 1);
    assert_eq!(env.count_state("running").await, 1);
    env.finish().await;
}
