//! The job ledger: every accepted job is a row here before the API answers, and every state
//! change is one conditional statement that also appends its event, so the ledger and the
//! event log cannot disagree. Writes from a worker name the job's `lease_epoch`; a write with
//! a stale epoch matches no row and changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use taskfleet_jobs::{EventName, JobSpec, JobState, Queue};
use uuid::Uuid;

/// States the dispatcher may move into a queue's Redis window.
const DISPATCHABLE: &str = "('scheduled', 'queued', 'retrying')";

/// A job as stored.
#[derive(Debug, Clone, FromRow)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub state: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub attempt_errors: Value,
}

const JOB_COLUMNS: &str = "id, tenant_id, queue, kind, payload, state, priority, attempt, \
     max_attempts, run_at, created_at, started_at, finished_at, worker, result, error, \
     attempt_errors";

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub spec: JobSpec,
}

impl NewJob {
    pub fn new(spec: JobSpec) -> NewJob {
        NewJob {
            id: Uuid::now_v7(),
            spec,
        }
    }
}

/// A job a worker has just started: the ledger raised its attempt and epoch.
#[derive(Debug, Clone, FromRow)]
pub struct StartedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub payload: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_epoch: i64,
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

/// A job the dispatcher moved into a queue's Redis window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
}

impl Ledger {
    pub fn new(pool: PgPool) -> Ledger {
        Ledger { pool }
    }

