//! Outcomes and progress of attempts, each written under the attempt's epoch: a stale write
//! changes nothing and leaves a `stale_write_rejected` event.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Connection;
use taskfleet_jobs::EventName;
use uuid::Uuid;

use super::Ledger;
use crate::events::append_events;

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

/// Outcomes that one statement records together: the same columns change the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OutcomeKind {
    Succeeded,
    Retry,
    Dead,
    Cancelled,
    HandedBack,
}

impl Outcome {
    fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Succeeded(_) => OutcomeKind::Succeeded,
            Outcome::Failed {
                retry_at: Some(_), ..
            } => OutcomeKind::Retry,
            Outcome::Failed { retry_at: None, .. } => OutcomeKind::Dead,
            Outcome::Cancelled => OutcomeKind::Cancelled,
            Outcome::HandedBack => OutcomeKind::HandedBack,
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
    /// statement per kind of outcome, however many attempts, all in one transaction: a batch
    /// lands whole or not at all, so a retry after an error never finds half of it done.
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
        let mut states: HashMap<(Uuid, i64), String> = HashMap::new();
        let mut kinds: Vec<OutcomeKind> = finishes.iter().map(|f| f.outcome.kind()).collect();
        kinds.sort_by_key(|kind| *kind as u8);
        kinds.dedup();
        for kind in kinds {
            let group: Vec<&Finish> = finishes
                .iter()
                .filter(|f| f.outcome.kind() == kind)
                .collect();
            states.extend(finish_kind(&mut tx, kind, &group).await?);
        }
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
        let sql = format!(
            "WITH changed AS (
                 UPDATE jobs SET progress_percent = $4, progress_message = $5
                 WHERE id = $1 AND lease_epoch = $2 AND state = 'running'
                 RETURNING id, tenant_id, queue, kind
             ), events AS ({events})
             SELECT count(*) FROM changed",
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{progress}' AS event, $3 AS actor,
                        jsonb_build_object('percent', $4, 'message', $5) AS details
                 FROM changed",
                progress = EventName::JobProgress
            )),
        );
        let written: i64 = sqlx::query_scalar(&sql)
            .bind(id)
            .bind(epoch)
            .bind(worker)
            .bind(percent)
            .bind(message)
            .fetch_one(&self.pool)
            .await?;
        Ok(written == 1)
    }
}

/// An attempt stopped before it ended, by a draining worker or by a cancellation signal: the
/// job ends `cancelled` when the ledger holds a cancellation request, and otherwise goes back
/// to `queued` with the attempt undone (not a failed attempt: the next start counts it
/// again).
const STOPPED: &str = "\
    state = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
    attempt = CASE WHEN cancel_requested_at IS NULL THEN attempt - 1 ELSE attempt END, \
    started_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE started_at END, \
    finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END, \
    run_at = CASE WHEN cancel_requested_at IS NULL THEN now() ELSE run_at END";

