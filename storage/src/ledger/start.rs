//! Starts: a delivered job becomes `running` under a new fencing epoch, once, however many
//! copies of it were delivered.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::FromRow;
use taskfleet_jobs::EventName;
use uuid::Uuid;

use super::{Ledger, held_by_pause};
use crate::events::append_events;

/// A job a worker has just started: the ledger raised its attempt and epoch.
#[derive(Debug, Clone, FromRow)]
pub struct StartedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub queue: String,
    pub kind: String,
    /// How long it waited between being due and this start (pickup latency).
    pub waited_seconds: f64,
    pub request_id: Option<String>,
    pub payload: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_epoch: i64,
}

impl Ledger {
    /// Starts jobs, in one statement however many: only a `queued` job can start, so of
    /// several deliveries of the same job exactly one wins (within one call, the first).
    /// Raises each started job's attempt and fencing epoch. A job of a paused queue does not
    /// start: it leaves the Redis window (`dispatched_at` cleared) and waits in the ledger
    /// until the queue is resumed. A job whose cancellation was asked does not start either
    /// (the leader's cancellation sweep ends it). Returns, in order, each started job or
    /// `None`.
    pub async fn start_many(
        &self,
        ids: &[Uuid],
        worker: &str,
    ) -> sqlx::Result<Vec<Option<StartedJob>>> {
        // Rows are locked in id order, as inserts lock theirs in key order: two batches that
        // share jobs cannot deadlock.
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let sql = format!(
            "WITH input AS (
                 SELECT id FROM UNNEST($1::uuid[]) AS t(id)
             ), parked AS (
                 UPDATE jobs SET dispatched_at = NULL
                 FROM input
                 WHERE jobs.id = input.id AND jobs.state = 'queued' AND {held}
             ), started AS (
                 UPDATE jobs SET state = 'running', attempt = attempt + 1,
                                 lease_epoch = lease_epoch + 1, dispatched_at = NULL,
                                 started_at = now(), worker = $2,
                                 progress_percent = NULL, progress_message = NULL
                 FROM input
                 WHERE jobs.id = input.id AND jobs.state = 'queued'
                   AND jobs.cancel_requested_at IS NULL AND NOT {held}
                 RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.payload,
                           jobs.attempt, jobs.max_attempts, jobs.lease_epoch, jobs.request_id,
                           EXTRACT(EPOCH FROM now() - jobs.run_at)::float8 AS waited_seconds
             ), events AS ({events})
             SELECT * FROM started",
            held = held_by_pause(),
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{started}' AS event, $2 AS actor,
                        jsonb_build_object('attempt', attempt, 'epoch', lease_epoch) AS details
                 FROM started",
                started = EventName::JobStarted
            )),
        );
        let rows: Vec<StartedJob> = sqlx::query_as(&sql)
            .bind(&sorted)
            .bind(worker)
            .fetch_all(self.pool_for(sorted.len()))
            .await?;
        let mut started: HashMap<Uuid, StartedJob> =
            rows.into_iter().map(|job| (job.id, job)).collect();
        // `remove` hands a job to its first delivery only.
        Ok(ids.iter().map(|id| started.remove(id)).collect())
    }
}
