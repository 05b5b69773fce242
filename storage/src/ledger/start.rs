//! Starts: a delivered job becomes `running` under the fencing epoch its dispatch raised,
//! once, however many copies of it were delivered. Workers run a delivery while its start is
//! written (ADR 0017): an outcome waits for the start, and a refused start stops the run.

use std::collections::HashMap;

use serde_json::Value;
use taskfleet_jobs::StartRequest;
use uuid::Uuid;

use super::Ledger;

/// A start the ledger wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The job's spec, when the delivery came without it (too large for Redis).
    pub payload: Option<Value>,
}

impl Ledger {
    /// Starts deliveries, in one statement however many: only a `queued` job whose epoch is
    /// still the request's can start, so of several copies of the same job at most one wins
    /// (within one call, the first), and a copy from an earlier dispatch none. Raises each
    /// started job's attempt. A job of a paused queue does not start: it leaves the Redis
    /// window (`dispatched_at` cleared) and waits in the ledger until the queue is resumed. A
    /// job whose cancellation was asked does not start either (the leader's cancellation
    /// sweep ends it). Returns, in order, each request's start, or `None` where it did not
    /// start.
    pub async fn start_many(
        &self,
        requests: &[StartRequest],
        worker: &str,
    ) -> sqlx::Result<Vec<Option<Started>>> {
        // Rows are locked in id order, as inserts lock theirs in key order: two batches that
        // share jobs cannot deadlock.
        let mut sorted: Vec<(Uuid, i64, bool)> = requests
            .iter()
            .map(|request| (request.job_id, request.epoch, request.bring_payload))
            .collect();
        // Of two copies of one delivery, one that needs the spec brought counts.
        sorted.sort_unstable_by_key(|&(id, epoch, bring_payload)| (id, epoch, !bring_payload));
        sorted.dedup_by_key(|(id, epoch, _)| (*id, *epoch));
        let mut ids = Vec::with_capacity(sorted.len());
        let mut epochs = Vec::with_capacity(sorted.len());
        let mut bring_payloads = Vec::with_capacity(sorted.len());
        for (id, epoch, bring_payload) in sorted {
            ids.push(id);
            epochs.push(epoch);
            bring_payloads.push(bring_payload);
        }
        let rows = sqlx::query!(
            r#"WITH input AS (
                   SELECT * FROM UNNEST($1::uuid[], $3::int8[], $4::bool[])
                       AS t(id, epoch, bring_payload)
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
                                   dispatched_at = NULL, started_at = now(), worker = $2,
                                   progress_percent = NULL, progress_message = NULL
                   FROM input
                   WHERE jobs.id = input.id AND jobs.lease_epoch = input.epoch
                     AND jobs.state = 'queued'
                     AND jobs.cancel_requested_at IS NULL
                     AND NOT ((SELECT cardinality(paused_queues()) > 0)
                              AND jobs.queue = ANY ((SELECT paused_queues())::text[])
                              AND jobs.tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
                   RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.attempt,
                             jobs.lease_epoch,
                             CASE WHEN input.bring_payload THEN jobs.payload END AS payload
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_started', $2,
                                  jsonb_build_object('attempt', attempt, 'epoch', lease_epoch)
                              )::job_event_input
                       FROM started))
               )
               SELECT id AS "id!", lease_epoch AS "epoch!", payload FROM started"#,
            &ids,
            worker,
            &epochs,
            &bring_payloads
        )
        .fetch_all(self.pool_for(ids.len()))
        .await?;
        let mut started: HashMap<(Uuid, i64), Started> = rows
            .into_iter()
            .map(|row| {
                (
                    (row.id, row.epoch),
                    Started {
                        payload: row.payload,
                    },
                )
            })
            .collect();
        // `remove` hands a start to its first copy only.
        Ok(requests
            .iter()
            .map(|request| started.remove(&(request.job_id, request.epoch)))
            .collect())
    }
}