/// One kind of outcome for [`Ledger::finish_many`], inside its transaction.
async fn finish_kind(
    tx: &mut sqlx::PgConnection,
    kind: OutcomeKind,
    finishes: &[&Finish],
) -> sqlx::Result<Vec<((Uuid, i64), String)>> {
    let record_error = "attempt_errors = attempt_errors || jsonb_build_array(\
         jsonb_build_object('attempt', attempt, 'error', input.error, 'at', now()))";
    let (set, events, details) = match kind {
        OutcomeKind::Succeeded => (
            // Earlier attempts' errors stay in `attempt_errors`; the job has none now.
            "state = 'succeeded', finished_at = now(), result = input.result, \
             error = NULL, progress_percent = 100"
                .to_owned(),
            &[EventName::JobSucceeded][..],
            "'runtime_ms', round(extract(epoch FROM now() - started_at) * 1000)",
        ),
        OutcomeKind::Retry => (
            // A cancellation asked meanwhile wins over the retry.
            format!(
                "state = CASE WHEN cancel_requested_at IS NULL THEN 'retrying' ELSE 'cancelled' END, \
                 finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END, \
                 error = input.error, run_at = input.retry_at, {record_error}"
            ),
            &[EventName::JobFailed, EventName::JobRetryScheduled][..],
            "'error', error, 'retry_at', retry_at",
        ),
        OutcomeKind::Dead => (
            format!("state = 'dead', error = input.error, finished_at = now(), {record_error}"),
            &[EventName::JobFailed, EventName::JobDead][..],
            "'error', error",
        ),
        OutcomeKind::Cancelled => (
            // Only a cancellation the ledger holds ends the job: a stale signal (the request
            // was for an earlier attempt, since retried by hand) hands the job back instead.
            STOPPED.to_owned(),
            &[EventName::JobCancelled][..],
            "'while', 'running', 'reason', CASE WHEN state = 'queued' \
             THEN 'a cancellation signal the ledger does not hold' END",
        ),
        OutcomeKind::HandedBack => (
            // A cancellation asked meanwhile wins: the job ends here rather than run again
            // elsewhere.
            STOPPED.to_owned(),
            &[EventName::JobHandedBack][..],
            "'reason', 'worker draining'",
        ),
    };
    // The last event names the state the job is left in (the lease ends with it), so a
    // job's stream can end at its terminal event.
    let names = events
        .iter()
        .enumerate()
        .map(|(n, name)| format!("({n}, '{name}')"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut ids = Vec::with_capacity(finishes.len());
    let mut epochs = Vec::with_capacity(finishes.len());
    let mut workers = Vec::with_capacity(finishes.len());
    let mut results = Vec::with_capacity(finishes.len());
    let mut errors = Vec::with_capacity(finishes.len());
    let mut retry_ats = Vec::with_capacity(finishes.len());
    for finish in finishes {
        ids.push(finish.id);
        epochs.push(finish.epoch);
        workers.push(finish.worker.as_str());
        let (result, error, retry_at) = match &finish.outcome {
            Outcome::Succeeded(result) => (Some(result), None, None),
            Outcome::Failed { error, retry_at } => (None, Some(error.as_str()), *retry_at),
            Outcome::Cancelled | Outcome::HandedBack => (None, None, None),
        };
        results.push(result);
        errors.push(error);
        retry_ats.push(retry_at);
    }
    let sql = format!(
        "WITH input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::jsonb[],
                                  $5::text[], $6::timestamptz[])
                 AS t(id, epoch, worker, result, error, retry_at)
         ), changed AS (
             UPDATE jobs SET {set}
             FROM input
             WHERE jobs.id = input.id AND jobs.lease_epoch = input.epoch
               AND jobs.state = 'running'
             RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.attempt,
                       jobs.started_at, jobs.state, input.epoch, input.worker,
                       input.error, input.retry_at
         ), events AS ({events})
         SELECT id, epoch, state FROM changed",
        events = append_events(&format!(
            "SELECT tenant_id, job_id, queue, kind, event, actor, details
             FROM (
                 SELECT tenant_id, id AS job_id, queue, kind,
                        CASE WHEN state = 'cancelled'
                                  AND e.name IN ('{retry_scheduled}', '{handed_back}')
                             THEN '{cancelled}'
                             WHEN state = 'queued' AND e.name = '{cancelled}'
                             THEN '{handed_back}'
                             ELSE e.name END AS event,
                        worker AS actor,
                        jsonb_build_object('attempt', attempt, 'epoch', epoch, {details})
                            AS details,
                        e.n
                 FROM changed CROSS JOIN (VALUES {names}) AS e(n, name)
                 UNION ALL
                 SELECT j.tenant_id, j.id, j.queue, j.kind, '{stale}', input.worker,
                        jsonb_build_object('epoch', input.epoch, 'current_epoch', j.lease_epoch,
                                           'state', j.state),
                        -- Before the job's own events, whose last must stay its last.
                        -1
                 FROM input JOIN jobs j ON j.id = input.id
                 -- `NOT IN` over a hashed subplan: written as `NOT EXISTS`, the planner,
                 -- which expects one changed row, compared every input with every changed
                 -- row.
                 WHERE (input.id, input.epoch) NOT IN (SELECT id, epoch FROM changed)
             ) AS e
             ORDER BY job_id, n",
            retry_scheduled = EventName::JobRetryScheduled,
            handed_back = EventName::JobHandedBack,
            cancelled = EventName::JobCancelled,
            stale = EventName::StaleWriteRejected,
        )),
    );
    let rows: Vec<(Uuid, i64, String)> = sqlx::query_as(&sql)
        .bind(&ids)
        .bind(&epochs)
        .bind(&workers)
        .bind(&results)
        .bind(&errors)
        .bind(&retry_ats)
        .fetch_all(tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, epoch, state)| ((id, epoch), state))
        .collect())
}
