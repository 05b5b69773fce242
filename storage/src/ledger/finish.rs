//! Outcomes and progress of attempts, each written under the attempt's epoch: a stale write
//! changes nothing and leaves a `stale_write_rejected` event.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Connection;
use uuid::Uuid;

use super::Ledger;

/// How an attempt ended, as [`Ledger::finish_many`] records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// With `retry_at` the job waits in `retrying`; without, it is dead.
    Failed {
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
    /// Stopped on request.
    Cancelled,
    /// Given back unfinished by a draining worker, to run elsewhere at once.
    HandedBack,
}

impl Outcome {
    /// The outcome's name in [`Ledger::finish_many`]'s statement.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed {
                retry_at: Some(_), ..
            } => "retry",
            Outcome::Failed { retry_at: None, .. } => "dead",
            Outcome::Cancelled => "cancelled",
            Outcome::HandedBack => "handed_back",
        }
    }
}

/// One attempt's end, written under the attempt's epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub id: Uuid,
    pub epoch: i64,
    pub worker: String,
    pub outcome: Outcome,
}

impl Ledger {
    /// Ends attempts, each only if its `epoch` is still the job's and the job is running,
    /// and returns, in order, each job's state now (a failure asked to retry ends
    /// `cancelled` when cancellation was requested meanwhile). `None` where the epoch is
    /// stale: nothing changed, and a `stale_write_rejected` event records the attempt. One
    /// statement, however many attempts and whatever their outcomes: a batch lands whole or
    /// not at all, so a retry after an error never finds half of it done.
    pub async fn finish_many(&self, finishes: &[Finish]) -> sqlx::Result<Vec<Option<String>>> {
        // The planner finds the running jobs through `jobs_running`, which it believes small.
        // A burst leaves an entry there for every job that ran since the last vacuum, and a
        // bitmap scan visits them all in every batch; a plain index scan marks them dead as
        // it passes, so the next batch skips them (ADR 0007).
        // Sent with the `BEGIN`, to spare each batch a round trip. Should the `SET` fail, sqlx
        // would hand the connection back to the pool inside the aborted transaction, so it is
        // closed instead.
        let mut conn = self.pool.acquire().await?;
        let mut tx = 'begun: {
            let err = match conn
                .begin_with("BEGIN; SET LOCAL enable_bitmapscan = off")
                .await
            {
                Ok(tx) => break 'begun tx,
                Err(err) => err,
            };
            conn.close_on_drop();
            return Err(err);
        };
        let mut states: HashMap<(Uuid, i64), String> = finish_rows(&mut tx, finishes).await?;
        tx.commit().await?;
        Ok(finishes
            .iter()
            .map(|f| states.remove(&(f.id, f.epoch)))
            .collect())
    }

    /// Records a running job's progress (under its epoch) and appends `job_progress`.
    pub async fn progress(
        &self,
        id: Uuid,
        epoch: i64,
        worker: &str,
        percent: Option<f32>,
        message: &str,
    ) -> sqlx::Result<bool> {
        let written = sqlx::query_scalar!(
            r#"WITH changed AS (
                   UPDATE jobs SET progress_percent = $4, progress_message = $5
                   WHERE id = $1 AND lease_epoch = $2 AND state = 'running'
                   RETURNING id, tenant_id, queue, kind
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_progress', $3::text,
                                  jsonb_build_object('percent', $4::real, 'message', $5::text)
                              )::job_event_input
                       FROM changed))
               )
               SELECT count(*) AS "count!" FROM changed"#,
            id,
            epoch,
            worker,
            percent,
            message
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(written == 1)
    }
}

