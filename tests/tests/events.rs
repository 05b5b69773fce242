//! The event log and its SSE streams: complete ordered sequences, resume without gap or
//! duplicate, fan-out to many subscribers, tenant isolation, progress.

use std::{collections::BTreeSet, time::Duration};

use taskfleet_tests::{Api, SseMessage, TestEnv, json, wait_until};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);

/// A no-op job for the tests that drive the ledger directly.
fn noop_job() -> taskfleet_storage::NewJob {
    taskfleet_storage::NewJob::new(
        serde_json::from_value(json!({"kind": "executor.run", "tool": "noop"})).unwrap(),
        None,
    )
}

/// Starts a delivery and records its success, as a worker would.
async fn run_to_success(ledger: &taskfleet_storage::Ledger, delivery: &taskfleet_jobs::Dispatch) {
    let started = ledger
        .start_many(&[delivery.start_request()], "worker-a")
        .await;
    assert!(started.unwrap()[0].is_some());
    let finish = taskfleet_tests::finish_of(
        delivery,
        "worker-a",
        taskfleet_storage::Outcome::Succeeded(json!(null)),
    );
    ledger.finish_many(&[finish]).await.unwrap();
}

fn names(messages: &[SseMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.event.as_str()).collect()
}

async fn fleet(faults: bool) -> (TestEnv, Api, String) {
    let mut env = TestEnv::new().await;
    let flags: &[(&str, &str)] = if faults {
        &[("TASKFLEET_FAULT_INJECTION", "true")]
    } else {
        &[]
    };
    let api = env.start_api(flags).await;
    env.start_worker(if faults { &["--fault-injection"] } else { &[] });
    let key = env.create_key("acme");
    (env, api, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_retries_once_streams_its_whole_ordered_life() {
    let (env, api, key) = fleet(true).await;
    let id = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "fault",
                             "args": {"mode": "fail", "times": 1, "retry_after_ms": 200}}),
        )
        .await;
    let (status, stream) = api.sse(&key, &format!("/v1/jobs/{id}/events"), None).await;
    assert_eq!(status, 200);
    let messages = stream.unwrap().collect(WITHIN).await;
    assert_eq!(
        names(&messages),
        [
            "job_enqueued",
            "job_dispatched",
            "job_started",
            "job_failed",
            "job_retry_scheduled",
            "job_dispatched",
            "job_started",
            "job_succeeded",
        ]
    );
    assert!(
        messages.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase"
    );
    for m in &messages {
        assert_eq!(m.data["seq"], m.id);
        assert_eq!(m.data["event"], m.event);
        assert_eq!(m.data["job_id"], id.to_string());
        assert_eq!(m.data["queue"], "executor");
        assert_eq!(m.data["kind"], "executor.run");
    }
    assert_eq!(
        messages[3].data["details"]["error"],
        "injected failure on attempt 1"
    );
    // Resuming after the end (as EventSource does on its own) closes at once, empty.
    let last = messages.last().unwrap().id;
    let resumed = api
        .sse(&key, &format!("/v1/jobs/{id}/events"), Some(last))
        .await
        .1
        .unwrap();
    assert_eq!(resumed.collect(WITHIN).await, []);
    // The ended job's stream replays and closes at once.
    let again = api
        .sse(&key, &format!("/v1/jobs/{id}/events"), None)
        .await
        .1
        .unwrap();
    assert_eq!(again.collect(WITHIN).await, messages);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_with_last_event_id_leaves_no_gap_and_no_duplicate() {
    let (env, api, key) = fleet(false).await;
    let (_, mut all_events) = api.sse(&key, "/v1/events", None).await;
    let id = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 600}}),
        )
        .await;
    let path = format!("/v1/jobs/{id}/events");
    let mut first = api.sse(&key, &path, None).await.1.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next().await.expect("an event"));
    }
    drop(first); // the client disconnects mid-stream
    let last = seen.last().unwrap().id;
    let rest = api
        .sse(&key, &path, Some(last))
        .await
        .1
        .unwrap()
        .collect(WITHIN)
        .await;
    let full = api
        .sse(&key, &path, None)
        .await
        .1
        .unwrap()
        .collect(WITHIN)
        .await;
    let union: Vec<SseMessage> = seen.into_iter().chain(rest).collect();
    assert_eq!(union, full, "the resumed union is exactly the job's stream");
    let progress: Vec<f64> = full
        .iter()
        .filter(|m| m.event == "job_progress")
        .map(|m| m.data["details"]["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(progress, [25.0, 50.0, 75.0], "sleep reports its quarters");
    let (_, job) = api.get(&key, &format!("/v1/jobs/{id}")).await;
    assert_eq!(job["progress_percent"], 100.0);

    // The tenant-wide stream, resumed through the query parameter, matches too.
    let all_events = all_events.as_mut().unwrap();
    let mut live = Vec::new();
    while live.len() < full.len() {
        live.push(all_events.next().await.unwrap());
    }
    assert_eq!(live, full);
    let split = live[2].id;
    let resumed = api
        .sse(
            &key,
            &format!("/v1/events?last_event_id={split}&event=job_progress,job_succeeded"),
            None,
        )
        .await
        .1
        .unwrap();
    let mut resumed = resumed;
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(resumed.next().await.unwrap());
    }
    let expected: Vec<SseMessage> = full
        .iter()
        .filter(|m| m.id > split && matches!(m.event.as_str(), "job_progress" | "job_succeeded"))
        .cloned()
        .collect();
    assert_eq!(got, expected);
    env.finish().await;
}

