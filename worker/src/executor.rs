//! Runs one delivered job (River's job executor plays this role):
//!
//! 1. start it in the ledger under the fencing epoch its dispatch raised: of several copies
//!    of one job only the latest can start, and only once; the job's Redis lease is then
//!    taken under that epoch (starts, and later the leases' releases, go a batch at a time).
//!    A job that may run before its start ([`JobSpec::may_run_before_start`], ADR 0017) runs
//!    while the start is written; any other waits for it, as every job does while starts
//!    are failing;
//! 2. heartbeat the lease every ttl/3 from the start on; the heartbeat also notices a
//!    cancellation request;
//! 3. run the handler with panics caught, until it ends or is stopped (cancelled, start
//!    refused, lease lost, or the worker drains);
//! 4. hand the outcome to the background and take the next job: an outcome waits for its
//!    start and is dropped if the start was refused; outcomes are written in batches under
//!    each attempt's epoch (retrying while Postgres is unreachable), and each job keeps its
//!    lease until its outcome is in. A write with a stale epoch changes nothing (the ledger
//!    logs it).

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use serde::Deserialize;
use serde_json::Value;
use taskfleet_jobs::{Dispatch, ExecutorRules, JobSpec, RetryPolicy, StartRequest};
use taskfleet_storage::{
    Finish, GroupCommit, Lease, Ledger, Outcome, Renewal, Started, WorkerCounts, redis as tf_redis,
    redis::{Connection, Keys},
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
/// completer blocks its producers the same way). Executors of pipelined jobs finish before
/// their starts are in, so this bounds the worker's memory too; a few outcome batches'
/// worth keeps the writer's statements full.
const MAX_UNRECORDED: usize = 2_000;
/// How long the outcome writer, while busy, waits for more outcomes. No delivery waits for
/// an outcome's answer, so lingering costs only how soon a finished job reads as finished,
/// and buys statements of many outcomes instead of a dozen.
const OUTCOME_LINGER: Duration = Duration::from_millis(20);
/// How long the start writer, while busy, waits for more starts. Jobs that may not run before
/// their start wait for it, so this is shorter than the API's submissions linger; not
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
    /// The ledger refused the delivery's start: a copy of a job another delivery started,
    /// cancelled, or dispatched again since.
    NotStarted,
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

/// An attempt the ledger started.
#[derive(Clone)]
pub(crate) struct StartedAttempt {
    /// Renews the lease the start took, until the outcome is written.
    heartbeat: Arc<JoinHandle<()>>,
    /// The job's spec, when the delivery came without it (too large for Redis).
    payload: Option<Value>,
}

/// A delivery's start while it is written: the started attempt, or `None` when the ledger
/// refused it (or the worker stopped first). Shared by the executor, the outcome's writer
/// and the handler's writes under the attempt's epoch, which all wait for it.
type StartWrite = Shared<BoxFuture<'static, Option<StartedAttempt>>>;

/// What a handler waits on before writing under its attempt's epoch: the ledger refuses
/// such a write until the start is in.
#[derive(Clone)]
pub struct StartGate(StartWrite);

impl StartGate {
    /// Whether the attempt started; waits until its start is written.
    pub async fn started(&self) -> bool {
        self.0.clone().await.is_some()
    }
}

impl std::fmt::Debug for StartGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartGate")
    }
}

/// Where a started job's wait for a worker is observed: its queue and kind's histogram, and
/// when the job fell due.
struct QueueWait {
    histogram: prometheus::Histogram,
    since: DateTime<Utc>,
}

/// An attempt whose handler is done, on its way to having its outcome recorded.
struct Attempt {
    delivery: Dispatch,
    /// Why the handler was stopped before it finished, if it was.
    stopped: Option<StopReason>,
    start: StartWrite,
    /// How long the handler ran, for the duration metric (the outcome's write not included).
    ran: Duration,
}

/// The Redis leases of this worker's jobs. They are taken and given up a batch at a time,
/// as the ledger starts jobs and records outcomes, in one round trip per batch.
#[derive(Clone)]
struct JobLeases {
    redis: Connection,
    keys: Keys,
    /// Holds the leases.
    worker: String,
    ttl: Duration,
}

impl JobLeases {
    fn lease(&self, job_id: Uuid) -> Lease {
        Lease::new(self.keys.job_lease(job_id), self.worker.clone(), self.ttl)
    }

