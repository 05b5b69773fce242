//! The yardsticks, run against the same Redis in the same invocation: Celery 5 (prefork, one
//! process per core), BullMQ (Node, concurrency 100) and raw apalis-redis, the floor of our
//! own stack. Each drains a pre-filled queue of no-op jobs; the rate runs from the first
//! completion to the last. BullMQ's script also measures its pickup latency at a steady rate
//! and its batch enqueue (`addBulk` of 1,000, 8 calls in flight), the peers of our pickup and
//! `POST /v1/jobs/batch`. Each peer is run as many times as our measures, and the medians
//! are compared. Celery and BullMQ are installed from PyPI and npm on first use under the
//! bench's work directory.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use redis::AsyncCommands;
use taskfleet_jobs::Dispatch;
use tokio::{process::Command, time::Instant};
use uuid::Uuid;

use crate::stats::{Latency, rate};

/// The Redis database the peers use, emptied after each: their keys never meet taskfleet's.
const SCRATCH_DB: u8 = 15;

fn scratch_url(redis_url: &str) -> String {
    format!("{}/{SCRATCH_DB}", redis_url.trim_end_matches('/'))
}

async fn empty_scratch(redis_url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(scratch_url(redis_url))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
    Ok(())
}

async fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("{what}: could not start"))?;
    ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Jobs BullMQ's worker runs at once, in its drain and its pickup.
pub const BULLMQ_CONCURRENCY: usize = 100;

/// One run of a peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub drain_per_second: f64,
    /// Measured for BullMQ only.
    pub pickup: Option<Latency>,
    /// Jobs per second added by `addBulk` of 1,000 jobs, 8 calls in flight: BullMQ only.
    pub add_bulk_per_second: Option<f64>,
}

