//! Schedules: one target job per slot across several workers and a leader change, thousands
//! of schedules on one slot, late rounds that still fire, missed slots skipped or caught up
//! once, one-shots, pause and resume, validation, paging and tenant scoping.

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskfleet_tests::{Api, FAST_FAILOVER, TestEnv, json, wait_until};
use uuid::Uuid;

async fn create(api: &Api, key: &str, body: serde_json::Value) -> Uuid {
    let (status, schedule) = api.post(key, "/v1/schedules", &body).await;
    assert_eq!(status, 201, "{schedule}");
    schedule["id"].as_str().unwrap().parse().unwrap()
}

fn every_second(name: &str, missed: &str) -> serde_json::Value {
    json!({"name": name, "cron": "* * * * * *", "missed": missed,
           "target": {"kind": "executor.run", "tool": "noop"}})
}

/// A schedule of no-ops, stored straight in the ledger: every second (`cron`) or once (`at`,
/// also its first slot), first firing at `next`.
fn noop_schedule(
    name: &str,
    once_at: Option<DateTime<Utc>>,
    missed: &str,
    next: DateTime<Utc>,
) -> taskfleet_storage::ScheduleDefinition {
    taskfleet_storage::ScheduleDefinition {
        name: name.into(),
        target: json!({"kind": "executor.run", "tool": "noop"}),
        cron: once_at.is_none().then(|| "* * * * * *".into()),
        time_zone: None,
        at: once_at,
        missed: missed.into(),
        next_fire_at: Some(next),
    }
}

/// `(fire_at, catch_up)` of a schedule's firings, oldest first, after checking that each
/// created its own target job and no other target job exists.
async fn firings(env: &TestEnv, schedule: Uuid) -> Vec<(DateTime<Utc>, bool)> {
    let rows: Vec<(DateTime<Utc>, bool, Uuid)> = sqlx::query_as(
        "SELECT fire_at, catch_up, job_id FROM schedule_firings
         WHERE schedule_id = $1 ORDER BY fire_at",
    )
    .bind(schedule)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let targets: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key LIKE $1 ORDER BY id")
            .bind(format!("schedule:{schedule}:%"))
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut fired_jobs: Vec<Uuid> = rows.iter().map(|(_, _, job)| *job).collect();
    fired_jobs.sort();
    assert_eq!(fired_jobs, targets, "one target job per firing, no more");
    rows.into_iter()
        .map(|(at, catch_up, _)| (at, catch_up))
        .collect()
}

/// `(fire_at, catch_up)` of a schedule's fire jobs, oldest slot first.
async fn fire_jobs(env: &TestEnv, schedule: Uuid) -> Vec<(DateTime<Utc>, bool)> {
    let mut rows: Vec<(DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT (payload->>'fire_at')::timestamptz, COALESCE((payload->>'catch_up')::bool, false)
         FROM jobs WHERE kind = 'schedule.fire' AND payload->>'schedule_id' = $1",
    )
    .bind(schedule.to_string())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.sort();
    rows
}

/// A scheduler over the test's ledger, run by the test rather than by an elected leader.
fn scheduler(env: &TestEnv) -> taskfleet_worker::scheduler::Scheduler {
    use taskfleet_storage::{Ledger, Queues, Schedules, redis::Keys};
    taskfleet_worker::scheduler::Scheduler::new(
        Schedules::new(env.pool.clone()),
        Queues::new(env.pool.clone()),
        Ledger::new(&env.db),
        env.redis.clone(),
        Keys::new(&env.redis_prefix),
    )
}

/// `t` to the whole second, down.
fn whole(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap()
}

