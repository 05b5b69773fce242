//! The reclaimer (River's job rescuer plays this role), run by the leader: a running job
//! whose lease is gone (its worker died, stalled, or lost Redis for a ttl) is taken back under
//! its epoch and runs again after its retry delay; its old holder can no longer record
//! anything. For a ttl after Redis started empty, an absent lease is not read as lapsed: the
//! live holders are taking theirs back.
//! It also carries cancellations through: a running job whose cancellation the ledger holds
//! is signalled again until it stops, since one Redis message may have been lost.

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use chrono::Utc;
use taskfleet_jobs::{Queue, RetryPolicy};
use taskfleet_storage::{
    Lease, Ledger, Rescue, RunningJob, redis as tf_redis,
    redis::{Connection, Keys},
};
use taskfleet_telemetry::metrics;
use tokio_util::sync::CancellationToken;

/// Jobs looked at per page: their leases are read in one round trip (one per slot on a
/// cluster) and the expired ones taken back with one statement.
const PAGE: i64 = 1_000;
/// A cancellation asked this long ago whose job still runs is signalled again.
const RESIGNAL_AFTER: Duration = Duration::from_secs(5);

pub struct Reclaimer {
    pub ledger: Ledger,
    pub conn: Connection,
    pub keys: Keys,
    pub lease_ttl: Duration,
    /// Stalls after which a job is dead ([`Ledger::reclaim_many`]).
    pub max_stalls: i32,
    /// Names the reclaimer in events.
    pub actor: String,
}

impl Reclaimer {
    /// Sweeps every half lease ttl until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        // Every shard's birth is set now if Redis has none yet, rather than at the first
        // absent lease of the shard: a birth set only then would be young then, and excuse
        // that first lapse for one ttl more. Should this fail, the sweeps set them as before.
        let births = self.keys.keyspace_births();
        if let Err(err) = Lease::keyspace_ages(&mut self.conn, &births).await {
            tracing::warn!(%err, "could not mark the keyspace births");
        }
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(jobs = n, "reclaimed jobs with expired leases");
                    tf_redis::wake_dispatcher(&mut self.conn, &self.keys).await;
                }
                Err(err) => tracing::warn!(%err, "reclaim sweep failed"),
            }
            if let Err(err) = self.resignal_cancellations().await {
                tracing::warn!(%err, "cancellation sweep failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.lease_ttl / 2) => {}
            }
        }
    }

    /// Reclaims every job running for longer than a ttl without a lease under its epoch,
    /// a page at a time; returns how many.
    pub async fn sweep(&mut self) -> anyhow::Result<usize> {
        let mut reclaimed = 0;
        let mut after = None;
        loop {
            // A job started less than a ttl ago may not have taken its lease yet.
            let page = self
                .ledger
                .running_longer_than(self.lease_ttl, after, PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(reclaimed);
            };
            after = Some((last.started_at, last.id));
            reclaimed += self.reclaim_lapsed(&page).await?;
            if (page.len() as i64) < PAGE {
                return Ok(reclaimed);
            }
        }
    }

    /// Takes back the jobs of `page` whose leases are gone or held under another epoch.
    async fn reclaim_lapsed(&mut self, page: &[RunningJob]) -> anyhow::Result<usize> {
        let lease_keys: Vec<String> = page.iter().map(|job| self.keys.job_lease(job.id)).collect();
        let held = Lease::epochs(&mut self.conn, &lease_keys).await?;
        // Redis lost every lease it held when it started empty (a cluster's primaries each on
        // their own): for a ttl, their holders take them back, and only a lease held under
        // another epoch tells that a job lapsed. Asked only where a lease is absent.
        let births: BTreeSet<String> = page
            .iter()
            .zip(&held)
            .filter(|(_, held)| held.is_none())
            .map(|(job, _)| self.keys.keyspace_born(job.id))
            .collect();
        let births: Vec<String> = births.into_iter().collect();
        let ages = Lease::keyspace_ages(&mut self.conn, &births).await?;
        let young: HashSet<&String> = births
            .iter()
            .zip(ages)
            .filter(|(_, age)| *age < self.lease_ttl)
            .map(|(born, _)| born)
            .collect();
        let rescues = Self::rescues(page, held, |job| {
            young.contains(&self.keys.keyspace_born(job.id))
        });
        if rescues.is_empty() {
            return Ok(0);
        }
        let reclaimed = self
            .ledger
            .reclaim_many(&rescues, self.max_stalls, &self.actor)
            .await?;
        for job in &reclaimed {
            tracing::info!(id = %job.id, next = %job.next, "lease expired; job reclaimed");
            metrics::LEASES_RECLAIMED
                .with_label_values(&[job.queue.as_str()])
                .inc();
            if let Some(outcome) = metrics::outcome_of(&job.next) {
                metrics::JOBS
                    .with_label_values(&[job.queue.as_str(), job.kind.as_str(), outcome])
                    .inc();
            }
        }
        Ok(reclaimed.len())
    }

    /// The jobs of `page` whose leases (`held`, in order) are gone (unless Redis lost them,
    /// `lost_by_redis`) or under another epoch, each to run again after the delay a failed
    /// attempt would wait.
    fn rescues(
        page: &[RunningJob],
        held: Vec<Option<u64>>,
        lost_by_redis: impl Fn(&RunningJob) -> bool,
    ) -> Vec<Rescue> {
        let now = Utc::now();
        let mut rng = rand::rng();
        page.iter()
            .zip(held)
            .filter(|(job, held)| match held {
                None => !lost_by_redis(job),
                Some(epoch) => *epoch != job.lease_epoch as u64,
            })
            .map(|(job, _)| {
                // A stall is a failed attempt: it waits the delay a failure would.
                let delay = job.queue.parse::<Queue>().map_or(Duration::ZERO, |queue| {
                    RetryPolicy::for_queue(queue).delay(job.attempt.max(1) as u32, &mut rng)
                });
                Rescue {
                    id: job.id,
                    epoch: job.lease_epoch,
                    retry_at: now + delay,
                }
            })
            .collect()
    }

    /// Signals again the workers of running jobs whose cancellation the ledger holds, and
    /// ends any job not running that still carries a request.
    async fn resignal_cancellations(&mut self) -> anyhow::Result<()> {
        let sweep = self
            .ledger
            .sweep_cancellations(RESIGNAL_AFTER, PAGE, &self.actor)
            .await?;
        if !sweep.ended.is_empty() {
            tracing::info!(
                jobs = sweep.ended.len(),
                "ended waiting jobs whose cancellation was asked"
            );
        }
        for id in sweep.running {
            tf_redis::request_cancel(&mut self.conn, &self.keys, id).await?;
        }
        Ok(())
    }
}
