//! taskfleet measured through its real binaries, the way a user runs it: jobs go in through
//! the HTTP API, workers run them, and the ledger records the full lifecycle of each. The
//! workers run with their shipped defaults (no `--concurrency`): the executors they ran are
//! read back from the worker registry.

use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use serde_json::Value;
use taskfleet_tests::{Api, TestEnv, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::stats::{Latency, peak_rss_mib, rate};

/// How many jobs, subscribers and seconds each measure uses.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub burn_down_jobs: usize,
    /// Each system's burn-down, our pickup and API measures, and the BullMQ script run this
    /// many times; the medians count.
    pub runs: usize,
    /// Worker processes in the fleet, each with the worker's default concurrency.
    pub workers: usize,
    /// Jobs at once of the raw apalis-redis worker (one process).
    pub apalis_concurrency: usize,
    pub pickup_jobs: usize,
    pub pickup_per_second: f64,
    pub api_seconds: f64,
    pub sse_subscribers: usize,
    pub sse_jobs: usize,
    pub agents: crate::agents::AgentSizes,
}

/// The benchmark's own jobs (readiness probes belong to another tenant).
const OURS: &str = "tenant_id = (SELECT id FROM tenants WHERE name = 'bench')";

fn noop() -> Value {
    json!({"kind": "executor.run", "tool": "noop"})
}

/// A fleet: the API, an API key and `workers` workers (none for 0), as shipped.
async fn fleet(workers: usize) -> (TestEnv, Api, String, Vec<usize>) {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("bench");
    let workers = (0..workers).map(|_| env.start_worker(&[])).collect();
    (env, api, key, workers)
}

/// Jobs of the `executor` queue the fleet's workers run at once, all told, as each worker
/// registered them (`workers.concurrency`, `{queue: jobs at once}`): the defaults the worker
/// ships with, or `TASKFLEET_CONCURRENCY` if the bench's environment sets it. Each fleet has
/// a database of its own, so every row is one of its workers.
async fn executors(env: &TestEnv) -> anyhow::Result<usize> {
    let total: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum((concurrency ->> 'executor')::bigint), 0)::bigint FROM workers",
    )
    .fetch_one(&env.pool)
    .await?;
    Ok(total as usize)
}

/// Waits until the fleet can run a job (a worker leads and serves).
async fn until_ready(api: &Api) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(resp) = api.http.get(api.url("/readyz")).send().await
            && resp.status() == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the fleet did not become ready")
}

/// Submits `n` no-op jobs in batches of 1,000, four requests at a time; returns their ids.
async fn submit_noops(api: &Api, key: &str, n: usize) -> Vec<Uuid> {
    let batches: Vec<usize> = (0..n).step_by(1000).map(|at| (n - at).min(1000)).collect();
    stream::iter(batches)
        .map(|size| async move {
            let body = api.submit_batch(key, &vec![noop(); size]).await;
            body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|job| job["id"].as_str().unwrap().parse().unwrap())
                .collect::<Vec<Uuid>>()
        })
        .buffer_unordered(4)
        .concat()
        .await
}

async fn succeeded(env: &TestEnv) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND {OURS}"
    ))
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn until_succeeded(env: &TestEnv, n: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let done = succeeded(env).await;
        if done as usize >= n {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {done} of {n} jobs succeeded in {within:?}"
        );
        // The rates come from the ledger's timestamps; this count only decides when to stop,
        // so it runs rarely enough not to load the Postgres being measured (every 250 ms it
        // took about 5% of Postgres's time during a burn-down).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BurnDown {
    /// Jobs per second from the first start to the last success, as the ledger recorded.
    pub per_second: f64,
    pub worker_peak_rss_mib: f64,
    pub api_peak_rss_mib: f64,
    /// Jobs of the `executor` queue (the no-ops' queue) the workers ran at once, all told.
    pub executors: usize,
}

/// Run 1: a backlog of no-ops submitted through the batch API, then the workers start.
pub async fn burn_down(sizes: &Sizes) -> anyhow::Result<BurnDown> {
    burn_down_beside(sizes, 0).await
}

