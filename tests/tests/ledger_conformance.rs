//! Ledger operations called one at a time against Postgres (in the style of River's driver
//! conformance suite): what each does to a job in each state it may meet, beside the
//! end-to-end tests that run them through a fleet.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use taskfleet_jobs::Dispatch;
use taskfleet_storage::{JobRecord, Ledger, NewJob, Outcome, Rescue, Scope, Tenants};
use taskfleet_tests::{TestEnv, finish_of, start_due, start_requests, wait_for_some};
use uuid::Uuid;

/// `n` `noop` jobs of `tenant`, due now unless `run_at` is given.
async fn submit(
    ledger: &Ledger,
    tenant: Uuid,
    n: usize,
    run_at: Option<DateTime<Utc>>,
) -> Vec<Uuid> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| {
            let spec = json!({"kind": "executor.run", "tool": "noop", "max_attempts": 5,
                              "run_at": run_at});
            NewJob::new(serde_json::from_value(spec).unwrap(), None)
        })
        .collect();
    ledger.insert(tenant, &jobs, "test").await.unwrap();
    jobs.iter().map(|job| job.id).collect()
}

async fn setup(env: &TestEnv) -> (Ledger, Uuid) {
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    (Ledger::new(&env.db), tenant.id)
}

async fn started(ledger: &Ledger, id: Uuid) -> Dispatch {
    start_due(ledger, &[id], "worker-a").await.remove(0)
}

async fn record(ledger: &Ledger, id: Uuid) -> JobRecord {
    ledger.get(Scope::All, id).await.unwrap().unwrap()
}

async fn events(env: &TestEnv, id: Uuid) -> Vec<String> {
    env.job_events(id)
        .await
        .into_iter()
        .map(|(event, _)| event)
        .collect()
}

/// Index entries Postgres has read from `index` so far, as its statistics report them.
async fn index_reads(pool: &PgPool, index: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes
         WHERE indexrelname = $1",
    )
    .bind(index)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// How many more entries of `index` were read than `before`, once the statistics show the
/// reads (they are flushed a moment after the session goes idle).
async fn reads_since(pool: &PgPool, index: &str, before: i64) -> i64 {
    wait_for_some(Duration::from_secs(10), "index statistics", || async move {
        let reads = index_reads(pool, index).await - before;
        (reads > 0).then_some(reads)
    })
    .await
}

/// A ledger on one connection of its own, so the statistics of its statements can be
/// flushed from that connection ([`flush_statistics`]) and read by the test.
fn measured_ledger(env: &TestEnv) -> (Ledger, PgPool) {
    let db = taskfleet_storage::Db::connect_lazy(&env.database_url, 1).unwrap();
    (Ledger::new(&db), db.pool)
}

/// Makes the statistics of the (single) connection of `pool` visible to other sessions.
async fn flush_statistics(pool: &PgPool) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    // The flush happens when the session goes idle after its next statement.
    sqlx::query("SELECT 1").execute(pool).await.unwrap();
}

#[tokio::test]
async fn a_job_whose_cancellation_was_asked_does_not_start_and_the_sweep_ends_it() {
    let env = TestEnv::new().await;
    let (ledger, tenant) = setup(&env).await;
    let id = submit(&ledger, tenant, 1, None).await[0];
    // A request the API recorded on a running job that was then handed back by an older
    // binary: the job waits in `queued` with the request on it.
    sqlx::query("UPDATE jobs SET cancel_requested_at = now() WHERE id = $1")
        .bind(id)
        .execute(&env.pool)
        .await
        .unwrap();
    let delivery = ledger
        .dispatch_due(taskfleet_jobs::Queue::Executor, 10, "dispatcher")
        .await
        .unwrap();
    assert_eq!(
        ledger
            .start_many(&start_requests(&delivery), "worker-a")
            .await
            .unwrap(),
        [None]
    );

    let sweep = ledger
        .sweep_cancellations(Duration::from_secs(5), 100, "leader")
        .await
        .unwrap();
    assert_eq!(sweep.ended, [id]);
    assert!(sweep.running.is_empty());
    assert_eq!(record(&ledger, id).await.state, "cancelled");
    assert_eq!(events(&env, id).await.last().unwrap(), "job_cancelled");
    env.finish().await;
}

#[tokio::test]
async fn a_running_job_whose_cancellation_was_asked_is_found_for_a_new_signal() {
    let env = TestEnv::new().await;
    let (ledger, tenant) = setup(&env).await;
    let id = submit(&ledger, tenant, 1, None).await[0];
    started(&ledger, id).await;
    ledger.cancel(Scope::Tenant(tenant), id).await.unwrap();

    // Not at once: the API's own signal had its chance first.
    let sweep = ledger
        .sweep_cancellations(Duration::from_secs(60), 100, "leader")
        .await
        .unwrap();
    assert_eq!(sweep, Default::default());
    let sweep = ledger
        .sweep_cancellations(Duration::ZERO, 100, "leader")
        .await
        .unwrap();
    assert_eq!(sweep.running, [id]);
    assert_eq!(record(&ledger, id).await.state, "running");
    env.finish().await;
}

