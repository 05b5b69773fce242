//! What every request handler shares.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redis::aio::ConnectionManager;
use taskfleet_jobs::Queue;
use taskfleet_storage::{
    Db, EventLog, GroupCommit, InsertError, Inserted, JobRecord, Ledger, NewJob, Queues, Schedules,
    Tenant, Tenants, Workers, group_commit::LINGER_WHILE_CALLERS_WAIT, redis as tf_redis,
    redis::Keys,
};
use taskfleet_telemetry::metrics;
use uuid::Uuid;

use crate::events::EventHub;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub ledger: Ledger,
    /// Inserts single jobs without an idempotency key, many requests' per statement; see
    /// [`submissions`].
    pub submissions: GroupCommit<(Uuid, NewJob), JobRecord>,
    pub schedules: Schedules,
    pub queues: Queues,
    pub workers: Workers,
    pub events: EventLog,
    /// Fans live events out to this process's SSE clients.
    pub hub: Arc<EventHub>,
    pub tenants: Tenants,
    pub redis: ConnectionManager,
    pub keys: Keys,
    /// The tenant that owns `/readyz` probe jobs.
    pub system_tenant: Tenant,
    pub ready_timeout: Duration,
    /// When the latest successful `/readyz` queue round trip ran.
    pub last_round_trip: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
    /// When `/metrics` last read its gauges from the ledger.
    pub ledger_gauges_at: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
    /// Admit the `fault` executor tool (tests only).
    pub fault_injection: bool,
}

impl AppState {
    /// Wakes the dispatcher without making the caller wait on Redis.
    pub fn wake_dispatcher(&self) {
        let (mut conn, keys) = (self.redis.clone(), self.keys.clone());
        tokio::spawn(
            async move { taskfleet_storage::redis::wake_dispatcher(&mut conn, &keys).await },
        );
    }
}

/// The group commit behind [`AppState::submissions`]: each item is a tenant and its job.
/// Jobs of queues whose Redis list holds fewer than `push_below` ids are pushed by the API
/// itself once their rows are in (a job due now, in a queue not paused): an idle fleet starts
/// them without waiting for a dispatcher round.
pub fn submissions(
    ledger: Ledger,
    redis: ConnectionManager,
    keys: Keys,
    push_below: i64,
) -> GroupCommit<(Uuid, NewJob), JobRecord> {
    GroupCommit::start(
        LINGER_WHILE_CALLERS_WAIT,
        move |batch: Arc<Vec<(Uuid, NewJob)>>| {
            let (ledger, mut redis, keys) = (ledger.clone(), redis.clone(), keys.clone());
            async move {
                let (tenants, jobs): (Vec<Uuid>, Vec<NewJob>) = batch.iter().cloned().unzip();
                let dispatch = room_to_push(&mut redis, &keys, &jobs, push_below).await;
                let inserted = ledger
                    .insert_for(&tenants, &jobs, &dispatch, "api")
                    .await
                    .map_err(|err| match err {
                        InsertError::Db(err) => err,
                        // Only jobs without an idempotency key come here; none can conflict.
                        other => sqlx::Error::Protocol(other.to_string()),
                    })?;
                let records: Vec<JobRecord> = inserted
                    .into_iter()
                    .map(|inserted| match inserted {
                        Inserted::Created(record) | Inserted::Existing(record) => record,
                    })
                    .collect();
                push_dispatched(&ledger, &mut redis, &keys, &records).await;
                Ok(records)
            }
        },
    )
}

/// Which of `jobs` may be pushed by the API: as many of each queue's as its list has room
/// for below `push_below`. None when Redis does not answer (the dispatcher will push them).
async fn room_to_push(
    redis: &mut ConnectionManager,
    keys: &Keys,
    jobs: &[NewJob],
    push_below: i64,
) -> Vec<bool> {
    let mut queues: Vec<Queue> = jobs.iter().map(|job| job.spec.queue()).collect();
    queues.sort();
    queues.dedup();
    let mut room: HashMap<Queue, i64> = match tf_redis::waiting(redis, keys, &queues).await {
        Ok(waiting) => queues
            .into_iter()
            .zip(waiting)
            .map(|(queue, waiting)| (queue, push_below - waiting))
            .collect(),
        Err(err) => {
            tracing::debug!(%err, "could not size the Redis lists; the dispatcher pushes these jobs");
            HashMap::new()
        }
    };
    jobs.iter()
        .map(|job| match room.get_mut(&job.spec.queue()) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

/// Pushes the jobs the insert marked dispatched. Should Redis refuse, they are taken back out
/// of the window and the dispatcher is woken to push them.
async fn push_dispatched(
    ledger: &Ledger,
    redis: &mut ConnectionManager,
    keys: &Keys,
    records: &[JobRecord],
) {
    let mut by_queue: HashMap<Queue, Vec<Uuid>> = HashMap::new();
    for record in records
        .iter()
        .filter(|record| record.dispatched_at.is_some())
    {
        if let Ok(queue) = record.queue.parse() {
            by_queue.entry(queue).or_default().push(record.id);
        }
    }
    for (queue, ids) in by_queue {
        match tf_redis::push_jobs(redis, keys, queue, &ids).await {
            Ok(()) => metrics::JOBS_DISPATCHED
                .with_label_values(&[queue.as_str()])
                .inc_by(ids.len() as u64),
            Err(err) => {
                tracing::warn!(%err, %queue, jobs = ids.len(), "could not push jobs to Redis; the dispatcher will");
                if let Err(err) = ledger.undispatch(&ids).await {
                    tracing::warn!(%err, "could not take the jobs back; the stale-dispatch sweep will push them");
                }
                tf_redis::wake_dispatcher(redis, keys).await;
            }
        }
    }
}
