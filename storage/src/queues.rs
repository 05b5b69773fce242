//! Queue-level views of the ledger: how many jobs sit in each state, what finished in the
//! last minutes, how long jobs waited, and operator pauses.
//!
//! Every figure reads a bounded part of the ledger (ADR 0013): live jobs are counted exactly,
//! as the backlog bounds them, and finished ones only over the last [`STATS_MINUTES`]
//! minutes, so a scrape costs the same whatever history the ledger keeps.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;
use taskfleet_jobs::{JobState, Queue};

use crate::tenants::Scope;

/// How far back throughput, failure rate, wait time and the counts of finished jobs look.
pub const STATS_MINUTES: i64 = 15;

/// Jobs finished in one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub succeeded: i64,
    pub dead: i64,
    pub cancelled: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub queue: Queue,
    pub paused: bool,
    /// Jobs by state, in [`JobState::ALL`] order, zeros included: every live job, and the
    /// jobs that finished in the last [`STATS_MINUTES`] minutes (the sums of `throughput`).
    pub depth: Vec<(JobState, i64)>,
    /// The last [`STATS_MINUTES`] minutes, oldest first, zeros included.
    pub throughput: Vec<Minute>,
    /// Dead among succeeded and dead over the window; `None` when nothing finished.
    pub failure_rate: Option<f64>,
    /// 95th percentile of due-to-start time over the window; `None` when nothing finished.
    pub wait_p95_seconds: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Queues {
    pool: PgPool,
}

impl Queues {
    pub fn new(pool: PgPool) -> Queues {
        Queues { pool }
    }

    /// The paused queues.
    pub async fn paused(&self) -> sqlx::Result<Vec<Queue>> {
        let names = sqlx::query_scalar!("SELECT queue FROM queue_pauses")
            .fetch_all(&self.pool)
            .await?;
        Ok(names.iter().filter_map(|name| name.parse().ok()).collect())
    }

    /// Pauses or resumes `queue`, recording `queue_paused` or `queue_resumed` when it
    /// changed. Returns whether it changed.
    pub async fn set_paused(&self, queue: Queue, paused: bool, actor: &str) -> sqlx::Result<bool> {
        // One of the two changes runs, as `$3` says.
        let changed = sqlx::query_scalar!(
            r#"WITH paused AS (
                   INSERT INTO queue_pauses (queue, paused_by) SELECT $1, $2 WHERE $3
                   ON CONFLICT (queue) DO NOTHING RETURNING queue, 'queue_paused' AS event
               ), resumed AS (
                   DELETE FROM queue_pauses WHERE queue = $1 AND NOT $3
                   RETURNING queue, 'queue_resumed' AS event
               ), changed AS (
                   SELECT * FROM paused UNION ALL SELECT * FROM resumed
               ), events AS (
                   INSERT INTO job_event_batches (n, entries)
                   SELECT n, entries FROM job_event_batch(ARRAY(
                       SELECT ROW(NULL, NULL, queue, NULL, event, $2, '{}')::job_event_input
                       FROM changed))
               )
               SELECT count(*) AS "count!" FROM changed"#,
            queue.as_str(),
            actor,
            paused
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(changed > 0)
    }

    /// Every queue's statistics over the jobs in `scope`.
    pub async fn stats(&self, scope: Scope) -> sqlx::Result<Vec<QueueStats>> {
        // The state lists are written into the statements, not bound, so that every plan
        // knows how few rows they select.
        let tenant = scope.tenant_id();
        let depths = sqlx::query!(
            r#"SELECT queue, state, count(*) AS "count!" FROM jobs
               WHERE ($1::uuid IS NULL OR tenant_id = $1)
                 AND state IN ('scheduled', 'queued', 'running', 'retrying')
               GROUP BY queue, state"#,
            tenant
        )
        .fetch_all(&self.pool)
        .await?;
        let now = sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
            .fetch_one(&self.pool)
            .await?;
        let first_minute = now.duration_trunc(TimeDelta::minutes(1)).expect("minute")
            - TimeDelta::minutes(STATS_MINUTES - 1);
        let minutes = sqlx::query!(
            r#"SELECT queue, date_trunc('minute', finished_at) AS "minute!",
                      count(*) FILTER (WHERE state = 'succeeded') AS "succeeded!",
                      count(*) FILTER (WHERE state = 'dead') AS "dead!",
                      count(*) FILTER (WHERE state = 'cancelled') AS "cancelled!"
               FROM jobs
               WHERE ($1::uuid IS NULL OR tenant_id = $1)
                 AND state IN ('succeeded', 'dead', 'cancelled') AND finished_at >= $2
               GROUP BY 1, 2"#,
            tenant,
            first_minute
        )
        .fetch_all(&self.pool)
        .await?;
        let waits = sqlx::query!(
            "SELECT queue, percentile_cont(0.95) WITHIN GROUP (
                        ORDER BY EXTRACT(EPOCH FROM started_at - run_at)::float8) AS p95
             FROM jobs
             WHERE ($1::uuid IS NULL OR tenant_id = $1)
               AND state IN ('succeeded', 'dead', 'cancelled') AND finished_at >= $2
               AND started_at IS NOT NULL AND started_at >= run_at
             GROUP BY queue",
            tenant,
            first_minute
        )
        .fetch_all(&self.pool)
        .await?;
        let paused = self.paused().await?;

        let waits: HashMap<String, Option<f64>> =
            waits.into_iter().map(|row| (row.queue, row.p95)).collect();
        Ok(Queue::ALL
            .into_iter()
            .map(|queue| {
                let throughput: Vec<Minute> = (0..STATS_MINUTES)
                    .map(|i| {
                        let minute = first_minute + TimeDelta::minutes(i);
                        minutes
                            .iter()
                            .find(|row| row.queue == queue.as_str() && row.minute == minute)
                            .map_or(
                                Minute {
                                    minute,
                                    ..Minute::default()
                                },
                                |row| Minute {
                                    minute,
                                    succeeded: row.succeeded,
                                    dead: row.dead,
                                    cancelled: row.cancelled,
                                },
                            )
                    })
                    .collect();
                let finished = |count: fn(&Minute) -> i64| throughput.iter().map(count).sum();
                let (succeeded, dead): (i64, i64) =
                    (finished(|m| m.succeeded), finished(|m| m.dead));
                let depth = JobState::ALL
                    .into_iter()
                    .map(|state| {
                        let n = match state {
                            JobState::Succeeded => succeeded,
                            JobState::Dead => dead,
                            JobState::Cancelled => finished(|m| m.cancelled),
                            live => depths
                                .iter()
                                .find(|row| {
                                    row.queue == queue.as_str() && row.state == live.as_str()
                                })
                                .map_or(0, |row| row.count),
                        };
                        (state, n)
                    })
                    .collect();
                QueueStats {
                    queue,
                    paused: paused.contains(&queue),
                    depth,
                    throughput,
                    failure_rate: (succeeded + dead > 0)
                        .then(|| dead as f64 / (succeeded + dead) as f64),
                    wait_p95_seconds: waits.get(queue.as_str()).copied().flatten(),
                }
            })
            .collect())
    }
}