fn seconds(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Waits until a scheduler has recorded that it runs: the slots before its first round are
/// missed, as no scheduler ran at their time.
async fn wait_for_a_scheduler(env: &TestEnv) {
    wait_until(Duration::from_secs(30), "a scheduler runs", || async {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM scheduler_clock)")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    })
    .await
}

async fn pause_and_settle(api: &Api, key: &str, schedules: &[Uuid]) {
    for id in schedules {
        let (status, _) = api
            .post(key, &format!("/v1/schedules/{id}/pause"), &json!({}))
            .await;
        assert_eq!(status, 200);
    }
    // Fire jobs already created still run.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_second_across_three_workers_fires_exactly_once_a_second() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    for _ in 0..3 {
        env.start_worker(FAST_FAILOVER);
    }
    wait_for_a_scheduler(&env).await;
    let id = create(&api, &key, every_second("heartbeat", "skip")).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    pause_and_settle(&api, &key, &[id]).await;

    let fired = firings(&env, id).await;
    assert!(fired.len() >= 18, "{} firings in 20 s", fired.len());
    for pair in fired.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            chrono::Duration::seconds(1),
            "a slot was missed or repeated"
        );
    }
    let (_, schedule) = api.get(&key, &format!("/v1/schedules/{id}")).await;
    assert_eq!(
        schedule["last_firings"][0]["fire_at"]
            .as_str()
            .map(|s| s.parse::<DateTime<Utc>>().unwrap()),
        Some(fired.last().unwrap().0)
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_change_skips_or_catches_up_missed_slots_without_duplicates() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    // A long leader ttl makes the hand-over gap span whole seconds.
    let flags: Vec<&str> = FAST_FAILOVER
        .iter()
        .map(|flag| if *flag == "2000" { "4000" } else { flag })
        .collect();
    assert!(flags.windows(2).any(|w| w == ["--leader-ttl-ms", "4000"]));
    for _ in 0..3 {
        env.start_worker(&flags);
    }
    wait_for_a_scheduler(&env).await;
    let skipping = create(&api, &key, every_second("skipping", "skip")).await;
    let catching_up = create(&api, &key, every_second("catching-up", "catch_up_once")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leader = env.leader_index().await.expect("a leader holds the lease");
    env.signal(leader, "KILL");
    tokio::time::sleep(Duration::from_secs(10)).await;
    pause_and_settle(&api, &key, &[skipping, catching_up]).await;

    let skipped = firings(&env, skipping).await;
    let gaps = |fired: &[(DateTime<Utc>, bool)]| {
        fired
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).num_seconds() - 1)
            .sum::<i64>()
    };
    assert!(
        gaps(&skipped) >= 1,
        "the hand-over missed slots: {skipped:?}"
    );
    assert!(skipped.iter().all(|(_, catch_up)| !catch_up));
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM all_job_events WHERE event = 'schedule_skipped' AND details->>'schedule_id' = $1",
    )
    .bind(skipping.to_string())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(events >= 1, "skipped slots are recorded");

    let caught_up = firings(&env, catching_up).await;
    assert_eq!(
        caught_up.iter().filter(|(_, c)| *c).count(),
        1,
        "one catch-up firing: {caught_up:?}"
    );
    assert_eq!(
        gaps(&caught_up) + 1,
        gaps(&skipped),
        "the catch-up filled one missed slot"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_shots_fire_once_and_paused_schedules_wait_for_resume() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(&[]);
    wait_for_a_scheduler(&env).await;
    let at = Utc::now() + chrono::Duration::seconds(2);
    let once = create(
        &api,
        &key,
        json!({"name": "once", "at": at,
                                          "target": {"kind": "executor.run", "tool": "noop"}}),
    )
    .await;
    let paused = create(&api, &key, every_second("paused", "skip")).await;
    let (status, body) = api
        .post(&key, &format!("/v1/schedules/{paused}/pause"), &json!({}))
        .await;
    assert_eq!((status, body["paused"].as_bool()), (200, Some(true)));
    tokio::time::sleep(Duration::from_secs(5)).await;

    let fired = firings(&env, once).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].0.timestamp_millis(), at.timestamp_millis());
    let (_, schedule) = api.get(&key, &format!("/v1/schedules/{once}")).await;
    assert!(schedule["next_fire_at"].is_null(), "{schedule}");
    let job_id = schedule["last_firings"][0]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        api.wait_finished(&key, job_id, Duration::from_secs(10))
            .await["state"],
        "succeeded"
    );

    assert!(
        firings(&env, paused).await.is_empty(),
        "a paused schedule does not fire"
    );
    let resumed_at = Utc::now();
    let (status, body) = api
        .post(&key, &format!("/v1/schedules/{paused}/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);
    // The first slot after the moment the API resumed it, which lies between the two.
    let answered_at = Utc::now();
    let next: DateTime<Utc> = body["next_fire_at"].as_str().unwrap().parse().unwrap();
    assert!(
        next > resumed_at && next <= answered_at + chrono::Duration::seconds(1),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fired = firings(&env, paused).await;
    assert!(!fired.is_empty(), "resumed at the next slot");
    assert!(
        fired.iter().all(|(at, _)| *at > resumed_at),
        "nothing from the paused time fired"
    );
    env.finish().await;
}

#[tokio::test]
async fn schedules_are_validated_and_scoped_to_their_tenant() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let acme = env.create_key("acme");
    let globex = env.create_key("globex");
    let noop = json!({"kind": "executor.run", "tool": "noop"});
    let past = Utc::now() - chrono::Duration::minutes(1);
    let cases = [
        (
            json!({"name": "a", "cron": "every day", "target": noop}),
            "invalid cron expression",
        ),
        (
            json!({"name": "a", "cron": "0 * * * * *", "time_zone": "Mars/Olympus", "target": noop}),
            "unknown time zone",
        ),
        (
            json!({"name": "a", "at": past, "target": noop}),
            "is in the past",
        ),
        (json!({"name": "a", "target": noop}), "give `cron`"),
        (
            json!({"name": "a", "cron": "0 * * * * *", "at": Utc::now() + chrono::Duration::hours(1), "target": noop}),
            "not both",
        ),
        (
            json!({"name": "a", "cron": "0 * * * * *", "target": {"kind": "executor.run", "tool": "sleep"}}),
            "target: tool `sleep` needs",
        ),
        (
            json!({"name": "a", "cron": "0 * * * * *", "target": {"kind": "agent.chat", "message": "hi"}}),
            "agent.chat",
        ),
        (
            json!({"name": "a", "cron": "0 * * * * *", "missed": "sometimes", "target": noop}),
            "MissedPolicy",
        ),
        (
            json!({"name": "a", "cron": "0 0 0 1 1 * 2020", "target": noop}),
            "never fires",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = api.post(&acme, "/v1/schedules", &body).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(expected), "`{message}` lacks `{expected}`");
    }

    let hourly = json!({"name": "hourly", "cron": "0 0 * * * *", "time_zone": "Europe/Paris", "target": noop});
    let id = create(&api, &acme, hourly.clone()).await;
    let (status, body) = api.post(&acme, "/v1/schedules", &hourly).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("name_taken")));
    let (status, schedule) = api.get(&acme, &format!("/v1/schedules/{id}")).await;
    assert_eq!(status, 200);
    let next: DateTime<Utc> = schedule["next_fire_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.timestamp() % 3600, 0, "the top of an hour");

    let mut changed = hourly.clone();
    changed["cron"] = json!("0 30 * * * *");
    let resp = api
        .http
        .put(api.url(&format!("/v1/schedules/{id}")))
        .bearer_auth(&acme)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["cron"], "0 30 * * * *");

    // Another tenant sees none of it.
    let (status, _) = api.get(&globex, &format!("/v1/schedules/{id}")).await;
    assert_eq!(status, 404);
    let (_, list) = api.get(&globex, "/v1/schedules").await;
    assert_eq!(list["schedules"], json!([]));
    let (status, _) = api
        .post(&globex, &format!("/v1/schedules/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, 404);
    let resp = api
        .http
        .delete(api.url(&format!("/v1/schedules/{id}")))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let (_, list) = api.get(&acme, "/v1/schedules").await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);

    // Slot keys are the scheduler's: a client cannot claim a future slot's job.
    let claim = json!({"kind": "executor.run", "tool": "noop",
                       "idempotency_key": format!("schedule:{id}:2030-01-01T00:00:00+00:00")});
    let (status, body) = api.post(&acme, "/v1/jobs", &claim).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("reserved"));

    // schedule.fire is the scheduler's own job, not something to submit.
    let (status, body) = api
        .post(
            &acme,
            "/v1/jobs",
            &json!({"kind": "schedule.fire", "schedule_id": id, "fire_at": Utc::now()}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let resp = api
        .http
        .delete(api.url(&format!("/v1/schedules/{id}")))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = api.get(&acme, &format!("/v1/schedules/{id}")).await;
    assert_eq!(status, 404);
    env.finish().await;
}

#[tokio::test]
async fn a_slot_seen_both_on_time_and_missed_does_not_stall_the_scheduler() {
    use taskfleet_jobs::{JobOptions, JobSpec, spec::ScheduleFire};
    use taskfleet_storage::{Ledger, NewJob, Schedules, Scope, Tenants};
    let env = TestEnv::new().await;
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let (schedules, ledger) = (Schedules::new(env.pool.clone()), Ledger::new(&env.db));
    let now = schedules.now().await.unwrap();
    // A catch-up schedule whose recent slots already got on-time fire jobs from an earlier
    // leader that died before moving the schedule on.
    let first = whole(now) - chrono::Duration::seconds(4);
    let stalled = schedules
        .create(
            tenant.id,
            &noop_schedule("stalled", None, "catch_up_once", first),
        )
        .await
        .unwrap();
    let earlier: Vec<NewJob> = (0..8)
        .map(|n| {
            let fire_at = first + chrono::Duration::seconds(n);
            NewJob::new(
                JobSpec::ScheduleFire(ScheduleFire {
                    schedule_id: stalled.id,
                    fire_at,
                    catch_up: false,
                    options: JobOptions {
                        idempotency_key: Some(taskfleet_jobs::schedule::fire_key(
                            stalled.id, fire_at,
                        )),
                        ..JobOptions::default()
                    },
                }),
                None,
            )
        })
        .collect();
    ledger.insert(tenant.id, &earlier, "test").await.unwrap();
    let healthy = schedules
        .create(
            tenant.id,
            &noop_schedule("healthy", None, "skip", whole(now)),
        )
        .await
        .unwrap();

    scheduler(&env).round().await.unwrap();
    for id in [stalled.id, healthy.id] {
        let moved = schedules
            .get(Scope::Tenant(tenant.id), id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            moved.next_fire_at.unwrap() > now,
            "schedule {} did not move on",
            moved.name
        );
    }
    env.finish().await;
}

/// What wakes the scheduler between slots: schedules created, changed or deleted, and queue
/// pauses; nothing else.
#[tokio::test]
async fn schedule_and_pause_changes_wake_the_scheduler() {
    use taskfleet_storage::{Queues, Schedules, Tenants};
    let env = TestEnv::new().await;
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let (schedules, queues) = (
        Schedules::new(env.pool.clone()),
        Queues::new(env.pool.clone()),
    );
    let listening = schedules.clone();
    let (woken, stop) =
        taskfleet_tests::notifications(move || listening.clone().listen_for_changes()).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), woken.notified()).await;
    assert!(quiet.is_err(), "nothing changed, nothing to wake for");
    let woke = |what: &'static str| {
        let woken = woken.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), woken.notified())
                .await
                .unwrap_or_else(|_| panic!("{what} did not wake the scheduler"));
        }
    };

    let created = schedules
        .create(
            tenant.id,
            &noop_schedule(
                "later",
                None,
                "skip",
                Utc::now() + chrono::Duration::hours(1),
            ),
        )
        .await
        .unwrap();
    woke("a new schedule").await;
    queues
        .set_paused(taskfleet_jobs::Queue::Schedule, true, "ops")
        .await
        .unwrap();
    woke("pausing the schedule queue").await;
    queues
        .set_paused(taskfleet_jobs::Queue::Schedule, false, "ops")
        .await
        .unwrap();
    woke("resuming it").await;
    assert!(schedules.delete(tenant.id, created.id).await.unwrap());
    woke("deleting the schedule").await;
    stop.cancel();
    env.finish().await;
}

