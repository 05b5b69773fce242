//! Assembles a worker process: connections, one apalis worker per served queue under one
//! `Monitor`, the leader elector, and graceful shutdown on SIGTERM or Ctrl-C.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use apalis::prelude::*;
use taskfleet_agents::Agents;
use taskfleet_connectors::Providers;
use taskfleet_jobs::{Dispatch, EventName, Queue};
use taskfleet_storage::{
    Budgets, Connectors, Conversations, Db, EventLog, Lease, Ledger, LlmProviders, Queues,
    Schedules, Tasks, WorkerInfo, Workers,
    job_cleaner::JobCleaner,
    redis as tf_redis,
    redis::{Connection, Keys},
    wait_for,
    workers::HEARTBEAT_EVERY,
};
use taskfleet_telemetry::metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    cli::WorkerArgs,
    dispatcher::{Dispatcher, DispatcherSettings},
    event_sequencer::{self, EventSequencer},
    executor::{ExecutorSettings, JobExecutor, StopReason},
    handlers::Services,
    leader::{self, Housekeeping},
    reclaimer::Reclaimer,
    redis_queue::RedisQueue,
    scheduler::Scheduler,
};

/// The apalis task function: everything happens in the executor, which records outcomes,
/// and retries, in the ledger.
async fn execute(dispatch: Dispatch, executor: Data<Arc<JobExecutor>>) -> Result<(), BoxDynError> {
    executor.execute(dispatch).await;
    Ok(())
}

/// When the fleet's embedder changed, the tasks embedded by the one before are embedded
/// again (their old vectors stay in the old space's tables, never compared with the new).
async fn reembed_stale(agents: Agents, tasks: Tasks, identity: String) {
    let embedder = match agents.embedder_id() {
        Ok(id) => id,
        Err(err) => return tracing::warn!(%err, "the embedder is not usable"),
    };
    match tasks.request_reembed(&embedder, &identity).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, %embedder, "embedding again the tasks of another embedder"),
        Err(err) => tracing::warn!(%err, "could not ask for re-embedding"),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}

