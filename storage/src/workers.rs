//! The worker registry: one row per worker process start, heartbeated while it runs and kept
//! after it stops, so the dashboard can show offline workers and what each one did.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// How often a worker beats; it counts as offline after [`OFFLINE_AFTER_BEATS`] missed.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
pub const OFFLINE_AFTER_BEATS: u32 = 3;

/// A worker process as it registers itself.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub queues: Vec<String>,
    /// `{queue: jobs at once}`
    pub concurrency: Value,
}

/// What a heartbeat reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerCounts {
    /// Attempts this process finished, whatever the outcome.
    pub processed: i64,
    /// Of those, attempts that failed (retried or dead).
    pub failed: i64,
}

#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub queues: Vec<String>,
    pub concurrency: Value,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub heartbeat_age_seconds: f64,
    pub online: bool,
    pub stopped_at: Option<DateTime<Utc>>,
    pub processed: i64,
    pub failed: i64,
    /// The jobs the ledger shows running on this worker.
    pub active_jobs: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Workers {
    pool: PgPool,
}

/// How long after its last beat a worker counts as offline. `online` is computed in SQL, so
/// every reader agrees with Postgres's clock.
fn offline_after_secs() -> f64 {
    (HEARTBEAT_EVERY * OFFLINE_AFTER_BEATS).as_secs_f64()
}

impl Workers {
    pub fn new(pool: PgPool) -> Workers {
        Workers { pool }
    }

    pub async fn register(&self, worker: &WorkerInfo) -> sqlx::Result<()> {
        sqlx::query!(
            "INSERT INTO workers (name, host, pid, queues, concurrency) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
            worker.name,
            worker.host,
            worker.pid,
            &worker.queues,
            worker.concurrency,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that the worker is alive with these totals; with `stopping`, that it has
    /// stopped for good.
    pub async fn heartbeat(
        &self,
        name: &str,
        counts: WorkerCounts,
        stopping: bool,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE workers SET heartbeat_at = now(), processed = $2, failed = $3,
                                stopped_at = CASE WHEN $4 THEN now() ELSE stopped_at END
             WHERE name = $1",
            name,
            counts.processed,
            counts.failed,
            stopping,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Workers seen within `within`, online ones first, then newest first.
    pub async fn list(&self, within: Duration) -> sqlx::Result<Vec<WorkerRecord>> {
        sqlx::query_as!(
            WorkerRecord,
            r#"SELECT w.name, w.host, w.pid, w.queues, w.concurrency, w.started_at,
                      w.heartbeat_at,
                      EXTRACT(EPOCH FROM now() - w.heartbeat_at)::float8
                          AS "heartbeat_age_seconds!",
                      (w.stopped_at IS NULL
                       AND w.heartbeat_at > now() - make_interval(secs => $2)) AS "online!",
                      w.stopped_at, w.processed, w.failed,
                      COALESCE(r.ids, '{}') AS "active_jobs!"
               FROM workers w
               LEFT JOIN (SELECT worker, array_agg(id ORDER BY id) AS ids FROM jobs
                          WHERE state = 'running' GROUP BY worker) r ON r.worker = w.name
               WHERE w.heartbeat_at > now() - make_interval(secs => $1)
               ORDER BY "online!" DESC, w.started_at DESC"#,
            within.as_secs_f64(),
            offline_after_secs(),
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn online_count(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM workers
               WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)"#,
            offline_after_secs()
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Forgets workers not heard from for `age` (housekeeping).
    pub async fn forget_older_than(&self, age: Duration) -> sqlx::Result<u64> {
        let done = sqlx::query!(
            "DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1)",
            age.as_secs_f64(),
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
