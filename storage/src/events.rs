//! The event log read as a stream. The ledger's state changes append their events to
//! `job_event_batches` (in the same statements, one row a statement); the leader's sequencer
//! then moves each committed event into `job_events` with a dense `seq` (1, 2, 3, …) in the
//! order events become visible (a job's own events in the order they happened), which
//! streams use as the SSE `id`. Because `seq` has no gaps, a reader that knows numbering has
//! reached `n` reads everything after the last event it has up to `n` here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, postgres::PgListener};
use taskfleet_jobs::EventName;
use uuid::Uuid;

use crate::tenants::Scope;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub ts: DateTime<Utc>,
    pub tenant_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub event: String,
    pub actor: String,
    pub details: Value,
}

/// The channel every statement appending events notifies when it commits (migration 0010).
const APPENDED_CHANNEL: &str = "taskfleet_events_appended";

/// Which events a stream wants. Empty lists and `None` mean all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub job_id: Option<Uuid>,
    pub queues: Vec<String>,
    pub kinds: Vec<String>,
    pub events: Vec<String>,
}

impl EventFilter {
    /// Whether `event` is one `scope` may see and this filter wants. Fleet events (no
    /// tenant) are visible to operators only.
    pub fn matches(&self, scope: Scope, event: &EventRecord) -> bool {
        let any = |wanted: &[String], value: &Option<String>| {
            wanted.is_empty() || value.as_ref().is_some_and(|v| wanted.contains(v))
        };
        scope.covers(event.tenant_id)
            && self.job_id.is_none_or(|id| event.job_id == Some(id))
            && any(&self.queues, &event.queue)
            && any(&self.kinds, &event.kind)
            && (self.events.is_empty() || self.events.contains(&event.event))
    }
}

/// What one [`EventLog::sequence`] round numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    pub count: usize,
    /// The highest `seq` it gave; `None` when it numbered nothing.
    pub last_seq: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct EventLog {
    pool: PgPool,
}

impl EventLog {
    pub fn new(pool: PgPool) -> EventLog {
        EventLog { pool }
    }

    /// Moves about `limit` committed events (whole batches, at least one) from
    /// `job_event_batches` into `job_events`, oldest first, giving them the next `seq` numbers;
    /// a count of at least `limit` means more may wait. Each event is written once with its
    /// number (no update through every index). Only the count and the highest number come
    /// back: readers that want the events read them by `seq` (relaying every event through
    /// the sequencer would load the hot path, ADR 0007). An advisory lock keeps two
    /// sequencers (two leaders overlapping during a hand-over) from numbering at the same
    /// time; the second waits, then no longer sees what the first moved.
    pub async fn sequence(&self, limit: i64) -> sqlx::Result<Numbered> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('taskfleet.event_sequencer'))")
            .execute(&mut *tx)
            .await?;
        let numbered = sqlx::query!(
            r#"WITH top AS (SELECT COALESCE(max(seq), 0) AS base FROM job_events),
             taken AS (
                 DELETE FROM job_event_batches
                 -- An array, not `IN (subquery)`: that became a hash join reading the whole
                 -- table, so rounds slowed as a burst's events piled up. Batches are taken
                 -- while the events before them number fewer than the limit.
                 WHERE id = ANY (ARRAY(
                     SELECT id FROM (SELECT id, sum(n) OVER (ORDER BY id) - n AS before
                                     FROM job_event_batches ORDER BY id LIMIT $1) AS b
                     WHERE before < $1))
                 RETURNING ts, entries
             ),
             numbered AS (
                 INSERT INTO job_events (seq, id, ts, tenant_id, job_id, queue, kind, event,
                                         actor, details)
                 SELECT top.base + row_number() OVER (ORDER BY e.id), e.id, taken.ts,
                        e.tenant_id, e.job_id, e.queue, e.kind, e.event, e.actor, e.details
                 FROM taken CROSS JOIN LATERAL unnest(taken.entries) AS e, top
                 RETURNING seq
             )
             SELECT count(*) AS "count!", max(seq) AS last_seq FROM numbered"#,
            limit
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Numbered {
            count: numbered.count as usize,
            last_seq: numbered.last_seq,
        })
    }

    /// Listens for commits that appended events: each notification means something may
    /// wait for its number. (Takes the log by value so that the future owns its pool and can
    /// run in a task of its own, as the worker's `notifications::woken_by` runs it.)
    pub async fn listen_for_appends(self) -> sqlx::Result<PgListener> {
        crate::db::listen(&self.pool, APPENDED_CHANNEL).await
    }

    /// The latest numbered event of a job in `scope`.
    pub async fn latest_of_job(
        &self,
        scope: Scope,
        job_id: Uuid,
    ) -> sqlx::Result<Option<EventRecord>> {
        sqlx::query_as!(
            EventRecord,
            r#"SELECT seq, ts, tenant_id, job_id, queue, kind, event, actor, details
               FROM job_events
               WHERE ($1::uuid IS NULL OR tenant_id = $1) AND job_id = $2
               ORDER BY seq DESC LIMIT 1"#,
            scope.tenant_id(),
            job_id
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// The highest `seq` given so far.
    pub async fn latest_seq(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar!(r#"SELECT COALESCE(max(seq), 0) AS "seq!" FROM job_events"#)
            .fetch_one(&self.pool)
            .await
    }

    /// Events of every tenant after `seq`, in order: what the API's event hub broadcasts.
    pub async fn all_after(&self, seq: i64, limit: i64) -> sqlx::Result<Vec<EventRecord>> {
        sqlx::query_as!(
            EventRecord,
            "SELECT seq, ts, tenant_id, job_id, queue, kind, event, actor, details
             FROM job_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            seq,
            limit
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The events in `scope` after `seq` that pass `filter`, in order: replays what a stream
    /// client missed.
    pub async fn after(
        &self,
        scope: Scope,
        seq: i64,
        filter: &EventFilter,
        limit: i64,
    ) -> sqlx::Result<Vec<EventRecord>> {
        sqlx::query_as!(
            EventRecord,
            "SELECT seq, ts, tenant_id, job_id, queue, kind, event, actor, details
             FROM job_events
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND seq > $2
               AND ($3::uuid IS NULL OR job_id = $3)
               AND (cardinality($4::text[]) = 0 OR queue = ANY($4))
               AND (cardinality($5::text[]) = 0 OR kind = ANY($5))
               AND (cardinality($6::text[]) = 0 OR event = ANY($6))
             ORDER BY seq LIMIT $7",
            scope.tenant_id(),
            seq,
            filter.job_id,
            &filter.queues,
            &filter.kinds,
            &filter.events,
            limit
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Appends an event about the fleet itself (no tenant, no job).
    pub async fn record_fleet(
        &self,
        event: EventName,
        actor: &str,
        details: Value,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "INSERT INTO job_event_batches (n, entries)
             SELECT n, entries FROM job_event_batch(ARRAY[
                 ROW(NULL, NULL, NULL, NULL, $1::text, $2::text, $3::jsonb)::job_event_input])",
            event.as_str(),
            actor,
            details
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
