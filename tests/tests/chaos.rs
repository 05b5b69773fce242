//! Chaos: three workers run 5,000 jobs while one of them is killed with SIGKILL every two
//! seconds for thirty seconds and restarted. Every job must end `succeeded` exactly once in
//! the ledger, whatever ran twice.

use std::time::Duration;

use rand::Rng;
use taskfleet_tests::{TestEnv, fast_failover_and, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn killing_workers_loses_no_job_and_completes_none_twice() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    // The jobs are not at fault when the test kills their workers: more stalls than the
    // default before one counts as a job that kills its process.
    let worker = fast_failover_and(&["--max-stalls", "25"]);
    let workers: Vec<usize> = (0..3).map(|_| env.start_worker(&worker)).collect();
    api.submit_sleeps(&key, 5_000, 200).await;
    let mut rng = rand::rng();

    let chaos_until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut kills = 0;
    while tokio::time::Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = workers[rng.random_range(0..workers.len())];
        env.restart_worker(victim, &worker);
        kills += 1;
    }
    wait_until(
        Duration::from_secs(240),
        "all 5,000 jobs succeeded",
        || async { env.count_state("succeeded").await == 5000 },
    )
    .await;

    let successes_per_job = env.successes_per_job().await;
    assert_eq!(successes_per_job.len(), 5000);
    assert!(
        successes_per_job.iter().all(|&n| n == 1),
        "a job completed twice in the ledger"
    );
    let starts = env.count_events("job_started").await;
    let reclaimed = env.count_events("lease_reclaimed").await;
    let stale = env.count_events("stale_write_rejected").await;
    eprintln!(
        "chaos: {kills} kills; {} re-executions ({starts} starts for 5000 jobs), \
         {reclaimed} leases reclaimed, {stale} stale writes rejected",
        starts - 5000
    );
    assert!(kills >= 14);
    env.finish().await;
}
