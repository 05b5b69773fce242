//! A worker paused past its lease ttl loses the job: the reclaimer gives it to another
//! worker, and the paused worker's late completion is refused by the epoch fence.

use std::time::Duration;

use taskfleet_tests::{TestEnv, json, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_workers_late_completion_is_rejected() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let lease = ["--lease-ttl-ms", "1500", "--leader-ttl-ms", "1500"];
    let paused = env.start_worker(&lease);
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

    env.signal(paused, "CONT");
    wait_until(
        Duration::from_secs(15),
        "the late write is refused",
        || async { env.count_events("stale_write_rejected").await == 1 },
    )
    .await;
    let events = env.job_events(id).await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.contains(&"lease_reclaimed"), "{names:?}");
    assert_eq!(
        names.iter().filter(|e| **e == "job_succeeded").count(),
        1,
        "{names:?}"
    );
    let stale_actor = &events
        .iter()
        .find(|(e, _)| e == "stale_write_rejected")
        .unwrap()
        .1;
    assert_eq!(stale_actor, &first_worker);
    let (_, job) = api.get(&key, &format!("/v1/jobs/{id}")).await;
    assert_eq!(
        job["worker"], done["worker"],
        "the ledger kept the second worker's outcome"
    );
    env.finish().await;
}
