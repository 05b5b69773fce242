//! The job ledger: every accepted job is a row here before the API answers, and every state
//! change is one conditional statement that also appends its event, so the ledger and the
//! event log cannot disagree. Writes from a worker name the job's `lease_epoch`; a write with
//! a stale epoch matches no row and changes nothing.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, FromRow, PgPool, postgres::PgPoolOptions};
use taskfleet_jobs::{EventName, JobSpec, JobState, Queue};
use uuid::Uuid;

use crate::{
    events::append_events,
    tenants::{SYSTEM_TENANT, Scope},
};

/// Statements about at most this many jobs run on their generic plans ([`Ledger::pool_for`]).
const FEW_ITEMS: usize = 4;
/// Connections kept for statements about a few jobs: they come one or two at a time, while
/// a busy fleet groups its jobs into batches on the main pool.
const FEW_ITEMS_CONNECTIONS: u32 = 4;

/// States the dispatcher may move into a queue's Redis window.
const DISPATCHABLE: &str = "('scheduled', 'queued', 'retrying')";

/// True for a job (`jobs` row) its queue's pause holds back. The fleet's own readiness
/// probes are exempt, so `/readyz` still tells whether workers run while a queue is paused.
fn held_by_pause() -> String {
    // The first test runs once per statement: while no queue is paused (nearly always),
    // `parked` in `start_many` is skipped whole and no row probes `queue_pauses`.
    format!(
        "((SELECT EXISTS (SELECT 1 FROM queue_pauses))
          AND EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = jobs.queue)
          AND jobs.tenant_id <> (SELECT t.id FROM tenants t WHERE t.name = '{SYSTEM_TENANT}'))"
    )
}

/// A job as stored.
#[derive(Debug, Clone, FromRow)]
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

pub(crate) const JOB_COLUMNS: &str = "id, tenant_id, \
     (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id) AS tenant, queue, kind, \
     payload, state, priority, attempt, max_attempts, run_at, dispatched_at, created_at, \
     started_at, finished_at, worker, result, error, attempt_errors, idempotency_key, \
     cancel_requested_at, progress_percent, progress_message, request_id";

/// What [`Ledger::insert`] did with one job.
#[derive(Debug, Clone)]
pub enum Inserted {
    Created(JobRecord),
    /// The tenant used the same idempotency key with the same payload before.
    Existing(JobRecord),
}

impl Inserted {
    pub fn record(&self) -> &JobRecord {
        match self {
            Inserted::Created(record) | Inserted::Existing(record) => record,
        }
    }

    pub fn into_record(self) -> JobRecord {
        match self {
            Inserted::Created(record) | Inserted::Existing(record) => record,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("idempotency key `{key}` expired while this request used it; submit again")]
    KeyReleased { key: String },
    #[error("idempotency key `{key}` was already used for job {existing} with a different payload")]
    IdempotencyConflict {
        /// Which of the submitted jobs.
        index: usize,
        key: String,
        existing: Uuid,
    },
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub spec: JobSpec,
    /// The request (or parent job's request) that created it, for log correlation.
    pub request_id: Option<String>,
}

impl NewJob {
    pub fn new(spec: JobSpec, request_id: Option<String>) -> NewJob {
        NewJob {
            id: Uuid::now_v7(),
            spec,
            request_id,
        }
    }
}

/// A job a worker has just started: the ledger raised its attempt and epoch.
#[derive(Debug, Clone, FromRow)]
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

/// The answer to a request to change a job's state.
#[derive(Debug, Clone)]
pub enum Change {
    Done(JobRecord),
    /// The job exists but its state does not allow the change.
    NotAllowed(JobRecord),
    NotFound,
}

/// A running job the reclaimer took back.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Reclaimed {
    pub queue: String,
    pub kind: String,
    /// `queued`, `cancelled` or `dead`.
    pub next: String,
}

/// A job the dispatcher moved into a queue's Redis window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct DispatchedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
    /// Connections to the same database whose statements always run on their generic plans.
    generic_plans: PgPool,
}

