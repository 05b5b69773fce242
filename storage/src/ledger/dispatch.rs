//! Due work into the queues' Redis windows: the dispatcher's statements, and the sweep that
//! pushes again what Redis lost.

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskfleet_jobs::{Dispatch, Queue};
use uuid::Uuid;

use super::Ledger;

/// The [`Dispatch`] of a row a dispatch statement updated and returned (`id`, `tenant_id`,
/// `queue`, `kind`, `payload`, `attempt`, `max_attempts`, `lease_epoch`, `run_at`,
/// `request_id`): the delivery runs the next attempt under the epoch the statement raised.
macro_rules! delivery {
    ($row:expr) => {{
        let row = $row;
        Dispatch {
            job_id: row.id,
            epoch: row.lease_epoch,
            attempt: row.attempt + 1,
            max_attempts: row.max_attempts,
            tenant_id: row.tenant_id,
            queue: row
                .queue
                .parse()
                .expect("the ledger holds only known queues"),
            kind: row.kind,
            run_at: row.run_at,
            request_id: row.request_id,
            payload: Some(row.payload),
        }
    }};
}

impl Ledger {
    /// Picks up to `limit` due jobs of `queue` and marks them dispatched under a new fencing
    /// epoch, taking tenants in turn (each tenant's best job, then each tenant's second best,
    /// …) so one tenant's backlog cannot starve another. Returns their deliveries in that
    /// fair order.
    pub async fn dispatch_due(
        &self,
        queue: Queue,
        limit: i64,
        actor: &str,
    ) -> sqlx::Result<Vec<Dispatch>> {
        let mut dispatched = Vec::new();
        loop {
            let room = limit - dispatched.len() as i64;
            if room <= 0 {
                break;
            }
            let pass = self.dispatch_shares(queue, room, actor).await?;
            // A tenant that got its whole share may have more; one that got less has none.
            let more = pass.iter().any(|(_, turn, share)| turn == share);
            dispatched.extend(pass.into_iter().map(|(delivery, _, _)| delivery));
            if !more {
                break;
            }
        }
        Ok(dispatched)
    }

