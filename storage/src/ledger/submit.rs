//! Jobs in: one statement inserts a batch of jobs with their `job_enqueued` events, however
//! many tenants they belong to, and answers idempotency keys used before.

use std::collections::HashMap;

use taskfleet_jobs::{Dispatch, JobSpec};
use uuid::Uuid;

use super::{JobRecord, Ledger};

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

    /// The delivery of a job this insert created already dispatched ([`Ledger::insert_for`]):
    /// its first attempt, under the epoch a new row starts with; the next dispatch of it
    /// raises that, so a copy pushed late cannot start it twice.
    pub fn delivery(&self) -> Option<Dispatch> {
        let Inserted::Created(record) = self else {
            return None;
        };
        record.dispatched_at?;
        Some(Dispatch {
            job_id: record.id,
            epoch: FIRST_EPOCH,
            attempt: record.attempt + 1,
            max_attempts: record.max_attempts,
            tenant_id: record.tenant_id,
            queue: record.queue.parse().ok()?,
            kind: record.kind.clone(),
            run_at: record.run_at,
            request_id: record.request_id.clone(),
            payload: Some(record.payload.clone()),
        })
    }
}

/// The fencing epoch of a job never dispatched: `jobs.lease_epoch`'s default (migration 0001).
const FIRST_EPOCH: i64 = 0;

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

impl Ledger {
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
    let inserted: Vec<JobRecord> = sqlx::query_as!(
        JobRecord,
        r#"WITH input AS (
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
                      -- Not when a pause holds the job's queue (migration 0017).
                      CASE WHEN dispatch AND COALESCE(run_at, now()) <= now()
                                AND NOT ((SELECT cardinality(paused_queues()) > 0)
                                         AND queue = ANY ((SELECT paused_queues())::text[])
                                         AND tenant_id IS DISTINCT FROM
                                             (SELECT system_tenant_id()))
                           THEN now() END
               FROM input
               -- Keys in one order, so two batches sharing keys cannot deadlock.
               ORDER BY key
               ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                   DO NOTHING
               RETURNING id, tenant_id,
                         (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id) AS tenant,
                         queue, kind, payload, state, priority, attempt, max_attempts,
                         run_at, dispatched_at, created_at, started_at, finished_at, worker,
                         result, error, attempt_errors, idempotency_key,
                         cancel_requested_at, progress_percent, progress_message, request_id
           ), events AS (
               INSERT INTO job_event_batches (n, entries)
               SELECT n, entries FROM job_event_batch(ARRAY(
                   SELECT ROW(tenant_id, id, queue, kind, event, $10::text, details)::job_event_input
                   FROM (
                       SELECT tenant_id, id, queue, kind, 0 AS n, 'job_enqueued' AS event,
                              jsonb_strip_nulls(jsonb_build_object('queue', queue, 'kind', kind,
                                                'state', state, 'request_id', request_id))
                                  AS details
                       FROM inserted
                       UNION ALL
                       SELECT tenant_id, id, queue, kind, 1, 'job_dispatched', '{}'
                       FROM inserted WHERE dispatched_at IS NOT NULL
                   ) AS e
                   ORDER BY id, n))
           )
           SELECT id AS "id!", tenant_id AS "tenant_id!", tenant AS "tenant!",
                  queue AS "queue!", kind AS "kind!", payload AS "payload!", state AS "state!",
                  priority AS "priority!", attempt AS "attempt!",
                  max_attempts AS "max_attempts!", run_at AS "run_at!", dispatched_at,
                  created_at AS "created_at!", started_at, finished_at, worker, result, error,
                  attempt_errors AS "attempt_errors!", idempotency_key, cancel_requested_at,
                  progress_percent, progress_message, request_id
           FROM inserted"#,
        tenants,
        &ids,
        &queues as &[&str],
        &kinds as &[&str],
        &payloads,
        &priorities,
        &max_attempts,
        &run_ats as &[Option<chrono::DateTime<chrono::Utc>>],
        &keys as &[Option<String>],
        actor,
        &request_ids as &[Option<&str>],
        &dispatch
    )
    .fetch_all(&mut *conn)
    .await?;
    // Fewer rows than jobs: some keys were used before.
    let mut existing: Vec<JobRecord> = Vec::new();
    if inserted.len() < jobs.len() {
        existing = sqlx::query_as!(
            JobRecord,
            r#"SELECT id, tenant_id,
                      (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id) AS "tenant!",
                      queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                      dispatched_at, created_at, started_at, finished_at, worker, result, error,
                      attempt_errors, idempotency_key, cancel_requested_at, progress_percent,
                      progress_message, request_id
               FROM jobs
               JOIN UNNEST($1::uuid[], $2::text[]) AS used(owner, used_key)
                 ON jobs.tenant_id = used.owner AND jobs.idempotency_key = used.used_key
               WHERE NOT (jobs.id = ANY($3))"#,
            tenants,
            &keys as &[Option<String>],
            &ids
        )
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
