//! `/v1/schedules`: cron and one-shot schedules whose firings create jobs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde_json::{Value, json};
use taskfleet_jobs::{AuditAction, ExecutorRules, JobSpec, MissedPolicy, Timing};
use taskfleet_storage::{
    AuditEntry, Firing, ScheduleDefinition, ScheduleError, ScheduleRecord, Scope,
};
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, paging, state::AppState};

/// Firings shown with a schedule.
const RECENT_FIRINGS: i64 = 20;

/// A schedule to create, or to replace one with.
#[derive(Debug, Object)]
pub struct ScheduleInput {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// The job each firing creates: the same typed union as `POST /v1/jobs`.
    pub target: JobSpec,
    /// Cron with seconds first: `sec min hour day-of-month month day-of-week [year]`.
    #[oai(nullable)]
    pub cron: Option<String>,
    /// IANA time zone the cron expression is read in (default `UTC`).
    #[oai(nullable)]
    pub time_zone: Option<String>,
    /// Fire once, at this instant (instead of `cron`).
    #[oai(nullable)]
    pub at: Option<DateTime<Utc>>,
    /// Firings missed while no worker ran: `skip` (default) or `catch_up_once`.
    #[oai(nullable)]
    pub missed: Option<MissedPolicy>,
}

#[derive(Debug, Object)]
pub struct ScheduleFiring {
    pub fire_at: DateTime<Utc>,
    /// The job this firing created.
    pub job_id: Uuid,
    /// Fired late, once, for slots missed while no scheduler ran.
    pub catch_up: bool,
    pub fired_at: DateTime<Utc>,
}

