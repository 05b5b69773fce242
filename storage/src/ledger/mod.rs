//! The job ledger: every accepted job is a row here before the API answers, and every state
//! change is one conditional statement that also appends its event, so the ledger and the
//! event log cannot disagree. Writes from a worker name the job's `lease_epoch`; a write with
//! a stale epoch matches no row and changes nothing.
//!
//! One file per role, each readable alone: [`submit`] (jobs in), [`dispatch`] (due work into
//! the queues' Redis windows), [`start`], [`finish`] (outcomes and progress), [`rescue`]
//! (attempts whose workers went silent), [`by_hand`] (cancel and retry asked through the API)
//! and [`housekeeping`].

mod by_hand;
mod dispatch;
mod finish;
mod housekeeping;
mod rescue;
mod start;
mod submit;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use taskfleet_jobs::{JobState, Queue};
use uuid::Uuid;

pub use by_hand::Change;
pub use finish::{Finish, Outcome};
pub use rescue::{CancelSweep, Reclaimed, Rescue, RunningJob};
pub use start::Started;
pub use submit::{InsertError, Inserted, NewJob};

use crate::{Db, tenants::Scope};

/// Statements about at most this many jobs run on their generic plans ([`Ledger::pool_for`]).
const FEW_ITEMS: usize = 4;

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The tenant's name.
    pub tenant: String,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub state: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    /// Set while the job waits in its queue's Redis list.
    pub dispatched_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub attempt_errors: Value,
    pub idempotency_key: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub progress_percent: Option<f32>,
    pub progress_message: Option<String>,
    /// The `X-Request-ID` of the request that created the job.
    pub request_id: Option<String>,
}

/// Filters of `GET /v1/jobs`. `before` is the pagination cursor: the last id of the previous
/// page (ids are UUIDv7, so id order is creation order).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub queue: Option<Queue>,
    pub kind: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
    /// Connections to the same database whose statements always run on their generic plans.
    generic_plans: PgPool,
}

impl Ledger {
    pub fn new(db: &Db) -> Ledger {
        Ledger {
            pool: db.pool.clone(),
            generic_plans: db.generic_plans.clone(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool for a statement about `items` jobs. Postgres plans the hot statements below
    /// again at every call: a custom plan, which sees how short the id arrays are, is costed
    /// below the generic one. With one or two jobs to a statement, planning can cost more
    /// than running it (ADR 0007), so a statement about a few jobs goes to connections that
    /// run it on its generic plan, made once per connection, when one of them is free or may
    /// still be opened; otherwise to the main pool (planned each time) rather than queueing
    /// behind them. (Setting `plan_cache_mode` per transaction would cost every lone job
    /// three round trips more: `BEGIN`, the `SET` and `COMMIT`.) Batches go to the main
    /// pool: Postgres chooses their plans. Only for statements whose generic plan is the
    /// custom one (look-ups by id, inserts from arrays); a query with optional filters
    /// (`$1 IS NULL OR …`) needs its custom plan.
    fn pool_for(&self, items: usize) -> &PgPool {
        let generic = &self.generic_plans;
        if items <= FEW_ITEMS
            && (generic.num_idle() > 0 || generic.size() < generic.options().get_max_connections())
        {
            generic
        } else {
            &self.pool
        }
    }

    pub async fn get(&self, scope: Scope, id: Uuid) -> sqlx::Result<Option<JobRecord>> {
        sqlx::query_as!(
            JobRecord,
            r#"SELECT id, tenant_id,
                      (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id) AS "tenant!",
                      queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                      dispatched_at, created_at, started_at, finished_at, worker, result, error,
                      attempt_errors, idempotency_key, cancel_requested_at, progress_percent,
                      progress_message, request_id
               FROM jobs
               WHERE ($1::uuid IS NULL OR tenant_id = $1) AND id = $2"#,
            scope.tenant_id(),
            id
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// A page of the jobs in `scope`, newest first.
    pub async fn list(&self, scope: Scope, filter: &JobFilter) -> sqlx::Result<Vec<JobRecord>> {
        sqlx::query_as!(
            JobRecord,
            r#"SELECT id, tenant_id,
                      (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id) AS "tenant!",
                      queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                      dispatched_at, created_at, started_at, finished_at, worker, result, error,
                      attempt_errors, idempotency_key, cancel_requested_at, progress_percent,
                      progress_message, request_id
               FROM jobs
               WHERE ($1::uuid IS NULL OR tenant_id = $1)
                 AND ($2::text IS NULL OR state = $2)
                 AND ($3::text IS NULL OR queue = $3)
                 AND ($4::text IS NULL OR kind = $4)
                 AND ($5::timestamptz IS NULL OR created_at >= $5)
                 AND ($6::timestamptz IS NULL OR created_at < $6)
                 AND ($7::uuid IS NULL OR id < $7)
               ORDER BY id DESC
               LIMIT $8"#,
            scope.tenant_id(),
            filter.state.map(JobState::as_str),
            filter.queue.map(Queue::as_str),
            filter.kind.as_deref(),
            filter.created_after,
            filter.created_before,
            filter.before,
            filter.limit
        )
        .fetch_all(&self.pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{FEW_ITEMS, Ledger};

    async fn plan_cache_mode(ledger: &Ledger, items: usize) -> String {
        sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(ledger.pool_for(items))
            .await
            .expect("Postgres answers")
    }

    #[tokio::test]
    async fn statements_about_a_few_jobs_use_generic_plans_and_batches_their_own() {
        let url = std::env::var("TASKFLEET_TEST_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let ledger = Ledger::new(&crate::Db::connect_lazy(&url, 2).unwrap());
        let outside: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(ledger.pool())
            .await
            .expect("Postgres answers");
        assert_ne!(outside, "force_generic_plan");
        assert_eq!(plan_cache_mode(&ledger, 1).await, "force_generic_plan");
        assert_eq!(
            plan_cache_mode(&ledger, FEW_ITEMS).await,
            "force_generic_plan"
        );
        assert_eq!(plan_cache_mode(&ledger, FEW_ITEMS + 1).await, outside);
        // The generic-plan connections keep the main pool's own settings.
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(ledger.pool_for(1))
            .await
            .unwrap();
        assert_eq!(jit, "off");
    }
}