#[tokio::test]
async fn a_hand_back_of_a_job_whose_cancellation_was_asked_ends_it_cancelled() {
    let env = TestEnv::new().await;
    let (ledger, tenant) = setup(&env).await;
    let ids = submit(&ledger, tenant, 2, None).await;
    let [asked, plain]: [Dispatch; 2] = start_due(&ledger, &ids, "worker-a")
        .await
        .try_into()
        .unwrap();
    ledger
        .cancel(Scope::Tenant(tenant), asked.job_id)
        .await
        .unwrap();

    let hand_back = |job: &Dispatch| finish_of(job, "worker-a", Outcome::HandedBack);
    let states = ledger
        .finish_many(&[hand_back(&asked), hand_back(&plain)])
        .await
        .unwrap();
    assert_eq!(
        states,
        [Some("cancelled".to_owned()), Some("queued".to_owned())]
    );
    let cancelled = record(&ledger, asked.job_id).await;
    assert!(cancelled.finished_at.is_some());
    assert_eq!(
        events(&env, asked.job_id).await.last().unwrap(),
        "job_cancelled"
    );
    let queued = record(&ledger, plain.job_id).await;
    assert_eq!((queued.attempt, queued.started_at), (0, None));
    env.finish().await;
}

#[tokio::test]
async fn a_reclaimed_job_waits_its_retry_delay_and_dies_stalled_at_the_limit() {
    let env = TestEnv::new().await;
    let (ledger, tenant) = setup(&env).await;
    let id = submit(&ledger, tenant, 1, None).await[0];
    let max_stalls = 2;

    let first = started(&ledger, id).await;
    let later = Utc::now() + chrono::Duration::seconds(30);
    let rescue = |job: &Dispatch, retry_at| Rescue {
        id: job.job_id,
        epoch: job.epoch,
        retry_at,
    };
    let reclaimed = ledger
        .reclaim_many(&[rescue(&first, later)], max_stalls, "leader")
        .await
        .unwrap();
    assert_eq!(reclaimed[0].next, "retrying");
    let waiting = record(&ledger, id).await;
    assert_eq!(waiting.state, "retrying");
    assert!((waiting.run_at - later).num_milliseconds().abs() < 5);
    assert_eq!(ledger.promote_due(10).await.unwrap(), 0, "not due yet");
    let story = events(&env, id).await;
    assert_eq!(
        story[story.len() - 2..],
        ["lease_reclaimed", "job_retry_scheduled"]
    );

    // Due: it runs again, stalls again, and that is its last stall.
    sqlx::query("UPDATE jobs SET run_at = now() WHERE id = $1")
        .bind(id)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(ledger.promote_due(10).await.unwrap(), 1);
    let second = started(&ledger, id).await;
    // A stale epoch changes nothing.
    let stale = ledger
        .reclaim_many(&[rescue(&first, later)], max_stalls, "leader")
        .await
        .unwrap();
    assert!(stale.is_empty());
    let reclaimed = ledger
        .reclaim_many(&[rescue(&second, later)], max_stalls, "leader")
        .await
        .unwrap();
    assert_eq!(reclaimed[0].next, "dead");
    let dead = record(&ledger, id).await;
    assert!(dead.error.unwrap().starts_with("stalled"), "stalled error");
    assert_eq!(dead.attempt_errors.as_array().unwrap().len(), 2);
    assert_eq!(events(&env, id).await.last().unwrap(), "job_dead");

    // Retried by hand, it has its stalls afresh.
    ledger.retry(Scope::Tenant(tenant), id, 3).await.unwrap();
    let third = started(&ledger, id).await;
    let reclaimed = ledger
        .reclaim_many(&[rescue(&third, later)], max_stalls, "leader")
        .await
        .unwrap();
    assert_eq!(reclaimed[0].next, "retrying");
    env.finish().await;
}

#[tokio::test]
async fn a_reclaim_of_a_job_whose_cancellation_was_asked_ends_it_cancelled() {
    let env = TestEnv::new().await;
    let (ledger, tenant) = setup(&env).await;
    let id = submit(&ledger, tenant, 1, None).await[0];
    let job = started(&ledger, id).await;
    ledger.cancel(Scope::Tenant(tenant), id).await.unwrap();
    let rescue = Rescue {
        id,
        epoch: job.epoch,
        retry_at: Utc::now(),
    };
    let reclaimed = ledger.reclaim_many(&[rescue], 3, "leader").await.unwrap();
    assert_eq!(reclaimed[0].next, "cancelled");
    assert_eq!(events(&env, id).await.last().unwrap(), "job_cancelled");
    env.finish().await;
}

