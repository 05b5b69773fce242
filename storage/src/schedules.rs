//! Schedules: stored timing and target job, the slot they fire next, and their firings.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, postgres::PgListener};
use uuid::Uuid;

use crate::tenants::Scope;

#[derive(Debug, Clone)]
pub struct ScheduleRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub target: Value,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub missed: String,
    pub paused: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The channel notified when schedules or queue pauses change (migration 0010).
const CHANGED_CHANNEL: &str = "taskfleet_schedules_changed";

/// A schedule's definition, as created or replaced.
#[derive(Debug, Clone)]
pub struct ScheduleDefinition {
    pub name: String,
    pub target: Value,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub missed: String,
    pub next_fire_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub schedule_id: Uuid,
    pub fire_at: DateTime<Utc>,
    pub job_id: Uuid,
    pub catch_up: bool,
    pub fired_at: DateTime<Utc>,
}

/// A schedule moved on by the scheduler from slot `from` to `next`, dropping the missed slots
/// `skipped` counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub id: Uuid,
    pub from: DateTime<Utc>,
    pub next: Option<DateTime<Utc>>,
    pub skipped: Option<Skipped>,
}

/// Missed slots dropped by a `skip` schedule, or by a `catch_up_once` one before the slot it
/// fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skipped {
    pub count: i64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// The latest unbroken run of schedulers, as recorded by their beats (migration 0015).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerBeat {
    pub running_since: DateTime<Utc>,
    pub beat_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("a schedule named `{0}` exists already")]
    NameTaken(String),
}

fn name_taken(err: sqlx::Error, name: &str) -> ScheduleError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ScheduleError::NameTaken(name.to_owned())
        }
        _ => ScheduleError::Db(err),
    }
}

#[derive(Debug, Clone)]
pub struct Schedules {
    pool: PgPool,
}

impl Schedules {
    pub fn new(pool: PgPool) -> Schedules {
        Schedules { pool }
    }

    pub async fn create(
        &self,
        tenant_id: Uuid,
        def: &ScheduleDefinition,
    ) -> Result<ScheduleRecord, ScheduleError> {
        sqlx::query_as!(
            ScheduleRecord,
            "INSERT INTO schedules (id, tenant_id, name, target, cron, time_zone, at, missed,
                                    next_fire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id, tenant_id, name, target, cron, time_zone, at, missed, paused,
                       next_fire_at, created_at, updated_at",
            Uuid::now_v7(),
            tenant_id,
            &def.name,
            &def.target,
            def.cron.as_deref(),
            def.time_zone.as_deref(),
            def.at,
            &def.missed,
            def.next_fire_at
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|err| name_taken(err, &def.name))
    }

    /// Replaces a schedule's definition (its firings stay).
    pub async fn replace(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        def: &ScheduleDefinition,
    ) -> Result<Option<ScheduleRecord>, ScheduleError> {
        sqlx::query_as!(
            ScheduleRecord,
            "UPDATE schedules SET name = $3, target = $4, cron = $5, time_zone = $6, at = $7,
                    missed = $8, next_fire_at = $9, updated_at = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING id, tenant_id, name, target, cron, time_zone, at, missed, paused,
                       next_fire_at, created_at, updated_at",
            tenant_id,
            id,
            &def.name,
            &def.target,
            def.cron.as_deref(),
            def.time_zone.as_deref(),
            def.at,
            &def.missed,
            def.next_fire_at
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| name_taken(err, &def.name))
    }