    /// Inserts jobs and their `job_enqueued` events in one statement. A job whose `run_at` is
    /// in the future starts `scheduled`, otherwise `queued`.
    pub async fn insert(&self, tenant_id: Uuid, jobs: &[NewJob]) -> sqlx::Result<Vec<JobRecord>> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut queues = Vec::with_capacity(jobs.len());
        let mut kinds = Vec::with_capacity(jobs.len());
        let mut payloads = Vec::with_capacity(jobs.len());
        let mut priorities = Vec::with_capacity(jobs.len());
        let mut max_attempts = Vec::with_capacity(jobs.len());
        let mut run_ats = Vec::with_capacity(jobs.len());
        for job in jobs {
            ids.push(job.id);
            queues.push(job.spec.queue().as_str());
            kinds.push(job.spec.kind());
            payloads.push(serde_json::to_value(&job.spec).expect("a JobSpec always serialises"));
            priorities.push(job.spec.options().priority.unwrap_or(0));
            max_attempts.push(job.spec.max_attempts() as i32);
            run_ats.push(job.spec.options().run_at);
        }
        let sql = format!(
            "WITH input AS (
                 SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                                      $6::int2[], $7::int4[], $8::timestamptz[])
                     AS t(id, queue, kind, payload, priority, max_attempts, run_at)
             ), inserted AS (
                 INSERT INTO jobs (id, tenant_id, queue, kind, payload, state, priority,
                                   max_attempts, run_at)
                 SELECT id, $1, queue, kind, payload,
                        CASE WHEN run_at > now() THEN 'scheduled' ELSE 'queued' END,
                        priority, max_attempts, GREATEST(COALESCE(run_at, now()), now())
                 FROM input
                 RETURNING {JOB_COLUMNS}
             ), events AS (
                 INSERT INTO job_events (tenant_id, job_id, event, actor, details)
                 SELECT tenant_id, id, '{enqueued}', 'api',
                        jsonb_build_object('queue', queue, 'kind', kind, 'state', state)
                 FROM inserted
             )
             SELECT * FROM inserted",
            enqueued = EventName::JobEnqueued
        );
        let mut rows: Vec<JobRecord> = sqlx::query_as(&sql)
            .bind(tenant_id)
            .bind(&ids)
            .bind(&queues)
            .bind(&kinds)
            .bind(&payloads)
            .bind(&priorities)
            .bind(&max_attempts)
            .bind(&run_ats)
            .fetch_all(&self.pool)
            .await?;
        // Answer in the order the jobs were submitted.
        rows.sort_by_key(|row| ids.iter().position(|id| *id == row.id));
        Ok(rows)
    }

    pub async fn get(&self, tenant_id: Uuid, id: Uuid) -> sqlx::Result<Option<JobRecord>> {
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// A page of a tenant's jobs, newest first.
    pub async fn list(&self, tenant_id: Uuid, filter: &JobFilter) -> sqlx::Result<Vec<JobRecord>> {
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE tenant_id = $1
               AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR queue = $3)
               AND ($4::text IS NULL OR kind = $4)
               AND ($5::timestamptz IS NULL OR created_at >= $5)
               AND ($6::timestamptz IS NULL OR created_at < $6)
               AND ($7::uuid IS NULL OR id < $7)
             ORDER BY id DESC
             LIMIT $8"
        ))
        .bind(tenant_id)
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.queue.map(Queue::as_str))
        .bind(filter.kind.as_deref())
        .bind(filter.created_after)
        .bind(filter.created_before)
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Picks up to `limit` due jobs of `queue` and marks them dispatched, taking tenants in
    /// turn (each tenant's best job, then each tenant's second best, …) so one tenant's
    /// backlog cannot starve another. Returned in that fair order.
    pub async fn dispatch_due(
        &self,
        queue: Queue,
        limit: i64,
        actor: &str,
    ) -> sqlx::Result<Vec<DispatchedJob>> {
        let sql = format!(
            "WITH picked AS (
                 SELECT j.id, j.turn FROM tenants t
                 CROSS JOIN LATERAL (
                     SELECT id, row_number() OVER (ORDER BY priority DESC, run_at, id) AS turn
                     FROM jobs
                     WHERE tenant_id = t.id AND queue = $1 AND dispatched_at IS NULL
                       AND state IN {DISPATCHABLE} AND run_at <= now()
                     ORDER BY priority DESC, run_at, id
                     LIMIT $2
                 ) j
                 ORDER BY j.turn
                 LIMIT $2
             ), updated AS (
                 UPDATE jobs SET dispatched_at = now(), state = 'queued'
                 FROM picked
                 WHERE jobs.id = picked.id AND jobs.dispatched_at IS NULL
                   AND jobs.state IN {DISPATCHABLE}
                 RETURNING jobs.id, jobs.tenant_id, picked.turn
             ), events AS (
                 INSERT INTO job_events (tenant_id, job_id, event, actor)
                 SELECT tenant_id, id, '{dispatched}', $3 FROM updated
             )
             SELECT id, tenant_id FROM updated ORDER BY turn, id",
            dispatched = EventName::JobDispatched
        );
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(&sql)
            .bind(queue.as_str())
            .bind(limit)
            .bind(actor)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant_id)| DispatchedJob { id, tenant_id })
            .collect())
    }

    /// Jobs dispatched longer ago than `after` and still not started: their Redis copy was
    /// lost (Redis restarted or flushed) or is stuck. Marks them dispatched again, now, and
    /// returns them so the dispatcher pushes them once more; a duplicate delivery is harmless
    /// because only one start can win [`Ledger::start`].
    pub async fn redispatch_stale(
        &self,
        queue: Queue,
        after: Duration,
        actor: &str,
    ) -> sqlx::Result<Vec<DispatchedJob>> {
        let sql = format!(
            "WITH updated AS (
                 UPDATE jobs SET dispatched_at = now()
                 WHERE queue = $1 AND state = 'queued' AND dispatched_at IS NOT NULL
                   AND dispatched_at < now() - make_interval(secs => $2)
                 RETURNING id, tenant_id
             ), events AS (
                 INSERT INTO job_events (tenant_id, job_id, event, actor, details)
                 SELECT tenant_id, id, '{dispatched}', $3, '{{\"redispatch\": true}}'
                 FROM updated
             )
             SELECT id, tenant_id FROM updated ORDER BY id",
            dispatched = EventName::JobDispatched
        );
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(&sql)
            .bind(queue.as_str())
            .bind(after.as_secs_f64())
            .bind(actor)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant_id)| DispatchedJob { id, tenant_id })
            .collect())
    }

    /// Takes jobs back out of the window after pushing them to Redis failed, so the next
    /// round dispatches them again instead of waiting for the stale-dispatch sweep.
    pub async fn undispatch(&self, ids: &[Uuid]) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET dispatched_at = NULL WHERE id = ANY($1) AND state = 'queued'",
        )
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// How many jobs of each queue sit in its Redis window (dispatched, not yet started).
    pub async fn window_sizes(&self) -> sqlx::Result<Vec<(Queue, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT queue, count(*) FROM jobs
             WHERE state = 'queued' AND dispatched_at IS NOT NULL GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(queue, n)| Some((queue.parse().ok()?, n)))
            .collect())
    }

    /// The earliest `run_at` of any job not yet dispatched, so the dispatcher can sleep
    /// exactly until it is due.
    pub async fn next_run_at(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(&format!(
            "SELECT min(run_at) FROM jobs WHERE dispatched_at IS NULL AND state IN {DISPATCHABLE}"
        ))
        .fetch_one(&self.pool)
        .await
    }

    /// Starts a job: only a `queued` job can start, so of several deliveries of the same
    /// job exactly one wins. Raises the attempt and the fencing epoch.
    pub async fn start(&self, id: Uuid, worker: &str) -> sqlx::Result<Option<StartedJob>> {
        let sql = format!(
            "WITH started AS (
                 UPDATE jobs SET state = 'running', attempt = attempt + 1,
                                 lease_epoch = lease_epoch + 1, dispatched_at = NULL,
                                 started_at = now(), worker = $2
                 WHERE id = $1 AND state = 'queued'
                 RETURNING id, tenant_id, payload, attempt, max_attempts, lease_epoch
             ), events AS (
                 INSERT INTO job_events (tenant_id, job_id, event, actor, details)
                 SELECT tenant_id, id, '{started}', $2, jsonb_build_object('attempt', attempt)
                 FROM started
             )
             SELECT * FROM started",
            started = EventName::JobStarted
        );
        sqlx::query_as(&sql)
            .bind(id)
            .bind(worker)
            .fetch_optional(&self.pool)
            .await
    }

    /// Records success. Returns false when the epoch is stale (another start superseded this
    /// one) and nothing was written.
    pub async fn succeed(
        &self,
        id: Uuid,
        epoch: i64,
        worker: &str,
        result: &Value,
    ) -> sqlx::Result<bool> {
        let sql = format!(
            "WITH done AS (
                 UPDATE jobs SET state = 'succeeded', finished_at = now(), result = $3
                 WHERE id = $1 AND lease_epoch = $2 AND state = 'running'
                 RETURNING id, tenant_id, attempt, finished_at - started_at AS runtime
             ), events AS (
                 INSERT INTO job_events (tenant_id, job_id, event, actor, details)
                 SELECT tenant_id, id, '{succeeded}', $4,
                        jsonb_build_object('attempt', attempt,
                                           'runtime_ms', extract(epoch FROM runtime) * 1000)
                 FROM done
             )
             SELECT count(*) FROM done",
            succeeded = EventName::JobSucceeded
        );
        let written: i64 = sqlx::query_scalar(&sql)
            .bind(id)
            .bind(epoch)
            .bind(result)
            .bind(worker)
            .fetch_one(&self.pool)
            .await?;
        Ok(written == 1)
    }

    /// Records a failed attempt: with `retry_at` the job waits in `retrying` until then,
    /// without it the job is dead. Returns false when the epoch is stale.
    pub async fn fail(
        &self,
        id: Uuid,
        epoch: i64,
        worker: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> sqlx::Result<bool> {
        let (state, event) = match retry_at {
            Some(_) => ("retrying", EventName::JobRetryScheduled),
            None => ("dead", EventName::JobDead),
        };
        let sql = format!(
            "WITH failed AS (
                 UPDATE jobs SET state = '{state}', error = $3,
                        attempt_errors = attempt_errors || jsonb_build_array(jsonb_build_object(
                            'attempt', attempt, 'error', $3::text, 'at', now())),
                        run_at = COALESCE($4, run_at),
                        finished_at = CASE WHEN $4::timestamptz IS NULL THEN now() END
                 WHERE id = $1 AND lease_epoch = $2 AND state = 'running'
                 RETURNING id, tenant_id, attempt
             ), events AS (
                 INSERT INTO job_events (tenant_id, job_id, event, actor, details)
                 SELECT tenant_id, id, '{event}', $5,
                        jsonb_build_object('attempt', attempt, 'error', $3::text,
                                           'retry_at', $4::timestamptz)
                 FROM failed
             )
             SELECT count(*) FROM failed"
        );
        let written: i64 = sqlx::query_scalar(&sql)
            .bind(id)
            .bind(epoch)
            .bind(error)
            .bind(retry_at)
            .bind(worker)
            .fetch_one(&self.pool)
            .await?;
        Ok(written == 1)
    }

    /// Events of one job, oldest first: `(event, details)`.
    pub async fn events(
        &self,
        tenant_id: Uuid,
        job_id: Uuid,
    ) -> sqlx::Result<Vec<(String, Value)>> {
        sqlx::query_as(
            "SELECT event, details FROM job_events WHERE tenant_id = $1 AND job_id = $2 ORDER BY id",
        )
        .bind(tenant_id)
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
    }
}