/// Ends the attempts of `finishes` in one statement on `tx`: the body of
/// [`Ledger::finish_many`]. Returns the state each changed job is left in, by id and epoch.
///
/// Each outcome changes its columns:
/// - `succeeded`: the result; earlier attempts' errors stay in `attempt_errors`, the job has
///   none now.
/// - `retry`: waits in `retrying` until `retry_at`, unless a cancellation was asked meanwhile:
///   that wins and the job ends `cancelled`.
/// - `dead`: ends with its error.
/// - `cancelled` and `handed_back`, an attempt stopped before it ended (by a cancellation
///   signal or a draining worker): the job ends `cancelled` when the ledger holds a
///   cancellation request, and otherwise goes back to `queued` with the attempt undone (not
///   a failed attempt: the next start counts it again). A stale cancellation signal (the
///   request was for an earlier attempt, since retried by hand) thus hands the job back, and
///   a hand-back of a job whose cancellation was asked ends it rather than let it run again
///   elsewhere.
async fn finish_rows(
    tx: &mut sqlx::PgConnection,
    finishes: &[Finish],
) -> sqlx::Result<HashMap<(Uuid, i64), String>> {
    let mut ids = Vec::with_capacity(finishes.len());
    let mut epochs = Vec::with_capacity(finishes.len());
    let mut workers = Vec::with_capacity(finishes.len());
    let mut outcomes = Vec::with_capacity(finishes.len());
    let mut results = Vec::with_capacity(finishes.len());
    let mut errors = Vec::with_capacity(finishes.len());
    let mut retry_ats = Vec::with_capacity(finishes.len());
    for finish in finishes {
        ids.push(finish.id);
        epochs.push(finish.epoch);
        workers.push(finish.worker.as_str());
        outcomes.push(finish.outcome.label());
        let (result, error, retry_at) = match &finish.outcome {
            Outcome::Succeeded(result) => (Some(result), None, None),
            Outcome::Failed { error, retry_at } => (None, Some(error.as_str()), *retry_at),
            Outcome::Cancelled | Outcome::HandedBack => (None, None, None),
        };
        results.push(result);
        errors.push(error);
        retry_ats.push(retry_at);
    }
    let rows = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[],
                                    $5::jsonb[], $6::text[], $7::timestamptz[])
                   AS t(id, epoch, worker, outcome, result, error, retry_at)
           ), changed AS (
               UPDATE jobs SET
                   state = CASE
                       WHEN outcome IN ('succeeded', 'dead') THEN outcome
                       WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                       WHEN outcome = 'retry' THEN 'retrying'
                       ELSE 'queued' END,
                   finished_at = CASE
                       WHEN outcome IN ('succeeded', 'dead') OR cancel_requested_at IS NOT NULL
                       THEN now() END,
                   result = CASE WHEN outcome = 'succeeded' THEN input.result ELSE jobs.result END,
                   error = CASE outcome
                       WHEN 'succeeded' THEN NULL
                       WHEN 'retry' THEN input.error
                       WHEN 'dead' THEN input.error
                       ELSE jobs.error END,
                   progress_percent = CASE
                       WHEN outcome = 'succeeded' THEN 100 ELSE progress_percent END,
                   attempt_errors = CASE WHEN outcome IN ('retry', 'dead')
                       THEN attempt_errors || jsonb_build_array(jsonb_build_object(
                                'attempt', attempt, 'error', input.error, 'at', now()))
                       ELSE attempt_errors END,
                   -- A stopped attempt that goes back to `queued` is undone.
                   attempt = CASE WHEN outcome IN ('cancelled', 'handed_back')
                                       AND cancel_requested_at IS NULL
                                  THEN attempt - 1 ELSE attempt END,
                   started_at = CASE WHEN outcome IN ('cancelled', 'handed_back')
                                          AND cancel_requested_at IS NULL
                                     THEN NULL ELSE started_at END,
                   run_at = CASE
                       WHEN outcome = 'retry' THEN input.retry_at
                       WHEN outcome IN ('cancelled', 'handed_back')
                            AND cancel_requested_at IS NULL
                       THEN now()
                       ELSE run_at END
               FROM input
               WHERE jobs.id = input.id AND jobs.lease_epoch = input.epoch
                 AND jobs.state = 'running'
               RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.attempt,
                         jobs.started_at, jobs.state, input.epoch, input.worker,
                         input.outcome, input.error, input.retry_at
           ), events AS (
               INSERT INTO job_event_batches (n, entries)
               SELECT n, entries FROM job_event_batch(ARRAY(
                   SELECT ROW(tenant_id, job_id, queue, kind, event, actor, details)
                              ::job_event_input
                   FROM (
                       -- The last event names the state the job is left in (the lease ends
                       -- with it), so a job's stream can end at its terminal event.
                       SELECT tenant_id, id AS job_id, queue, kind,
                              CASE WHEN state = 'cancelled'
                                        AND e.name IN ('job_retry_scheduled', 'job_handed_back')
                                   THEN 'job_cancelled'
                                   WHEN state = 'queued' AND e.name = 'job_cancelled'
                                   THEN 'job_handed_back'
                                   ELSE e.name END AS event,
                              worker AS actor,
                              jsonb_build_object('attempt', attempt, 'epoch', epoch)
                              || CASE outcome
                                 WHEN 'succeeded' THEN jsonb_build_object('runtime_ms',
                                     round(extract(epoch FROM now() - started_at) * 1000))
                                 WHEN 'retry' THEN
                                     jsonb_build_object('error', error, 'retry_at', retry_at)
                                 WHEN 'dead' THEN jsonb_build_object('error', error)
                                 WHEN 'cancelled' THEN jsonb_build_object('while', 'running',
                                     'reason', CASE WHEN state = 'queued'
                                         THEN 'a cancellation signal the ledger does not hold'
                                         END)
                                 ELSE jsonb_build_object('reason', 'worker draining') END
                                  AS details,
                              e.n
                       FROM changed
                       JOIN (VALUES ('succeeded', 0, 'job_succeeded'),
                                    ('retry', 0, 'job_failed'),
                                    ('retry', 1, 'job_retry_scheduled'),
                                    ('dead', 0, 'job_failed'),
                                    ('dead', 1, 'job_dead'),
                                    ('cancelled', 0, 'job_cancelled'),
                                    ('handed_back', 0, 'job_handed_back'))
                            AS e(outcome, n, name) USING (outcome)
                       UNION ALL
                       SELECT j.tenant_id, j.id, j.queue, j.kind, 'stale_write_rejected',
                              input.worker,
                              jsonb_build_object('epoch', input.epoch,
                                                 'current_epoch', j.lease_epoch,
                                                 'state', j.state),
                              -- Before the job's own events, whose last must stay its last.
                              -1
                       FROM input JOIN jobs j ON j.id = input.id
                       -- `NOT IN` over a hashed subplan: written as `NOT EXISTS`, the planner,
                       -- which expects one changed row, compared every input with every
                       -- changed row.
                       WHERE (input.id, input.epoch) NOT IN (SELECT id, epoch FROM changed)
                   ) AS e
                   ORDER BY job_id, n))
           )
           SELECT id AS "id!", epoch AS "epoch!", state AS "state!" FROM changed"#,
        &ids,
        &epochs,
        &workers as &[&str],
        &outcomes as &[&str],
        &results as &[Option<&Value>],
        &errors as &[Option<&str>],
        &retry_ats as &[Option<DateTime<Utc>>]
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.id, row.epoch), row.state))
        .collect())
}
