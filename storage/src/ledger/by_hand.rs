//! What a tenant asks of one job through the API: cancel it, or run it again.

use uuid::Uuid;

use super::{JOB_COLUMNS, JobRecord, Ledger};
use crate::{events::append_events, tenants::Scope};
use taskfleet_jobs::EventName;

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
        let condition = scope.condition("$1");
        let sql = format!(
            "WITH changed AS (
                 UPDATE jobs SET
                     state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
                     finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
                     cancel_requested_at = CASE WHEN state = 'running' THEN now() END,
                     dispatched_at = NULL
                 WHERE {condition} AND id = $2
                   AND state IN ('scheduled', 'queued', 'retrying', 'running')
                 RETURNING {JOB_COLUMNS}
             ), events AS ({events})
             SELECT * FROM changed",
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind,
                        CASE WHEN state = 'running' THEN '{requested}' ELSE '{cancelled}' END
                            AS event,
                        'api' AS actor, '{{}}'::jsonb AS details
                 FROM changed",
                requested = EventName::JobCancelRequested,
                cancelled = EventName::JobCancelled
            )),
        );
        let changed = sqlx::query_as(&sql)
            .bind(scope.tenant_id())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        self.change_or_current(scope, id, changed).await
    }

    /// Runs a `dead` or `cancelled` job again with a fresh budget of `budget` more attempts
    /// (the job's own `max_attempts`) and its stalls counted afresh. Attempt numbers go on
    /// counting, and the errors of earlier attempts stay.
    pub async fn retry(&self, scope: Scope, id: Uuid, budget: i32) -> sqlx::Result<Change> {
        let condition = scope.condition("$1");
        let sql = format!(
            "WITH changed AS (
                 UPDATE jobs SET state = 'queued', max_attempts = attempt + $3,
                        run_at = now(),
                        dispatched_at = NULL, finished_at = NULL, cancel_requested_at = NULL,
                        stalls = 0
                 WHERE {condition} AND id = $2
                   AND state IN ('dead', 'cancelled')
                 RETURNING {JOB_COLUMNS}
             ), events AS ({events})
             SELECT * FROM changed",
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{retried}' AS event,
                        'api' AS actor, '{{}}'::jsonb AS details
                 FROM changed",
                retried = EventName::JobRetried
            )),
        );
        let changed = sqlx::query_as(&sql)
            .bind(scope.tenant_id())
            .bind(id)
            .bind(budget)
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