impl From<Firing> for ScheduleFiring {
    fn from(firing: Firing) -> ScheduleFiring {
        ScheduleFiring {
            fire_at: firing.fire_at,
            job_id: firing.job_id,
            catch_up: firing.catch_up,
            fired_at: firing.fired_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    pub target: Value,
    #[oai(nullable)]
    pub cron: Option<String>,
    #[oai(nullable)]
    pub time_zone: Option<String>,
    #[oai(nullable)]
    pub at: Option<DateTime<Utc>>,
    pub missed: MissedPolicy,
    pub paused: bool,
    /// The next slot; absent once a one-shot schedule has fired.
    #[oai(nullable)]
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The latest firings, newest first.
    pub last_firings: Vec<ScheduleFiring>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct ScheduleList {
    /// Newest first.
    pub schedules: Vec<Schedule>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum ScheduleCreated {
    #[oai(status = 201)]
    Created(Json<Schedule>),
}

#[derive(ApiResponse)]
pub enum Deleted {
    #[oai(status = 204)]
    Deleted,
}

impl From<ScheduleError> for ApiError {
    fn from(err: ScheduleError) -> ApiError {
        match err {
            ScheduleError::Db(err) => err.into(),
            taken @ ScheduleError::NameTaken(_) => {
                ApiError::conflict("name_taken", taken.to_string())
            }
        }
    }
}

/// Checks a schedule as the scheduler will read it, and works out its first slot.
fn definition(
    input: ScheduleInput,
    executor: &ExecutorRules,
) -> Result<ScheduleDefinition, ApiError> {
    input
        .target
        .validate(executor)
        .map_err(|invalid| ApiError::invalid(format!("target: {invalid}")))?;
    let now = Utc::now();
    let timing = Timing::parse(
        input.cron.as_deref(),
        input.time_zone.as_deref(),
        input.at,
        Some(now),
    )
    .map_err(|invalid| ApiError::invalid(invalid.message))?;
    let next_fire_at = timing.next_after(now);
    if next_fire_at.is_none() {
        return Err(ApiError::invalid("the cron expression never fires again"));
    }
    Ok(ScheduleDefinition {
        name: input.name,
        target: serde_json::to_value(&input.target).expect("a JobSpec always serialises"),
        next_fire_at,
        cron: input.cron,
        time_zone: input.time_zone,
        at: input.at,
        missed: input.missed.unwrap_or_default().as_str().to_owned(),
    })
}

/// Schedules as shown, with the latest firings of all of them read in one statement.
async fn present_all(
    state: &AppState,
    records: Vec<ScheduleRecord>,
) -> Result<Vec<Schedule>, ApiError> {
    let ids: Vec<Uuid> = records.iter().map(|record| record.id).collect();
    let mut firings: HashMap<Uuid, Vec<ScheduleFiring>> = HashMap::new();
    for firing in state.schedules.latest_firings(&ids, RECENT_FIRINGS).await? {
        firings
            .entry(firing.schedule_id)
            .or_default()
            .push(ScheduleFiring::from(firing));
    }
    Ok(records
        .into_iter()
        .map(|record| Schedule {
            last_firings: firings.remove(&record.id).unwrap_or_default(),
            id: record.id,
            name: record.name,
            target: record.target,
            cron: record.cron,
            time_zone: record.time_zone,
            at: record.at,
            missed: record.missed.parse().unwrap_or_default(),
            paused: record.paused,
            next_fire_at: record.next_fire_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        })
        .collect())
}

async fn present(state: &AppState, record: ScheduleRecord) -> Result<Schedule, ApiError> {
    let mut one = present_all(state, vec![record]).await?;
    Ok(one.remove(0))
}

/// The audit log's entry for `action` on the schedule `record`.
fn audited(action: AuditAction, record: &ScheduleRecord) -> AuditEntry {
    AuditEntry::new(action, Some(record.tenant_id), record.id)
        .with_detail(json!({"name": record.name}))
}

fn no_schedule(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no schedule {id}"))
}

pub struct SchedulesApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Schedules")]
impl SchedulesApi {
    /// Create a schedule
    ///
    /// Either `cron` (seconds first, read in `time_zone`) or one `at` instant. Each firing
    /// creates the `target` job exactly once, even across scheduler fail-overs.
    #[oai(path = "/schedules", method = "post", operation_id = "createSchedule")]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        body: Json<ScheduleInput>,
    ) -> Result<ScheduleCreated, ApiError> {
        crate::connectors::check_target(&state, auth.0.id, &body.0.target)
            .await
            .map_err(|err| err.with_message(|m| format!("target: {m}")))?;
        crate::chat::check_scheduled_chat(&state, auth.0.id, &body.0.target)
            .await
            .map_err(|err| err.with_message(|m| format!("target: {m}")))?;
        let def = definition(body.0, &state.executor)?;
        let record = state.schedules.create(auth.0.id, &def).await?;
        crate::audit::record(
            &state,
            &auth,
            audited(AuditAction::ScheduleCreated, &record),
        )
        .await;
        Ok(ScheduleCreated::Created(Json(
            present(&state, record).await?,
        )))
    }

    /// List schedules
    ///
    /// Newest first, one page at a time, each with its latest firings.
    #[oai(path = "/schedules", method = "get", operation_id = "listSchedules")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<ScheduleList>, ApiError> {
        let before = paging::before(cursor.0)?;
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let records = state.schedules.list(auth.0.scope(), before, limit).await?;
        let next_cursor = paging::next_cursor(records.iter().map(|r| r.id), limit);
        let schedules = present_all(&state, records).await?;
        Ok(Json(ScheduleList {
            schedules,
            next_cursor,
        }))
    }

    /// Get a schedule, with its next slot and latest firings
    #[oai(path = "/schedules/:id", method = "get", operation_id = "getSchedule")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<Schedule>, ApiError> {
        let record = state
            .schedules
            .get(auth.0.scope(), id.0)
            .await?
            .ok_or_else(|| no_schedule(id.0))?;
        Ok(Json(present(&state, record).await?))
    }

    /// Replace a schedule
    ///
    /// Its next slot is worked out anew; past firings stay.
    #[oai(
        path = "/schedules/:id",
        method = "put",
        operation_id = "replaceSchedule"
    )]
    async fn replace(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
        body: Json<ScheduleInput>,
    ) -> Result<Json<Schedule>, ApiError> {
        crate::connectors::check_target(&state, auth.0.id, &body.0.target)
            .await
            .map_err(|err| err.with_message(|m| format!("target: {m}")))?;
        crate::chat::check_scheduled_chat(&state, auth.0.id, &body.0.target)
            .await
            .map_err(|err| err.with_message(|m| format!("target: {m}")))?;
        let def = definition(body.0, &state.executor)?;
        let record = state
            .schedules
            .replace(auth.0.id, id.0, &def)
            .await?
            .ok_or_else(|| no_schedule(id.0))?;
        crate::audit::record(
            &state,
            &auth,
            audited(AuditAction::ScheduleUpdated, &record),
        )
        .await;
        Ok(Json(present(&state, record).await?))
    }

    /// Delete a schedule
    #[oai(
        path = "/schedules/:id",
        method = "delete",
        operation_id = "deleteSchedule"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Deleted, ApiError> {
        match state.schedules.delete(auth.0.id, id.0).await? {
            true => {
                let deleted = AuditEntry::new(AuditAction::ScheduleDeleted, Some(auth.0.id), id.0);
                crate::audit::record(&state, &auth, deleted).await;
                Ok(Deleted::Deleted)
            }
            false => Err(no_schedule(id.0)),
        }
    }

    /// Pause a schedule: it does not fire until resumed
    #[oai(
        path = "/schedules/:id/pause",
        method = "post",
        operation_id = "pauseSchedule"
    )]
    async fn pause(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<Schedule>, ApiError> {
        let record = match state
            .schedules
            .set_paused(auth.0.id, id.0, true, None)
            .await?
        {
            Some(paused) => {
                let entry = audited(AuditAction::SchedulePaused, &paused);
                crate::audit::record(&state, &auth, entry).await;
                paused
            }
            // Paused already (or no such schedule): nothing changes and nothing is recorded.
            None => state
                .schedules
                .get(Scope::Tenant(auth.0.id), id.0)
                .await?
                .ok_or_else(|| no_schedule(id.0))?,
        };
        Ok(Json(present(&state, record).await?))
    }

    /// Resume a schedule at its next slot after now
    #[oai(
        path = "/schedules/:id/resume",
        method = "post",
        operation_id = "resumeSchedule"
    )]
    async fn resume(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<Schedule>, ApiError> {
        let current = state
            .schedules
            .get(Scope::Tenant(auth.0.id), id.0)
            .await?
            .ok_or_else(|| no_schedule(id.0))?;
        let timing = Timing::parse(
            current.cron.as_deref(),
            current.time_zone.as_deref(),
            current.at,
            None,
        )
        .map_err(|invalid| ApiError::invalid(invalid.message))?;
        // A one-shot whose instant passed while paused does not fire any more.
        let next = timing.next_after(Utc::now());
        // Not paused: nothing to resume, the schedule stays as it is, and nothing is recorded.
        let record = match state
            .schedules
            .set_paused(auth.0.id, id.0, false, next)
            .await?
        {
            Some(resumed) => {
                let entry = audited(AuditAction::ScheduleResumed, &resumed);
                crate::audit::record(&state, &auth, entry).await;
                resumed
            }
            None => current,
        };
        Ok(Json(present(&state, record).await?))
    }
}