    /// A schedule in `scope` (the `schedule.fire` handler reads any tenant's).
    pub async fn get(&self, scope: Scope, id: Uuid) -> sqlx::Result<Option<ScheduleRecord>> {
        sqlx::query_as!(
            ScheduleRecord,
            "SELECT id, tenant_id, name, target, cron, time_zone, at, missed, paused,
                       next_fire_at, created_at, updated_at
             FROM schedules
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND id = $2",
            scope.tenant_id(),
            id
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// A page of schedules in `scope`, newest first, those created before `before` (a
    /// schedule id) when given.
    pub async fn list(
        &self,
        scope: Scope,
        before: Option<Uuid>,
        limit: i64,
    ) -> sqlx::Result<Vec<ScheduleRecord>> {
        sqlx::query_as!(
            ScheduleRecord,
            "SELECT id, tenant_id, name, target, cron, time_zone, at, missed, paused,
                       next_fire_at, created_at, updated_at
             FROM schedules
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            scope.tenant_id(),
            before,
            limit
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn delete(&self, tenant_id: Uuid, id: Uuid) -> sqlx::Result<bool> {
        let done = sqlx::query!(
            "DELETE FROM schedules WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Pauses, or resumes from `next_fire_at` (the next slot after now); `None` when there
    /// is no such schedule or it already is as asked.
    pub async fn set_paused(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        paused: bool,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> sqlx::Result<Option<ScheduleRecord>> {
        sqlx::query_as!(
            ScheduleRecord,
            "UPDATE schedules SET paused = $3, updated_at = now(),
                    next_fire_at = CASE WHEN $3 THEN next_fire_at ELSE $4 END
             -- Pausing a paused schedule, or resuming a running one, changes nothing (a
             -- running schedule's due slot stays).
             WHERE tenant_id = $1 AND id = $2 AND paused <> $3
             RETURNING id, tenant_id, name, target, cron, time_zone, at, missed, paused,
                       next_fire_at, created_at, updated_at",
            tenant_id,
            id,
            paused,
            next_fire_at
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// A page of unpaused schedules whose next slot is due at `now`, in `(next_fire_at, id)`
    /// order, those after `after` when given: a round pages past a schedule it could not
    /// move on instead of meeting it again.
    pub async fn due(
        &self,
        now: DateTime<Utc>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> sqlx::Result<Vec<ScheduleRecord>> {
        let (after_at, after_id) = after.unzip();
        sqlx::query_as!(
            ScheduleRecord,
            "SELECT id, tenant_id, name, target, cron, time_zone, at, missed, paused,
                       next_fire_at, created_at, updated_at
             FROM schedules
             WHERE NOT paused AND next_fire_at <= $1
               AND ($2::timestamptz IS NULL OR (next_fire_at, id) > ($2, $3::uuid))
             ORDER BY next_fire_at, id LIMIT $4",
            now,
            after_at,
            after_id,
            limit
        )
        .fetch_all(&self.pool)
        .await
    }

    /// How long until the earliest unpaused schedule's next slot, by the database's clock
    /// (zero when one is due); `None` when no schedule has a slot to come.
    pub async fn until_next_due(&self) -> sqlx::Result<Option<Duration>> {
        let seconds = sqlx::query_scalar!(
            "SELECT EXTRACT(EPOCH FROM min(next_fire_at) - now())::float8 FROM schedules
             WHERE NOT paused AND next_fire_at IS NOT NULL"
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// Listens for changes to schedules and queue pauses. (By value, for the reason
    /// [`crate::EventLog::listen_for_appends`] gives.)
    pub async fn listen_for_changes(self) -> sqlx::Result<PgListener> {
        crate::db::listen(&self.pool, CHANGED_CHANNEL).await
    }

    /// The database's clock, which `due` compares with.
    pub async fn now(&self) -> sqlx::Result<DateTime<Utc>> {
        sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
            .fetch_one(&self.pool)
            .await
    }

    /// The latest run of schedulers, if one ever ran.
    pub async fn last_beat(&self) -> sqlx::Result<Option<SchedulerBeat>> {
        sqlx::query_as!(
            SchedulerBeat,
            "SELECT running_since, beat_at FROM scheduler_clock"
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Records that a scheduler running without a break since `running_since` runs at `at`.
    pub async fn beat(&self, running_since: DateTime<Utc>, at: DateTime<Utc>) -> sqlx::Result<()> {
        sqlx::query!(
            "INSERT INTO scheduler_clock (running_since, beat_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE
                 SET running_since = EXCLUDED.running_since, beat_at = EXCLUDED.beat_at",
            running_since,
            at
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves schedules on, each unless someone else already did or it was paused meanwhile,
    /// and appends a `schedule_skipped` event for each moved one that dropped slots. One
    /// statement, however many schedules.
    pub async fn advance(&self, moves: &[Advance]) -> sqlx::Result<()> {
        let skipped = |field: fn(&Skipped) -> DateTime<Utc>| -> Vec<Option<DateTime<Utc>>> {
            moves
                .iter()
                .map(|m| m.skipped.as_ref().map(field))
                .collect()
        };
        let ids: Vec<Uuid> = moves.iter().map(|m| m.id).collect();
        let froms: Vec<DateTime<Utc>> = moves.iter().map(|m| m.from).collect();
        let nexts: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.next).collect();
        let counts: Vec<i64> = moves
            .iter()
            .map(|m| m.skipped.map_or(0, |s| s.count))
            .collect();
        sqlx::query!(
            r#"WITH input AS (
                   SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[],
                                        $4::int8[], $5::timestamptz[], $6::timestamptz[])
                       AS t(id, from_at, next_at, skipped, first_skipped, last_skipped)
               ), moved AS (
                   UPDATE schedules SET next_fire_at = input.next_at
                   FROM input
                   WHERE schedules.id = input.id AND schedules.next_fire_at = input.from_at
                     AND NOT schedules.paused
                   RETURNING schedules.id, schedules.tenant_id, schedules.missed, input.skipped,
                             input.first_skipped, input.last_skipped
               )
               INSERT INTO job_event_batches (n, entries)
               SELECT n, entries FROM job_event_batch(ARRAY(
                   SELECT ROW(tenant_id, NULL, 'schedule', 'schedule.fire', 'schedule_skipped',
                              'scheduler',
                              jsonb_build_object('schedule_id', id, 'policy', missed,
                                                 'skipped', skipped, 'first', first_skipped,
                                                 'last', last_skipped))::job_event_input
                   FROM moved WHERE skipped > 0 ORDER BY id))"#,
            &ids,
            &froms,
            &nexts as &[Option<DateTime<Utc>>],
            &counts,
            &skipped(|s| s.first) as &[Option<DateTime<Utc>>],
            &skipped(|s| s.last) as &[Option<DateTime<Utc>>]
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that slot `fire_at` created `job_id`; false if the slot had fired already.
    pub async fn record_firing(
        &self,
        schedule_id: Uuid,
        fire_at: DateTime<Utc>,
        job_id: Uuid,
        catch_up: bool,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query!(
            "INSERT INTO schedule_firings (schedule_id, fire_at, job_id, catch_up)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            schedule_id,
            fire_at,
            job_id,
            catch_up
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The job a slot created, if it fired.
    pub async fn firing(
        &self,
        schedule_id: Uuid,
        fire_at: DateTime<Utc>,
    ) -> sqlx::Result<Option<Uuid>> {
        sqlx::query_scalar!(
            "SELECT job_id FROM schedule_firings WHERE schedule_id = $1 AND fire_at = $2",
            schedule_id,
            fire_at
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// The latest `limit` firings of each of `schedules`, newest first, in one statement.
    pub async fn latest_firings(
        &self,
        schedules: &[Uuid],
        limit: i64,
    ) -> sqlx::Result<Vec<Firing>> {
        sqlx::query_as!(
            Firing,
            r#"SELECT schedule.id AS "schedule_id!", f.fire_at, f.job_id, f.catch_up, f.fired_at
             FROM UNNEST($1::uuid[]) AS schedule(id)
             CROSS JOIN LATERAL (
                 SELECT fire_at, job_id, catch_up, fired_at FROM schedule_firings
                 WHERE schedule_id = schedule.id ORDER BY fire_at DESC LIMIT $2
             ) AS f
             ORDER BY schedule.id, f.fire_at DESC"#,
            schedules,
            limit
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Appends a schedule event (`schedule_fired`, `schedule_skipped`).
    pub async fn record_event(
        &self,
        schedule: &ScheduleRecord,
        event: taskfleet_jobs::EventName,
        job_id: Option<Uuid>,
        details: Value,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "INSERT INTO job_event_batches (n, entries)
             SELECT n, entries FROM job_event_batch(ARRAY[
                 ROW($1::uuid, $2::uuid, 'schedule', 'schedule.fire', $3::text, 'scheduler',
                     $4::jsonb)::job_event_input])",
            schedule.tenant_id,
            job_id,
            event.as_str(),
            details
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
