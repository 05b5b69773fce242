//! The job cleaner: deletes finished jobs once their state's retention has passed, with
//! their events, events that belong to no job and the audit log's events once the longest
//! retention has passed, and trims each schedule's firings to its newest few (ADR 0013). The
//! leader runs a pass every housekeeping round.
//!
//! Everything goes in bounded batches, oldest first, so a large backlog (the first pass
//! after an upgrade, or after the leader was away) never holds locks or bloats one
//! transaction: a batch names at most `batch_size` rows through an index that starts where
//! the deletable rows start (`jobs_by_state` is `(state, finished_at)`), deletes them, and the
//! pass goes on while batches come back full, pausing between them so the hot path keeps
//! its share of Postgres.
//!
//! A job's events go with it: its numbered rows in `job_events`, and its entries still
//! waiting for a number in `job_event_batches`. One numbered event always stays, the newest,
//! whatever job it belongs to: the sequencer numbers on from the highest `seq`, and a `seq`
//! once streamed must never be handed out again.

use std::{ops::AddAssign, time::Duration};

use sqlx::PgPool;
use taskfleet_jobs::JobState;
use uuid::Uuid;

use crate::tenants::SYSTEM_TENANT;

/// How long each finished state is kept, and how the cleaner goes about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanerConfig {
    pub succeeded: Duration,
    pub cancelled: Duration,
    pub dead: Duration,
    /// The fleet's own `/readyz` probe jobs (tenant [`SYSTEM_TENANT`]), whatever their end:
    /// nobody reads them later.
    pub probes: Duration,
    /// Firings kept per schedule, the newest. A repeat of a slot's fire job that finds its
    /// firing gone is still stopped by the target job's idempotency key while that lasts.
    pub firings_per_schedule: i64,
    /// Most rows one statement deletes.
    pub batch_size: i64,
    /// The pause after a full batch, before the next.
    pub pause: Duration,
}

impl Default for CleanerConfig {
    fn default() -> CleanerConfig {
        const DAY: u64 = 24 * 3600;
        CleanerConfig {
            succeeded: Duration::from_secs(DAY),
            cancelled: Duration::from_secs(7 * DAY),
            dead: Duration::from_secs(30 * DAY),
            probes: Duration::from_secs(60),
            firings_per_schedule: 100,
            batch_size: 1_000,
            pause: Duration::from_millis(50),
        }
    }
}

/// Rows one batch, or a whole pass, deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub jobs: u64,
    /// Numbered events and entries still waiting for their number.
    pub events: u64,
    pub firings: u64,
    pub audit_events: u64,
}

impl AddAssign for Deleted {
    fn add_assign(&mut self, other: Deleted) {
        self.jobs += other.jobs;
        self.events += other.events;
        self.firings += other.firings;
        self.audit_events += other.audit_events;
    }
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub deleted: Deleted,
    /// Statements that deleted something.
    pub batches: u32,
}

/// Rows kept as long as the longest-kept jobs, whoever they concern.
#[derive(Debug, Clone, Copy)]
enum Aged {
    /// Events of no job: the fleet's own, queue pauses, a schedule's skipped slots.
    EventsWithoutJob,
    AuditEvents,
}

/// Which finished jobs a sweep deletes.
#[derive(Debug, Clone, Copy)]
enum Sweep {
    /// Every tenant's jobs that ended in this state.
    State(JobState, Duration),
    /// The probe tenant's jobs, whatever their end; found through the tenant's index, as
    /// they are few among all the jobs of a state.
    Probes(Uuid, Duration),
}

#[derive(Debug, Clone)]
pub struct JobCleaner {
    pool: PgPool,
    config: CleanerConfig,
}

impl JobCleaner {
    pub fn new(pool: PgPool, config: CleanerConfig) -> JobCleaner {
        JobCleaner { pool, config }
    }

