//! Retention: the leader's job cleaner deletes finished jobs after their state's retention,
//! with their events, the audit log's events after the longest, and trims schedule firings; queue statistics read only live jobs and
//! recent finishes.

use std::time::Duration;

use serde_json::Value;
use taskfleet_jobs::AuditAction;
use taskfleet_storage::{
    Actor, AuditEntry, AuditLog,
    job_cleaner::{CleanerConfig, Deleted, JobCleaner},
};
use taskfleet_tests::{Api, TestEnv, free_port, json, prometheus::sample, wait_until};
use uuid::Uuid;

const FAULTS: &[(&str, &str)] = &[("TASKFLEET_FAULT_INJECTION", "true")];

/// Retentions so long that the fleet's own cleaner leaves alone what a test ages.
const KEEP_ALL: &[(&str, &str)] = &[
    ("TASKFLEET_RETENTION_SUCCEEDED", "3650d"),
    ("TASKFLEET_RETENTION_CANCELLED", "3650d"),
    ("TASKFLEET_RETENTION_DEAD", "3650d"),
];

fn noop() -> Value {
    json!({"kind": "executor.run", "tool": "noop"})
}

/// A no-op due tomorrow: it stays scheduled.
fn tomorrow() -> Value {
    let mut job = noop();
    job["run_at"] = json!(chrono::Utc::now() + chrono::Duration::days(1));
    job
}

/// An API, an `acme` key and a worker whose cleaner keeps everything.
async fn fleet() -> (TestEnv, Api, String) {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    env.start_worker_env(&[], KEEP_ALL);
    let key = env.create_key("acme");
    (env, api, key)
}

/// Submits `n` no-ops and waits until they succeeded.
async fn succeeded(api: &Api, key: &str, n: usize) -> Vec<Uuid> {
    let body = api.submit_batch(key, &vec![noop(); n]).await;
    let ids: Vec<Uuid> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().parse().unwrap())
        .collect();
    for &id in &ids {
        let job = api.wait_finished(key, id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    ids
}

/// Cancels `id`, which has not started.
async fn cancel(api: &Api, key: &str, id: Uuid) -> Uuid {
    let (status, body) = api
        .post(key, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled", "{body}");
    id
}

/// Moves the end of `jobs` into the past by `ago` (a Postgres interval), as if they had
/// finished then.
async fn finished_ago(env: &TestEnv, jobs: &[Uuid], ago: &str) {
    let moved = sqlx::query(
        "UPDATE jobs SET finished_at = now() - $2::interval
         WHERE id = ANY($1) AND finished_at IS NOT NULL",
    )
    .bind(jobs)
    .bind(ago)
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), jobs.len() as u64);
}

