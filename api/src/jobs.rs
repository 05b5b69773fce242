//! `/v1/jobs`: submit typed jobs, read them back from the ledger.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};
use serde::Serialize;
use serde_json::{Value, json};
use taskfleet_jobs::{AuditAction, JobSpec, JobState, Queue};
use taskfleet_storage::{
    AuditEntry, Change, Inserted, JobFilter, JobRecord, NewJob, Role, Scope, redis as tf_redis,
};
use uuid::Uuid;

use crate::{
    auth::TenantKey,
    error::ApiError,
    json::{self, SerdeJson},
    observe::RequestId,
    paging,
    state::AppState,
};

/// Most jobs one batch request may carry.
pub const MAX_BATCH: usize = 1_000;

/// A job as the ledger holds it.
#[derive(Debug, Clone, Object, Serialize)]
pub struct Job {
    pub id: Uuid,
    /// The tenant's name.
    pub tenant: String,
    pub queue: Queue,
    pub kind: String,
    pub state: JobState,
    /// The job as submitted, `kind` included.
    pub payload: Value,
    pub priority: i16,
    /// Attempts started so far.
    pub attempt: i32,
    pub max_attempts: i32,
    #[serde(serialize_with = "json::rfc3339")]
    pub run_at: DateTime<Utc>,
    #[serde(serialize_with = "json::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "json::rfc3339_or_null")]
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "json::rfc3339_or_null")]
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker process that ran the latest attempt.
    #[oai(nullable)]
    pub worker: Option<String>,
    /// What the handler returned, once succeeded.
    #[oai(nullable)]
    pub result: Option<Value>,
    /// The latest attempt's error.
    #[oai(nullable)]
    pub error: Option<String>,
    /// Every failed attempt: `[{attempt, error, at}]`.
    pub attempt_errors: Value,
    #[oai(nullable)]
    pub idempotency_key: Option<String>,
    /// Set when cancellation of the running job was asked; it ends `cancelled`.
    #[serde(serialize_with = "json::rfc3339_or_null")]
    #[oai(nullable)]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The latest progress its handler reported, in percent.
    #[serde(serialize_with = "json::real_or_null")]
    #[oai(nullable)]
    pub progress_percent: Option<f32>,
    #[oai(nullable)]
    pub progress_message: Option<String>,
    /// The `X-Request-ID` of the request that created the job; its worker logs carry it.
    #[oai(nullable)]
    pub request_id: Option<String>,
}

impl Job {
    pub(crate) fn from_record(record: JobRecord) -> Result<Job, ApiError> {
        let corrupt = |what: &str| {
            tracing::error!(job_id = %record.id, "ledger row has an unknown {what}");
            ApiError::Internal(Json(crate::error::ErrorBody {
                error: "internal".into(),
                message: format!("job {} has an unknown {what}", record.id),
            }))
        };
        Ok(Job {
            queue: record.queue.parse().map_err(|_| corrupt("queue"))?,
            state: record.state.parse().map_err(|_| corrupt("state"))?,
            id: record.id,
            tenant: record.tenant,
            kind: record.kind,
            payload: record.payload,
            priority: record.priority,
            attempt: record.attempt,
            max_attempts: record.max_attempts,
            run_at: record.run_at,
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at: record.finished_at,
            worker: record.worker,
            result: record.result,
            error: record.error,
            attempt_errors: record.attempt_errors,
            idempotency_key: record.idempotency_key,
            cancel_requested_at: record.cancel_requested_at,
            // A handler's NaN is no progress to show (poem-openapi left the field out).
            progress_percent: record.progress_percent.filter(|p| p.is_finite()),
            progress_message: record.progress_message,
            request_id: record.request_id,
        })
    }
}

#[derive(Debug, Object)]
pub struct BatchRequest {
    /// Up to 1,000 jobs, accepted all together or not at all.
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Object, Serialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

#[derive(Debug, Object, Serialize)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum Created<T: poem_openapi::types::Type + Serialize + Send> {
    /// Accepted: recorded in the ledger and queued or scheduled.
    #[oai(status = 201)]
    Created(SerdeJson<T>),
    /// The idempotency key was used before with the same payload: the first job.
    #[oai(status = 200)]
    Existing(SerdeJson<T>),
}

