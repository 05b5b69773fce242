//! A worker paused past its lease ttl loses the job: the reclaimer gives it to another
//! worker, and nothing the paused worker does after waking lands in the ledger. The fence
//! itself, a write naming an old epoch, is checked directly against the ledger too.

use std::time::Duration;

use taskfleet_tests::{
    TestEnv, free_port, json,
    prometheus::{sample, scrape},
    wait_until,
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

#[tokio::test]
async fn a_write_with_a_superseded_epoch_changes_nothing_and_is_counted() {
    use taskfleet_storage::{Ledger, NewJob, Outcome, Scope, Tenants};
    let env = TestEnv::new().await;
    let ledger = Ledger::new(env.pool.clone());
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let spec = serde_json::from_value(json!({"kind": "executor.run", "tool": "noop"})).unwrap();
    let job = NewJob::new(spec, None);
    ledger
        .insert(tenant.id, std::slice::from_ref(&job), "test")
        .await
        .unwrap();
    let first = ledger.start(job.id, "worker-a").await.unwrap().unwrap();
    assert_eq!(
        ledger
            .reclaim(job.id, first.lease_epoch, "leader")
            .await
            .unwrap()
            .map(|reclaimed| reclaimed.next)
            .as_deref(),
        Some("queued")
    );
    let second = ledger.start(job.id, "worker-b").await.unwrap().unwrap();
    assert!(second.lease_epoch > first.lease_epoch);

    let late = json!({"from": "a"});
    assert_eq!(
        ledger
            .finish(
                job.id,
                first.lease_epoch,
                "worker-a",
                Outcome::Succeeded(&late)
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(env.count_events("stale_write_rejected").await, 1);
    let on_time = json!({"from": "b"});
    assert_eq!(
        ledger
            .finish(
                job.id,
                second.lease_epoch,
                "worker-b",
                Outcome::Succeeded(&on_time)
            )
            .await
            .unwrap()
            .as_deref(),
        Some("succeeded")
    );
    let record = ledger
        .get(Scope::Tenant(tenant.id), job.id)
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
