//! What every request handler shares.

use std::{sync::Arc, time::Duration};

use redis::aio::ConnectionManager;
use taskfleet_storage::{
    Db, EventLog, GroupCommit, InsertError, Inserted, JobRecord, Ledger, NewJob, Queues, Schedules,
    Tenant, Tenants, Workers, group_commit::LINGER_WHILE_CALLERS_WAIT, redis::Keys,
};
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
pub fn submissions(ledger: Ledger) -> GroupCommit<(Uuid, NewJob), JobRecord> {
    GroupCommit::start(
        LINGER_WHILE_CALLERS_WAIT,
        move |batch: Arc<Vec<(Uuid, NewJob)>>| {
            let ledger = ledger.clone();
            async move {
                let (tenants, jobs): (Vec<Uuid>, Vec<NewJob>) = batch.iter().cloned().unzip();
                let inserted = ledger
                    .insert_for(&tenants, &jobs, "api")
                    .await
                    .map_err(|err| match err {
                        InsertError::Db(err) => err,
                        // Only jobs without an idempotency key come here; none can conflict.
                        other => sqlx::Error::Protocol(other.to_string()),
                    })?;
                Ok(inserted
                    .into_iter()
                    .map(|inserted| match inserted {
                        Inserted::Created(record) | Inserted::Existing(record) => record,
                    })
                    .collect())
            }
        },
    )
}
