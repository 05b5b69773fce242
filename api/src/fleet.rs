//! The fleet as operators see it: who is asking (`/v1/me`), queues with their depth,
//! throughput and pauses, and the worker registry.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use serde_json::Value;
use taskfleet_jobs::{AuditAction, Queue};
use taskfleet_storage::{AuditEntry, Lease, QueueStats, Role, Scope, WorkerRecord};
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, state::AppState};

/// How far back the worker list reaches for workers that stopped.
const WORKER_HISTORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug, Object)]
pub struct Me {
    /// The tenant the key belongs to.
    pub tenant: String,
    pub tenant_id: Uuid,
    /// `tenant` (its own jobs) or `operator` (every tenant, workers, queue pauses).
    pub role: String,
}

#[derive(Debug, Object)]
pub struct ThroughputMinute {
    pub minute: DateTime<Utc>,
    pub succeeded: i64,
    pub dead: i64,
    pub cancelled: i64,
}

#[derive(Debug, Object)]
pub struct QueueInfo {
    pub name: Queue,
    /// A paused queue accepts jobs but starts none until resumed.
    pub paused: bool,
    /// Jobs by state: every `scheduled`, `queued`, `running` and `retrying` job, and the
    /// `succeeded`, `dead` and `cancelled` ones that finished in the last 15 minutes (the
    /// sums of `throughput`; finished jobs are deleted after their retention, so the ledger
    /// has no lasting total to give). A tenant key counts its own.
    pub depth: BTreeMap<String, i64>,
    /// Jobs finished per minute over the last 15 minutes, oldest first.
    pub throughput: Vec<ThroughputMinute>,
    /// Dead among succeeded and dead over the last 15 minutes; absent when none finished.
    #[oai(nullable)]
    pub failure_rate: Option<f64>,
    /// 95th percentile of the time from due to start over the last 15 minutes.
    #[oai(nullable)]
    pub wait_p95_seconds: Option<f64>,
}

impl From<QueueStats> for QueueInfo {
    fn from(stats: QueueStats) -> QueueInfo {
        QueueInfo {
            name: stats.queue,
            paused: stats.paused,
            depth: stats
                .depth
                .into_iter()
                .map(|(state, n)| (state.as_str().to_owned(), n))
                .collect(),
            throughput: stats
                .throughput
                .into_iter()
                .map(|m| ThroughputMinute {
                    minute: m.minute,
                    succeeded: m.succeeded,
                    dead: m.dead,
                    cancelled: m.cancelled,
                })
                .collect(),
            failure_rate: stats.failure_rate,
            wait_p95_seconds: stats.wait_p95_seconds,
        }
    }
}

#[derive(Debug, Object)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

#[derive(Debug, Object)]
pub struct Worker {
    /// Unique per process start: `host-pid-nonce`.
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub queues: Vec<String>,
    /// Jobs at once, by queue.
    pub concurrency: Value,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub heartbeat_age_seconds: f64,
    /// Heartbeating and not stopped.
    pub online: bool,
    /// Holds the leader lease: runs the dispatcher, reclaimer, scheduler and housekeeping.
    pub leader: bool,
    /// Jobs the ledger shows running on this worker.
    pub active_jobs: Vec<Uuid>,
    /// Attempts finished (any outcome) and, of those, failed.
    pub processed: i64,
    pub failed: i64,
    #[oai(nullable)]
    pub stopped_at: Option<DateTime<Utc>>,
}