/// A name unique to this process start: the ledger records who ran what, and a restarted
/// process must not pass for the one before it.
fn process_identity() -> String {
    let nonce = Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host_name(), std::process::id(), &nonce[..8])
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    metrics::register_worker();
    // Checked first: a worker that cannot open connector credentials must not take jobs.
    let sealer = args.encryption.sealer()?;
    let redis = tf_redis::RedisConfig::with_tls_files(&args.redis_url, &args.redis_tls)
        .map_err(anyhow::Error::msg)?;
    // Bound first, so a taken port stops the worker before it takes any job.
    let metrics_server = match &args.metrics_addr {
        Some(addr) => Some(crate::metrics_server::bind(addr).await?),
        None => None,
    };
    args.agents
        .validate()
        .map_err(|message| anyhow::anyhow!(message))?;
    let executor_rules = args.executor_rules()?;
    let sandbox = Arc::new(args.sandbox(&executor_rules)?);
    let agents = Agents::open(args.agents.clone()).await?;
    let identity = process_identity();
    let db = Db::connect_lazy_limited(&args.database_url, args.pg_max_connections, args.postgres)
        .context("DATABASE_URL is not valid")?;
    db.migrate_when_reachable()
        .await
        .context("the database could not be migrated at start")?;
    let conn = tf_redis::connect_when_reachable(&redis).await?;
    let version = wait_for("Redis (version)", || {
        let mut conn = conn.clone();
        async move { tf_redis::major_version(&mut conn).await }
    })
    .await;
    anyhow::ensure!(
        version >= tf_redis::MIN_MAJOR_VERSION,
        "Redis {}.0 or newer is required (workers wait for work with BLMPOP); this server is {version}.x",
        tf_redis::MIN_MAJOR_VERSION
    );
    let keys = Keys::new(&args.redis_prefix);
    let ledger = Ledger::new(&db);
    let shutdown = CancellationToken::new();
    let executor = Arc::new(JobExecutor::new(
        ledger.clone(),
        conn.clone(),
        keys.clone(),
        identity.clone(),
        ExecutorSettings {
            lease_ttl: args.lease_ttl(),
            executor_rules,
        },
        Services {
            schedules: Schedules::new(db.pool.clone()),
            connectors: Connectors::new(db.pool.clone()),
            tasks: Tasks::new(db.pool.clone()),
            providers: Arc::new(Providers::new(&args.providers)),
            sealer,
            agents: agents.clone(),
            budgets: Budgets::new(db.pool.clone(), agents.settings().llm.llm_monthly_tokens),
            llm_providers: LlmProviders::new(db.pool.clone()),
            conversations: Conversations::new(db.pool.clone()),
            sandbox,
        },
        shutdown.clone(),
    ));
    tracing::info!(%identity, queues = ?args.queues, "worker starting");
    if args.queues.contains(&Queue::Embed) {
        tokio::spawn(reembed_stale(
            agents.clone(),
            Tasks::new(db.pool.clone()),
            identity.clone(),
        ));
    }
    let concurrency: std::collections::BTreeMap<_, _> = args
        .queues
        .iter()
        .map(|q| (q.as_str(), args.concurrency.for_queue(*q)))
        .collect();
    for (queue, n) in &concurrency {
        metrics::WORKER_CONCURRENCY
            .with_label_values(&[*queue])
            .set(*n as i64);
    }
    let workers = Workers::new(db.pool.clone());
    let info = WorkerInfo {
        name: identity.clone(),
        host: host_name(),
        pid: std::process::id() as i32,
        queues: args.queues.iter().map(|q| q.as_str().to_owned()).collect(),
        concurrency: serde_json::json!(concurrency),
    };
    wait_for("Postgres (worker registry)", || workers.register(&info)).await;
    tokio::spawn(heartbeat(
        workers.clone(),
        identity.clone(),
        executor.clone(),
        shutdown.clone(),
    ));
    if let Some(server) = metrics_server {
        tokio::spawn(server.serve(agents.clone(), shutdown.clone()));
    }
    let events = EventLog::new(db.pool.clone());
    let fleet_event = |event| {
        let (events, identity) = (events.clone(), identity.clone());
        let details = serde_json::json!({
            "queues": args.queues,
            "concurrency": concurrency,
        });
        async move {
            if let Err(err) = events.record_fleet(event, &identity, details).await {
                tracing::warn!(%err, "could not record {event}");
            }
        }
    };
    fleet_event(EventName::WorkerOnline).await;

    // Cancellation requests for jobs this process runs stop them at once.
    tokio::spawn(tf_redis::listen(redis.clone(), keys.cancel_channel(), {
        let executor = executor.clone();
        move |payload| {
            if let Some(job_id) = payload.and_then(|p| p.parse().ok()) {
                executor.stop(job_id, StopReason::Cancelled);
            }
        }
    }));

    let drain = Duration::from_secs(args.drain_timeout_secs);
    let mut monitor = Monitor::new()
        // Built lazily: the drain deadline counts from the shutdown signal.
        .with_terminator(async move { tokio::time::sleep(drain).await })
        .should_restart(|worker, err| {
            tracing::warn!(worker = worker.name(), %err, "queue worker stopped; restarting it");
            true
        });
    for &queue in &args.queues {
        // A connection of the queue's own: its fetches block in Redis until ids arrive.
        let fetches = tf_redis::connect_when_reachable(&redis).await?;
        let (conn, keys, executor) = (conn.clone(), keys.clone(), executor.clone());
        let concurrency = args.concurrency.for_queue(queue);
        let name = format!("{identity}-{queue}");
        monitor = monitor.register(move |restarts| {
            WorkerBuilder::new(format!("{name}-{restarts}"))
                .backend(RedisQueue::new(
                    fetches.clone(),
                    conn.clone(),
                    &keys,
                    queue,
                    concurrency,
                ))
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .data(executor.clone())
                .build(execute)
        });
    }

    let elector = tokio::spawn(leader::run(
        Lease::new(keys.leader_lease(), identity.clone(), args.leader_ttl()),
        conn.clone(),
        leader_duties(&args, &redis, &ledger, &db.pool, &conn, &keys, &identity),
        shutdown.clone(),
    ));

    let result = monitor.run_with_signal(shutdown_signal()).await;
    // Intake has stopped. Whatever still runs past the drain deadline goes back to the
    // ledger, and the dispatcher is woken so another worker starts it at once.
    shutdown.cancel();
    let unfinished = executor.running_count();
    executor.hand_back_all(Duration::from_secs(10)).await;
    if unfinished > 0 {
        tracing::info!(jobs = unfinished, "handed unfinished jobs back");
        tf_redis::wake_dispatcher(&mut conn.clone(), &keys).await;
    }
    let _ = elector.await;
    if let Err(err) = workers.heartbeat(&identity, executor.counts(), true).await {
        tracing::warn!(%err, "could not mark this worker stopped in the registry");
    }
    fleet_event(EventName::WorkerOffline).await;
    tracing::info!(%identity, "worker stopped");
    result.map_err(|err| anyhow::anyhow!("worker monitor failed: {err}"))
}