/// Events of `jobs`, numbered or still waiting for their number.
async fn events_of(env: &TestEnv, jobs: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM all_job_events WHERE job_id = ANY($1)")
        .bind(jobs)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Which of `jobs` the ledger still holds.
async fn kept(env: &TestEnv, jobs: &[Uuid]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
        .bind(jobs)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    ids.sort();
    ids
}

async fn newest_seq(env: &TestEnv) -> Option<i64> {
    sqlx::query_scalar("SELECT max(seq) FROM job_events")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Waits until the sequencer has numbered every event.
async fn all_numbered(env: &TestEnv) {
    wait_until(
        Duration::from_secs(30),
        "every event is numbered",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_event_batches")
                .fetch_one(&env.pool)
                .await
                .unwrap()
                == 0
        },
    )
    .await;
}

fn cleaner(env: &TestEnv, config: CleanerConfig) -> JobCleaner {
    JobCleaner::new(
        env.pool.clone(),
        CleanerConfig {
            pause: Duration::ZERO,
            ..config
        },
    )
}

/// Each finished state is kept for its own retention, set in the worker's environment: the
/// leader deletes what outlived it, events included, and the API answers 404 for it; what
/// is younger, and what has not run yet, stays whole.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_deletes_each_finished_state_after_its_own_retention() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(FAULTS).await;
    let key = env.create_key("acme");
    let retention = [
        ("TASKFLEET_RETENTION_SUCCEEDED", "1h"),
        ("TASKFLEET_RETENTION_CANCELLED", "2h"),
        ("TASKFLEET_RETENTION_DEAD", "3h"),
    ];
    let first = env.start_worker_env(&["--fault-injection"], &retention);
    let ok = succeeded(&api, &key, 2).await;
    let mut dead = Vec::new();
    for _ in 0..2 {
        let job = json!({"kind": "executor.run", "tool": "fault",
                         "args": {"mode": "fail", "permanent": true}});
        let id = api.submit(&key, job).await;
        let done = api.wait_finished(&key, id, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "dead", "{done}");
        dead.push(id);
    }
    let cancelled = [
        cancel(&api, &key, api.submit(&key, tomorrow()).await).await,
        cancel(&api, &key, api.submit(&key, tomorrow()).await).await,
    ];
    let waiting = api.submit(&key, tomorrow()).await;
    all_numbered(&env).await;
    // The leader hands over at once on a graceful stop; the next one starts with a pass.
    assert!(env.terminate(first).success());

    // One of each past its retention, the other past a shorter state's but not its own.
    let gone = [ok[0], cancelled[0], dead[0]];
    let stay = [ok[1], cancelled[1], dead[1], waiting];
    finished_ago(&env, &[ok[0]], "61 minutes").await;
    finished_ago(&env, &[ok[1]], "59 minutes").await;
    finished_ago(&env, &[cancelled[0]], "121 minutes").await;
    finished_ago(&env, &[cancelled[1]], "61 minutes").await;
    finished_ago(&env, &[dead[0]], "181 minutes").await;
    finished_ago(&env, &[dead[1]], "121 minutes").await;
    let stay_events = events_of(&env, &stay).await;
    assert!(events_of(&env, &gone).await > 0);

    let metrics = format!("127.0.0.1:{}", free_port());
    env.start_worker_env(
        &["--fault-injection", "--metrics-addr", &metrics],
        &retention,
    );
    wait_until(
        Duration::from_secs(30),
        "the jobs past their retention are gone",
        || async { kept(&env, &gone).await.is_empty() },
    )
    .await;
    for id in gone {
        let (status, body) = api.get(&key, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 404, "{body}");
    }
    for id in stay {
        let (status, body) = api.get(&key, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, job) = api.get(&key, &format!("/v1/jobs/{waiting}")).await;
    assert_eq!(job["state"], "scheduled");
    assert_eq!(events_of(&env, &stay).await, stay_events);
    // The newest numbered event stays whatever it belongs to (see the sequencer test).
    let left: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM all_job_events WHERE job_id = ANY($1) AND seq IS DISTINCT FROM
         (SELECT max(seq) FROM job_events)",
    )
    .bind(&gone[..])
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        left.is_empty(),
        "events of deleted jobs left behind: {left:?}"
    );

    let http = reqwest::Client::new();
    wait_until(
        Duration::from_secs(10),
        "the worker counts the deleted jobs",
        || async {
            let Ok(resp) = http.get(format!("http://{metrics}/metrics")).send().await else {
                return false;
            };
            let text = resp.text().await.unwrap_or_default();
            sample(
                &text,
                "taskfleet_retention_deleted_total",
                &[("table", "jobs")],
            ) == 3.0
        },
    )
    .await;
    env.finish().await;
}

/// A pass deletes at most a batch per statement and goes on while batches come back full:
/// 25 old jobs in batches of 10 take three.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_deletes_in_bounded_batches_until_one_comes_back_short() {
    let (env, api, key) = fleet().await;
    let old = succeeded(&api, &key, 25).await;
    let young = succeeded(&api, &key, 3).await;
    finished_ago(&env, &old, "25 hours").await;

    let mut batches = Vec::new();
    let cleaned = cleaner(
        &env,
        CleanerConfig {
            batch_size: 10,
            ..CleanerConfig::default()
        },
    )
    .run_once(|deleted: Deleted| batches.push(deleted.jobs))
    .await
    .unwrap();
    assert_eq!(batches, [10, 10, 5]);
    assert_eq!((cleaned.deleted.jobs, cleaned.batches), (25, 3));
    assert!(kept(&env, &old).await.is_empty());
    let mut young = young;
    young.sort();
    assert_eq!(kept(&env, &young).await, young);
    assert!(
        events_of(&env, &old).await <= 1,
        "only the newest event may stay"
    );
    env.finish().await;
}