pub struct JobsApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Jobs")]
impl JobsApi {
    /// Submit a job
    ///
    /// The body is one job, discriminated by `kind`. It is a row in the ledger before this
    /// answers 201.
    #[oai(path = "/jobs", method = "post", operation_id = "createJob")]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        body: Json<JobSpec>,
        /// Same as the body's `idempotency_key`.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> Result<Created<Job>, ApiError> {
        let mut spec = body.0;
        with_idempotency_header(&mut spec, idempotency_key.0)?;
        let inserted = accept(&state, &auth, &request_id, vec![spec], false)
            .await?
            .remove(0);
        Ok(match inserted {
            Inserted::Created(record) => Created::Created(SerdeJson(Job::from_record(record)?)),
            Inserted::Existing(record) => Created::Existing(SerdeJson(Job::from_record(record)?)),
        })
    }

    /// Submit up to 1,000 jobs at once
    ///
    /// All or nothing: if one job is invalid, none is accepted and the error names its index.
    #[oai(path = "/jobs/batch", method = "post", operation_id = "createJobBatch")]
    async fn create_batch(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        body: Json<BatchRequest>,
    ) -> Result<Created<JobList>, ApiError> {
        let specs = body.0.jobs;
        if specs.is_empty() || specs.len() > MAX_BATCH {
            return Err(ApiError::invalid(format!(
                "a batch holds 1 to {MAX_BATCH} jobs; this one has {}",
                specs.len()
            )));
        }
        let jobs = accept(&state, &auth, &request_id, specs, true)
            .await?
            .into_iter()
            .map(|inserted| Job::from_record(inserted.into_record()))
            .collect::<Result<_, _>>()?;
        Ok(Created::Created(SerdeJson(JobList { jobs })))
    }

    /// Get a job
    #[oai(path = "/jobs/:id", method = "get", operation_id = "getJob")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<SerdeJson<Job>, ApiError> {
        match state.ledger.get(auth.0.scope(), id.0).await? {
            Some(record) => Ok(SerdeJson(Job::from_record(record)?)),
            None => Err(ApiError::not_found(format!("no job {}", id.0))),
        }
    }

    /// Cancel a job
    ///
    /// A job that has not started never will; a running job's handler is stopped at its
    /// next await point and the job ends `cancelled` (`cancel_requested_at` is set
    /// meanwhile, and wins over a retry, a hand-back by a draining worker or a reclaim;
    /// only an attempt that succeeded first ends `succeeded`). A finished job is a 409.
    #[oai(path = "/jobs/:id/cancel", method = "post", operation_id = "cancelJob")]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<SerdeJson<Job>, ApiError> {
        let record = changed(
            state.ledger.cancel(auth.0.scope(), id.0).await?,
            "cancelled",
        )?;
        if record.cancel_requested_at.is_some() && record.state == JobState::Running.as_str() {
            let mut conn = state.redis.clone();
            if let Err(err) = tf_redis::request_cancel(&mut conn, &state.keys, id.0).await {
                // The ledger holds the request: the leader signals the worker again within
                // seconds, and no path out of `running` but success ignores it.
                tracing::warn!(%err, job_id = %id.0, "could not signal the cancellation");
            }
        }
        Ok(SerdeJson(Job::from_record(record)?))
    }

    /// Retry a dead or cancelled job
    ///
    /// It runs again with a fresh budget of `max_attempts` more attempts; attempt numbers go
    /// on counting and the errors of earlier attempts stay.
    #[oai(path = "/jobs/:id/retry", method = "post", operation_id = "retryJob")]
    async fn retry(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<SerdeJson<Job>, ApiError> {
        let Some(job) = state.ledger.get(auth.0.scope(), id.0).await? else {
            return Err(ApiError::not_found(format!("no job {}", id.0)));
        };
        // A fresh budget: the attempts the job was submitted with (or its kind's default).
        let budget = serde_json::from_value::<JobSpec>(job.payload)
            .map(|spec| spec.max_attempts() as i32)
            .unwrap_or(job.max_attempts);
        let record = changed(
            state.ledger.retry(auth.0.scope(), id.0, budget).await?,
            "retried",
        )?;
        let retried = AuditEntry::new(AuditAction::JobRetried, Some(record.tenant_id), id.0)
            .with_detail(json!({"kind": record.kind}));
        crate::audit::record(&state, &auth, retried).await;
        let mut conn = state.redis.clone();
        if let Err(err) = tf_redis::clear_cancel(&mut conn, &state.keys, id.0).await {
            tracing::warn!(%err, job_id = %id.0, "could not clear an old cancellation flag");
        }
        state.wake_dispatcher();
        Ok(SerdeJson(Job::from_record(record)?))
    }

    /// List jobs
    ///
    /// Newest first, filtered, one page at a time. A tenant key lists its own jobs; an
    /// operator key lists every tenant's, or one tenant's with `tenant`.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/jobs", method = "get", operation_id = "listJobs")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        #[oai(name = "state")] job_state: Query<Option<JobState>>,
        queue: Query<Option<Queue>>,
        kind: Query<Option<String>>,
        /// Only this tenant's jobs (by name). Operator keys only, or a tenant key's own name.
        tenant: Query<Option<String>>,
        /// Created at or after this instant.
        created_after: Query<Option<DateTime<Utc>>>,
        /// Created before this instant.
        created_before: Query<Option<DateTime<Utc>>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<SerdeJson<JobPage>, ApiError> {
        let before = paging::before(cursor.0)?;
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let filter = JobFilter {
            state: job_state.0,
            queue: queue.0,
            kind: kind.0,
            created_after: created_after.0,
            created_before: created_before.0,
            before,
            limit,
        };
        let scope = match tenant.0 {
            None => auth.0.scope(),
            Some(name) if name == auth.0.name => Scope::Tenant(auth.0.id),
            Some(name) if auth.0.role == Role::Operator => match state.tenants.find(&name).await? {
                Some(id) => Scope::Tenant(id),
                None => return Err(ApiError::not_found(format!("no tenant `{name}`"))),
            },
            Some(_) => {
                return Err(ApiError::forbidden(
                    "only operator keys can list another tenant's jobs",
                ));
            }
        };
        let records = state.ledger.list(scope, &filter).await?;
        let next_cursor = paging::next_cursor(records.iter().map(|r| r.id), limit);
        let jobs = records
            .into_iter()
            .map(Job::from_record)
            .collect::<Result<_, _>>()?;
        Ok(SerdeJson(JobPage { jobs, next_cursor }))
    }
}