impl Ledger {
    pub fn new(pool: PgPool) -> Ledger {
        let options = (*pool.connect_options())
            .clone()
            .options([("plan_cache_mode", "force_generic_plan")]);
        let generic_plans = PgPoolOptions::new()
            .max_connections(FEW_ITEMS_CONNECTIONS.min(pool.options().get_max_connections()))
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with(options);
        Ledger {
            pool,
            generic_plans,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool for a statement about `items` jobs. Postgres plans the hot statements below
    /// again at every call: a custom plan, which sees how short the id arrays are, is costed
    /// below the generic one. At a steady 200 jobs a second, one or two jobs to a statement,
    /// that planning was more than half of Postgres's time (ADR 0007), so a statement about a
    /// few jobs goes to connections that run it on its generic plan, made once per
    /// connection, when one of them is free or may still be opened; otherwise to the main
    /// pool (planned each time) rather than queueing behind them. (Setting `plan_cache_mode`
    /// per transaction instead cost three round trips more for every lone job: `BEGIN`, the
    /// `SET` and `COMMIT`.) Batches go to the main pool: Postgres chooses their plans. Only
    /// for statements whose generic plan is the custom one (look-ups by id, inserts from
    /// arrays); a query with optional filters (`$1 IS NULL OR …`) needs its custom plan.
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

    /// Inserts jobs and their `job_enqueued` events, all or none. A job whose `run_at` is in
    /// the future starts `scheduled`, otherwise `queued`. A job whose idempotency key the
    /// tenant already used comes back as [`Inserted::Existing`] when its payload is the same,
    /// and fails the whole call with [`InsertError::IdempotencyConflict`] when it differs.
    /// `actor` names who submitted them in their `job_enqueued` events.
    pub async fn insert(
        &self,
        tenant_id: Uuid,
        jobs: &[NewJob],
        actor: &str,
    ) -> Result<Vec<Inserted>, InsertError> {
        self.insert_for(&vec![tenant_id; jobs.len()], jobs, &[], actor)
            .await
    }

    /// [`Ledger::insert`] for jobs of several tenants at once, `tenants[i]` owning `jobs[i]`:
    /// the API's group commit writes many requests' jobs in one statement this way. Where
    /// `dispatch[i]` is true (missing entries are false), `jobs[i]` is also marked
    /// dispatched (with its event) when it is due now and its queue is not paused: the
    /// caller pushes it to Redis itself, sparing it a dispatcher round. The created records
    /// show which were (`dispatched_at`).
    pub async fn insert_for(
        &self,
        tenants: &[Uuid],
        jobs: &[NewJob],
        dispatch: &[bool],
        actor: &str,
    ) -> Result<Vec<Inserted>, InsertError> {
        let pool = self.pool_for(jobs.len());
        // Keyed jobs may meet earlier ones, looked up in the same transaction. Without keys
        // the statement alone decides, and a statement is atomic: no transaction, two round
        // trips fewer.
        if jobs
            .iter()
            .any(|job| job.spec.options().idempotency_key.is_some())
        {
            let mut tx = pool.begin().await?;
            let answers = insert_rows(&mut tx, tenants, jobs, dispatch, actor).await?;
            tx.commit().await?;
            Ok(answers)
        } else {
            insert_rows(&mut *pool.acquire().await?, tenants, jobs, dispatch, actor).await
        }
    }

    /// [`Ledger::insert`] inside the caller's transaction: the jobs land, or not, with
    /// whatever else it writes (an ingest's page of tasks and its `embed.items` job; a
    /// connector connected and its first ingest).
    pub async fn insert_in(
        tx: &mut sqlx::PgConnection,
        tenant_id: Uuid,
        jobs: &[NewJob],
        actor: &str,
    ) -> Result<Vec<Inserted>, InsertError> {
        insert_rows(tx, &vec![tenant_id; jobs.len()], jobs, &[], actor).await
    }

    pub async fn get(&self, scope: Scope, id: Uuid) -> sqlx::Result<Option<JobRecord>> {
        let condition = scope.condition("$1");
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE {condition} AND id = $2"
        ))
        .bind(scope.tenant_id())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// A page of the jobs in `scope`, newest first.
    pub async fn list(&self, scope: Scope, filter: &JobFilter) -> sqlx::Result<Vec<JobRecord>> {
        let condition = scope.condition("$1");
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE {condition}
               AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR queue = $3)
               AND ($4::text IS NULL OR kind = $4)
               AND ($5::timestamptz IS NULL OR created_at >= $5)
               AND ($6::timestamptz IS NULL OR created_at < $6)
               AND ($7::uuid IS NULL OR id < $7)
             ORDER BY id DESC
             LIMIT $8"
        ))
        .bind(scope.tenant_id())
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
            "WITH picked AS MATERIALIZED (
                 SELECT j.id, j.turn FROM tenants t
                 CROSS JOIN LATERAL (
                     SELECT id, row_number() OVER (ORDER BY priority DESC, run_at, id) AS turn
                     FROM jobs
                     WHERE tenant_id = t.id AND queue = $1 AND dispatched_at IS NULL
                       AND state IN {DISPATCHABLE} AND run_at <= now() AND NOT {held}
                     ORDER BY priority DESC, run_at, id
                     LIMIT $2
                 ) j
                 ORDER BY j.turn
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
                 UPDATE jobs SET dispatched_at = now(), state = 'queued'
                 WHERE id = ANY (ARRAY(SELECT id FROM locked
                                       WHERE dispatched_at IS NULL AND state IN {DISPATCHABLE}))
                 RETURNING id, tenant_id, queue, kind
             ), events AS ({events})
             SELECT updated.id, updated.tenant_id FROM updated JOIN picked USING (id)
             ORDER BY picked.turn, updated.id",
            held = held_by_pause(),
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{dispatched}' AS event,
                        $3 AS actor, '{{}}'::jsonb AS details
                 FROM updated",
                dispatched = EventName::JobDispatched
            )),
        );
        sqlx::query_as(&sql)
            .bind(queue.as_str())
            .bind(limit)
            .bind(actor)
            .fetch_all(&self.pool)
            .await
    }

    /// Up to `limit` jobs dispatched longer ago than `after`, still not started and not
    /// among `waiting` (the ids still in the queue's Redis list), oldest first: their Redis
    /// copies were lost (Redis restarted or flushed, or a worker took them and died before
    /// starting them). Marks them dispatched again, now, and returns them so the dispatcher
    /// pushes them once more; a duplicate delivery is harmless because only one start can
    /// win [`Ledger::start_many`].
    pub async fn redispatch_stale(
        &self,
        queue: Queue,
        after: Duration,
        waiting: &[Uuid],
        limit: i64,
        actor: &str,
    ) -> sqlx::Result<Vec<DispatchedJob>> {
        let sql = format!(
            "WITH updated AS (
                 UPDATE jobs SET dispatched_at = now()
                 WHERE id IN (
                     SELECT id FROM jobs
                     WHERE queue = $1 AND state = 'queued' AND dispatched_at IS NOT NULL
                       AND dispatched_at < now() - make_interval(secs => $2) AND NOT {held}
                       AND id <> ALL($5)
                     ORDER BY dispatched_at LIMIT $4
                 ) AND state = 'queued'
                 RETURNING id, tenant_id, queue, kind
             ), events AS ({events})
             SELECT id, tenant_id FROM updated ORDER BY id",
            held = held_by_pause(),
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{dispatched}' AS event,
                        $3 AS actor, '{{\"redispatch\": true}}'::jsonb AS details
                 FROM updated",
                dispatched = EventName::JobDispatched
            )),
        );
        sqlx::query_as(&sql)
            .bind(queue.as_str())
            .bind(after.as_secs_f64())
            .bind(actor)
            .bind(limit)
            .bind(waiting)
            .fetch_all(&self.pool)
            .await
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

    /// The queues that have a job due and not yet dispatched (paused queues aside), in one
    /// query, so a round of the dispatcher touches only the queues that have work. Each
    /// queue's lookup stops at its first due job (`LIMIT 1`): written as `WHERE EXISTS`, the
    /// planner made it a semi-join that read the whole backlog every round.
    pub async fn queues_with_due_work(&self) -> sqlx::Result<Vec<Queue>> {
        // The queues are written into the statement, not bound: without parameters Postgres
        // plans it once per connection instead of at every round.
        let queues = Queue::ALL
            .iter()
            .map(|queue| format!("'{}'", queue.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let due: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT q.queue FROM UNNEST(ARRAY[{queues}]) AS q(queue)
             CROSS JOIN LATERAL (
                 SELECT 1 FROM jobs
                 WHERE queue = q.queue AND dispatched_at IS NULL
                   AND state IN {DISPATCHABLE} AND run_at <= now() AND NOT {held}
                 LIMIT 1
             ) AS due",
            held = held_by_pause()
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(due.iter().filter_map(|queue| queue.parse().ok()).collect())
    }

    /// How many jobs of each queue the ledger counts in its Redis window (dispatched, not
    /// yet started); queues with none are left out. Counting reads every entry of the
    /// window's index, dead ones too, so the dispatcher asks only when it sweeps for lost
    /// copies and sizes the window from Redis otherwise.
    pub async fn window_sizes(&self) -> sqlx::Result<Vec<(Queue, i64)>> {
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT queue, count(*) FROM jobs
             WHERE state = 'queued' AND dispatched_at IS NOT NULL
             GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(sizes
            .into_iter()
            .filter_map(|(queue, size)| Some((queue.parse().ok()?, size)))
            .collect())
    }

    /// The earliest `run_at` of any job not yet dispatched (paused queues aside), so the
    /// dispatcher can sleep exactly until it is due.
    pub async fn next_run_at(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(&format!(
            "SELECT min(run_at) FROM jobs
             WHERE dispatched_at IS NULL AND state IN {DISPATCHABLE} AND NOT {held}",
            held = held_by_pause()
        ))
        .fetch_one(&self.pool)
        .await
    }

    /// Starts jobs, in one statement however many: only a `queued` job can start, so of
    /// several deliveries of the same job exactly one wins (within one call, the first).
    /// Raises each started job's attempt and fencing epoch. A job of a paused queue does not
    /// start: it leaves the Redis window (`dispatched_at` cleared) and waits in the ledger
    /// until the queue is resumed. Returns, in order, each started job or `None`.
    pub async fn start_many(
        &self,
        ids: &[Uuid],
        worker: &str,
    ) -> sqlx::Result<Vec<Option<StartedJob>>> {
        let sql = format!(
            "WITH input AS (
                 SELECT DISTINCT id FROM UNNEST($1::uuid[]) AS t(id)
             ), parked AS (
                 UPDATE jobs SET dispatched_at = NULL
                 FROM input
                 WHERE jobs.id = input.id AND jobs.state = 'queued' AND {held}
             ), started AS (
                 UPDATE jobs SET state = 'running', attempt = attempt + 1,
                                 lease_epoch = lease_epoch + 1, dispatched_at = NULL,
                                 started_at = now(), worker = $2,
                                 progress_percent = NULL, progress_message = NULL
                 FROM input
                 WHERE jobs.id = input.id AND jobs.state = 'queued' AND NOT {held}
                 RETURNING jobs.id, jobs.tenant_id, jobs.queue, jobs.kind, jobs.payload,
                           jobs.attempt, jobs.max_attempts, jobs.lease_epoch, jobs.request_id,
                           EXTRACT(EPOCH FROM now() - jobs.run_at)::float8 AS waited_seconds
             ), events AS ({events})
             SELECT * FROM started",
            held = held_by_pause(),
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{started}' AS event, $2 AS actor,
                        jsonb_build_object('attempt', attempt, 'epoch', lease_epoch) AS details
                 FROM started",
                started = EventName::JobStarted
            )),
        );
        let rows: Vec<StartedJob> = sqlx::query_as(&sql)
            .bind(ids)
            .bind(worker)
            .fetch_all(self.pool_for(ids.len()))
            .await?;
        let mut started: HashMap<Uuid, StartedJob> =
            rows.into_iter().map(|job| (job.id, job)).collect();
        // `remove` hands a job to its first delivery only.
        Ok(ids.iter().map(|id| started.remove(id)).collect())
    }

    /// Ends attempts, each only if its `epoch` is still the job's and the job is running,
    /// and returns, in order, each job's state now (a failure asked to retry ends
    /// `cancelled` when cancellation was requested meanwhile). `None` where the epoch is
    /// stale: nothing changed, and a `stale_write_rejected` event records the attempt. One
    /// statement per kind of outcome, however many attempts, all in one transaction: a batch
    /// lands whole or not at all, so a retry after an error never finds half of it done.
    pub async fn finish_many(&self, finishes: &[Finish]) -> sqlx::Result<Vec<Option<String>>> {
        // The planner finds the running jobs through `jobs_running`, which it believes small.
        // A burst leaves an entry there for every job that ran since the last vacuum, and a
        // bitmap scan visits them all in every batch (20,000 by the end of a burn-down, the
        // costliest part of recording outcomes); a plain index scan marks them dead as it
        // passes, so the next batch skips them.
        // Sent with the `BEGIN`: a round trip fewer per batch made the burn-down about 5%
        // faster (ADR 0007). Should the `SET` fail, sqlx would hand the connection back to the
        // pool inside the aborted transaction, so it is closed instead.
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

    /// Jobs running for longer than `age`, with their epochs: the candidates whose leases the
    /// reclaimer checks.
    pub async fn running_longer_than(&self, age: Duration) -> sqlx::Result<Vec<(Uuid, i64)>> {
        // Postgres's clock, the one that wrote `started_at`, measures the age.
        sqlx::query_as(
            "SELECT id, lease_epoch FROM jobs
             WHERE state = 'running' AND started_at < now() - make_interval(secs => $1)",
        )
        .bind(age.as_secs_f64())
        .fetch_all(&self.pool)
        .await
    }

    /// Takes a running job whose lease expired away from its holder: back to `queued` (it
    /// runs again, its next start raising the attempt), `cancelled` if cancellation was asked,
    /// `dead` if that was its last attempt. Returns its queue and new state, or `None` if the
    /// epoch moved on meanwhile.
    pub async fn reclaim(
        &self,
        id: Uuid,
        epoch: i64,
        actor: &str,
    ) -> sqlx::Result<Option<Reclaimed>> {
        let sql = format!(
            // The next state is decided from the row as the UPDATE finds it, so a cancel
            // committed a moment earlier is honoured.
            "WITH changed AS (
                 UPDATE jobs SET
                     state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                                  WHEN attempt >= max_attempts THEN 'dead'
                                  ELSE 'queued' END,
                     dispatched_at = NULL, run_at = now(),
                     finished_at = CASE WHEN cancel_requested_at IS NULL AND attempt < max_attempts
                                        THEN NULL ELSE now() END,
                     error = CASE WHEN cancel_requested_at IS NULL AND attempt >= max_attempts
                                  THEN 'the worker stopped heartbeating on the last attempt'
                                  ELSE error END
                 WHERE id = $1 AND lease_epoch = $2 AND state = 'running'
                 RETURNING id, tenant_id, queue, kind, attempt, worker, state AS next
             ), events AS ({events})
             SELECT queue, kind, next FROM changed",
            events = append_events(&format!(
                "SELECT tenant_id, id AS job_id, queue, kind, '{reclaimed}' AS event, $3 AS actor,
                        jsonb_build_object('epoch', $2, 'attempt', attempt, 'holder', worker,
                                           'next_state', next) AS details
                 FROM changed
                 UNION ALL
                 SELECT tenant_id, id, queue, kind,
                        CASE next WHEN 'dead' THEN '{dead}' ELSE '{cancelled}' END, $3,
                        jsonb_build_object('attempt', attempt, 'reason', 'lease expired')
                 FROM changed WHERE next <> 'queued'",
                reclaimed = EventName::LeaseReclaimed,
                dead = EventName::JobDead,
                cancelled = EventName::JobCancelled
            )),
        );
        sqlx::query_as(&sql)
            .bind(id)
            .bind(epoch)
            .bind(actor)
            .fetch_optional(&self.pool)
            .await
    }

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
    /// (the job's own `max_attempts`). Attempt numbers go on counting, and the errors of earlier attempts stay.
    pub async fn retry(&self, scope: Scope, id: Uuid, budget: i32) -> sqlx::Result<Change> {
        let condition = scope.condition("$1");
        let sql = format!(
            "WITH changed AS (
                 UPDATE jobs SET state = 'queued', max_attempts = attempt + $3,
                        run_at = now(),
                        dispatched_at = NULL, finished_at = NULL, cancel_requested_at = NULL
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

    /// Deletes the finished jobs of the tenant called `tenant` older than `age`, with their
    /// events: the fleet's own probe jobs, which nobody reads later. The newest numbered
    /// event stays whatever it belongs to: the sequencer numbers on from it, and a `seq`
    /// streamed once must never be given again.
    pub async fn purge_finished(&self, tenant: &str, age: Duration) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "WITH gone AS (
                 DELETE FROM jobs USING tenants t
                 WHERE t.name = $1 AND jobs.tenant_id = t.id
                   AND jobs.state IN ('succeeded', 'dead', 'cancelled')
                   AND jobs.finished_at < now() - make_interval(secs => $2)
                 RETURNING jobs.id
             ), waiting AS (
                 -- Their events still waiting for numbers leave their batches.
                 UPDATE job_event_batches b
                 SET entries = kept.entries, n = cardinality(kept.entries)
                 FROM (SELECT id,
                              ARRAY(SELECT e FROM unnest(entries) AS e
                                    WHERE e.job_id IS NULL
                                       OR e.job_id NOT IN (SELECT id FROM gone)) AS entries
                       FROM job_event_batches
                       WHERE EXISTS (SELECT 1 FROM gone)) AS kept
                 WHERE b.id = kept.id AND b.n <> cardinality(kept.entries)
             )
             DELETE FROM job_events
             WHERE job_id IN (SELECT id FROM gone)
               AND seq < (SELECT max(seq) FROM job_events)",
        )
        .bind(tenant)
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Frees idempotency keys older than `retention`, so they may be used again.
    pub async fn expire_idempotency_keys(&self, retention: Duration) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET idempotency_key = NULL
             WHERE idempotency_key IS NOT NULL
               AND created_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Inserts `jobs` (of `tenants`) on `conn` in one statement, with their events; the body of
