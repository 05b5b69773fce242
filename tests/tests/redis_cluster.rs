//! The fleet on a real Redis Cluster (three primaries, three replicas, started by the test):
//! every script and pipeline keeps its keys in one slot, so nothing fails with `CROSSSLOT`;
//! the work spreads over the primaries; and when a primary dies mid-run its replica takes
//! over while nothing is lost and nothing completes twice.

use std::time::Duration;

use taskfleet_jobs::Queue;
use taskfleet_tests::{
    FAST_FAILOVER, TestEnv, fast_failover_and, json, redis_cluster::RedisCluster, wait_until,
};

/// Both tests run at once, each with a fleet: Postgres's 100 connections go round.
const SMALL_POOL: &[(&str, &str)] = &[("TASKFLEET_PG_MAX_CONNECTIONS", "8")];

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_on_a_redis_cluster_runs_every_job_once_and_spreads_over_its_primaries() {
    let cluster = RedisCluster::start(3).await;
    let mut env = TestEnv::on_redis(&cluster.url()).await;
    let api = env.start_api(SMALL_POOL).await;
    let key = env.create_key("acme");
    for _ in 0..2 {
        env.start_worker_env(FAST_FAILOVER, SMALL_POOL);
    }
    let jobs = 2_000;
    api.submit_sleeps(&key, jobs, 20).await;

    // A running job is cancelled through its flag and the cancel channel, which live in
    // different slots.
    let long = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 60_000}}),
        )
        .await;
    wait_until(Duration::from_secs(60), "the long job runs", || async {
        api.get(&key, &format!("/v1/jobs/{long}")).await.1["state"] == "running"
    })
    .await;
    let (status, body) = api
        .post(&key, &format!("/v1/jobs/{long}/cancel"), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "{body}");
    let cancelled = api.wait_finished(&key, long, Duration::from_secs(30)).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");

    wait_until(Duration::from_secs(240), "every job succeeded", || async {
        env.count_state("succeeded").await == jobs as i64
    })
    .await;
    assert_each_succeeded_once(&env, jobs).await;
    // Nothing failed on the cluster: a lease batch refused with CROSSSLOT would have left its
    // jobs to be reclaimed.
    assert_eq!(env.count_events("lease_reclaimed").await, 0);

    // Leases are taken and released by scripts: each job's shard lands on some primary.
    let primaries = cluster.primaries();
    let scripts: Vec<u64> = primaries
        .iter()
        .map(|&port| cluster.calls(port, "evalsha"))
        .collect();
    eprintln!("redis cluster: lease scripts per primary {scripts:?}");
    assert_eq!(primaries.len(), 3);
    assert!(
        scripts.iter().all(|&calls| calls > 0),
        "every primary holds some jobs' leases: {scripts:?}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_mid_run_is_replaced_by_its_replica_and_the_fleet_carries_on() {
    let mut cluster = RedisCluster::start(3).await;
    let mut env = TestEnv::on_redis(&cluster.url()).await;
    let api = env.start_api(SMALL_POOL).await;
    let key = env.create_key("acme");
    let worker = fast_failover_and(&["--max-stalls", "25"]);
    for _ in 0..3 {
        env.start_worker_env(&worker, SMALL_POOL);
    }
    // Jobs long enough that many hold leases, heartbeated, on the primary that dies, for
    // longer than the failover takes.
    let jobs = 400;
    api.submit_sleeps(&key, jobs, 5_000).await;
    wait_until(
        Duration::from_secs(120),
        "a first share of the jobs ran",
        || async { env.count_state("succeeded").await >= 50 },
    )
    .await;

    // The primary holding the executor queue's list: every worker waits on it.
    let victim = cluster.primary_of(&env.keys().queue_list(Queue::Executor));
    cluster.kill(victim);
    let killed_at = tokio::time::Instant::now();
    cluster.wait_for_failover(victim).await;
    let failover = killed_at.elapsed();

    wait_until(Duration::from_secs(240), "every job succeeded", || async {
        env.count_state("succeeded").await == jobs as i64
    })
    .await;
    assert_each_succeeded_once(&env, jobs).await;
    let starts = env.count_events("job_started").await;
    let reclaimed = env.count_events("lease_reclaimed").await;
    let stale = env.count_events("stale_write_rejected").await;
    eprintln!(
        "redis cluster failover: the cluster served every slot again {failover:?} after the \
         primary died; {} re-executions ({starts} starts for {jobs} jobs), {reclaimed} leases \
         reclaimed, {stale} stale writes rejected",
        starts - jobs as i64
    );
    env.finish().await;
}

/// Every job of the ledger that was not cancelled succeeded exactly once.
async fn assert_each_succeeded_once(env: &TestEnv, jobs: usize) {
    let successes = env.successes_per_job().await;
    assert_eq!(successes.len(), jobs);
    assert!(
        successes.iter().all(|&n| n == 1),
        "a job did not succeed exactly once"
    );
}