/// The fleet's readiness probe jobs go a minute after they end, through the same cleaner,
/// while a tenant's job of the same age stays for its state's retention.
#[tokio::test(flavor = "multi_thread")]
async fn probe_jobs_go_a_minute_after_they_end() {
    let (env, api, key) = fleet().await;
    wait_until(Duration::from_secs(30), "the fleet is ready", || async {
        let resp = api.http.get(api.url("/readyz")).send().await;
        resp.is_ok_and(|resp| resp.status() == 200)
    })
    .await;
    let probes: Vec<Uuid> = sqlx::query_scalar(
        "SELECT j.id FROM jobs j JOIN tenants t ON t.id = j.tenant_id
         WHERE t.name = '_system' AND j.finished_at IS NOT NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(!probes.is_empty());
    let ours = succeeded(&api, &key, 1).await;
    finished_ago(&env, &probes, "2 minutes").await;
    finished_ago(&env, &ours, "2 minutes").await;

    cleaner(&env, CleanerConfig::default())
        .run_once(|_| {})
        .await
        .unwrap();
    assert!(kept(&env, &probes).await.is_empty());
    assert_eq!(kept(&env, &ours).await, ours);
    env.finish().await;
}

/// Events not yet numbered leave their batches with their job, other jobs' events in the
/// same batch stay, and the sequencer, when it comes, numbers only what is left.
#[tokio::test(flavor = "multi_thread")]
async fn events_still_waiting_for_their_number_go_with_their_job() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    // No worker yet, so no sequencer: every event waits for its number. Submitted in one
    // statement, both jobs' `job_enqueued` share a batch.
    let body = api.submit_batch(&key, &[tomorrow(), tomorrow()]).await;
    let id = |i: usize| body["jobs"][i]["id"].as_str().unwrap().parse().unwrap();
    let (gone, stays) = (
        cancel(&api, &key, id(0)).await,
        cancel(&api, &key, id(1)).await,
    );
    assert_eq!(newest_seq(&env).await, None);
    let batches = || async {
        sqlx::query_scalar::<_, i32>("SELECT n FROM job_event_batches ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap()
    };
    assert_eq!(batches().await, [2, 1, 1]);
    let (gone_events, stays_events) = (
        events_of(&env, &[gone]).await,
        events_of(&env, &[stays]).await,
    );
    assert!(gone_events > 0);
    finished_ago(&env, &[gone], "8 days").await;

    let cleaned = cleaner(&env, CleanerConfig::default())
        .run_once(|_| {})
        .await
        .unwrap();
    assert_eq!(
        cleaned.deleted,
        Deleted {
            jobs: 1,
            events: gone_events as u64,
            ..Deleted::default()
        }
    );
    assert_eq!(events_of(&env, &[gone]).await, 0);
    assert_eq!(events_of(&env, &[stays]).await, stays_events);
    assert_eq!(
        batches().await,
        [1, 0, 1],
        "the other job's events stay in the shared batch"
    );

    env.start_worker_env(&[], KEEP_ALL);
    all_numbered(&env).await;
    let numbered = |job: Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_events WHERE job_id = $1")
                .bind(job)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(numbered(gone).await, 0);
    assert_eq!(numbered(stays).await, stays_events);
    env.finish().await;
}

/// The newest numbered event outlives its job, so the sequencer numbers on after every
/// `seq` a stream has shown and never hands one out again.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_pass_the_sequencer_numbers_on_without_reusing_a_seq() {
    let (env, api, key) = fleet().await;
    let old = succeeded(&api, &key, 3).await;
    all_numbered(&env).await;
    let newest = newest_seq(&env).await.unwrap();
    finished_ago(&env, &old, "2 days").await;

    let cleaned = cleaner(&env, CleanerConfig::default())
        .run_once(|_| {})
        .await
        .unwrap();
    assert_eq!(cleaned.deleted.jobs, 3);
    assert_eq!(
        newest_seq(&env).await,
        Some(newest),
        "the newest event stays"
    );
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM job_events WHERE job_id = ANY($1)")
        .bind(&old)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(left.iter().all(|&seq| seq == newest), "{left:?}");

    let next = succeeded(&api, &key, 1).await;
    all_numbered(&env).await;
    let after: i64 = sqlx::query_scalar("SELECT min(seq) FROM job_events WHERE seq > $1")
        .bind(newest)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(after, newest + 1);
    let first_of_next: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM job_events WHERE job_id = $1")
            .bind(next[0])
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(first_of_next > newest);
    env.finish().await;
}

