//! Rescues (River's job rescuer): a running job whose lease lapsed is taken back from its
//! silent worker under its epoch, and waits out a retry delay before it runs again, so a job
//! that kills its process does not take worker after worker down at once. Each lapse counts
//! as a stall; a job that stalls too often is dead. And cancellations: a running job whose
//! cancellation was asked is signalled again until it stops.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Ledger;

/// A job running for longer than a lease ttl: the reclaimer checks its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub id: Uuid,
    pub lease_epoch: i64,
    pub queue: String,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
}

/// A job to take back from its silent worker: under `epoch`, to run again at `retry_at`
/// unless it is out of attempts or stalls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescue {
    pub id: Uuid,
    pub epoch: i64,
    pub retry_at: DateTime<Utc>,
}

/// A running job the reclaimer took back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// `retrying`, `cancelled` or `dead`.
    pub next: String,
}

/// What [`Ledger::sweep_cancellations`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelSweep {
    /// Jobs not running that carried a cancellation request, now `cancelled`.
    pub ended: Vec<Uuid>,
    /// Running jobs whose cancellation was asked a while ago: signal their workers again.
    pub running: Vec<Uuid>,
}

impl Ledger {
    /// Up to `limit` jobs running for longer than `age`, in start order after `after` (the
    /// last of the previous page): the candidates whose leases the reclaimer checks.
    pub async fn running_longer_than(
        &self,
        age: Duration,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> sqlx::Result<Vec<RunningJob>> {
        // Postgres's clock, the one that wrote `started_at`, measures the age.
        sqlx::query_as!(
            RunningJob,
            r#"SELECT id, lease_epoch, queue, attempt, started_at AS "started_at!" FROM jobs
               WHERE state = 'running' AND started_at < now() - make_interval(secs => $1)
                 AND ($2::timestamptz IS NULL OR (started_at, id) > ($2, $3::uuid))
               ORDER BY started_at, id
               LIMIT $4"#,
            age.as_secs_f64(),
            after.map(|(started_at, _)| started_at),
            after.map(|(_, id)| id),
            limit
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Takes running jobs whose leases expired away from their holders, in one statement:
    /// each to `retrying` at its `retry_at` (its next start raises the attempt), `cancelled`
    /// if cancellation was asked, `dead` if that was its last attempt or its `max_stalls`th
    /// stall (error `stalled: …`). Returns the jobs taken back; one whose epoch moved on
    /// meanwhile is left alone.
    pub async fn reclaim_many(
        &self,
        rescues: &[Rescue],
        max_stalls: i32,
        actor: &str,
    ) -> sqlx::Result<Vec<Reclaimed>> {
        let ids: Vec<Uuid> = rescues.iter().map(|rescue| rescue.id).collect();
        let epochs: Vec<i64> = rescues.iter().map(|rescue| rescue.epoch).collect();
        let retry_ats: Vec<DateTime<Utc>> = rescues.iter().map(|rescue| rescue.retry_at).collect();
        sqlx::query_as!(
            Reclaimed,
            r#"WITH input AS (
                   SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::timestamptz[])
                       AS t(id, epoch, retry_at)
               ), verdicts AS (
                   -- Decided from each row's latest version, locked, so a cancel committed a
                   -- moment earlier is honoured.
                   SELECT jobs.id, input.epoch, input.retry_at,
                          CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                               WHEN stalls + 1 >= $4 THEN 'stalled'
                               WHEN attempt >= max_attempts THEN 'last attempt'
                               ELSE 'retrying' END AS verdict
                   FROM input JOIN jobs ON jobs.id = input.id
                   WHERE jobs.lease_epoch = input.epoch AND jobs.state = 'running'
                   ORDER BY jobs.id
                   FOR NO KEY UPDATE OF jobs
               ), changed AS (
                   UPDATE jobs SET
                       state = CASE verdict WHEN 'cancelled' THEN 'cancelled'
                                            WHEN 'retrying' THEN 'retrying'
                                            ELSE 'dead' END,
                       stalls = stalls + 1,
                       dispatched_at = NULL,
                       run_at = CASE verdict WHEN 'retrying' THEN v.retry_at ELSE run_at END,
                       finished_at = CASE verdict WHEN 'retrying' THEN NULL ELSE now() END,
                       error = CASE verdict
                           WHEN 'stalled' THEN 'stalled: the worker running it went silent '
                                               || stalls + 1 || ' times'
                           WHEN 'last attempt'
                               THEN 'the worker stopped heartbeating on the last attempt'
                           WHEN 'retrying' THEN 'the worker stopped heartbeating'
                           ELSE error END,
                       attempt_errors = CASE verdict WHEN 'cancelled' THEN attempt_errors
                           ELSE attempt_errors || jsonb_build_array(jsonb_build_object(
                               'attempt', attempt, 'error', 'the worker stopped heartbeating',
                               'at', now())) END
                   FROM verdicts AS v
                   WHERE jobs.id = v.id AND jobs.lease_epoch = v.epoch
                     AND jobs.state = 'running'
                   RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.attempt,
                             jobs.worker, jobs.stalls, jobs.run_at, jobs.state AS next,
                             jobs.error LIKE 'stalled:%' AS stalled, v.epoch
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, job_id, queue, kind, event, $5::text, details)
                                  ::job_event_input
                       FROM (
                           SELECT tenant_id, id AS job_id, queue, kind, 0 AS n,
                                  'lease_reclaimed' AS event,
                                  jsonb_build_object('epoch', epoch, 'attempt', attempt,
                                                     'holder', worker, 'next_state', next,
                                                     'stalls', stalls) AS details
                           FROM changed
                           UNION ALL
                           -- The last event names the state the job is left in.
                           SELECT tenant_id, id, queue, kind, 1,
                                  CASE next WHEN 'retrying' THEN 'job_retry_scheduled'
                                            WHEN 'dead' THEN 'job_dead'
                                            ELSE 'job_cancelled' END,
                                  CASE next
                                      WHEN 'retrying' THEN jsonb_build_object(
                                          'attempt', attempt, 'retry_at', run_at,
                                          'reason', 'lease expired')
                                      ELSE jsonb_build_object(
                                          'attempt', attempt,
                                          'reason', CASE WHEN stalled THEN 'stalled'
                                                         ELSE 'lease expired' END)
                                  END
                           FROM changed
                       ) AS e
                       ORDER BY job_id, n))
               )
               SELECT id AS "id!", queue AS "queue!", kind AS "kind!", next AS "next!"
               FROM changed ORDER BY id"#,
            &ids,
            &epochs,
            &retry_ats,
            max_stalls,
            actor
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Looks after cancellations that one Redis signal may not have carried through: a job
    /// not running that still carries a request (none should: every path that leaves
    /// `running` honours it) ends `cancelled` now, and up to `limit` running jobs whose
    /// request is older than `signal_after` are returned, for their workers to be signalled
    /// again.
    pub async fn sweep_cancellations(
        &self,
        signal_after: Duration,
        limit: i64,
        actor: &str,
    ) -> sqlx::Result<CancelSweep> {
        let rows = sqlx::query!(
            r#"WITH ended AS (
                   UPDATE jobs SET state = 'cancelled', finished_at = now(), dispatched_at = NULL
                   WHERE id IN (
                       SELECT id FROM jobs
                       WHERE cancel_requested_at IS NOT NULL
                         AND state IN ('scheduled', 'queued', 'retrying')
                       LIMIT $2
                   ) AND cancel_requested_at IS NOT NULL
                     AND state IN ('scheduled', 'queued', 'retrying')
                   RETURNING id, tenant_id, queue, kind
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_cancelled', $3::text,
                                  '{"while": "waiting"}')::job_event_input
                       FROM ended))
               )
               SELECT id AS "id!", true AS "ended!" FROM ended
               UNION ALL
               (SELECT id, false FROM jobs
                WHERE cancel_requested_at IS NOT NULL AND state = 'running'
                  AND cancel_requested_at < now() - make_interval(secs => $1)
                LIMIT $2)"#,
            signal_after.as_secs_f64(),
            limit,
            actor
        )
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<(Uuid, bool)> = rows.into_iter().map(|row| (row.id, row.ended)).collect();
        let (ended, running): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, ended)| *ended);
        Ok(CancelSweep {
            ended: ended.into_iter().map(|(id, _)| id).collect(),
            running: running.into_iter().map(|(id, _)| id).collect(),
        })
    }
}