    /// Takes the leases of jobs just started, under the epochs their starts were asked with.
    async fn hold(&self, started: impl Iterator<Item = &StartRequest>) {
        let leases: Vec<(Lease, u64)> = started
            .map(|job| (self.lease(job.job_id), job.epoch as u64))
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
    starts: GroupCommit<StartRequest, Option<Started>>,
    /// Set while starts fail (Postgres away): every job then waits for its start, so the
    /// worker takes no more work than it has slots until the ledger is back.
    starts_failing: AtomicBool,
    /// Records outcomes in batches.
    finishes: GroupCommit<Finish, Option<String>>,
    /// Permits for outcomes not yet recorded ([`MAX_UNRECORDED`]).
    unrecorded: Arc<Semaphore>,
    leases: JobLeases,
    services: Services,
    redis: Connection,
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
        redis: Connection,
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
                move |requests: Arc<Vec<StartRequest>>| {
                    let (ledger, leases) = (ledger.clone(), leases.clone());
                    async move {
                        let started = ledger.start_many(&requests, &leases.worker).await?;
                        let held = requests.iter().zip(&started).filter(|(_, s)| s.is_some());
                        leases.hold(held.map(|(request, _)| request)).await;
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
            starts_failing: AtomicBool::new(false),
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

    pub async fn execute(self: &Arc<Self>, mut delivery: Dispatch) {
        let (job_id, epoch) = (delivery.job_id, delivery.epoch);
        let stopper = Stopper::default();
        self.running
            .lock()
            .expect("running jobs lock")
            .insert((job_id, epoch), stopper.clone());
        let queue_wait = QueueWait {
            histogram: metrics::JOB_QUEUE_WAIT
                .with_label_values(&[delivery.queue.as_str(), delivery.kind.as_str()]),
            since: delivery.run_at,
        };
        let start = self
            .clone()
            .start(delivery.start_request(), queue_wait, stopper.clone());
        let start: StartWrite = tokio::spawn(start)
            .map(|joined| joined.ok().flatten())
            .boxed()
            .shared();
        let spec = delivery.payload.take().map(|payload| spec_of(&payload));
        let spec = match spec {
            Some(Ok(spec))
                if spec.may_run_before_start() && !self.starts_failing.load(Ordering::Relaxed) =>
            {
                Ok(spec)
            }
            spec => {
                let Some(started) = start.clone().await else {
                    return self.forget(job_id, epoch);
                };
                match (spec, started.payload) {
                    (Some(spec), _) => spec,
                    (None, Some(payload)) => spec_of(&payload),
                    (None, None) => Err("the delivery and its start brought no spec".to_owned()),
                }
            }
        };
        let _active = ActiveJob::count();
        let began = Instant::now();

        // Every log line of the attempt carries these, so one job's story can be grepped
        // across the fleet and joined to the request that created it.
        let span = tracing::info_span!(
            "job",
            %job_id,
            queue = %delivery.queue,
            kind = %delivery.kind,
            attempt = delivery.attempt,
            epoch,
            worker = %self.worker,
            request_id = delivery.request_id.as_deref(),
        );
        let outcome = self
            .run_handler(&delivery, spec, StartGate(start.clone()), &stopper.token)
            .instrument(span.clone())
            .await;
        let attempt = Attempt {
            delivery,
            stopped: stopper.reason(),
            start,
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

    /// Writes the delivery's start (retrying while Postgres is unreachable). Once started,
    /// the job's lease is held and heartbeated; a refused start stops the handler, whose run
    /// then counts for nothing.
    async fn start(
        self: Arc<Self>,
        request: StartRequest,
        queue_wait: QueueWait,
        stopper: Stopper,
    ) -> Option<StartedAttempt> {
        let waited = (Utc::now() - queue_wait.since).as_seconds_f64();
        let Some(started) = self.write_start(request).await else {
            stopper.stop(StopReason::NotStarted);
            return None;
        };
        queue_wait.histogram.observe(waited.max(0.0));
        let heartbeat = tokio::spawn(heartbeat(
            self.leases.lease(request.job_id),
            self.redis.clone(),
            request.epoch as u64,
            LeaseKeys {
                cancel: self.keys.cancel_flag(request.job_id),
                born: self.keys.keyspace_born(request.job_id),
            },
            stopper,
        ));
        Some(StartedAttempt {
            heartbeat: Arc::new(heartbeat),
            payload: started.payload,
        })
    }

    /// Records how the attempt ended once its start is in (the outcome writer then releases
    /// the job's lease), and lets go of the job: its heartbeat and its place among the
    /// running jobs. An attempt whose start was refused records nothing.
    async fn conclude(
        &self,
        attempt: Attempt,
        outcome: Option<(HandlerResult, Option<DateTime<Utc>>)>,
    ) {
        let Attempt {
            delivery,
            stopped,
            start,
            ran,
        } = attempt;
        let Some(started) = start.await else {
            tracing::debug!("start refused: the attempt counts for nothing");
            return self.forget(delivery.job_id, delivery.epoch);
        };
        match (outcome, stopped) {
            (Some((result, retry_at)), _) => self.record(&delivery, &result, retry_at, ran).await,
            (None, Some(StopReason::Cancelled)) => {
                self.write(&delivery, Outcome::Cancelled, ran).await;
                if let Err(err) =
                    tf_redis::clear_cancel(&mut self.redis.clone(), &self.keys, delivery.job_id)
                        .await
                {
                    tracing::debug!(%err, "could not clear the cancellation flag");
                }
            }
            (None, Some(StopReason::Drain)) => {
                self.write(&delivery, Outcome::HandedBack, ran).await
            }
            (None, _) => tracing::warn!("lease lost: the job runs again under a newer epoch"),
        }
        // Beating until the outcome is written keeps a slow write (Postgres away) from
        // looking like a dead worker. A lease lost, or an outcome never written, is left to
        // expire: the reclaimer then runs the job again.
        started.heartbeat.abort();
        self.forget(delivery.job_id, delivery.epoch);
    }

    /// Takes a delivery off the running jobs.
    fn forget(&self, job_id: Uuid, epoch: i64) {
        self.running
            .lock()
            .expect("running jobs lock")
            .remove(&(job_id, epoch));
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

    /// Starts the delivery in the ledger; `None` when the ledger refused it. While Postgres
    /// is unreachable it keeps trying, and jobs taken meanwhile wait for their starts, so the
    /// worker takes no more work than it has slots until Postgres is back. `None` too once
    /// the worker stops.
    async fn write_start(&self, request: StartRequest) -> Option<Started> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.starts.submit(request).await {
                Ok(started) => {
                    self.starts_failing.store(false, Ordering::Relaxed);
                    if started.is_none() {
                        tracing::debug!(job_id = %request.job_id, "not startable (another copy, cancelled or finished)");
                    }
                    return started;
                }
                Err(err) => {
                    self.starts_failing.store(true, Ordering::Relaxed);
                    self.exit_unless_writers_live();
                    tracing::warn!(job_id = %request.job_id, %err, "could not start the job; retrying");
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
        delivery: &Dispatch,
        spec: Result<JobSpec, String>,
        started: StartGate,
        stop: &CancellationToken,
    ) -> Option<(HandlerResult, Option<DateTime<Utc>>)> {
        let spec = match spec {
            Ok(spec) => spec,
            Err(err) => {
                let failure = JobFailure::permanent(format!("payload does not decode: {err}"));
                return Some((Err(failure), None));
            }
        };
        let ctx = JobContext {
            job_id: delivery.job_id,
            attempt: delivery.attempt as u32,
            executor_rules: self.settings.executor_rules.clone(),
            tenant_id: delivery.tenant_id,
            request_id: delivery.request_id.clone(),
            ledger: self.ledger.clone(),
            services: self.services.clone(),
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            epoch: delivery.epoch,
            started,
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
            Err(failure) if !failure.permanent && delivery.attempt < delivery.max_attempts => {
                let delay = failure.retry_after.unwrap_or_else(|| {
                    RetryPolicy::for_queue(spec.queue())
                        .delay(delivery.attempt as u32, &mut rand::rng())
                });
                Some(Utc::now() + delay)
            }
            _ => None,
        };
        Some((result, retry_at))
    }

    async fn record(
        &self,
        job: &Dispatch,
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
    async fn write(&self, job: &Dispatch, outcome: Outcome, ran: Duration) {
        let deadline = Instant::now() + RECORD_DEADLINE;
        let mut pause = Duration::from_millis(100);
        let finish = Finish {
            id: job.job_id,
            epoch: job.epoch,
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
    fn count(&self, job: &Dispatch, state: &str, ran: Duration) {
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
    mut conn: Connection,
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
    /// When the Redis holding the lease last started empty ([`Lease::keyspace_ages`]).
    born: String,
}

/// The job spec a payload holds.
fn spec_of(payload: &Value) -> Result<JobSpec, String> {
    JobSpec::deserialize(payload).map_err(|err| err.to_string())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