/// A scheduler with nothing to wait for sleeps until a notification comes: a one-shot
/// created meanwhile fires on time although its fallback round is an hour away.
#[tokio::test]
async fn a_sleeping_scheduler_fires_a_new_one_shot_on_time() {
    use taskfleet_storage::{Schedules, Tenants};
    let env = TestEnv::new().await;
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let schedules = Schedules::new(env.pool.clone());
    let mut scheduler = scheduler(&env);
    scheduler.wake_fallback = Duration::from_secs(3600);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(scheduler.run(stop.clone()));
    // Asleep: its first rounds found no schedule.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let at = schedules.now().await.unwrap() + chrono::Duration::seconds(1);
    let one_shot = schedules
        .create(tenant.id, &noop_schedule("once", Some(at), "skip", at))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the one-shot's fire job exists",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'schedule.fire'
                                                AND payload->>'schedule_id' = $1)",
            )
            .bind(one_shot.id.to_string())
            .fetch_one(&env.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(
        env.count_events("schedule_skipped").await,
        0,
        "fired on time, not missed"
    );
    stop.cancel();
    env.finish().await;
}

/// A round fires every due schedule, not a hundred of them: two thousand schedules on one
/// slot each make one fire job and one target job, none missed.
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_schedules_on_one_slot_all_fire_exactly_once() {
    use taskfleet_storage::{Schedules, Tenants};
    let mut env = TestEnv::new().await;
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    env.start_worker(FAST_FAILOVER);
    wait_for_a_scheduler(&env).await;
    // A cron slot a few seconds ahead that comes once (the year field), shared by all.
    let slot = whole(Schedules::new(env.pool.clone()).now().await.unwrap()) + seconds(4);
    let cron = slot.format("%S %M %H %d %m * %Y").to_string();
    sqlx::query(
        "INSERT INTO schedules (id, tenant_id, name, target, cron, next_fire_at)
         SELECT gen_random_uuid(), $1, 'slot-' || n, $2, $3, $4
         FROM generate_series(1, 2000) AS n",
    )
    .bind(tenant.id)
    .bind(json!({"kind": "executor.run", "tool": "noop"}))
    .bind(&cron)
    .bind(slot)
    .execute(&env.pool)
    .await
    .unwrap();

    let count = |sql: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    wait_until(
        Duration::from_secs(120),
        "every schedule's target job succeeded",
        || async {
            count(
                "SELECT count(*) FROM jobs
                 WHERE idempotency_key LIKE 'schedule:%' AND state = 'succeeded'",
            )
            .await
                == 2000
        },
    )
    .await;
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE kind = 'schedule.fire'").await,
        2000,
        "one fire job per schedule"
    );
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'schedule:%'").await,
        2000,
        "one target job per schedule"
    );
    let (firings, schedules_fired, at_the_slot): (i64, i64, bool) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT schedule_id), bool_and(fire_at = $1 AND NOT catch_up)
         FROM schedule_firings",
    )
    .bind(slot)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((firings, schedules_fired, at_the_slot), (2000, 2000, true));
    assert_eq!(env.count_events("schedule_skipped").await, 0, "none missed");
    env.finish().await;
}