/// When the first and the latest of `total` completions happened.
#[derive(Default)]
struct Completions {
    done: AtomicUsize,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

async fn count_completion(
    _task: Dispatch,
    completions: Data<Arc<Completions>>,
) -> Result<(), BoxDynError> {
    let now = Instant::now();
    completions.first.lock().unwrap().get_or_insert(now);
    *completions.last.lock().unwrap() = Some(now);
    completions.done.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// apalis-redis with its defaults, but for what it needs to run at all: polling every 10 ms
/// (a bare storage fetches only on its 30 s heartbeat, hazard 8), fetching 100 at a time, and
/// fed in windows the way our dispatcher feeds it. Every push lands in the scheduled set and
/// a fetch moves all of it at once, so a backlog of about 8,000 pushed up front kills the
/// worker (hazard 1); the feeder keeps at most [`APALIS_WINDOW`] × 2 waiting.
pub async fn apalis_redis(
    redis_url: &str,
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<Peer> {
    let client = redis::Client::open(scratch_url(redis_url))?;
    let conn = ConnectionManager::new(client).await?;
    let config = apalis_redis::Config::default()
        .queue(format!("tfbench-{}", Uuid::new_v4().simple()))
        .batch_size(100);
    let storage: RedisStorage<Dispatch, _> =
        RedisStorage::new(conn.clone()).with_config(config.clone());
    // Never resolves once everything is pushed: only a failed push ends the run early.
    let feeding = async {
        feed_apalis(storage, jobs).await?;
        std::future::pending::<anyhow::Result<()>>().await
    };
    let completions = Arc::new(Completions::default());
    let worker = {
        let completions = completions.clone();
        move |_restarts| {
            let backend = PollWith::new(
                RedisStorage::new(conn.clone()).with_config(config.clone()),
                Strategy::new().interval(Duration::from_millis(10)),
            );
            WorkerBuilder::new(format!("tfbench-{}", Uuid::new_v4().simple()))
                .backend(backend)
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .data(completions.clone())
                .build(count_completion)
        }
    };
    let watched = completions.clone();
    let all_done = async move {
        while watched.done.load(Ordering::SeqCst) < jobs {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    };
    let deadline = Duration::from_secs(60 + jobs as u64 / 100);
    let drained = async {
        tokio::select! {
            // Restarted like our own queue workers are; each death is reported.
            ran = Monitor::new()
                .register(worker)
                .should_restart(|worker, err| {
                    eprintln!("raw apalis-redis worker {} stopped: {err}; restarting", worker.name());
                    true
                })
                .run_with_signal(all_done) => {
                ran.map_err(|err| anyhow::anyhow!("apalis monitor: {err}"))
            }
            fed = feeding => fed,
        }
    };
    tokio::time::timeout(deadline, drained)
        .await
        .context("raw apalis-redis did not drain in time")??;
    let (first, last) = (
        completions.first.lock().unwrap().unwrap(),
        completions.last.lock().unwrap().unwrap(),
    );
    empty_scratch(redis_url).await?;
    Ok(Peer {
        drain_per_second: rate(jobs - 1, last - first),
        pickup: None,
        add_bulk_per_second: None,
    })
}

/// Jobs pushed to raw apalis-redis at a time.
const APALIS_WINDOW: usize = 1_000;

/// Pushes `jobs` tasks, a window at a time, whenever fewer than a window wait.
async fn feed_apalis(
    mut storage: RedisStorage<Dispatch, ConnectionManager>,
    jobs: usize,
) -> anyhow::Result<()> {
    let config = storage.get_config().clone();
    let mut pushed = 0;
    while pushed < jobs {
        let conn = storage.get_connection();
        let scheduled: usize = conn.zcard(config.scheduled_jobs_set()).await?;
        let active: usize = conn.llen(config.active_jobs_list()).await?;
        if scheduled + active >= APALIS_WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let window = APALIS_WINDOW.min(jobs - pushed);
        // What our own lists carry for a no-op: its delivery, spec and all.
        let tasks = (0..window)
            .map(|_| Dispatch {
                job_id: Uuid::now_v7(),
                epoch: 1,
                attempt: 1,
                max_attempts: 3,
                tenant_id: Uuid::nil(),
                queue: taskfleet_jobs::Queue::Executor,
                kind: "executor.run".to_owned(),
                run_at: chrono::Utc::now(),
                request_id: None,
                payload: Some(serde_json::json!({"kind": "executor.run", "tool": "noop"})),
            })
            .collect();
        storage.push_bulk(tasks).await?;
        pushed += window;
    }
    Ok(())
}

/// Celery 5 with the Redis broker: prefork, one process per core, results ignored.
pub async fn celery(work_dir: &Path, redis_url: &str, jobs: usize) -> anyhow::Result<Peer> {
    let venv = work_dir.join("celery-venv");
    if !venv.join("bin/celery").exists() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )
        .await?;
        run(
            Command::new(venv.join("bin/pip")).args(["install", "-q", "celery[redis]>=5,<6"]),
            "pip install celery",
        )
        .await?;
    }
    let queue = format!("tfbench-{}", Uuid::new_v4().simple());
    let counter = format!("{queue}:done");
    let broker = scratch_url(redis_url);
    let env = [
        ("BENCH_BROKER", broker.as_str()),
        ("BENCH_QUEUE", queue.as_str()),
        ("BENCH_COUNTER", counter.as_str()),
    ];
    run(
        Command::new(venv.join("bin/python"))
            .arg(peers_dir().join("celery_bench.py"))
            .args(["enqueue", &jobs.to_string()])
            .envs(env),
        "celery enqueue",
    )
    .await?;
    let cores = std::thread::available_parallelism()?.get().to_string();
    let mut worker = Command::new(venv.join("bin/celery"))
        .args([
            "-A",
            "celery_bench",
            "worker",
            "-Q",
            &queue,
            "-c",
            &cores,
            "-P",
            "prefork",
        ])
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ])
        .current_dir(peers_dir())
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("celery worker")?;
    let client = redis::Client::open(broker)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(60 + jobs as u64 / 50);
    let mut first: Option<(Instant, usize)> = None;
    let last = loop {
        let done: usize = conn.get::<_, Option<usize>>(&counter).await?.unwrap_or(0);
        let now = Instant::now();
        if done > 0 && first.is_none() {
            first = Some((now, done));
        }
        if done >= jobs {
            break now;
        }
        if now > deadline {
            bail!("Celery ran {done} of {jobs} jobs in time");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (first_at, done_then) = first.expect("seen before the last");
    worker.kill().await?;
    empty_scratch(redis_url).await?;
    Ok(Peer {
        drain_per_second: rate(jobs - done_then, last - first_at),
        pickup: None,
        add_bulk_per_second: None,
    })
}

/// BullMQ (Node), concurrency 100: one run of its script, which measures the drain rate, the
/// pickup latency and the `addBulk` rate (for `add_bulk_seconds`, as long as our API's).
pub async fn bullmq(
    work_dir: &Path,
    redis_url: &str,
    jobs: usize,
    pickup_jobs: usize,
    pickup_per_second: f64,
    add_bulk_seconds: f64,
) -> anyhow::Result<Peer> {
    let dir = work_dir.join("bullmq");
    if !dir.join("node_modules/bullmq").exists() {
        std::fs::create_dir_all(&dir)?;
        run(
            Command::new("npm")
                .args([
                    "install",
                    "--silent",
                    "--no-audit",
                    "--no-fund",
                    "bullmq",
                    "ioredis",
                ])
                .current_dir(&dir),
            "npm install bullmq ioredis",
        )
        .await?;
    }
    // Node resolves `bullmq` from the script's own directory.
    std::fs::copy(
        peers_dir().join("bullmq_bench.mjs"),
        dir.join("bullmq_bench.mjs"),
    )?;
    let out = run(
        Command::new("node")
            .arg("bullmq_bench.mjs")
            .args([jobs, BULLMQ_CONCURRENCY, pickup_jobs].map(|n| n.to_string()))
            .arg(pickup_per_second.to_string())
            .arg(add_bulk_seconds.to_string())
            .env("BENCH_REDIS", scratch_url(redis_url))
            .current_dir(&dir),
        "the BullMQ script",
    )
    .await?;
    empty_scratch(redis_url).await?;
    let result: serde_json::Value = serde_json::from_str(out.trim())?;
    let number = |v: &serde_json::Value| v.as_f64().context("a number");
    Ok(Peer {
        drain_per_second: number(&result["drain_per_second"])?,
        pickup: Some(Latency {
            p50: number(&result["latency"]["p50"])?,
            p99: number(&result["latency"]["p99"])?,
            max: number(&result["latency"]["max"])?,
            samples: pickup_jobs,
        }),
        add_bulk_per_second: Some(number(&result["add_bulk_per_second"])?),
    })
}