    /// One pass: every sweep, then the firings, each batch after batch until one comes back
    /// short. `on_batch` hears of every batch as it is committed, so a pass cut short (the
    /// leader stepping down drops it) has still reported what it did.
    pub async fn run_once(&self, mut on_batch: impl FnMut(Deleted)) -> sqlx::Result<Cleaned> {
        let config = &self.config;
        let mut sweeps = vec![
            Sweep::State(JobState::Succeeded, config.succeeded),
            Sweep::State(JobState::Cancelled, config.cancelled),
            Sweep::State(JobState::Dead, config.dead),
        ];
        let probe_tenant: Option<Uuid> =
            sqlx::query_scalar!("SELECT id FROM tenants WHERE name = $1", SYSTEM_TENANT)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(tenant) = probe_tenant {
            sweeps.insert(0, Sweep::Probes(tenant, config.probes));
        }
        let mut cleaned = Cleaned::default();
        let mut record = |deleted: Deleted| {
            if deleted != Deleted::default() {
                cleaned.deleted += deleted;
                cleaned.batches += 1;
                on_batch(deleted);
            }
        };
        for sweep in sweeps {
            loop {
                let deleted = self.delete_jobs(sweep).await?;
                record(deleted);
                if (deleted.jobs as i64) < config.batch_size {
                    break;
                }
                tokio::time::sleep(config.pause).await;
            }
        }
        let longest = config.succeeded.max(config.cancelled).max(config.dead);
        for aged in [Aged::EventsWithoutJob, Aged::AuditEvents] {
            loop {
                let deleted = match aged {
                    Aged::EventsWithoutJob => Deleted {
                        events: self.delete_events_without_job(longest).await?,
                        ..Deleted::default()
                    },
                    Aged::AuditEvents => Deleted {
                        audit_events: self.delete_audit_events(longest).await?,
                        ..Deleted::default()
                    },
                };
                record(deleted);
                if ((deleted.events + deleted.audit_events) as i64) < config.batch_size {
                    break;
                }
                tokio::time::sleep(config.pause).await;
            }
        }
        let mut from = Uuid::nil();
        loop {
            let (firings, last) = self.trim_firings(from).await?;
            record(Deleted {
                firings,
                ..Deleted::default()
            });
            match last {
                // The last schedule touched may have more to trim: start again from it.
                Some(last) if firings as i64 >= config.batch_size => from = last,
                _ => break,
            }
            tokio::time::sleep(config.pause).await;
        }
        Ok(cleaned)
    }

