//! Leader election: every worker process competes for one Redis lease; the holder runs the
//! fleet-maintenance loops (the dispatcher, the reclaimer, the event sequencer, the scheduler
//! and ledger housekeeping). The lease is renewed every third of its ttl; a holder that cannot renew within the ttl stops its loops, so two leaders
//! overlap at most briefly, and the dispatcher's conditional ledger writes make even that
//! overlap harmless.

use std::{sync::Arc, time::Duration};

use taskfleet_storage::{
    Lease, Ledger, Workers,
    job_cleaner::{Deleted, JobCleaner},
    redis::Connection,
};
use taskfleet_telemetry::metrics;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    dispatcher::Dispatcher, event_sequencer::EventSequencer, reclaimer::Reclaimer,
    scheduler::Scheduler,
};

/// Workers not heard from for this long leave the registry.
const WORKER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often ledger retention (idempotency keys, finished jobs, firings, old workers) runs.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// What a leader runs; built anew each time this process becomes leader.
pub type Duties = Box<dyn Fn(CancellationToken) -> Vec<JoinHandle<()>> + Send + Sync>;

/// The maintenance loops of a leader.
pub fn duties(
    make_dispatcher: Arc<dyn Fn() -> Dispatcher + Send + Sync>,
    make_reclaimer: Arc<dyn Fn() -> Reclaimer + Send + Sync>,
    make_sequencer: Arc<dyn Fn() -> EventSequencer + Send + Sync>,
    make_scheduler: Arc<dyn Fn() -> Scheduler + Send + Sync>,
    housekeeping: Housekeeping,
) -> Duties {
    Box::new(move |stop: CancellationToken| {
        vec![
            tokio::spawn(make_dispatcher().run(stop.clone())),
            tokio::spawn(make_reclaimer().run(stop.clone())),
            tokio::spawn(make_sequencer().run(stop.clone())),
            tokio::spawn(make_scheduler().run(stop.clone())),
            tokio::spawn(housekeeping.clone().run(stop)),
        ]
    })
}

/// Competes for leadership until `shutdown`, running `duties` while leader.
pub async fn run(lease: Lease, mut conn: Connection, duties: Duties, shutdown: CancellationToken) {
    let renew_every = lease.ttl() / 3;
    let mut held: Option<(u64, Instant, CancellationToken, Vec<JoinHandle<()>>)> = None;
    loop {
        match lease.acquire(&mut conn).await {
            Ok(Some(epoch)) => match &mut held {
                Some((_, renewed, ..)) => *renewed = Instant::now(),
                None => {
                    tracing::info!(epoch, "became leader");
                    metrics::WORKER_IS_LEADER.set(1);
                    let stop = shutdown.child_token();
                    let tasks = duties(stop.clone());
                    held = Some((epoch, Instant::now(), stop, tasks));
                }
            },
            Ok(None) => step_down(&mut held, "another process holds the leader lease").await,
            Err(err) => tracing::warn!(%err, "could not renew or take the leader lease"),
        }
        if let Some((_, renewed, ..)) = &held
            && renewed.elapsed() >= lease.ttl()
        {
            step_down(&mut held, "leader lease not renewed within its ttl").await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(renew_every) => {}
        }
    }
    if let Some((epoch, ..)) = &held {
        let epoch = *epoch;
        step_down(&mut held, "shutting down").await;
        // Hand leadership over at once rather than after a ttl.
        if let Err(err) = lease.release(&mut conn, epoch).await {
            tracing::warn!(%err, "could not release the leader lease");
        }
    }
}

async fn step_down(
    held: &mut Option<(u64, Instant, CancellationToken, Vec<JoinHandle<()>>)>,
    why: &str,
) {
    if let Some((epoch, _, stop, tasks)) = held.take() {
        tracing::info!(epoch, why, "stepping down as leader");
        metrics::WORKER_IS_LEADER.set(0);
        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Retention chores: idempotency keys past their retention window, finished jobs and old
/// schedule firings (the job cleaner), long-gone workers.
#[derive(Clone)]
pub struct Housekeeping {
    pub ledger: Ledger,
    pub workers: Workers,
    pub idempotency_retention: Duration,
    pub cleaner: JobCleaner,
}

impl Housekeeping {
    async fn run(self, stop: CancellationToken) {
        loop {
            match self
                .ledger
                .expire_idempotency_keys(self.idempotency_retention)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "idempotency keys past retention freed"),
                Err(err) => tracing::warn!(%err, "could not expire idempotency keys"),
            }
            // A long pass (a large backlog of old jobs) must not hold up stepping down.
            tokio::select! {
                _ = stop.cancelled() => return,
                cleaned = self.cleaner.run_once(count_deleted) => match cleaned {
                    Ok(cleaned) if cleaned.batches > 0 => tracing::info!(
                        jobs = cleaned.deleted.jobs,
                        events = cleaned.deleted.events,
                        firings = cleaned.deleted.firings,
                        audit_events = cleaned.deleted.audit_events,
                        batches = cleaned.batches,
                        "deleted what outlived its retention"
                    ),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%err, "could not delete what outlived its retention")
                    }
                },
            }
            if let Err(err) = self.workers.forget_older_than(WORKER_RETENTION).await {
                tracing::warn!(%err, "could not forget long-gone workers");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
            }
        }
    }
}

fn count_deleted(deleted: Deleted) {
    for (table, n) in [
        ("jobs", deleted.jobs),
        ("job_events", deleted.events),
        ("schedule_firings", deleted.firings),
        ("audit_events", deleted.audit_events),
    ] {
        metrics::RETENTION_DELETED
            .with_label_values(&[table])
            .inc_by(n);
    }
}