/// The changed job, or the error that says why it could not change.
fn changed(change: Change, verb: &str) -> Result<JobRecord, ApiError> {
    match change {
        Change::Done(record) => Ok(record),
        Change::NotAllowed(record) => Err(ApiError::conflict(
            "invalid_state",
            format!("job {} is {} and cannot be {verb}", record.id, record.state),
        )),
        Change::NotFound => Err(ApiError::not_found("no such job")),
    }
}

/// Gives `spec` the `Idempotency-Key` header's key, which must agree with the body's own.
pub(crate) fn with_idempotency_header(
    spec: &mut JobSpec,
    header: Option<String>,
) -> Result<(), ApiError> {
    let Some(header) = header else {
        return Ok(());
    };
    if header.is_empty() || header.len() > 255 {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 255 characters",
        ));
    }
    let options = spec.options_mut();
    match &options.idempotency_key {
        Some(key) if *key != header => Err(ApiError::invalid(
            "the Idempotency-Key header and the body's idempotency_key differ",
        )),
        _ => {
            options.idempotency_key = Some(header);
            Ok(())
        }
    }
}

/// Validates and records jobs for the tenant, then wakes the dispatcher. Errors of a batch
/// name the index of the job at fault.
pub(crate) async fn accept(
    state: &AppState,
    auth: &TenantKey,
    request_id: &RequestId,
    specs: Vec<JobSpec>,
    batch: bool,
) -> Result<Vec<Inserted>, ApiError> {
    for (index, spec) in specs.iter().enumerate() {
        let reserved = spec
            .options()
            .idempotency_key
            .as_deref()
            .is_some_and(|key| {
                taskfleet_jobs::schedule::RESERVED_KEY_PREFIXES
                    .iter()
                    .any(|prefix| key.starts_with(prefix))
            });
        let checked = if reserved {
            Err(taskfleet_jobs::InvalidJob::new(
                "idempotency keys starting with `schedule:` or `fire:` are reserved for schedules",
            ))
        } else {
            spec.validate(&state.executor)
        };
        let at = |message: String| match batch {
            true => format!("jobs[{index}]: {message}"),
            false => message,
        };
        checked.map_err(|invalid| ApiError::invalid(at(invalid.message)))?;
        crate::connectors::check_target(state, auth.0.id, spec)
            .await
            .map_err(|err| err.with_message(at))?;
        crate::chat::check_chat(state, auth.0.id, spec)
            .await
            .map_err(|err| err.with_message(at))?;
    }
    let mut new_jobs: Vec<NewJob> = specs
        .into_iter()
        .map(|spec| NewJob::new(spec, Some(request_id.0.clone())))
        .collect();
    // A lone job without a key shares its insert with other requests'; anything that must
    // land all-or-nothing or may meet an idempotency key goes alone.
    let lone = new_jobs.len() == 1 && new_jobs[0].spec.options().idempotency_key.is_none();
    let inserted = if lone {
        let job = new_jobs.pop().expect("one job");
        vec![Inserted::Created(
            state.submissions.submit((auth.0.id, job)).await?,
        )]
    } else {
        state.ledger.insert(auth.0.id, &new_jobs, "api").await?
    };
    // Jobs the API pushed to Redis itself need no dispatcher round.
    if inserted
        .iter()
        .any(|inserted| inserted.record().dispatched_at.is_none())
    {
        state.wake_dispatcher();
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use poem_openapi::types::ToJSON;
    use serde_json::json;

    use super::*;

    fn job(finished: bool) -> Job {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 4, 20, 24).unwrap()
            + chrono::Duration::microseconds(123_456);
        Job {
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            queue: Queue::Executor,
            kind: "executor.run".into(),
            state: if finished {
                JobState::Succeeded
            } else {
                JobState::Queued
            },
            payload: json!({"kind": "executor.run", "command": "noop", "nested": [1, {"a": null}]}),
            priority: -3,
            attempt: 2,
            max_attempts: 5,
            run_at: at,
            created_at: at,
            started_at: finished.then_some(at),
            finished_at: finished.then_some(at),
            worker: finished.then_some("worker-1".into()),
            result: finished.then_some(json!({"ok": true})),
            error: finished.then_some("boom".into()),
            attempt_errors: json!([{"attempt": 1, "error": "boom", "at": "2026-11-30T04:20:24Z"}]),
            idempotency_key: finished.then_some("key".into()),
            cancel_requested_at: finished.then_some(at),
            progress_percent: finished.then_some(33.3),
            progress_message: finished.then_some("halfway".into()),
            request_id: finished.then_some("req-1".into()),
        }
    }

    /// What a client reads from `value`'s answer: the bytes serde writes, parsed.
    fn written<T: Serialize>(value: &T) -> Value {
        serde_json::from_slice(&serde_json::to_vec(value).unwrap()).unwrap()
    }

    /// Job answers are written by serde ([`SerdeJson`]); a client must read from them what
    /// poem-openapi would have written from the documented schema, with every field set and
    /// with none.
    #[test]
    fn job_answers_written_by_serde_match_the_documented_json() {
        for finished in [true, false] {
            let job = job(finished);
            assert_eq!(written(&job), job.to_json().unwrap());
            let page = JobPage {
                jobs: vec![job.clone(), job.clone()],
                next_cursor: finished.then(|| job.id.to_string()),
            };
            assert_eq!(written(&page), page.to_json().unwrap());
            let list = JobList { jobs: vec![job] };
            assert_eq!(written(&list), list.to_json().unwrap());
        }
    }
}