/// A slot that came due while the scheduler ran fires however late its round gets to it:
/// here the round waits on a lock the test holds on `schedules` for seconds.
#[tokio::test(flavor = "multi_thread")]
async fn slots_due_while_a_round_is_held_up_fire_late_not_missed() {
    use taskfleet_storage::{Schedules, Tenants};
    let env = TestEnv::new().await;
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let schedules = Schedules::new(env.pool.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(scheduler(&env).run(stop.clone()));
    wait_for_a_scheduler(&env).await;
    let first = whole(schedules.now().await.unwrap()) + seconds(2);
    let held_up = schedules
        .create(tenant.id, &noop_schedule("held-up", None, "skip", first))
        .await
        .unwrap();

    let mut lock = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE schedules IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "three slots passed behind the lock",
        || async { schedules.now().await.unwrap() >= first + seconds(3) },
    )
    .await;
    lock.commit().await.unwrap();

    wait_until(
        Duration::from_secs(10),
        "the held-up slots fired",
        || async { fire_jobs(&env, held_up.id).await.len() >= 4 },
    )
    .await;
    let fired = fire_jobs(&env, held_up.id).await;
    assert_eq!(
        fired[..4],
        [0, 1, 2, 3].map(|n| (first + seconds(n), false)),
        "every slot, on its own, none as a catch-up"
    );
    assert_eq!(env.count_events("schedule_skipped").await, 0, "none missed");
    stop.cancel();
    env.finish().await;
}

