//! Runs one delivered job (River's job executor plays this role):
//!
//! 1. start it in the ledger: of several deliveries of one job only one can, and the start
//!    raises the job's fencing epoch; the job's Redis lease is then taken under that epoch
//!    (starts, and later the leases' releases, go a batch at a time);
//! 2. heartbeat the lease every ttl/3 while the handler runs; the heartbeat also notices a
//!    cancellation request;
//! 3. run the handler with panics caught, until it ends or is stopped (cancelled, lease
//!    lost, or the worker drains);
//! 4. hand the outcome to the background and take the next job: outcomes are written in
//!    batches under each attempt's epoch (retrying while Postgres is unreachable), and each
//!    job keeps its lease until its outcome is in. A write with a stale epoch changes
//!    nothing (the ledger logs it).

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use redis::aio::ConnectionManager;
use taskfleet_jobs::{ExecutorRules, JobSpec, RetryPolicy};
use taskfleet_storage::{
    Finish, GroupCommit, Lease, Ledger, Outcome, Renewal, StartedJob, WorkerCounts,
    redis as tf_redis, redis::Keys,
};
use taskfleet_telemetry::metrics;
use tokio::{sync::Semaphore, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::handlers::{self, HandlerResult, JobContext, JobFailure, Services};

/// How long a finished job's outcome is retried against an unreachable ledger. Past it the
/// job stays `running` until its lease expires and the reclaimer runs it again.
const RECORD_DEADLINE: Duration = Duration::from_secs(300);
/// Outcomes handed over and not yet recorded, at most: beyond it an executor waits to hand
/// over its own, so a slow ledger slows intake instead of piling up attempts (River's
/// completer blocks its producers the same way).
const MAX_UNRECORDED: usize = 20_000;
/// How long the outcome writer, while busy, waits for more outcomes. No delivery waits for
/// an outcome's answer, so lingering costs only how soon a finished job reads as finished,
/// and buys statements of many outcomes instead of a dozen.
const OUTCOME_LINGER: Duration = Duration::from_millis(20);
/// How long the start writer, while busy, waits for more starts. Executors sit idle while
/// they wait for their starts, so this is shorter than the API's submissions linger; not
/// waiting at all would write batches too small (ADR 0007).
const START_LINGER: Duration = Duration::from_millis(1);

/// Counts a running job in `taskfleet_worker_active_jobs` while its handler runs, however
/// the attempt ends (an outcome waiting to be written is not counted).
struct ActiveJob;

impl ActiveJob {
    fn count() -> ActiveJob {
        metrics::WORKER_ACTIVE_JOBS.inc();
        ActiveJob
    }
}

impl Drop for ActiveJob {
    fn drop(&mut self) {
        metrics::WORKER_ACTIVE_JOBS.dec();
    }
}

/// Why a running job was stopped before its handler finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    /// The lease expired or was taken over: another attempt owns the job now.
    LeaseLost,
    /// The worker is shutting down; the job is handed back to run elsewhere.
    Drain,
}

/// Stops a running job and remembers the first reason it was given.
#[derive(Clone, Default)]
struct Stopper {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stopper {
    fn stop(&self, reason: StopReason) {
        self.reason
            .lock()
            .expect("stop reason lock")
            .get_or_insert(reason);
        self.token.cancel();
    }

    fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("stop reason lock")
    }
}

/// A started attempt whose handler is done, on its way to having its outcome recorded.
struct Attempt {
    started: StartedJob,
    /// Why the handler was stopped before it finished, if it was.
    stopped: Option<StopReason>,
    heartbeat: JoinHandle<()>,
    /// How long the handler ran, for the duration metric (the outcome's write not included).
    ran: Duration,
}

/// The Redis leases of this worker's jobs. They are taken and given up a batch at a time,
/// as the ledger starts jobs and records outcomes, in one round trip per batch.
#[derive(Clone)]
struct JobLeases {
    redis: ConnectionManager,
    keys: Keys,
    /// Holds the leases.
    worker: String,
    ttl: Duration,
}

