//! `schedule.fire`: materialise one firing of a schedule into its target job, exactly once
//! per `(schedule_id, fire_at)`. The target job's idempotency key is derived from the slot, so
//! however many fire jobs or deliveries race (two leaders overlapping, a redelivery), one
//! target job exists per slot.

use serde_json::json;
use taskfleet_jobs::{EventName, JobSpec, spec::ScheduleFire};
use taskfleet_storage::{InsertError, Inserted, NewJob, Scope};

use super::{HandlerResult, JobContext, JobFailure};

pub async fn fire(job: &ScheduleFire, ctx: &JobContext) -> HandlerResult {
    let store = err("read the schedule");
    let Some(schedule) = ctx
        .services
        .schedules
        .get(Scope::All, job.schedule_id)
        .await
        .map_err(store)?
    else {
        return Err(JobFailure::permanent("the schedule was deleted"));
    };
    // A fire job only ever fires its own tenant's schedule.
    if schedule.tenant_id != ctx.tenant_id {
        return Err(JobFailure::permanent(
            "the schedule belongs to another tenant",
        ));
    }
    // The firing record is the guard that outlives idempotency keys: a slot that fired
    // keeps its one job, however late a repeat of its fire job runs.
    if let Some(job_id) = ctx
        .services
        .schedules
        .firing(schedule.id, job.fire_at)
        .await
        .map_err(err("read the firing"))?
    {
        return Ok(json!({ "job_id": job_id, "created": false, "fire_at": job.fire_at }));
    }
    if schedule.paused {
        return Ok(json!({ "skipped": "the schedule is paused", "fire_at": job.fire_at }));
    }
    let mut target: JobSpec = serde_json::from_value(schedule.target.clone()).map_err(|e| {
        JobFailure::permanent(format!("the schedule's target does not decode: {e}"))
    })?;
    target.options_mut().idempotency_key = Some(taskfleet_jobs::schedule::target_key(
        schedule.id,
        job.fire_at,
    ));
    target.options_mut().run_at = None;
    let created = ctx
        .ledger
        .insert(
            schedule.tenant_id,
            &[NewJob::new(target, ctx.request_id.clone())],
            &ctx.worker,
        )
        .await;
    let (job_id, created) = match created {
        Ok(mut inserted) => match inserted.remove(0) {
            Inserted::Created(record) => (record.id, true),
            Inserted::Existing(record) => (record.id, false),
        },
        // The schedule's target changed after this slot's job was created: that job stands.
        Err(InsertError::IdempotencyConflict { existing, .. }) => (existing, false),
        Err(other) => {
            return Err(JobFailure::retryable(format!(
                "could not create the job: {other}"
            )));
        }
    };
    let first = ctx
        .services
        .schedules
        .record_firing(schedule.id, job.fire_at, job_id, job.catch_up)
        .await
        .map_err(err("record the firing"))?;
    if first {
        let details =
            json!({"schedule_id": schedule.id, "fire_at": job.fire_at, "catch_up": job.catch_up});
        ctx.services
            .schedules
            .record_event(&schedule, EventName::ScheduleFired, Some(job_id), details)
            .await
            .map_err(err("record the firing event"))?;
        ctx.wake_dispatcher().await;
    }
    Ok(json!({ "job_id": job_id, "created": created && first, "fire_at": job.fire_at }))
}

fn err(what: &'static str) -> impl Fn(sqlx::Error) -> JobFailure {
    move |e| JobFailure::retryable(format!("could not {what}: {e}"))
}