/// Each schedule keeps its newest firings up to the count; older ones go, in batches.
#[tokio::test(flavor = "multi_thread")]
async fn firings_are_trimmed_to_the_newest_of_each_schedule() {
    let env = TestEnv::new().await;
    let acme = taskfleet_storage::Tenants::new(env.pool.clone())
        .ensure("acme")
        .await
        .unwrap();
    let (busy, quiet) = (Uuid::now_v7(), Uuid::now_v7());
    for (schedule, firings) in [(busy, 25), (quiet, 5)] {
        sqlx::query(
            "INSERT INTO schedules (id, tenant_id, name, target, at)
             VALUES ($1, $2, $1::text, '{}', now())",
        )
        .bind(schedule)
        .bind(acme.id)
        .execute(&env.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO schedule_firings (schedule_id, fire_at, job_id)
             SELECT $1, now() - make_interval(mins => i), gen_random_uuid()
             FROM generate_series(1, $2) AS i",
        )
        .bind(schedule)
        .bind(firings)
        .execute(&env.pool)
        .await
        .unwrap();
    }

    let mut batches = Vec::new();
    let cleaned = cleaner(
        &env,
        CleanerConfig {
            firings_per_schedule: 10,
            batch_size: 10,
            ..CleanerConfig::default()
        },
    )
    .run_once(|deleted: Deleted| batches.push(deleted.firings))
    .await
    .unwrap();
    assert_eq!(batches, [10, 5]);
    assert_eq!(cleaned.deleted.firings, 15);
    let minutes_ago = |schedule: Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT round(EXTRACT(EPOCH FROM now() - fire_at) / 60)::int
                 FROM schedule_firings WHERE schedule_id = $1 ORDER BY fire_at DESC",
            )
            .bind(schedule)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(minutes_ago(busy).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(minutes_ago(quiet).await, (1..=5).collect::<Vec<_>>());
    env.finish().await;
}