/// The burn-down with `future` more jobs in the ledger, set for tomorrow: future work must
/// cost the dispatcher nothing until it falls due.
pub async fn burn_down_beside(sizes: &Sizes, future: usize) -> anyhow::Result<BurnDown> {
    let (mut env, api, key, _) = fleet(0).await;
    let n = sizes.burn_down_jobs;
    if future > 0 {
        // Written straight into the ledger: a million submissions through the API would be
        // a measure of their own.
        sqlx::query(&format!(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, state, max_attempts, run_at)
             SELECT gen_random_uuid(), (SELECT id FROM tenants WHERE name = 'bench'),
                    'executor', 'executor.run', '{{\"kind\": \"executor.run\", \"tool\": \"noop\"}}',
                    'scheduled', 3, now() + interval '1 day' + make_interval(secs => n)
             FROM generate_series(1, {future}) AS n"
        ))
        .execute(&env.pool)
        .await?;
        sqlx::query("ANALYZE jobs").execute(&env.pool).await?;
    }
    submit_noops(&api, &key, n).await;
    let workers: Vec<usize> = (0..sizes.workers).map(|_| env.start_worker(&[])).collect();
    until_succeeded(&env, n, Duration::from_secs(60 + n as u64 / 50)).await?;
    let (first, last): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(&format!(
        "SELECT min(started_at), max(finished_at) FROM jobs WHERE {OURS}"
    ))
    .fetch_one(&env.pool)
    .await?;
    let lifecycle: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM all_job_events WHERE event IN ('job_started', 'job_succeeded')",
    )
    .fetch_one(&env.pool)
    .await?;
    ensure!(
        lifecycle as usize == 2 * n,
        "the ledger recorded every start and success"
    );
    let result = BurnDown {
        per_second: rate(n, (last - first).to_std()?),
        worker_peak_rss_mib: workers
            .iter()
            .filter_map(|&w| peak_rss_mib(env.pid(w)))
            .fold(0.0, f64::max),
        api_peak_rss_mib: peak_rss_mib(env.pid(0)).unwrap_or(0.0),
        // A worker registers before it takes a job, so every worker that ran one is counted.
        executors: executors(&env).await?,
    };
    env.finish().await;
    Ok(result)
}

/// Run 2: jobs submitted one at a time at a steady rate to a ready fleet; from sending the
/// request to the ledger's start of the job.
/// Pickup latency, whole and by stage (from the ledger's timestamps).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pickup {
    /// From sending `POST /v1/jobs` to the ledger's start of the job.
    pub total: Latency,
    /// From sending the request to the job's row (`created_at`, in the API's insert).
    pub accepted: Latency,
    /// From the row to its push to Redis (`job_dispatched`: the API's own insert when it
    /// pushes the job itself, else the dispatcher's round).
    pub dispatched: Latency,
    /// From the push to the start (`started_at`, in the worker's start).
    pub started: Latency,
}

/// A job's id, row creation, push to Redis and start.
type Stamps = (Uuid, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);