/// Slots that came due between the last beat of a scheduler that stopped and the first round
/// of the next are missed, and follow each schedule's policy; the last stretch of the stopped
/// scheduler (up to a beat after its last) is not.
#[tokio::test]
async fn slots_in_a_gap_without_a_scheduler_are_skipped_or_caught_up_once() {
    use taskfleet_storage::{Schedules, Tenants};
    let env = TestEnv::new().await;
    let tenant = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let schedules = Schedules::new(env.pool.clone());
    // A scheduler runs one round, then stops.
    scheduler(&env).round().await.unwrap();
    let beat = schedules
        .last_beat()
        .await
        .unwrap()
        .expect("it beat")
        .beat_at;
    let first = whole(beat) + seconds(1);
    let mut ids = Vec::new();
    for (name, missed) in [("skipping", "skip"), ("catching-up", "catch_up_once")] {
        let schedule = schedules
            .create(tenant.id, &noop_schedule(name, None, missed, first))
            .await
            .unwrap();
        ids.push(schedule.id);
    }
    wait_until(Duration::from_secs(10), "a gap of seconds", || async {
        schedules.now().await.unwrap() >= first + seconds(5)
    })
    .await;

    // The next scheduler starts.
    scheduler(&env).round().await.unwrap();
    let started = schedules.last_beat().await.unwrap().unwrap().running_since;
    let gap: Vec<DateTime<Utc>> = (1..)
        .map(|n| first + seconds(n))
        .take_while(|slot| *slot < started)
        .collect();
    assert!(gap.len() >= 4, "{gap:?}");
    let skipped_events: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT details FROM all_job_events WHERE event = 'schedule_skipped'
         ORDER BY details->>'policy' DESC",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(skipped_events.len(), 2, "{skipped_events:?}");

    // Skipping: the slot of the stopped scheduler's last stretch fires, the gap is dropped.
    assert_eq!(fire_jobs(&env, ids[0]).await, [(first, false)]);
    assert_eq!(skipped_events[0]["schedule_id"], ids[0].to_string());
    assert_eq!(skipped_events[0]["skipped"], gap.len());
    // Catching up: the same, and once more for the gap's latest slot.
    let latest = *gap.last().unwrap();
    assert_eq!(
        fire_jobs(&env, ids[1]).await,
        [(first, false), (latest, true)]
    );
    assert_eq!(skipped_events[1]["schedule_id"], ids[1].to_string());
    assert_eq!(skipped_events[1]["skipped"], gap.len() - 1);
    env.finish().await;
}