/// [`Ledger::insert_for`]. Keyed jobs that meet earlier ones need `conn` to be inside a
/// transaction, so the look-up of those sees what the insert saw.
async fn insert_rows(
    conn: &mut sqlx::PgConnection,
    tenants: &[Uuid],
    jobs: &[NewJob],
    dispatch: &[bool],
    actor: &str,
) -> Result<Vec<Inserted>, InsertError> {
    debug_assert_eq!(tenants.len(), jobs.len());
    let dispatch: Vec<bool> = (0..jobs.len())
        .map(|i| dispatch.get(i).copied().unwrap_or(false))
        .collect();
    let mut ids = Vec::with_capacity(jobs.len());
    let mut queues = Vec::with_capacity(jobs.len());
    let mut kinds = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut priorities = Vec::with_capacity(jobs.len());
    let mut max_attempts = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut keys = Vec::with_capacity(jobs.len());
    let mut request_ids = Vec::with_capacity(jobs.len());
    for job in jobs {
        let options = job.spec.options();
        ids.push(job.id);
        queues.push(job.spec.queue().as_str());
        kinds.push(job.spec.kind());
        payloads.push(serde_json::to_value(&job.spec).expect("a JobSpec always serialises"));
        priorities.push(options.priority.unwrap_or(0));
        max_attempts.push(job.spec.max_attempts() as i32);
        run_ats.push(options.run_at);
        keys.push(options.idempotency_key.clone());
        request_ids.push(job.request_id.as_deref());
    }
    let sql = format!(
        "WITH input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                  $5::jsonb[], $6::int2[], $7::int4[], $8::timestamptz[],
                                  $9::text[], $11::text[], $12::bool[])
                 AS t(tenant_id, id, queue, kind, payload, priority, max_attempts, run_at,
                      key, request_id, dispatch)
         ), inserted AS (
             INSERT INTO jobs (id, tenant_id, queue, kind, payload, state, priority,
                               max_attempts, run_at, idempotency_key, request_id,
                               dispatched_at)
             SELECT id, tenant_id, queue, kind, payload,
                    CASE WHEN run_at > now() THEN 'scheduled' ELSE 'queued' END,
                    priority, max_attempts, GREATEST(COALESCE(run_at, now()), now()), key,
                    request_id,
                    CASE WHEN dispatch AND COALESCE(run_at, now()) <= now()
                              AND NOT {held} THEN now() END
             -- Named `jobs` for the pause check, which reads a job's queue and tenant.
             FROM input AS jobs
             -- Keys in one order, so two batches sharing keys cannot deadlock.
             ORDER BY key
             ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                 DO NOTHING
             RETURNING {JOB_COLUMNS}
         ), events AS ({events})
         SELECT * FROM inserted",
        held = held_by_pause(),
        events = append_events(&format!(
            "SELECT tenant_id, id AS job_id, queue, kind, event, $10 AS actor, details
             FROM (
                 SELECT tenant_id, id, queue, kind, 0 AS n, '{enqueued}' AS event,
                        jsonb_strip_nulls(jsonb_build_object('queue', queue, 'kind', kind,
                                          'state', state, 'request_id', request_id))
                            AS details
                 FROM inserted
                 UNION ALL
                 SELECT tenant_id, id, queue, kind, 1, '{dispatched}', '{{}}'
                 FROM inserted WHERE dispatched_at IS NOT NULL
             ) AS e
             ORDER BY id, n",
            enqueued = EventName::JobEnqueued,
            dispatched = EventName::JobDispatched,
        )),
    );
    let inserted: Vec<JobRecord> = sqlx::query_as(&sql)
        .bind(tenants)
        .bind(&ids)
        .bind(&queues)
        .bind(&kinds)
        .bind(&payloads)
        .bind(&priorities)
        .bind(&max_attempts)
        .bind(&run_ats)
        .bind(&keys)
        .bind(actor)
        .bind(&request_ids)
        .bind(&dispatch)
        .fetch_all(&mut *conn)
        .await?;
    // Fewer rows than jobs: some keys were used before.
    let mut existing: Vec<JobRecord> = Vec::new();
    if inserted.len() < jobs.len() {
        existing = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             JOIN UNNEST($1::uuid[], $2::text[]) AS used(owner, used_key)
               ON jobs.tenant_id = used.owner AND jobs.idempotency_key = used.used_key
             WHERE NOT (jobs.id = ANY($3))"
        ))
        .bind(tenants)
        .bind(&keys)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    }
    // Answer in the order the jobs were submitted.
    let created: HashMap<Uuid, &JobRecord> = inserted.iter().map(|row| (row.id, row)).collect();
    let mut answers = Vec::with_capacity(jobs.len());
    for (index, id) in ids.iter().enumerate() {
        if let Some(row) = created.get(id) {
            answers.push(Inserted::Created((*row).clone()));
            continue;
        }
        let key = keys[index]
            .as_deref()
            .expect("only keyed jobs can conflict");
        let Some(first) = existing.iter().chain(&inserted).find(|row| {
            row.tenant_id == tenants[index] && row.idempotency_key.as_deref() == Some(key)
        }) else {
            // Housekeeping freed the key between the insert and this look-up.
            return Err(InsertError::KeyReleased {
                key: key.to_owned(),
            });
        };
        if first.payload != payloads[index] {
            return Err(InsertError::IdempotencyConflict {
                index,
                key: key.to_owned(),
                existing: first.id,
            });
        }
        answers.push(Inserted::Existing(first.clone()));
    }
    Ok(answers)
}

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
            "state = 'cancelled', finished_at = now()".to_owned(),
            &[EventName::JobCancelled][..],
            "'while', 'running'",
        ),
        OutcomeKind::HandedBack => (
            // Not a failed attempt: the next start counts it again.
            "state = 'queued', attempt = attempt - 1, run_at = now(), started_at = NULL".to_owned(),
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
                        CASE WHEN state = 'cancelled' AND e.name = '{retry_scheduled}'
                             THEN '{cancelled}' ELSE e.name END AS event,
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
        let ledger = Ledger::new(crate::Db::connect_lazy(&url, 2).unwrap().pool);
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
