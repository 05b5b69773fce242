//! The dispatcher: moves due jobs from the ledger into each queue's Redis window, run only by
//! the elected leader. Each queue's window holds about `window` jobs waiting in Redis (tasks
//! taken by a worker are not counted), so Redis holds a small, disposable window of work and
//! the ledger the backlog; the window is filled fairly across tenants.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use taskfleet_jobs::{Dispatch, Queue};
use taskfleet_storage::{
    Ledger, redis as tf_redis,
    redis::{Connection, Keys},
};
use taskfleet_telemetry::metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Pause between rounds while some queue has more due work than room in its window.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
/// Longest sleep with nothing to do; a wake-up or a due `run_at` ends it sooner.
const IDLE_PAUSE: Duration = Duration::from_secs(1);
/// Most scheduled and retrying jobs moved into `queued` by one round as they fall due.
const PROMOTE_AT_ONCE: i64 = 10_000;
/// How often dispatched-but-never-started jobs are looked for.
const STALE_SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub window: i64,
    pub redispatch_after: Duration,
}

pub struct Dispatcher {
    ledger: Ledger,
    conn: Connection,
    keys: Keys,
    settings: DispatcherSettings,
    /// Names the dispatcher in events.
    actor: String,
    /// Fired when the API accepts work.
    wakeups: Arc<Notify>,
}

impl Dispatcher {
    pub fn new(
        ledger: Ledger,
        conn: Connection,
        keys: &Keys,
        settings: DispatcherSettings,
        actor: String,
        wakeups: Arc<Notify>,
    ) -> Dispatcher {
        Dispatcher {
            ledger,
            conn,
            keys: keys.clone(),
            settings,
            actor,
            wakeups,
        }
    }

    /// Dispatches until `stop` fires (leadership lost or shutdown).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            let sweep = last_sweep.elapsed() >= STALE_SWEEP_EVERY;
            if sweep {
                last_sweep = tokio::time::Instant::now();
            }
            // Registered before the round, so a wake-up during the round is not missed.
            let wakeups = self.wakeups.clone();
            let woken = wakeups.notified();
            let pause = match self.round(sweep).await {
                Ok(true) => BUSY_PAUSE,
                Ok(false) => self.idle_pause().await,
                Err(err) => {
                    tracing::warn!(%err, "dispatch round failed");
                    IDLE_PAUSE
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Until the next scheduled job is due, at most [`IDLE_PAUSE`].
    async fn idle_pause(&self) -> Duration {
        match self.ledger.next_run_at().await {
            Ok(Some(next)) => (next - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(BUSY_PAUSE, IDLE_PAUSE),
            _ => IDLE_PAUSE,
        }
    }

    /// One pass over the queues with due work, after moving what fell due meanwhile into
    /// `queued`. Returns true when more work was due than one round could take (a window
    /// filled up, or more jobs fell due than one promotion moves), i.e. another round should
    /// follow at once.
    pub async fn round(&mut self, sweep_stale: bool) -> anyhow::Result<bool> {
        if sweep_stale {
            self.sweep_stale().await?;
        }
        let promoted = self.ledger.promote_due(PROMOTE_AT_ONCE).await?;
        let due = self.ledger.queues_with_due_work().await?;
        if due.is_empty() {
            return Ok(promoted == PROMOTE_AT_ONCE as u64);
        }
        // The window is sized from Redis: counting it in the ledger reads every dead index
        // entry a burst leaves behind, too costly for every round (ADR 0007).
        let waiting = tf_redis::waiting(&mut self.conn, &self.keys, &due).await?;
        let mut saturated = false;
        for (queue, waiting) in due.into_iter().zip(waiting) {
            let room = tf_redis::dispatch_room(self.settings.window, waiting);
            if room == 0 {
                // Due work and a full window: look again as soon as workers may have made
                // room, not after an idle pause.
                saturated = true;
                continue;
            }
            let dispatched = self.ledger.dispatch_due(queue, room, &self.actor).await?;
            saturated |= dispatched.len() as i64 == room;
            if !dispatched.is_empty() {
                self.push(queue, &dispatched).await?;
            }
        }
        Ok(saturated || promoted == PROMOTE_AT_ONCE as u64)
    }

    /// Pushes again the jobs the ledger counts in a window whose Redis copies are gone:
    /// Redis restarted or flushed, or a worker took them and died before starting them.
    /// Busy workers leave copies waiting in Redis, so only the difference is looked for,
    /// among jobs dispatched long enough ago and not waiting in the list (read whole: it is
    /// at most a window long).
    async fn sweep_stale(&mut self) -> anyhow::Result<()> {
        let sizes = self.ledger.window_sizes().await?;
        let queues: Vec<Queue> = sizes.iter().map(|(queue, _)| *queue).collect();
        let waiting = tf_redis::waiting_ids(&mut self.conn, &self.keys, &queues).await?;
        for ((queue, size), waiting) in sizes.into_iter().zip(waiting) {
            let missing = size - waiting.len() as i64;
            if missing <= 0 {
                continue;
            }
            let stale = self
                .ledger
                .redispatch_stale(
                    queue,
                    self.settings.redispatch_after,
                    &waiting,
                    missing,
                    &self.actor,
                )
                .await?;
            if !stale.is_empty() {
                tracing::info!(%queue, jobs = stale.len(), "re-pushing jobs whose Redis copy was lost");
                self.push(queue, &stale).await?;
            }
        }
        Ok(())
    }

    async fn push(&mut self, queue: Queue, jobs: &[Dispatch]) -> anyhow::Result<()> {
        if let Err(err) = tf_redis::push_jobs(&mut self.conn, &self.keys, queue, jobs).await {
            let ids: Vec<Uuid> = jobs.iter().map(|job| job.job_id).collect();
            self.ledger.undispatch(&ids).await?;
            anyhow::bail!(
                "pushing {} jobs to Redis queue {queue} failed: {err}",
                ids.len()
            );
        }
        metrics::JOBS_DISPATCHED
            .with_label_values(&[queue.as_str()])
            .inc_by(jobs.len() as u64);
        Ok(())
    }
}