impl JobLeases {
    fn lease(&self, job_id: Uuid) -> Lease {
        Lease::new(self.keys.job_lease(job_id), self.worker.clone(), self.ttl)
    }

    /// Takes the leases of jobs just started, under the epochs their starts raised.
    async fn hold(&self, started: impl Iterator<Item = &StartedJob>) {
        let leases: Vec<(Lease, u64)> = started
            .map(|job| (self.lease(job.id), job.lease_epoch as u64))
            .collect();
        match Lease::hold_all(&mut self.redis.clone(), &leases).await {
            // A lease held under a newer epoch stays with that attempt: this one's heartbeat
            // finds the lease not its own and stops it.
            Ok(taken) => {
                let refused = taken.iter().filter(|taken| !**taken).count();
                if refused > 0 {
                    tracing::warn!(jobs = refused, "job leases held under newer epochs");
                }
            }
            // Each job's heartbeat finds its lease missing: it takes it if Redis has just
            // started empty, and otherwise stops the job, which the reclaimer runs again.
            Err(err) => tracing::warn!(%err, jobs = leases.len(), "could not take the job leases"),
        }
    }

    /// Gives up the leases of attempts whose outcomes were just recorded. A stale attempt's
    /// lease, taken over meanwhile, stays with its new holder.
    async fn release(&self, finishes: &[Finish]) {
        let leases: Vec<(Lease, u64)> = finishes
            .iter()
            .map(|finish| (self.lease(finish.id), finish.epoch as u64))
            .collect();
        if let Err(err) = Lease::release_all(&mut self.redis.clone(), &leases).await {
            tracing::debug!(%err, "could not release job leases; they expire by themselves");
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub lease_ttl: Duration,
    /// The commands `executor.run` may name, and whether the `fault` tool may run.
    pub executor_rules: ExecutorRules,
}

pub struct JobExecutor {
    ledger: Ledger,
    /// Starts jobs in batches.
    starts: GroupCommit<Uuid, Option<StartedJob>>,
    /// Records outcomes in batches.
    finishes: GroupCommit<Finish, Option<String>>,
    /// Permits for outcomes not yet recorded ([`MAX_UNRECORDED`]).
    unrecorded: Arc<Semaphore>,
    leases: JobLeases,
    services: Services,
    redis: ConnectionManager,
    keys: Keys,
    /// Names this process in the ledger (`jobs.worker`, event actors) and in leases.
    worker: String,
    settings: ExecutorSettings,
    /// Keyed by job and epoch: an old attempt ending must not forget a newer one.
    running: Mutex<HashMap<(Uuid, i64), Stopper>>,
    /// Fired when the process stops: waiting for Postgres to start a job ends.
    shutdown: CancellationToken,
    /// Attempts finished and, of those, failed, for the worker registry.
    processed: AtomicI64,
    failed: AtomicI64,
}

impl JobExecutor {
    pub fn new(
        ledger: Ledger,
        redis: ConnectionManager,
        keys: Keys,
        worker: String,
        settings: ExecutorSettings,
        services: Services,
        shutdown: CancellationToken,
    ) -> JobExecutor {
        let leases = JobLeases {
            redis: redis.clone(),
            keys: keys.clone(),
            worker: worker.clone(),
            ttl: settings.lease_ttl,
        };
        JobExecutor {
            services,
            starts: GroupCommit::start(START_LINGER, {
                let (ledger, leases) = (ledger.clone(), leases.clone());
                move |ids: Arc<Vec<Uuid>>| {
                    let (ledger, leases) = (ledger.clone(), leases.clone());
                    async move {
                        let started = ledger.start_many(&ids, &leases.worker).await?;
                        leases.hold(started.iter().flatten()).await;
                        Ok(started)
                    }
                }
            }),
            finishes: GroupCommit::start(OUTCOME_LINGER, {
                let (ledger, leases) = (ledger.clone(), leases.clone());
                move |finishes: Arc<Vec<Finish>>| {
                    let (ledger, leases) = (ledger.clone(), leases.clone());
                    async move {
                        let states = ledger.finish_many(&finishes).await?;
                        // Off the writer's path: a slow Redis must not hold up the ledger.
                        tokio::spawn(async move { leases.release(&finishes).await });
                        Ok(states)
                    }
                }
            }),
            unrecorded: Arc::new(Semaphore::new(MAX_UNRECORDED)),
            leases,
            ledger,
            redis,
            keys,
            worker,
            settings,
            running: Mutex::new(HashMap::new()),
            shutdown,
            processed: AtomicI64::new(0),
            failed: AtomicI64::new(0),
        }
    }

    pub async fn execute(self: &Arc<Self>, job_id: Uuid) {
        let Some(started) = self.start(job_id).await else {
            return;
        };
        metrics::JOB_QUEUE_WAIT
            .with_label_values(&[started.queue.as_str(), started.kind.as_str()])
            .observe(started.waited_seconds.max(0.0));
        let _active = ActiveJob::count();
        let began = Instant::now();
        let epoch = started.lease_epoch as u64;
        let stopper = Stopper::default();
        self.running
            .lock()
            .expect("running jobs lock")
            .insert((job_id, started.lease_epoch), stopper.clone());
        let heartbeat = tokio::spawn(heartbeat(
            self.leases.lease(job_id),
            self.redis.clone(),
            epoch,
            LeaseKeys {
                cancel: self.keys.cancel_flag(job_id),
                born: self.keys.keyspace_born(),
            },
            stopper.clone(),
        ));

        // Every log line of the attempt carries these, so one job's story can be grepped
        // across the fleet and joined to the request that created it.
        let span = tracing::info_span!(
            "job",
            %job_id,
            queue = %started.queue,
            kind = %started.kind,
            attempt = started.attempt,
            epoch,
            worker = %self.worker,
            request_id = started.request_id.as_deref(),
        );
        let outcome = self
            .run_handler(&started, &stopper.token)
            .instrument(span.clone())
            .await;
        let attempt = Attempt {
            started,
            stopped: stopper.reason(),
            heartbeat,
            ran: began.elapsed(),
        };
        let permit = self
            .unrecorded
            .clone()
            .acquire_owned()
            .await
            .expect("the outcome permits are never closed");
        let executor = self.clone();
        tokio::spawn(
            async move {
                executor.conclude(attempt, outcome).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// Records how the attempt ended (the outcome writer then releases the job's lease), and
    /// lets go of the job: its heartbeat and its place among the running jobs.
    async fn conclude(
        &self,
        attempt: Attempt,
        outcome: Option<(HandlerResult, Option<DateTime<Utc>>)>,
    ) {
        let Attempt {
            started,
            stopped,
            heartbeat,
            ran,
        } = attempt;
        match (outcome, stopped) {
            (Some((result, retry_at)), _) => self.record(&started, &result, retry_at, ran).await,
            (None, Some(StopReason::Cancelled)) => {
                self.write(&started, Outcome::Cancelled, ran).await;
                if let Err(err) =
                    tf_redis::clear_cancel(&mut self.redis.clone(), &self.keys, started.id).await
                {
                    tracing::debug!(%err, "could not clear the cancellation flag");
                }
            }
            (None, Some(StopReason::Drain)) => self.write(&started, Outcome::HandedBack, ran).await,
            (None, _) => tracing::warn!("lease lost: the job runs again under a newer epoch"),
        }
        // Beating until the outcome is written keeps a slow write (Postgres away) from
        // looking like a dead worker. A lease lost, or an outcome never written, is left to
        // expire: the reclaimer then runs the job again.
        heartbeat.abort();
        self.running
            .lock()
            .expect("running jobs lock")
            .remove(&(started.id, started.lease_epoch));
    }

    /// Exits the process when a ledger writer has stopped (a panic outside its writes):
    /// nothing could be started or recorded again, and a restart by the supervisor is better
    /// than a worker that takes jobs only to see them rescued. The leases of its running
    /// jobs lapse to the reclaimer.
    fn exit_unless_writers_live(&self) {
        if !self.starts.is_alive() || !self.finishes.is_alive() {
            tracing::error!("a ledger writer stopped; exiting for a restart");
            std::process::exit(70);
        }
    }

    /// Starts the job in the ledger. While Postgres is unreachable it keeps trying, holding
    /// the worker's slot, so the worker takes no more work until Postgres is back.
    async fn start(&self, job_id: Uuid) -> Option<StartedJob> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.starts.submit(job_id).await {
                Ok(Some(started)) => return Some(started),
                Ok(None) => {
                    tracing::debug!(%job_id, "not startable (duplicate delivery, cancelled or finished)");
                    return None;
                }
                Err(err) => {
                    self.exit_unless_writers_live();
                    tracing::warn!(%job_id, %err, "could not start the job; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The handler's result and, for a retryable failure, when to try again; `None` when the
    /// job was stopped first.
    async fn run_handler(
        &self,
        started: &StartedJob,
        stop: &CancellationToken,
    ) -> Option<(HandlerResult, Option<DateTime<Utc>>)> {
        let spec = match serde_json::from_value::<JobSpec>(started.payload.clone()) {
            Ok(spec) => spec,
            Err(err) => {
                let failure = JobFailure::permanent(format!("payload does not decode: {err}"));
                return Some((Err(failure), None));
            }
        };
        let ctx = JobContext {
            job_id: started.id,
            attempt: started.attempt as u32,
            executor_rules: self.settings.executor_rules.clone(),
            tenant_id: started.tenant_id,
            request_id: started.request_id.clone(),
            ledger: self.ledger.clone(),
            services: self.services.clone(),
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            epoch: started.lease_epoch,
            worker: self.worker.clone(),
        };
        let handler = AssertUnwindSafe(handlers::run(&spec, &ctx)).catch_unwind();
        let result = tokio::select! {
            // A result that is ready wins over a stop: it is written, and the epoch fence
            // refuses it if the job moved on meanwhile.
            biased;
            result = handler => result.unwrap_or_else(|panic| {
                Err(JobFailure::retryable(format!("handler panicked: {}", panic_message(&*panic))))
            }),
            // The handler stops at its next await point when its future is dropped here.
            _ = stop.cancelled() => return None,
        };
        let retry_at = match &result {
            Err(failure) if !failure.permanent && started.attempt < started.max_attempts => {
                let delay = failure.retry_after.unwrap_or_else(|| {
                    RetryPolicy::for_queue(spec.queue())
                        .delay(started.attempt as u32, &mut rand::rng())
                });
                Some(Utc::now() + delay)
            }
            _ => None,
        };
        Some((result, retry_at))
    }

    async fn record(
        &self,
        job: &StartedJob,
        result: &HandlerResult,
        retry_at: Option<DateTime<Utc>>,
        ran: Duration,
    ) {
        let outcome = match result {
            Ok(value) => Outcome::Succeeded(value.clone()),
            Err(failure) => Outcome::Failed {
                error: failure.message.clone(),
                retry_at,
            },
        };
        self.write(job, outcome, ran).await
    }

    /// Records the outcome of an attempt whose handler ran for `ran`.
    async fn write(&self, job: &StartedJob, outcome: Outcome, ran: Duration) {
        let deadline = Instant::now() + RECORD_DEADLINE;
        let mut pause = Duration::from_millis(100);
        let finish = Finish {
            id: job.id,
            epoch: job.lease_epoch,
            worker: self.worker.clone(),
            outcome,
        };
        loop {
            match self.finishes.submit(finish.clone()).await {
                Ok(Some(state)) => return self.count(job, &state, ran),
                Ok(None) => {
                    tracing::warn!("stale epoch: the job was reclaimed; outcome refused");
                    metrics::STALE_WRITES_REJECTED
                        .with_label_values(&[job.queue.as_str()])
                        .inc();
                    return;
                }
                Err(err) if Instant::now() < deadline => {
                    self.exit_unless_writers_live();
                    tracing::warn!(%err, "could not record the outcome; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    tracing::error!(%err, "gave up recording the outcome");
                    return;
                }
            }
        }
    }

    /// Counts an attempt the ledger recorded, by the state it left the job in, in the
    /// metrics and the worker's totals. A hand-back (back to `queued`) is not an attempt's
    /// end: the job runs again without counting an attempt.
    fn count(&self, job: &StartedJob, state: &str, ran: Duration) {
        let Some(name) = metrics::outcome_of(state) else {
            return;
        };
        metrics::JOB_DURATION
            .with_label_values(&[job.queue.as_str(), job.kind.as_str()])
            .observe(ran.as_secs_f64());
        // Inside the job's span: the line carries job id, queue, kind, attempt, worker and
        // request id.
        tracing::info!(outcome = name, "attempt recorded");
        metrics::JOBS
            .with_label_values(&[job.queue.as_str(), job.kind.as_str(), name])
            .inc();
        self.processed.fetch_add(1, Ordering::Relaxed);
        if matches!(name, "retry" | "dead") {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What this process has finished so far, for the worker registry.
    pub fn counts(&self) -> WorkerCounts {
        WorkerCounts {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops one running job (a cancellation message for it arrived).
    pub fn stop(&self, job_id: Uuid, reason: StopReason) {
        let running = self.running.lock().expect("running jobs lock");
        for ((id, _), stopper) in running.iter() {
            if *id == job_id {
                stopper.stop(reason);
            }
        }
    }

    /// Hands every job still running back to the ledger and waits, up to `within`, until
    /// each has recorded that, and every finished job its outcome.
    pub async fn hand_back_all(&self, within: Duration) {
        for running in self.running.lock().expect("running jobs lock").values() {
            running.stop(StopReason::Drain);
        }
        let deadline = Instant::now() + within;
        while !self.running.lock().expect("running jobs lock").is_empty()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running jobs lock").len()
    }
}

/// Renews the job lease every third of its ttl. Stops the job when the lease is lost, when it
/// cannot be renewed for a whole ttl (the reclaimer may have taken it), or when cancellation
/// is requested. A lease found gone because Redis started empty (restarted, or flushed) less
/// than a ttl ago is taken back under the attempt's epoch ([`Lease::retake`]), so a Redis
/// restart does not cost running jobs their attempts; the reclaimer waits as long before it
/// reads an absent lease as lapsed.
async fn heartbeat(
    lease: Lease,
    mut conn: ConnectionManager,
    epoch: u64,
    flags: LeaseKeys,
    stopper: Stopper,
) {
    let every = lease.ttl() / 3;
    // When the last renewal that held was sent: a worker that stalls after sending one counts
    // from before the stall.
    let mut renewed = Instant::now();
    // Runs until aborted once the outcome is written: a stopped job still holds its lease
    // while its cancellation or hand-back is recorded.
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        match lease.renew(&mut conn, epoch, &flags.cancel).await {
            Ok(Renewal::Renewed) => renewed = sent,
            Ok(Renewal::RenewedFlagged) => {
                renewed = sent;
                stopper.stop(StopReason::Cancelled);
            }
            Ok(Renewal::Lost) => return stopper.stop(StopReason::LeaseLost),
            Ok(Renewal::Absent) => match lease.retake(&mut conn, epoch, &flags.born).await {
                Ok(true) => {
                    tracing::info!("lease lost by Redis; taken back");
                    renewed = sent;
                }
                Ok(false) => return stopper.stop(StopReason::LeaseLost),
                Err(err) if renewed.elapsed() >= lease.ttl() => {
                    tracing::warn!(%err, "lease not taken back within its ttl");
                    return stopper.stop(StopReason::LeaseLost);
                }
                Err(err) => tracing::debug!(%err, "lease not taken back; retrying"),
            },
            Err(err) if renewed.elapsed() >= lease.ttl() => {
                tracing::warn!(%err, "lease not renewed within its ttl");
                return stopper.stop(StopReason::LeaseLost);
            }
            Err(err) => tracing::debug!(%err, "lease renewal failed; retrying"),
        }
    }
}

/// The Redis keys a job's heartbeat reads beside its lease.
struct LeaseKeys {
    /// Set when the job's cancellation is asked.
    cancel: String,
    /// When Redis last started empty ([`Lease::keyspace_age`]).
    born: String,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