#[tokio::test]
async fn schedules_list_newest_first_by_cursor_within_their_tenant() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let acme = env.create_key("acme");
    let globex = env.create_key("globex");
    let hourly = |name: &str| {
        json!({"name": name, "cron": "0 0 * * * *",
               "target": {"kind": "executor.run", "tool": "noop"}})
    };
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(create(&api, &acme, hourly(&format!("acme-{n}"))).await);
    }
    let theirs = create(&api, &globex, hourly("globex-0")).await;
    // A firing, to show that each schedule gets its own.
    let job_id = Uuid::now_v7();
    sqlx::query("INSERT INTO schedule_firings (schedule_id, fire_at, job_id) VALUES ($1, $2, $3)")
        .bind(created[1])
        .bind(whole(Utc::now()))
        .bind(job_id)
        .execute(&env.pool)
        .await
        .unwrap();

    let mut listed = Vec::new();
    let mut pages = 0;
    let mut path = "/v1/schedules?limit=2".to_owned();
    loop {
        let (status, page) = api.get(&acme, &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for schedule in page["schedules"].as_array().unwrap() {
            let id: Uuid = schedule["id"].as_str().unwrap().parse().unwrap();
            let firings = schedule["last_firings"].as_array().unwrap();
            match id == created[1] {
                true => assert_eq!(firings[0]["job_id"], job_id.to_string()),
                false => assert!(firings.is_empty(), "{schedule}"),
            }
            listed.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/schedules?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<Uuid> = created.iter().rev().copied().collect();
    assert_eq!(listed, newest_first);

    let (_, page) = api.get(&globex, "/v1/schedules").await;
    let ids: Vec<&str> = page["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [theirs.to_string()],
        "another tenant's schedules never show"
    );
    assert!(page["next_cursor"].is_null());
    let (status, _) = api.get(&acme, "/v1/schedules?cursor=nonsense").await;
    assert_eq!(status, 422);
    env.finish().await;
}