/// While the Redis event stream cannot be used (every append and read of it fails), a live
/// client still gets every event: the API's hub reads them from Postgres.
#[tokio::test(flavor = "multi_thread")]
async fn live_clients_get_every_event_while_the_redis_stream_is_broken() {
    let (env, api, key) = fleet(false).await;
    let (status, stream) = api.sse(&key, "/v1/events", None).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    // A string where the stream belongs: `XADD` and `XREAD` fail with WRONGTYPE.
    let stream_key = taskfleet_storage::redis::Keys::new(&env.redis_prefix).event_stream();
    let () = redis::pipe()
        .del(&stream_key)
        .ignore()
        .set(&stream_key, "not a stream")
        .ignore()
        .query_async(&mut env.redis.clone())
        .await
        .unwrap();
    // The hub's blocking read in progress when the stream broke ends empty, and the hub
    // reads the first job's events from Postgres as it does for a quiet stream; its next
    // reads fail at once, so the second job's events come only through its error path.
    for _ in 0..2 {
        let id = api
            .submit(&key, json!({"kind": "executor.run", "tool": "noop"}))
            .await;
        let mut seen = Vec::new();
        tokio::time::timeout(WITHIN, async {
            while let Some(message) = stream.next().await {
                if message.data["job_id"] == id.to_string() {
                    seen.push(message.event.clone());
                    if message.event == "job_succeeded" {
                        break;
                    }
                }
            }
        })
        .await
        .expect("the job's events arrive");
        assert_eq!(
            seen,
            [
                "job_enqueued",
                "job_dispatched",
                "job_started",
                "job_succeeded"
            ]
        );
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_subscribers_each_receive_every_event() {
    let (env, api, key) = fleet(false).await;
    // Readers run while the jobs do; they stop at the last event once it is known.
    let (last_tx, last_rx) = tokio::sync::watch::channel(i64::MAX);
    let mut readers = Vec::new();
    for _ in 0..500 {
        let (status, stream) = api.sse(&key, "/v1/events", None).await;
        assert_eq!(status, 200);
        let (mut stream, mut last) = (stream.unwrap(), last_rx.clone());
        readers.push(tokio::spawn(async move {
            let mut seqs: Vec<i64> = Vec::new();
            while seqs.last().is_none_or(|seen| seen < &*last.borrow()) {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => seqs.push(message.id),
                        None => break,
                    },
                    _ = last.changed() => {}
                }
            }
            seqs
        }));
    }
    let jobs: Vec<_> = (0..1000)
        .map(|_| json!({"kind": "executor.run", "tool": "noop"}))
        .collect();
    api.submit_batch(&key, &jobs).await;
    wait_until(
        WITHIN,
        "the run finished and every event is numbered",
        || async {
            env.count_state("succeeded").await == 1000
                && sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_event_batches")
                    .fetch_one(&env.pool)
                    .await
                    .unwrap()
                    == 0
        },
    )
    .await;
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT e.seq FROM job_events e JOIN tenants t ON t.id = e.tenant_id
         WHERE t.name = 'acme' ORDER BY e.seq",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    // Four per job: enqueued, dispatched, started, succeeded.
    assert!(expected.len() >= 4000, "{} events", expected.len());
    last_tx.send_replace(*expected.last().unwrap());
    for reader in readers {
        let seqs = tokio::time::timeout(Duration::from_secs(120), reader)
            .await
            .expect("every subscriber reached the last event")
            .unwrap();
        assert_eq!(seqs, expected, "a subscriber missed or repeated events");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_own_events_and_bad_ids_are_refused() {
    let (env, api, acme) = fleet(false).await;
    let globex = env.create_key("globex");
    let (_, globex_stream) = api.sse(&globex, "/v1/events", None).await;
    let mut globex_stream = globex_stream.unwrap();
    let acme_jobs: Vec<_> = (0..20)
        .map(|_| json!({"kind": "executor.run", "tool": "noop"}))
        .collect();
    let body = api.submit_batch(&acme, &acme_jobs).await;
    let acme_id: Uuid = body["jobs"][0]["id"].as_str().unwrap().parse().unwrap();
    let globex_id = api
        .submit(&globex, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    let mut seen = BTreeSet::new();
    while !seen.contains("job_succeeded") {
        let message = globex_stream.next().await.unwrap();
        assert_eq!(message.data["job_id"], globex_id.to_string(), "{message:?}");
        seen.insert(message.event);
    }
    let (status, _) = api
        .sse(&globex, &format!("/v1/jobs/{acme_id}/events"), None)
        .await;
    assert_eq!(status, 404);
    // A replay from the start holds only the tenant's own events.
    let replay = api
        .sse(&globex, &format!("/v1/jobs/{globex_id}/events"), Some(0))
        .await
        .1
        .unwrap();
    assert!(
        replay
            .collect(WITHIN)
            .await
            .iter()
            .all(|m| m.data["job_id"] == globex_id.to_string())
    );

    for bad in ["abc", "-5", "1.5"] {
        let resp = api
            .http
            .get(api.url("/v1/events"))
            .bearer_auth(&acme)
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "Last-Event-ID {bad}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");
    }
    let (status, _) = api.get(&acme, "/v1/events?last_event_id=xyz").await;
    assert_eq!(status, 400);
    let resp = api.http.get(api.url("/v1/events")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    env.finish().await;
}

/// The leader purges its old probe jobs with their events; the newest numbered event stays,
/// so the next event is numbered after every `seq` a stream has already shown.
#[tokio::test]
async fn purging_probe_jobs_never_hands_out_a_seq_again() {
    use taskfleet_storage::{EventLog, Ledger, Tenants, tenants::SYSTEM_TENANT};

    let env = TestEnv::new().await;
    let (ledger, events) = (Ledger::new(&env.db), EventLog::new(env.pool.clone()));
    let tenants = Tenants::new(env.pool.clone());
    let probe = noop_job();
    let system = tenants.ensure(SYSTEM_TENANT).await.unwrap();
    let inserted = ledger
        .insert_for(
            &[system.id],
            std::slice::from_ref(&probe),
            &[true],
            "readyz",
        )
        .await
        .unwrap();
    let delivery = inserted[0].delivery().expect("the probe was dispatched");
    run_to_success(&ledger, &delivery).await;
    let newest = events.sequence(100).await.unwrap().last_seq.unwrap();

    delete_finished_probes(&env).await;
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM all_job_events")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, [newest], "only the newest numbered event stays");

    let acme = tenants.ensure("acme").await.unwrap();
    ledger.insert(acme.id, &[noop_job()], "api").await.unwrap();
    let next = events.sequence(100).await.unwrap();
    assert_eq!(next.count, 1);
    assert_eq!(next.last_seq, Some(newest + 1));
    env.finish().await;
}

/// Each statement's events wait for their numbers as one batch; the sequencer takes whole
/// batches, at least one, until a round holds its limit, and numbers them in the order they
/// happened.
#[tokio::test]
async fn the_sequencer_numbers_whole_batches_in_order() {
    use taskfleet_storage::{EventLog, Ledger, NewJob, Tenants};

    let env = TestEnv::new().await;
    let (ledger, events) = (Ledger::new(&env.db), EventLog::new(env.pool.clone()));
    let acme = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let three = || -> Vec<NewJob> { (0..3).map(|_| noop_job()).collect() };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let jobs = three();
        ids.extend(jobs.iter().map(|job| job.id));
        ledger.insert(acme.id, &jobs, "api").await.unwrap();
    }
    let batches: Vec<i32> = sqlx::query_scalar("SELECT n FROM job_event_batches ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(batches, [3, 3, 3], "one batch a statement");

    // Before the second batch three events wait, fewer than four: it is taken; before the
    // third, six.
    assert_eq!(events.sequence(4).await.unwrap().count, 6);
    // A batch larger than the limit is taken whole.
    assert_eq!(events.sequence(1).await.unwrap().count, 3);
    assert_eq!(events.sequence(1).await.unwrap().count, 0);

    let numbered: Vec<(i64, uuid::Uuid)> =
        sqlx::query_as("SELECT seq, job_id FROM job_events ORDER BY seq")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let seqs: Vec<i64> = numbered.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    let jobs: Vec<uuid::Uuid> = numbered.iter().map(|(_, job)| *job).collect();
    let mut submitted = ids.clone();
    // Within a statement events go in job order; statements in the order they committed.
    for chunk in submitted.chunks_mut(3) {
        chunk.sort();
    }
    assert_eq!(jobs, submitted);
    env.finish().await;
}

/// Purging a probe job whose events still wait for their numbers takes them out of their
/// batches, and leaves other jobs' events in the same batch to be numbered.
#[tokio::test]
async fn purging_a_job_takes_its_waiting_events_out_of_shared_batches() {
    use taskfleet_storage::{Ledger, Tenants, tenants::SYSTEM_TENANT};

    let env = TestEnv::new().await;
    let ledger = Ledger::new(&env.db);
    let tenants = Tenants::new(env.pool.clone());
    let (probe, other) = (noop_job(), noop_job());
    let system = tenants.ensure(SYSTEM_TENANT).await.unwrap();
    let acme = tenants.ensure("acme").await.unwrap();
    // One statement for both tenants' jobs: their `job_enqueued` events share a batch.
    let inserted = ledger
        .insert_for(
            &[system.id, acme.id],
            &[probe.clone(), other.clone()],
            &[true, false],
            "api",
        )
        .await
        .unwrap();
    let delivery = inserted[0].delivery().expect("the probe was dispatched");
    run_to_success(&ledger, &delivery).await;

    delete_finished_probes(&env).await;
    let waiting: Vec<(Option<uuid::Uuid>, String)> =
        sqlx::query_as("SELECT job_id, event FROM all_job_events ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(waiting, [(Some(other.id), "job_enqueued".to_owned())]);
    let numbered = taskfleet_storage::EventLog::new(env.pool.clone())
        .sequence(100)
        .await
        .unwrap();
    assert_eq!((numbered.count, numbered.last_seq), (1, Some(1)));
    env.finish().await;
}

/// A stale write refused in the same outcome batch as the job's own outcome is recorded
/// before it: the terminal event stays the job's last, where its stream ends.
#[tokio::test]
async fn a_stale_write_in_the_same_batch_comes_before_the_terminal_event() {
    use taskfleet_storage::{EventLog, Finish, Ledger, Outcome, Tenants};

    let env = TestEnv::new().await;
    let ledger = Ledger::new(&env.db);
    let acme = Tenants::new(env.pool.clone()).ensure("acme").await.unwrap();
    let job = noop_job();
    ledger
        .insert(acme.id, std::slice::from_ref(&job), "api")
        .await
        .unwrap();
    let epoch = taskfleet_tests::start_due(&ledger, &[job.id], "worker-b").await[0].epoch;
    let finish = |epoch, worker: &str| Finish {
        id: job.id,
        epoch,
        worker: worker.to_owned(),
        outcome: Outcome::Succeeded(json!(null)),
    };
    ledger
        .finish_many(&[finish(epoch, "worker-b"), finish(epoch - 1, "worker-a")])
        .await
        .unwrap();
    // The sequencer numbers events in id order.
    EventLog::new(env.pool.clone()).sequence(100).await.unwrap();
    let events: Vec<String> = env
        .job_events(job.id)
        .await
        .into_iter()
        .map(|(event, _)| event)
        .collect();
    assert_eq!(
        events,
        [
            "job_enqueued",
            "job_dispatched",
            "job_started",
            "stale_write_rejected",
            "job_succeeded"
        ]
    );
    env.finish().await;
}

/// The leader's loops wait for Postgres to say something changed instead of asking: the
/// sequencer asked every 10 ms and the scheduler every 100 ms, about 420 commits in this
/// window of an idle fleet of one worker; now events are still numbered as they come.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_fleet_leaves_postgres_nearly_idle() {
    let (env, api, key) = fleet(false).await;
    let noop = json!({"kind": "executor.run", "tool": "noop"});
    let first = api.submit(&key, noop.clone()).await;
    api.wait_finished(&key, first, WITHIN).await;
    let commits = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    // Backends report their counts at least once a second while they work.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = commits().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_commits = commits().await - before;
    assert!(
        idle_commits < 100,
        "{idle_commits} commits in 3 s of an idle fleet"
    );

    let second = api.submit(&key, noop).await;
    api.wait_finished(&key, second, WITHIN).await;
    wait_until(
        WITHIN,
        "the second job's four events are numbered",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_events WHERE job_id = $1")
                .bind(second)
                .fetch_one(&env.pool)
                .await
                .unwrap()
                == 4
        },
    )
    .await;
    env.finish().await;
}

/// What wakes the sequencer: a commit that appended events, and nothing else.
#[tokio::test]
async fn a_commit_that_appends_events_wakes_the_sequencer() {
    let env = TestEnv::new().await;
    let events = taskfleet_storage::EventLog::new(env.pool.clone());
    let listening = events.clone();
    let (woken, stop) =
        taskfleet_tests::notifications(move || listening.clone().listen_for_appends()).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), woken.notified()).await;
    assert!(quiet.is_err(), "nothing appended, nothing to wake for");
    // A transaction that appends and rolls back wakes nobody.
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO job_event_batches (n, entries) VALUES (0, '{}')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let rolled_back = tokio::time::timeout(Duration::from_millis(300), woken.notified()).await;
    assert!(rolled_back.is_err(), "a rolled-back append wakes nobody");

    events
        .record_fleet(taskfleet_jobs::EventName::WorkerOnline, "test", json!({}))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken.notified())
        .await
        .expect("the append woke the sequencer");
    stop.cancel();
    env.finish().await;
}

