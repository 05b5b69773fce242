//! Metrics, logs, roles, queue pauses and the worker registry, through the real binaries.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{
    Api, FAST_FAILOVER, TestEnv, free_port, json,
    prometheus::{promtool_problems, sample, scrape},
    wait_for_some, wait_until,
};
use uuid::Uuid;

const FAULTS: &[(&str, &str)] = &[("TASKFLEET_FAULT_INJECTION", "true")];

fn noop() -> Value {
    json!({"kind": "executor.run", "tool": "noop"})
}

/// `POST /v1/jobs` of a noop with an `X-Request-ID` header.
async fn submit_with_request_id(api: &Api, key: &str, request_id: &str) -> reqwest::Response {
    api.http
        .post(api.url("/v1/jobs"))
        .bearer_auth(key)
        .header("X-Request-ID", request_id)
        .json(&noop())
        .send()
        .await
        .unwrap()
}

/// Starts a worker serving metrics on a free port; returns its index and metrics base URL.
fn worker_with_metrics(env: &mut TestEnv, extra: &[&str]) -> (usize, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-addr", addr.as_str()];
    args.extend_from_slice(extra);
    (env.start_worker(&args), format!("http://{addr}"))
}

async fn job_ids(body: &Value) -> Vec<Uuid> {
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_jobs_and_pass_promtool() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(FAULTS).await;
    let mut flags = vec!["--fault-injection"];
    flags.extend_from_slice(FAST_FAILOVER);
    let workers = [
        worker_with_metrics(&mut env, &flags),
        worker_with_metrics(&mut env, &flags),
    ];
    let key = env.create_key("acme");

    let batch = api.submit_batch(&key, &vec![noop(); 20]).await;
    let mut ids = job_ids(&batch).await;
    let doomed = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "fault", "max_attempts": 2,
                   "args": {"mode": "fail", "retry_after_ms": 10}}),
        )
        .await;
    ids.push(doomed);
    for id in &ids {
        api.wait_finished(&key, *id, Duration::from_secs(60)).await;
    }

    // Workers: every attempt counted once, by outcome, across the fleet.
    let mut worker_text = Vec::new();
    for (_, base) in &workers {
        let text = scrape(base).await;
        assert_eq!(promtool_problems(&text), "", "worker metrics:\n{text}");
        worker_text.push(text);
    }
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
        worker_text
            .iter()
            .map(|text| sample(text, name, labels))
            .sum()
    };
    let executor = [("queue", "executor"), ("kind", "executor.run")];
    let outcome = |o| [executor[0], executor[1], ("outcome", o)];
    assert_eq!(total("taskfleet_jobs_total", &outcome("succeeded")), 20.0);
    assert_eq!(total("taskfleet_jobs_total", &outcome("retry")), 1.0);
    assert_eq!(total("taskfleet_jobs_total", &outcome("dead")), 1.0);
    assert_eq!(
        total("taskfleet_job_queue_wait_seconds_count", &executor),
        22.0
    );
    assert_eq!(
        total("taskfleet_job_duration_seconds_count", &executor),
        22.0
    );
    assert_eq!(total("taskfleet_worker_is_leader", &[]), 1.0);
    assert_eq!(total("taskfleet_worker_active_jobs", &[]), 0.0);
    assert_eq!(
        total("taskfleet_worker_concurrency", &[("queue", "executor")]),
        32.0
    );
    assert!(worker_text[0].contains("process_resident_memory_bytes"));

    // The API: ledger gauges and request durations by route template.
    let text = scrape(&api.base).await;
    assert_eq!(promtool_problems(&text), "", "API metrics:\n{text}");
    // Every attempt's job was pushed to Redis, by the dispatcher or by the API.
    let dispatched = [("queue", "executor")];
    assert!(
        total("taskfleet_jobs_dispatched_total", &dispatched)
            + sample(&text, "taskfleet_jobs_dispatched_total", &dispatched)
            >= 22.0
    );
    let depth = |state| {
        sample(
            &text,
            "taskfleet_queue_jobs",
            &[("queue", "executor"), ("state", state)],
        )
    };
    assert_eq!(
        (depth("succeeded"), depth("dead"), depth("queued")),
        (20.0, 1.0, 0.0)
    );
    assert_eq!(sample(&text, "taskfleet_workers_online", &[]), 2.0);
    assert_eq!(
        sample(&text, "taskfleet_queue_paused", &[("queue", "executor")]),
        0.0
    );
    let requests = |route, method, status| {
        sample(
            &text,
            "taskfleet_http_request_duration_seconds_count",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/v1/jobs/batch", "POST", "201"), 1.0);
    assert_eq!(requests("/v1/jobs", "POST", "201"), 1.0);
    assert_eq!(
        requests("/v1/jobs/{id}", "GET", "200"),
        sample(
            &text,
            "taskfleet_http_request_duration_seconds_count",
            &[("route", "/v1/jobs/{id}")],
        )
    );
    assert!(
        requests("/v1/jobs/{id}", "GET", "200") >= 21.0,
        "{}",
        text.lines()
            .filter(|l| l.contains("_count"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A worker killed mid-job: the leader reclaims its lease and says so; the job then
    // runs on the survivor, where cancelling it is counted too.
    let hung = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "fault", "args": {"mode": "hang"}}),
        )
        .await;
    let runner: String = wait_for_some(Duration::from_secs(20), "the hanging job runs", || async {
        let (_, job) = api.get(&key, &format!("/v1/jobs/{hung}")).await;
        (job["state"] == "running").then(|| job["worker"].as_str().unwrap().to_owned())
    })
    .await;
    let victim = env
        .worker_index(&runner)
        .expect("the runner is one of ours");
    env.signal(victim, "KILL");
    let survivor = &workers
        .iter()
        .find(|(index, _)| *index != victim)
        .unwrap()
        .1;
    wait_until(
        Duration::from_secs(30),
        "the survivor reclaims the lease",
        || async {
            let text = scrape(survivor).await;
            sample(
                &text,
                "taskfleet_leases_reclaimed_total",
                &[("queue", "executor")],
            ) == 1.0
        },
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the job runs again on the survivor",
        || async {
            let (_, job) = api.get(&key, &format!("/v1/jobs/{hung}")).await;
            job["state"] == "running" && job["attempt"] == 2
        },
    )
    .await;
    let (status, _) = api
        .post(&key, &format!("/v1/jobs/{hung}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let done = api.wait_finished(&key, hung, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "cancelled");
    let text = scrape(survivor).await;
    assert_eq!(
        sample(&text, "taskfleet_jobs_total", &[("outcome", "cancelled")]),
        1.0
    );
    assert_eq!(promtool_problems(&text), "", "{text}");
    env.finish().await;
}

fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_reach_jobs_and_every_log_line_of_their_attempts() {
    let mut env = TestEnv::new().await;
    env.capture_logs();
    let logging = [("TASKFLEET_LOG_JSON", "true"), ("RUST_LOG", "info")];
    let api = env.start_api(&logging).await;
    env.start_worker_env(&[], &logging);
    let key = env.create_key("acme");

    let resp = submit_with_request_id(&api, &key, "req-obs-42").await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-request-id"], "req-obs-42");
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["request_id"], "req-obs-42");
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();

    // Without the header (or with an unusable one) the API makes one up and says which.
    let resp = submit_with_request_id(&api, &key, "has spaces \"and quotes\"").await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    let other: Value = resp.json().await.unwrap();
    assert_eq!(other["request_id"], generated.as_str());

    // A wrong key that looks like a real one is refused and never logged either.
    let forged = format!("tfk_{}", "ab".repeat(32));
    let (status, _) = api.get(&forged, "/v1/jobs").await;
    assert_eq!(status, 401);

    let done = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    let enqueued: Value = sqlx::query_scalar(
        "SELECT details FROM all_job_events WHERE job_id = $1 AND event = 'job_enqueued'",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(enqueued["request_id"], "req-obs-42");

    let mut worker_line = None;
    wait_until(
        Duration::from_secs(10),
        "the worker logs the attempt",
        || {
            let lines = json_lines(&env.logs());
            worker_line = lines.into_iter().find(|line| {
                line["fields"]["message"] == "attempt recorded"
                    && line["span"]["job_id"] == id.to_string()
            });
            std::future::ready(worker_line.is_some())
        },
    )
    .await;
    let span = &worker_line.unwrap()["span"];
    assert_eq!(span["request_id"], "req-obs-42", "{span}");
    assert_eq!(span["queue"], "executor");
    assert_eq!(span["kind"], "executor.run");
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["worker"], done["worker"]);

    let logs = env.logs();
    let served = json_lines(&logs).into_iter().find(|line| {
        line["fields"]["message"] == "served" && line["span"]["request_id"] == "req-obs-42"
    });
    let served = served.expect("the API logs the request under its id");
    assert_eq!(served["fields"]["status"], 201);
    assert_eq!(served["fields"]["route"], "/v1/jobs");
    for secret in [key.as_str(), &key[4..], forged.as_str()] {
        assert!(!logs.contains(secret), "an API key reached the logs");
    }
    assert!(!logs.to_lowercase().contains("bearer"));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_every_tenant_and_tenants_only_their_own() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let acme = env.create_key("acme");
    let globex = env.create_key("globex");
    let ops = env.create_operator_key("ops");
    let acme_jobs = job_ids(&api.submit_batch(&acme, &[noop(), noop()]).await).await;
    let theirs = api.submit(&globex, noop()).await;

    let (_, me) = api.get(&ops, "/v1/me").await;
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("ops"), Some("operator"))
    );
    let (_, me) = api.get(&acme, "/v1/me").await;
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("acme"), Some("tenant"))
    );

    // Reading one job.
    assert_eq!(api.get(&acme, &format!("/v1/jobs/{theirs}")).await.0, 404);
    let (status, job) = api.get(&ops, &format!("/v1/jobs/{theirs}")).await;
    assert_eq!((status, job["tenant"].as_str()), (200, Some("globex")));

    // Listing.
    let tenants = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["tenant"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = api.get(&acme, "/v1/jobs").await;
    assert_eq!(tenants(&page), ["acme", "acme"]);
    let (_, page) = api.get(&ops, "/v1/jobs").await;
    assert_eq!(tenants(&page), ["globex", "acme", "acme"]);
    let (_, page) = api.get(&ops, "/v1/jobs?tenant=acme").await;
    assert_eq!(tenants(&page), ["acme", "acme"]);
    let (status, err) = api.get(&acme, "/v1/jobs?tenant=globex").await;
    assert_eq!((status, err["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(api.get(&acme, "/v1/jobs?tenant=acme").await.0, 200);
    let (status, err) = api.get(&ops, "/v1/jobs?tenant=nobody").await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_found")));

    // Acting on another tenant's job.
    let cancel = format!("/v1/jobs/{theirs}/cancel");
    assert_eq!(api.post(&acme, &cancel, &json!({})).await.0, 404);
    let (status, job) = api.post(&ops, &cancel, &json!({})).await;
    assert_eq!((status, job["state"].as_str()), (200, Some("cancelled")));
    let (status, job) = api
        .post(&ops, &format!("/v1/jobs/{theirs}/retry"), &json!({}))
        .await;
    assert_eq!((status, job["state"].as_str()), (200, Some("queued")));

    // Fleet views.
    let (status, err) = api.get(&acme, "/v1/workers").await;
    assert_eq!((status, err["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(api.get(&ops, "/v1/workers").await.0, 200);
    let (status, _) = api
        .post(&acme, "/v1/queues/executor/pause", &json!({}))
        .await;
    assert_eq!(status, 403);
    let (status, err) = api.post(&ops, "/v1/queues/nope/pause", &json!({})).await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_found")));
    let queued = |list: &Value| {
        list["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "executor")
            .unwrap()["depth"]["queued"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(queued(&api.get(&acme, "/v1/queues").await.1), 2);
    assert_eq!(queued(&api.get(&ops, "/v1/queues").await.1), 3);
    assert_eq!(acme_jobs.len(), 2);
    env.finish().await;
}

/// Events named `event` of the tenant `acme`'s jobs (readiness probes are another tenant's).
async fn acme_events(env: &TestEnv, event: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM all_job_events
         WHERE event = $1 AND tenant_id = (SELECT id FROM tenants WHERE name = 'acme')",
    )
    .bind(event)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn dispatched(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE dispatched_at IS NOT NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_queue_starts_nothing_until_resumed() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let ops = env.create_operator_key("ops");
    // The leader dispatches executor jobs into Redis, but nobody consumes them yet.
    env.start_worker(&["--queues", "schedule"]);
    let first = job_ids(&api.submit_batch(&key, &vec![noop(); 10]).await).await;
    wait_until(Duration::from_secs(20), "the jobs sit in Redis", || async {
        dispatched(&env).await == 10
    })
    .await;

    let (status, queue) = api
        .post(&ops, "/v1/queues/executor/pause", &json!({}))
        .await;
    assert_eq!(
        (status, queue["paused"].as_bool()),
        (200, Some(true)),
        "{queue}"
    );
    assert_eq!(env.count_events("queue_paused").await, 1);
    // Pausing twice changes nothing.
    assert_eq!(
        api.post(&ops, "/v1/queues/executor/pause", &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(env.count_events("queue_paused").await, 1);

    // A consumer arrives: the copies in Redis reach it, and each goes back to the ledger
    // instead of starting.
    env.start_worker(&["--queues", "executor"]);
    wait_until(
        Duration::from_secs(20),
        "the delivered jobs are parked",
        || async { dispatched(&env).await == 0 },
    )
    .await;
    let later = job_ids(&api.submit_batch(&key, &vec![noop(); 5]).await).await;
    // The fleet's own readiness probe is not held back: /readyz still proves workers run.
    let ready = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acme_events(&env, "job_started").await, 0);
    assert_eq!(
        dispatched(&env).await,
        0,
        "paused jobs are not dispatched again"
    );
    assert_eq!(
        acme_events(&env, "job_dispatched").await,
        10,
        "no dispatch churn"
    );
    assert_eq!(env.count_state("queued").await, 15);

    let (_, list) = api.get(&ops, "/v1/queues").await;
    let executor = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "executor")
        .unwrap()
        .clone();
    assert_eq!(executor["paused"], true);
    assert_eq!(executor["depth"]["queued"], 15);
    let metrics = scrape(&api.base).await;
    assert_eq!(
        sample(&metrics, "taskfleet_queue_paused", &[("queue", "executor")]),
        1.0
    );

    let (status, queue) = api
        .post(&ops, "/v1/queues/executor/resume", &json!({}))
        .await;
    assert_eq!((status, queue["paused"].as_bool()), (200, Some(false)));
    for id in first.iter().chain(&later) {
        let job = api.wait_finished(&key, *id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded");
        assert_eq!(job["attempt"], 1, "parking is not an attempt");
    }
    assert_eq!(env.count_events("queue_resumed").await, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_registry_and_queue_stats_describe_the_fleet() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let ops = env.create_operator_key("ops");
    let first = env.start_worker(&[]);
    env.start_worker(&["--concurrency", "4,executor=8"]);
    let ids = job_ids(&api.submit_batch(&ops, &vec![noop(); 10]).await).await;
    for id in &ids {
        api.wait_finished(&ops, *id, Duration::from_secs(30)).await;
    }

    let workers = wait_for_some(
        Duration::from_secs(20),
        "heartbeats report the totals",
        || async {
            let (_, list) = api.get(&ops, "/v1/workers").await;
            let workers = list["workers"].as_array().unwrap().clone();
            let complete = workers.len() == 2
                && workers
                    .iter()
                    .map(|w| w["processed"].as_i64().unwrap())
                    .sum::<i64>()
                    == 10
                && workers.iter().filter(|w| w["leader"] == true).count() == 1;
            complete.then_some(workers)
        },
    )
    .await;
    for worker in &workers {
        assert_eq!(worker["online"], true);
        assert_eq!(
            worker["queues"],
            json!(["ingest", "embed", "agent", "test", "executor", "schedule"])
        );
        assert_eq!(worker["failed"], 0);
        assert!(worker["heartbeat_age_seconds"].as_f64().unwrap() < 15.0);
        assert_eq!(worker["active_jobs"], json!([]));
    }
    let concurrency: Vec<&Value> = workers.iter().map(|w| &w["concurrency"]).collect();
    assert!(
        concurrency.contains(
            &&json!({"executor": 8, "ingest": 4, "embed": 4, "agent": 4, "schedule": 4, "test": 4})
        ),
        "{concurrency:?}"
    );

    let (_, list) = api.get(&ops, "/v1/queues").await;
    let executor = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "executor")
        .unwrap()
        .clone();
    let throughput = executor["throughput"].as_array().unwrap();
    assert_eq!(throughput.len(), 15);
    let finished: i64 = throughput
        .iter()
        .map(|m| m["succeeded"].as_i64().unwrap())
        .sum();
    assert_eq!(finished, 10);
    assert_eq!(executor["failure_rate"], 0.0);
    assert!(executor["wait_p95_seconds"].as_f64().unwrap() >= 0.0);

    // A worker that stops gracefully shows as offline at once, with when it stopped.
    assert!(env.terminate(first).success());
    let (_, list) = api.get(&ops, "/v1/workers").await;
    let stopped: Vec<&Value> = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["online"] == false)
        .collect();
    assert_eq!(stopped.len(), 1, "{list}");
    assert!(stopped[0]["stopped_at"].is_string());
    assert_eq!(
        list["workers"][0]["online"], true,
        "online workers come first"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_stay_up_and_drop_ledger_series_while_postgres_is_away() {
    let mut env = TestEnv::new().await;
    let postgres = env.proxy_postgres().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    api.submit(&key, noop()).await;
    let text = scrape(&api.base).await;
    assert_eq!(
        sample(&text, "taskfleet_queue_jobs", &[("state", "queued")]),
        1.0
    );

    postgres.cut();
    // Ledger numbers are reused for a few seconds, then dropped rather than reported stale.
    let text = wait_for_some(
        Duration::from_secs(30),
        "ledger series are dropped",
        || async {
            let text = scrape(&api.base).await;
            (!text.contains("taskfleet_queue_jobs{")).then_some(text)
        },
    )
    .await;
    assert!(!text.contains("taskfleet_workers_online "), "{text}");
    assert!(text.contains("taskfleet_http_request_duration_seconds_count"));
    assert_eq!(promtool_problems(&text), "");

    postgres.restore();
    wait_until(
        Duration::from_secs(30),
        "ledger series come back",
        || async {
            let text = scrape(&api.base).await;
            sample(&text, "taskfleet_queue_jobs", &[("state", "queued")]) == 1.0
        },
    )
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pausing_the_schedule_queue_leaves_missed_slots_to_each_schedules_policy() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let ops = env.create_operator_key("ops");
    env.start_worker(&[]);
    let (status, schedule) = api
        .post(
            &key,
            "/v1/schedules",
            &json!({"name": "every-second", "cron": "* * * * * *", "missed": "skip",
                    "target": {"kind": "executor.run", "tool": "noop"}}),
        )
        .await;
    assert_eq!(status, 201, "{schedule}");
    let fired = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM schedule_firings")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    wait_until(Duration::from_secs(20), "the schedule fires", || async {
        fired().await >= 2
    })
    .await;

    assert_eq!(
        api.post(&ops, "/v1/queues/schedule/pause", &json!({}))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_pause = fired().await;
    let fire_jobs = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE kind = 'schedule.fire'")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let fire_jobs_at_pause = fire_jobs().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        fire_jobs().await,
        fire_jobs_at_pause,
        "nothing fires while paused"
    );
    assert_eq!(fired().await, at_pause);

    assert_eq!(
        api.post(&ops, "/v1/queues/schedule/resume", &json!({}))
            .await
            .0,
        200
    );
    wait_until(
        Duration::from_secs(20),
        "the schedule fires again",
        || async { fired().await >= at_pause + 2 },
    )
    .await;
    // The four or so slots that passed while paused were skipped, as the policy says, not
    // fired in a burst.
    assert!(env.count_events("schedule_skipped").await >= 1);
    let burst: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM schedule_firings
         WHERE fired_at > now() - interval '2 seconds'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(burst <= 3, "{burst} firings in the last two seconds");
    env.finish().await;
}