/// Keeps this worker's registry row fresh: its heartbeat age tells the dashboard and the
/// `taskfleet_workers_online` gauge whether it is alive.
async fn heartbeat(
    workers: Workers,
    name: String,
    executor: Arc<JobExecutor>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
        if let Err(err) = workers.heartbeat(&name, executor.counts(), false).await {
            tracing::warn!(%err, "could not heartbeat the worker registry");
        }
    }
}

/// What this process runs while it is the leader.
fn leader_duties(
    args: &WorkerArgs,
    redis: &tf_redis::RedisConfig,
    ledger: &Ledger,
    ledger_pool: &sqlx::PgPool,
    conn: &Connection,
    keys: &Keys,
    identity: &str,
) -> leader::Duties {
    let dispatcher_wakeups = Arc::new(Notify::new());
    tokio::spawn(tf_redis::forward_wakeups(
        redis.clone(),
        keys.dispatch_wake_channel(),
        dispatcher_wakeups.clone(),
    ));
    let make_dispatcher = {
        let (ledger, conn, keys, identity) = (
            ledger.clone(),
            conn.clone(),
            keys.clone(),
            identity.to_owned(),
        );
        let settings = DispatcherSettings {
            window: args.dispatch_window,
            redispatch_after: Duration::from_secs(args.redispatch_after_secs),
        };
        Arc::new(move || {
            Dispatcher::new(
                ledger.clone(),
                conn.clone(),
                &keys,
                settings.clone(),
                identity.clone(),
                dispatcher_wakeups.clone(),
            )
        })
    };
    let make_reclaimer = {
        let (ledger, conn, keys, actor) = (
            ledger.clone(),
            conn.clone(),
            keys.clone(),
            identity.to_owned(),
        );
        let (lease_ttl, max_stalls) = (args.lease_ttl(), args.max_stalls);
        Arc::new(move || Reclaimer {
            ledger: ledger.clone(),
            conn: conn.clone(),
            keys: keys.clone(),
            lease_ttl,
            max_stalls,
            actor: actor.clone(),
        })
    };
    let make_sequencer = {
        let (events, conn, keys) = (
            EventLog::new(ledger_pool.clone()),
            conn.clone(),
            keys.clone(),
        );
        Arc::new(move || EventSequencer {
            events: events.clone(),
            conn: conn.clone(),
            keys: keys.clone(),
            wake_fallback: event_sequencer::WAKE_FALLBACK,
        })
    };
    let make_scheduler = {
        let (ledger, conn, keys) = (ledger.clone(), conn.clone(), keys.clone());
        // A leader that steps down gives its lease up; the others look for it every third of
        // its ttl, and the successor's first round follows.
        let handover = chrono::TimeDelta::from_std(args.leader_ttl() / 3 + Duration::from_secs(1))
            .expect("a leader ttl fits a TimeDelta");
        Arc::new(move || {
            let mut scheduler = Scheduler::new(
                Schedules::new(ledger.pool().clone()),
                Queues::new(ledger.pool().clone()),
                ledger.clone(),
                conn.clone(),
                keys.clone(),
            );
            scheduler.handover = handover;
            scheduler
        })
    };
    leader::duties(
        make_dispatcher,
        make_reclaimer,
        make_sequencer,
        make_scheduler,
        Housekeeping {
            ledger: ledger.clone(),
            workers: Workers::new(ledger.pool().clone()),
            idempotency_retention: Duration::from_secs(args.idempotency_retention_secs),
            cleaner: JobCleaner::new(ledger.pool().clone(), args.retention()),
        },
    )
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        res = tokio::signal::ctrl_c() => res?,
    }
    tracing::info!("shutdown requested; draining");
    Ok(())
}