pub async fn pickup(sizes: &Sizes) -> anyhow::Result<Pickup> {
    let (env, api, key, _) = fleet(sizes.workers).await;
    until_ready(&api).await?;
    let every = Duration::from_secs_f64(1.0 / sizes.pickup_per_second);
    let began = Instant::now();
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..sizes.pickup_jobs {
        tokio::time::sleep_until(began + every * i as u32).await;
        let (api, key) = (api.clone(), key.clone());
        sent.spawn(async move {
            let at = Utc::now();
            (api.submit(&key, noop()).await, at)
        });
    }
    let sent: Vec<(Uuid, DateTime<Utc>)> = sent.join_all().await;
    until_succeeded(&env, sizes.pickup_jobs, Duration::from_secs(60)).await?;
    let ids: Vec<Uuid> = sent.iter().map(|(id, _)| *id).collect();
    let sent_at: std::collections::HashMap<Uuid, DateTime<Utc>> = sent.into_iter().collect();
    let stamps: Vec<Stamps> = sqlx::query_as(
        "SELECT j.id, j.created_at,
                (SELECT max(e.ts) FROM all_job_events e
                 WHERE e.job_id = j.id AND e.event = 'job_dispatched'),
                j.started_at
         FROM jobs j WHERE j.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&env.pool)
    .await?;
    env.finish().await;
    let millis = |from: DateTime<Utc>, to: DateTime<Utc>| {
        (to - from).num_microseconds().unwrap_or_default() as f64 / 1e3
    };
    let stage = |of: &dyn Fn(&Stamps) -> f64| Latency::of(stamps.iter().map(of).collect());
    Ok(Pickup {
        total: stage(&|(id, _, _, started)| millis(sent_at[id], *started)),
        accepted: stage(&|(id, created, _, _)| millis(sent_at[id], *created)),
        dispatched: stage(&|(_, created, dispatched, _)| millis(*created, *dispatched)),
        started: stage(&|(_, _, dispatched, started)| millis(*dispatched, *started)),
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ApiRate {
    pub single_per_second: f64,
    pub batch_jobs_per_second: f64,
}

/// Run 3: the API alone (no workers): single submissions from 64 connections, then
/// 1,000-job batches from 8.
pub async fn api_rate(sizes: &Sizes) -> anyhow::Result<ApiRate> {
    let (env, api, key, _) = fleet(0).await;
    let window = Duration::from_secs_f64(sizes.api_seconds);
    let hammer = |connections: usize, jobs_per_request: usize| {
        let (api, key) = (api.clone(), key.clone());
        // The client shares the cores it measures, so it does as little as it can: the body
        // is encoded once, and answers are read but not parsed (a batch's answer is about
        // 500 bytes a job).
        let (path, body) = if jobs_per_request == 1 {
            ("/v1/jobs", noop())
        } else {
            let jobs = vec![noop(); jobs_per_request];
            ("/v1/jobs/batch", json!({ "jobs": jobs }))
        };
        let body = serde_json::to_vec(&body).expect("JSON");
        async move {
            let deadline = Instant::now() + window;
            let counts = stream::iter(0..connections)
                .map(|_| {
                    let (api, key, body) = (api.clone(), key.clone(), body.clone());
                    async move {
                        let mut accepted = 0;
                        while Instant::now() < deadline {
                            let resp = api
                                .http
                                .post(api.url(path))
                                .bearer_auth(&key)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .await
                                .expect("request sent");
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            if status == 201 {
                                accepted += jobs_per_request;
                            }
                        }
                        accepted
                    }
                })
                .buffer_unordered(connections)
                .collect::<Vec<usize>>()
                .await;
            rate(counts.iter().sum(), window)
        }
    };
    let result = ApiRate {
        single_per_second: hammer(64, 1).await,
        batch_jobs_per_second: hammer(8, 1000).await,
    };
    env.finish().await;
    Ok(result)
}

/// The one field of an event the SSE clients read, so that 500 clients in this process
/// cost as little as they can: the figure is about the server.
#[derive(serde::Deserialize)]
struct Stamp {
    ts: DateTime<Utc>,
}

/// Run 4: `sse_subscribers` clients on `GET /v1/events` while `sse_jobs` jobs run; from an
/// event's ledger timestamp to its arrival at each client.
pub async fn sse(sizes: &Sizes) -> anyhow::Result<Latency> {
    let (env, api, key, _) = fleet(sizes.workers).await;
    until_ready(&api).await?;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..sizes.sse_subscribers {
        let (status, stream) = api.sse(&key, "/v1/events", None).await;
        ensure!(status == 200, "SSE subscription refused: {status}");
        let mut stream = stream.context("an SSE stream")?;
        let jobs = sizes.sse_jobs;
        clients.spawn(async move {
            let (mut millis, mut done) = (Vec::new(), 0);
            while done < jobs {
                let Some(message) = stream.next_as::<Stamp>().await else {
                    break;
                };
                let ts = message.data.ts;
                millis.push((Utc::now() - ts).num_microseconds().unwrap() as f64 / 1e3);
                done += usize::from(message.event == "job_succeeded");
            }
            (millis, done)
        });
    }
    submit_noops(&api, &key, sizes.sse_jobs).await;
    let results = tokio::time::timeout(Duration::from_secs(300), clients.join_all())
        .await
        .context("SSE clients did not see every job finish in 5 minutes")?;
    let complete = results.iter().all(|(_, done)| *done == sizes.sse_jobs);
    ensure!(complete, "a subscriber missed events");
    env.finish().await;
    Ok(Latency::of(
        results.into_iter().flat_map(|(millis, _)| millis).collect(),
    ))
}
