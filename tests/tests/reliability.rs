//! Retries, dead jobs, cancellation, idempotency and drain, through the API and real workers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskfleet_tests::{Api, TestEnv, json, wait_until};
use uuid::Uuid;

const FAULTS: &[(&str, &str)] = &[("TASKFLEET_FAULT_INJECTION", "true")];

async fn fleet() -> (TestEnv, Api, String) {
    let mut env = TestEnv::new().await;
    let api = env.start_api(FAULTS).await;
    env.start_worker(&["--fault-injection", "--lease-ttl-ms", "3000"]);
    let key = env.create_key("acme");
    (env, api, key)
}

fn fault(args: serde_json::Value) -> serde_json::Value {
    json!({"kind": "executor.run", "tool": "fault", "args": args})
}

/// `(ts, details)` of a job's events named `event`, oldest first.
async fn events(env: &TestEnv, job: Uuid, event: &str) -> Vec<(DateTime<Utc>, serde_json::Value)> {
    sqlx::query_as(
        "SELECT ts, details FROM all_job_events WHERE job_id = $1 AND event = $2 ORDER BY id",
    )
    .bind(job)
    .bind(event)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_growing_jittered_backoff_then_succeed() {
    let (env, api, key) = fleet().await;
    let mut job = fault(json!({"mode": "fail", "times": 3}));
    job["max_attempts"] = json!(5);
    let id = api.submit(&key, job).await;
    let done = api.wait_finished(&key, id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 4);
    assert_eq!(done["attempt_errors"].as_array().unwrap().len(), 3);
    assert_eq!(done["result"]["failed_attempts"], 3);

    // Executor policy: the delay after attempt n is uniform in [0, 1 s · 2^(n-1)].
    let retries = events(&env, id, "job_retry_scheduled").await;
    assert_eq!(retries.len(), 3);
    for (n, (ts, details)) in retries.iter().enumerate() {
        let retry_at: DateTime<Utc> = details["retry_at"].as_str().unwrap().parse().unwrap();
        let delay = retry_at - *ts;
        let ceiling = chrono::Duration::seconds(1 << n);
        assert!(
            delay >= chrono::Duration::milliseconds(-50) && delay <= ceiling,
            "delay {delay} after attempt {}",
            n + 1
        );
        assert_eq!(details["attempt"], n as i64 + 1);
    }
    let starts = events(&env, id, "job_started").await;
    for pair in starts.windows(2).zip(retries.iter()) {
        let ([(first, _), (next, _)], (_, details)) = pair else {
            unreachable!()
        };
        let retry_at: DateTime<Utc> = details["retry_at"].as_str().unwrap().parse().unwrap();
        assert!(
            *next >= retry_at && *next > *first,
            "attempt started before its retry_at"
        );
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_hints_and_permanent_errors_are_honoured() {
    let (env, api, key) = fleet().await;
    let hinted = api
        .submit(
            &key,
            fault(json!({"mode": "fail", "times": 1, "retry_after_ms": 1500})),
        )
        .await;
    let permanent = api
        .submit(&key, fault(json!({"mode": "fail", "permanent": true})))
        .await;
    let panics = api
        .submit(&key, {
            let mut job = fault(json!({"mode": "panic"}));
            job["max_attempts"] = json!(2);
            job
        })
        .await;

    let done = api
        .wait_finished(&key, hinted, Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "succeeded");
    let starts = events(&env, hinted, "job_started").await;
    assert!(
        starts[1].0 - starts[0].0 >= chrono::Duration::milliseconds(1500),
        "hint ignored"
    );

    let dead = api
        .wait_finished(&key, permanent, Duration::from_secs(30))
        .await;
    assert_eq!(
        (dead["state"].as_str(), dead["attempt"].as_i64()),
        (Some("dead"), Some(1)),
        "{dead}"
    );
    assert!(dead["error"].as_str().unwrap().contains("injected failure"));

    let dead = api
        .wait_finished(&key, panics, Duration::from_secs(30))
        .await;
    assert_eq!(
        (dead["state"].as_str(), dead["attempt"].as_i64()),
        (Some("dead"), Some(2)),
        "{dead}"
    );
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains("handler panicked: injected panic"),
        "{dead}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_jobs_are_listed_and_run_again_by_hand() {
    let (env, api, key) = fleet().await;
    let mut job = fault(json!({"mode": "fail", "times": 1}));
    job["max_attempts"] = json!(1);
    let id = api.submit(&key, job).await;
    let dead = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(dead["state"], "dead");
    let (_, page) = api.get(&key, "/v1/jobs?state=dead").await;
    assert_eq!(page["jobs"][0]["id"], id.to_string());

    let (status, retried) = api
        .post(&key, &format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["state"], "queued");
    let done = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2);
    assert_eq!(
        done["attempt_errors"].as_array().unwrap().len(),
        1,
        "history kept"
    );

    let (status, body) = api
        .post(&key, &format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );
    let other = env.create_key("globex");
    let (status, _) = api
        .post(&other, &format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 404);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_jobs_never_start_and_running_ones_stop() {
    let (env, api, key) = fleet().await;
    // Not yet due: cancelled before it could start.
    let later = Utc::now() + chrono::Duration::seconds(2);
    let (status, scheduled) = api
        .post(
            &key,
            "/v1/jobs",
            &json!({"kind": "executor.run", "tool": "noop", "run_at": later}),
        )
        .await;
    assert_eq!(status, 201);
    let scheduled: Uuid = scheduled["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = api
        .post(&key, &format!("/v1/jobs/{scheduled}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );

    // Running: its handler hangs until the cancellation stops it.
    let hanging = api.submit(&key, fault(json!({"mode": "hang"}))).await;
    wait_until(Duration::from_secs(20), "the hanging job runs", || async {
        api.get(&key, &format!("/v1/jobs/{hanging}")).await.1["state"] == "running"
    })
    .await;
    let (status, body) = api
        .post(&key, &format!("/v1/jobs/{hanging}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["cancel_requested_at"].is_string(), "{body}");
    let done = api
        .wait_finished(&key, hanging, Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "cancelled", "{done}");
    let names: Vec<String> = env
        .job_events(hanging)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert!(
        names.ends_with(&["job_cancel_requested".into(), "job_cancelled".into()]),
        "{names:?}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let names: Vec<String> = env
        .job_events(scheduled)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        names,
        ["job_enqueued", "job_cancelled"],
        "the cancelled job must never start"
    );

    let (status, body) = api
        .post(&key, &format!("/v1/jobs/{hanging}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );

    // A job cancelled while running, then retried by hand, runs to the end: the old
    // cancellation does not stop the new attempt.
    let slow = api
        .submit(&key, fault(json!({"mode": "slow", "ms": 1500})))
        .await;
    wait_until(Duration::from_secs(20), "the slow job runs", || async {
        api.get(&key, &format!("/v1/jobs/{slow}")).await.1["state"] == "running"
    })
    .await;
    let (status, _) = api
        .post(&key, &format!("/v1/jobs/{slow}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let done = api.wait_finished(&key, slow, Duration::from_secs(10)).await;
    assert_eq!(done["state"], "cancelled");
    let (status, _) = api
        .post(&key, &format!("/v1/jobs/{slow}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let done = api.wait_finished(&key, slow, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_return_the_first_job() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let job = json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 1}});
    let send = |body: serde_json::Value, idem: &'static str| {
        let (api, key) = (api.clone(), key.clone());
        async move {
            let resp = api
                .http
                .post(api.url("/v1/jobs"))
                .bearer_auth(&key)
                .header("Idempotency-Key", idem)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, first) = send(job.clone(), "order-42").await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = send(job.clone(), "order-42").await;
    assert_eq!((status, &again["id"]), (200, &first["id"]));
    // The body field and the header are the same key.
    let mut in_body = job.clone();
    in_body["idempotency_key"] = json!("order-42");
    let (status, body) = api.post(&key, "/v1/jobs", &in_body).await;
    assert_eq!((status, &body["id"]), (200, &first["id"]));

    let different = json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 2}});
    let (status, body) = send(different, "order-42").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("idempotency_key_reused")),
        "{body}"
    );

    // A batch that reuses a key with another payload is refused whole.
    let batch = json!({"jobs": [
        {"kind": "executor.run", "tool": "noop", "idempotency_key": "fresh"},
        {"kind": "executor.run", "tool": "noop", "idempotency_key": "order-42"}
    ]});
    let (status, _) = api.post(&key, "/v1/jobs/batch", &batch).await;
    assert_eq!(status, 409);
    let (_, page) = api.get(&key, "/v1/jobs").await;
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        1,
        "nothing of the refused batch stayed"
    );

    // Keys belong to a tenant.
    let other = env.create_key("globex");
    let (status, body) = api.post(&other, "/v1/jobs", &in_body).await;
    assert_eq!(status, 201);
    assert_ne!(body["id"], first["id"]);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_then_hands_back_what_is_left() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let draining = env.start_worker(&["--drain-timeout-secs", "2", "--concurrency", "8"]);
    let short: Vec<Uuid> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(
                api.submit(
                    &key,
                    json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 800}}),
                )
                .await,
            );
        }
        ids
    };
    let long = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 6000}}),
        )
        .await;
    wait_until(Duration::from_secs(20), "all four jobs run", || async {
        env.count_state("running").await == 4
    })
    .await;
    let worker_name: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1")
        .bind(long)
        .fetch_one(&env.pool)
        .await
        .unwrap();

    let status = env.terminate(draining);
    assert!(status.success(), "a draining worker exits 0, got {status}");
    for id in short {
        let (_, job) = api.get(&key, &format!("/v1/jobs/{id}")).await;
        assert_eq!(
            job["state"], "succeeded",
            "finished within the drain timeout: {job}"
        );
    }
    let (_, job) = api.get(&key, &format!("/v1/jobs/{long}")).await;
    assert_eq!(job["state"], "queued", "handed back: {job}");
    assert_eq!(
        job["attempt"], 0,
        "a handed-back run is not a failed attempt"
    );

    env.start_worker(&[]);
    let done = api.wait_finished(&key, long, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    assert_ne!(done["worker"].as_str(), Some(worker_name.as_str()));
    let names: Vec<String> = env
        .job_events(long)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert!(names.contains(&"job_handed_back".to_owned()), "{names:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancellation_whose_signal_was_lost_still_stops_the_running_job() {
    let (env, api, key) = fleet().await;
    let hanging = api.submit(&key, fault(json!({"mode": "hang"}))).await;
    wait_until(Duration::from_secs(20), "the hanging job runs", || async {
        api.get(&key, &format!("/v1/jobs/{hanging}")).await.1["state"] == "running"
    })
    .await;
    // The request reaches the ledger, but its Redis signal never reaches the worker (Redis
    // was away when the API sent it).
    sqlx::query("UPDATE jobs SET cancel_requested_at = now() WHERE id = $1")
        .bind(hanging)
        .execute(&env.pool)
        .await
        .unwrap();
    let done = api
        .wait_finished(&key, hanging, Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "cancelled", "{done}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_worker_waits_between_rescues_and_dies_stalled() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(FAULTS).await;
    let worker = [
        "--fault-injection",
        "--lease-ttl-ms",
        "2000",
        "--leader-ttl-ms",
        "1000",
        "--max-stalls",
        "2",
    ];
    let mut index = env.start_worker(&worker);
    let key = env.create_key("acme");
    let mut job = fault(json!({"mode": "exit"}));
    job["max_attempts"] = json!(10);
    let id = api.submit(&key, job).await;

    let mut crashes = 0;
    let done = loop {
        let (_, body) = api.get(&key, &format!("/v1/jobs/{id}")).await;
        if body["state"] == "dead" {
            break body;
        }
        if !env.is_running(index) {
            crashes += 1;
            assert!(crashes <= 2, "the job took down {crashes} workers");
            index = env.start_worker(&worker);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        done["error"].as_str().unwrap().starts_with("stalled"),
        "{done}"
    );
    assert_eq!(done["attempt"], 2, "{done}");

    // The rescue in between sent it to wait out a retry delay, not back to the queue at once.
    let retries = events(&env, id, "job_retry_scheduled").await;
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].1["reason"], "lease expired");
    let retry_at: DateTime<Utc> = retries[0].1["retry_at"].as_str().unwrap().parse().unwrap();
    let second_start = events(&env, id, "job_started").await[1].0;
    assert!(
        second_start >= retry_at,
        "started before its retry delay ended"
    );
    env.finish().await;
}