    /// One pass of [`Ledger::dispatch_due`]: each tenant with due work in `queue` gets an
    /// equal share of `room`, so a pass reads about `room` entries of the ready index however
    /// many tenants wait (each tenant's best `room` jobs, then a pick among them, read tenants
    /// × `room`). Room a tenant with less than its share leaves is shared out by the next pass.
    /// Each delivery comes with its place among its tenant's jobs of the pass and the share
    /// each tenant had.
    async fn dispatch_shares(
        &self,
        queue: Queue,
        room: i64,
        actor: &str,
    ) -> sqlx::Result<Vec<(Dispatch, i64, i64)>> {
        // A job is ready when it is queued, not yet in the window, and no pause holds its
        // queue (migration 0017); the fleet's own tenant is exempt from pauses.
        let rows = sqlx::query!(
            r#"WITH active AS MATERIALIZED (
                   -- `LIMIT 1` stops each tenant's look-up at its first ready job: written as
                   -- `EXISTS`, the planner may join against the whole backlog instead.
                   SELECT t.id FROM tenants t
                   CROSS JOIN LATERAL (
                       SELECT 1 FROM jobs
                       WHERE tenant_id = t.id AND queue = $1 AND dispatched_at IS NULL
                         AND state = 'queued'
                         AND NOT ((SELECT cardinality(paused_queues()) > 0)
                                  AND queue = ANY ((SELECT paused_queues())::text[])
                                  AND tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
                       LIMIT 1
                   ) AS due
               ), share AS (
                   SELECT ceil($2::int8::numeric / greatest(count(*), 1))::int8 AS n FROM active
               ), picked AS MATERIALIZED (
                   SELECT j.id, j.turn FROM active t
                   CROSS JOIN LATERAL (
                       SELECT id, priority, run_at,
                              row_number() OVER (ORDER BY priority DESC, run_at, id) AS turn
                       FROM jobs
                       WHERE tenant_id = t.id AND queue = $1 AND dispatched_at IS NULL
                         AND state = 'queued'
                         AND NOT ((SELECT cardinality(paused_queues()) > 0)
                                  AND queue = ANY ((SELECT paused_queues())::text[])
                                  AND tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
                       ORDER BY priority DESC, run_at, id
                       LIMIT (SELECT n FROM share)
                   ) j
                   -- Within a turn the longest waiting first: with more tenants than room, the
                   -- ones left out this round are first in the next.
                   ORDER BY j.turn, j.priority DESC, j.run_at
                   LIMIT $2
               ), locked AS (
                   -- Only the picked jobs are locked, and found by id alone: given the pick's
                   -- conditions as well, the planner took the ready index (which it believes
                   -- nearly empty during a burst nobody has analyzed yet) and read the whole
                   -- backlog for each round. A locked row is its latest version, so the
                   -- conditions are checked again below, on what the lock returned.
                   SELECT id, dispatched_at, state FROM jobs
                   WHERE id = ANY (ARRAY(SELECT id FROM picked))
                   FOR NO KEY UPDATE SKIP LOCKED
               ), updated AS (
                   UPDATE jobs SET dispatched_at = now(), lease_epoch = lease_epoch + 1
                   WHERE id = ANY (ARRAY(SELECT id FROM locked
                                         WHERE dispatched_at IS NULL AND state = 'queued'))
                   RETURNING id, tenant_id, queue, kind, payload, attempt, max_attempts,
                             lease_epoch, run_at, request_id
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_dispatched', $3::text, '{}')
                                  ::job_event_input
                       FROM updated))
               )
               SELECT updated.id AS "id!", updated.tenant_id AS "tenant_id!",
                      updated.queue AS "queue!", updated.kind AS "kind!",
                      updated.payload AS "payload!", updated.attempt AS "attempt!",
                      updated.max_attempts AS "max_attempts!",
                      updated.lease_epoch AS "lease_epoch!", updated.run_at AS "run_at!",
                      updated.request_id,
                      picked.turn AS "turn!", (SELECT n FROM share) AS "share!"
               FROM updated JOIN picked USING (id)
               ORDER BY picked.turn, updated.id"#,
            queue.as_str(),
            room,
            actor
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let (turn, share) = (row.turn, row.share);
                (delivery!(row), turn, share)
            })
            .collect())
    }

    /// Up to `limit` jobs dispatched longer ago than `after`, still not started and not
    /// among `waiting` (the ids still in the queue's Redis list), oldest first: their Redis
    /// copies were lost (Redis restarted or flushed, or a worker took them and died before
    /// starting them). Marks them dispatched again, now, under a new epoch, and returns their
    /// deliveries so the dispatcher pushes them once more; a copy of an older delivery that
    /// turns up after all cannot start ([`Ledger::start_many`]).
    pub async fn redispatch_stale(
        &self,
        queue: Queue,
        after: Duration,
        waiting: &[Uuid],
        limit: i64,
        actor: &str,
    ) -> sqlx::Result<Vec<Dispatch>> {
        let rows = sqlx::query!(
            r#"WITH updated AS (
                   UPDATE jobs SET dispatched_at = now(), lease_epoch = lease_epoch + 1
                   WHERE id IN (
                       SELECT id FROM jobs
                       WHERE queue = $1 AND state = 'queued' AND dispatched_at IS NOT NULL
                         AND dispatched_at < now() - make_interval(secs => $2)
                         AND NOT ((SELECT cardinality(paused_queues()) > 0)
                                  AND queue = ANY ((SELECT paused_queues())::text[])
                                  AND tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
                         AND id <> ALL($5)
                       ORDER BY dispatched_at LIMIT $4
                   ) AND state = 'queued'
                   RETURNING id, tenant_id, queue, kind, payload, attempt, max_attempts,
                             lease_epoch, run_at, request_id
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_dispatched', $3::text,
                                  '{"redispatch": true}')::job_event_input
                       FROM updated))
               )
               SELECT id AS "id!", tenant_id AS "tenant_id!", queue AS "queue!",
                      kind AS "kind!", payload AS "payload!", attempt AS "attempt!",
                      max_attempts AS "max_attempts!", lease_epoch AS "lease_epoch!",
                      run_at AS "run_at!", request_id
               FROM updated ORDER BY id"#,
            queue.as_str(),
            after.as_secs_f64(),
            actor,
            limit,
            waiting
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| delivery!(row)).collect())
    }

    /// Takes jobs back out of the window after pushing them to Redis failed, so the next
    /// round dispatches them again instead of waiting for the stale-dispatch sweep.
    pub async fn undispatch(&self, ids: &[Uuid]) -> sqlx::Result<u64> {
        let done = sqlx::query!(
            "UPDATE jobs SET dispatched_at = NULL WHERE id = ANY($1) AND state = 'queued'",
            ids
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Moves up to `limit` `scheduled` and `retrying` jobs whose `run_at` has come into
    /// `queued`, earliest first, and returns how many. Until then they wait in an index of
    /// their own (`jobs_waiting`, by `run_at`), so future work costs the dispatcher nothing
    /// but this look at its first entries. Falling due has no event of its own: the job's
    /// previous event named its `run_at`, and `job_dispatched` follows.
    pub async fn promote_due(&self, limit: i64) -> sqlx::Result<u64> {
        let done = sqlx::query!(
            "WITH due AS (
                 SELECT id FROM jobs
                 WHERE state IN ('scheduled', 'retrying') AND run_at <= now()
                 ORDER BY run_at
                 LIMIT $1
                 FOR NO KEY UPDATE SKIP LOCKED
             )
             UPDATE jobs SET state = 'queued'
             FROM due
             WHERE jobs.id = due.id AND jobs.state IN ('scheduled', 'retrying')",
            limit
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The queues that have a job due and not yet dispatched (paused queues aside), in one
    /// query, so a round of the dispatcher touches only the queues that have work. Each
    /// queue's lookup stops at its first due job (`LIMIT 1`): written as `WHERE EXISTS`, the
    /// planner made it a semi-join that read the whole backlog every round.
    pub async fn queues_with_due_work(&self) -> sqlx::Result<Vec<Queue>> {
        let queues: Vec<&str> = Queue::ALL.iter().map(|queue| queue.as_str()).collect();
        let due = sqlx::query_scalar!(
            r#"SELECT q.queue AS "queue!" FROM UNNEST($1::text[]) AS q(queue)
               CROSS JOIN LATERAL (
                   SELECT 1 FROM jobs
                   WHERE queue = q.queue AND dispatched_at IS NULL AND state = 'queued'
                     AND NOT ((SELECT cardinality(paused_queues()) > 0)
                              AND queue = ANY ((SELECT paused_queues())::text[])
                              AND tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
                   LIMIT 1
               ) AS due"#,
            &queues as &[&str]
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(due.iter().filter_map(|queue| queue.parse().ok()).collect())
    }

    /// How many jobs of each queue the ledger counts in its Redis window (dispatched, not
    /// yet started); queues with none are left out. Counting reads every entry of the
    /// window's index, dead ones too, so the dispatcher asks only when it sweeps for lost
    /// copies and sizes the window from Redis otherwise.
    pub async fn window_sizes(&self) -> sqlx::Result<Vec<(Queue, i64)>> {
        let sizes = sqlx::query!(
            r#"SELECT queue, count(*) AS "size!" FROM jobs
               WHERE state = 'queued' AND dispatched_at IS NOT NULL
               GROUP BY queue"#
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(sizes
            .into_iter()
            .filter_map(|row| Some((row.queue.parse().ok()?, row.size)))
            .collect())
    }

    /// The earliest `run_at` of a job waiting to fall due ([`Ledger::promote_due`]), so the
    /// dispatcher can sleep exactly until then: the first entry of `jobs_waiting`.
    pub async fn next_run_at(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar!("SELECT min(run_at) FROM jobs WHERE state IN ('scheduled', 'retrying')")
            .fetch_one(&self.pool)
            .await
    }
}