/// Events that belong to no job (a queue paused and resumed, the fleet's own) go once the
/// longest retention has passed, in batches, oldest first; younger ones stay, and so does
/// the newest event whatever its age.
#[tokio::test(flavor = "multi_thread")]
async fn events_of_no_job_go_after_the_longest_retention() {
    let (env, api, _key) = fleet().await;
    let operator = env.create_operator_key("ops");
    for _ in 0..3 {
        for action in ["pause", "resume"] {
            let (status, body) = api
                .post(&operator, &format!("/v1/queues/agent/{action}"), &json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    all_numbered(&env).await;
    let queue_events = || {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT seq FROM job_events WHERE event IN ('queue_paused', 'queue_resumed')
                 ORDER BY seq",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let events = queue_events().await;
    assert_eq!(events.len(), 6, "{events:?}");
    // The four oldest are aged past the longest retention (dead jobs', 30 days here).
    sqlx::query("UPDATE job_events SET ts = now() - interval '31 days' WHERE seq = ANY($1)")
        .bind(&events[..4])
        .execute(&env.pool)
        .await
        .unwrap();

    let mut batches = Vec::new();
    let cleaned = cleaner(
        &env,
        CleanerConfig {
            batch_size: 3,
            ..CleanerConfig::default()
        },
    )
    .run_once(|deleted: Deleted| batches.push(deleted.events))
    .await
    .unwrap();
    assert_eq!(batches, [3, 1]);
    assert_eq!(cleaned.deleted.events, 4);
    assert_eq!(queue_events().await, events[4..]);

    // Aged too, the newest event in the log stays: the sequencer numbers on from it.
    let newest = newest_seq(&env).await.unwrap();
    sqlx::query("UPDATE job_events SET ts = now() - interval '31 days'")
        .execute(&env.pool)
        .await
        .unwrap();
    cleaner(&env, CleanerConfig::default())
        .run_once(|_| {})
        .await
        .unwrap();
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM job_events WHERE job_id IS NULL")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(left.iter().all(|&seq| seq == newest), "{left:?}");
    env.finish().await;
}

/// Audit events go once the longest retention has passed, in batches, oldest first; younger
/// ones stay.
#[tokio::test(flavor = "multi_thread")]
async fn audit_events_go_after_the_longest_retention_in_batches() {
    let env = TestEnv::new().await;
    let log = AuditLog::new(env.pool.clone());
    let by = Actor::command_line(Some("test"));
    for queue in ["q0", "q1", "q2", "q3", "q4"] {
        let entry = AuditEntry::new(AuditAction::QueuePaused, None, queue);
        log.record(&by, &entry).await.unwrap();
    }
    // All but the newest past the longest retention (dead jobs', 30 days here).
    sqlx::query("UPDATE audit_events SET at = now() - interval '31 days' WHERE target <> 'q4'")
        .execute(&env.pool)
        .await
        .unwrap();

    let mut batches = Vec::new();
    let cleaned = cleaner(
        &env,
        CleanerConfig {
            batch_size: 3,
            ..CleanerConfig::default()
        },
    )
    .run_once(|deleted: Deleted| batches.push(deleted.audit_events))
    .await
    .unwrap();
    assert_eq!(batches, [3, 1]);
    assert_eq!(cleaned.deleted.audit_events, 4);
    let left: Vec<String> = sqlx::query_scalar("SELECT target FROM audit_events")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, ["q4"]);
    env.finish().await;
}

/// Live jobs are counted exactly; finished ones only when they ended within the
/// statistics' window, in `/v1/queues` and in `/metrics` alike.
#[tokio::test(flavor = "multi_thread")]
async fn statistics_count_live_jobs_and_only_recent_finishes() {
    let (env, api, key) = fleet().await;
    let operator = env.create_operator_key("ops");
    let done = succeeded(&api, &key, 4).await;
    for _ in 0..3 {
        api.submit(&key, tomorrow()).await;
    }
    let (status, _) = api
        .post(&operator, "/v1/queues/executor/pause", &json!({}))
        .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        api.submit(&key, noop()).await;
    }
    let executor = |key: String| {
        let api = api.clone();
        async move {
            let (status, body) = api.get(&key, "/v1/queues").await;
            assert_eq!(status, 200, "{body}");
            body["queues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"] == "executor")
                .unwrap()
                .clone()
        }
    };
    let depth = |queue: &Value| {
        ["scheduled", "queued", "running", "succeeded"].map(|s| queue["depth"][s].as_i64().unwrap())
    };
    assert_eq!(depth(&executor(operator.clone()).await), [3, 2, 0, 4]);

    finished_ago(&env, &done[..2], "1 hour").await;
    for who in [&operator, &key] {
        let queue = executor(who.clone()).await;
        assert_eq!(depth(&queue), [3, 2, 0, 2]);
        let throughput: i64 = queue["throughput"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["succeeded"].as_i64().unwrap())
            .sum();
        assert_eq!(throughput, 2);
    }
    wait_until(
        Duration::from_secs(30),
        "/metrics counts live jobs and recent finishes",
        || async {
            let text = api
                .http
                .get(api.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let gauge = |state| {
                sample(
                    &text,
                    "taskfleet_queue_jobs",
                    &[("queue", "executor"), ("state", state)],
                )
            };
            [gauge("scheduled"), gauge("queued"), gauge("succeeded")] == [3.0, 2.0, 2.0]
        },
    )
    .await;
    env.finish().await;
}

/// A retention that cannot be meant stops the worker at start, saying which and why.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refuses_a_retention_of_nothing() {
    let mut env = TestEnv::new().await;
    env.capture_logs();
    let worker = env.start_worker_env(&[], &[("TASKFLEET_RETENTION_DEAD", "0s")]);
    wait_until(Duration::from_secs(10), "the worker exits", || {
        let running = env.is_running(worker);
        async move { !running }
    })
    .await;
    let logs = env.logs();
    assert!(
        logs.contains("--retention-dead") && logs.contains("a retention must be longer than none"),
        "{logs}"
    );
    env.finish().await;
}
