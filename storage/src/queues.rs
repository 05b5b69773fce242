//! Queue-level views of the ledger: how many jobs sit in each state, what finished in the
//! last minutes, how long jobs waited, and operator pauses.
//!
//! Every figure reads a bounded part of the ledger (ADR 0013): live jobs are counted exactly,
//! as the backlog bounds them, and finished ones only over the last [`STATS_MINUTES`]
//! minutes, so a scrape costs the same whatever history the ledger keeps.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;
use taskfleet_jobs::{EventName, JobState, Queue};

use crate::{events::append_events, tenants::Scope};

/// How far back throughput, failure rate, wait time and the counts of finished jobs look.
pub const STATS_MINUTES: i64 = 15;

/// The states a job ends in; the others are live.
const FINISHED: [JobState; 3] = [JobState::Succeeded, JobState::Dead, JobState::Cancelled];

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
        let names: Vec<String> = sqlx::query_scalar("SELECT queue FROM queue_pauses")
            .fetch_all(&self.pool)
            .await?;
        Ok(names.iter().filter_map(|name| name.parse().ok()).collect())
    }

    /// Pauses or resumes `queue`, recording `queue_paused` or `queue_resumed` when it
    /// changed. Returns whether it changed.
    pub async fn set_paused(&self, queue: Queue, paused: bool, actor: &str) -> sqlx::Result<bool> {
        let (change, event) = if paused {
            (
                "INSERT INTO queue_pauses (queue, paused_by) VALUES ($1, $2)
                 ON CONFLICT (queue) DO NOTHING RETURNING queue",
                EventName::QueuePaused,
            )
        } else {
            (
                "DELETE FROM queue_pauses WHERE queue = $1 AND $2::text IS NOT NULL
                 RETURNING queue",
                EventName::QueueResumed,
            )
        };
        let sql = format!(
            "WITH changed AS ({change}), events AS ({events})
             SELECT count(*) FROM changed",
            events = append_events(&format!(
                "SELECT NULL::uuid AS tenant_id, NULL::uuid AS job_id, queue, NULL::text AS kind,
                        '{event}' AS event, $2 AS actor, '{{}}'::jsonb AS details
                 FROM changed"
            )),
        );
        let changed: i64 = sqlx::query_scalar(&sql)
            .bind(queue.as_str())
            .bind(actor)
            .fetch_one(&self.pool)
            .await?;
        Ok(changed > 0)
    }

    /// Every queue's statistics over the jobs in `scope`.
    pub async fn stats(&self, scope: Scope) -> sqlx::Result<Vec<QueueStats>> {
        let condition = scope.condition("$1");
        let tenant = scope.tenant_id();
        let finished = sql_list(FINISHED);
        let live = sql_list(JobState::ALL.into_iter().filter(|s| !FINISHED.contains(s)));
        let depths: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "SELECT queue, state, count(*) FROM jobs
             WHERE {condition} AND state IN ({live}) GROUP BY queue, state"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?;
        let first_minute = now.duration_trunc(TimeDelta::minutes(1)).expect("minute")
            - TimeDelta::minutes(STATS_MINUTES - 1);
        let minutes: Vec<(String, DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT queue, date_trunc('minute', finished_at) AS minute,
                    count(*) FILTER (WHERE state = 'succeeded'),
                    count(*) FILTER (WHERE state = 'dead'),
                    count(*) FILTER (WHERE state = 'cancelled')
             FROM jobs
             WHERE {condition} AND state IN ({finished}) AND finished_at >= $2
             GROUP BY 1, 2"
        ))
        .bind(tenant)
        .bind(first_minute)
        .fetch_all(&self.pool)
        .await?;
        let waits: Vec<(String, Option<f64>)> = sqlx::query_as(&format!(
            "SELECT queue, percentile_cont(0.95) WITHIN GROUP (
                        ORDER BY EXTRACT(EPOCH FROM started_at - run_at)::float8)
             FROM jobs
             WHERE {condition} AND state IN ({finished}) AND finished_at >= $2
               AND started_at IS NOT NULL AND started_at >= run_at
             GROUP BY queue"
        ))
        .bind(tenant)
        .bind(first_minute)
        .fetch_all(&self.pool)
        .await?;
        let paused = self.paused().await?;

        let waits: HashMap<String, Option<f64>> = waits.into_iter().collect();
        Ok(Queue::ALL
            .into_iter()
            .map(|queue| {
                let throughput: Vec<Minute> = (0..STATS_MINUTES)
                    .map(|i| {
                        let minute = first_minute + TimeDelta::minutes(i);
                        minutes
                            .iter()
                            .find(|row| row.0 == queue.as_str() && row.1 == minute)
                            .map_or(
                                Minute {
                                    minute,
                                    ..Minute::default()
                                },
                                |&(_, minute, succeeded, dead, cancelled)| Minute {
                                    minute,
                                    succeeded,
                                    dead,
                                    cancelled,
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
                                .find(|row| row.0 == queue.as_str() && row.1 == live.as_str())
                                .map_or(0, |row| row.2),
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

/// `states` as the items of an SQL `IN` list. Written into statements rather than bound, so
/// that every plan knows how few rows the list selects.
fn sql_list(states: impl IntoIterator<Item = JobState>) -> String {
    let quoted: Vec<String> = states.into_iter().map(|s| format!("'{s}'")).collect();
    quoted.join(", ")
}