    /// Deletes one batch of `sweep`'s jobs, oldest first, with their events.
    async fn delete_jobs(&self, sweep: Sweep) -> sqlx::Result<Deleted> {
        let mut tx = self.pool.begin().await?;
        // Each condition is checked again on the row as the delete finds it: a job retried
        // by hand meanwhile is no longer finished, or not for as long.
        let gone: Vec<Uuid> = match sweep {
            // A job whose idempotency key still answers for it stays until housekeeping
            // frees the key (`TASKFLEET_IDEMPOTENCY_RETENTION_SECS`): gone sooner, a retry
            // of the same request, or a late delivery of a schedule's firing, would make a
            // second job.
            Sweep::State(state, age) => {
                sqlx::query_scalar!(
                    "DELETE FROM jobs
                     WHERE id = ANY (ARRAY(
                         SELECT id FROM jobs
                         WHERE state = $1 AND finished_at < now() - make_interval(secs => $2)
                           AND idempotency_key IS NULL
                         ORDER BY finished_at LIMIT $3))
                       AND state = $1 AND finished_at < now() - make_interval(secs => $2)
                       AND idempotency_key IS NULL
                     RETURNING id",
                    state.as_str(),
                    age.as_secs_f64(),
                    self.config.batch_size
                )
                .fetch_all(&mut *tx)
                .await?
            }
            Sweep::Probes(tenant, age) => {
                sqlx::query_scalar!(
                    "DELETE FROM jobs
                     WHERE id = ANY (ARRAY(
                         SELECT id FROM jobs
                         WHERE tenant_id = $1 AND finished_at < now() - make_interval(secs => $2)
                         ORDER BY finished_at LIMIT $3))
                       AND tenant_id = $1 AND finished_at < now() - make_interval(secs => $2)
                     RETURNING id",
                    tenant,
                    age.as_secs_f64(),
                    self.config.batch_size
                )
                .fetch_all(&mut *tx)
                .await?
            }
        };
        if gone.is_empty() {
            return Ok(Deleted::default());
        }
        // Their events still waiting for a number leave their batches.
        let waiting = sqlx::query_scalar!(
            r#"WITH trimmed AS (
                   UPDATE job_event_batches b
                   SET entries = kept.entries, n = cardinality(kept.entries)
                   FROM (SELECT id, n,
                                ARRAY(SELECT e FROM unnest(entries) AS e
                                      WHERE e.job_id IS NULL
                                         OR e.job_id NOT IN (SELECT unnest($1::uuid[])))
                                    AS entries
                         FROM job_event_batches) AS kept
                   WHERE b.id = kept.id AND kept.n <> cardinality(kept.entries)
                   RETURNING kept.n - cardinality(kept.entries) AS removed
               )
               SELECT COALESCE(sum(removed), 0)::int8 AS "removed!" FROM trimmed"#,
            &gone
        )
        .fetch_one(&mut *tx)
        .await?;
        // A statement of its own, with a snapshot of its own: a sequencer round that took a
        // batch holding these jobs' events committed before the statement above could
        // change that batch (it waited for the round), and this one sees what it numbered.
        let numbered = sqlx::query!(
            "DELETE FROM job_events
             WHERE job_id = ANY($1) AND seq < (SELECT max(seq) FROM job_events)",
            &gone
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Deleted {
            jobs: gone.len() as u64,
            events: numbered + waiting as u64,
            ..Deleted::default()
        })
    }

    /// Deletes one batch of numbered events that belong to no job and are older than `age`,
    /// oldest first (one range of `job_events_without_job`, migration 0018). The newest event
    /// stays whatever its age, so no `seq` is ever given out twice.
    async fn delete_events_without_job(&self, age: Duration) -> sqlx::Result<u64> {
        let done = sqlx::query!(
            "DELETE FROM job_events
             WHERE seq = ANY (ARRAY(
                 SELECT seq FROM job_events
                 WHERE job_id IS NULL AND ts < now() - make_interval(secs => $1)
                 ORDER BY ts LIMIT $2))
               AND seq < (SELECT max(seq) FROM job_events)",
            age.as_secs_f64(),
            self.config.batch_size
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes one batch of audit events older than `age`, oldest first (one range of
    /// `audit_events_by_time`, migration 0020).
    async fn delete_audit_events(&self, age: Duration) -> sqlx::Result<u64> {
        let done = sqlx::query!(
            "DELETE FROM audit_events
             WHERE id = ANY (ARRAY(
                 SELECT id FROM audit_events
                 WHERE at < now() - make_interval(secs => $1)
                 ORDER BY at LIMIT $2))",
            age.as_secs_f64(),
            self.config.batch_size
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes one batch of firings beyond each schedule's newest
    /// [`CleanerConfig::firings_per_schedule`], going through schedules in id order from
    /// `from`; returns how many, and the last schedule it deleted from.
    async fn trim_firings(&self, from: Uuid) -> sqlx::Result<(u64, Option<Uuid>)> {
        let trimmed = sqlx::query!(
            r#"WITH old AS (
                 SELECT s.id AS schedule_id, o.fire_at
                 FROM schedules s CROSS JOIN LATERAL (
                     SELECT fire_at FROM schedule_firings
                     WHERE schedule_id = s.id
                     ORDER BY fire_at DESC OFFSET $1 LIMIT $3) AS o
                 WHERE s.id >= $2
                 ORDER BY s.id LIMIT $3
             ), gone AS (
                 DELETE FROM schedule_firings f USING old
                 WHERE f.schedule_id = old.schedule_id AND f.fire_at = old.fire_at
                 RETURNING f.schedule_id
             )
             SELECT count(*) AS "n!",
                    (SELECT schedule_id FROM gone ORDER BY 1 DESC LIMIT 1) AS last
             FROM gone"#,
            self.config.firings_per_schedule,
            from,
            self.config.batch_size
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((trimmed.n as u64, trimmed.last))
    }
}
