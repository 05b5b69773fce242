//! What a tenant asks of one job through the API: cancel it, or run it again.

use uuid::Uuid;

use super::{JobRecord, Ledger};
use crate::tenants::Scope;

/// The answer to a request to change a job's state.
#[derive(Debug, Clone)]
pub enum Change {
    Done(JobRecord),
    /// The job exists but its state does not allow the change.
    NotAllowed(JobRecord),
    NotFound,
}

impl Ledger {
    /// Cancels a tenant's job: a job not yet running becomes `cancelled` at once; a running
    /// one is marked `cancel_requested_at` and its worker stops it.
    pub async fn cancel(&self, scope: Scope, id: Uuid) -> sqlx::Result<Change> {
        let changed = sqlx::query_as!(
            JobRecord,
            r#"WITH changed AS (
                   UPDATE jobs SET
                       state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
                       finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
                       cancel_requested_at = CASE WHEN state = 'running' THEN now() END,
                       dispatched_at = NULL
                   WHERE ($1::uuid IS NULL OR tenant_id = $1) AND id = $2
                     AND state IN ('scheduled', 'queued', 'retrying', 'running')
                   RETURNING id, tenant_id,
                             (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id)
                                 AS tenant,
                             queue, kind, payload, state, priority, attempt, max_attempts,
                             run_at, dispatched_at, created_at, started_at, finished_at,
                             worker, result, error, attempt_errors, idempotency_key,
                             cancel_requested_at, progress_percent, progress_message,
                             request_id
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind,
                                  CASE WHEN state = 'running' THEN 'job_cancel_requested'
                                       ELSE 'job_cancelled' END,
                                  'api', '{}')::job_event_input
                       FROM changed))
               )
               SELECT id AS "id!", tenant_id AS "tenant_id!", tenant AS "tenant!",
                      queue AS "queue!", kind AS "kind!", payload AS "payload!",
                      state AS "state!", priority AS "priority!", attempt AS "attempt!",
                      max_attempts AS "max_attempts!", run_at AS "run_at!", dispatched_at,
                      created_at AS "created_at!", started_at, finished_at, worker, result,
                      error, attempt_errors AS "attempt_errors!", idempotency_key,
                      cancel_requested_at, progress_percent, progress_message, request_id
               FROM changed"#,
            scope.tenant_id(),
            id
        )
        .fetch_optional(&self.pool)
        .await?;
        self.change_or_current(scope, id, changed).await
    }

    /// Runs a `dead` or `cancelled` job again with a fresh budget of `budget` more attempts
    /// (the job's own `max_attempts`) and its stalls counted afresh. Attempt numbers go on
    /// counting, and the errors of earlier attempts stay.
    pub async fn retry(&self, scope: Scope, id: Uuid, budget: i32) -> sqlx::Result<Change> {
        let changed = sqlx::query_as!(
            JobRecord,
            r#"WITH changed AS (
                   UPDATE jobs SET state = 'queued', max_attempts = attempt + $3,
                          run_at = now(),
                          dispatched_at = NULL, finished_at = NULL, cancel_requested_at = NULL,
                          stalls = 0
                   WHERE ($1::uuid IS NULL OR tenant_id = $1) AND id = $2
                     AND state IN ('dead', 'cancelled')
                   RETURNING id, tenant_id,
                             (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id)
                                 AS tenant,
                             queue, kind, payload, state, priority, attempt, max_attempts,
                             run_at, dispatched_at, created_at, started_at, finished_at,
                             worker, result, error, attempt_errors, idempotency_key,
                             cancel_requested_at, progress_percent, progress_message,
                             request_id
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(tenant_id, id, queue, kind, 'job_retried', 'api', '{}')
                                  ::job_event_input
                       FROM changed))
               )
               SELECT id AS "id!", tenant_id AS "tenant_id!", tenant AS "tenant!",
                      queue AS "queue!", kind AS "kind!", payload AS "payload!",
                      state AS "state!", priority AS "priority!", attempt AS "attempt!",
                      max_attempts AS "max_attempts!", run_at AS "run_at!", dispatched_at,
                      created_at AS "created_at!", started_at, finished_at, worker, result,
                      error, attempt_errors AS "attempt_errors!", idempotency_key,
                      cancel_requested_at, progress_percent, progress_message, request_id
               FROM changed"#,
            scope.tenant_id(),
            id,
            budget
        )
        .fetch_optional(&self.pool)
        .await?;
        self.change_or_current(scope, id, changed).await
    }

    async fn change_or_current(
        &self,
        scope: Scope,
        id: Uuid,
        changed: Option<JobRecord>,
    ) -> sqlx::Result<Change> {
        Ok(match changed {
            Some(record) => Change::Done(record),
            None => match self.get(scope, id).await? {
                Some(record) => Change::NotAllowed(record),
                None => Change::NotFound,
            },
        })
    }
}
