//! The reclaimer (River's job rescuer plays this role), run by the leader: a running job
//! whose lease is gone (its worker died, stalled, or lost Redis) is taken back under its
//! epoch and runs again; its old holder can no longer record anything.

use std::time::Duration;

use redis::aio::ConnectionManager;
use taskfleet_storage::{Lease, Ledger, redis as tf_redis, redis::Keys};
use taskfleet_telemetry::metrics;
use tokio_util::sync::CancellationToken;

/// Leases are checked this many at a time (one `MGET`).
const CHUNK: usize = 1_000;

pub struct Reclaimer {
    pub ledger: Ledger,
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub lease_ttl: Duration,
    /// Names the reclaimer in events.
    pub actor: String,
}

impl Reclaimer {
    /// Sweeps every half lease ttl until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(jobs = n, "reclaimed jobs with expired leases");
                    tf_redis::wake_dispatcher(&mut self.conn, &self.keys).await;
                }
                Err(err) => tracing::warn!(%err, "reclaim sweep failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.lease_ttl / 2) => {}
            }
        }
    }

    /// Reclaims every job running for longer than a ttl without a lease under its epoch.
    pub async fn sweep(&mut self) -> anyhow::Result<usize> {
        // A job started less than a ttl ago may not have taken its lease yet.
        let candidates = self.ledger.running_longer_than(self.lease_ttl).await?;
        let mut reclaimed = 0;
        for chunk in candidates.chunks(CHUNK) {
            let lease_keys: Vec<String> = chunk
                .iter()
                .map(|(id, _)| self.keys.job_lease(*id))
                .collect();
            let held = Lease::epochs(&mut self.conn, &lease_keys).await?;
            for (&(id, epoch), held) in chunk.iter().zip(held) {
                if held == Some(epoch as u64) {
                    continue;
                }
                if let Some(job) = self.ledger.reclaim(id, epoch, &self.actor).await? {
                    tracing::info!(%id, epoch, next = %job.next, "lease expired; job reclaimed");
                    metrics::LEASES_RECLAIMED
                        .with_label_values(&[job.queue.as_str()])
                        .inc();
                    // Out of attempts, or cancelled meanwhile: the attempt ends here.
                    if let Some(outcome) = metrics::outcome_of(&job.next) {
                        metrics::JOBS
                            .with_label_values(&[job.queue.as_str(), job.kind.as_str(), outcome])
                            .inc();
                    }
                    reclaimed += 1;
                }
            }
        }
        Ok(reclaimed)
    }
}