#[tokio::test]
async fn future_jobs_cost_the_dispatcher_nothing_until_they_fall_due() {
    let env = TestEnv::new().await;
    let (ledger, pool) = measured_ledger(&env);
    let tenant = Tenants::new(env.pool.clone())
        .ensure("acme")
        .await
        .unwrap()
        .id;
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, queue, kind, payload, state, max_attempts, run_at)
         SELECT gen_random_uuid(), $1, 'executor', 'executor.run',
                '{\"kind\": \"executor.run\", \"tool\": \"noop\"}', 'scheduled', 3,
                $2 + make_interval(secs => n)
         FROM generate_series(1, 20000) AS n",
    )
    .bind(tenant)
    .bind(tomorrow)
    .execute(&env.pool)
    .await
    .unwrap();
    let due = submit(&ledger, tenant, 3, None).await;
    sqlx::query("ANALYZE jobs")
        .execute(&env.pool)
        .await
        .unwrap();
    flush_statistics(&pool).await;
    let before = (
        index_reads(&env.pool, "jobs_queued").await,
        index_reads(&env.pool, "jobs_waiting").await,
    );

    // A dispatcher round: promote, find the queues with work, fill the window, sleep until
    // the next run_at.
    assert_eq!(ledger.promote_due(10_000).await.unwrap(), 0);
    assert_eq!(
        ledger.queues_with_due_work().await.unwrap(),
        [taskfleet_jobs::Queue::Executor]
    );
    let dispatched = ledger
        .dispatch_due(taskfleet_jobs::Queue::Executor, 100, "dispatcher")
        .await
        .unwrap();
    assert_eq!(dispatched.len(), 3);
    assert!(dispatched.iter().all(|job| due.contains(&job.job_id)));
    let next = ledger.next_run_at().await.unwrap().unwrap();
    assert!((next - tomorrow).num_seconds() <= 1);
    flush_statistics(&pool).await;

    let reads = (
        reads_since(&env.pool, "jobs_queued", before.0).await,
        index_reads(&env.pool, "jobs_waiting").await - before.1,
    );
    assert!(
        reads.0 < 100 && reads.1 < 100,
        "a round read {reads:?} index entries beside 20,000 future jobs"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_window_is_shared_between_tenants_reading_about_a_window_of_jobs() {
    let env = TestEnv::new().await;
    let (ledger, pool) = measured_ledger(&env);
    let tenants = Tenants::new(env.pool.clone());
    // 40 tenants with 100 jobs each, and one with a single job.
    let mut busy = Vec::new();
    for n in 0..40 {
        let tenant = tenants.ensure(&format!("busy-{n}")).await.unwrap().id;
        submit(&ledger, tenant, 100, None).await;
        busy.push(tenant);
    }
    let light = tenants.ensure("light").await.unwrap().id;
    submit(&ledger, light, 1, None).await;
    sqlx::query("ANALYZE jobs")
        .execute(&env.pool)
        .await
        .unwrap();
    flush_statistics(&pool).await;
    let before = index_reads(&env.pool, "jobs_queued").await;

    let window = 100;
    let dispatched = ledger
        .dispatch_due(taskfleet_jobs::Queue::Executor, window, "dispatcher")
        .await
        .unwrap();
    assert_eq!(dispatched.len(), window as usize);
    let of = |tenant: Uuid| {
        dispatched
            .iter()
            .filter(|job| job.tenant_id == tenant)
            .count()
    };
    assert_eq!(of(light), 1);
    assert!(
        busy.iter().all(|tenant| (2..=3).contains(&of(*tenant))),
        "each busy tenant gets its share"
    );
    flush_statistics(&pool).await;
    let reads = reads_since(&env.pool, "jobs_queued", before).await;
    // Each tenant's best `window` jobs, then a pick among them, would read 41 × 100.
    assert!(
        reads < 1_000,
        "filling a window of {window} read {reads} index entries"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_stale_cancellation_signal_hands_the_job_back_instead_of_ending_it() {
    let env = TestEnv::new().await;
    let (ledger, tenant) = setup(&env).await;
    let id = submit(&ledger, tenant, 1, None).await[0];
    let job = started(&ledger, id).await;
    // The worker stopped the attempt on a Redis flag the ledger holds no request for (it
    // was left from an earlier attempt, since retried by hand).
    let stopped = finish_of(&job, "worker-a", Outcome::Cancelled);
    assert_eq!(
        ledger.finish_many(&[stopped]).await.unwrap(),
        [Some("queued".to_owned())]
    );
    let record = record(&ledger, id).await;
    assert_eq!((record.attempt, record.finished_at), (0, None));
    assert_eq!(events(&env, id).await.last().unwrap(), "job_handed_back");
    env.finish().await;
}