/// The sequencer itself waits on those notifications: with its fallback round an hour away,
/// an event appended while it sleeps is numbered all the same.
#[tokio::test]
async fn a_sleeping_sequencer_numbers_a_new_event_at_once() {
    let env = TestEnv::new().await;
    let events = taskfleet_storage::EventLog::new(env.pool.clone());
    let sequencer = taskfleet_worker::event_sequencer::EventSequencer {
        events: events.clone(),
        conn: env.redis.clone(),
        keys: taskfleet_storage::redis::Keys::new(&env.redis_prefix),
        wake_fallback: Duration::from_secs(3600),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sequencer.run(stop.clone()));
    // Asleep: its first rounds found nothing to number.
    tokio::time::sleep(Duration::from_millis(500)).await;

    events
        .record_fleet(taskfleet_jobs::EventName::WorkerOnline, "test", json!({}))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the event is numbered", || async {
        events.latest_seq().await.unwrap() == 1
    })
    .await;
    stop.cancel();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keys_streams_are_bounded_and_a_long_replay_resumes_in_pieces() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[
            ("TASKFLEET_SSE_STREAMS_PER_KEY", "2"),
            ("TASKFLEET_SSE_REPLAY_MAX", "3"),
        ])
        .await;
    env.start_worker(&[]);
    let key = env.create_key("acme");
    let other = env.create_key("globex");
    let second_key = env.create_key("acme");
    let id = api
        .submit(&key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    api.wait_finished(&key, id, WITHIN).await;

    // The job has four events (enqueued, dispatched, started, succeeded): a replay of three
    // at most ends after three, and resuming from the last gives the rest, without a gap.
    let path = format!("/v1/jobs/{id}/events");
    let (status, stream) = api.sse(&key, &path, None).await;
    assert_eq!(status, 200);
    let mut seen = stream.unwrap().collect(WITHIN).await;
    assert_eq!(seen.len(), 3);
    let last = seen.last().unwrap().id;
    let (status, rest) = api.sse(&key, &path, Some(last)).await;
    assert_eq!(status, 200);
    seen.extend(rest.unwrap().collect(WITHIN).await);
    assert_eq!(
        names(&seen),
        [
            "job_enqueued",
            "job_dispatched",
            "job_started",
            "job_succeeded"
        ]
    );

    // Those streams ended and gave their places back: two open, a third is refused.
    // Another key's streams, of the same tenant or another, are counted apart.
    let (first, _first) = api.sse(&key, "/v1/events", None).await;
    let (second, _second) = api.sse(&key, "/v1/events", None).await;
    assert_eq!((first, second), (200, 200));
    let (status, refused) = api.sse(&key, "/v1/events", None).await;
    assert_eq!(status, 429);
    assert!(refused.is_none());
    let (status, _theirs) = api.sse(&other, "/v1/events", None).await;
    assert_eq!(status, 200);
    let (status, _same_tenant) = api.sse(&second_key, "/v1/events", None).await;
    assert_eq!(status, 200);
    env.finish().await;
}

/// Deletes the fleet's finished probe jobs at once, as the leader's cleaner does a minute
/// after they end.
async fn delete_finished_probes(env: &TestEnv) {
    use taskfleet_storage::job_cleaner::{CleanerConfig, JobCleaner};
    let config = CleanerConfig {
        probes: Duration::ZERO,
        ..CleanerConfig::default()
    };
    JobCleaner::new(env.pool.clone(), config)
        .run_once(|_| {})
        .await
        .unwrap();
}
