//! Starts: a delivered job becomes `running` under a new fencing epoch, once, however many
//! copies of it were delivered.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use super::Ledger;

/// A job a worker has just started: the ledger raised its attempt and epoch.
#[derive(Debug, Clone)]
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
        let rows: Vec<StartedJob> = sqlx::query_as!(
            StartedJob,
            r#"WITH input AS (
                   SELECT id FROM UNNEST($1::uuid[]) AS t(id)
               ), parked AS (
                   -- A pause holds the job's queue (migration 0017). The first test is one
                   -- per statement: while no queue is paused (nearly always), this update is
                   -- skipped whole.
                   UPDATE jobs SET dispatched_at = NULL
                   FROM input
                   WHERE (SELECT cardinality(paused_queues()) > 0)
                     AND jobs.id = input.id AND jobs.state = 'queued'
                     AND jobs.queue = ANY ((SELECT paused_queues())::text[])
                     AND jobs.tenant_id IS DISTINCT FROM (SELECT system_tenant_id())
               ), started AS (
                   UPDATE jobs SET state = 'running', attempt = attempt + 1,
                                   lease_epoch = lease_epoch + 1, dispatched_at = NULL,
                                   started_at = now(), worker = $2,
                                   progress_percent = NULL, progress_message = NULL
                   FROM input
                   WHERE jobs.id = input.id AND jobs.state = 'queued'
                     AND jobs.cancel_requested_at IS NULL
                     AND NOT ((SELECT cardinality(paused_queues()) > 0)
                              AND jobs.queue = ANY ((SELECT paused_queues())::text[])
                              AND jobs.tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
                   RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.payload,
                             jobs.attempt, jobs.max_attempts, jobs.lease_epoch,
                             jobs.request_id,
                             EXTRACT(EPOCH FROM now() - jobs.run_at)::float8 AS waited_seconds
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_started', $2,
                                  jsonb_build_object('attempt', attempt, 'epoch', lease_epoch)
                              )::job_event_input
                       FROM started))
               )
               SELECT id AS "id!", tenant_id AS "tenant_id!", queue AS "queue!",
                      kind AS "kind!", waited_seconds AS "waited_seconds!", request_id,
                      payload AS "payload!", attempt AS "attempt!",
                      max_attempts AS "max_attempts!", lease_epoch AS "lease_epoch!"
               FROM started"#,
            &sorted,
            worker
        )
        .fetch_all(self.pool_for(sorted.len()))
        .await?;
        let mut started: HashMap<Uuid, StartedJob> =
            rows.into_iter().map(|job| (job.id, job)).collect();
        // `remove` hands a job to its first delivery only.
        Ok(ids.iter().map(|id| started.remove(id)).collect())
    }
}
