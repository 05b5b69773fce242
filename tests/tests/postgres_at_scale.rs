//! Postgres at scale: each process keeps to the connections it says it opens, and the fleet
//! runs behind Debian's pgbouncer in session mode, while transaction mode, which would break
//! it at random, is refused at start with the reason, also while other clients keep the
//! pooler busy.

use std::{collections::HashMap, time::Duration};

use taskfleet_tests::{
    FAST_FAILOVER, TestEnv, fast_failover_and, pgbouncer::Pgbouncer, wait_until,
};

/// pgbouncer in `pool_mode`, and a test environment whose processes reach Postgres through it.
async fn behind_pgbouncer(pool_mode: &str) -> (Pgbouncer, TestEnv) {
    let bouncer = Pgbouncer::start(pool_mode).await;
    let mut env = TestEnv::new().await;
    env.route_postgres(&format!("127.0.0.1:{}", bouncer.port));
    (bouncer, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_process_keeps_to_its_postgres_connection_budget() {
    let mut env = TestEnv::new().await;
    let url = env.child_database_url().to_owned();
    let api = env
        .start_api(&[
            ("DATABASE_URL", &format!("{url}?application_name=tf-api")),
            ("TASKFLEET_PG_MAX_CONNECTIONS", "4"),
        ])
        .await;
    let key = env.create_key("acme");
    let worker = fast_failover_and(&["--pg-max-connections", "4"]);
    env.start_worker_env(
        &worker,
        &[("DATABASE_URL", &format!("{url}?application_name=tf-worker"))],
    );
    api.submit_sleeps(&key, 2_000, 20).await;

    // The most connections each process held at once while the jobs ran.
    let mut most: HashMap<String, i64> = HashMap::new();
    while env.count_state("succeeded").await < 2_000 {
        let now: Vec<(String, i64)> = sqlx::query_as(
            "SELECT application_name, count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'tf-%'
             GROUP BY application_name",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
        for (process, connections) in now {
            let seen = most.entry(process).or_default();
            *seen = (*seen).max(connections);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("most Postgres connections at once, with a pool of 4: {most:?}");
    // The pool, 4 for statements about one job, 2 while migrating; the worker leads the
    // fleet, which adds its 2 listeners.
    assert!(most["tf-api"] <= 4 + 4 + 2, "{most:?}");
    assert!(most["tf-worker"] <= 4 + 4 + 2 + 2, "{most:?}");
    assert!(most["tf-worker"] >= 4, "the worker used its pool: {most:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_pgbouncer_in_session_mode_the_fleet_runs_every_job_once() {
    let (_bouncer, mut env) = behind_pgbouncer("session").await;
    // Session pooling gives each client connection a server connection of its own: the
    // fleet's (8 + 4, and 8 + 4 + 2 twice) fit pgbouncer's pool of 60.
    let small_pool = [("TASKFLEET_PG_MAX_CONNECTIONS", "8")];
    let api = env.start_api(&small_pool).await;
    let key = env.create_key("acme");
    for _ in 0..2 {
        env.start_worker_env(FAST_FAILOVER, &small_pool);
    }
    api.submit_sleeps(&key, 1_000, 20).await;
    wait_until(Duration::from_secs(120), "every job succeeded", || async {
        env.count_state("succeeded").await == 1_000
    })
    .await;
    let successes = env.successes_per_job().await;
    assert_eq!(successes.len(), 1_000);
    assert!(successes.iter().all(|&n| n == 1), "a job completed twice");
    // Readiness runs a job through the fleet and reads the migrations, all through
    // pgbouncer.
    let ready = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_pgbouncer_in_transaction_mode_the_fleet_refuses_to_start_and_says_why() {
    let (_bouncer, mut env) = behind_pgbouncer("transaction").await;
    env.capture_logs();

    let migrate = env.api_command(&["migrate"]);
    assert!(!migrate.status.success());
    let said = env.logs();
    assert!(said.contains("transaction mode"), "{said}");
    assert!(said.contains("pool_mode = session"), "{said}");

    let worker = env.start_worker(FAST_FAILOVER);
    wait_until(Duration::from_secs(30), "the worker stops", || {
        let running = env.is_running(worker);
        async move { !running }
    })
    .await;
    assert!(env.logs().contains("transaction mode"), "{}", env.logs());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_transaction_pooler_is_refused_too() {
    let (_bouncer, mut env) = behind_pgbouncer("transaction").await;
    env.capture_logs();
    // Other clients keep the pooler's server connections changing hands while the fleet
    // probes it: a server released by one statement is taken by someone else's next.
    let others = taskfleet_storage::Db::connect_lazy(env.child_database_url(), 16)
        .unwrap()
        .pool;
    let stop = tokio_util::sync::CancellationToken::new();
    for _ in 0..16 {
        let (others, stop) = (others.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                // The simple protocol: a prepared statement would not survive the pooler.
                let _ = sqlx::raw_sql("SELECT pg_backend_pid()")
                    .execute(&others)
                    .await;
            }
        });
    }
    for attempt in 0..10 {
        let migrate = env.api_command(&["migrate"]);
        assert!(!migrate.status.success(), "attempt {attempt}: migrated");
    }
    stop.cancel();
    assert_eq!(
        env.logs().matches("transaction mode").count(),
        10,
        "{}",
        env.logs()
    );
    env.finish().await;
}