impl Worker {
    fn from_record(record: WorkerRecord, leader: Option<&str>) -> Worker {
        Worker {
            leader: record.online && leader == Some(record.name.as_str()),
            name: record.name,
            host: record.host,
            pid: record.pid,
            queues: record.queues,
            concurrency: record.concurrency,
            started_at: record.started_at,
            last_heartbeat_at: record.heartbeat_at,
            heartbeat_age_seconds: record.heartbeat_age_seconds,
            online: record.online,
            active_jobs: record.active_jobs,
            processed: record.processed,
            failed: record.failed,
            stopped_at: record.stopped_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct WorkerList {
    /// Online first, then newest first; stopped workers stay listed for a day.
    pub workers: Vec<Worker>,
}

pub(crate) fn operator_only(auth: &TenantKey) -> Result<(), ApiError> {
    match auth.0.role {
        Role::Operator => Ok(()),
        Role::Tenant | Role::Reader => Err(ApiError::forbidden("this needs an operator key")),
    }
}

fn queue_named(name: &str) -> Result<Queue, ApiError> {
    name.parse::<Queue>()
        .map_err(|err| ApiError::not_found(err.to_string()))
}

pub struct FleetApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Fleet")]
impl FleetApi {
    /// Who this key is
    #[oai(path = "/me", method = "get", operation_id = "getMe")]
    async fn me(&self, auth: TenantKey) -> Result<Json<Me>, ApiError> {
        Ok(Json(Me {
            tenant: auth.0.name,
            tenant_id: auth.0.id,
            role: auth.0.role.as_str().to_owned(),
        }))
    }

    /// Queues: depth by state, recent throughput, failure rate, wait p95, paused
    ///
    /// Read from the ledger: live jobs counted exactly, finished ones over the last 15
    /// minutes. A tenant key sees its own jobs' numbers; an operator key the whole fleet's.
    #[oai(path = "/queues", method = "get", operation_id = "listQueues")]
    async fn queues(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
    ) -> Result<Json<QueueList>, ApiError> {
        let stats = state.queues.stats(auth.0.scope()).await?;
        Ok(Json(QueueList {
            queues: stats.into_iter().map(QueueInfo::from).collect(),
        }))
    }

    /// Pause a queue (operator)
    ///
    /// Jobs are still accepted; none of the queue's jobs starts until it is resumed. Jobs
    /// already running finish.
    #[oai(
        path = "/queues/:name/pause",
        method = "post",
        operation_id = "pauseQueue"
    )]
    async fn pause(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        name: Path<String>,
    ) -> Result<Json<QueueInfo>, ApiError> {
        set_paused(&state, &auth, &name.0, true).await
    }

    /// Resume a paused queue (operator)
    #[oai(
        path = "/queues/:name/resume",
        method = "post",
        operation_id = "resumeQueue"
    )]
    async fn resume(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        name: Path<String>,
    ) -> Result<Json<QueueInfo>, ApiError> {
        set_paused(&state, &auth, &name.0, false).await
    }

    /// Worker processes (operator)
    ///
    /// From the worker registry in the ledger: online workers and those stopped within a
    /// day, with their queues, concurrency, heartbeat age, running jobs and totals.
    #[oai(path = "/workers", method = "get", operation_id = "listWorkers")]
    async fn workers(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
    ) -> Result<Json<WorkerList>, ApiError> {
        operator_only(&auth)?;
        let records = state.workers.list(WORKER_HISTORY).await?;
        let leader = match Lease::holder(&mut state.redis.clone(), &state.keys.leader_lease()).await
        {
            Ok(holder) => holder,
            Err(err) => {
                tracing::warn!(%err, "could not read the leader lease");
                None
            }
        };
        Ok(Json(WorkerList {
            workers: records
                .into_iter()
                .map(|record| Worker::from_record(record, leader.as_deref()))
                .collect(),
        }))
    }
}

async fn set_paused(
    state: &AppState,
    auth: &TenantKey,
    name: &str,
    paused: bool,
) -> Result<Json<QueueInfo>, ApiError> {
    operator_only(auth)?;
    let queue = queue_named(name)?;
    let actor = format!("api:{}", auth.0.name);
    // Pausing a paused queue, or resuming a running one, changes nothing and records nothing.
    if state.queues.set_paused(queue, paused, &actor).await? {
        let action = match paused {
            true => AuditAction::QueuePaused,
            false => AuditAction::QueueResumed,
        };
        crate::audit::record(state, auth, AuditEntry::new(action, None, queue.as_str())).await;
        if !paused {
            state.wake_dispatcher();
        }
    }
    let stats = state.queues.stats(Scope::All).await?;
    let info = stats
        .into_iter()
        .find(|stats| stats.queue == queue)
        .expect("stats cover every queue");
    Ok(Json(info.into()))
}
