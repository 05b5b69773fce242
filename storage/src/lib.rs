//! Everything taskfleet persists: the Postgres ledger (tenants, API keys, jobs, events, queue
//! pauses, the worker registry, the audit log), connectors and the tasks they bring in, the
//! sealing of secrets at rest, and the Redis primitives around it (connections with explicit
//! timeouts, key names, leases, wake-ups).

pub mod audit;
pub mod connectors;
pub mod conversations;
pub mod db;
pub mod events;
pub mod group_commit;
pub mod job_cleaner;
pub mod lease;
pub mod ledger;
pub mod llm_budget;
pub mod llm_providers;
pub mod queues;
pub mod redis;
pub mod schedules;
pub mod sealing;
pub mod task_edits;
pub mod task_ranking;
pub mod task_tools;
pub mod tasks;
pub mod tenant_rate_limits;
pub mod tenants;
pub mod workers;

pub use audit::{Actor, AuditEntry, AuditFilter, AuditLog, AuditRecord};
pub use connectors::{
    ConnectorChange, ConnectorError, ConnectorJob, ConnectorRecord, Connectors, CredentialsLock,
    NewConnector, OAuthState, Requested,
};
pub use conversations::{ChatMessage, ConversationRecord, Conversations, Turn};
pub use db::{Db, MigrationError, StatementLimits};
pub use events::{EventFilter, EventLog, EventRecord, Numbered};
pub use group_commit::GroupCommit;
pub use lease::{Lease, Renewal};
pub use ledger::{
    CancelSweep, Change, Finish, InsertError, Inserted, JobFilter, JobRecord, Ledger, NewJob,
    Outcome, Reclaimed, Rescue, RunningJob, Started,
};
pub use llm_budget::{
    BudgetStatus, Budgets, LlmCallKind, LlmUsage, Overridden, Reservation, ReserveError, UsageLine,
};
pub use llm_providers::{
    LlmProvider, LlmProviderRecord, LlmProviders, LlmSettings, ProviderKeyError,
};
pub use queues::{QueueStats, Queues};
pub use schedules::{Firing, ScheduleDefinition, ScheduleError, ScheduleRecord, Schedules};
pub use sealing::{EncryptionKeys, Sealer};
pub use task_edits::{EditError, Editor, NewTask, TaskEdit};
pub use task_ranking::{EmbedCandidate, Placement, RankCandidate, Side};
pub use task_tools::TaskToolbox;
pub use tasks::{CommitError, IngestPage, PageCommitted, TaskFilter, TaskRecord, Tasks};
pub use tenant_rate_limits::{RateLimitOverride, TenantOverride, TenantRateLimits};
pub use tenants::{KeyListing, RevokeError, Role, Scope, Tenant, Tenants, shown_key};
pub use workers::{WorkerCounts, WorkerInfo, WorkerRecord, Workers};

/// Whether `err` is a TLS handshake that failed: a certificate refused either way (a wrong
/// authority, name or client certificate) or a peer that does not speak TLS, which waiting
/// does not mend. Found as rustls's error, or the `std::io::Error` that carries it, at any
/// depth of `err`'s sources, including behind the `Arc` the redis crate keeps its I/O errors
/// in (whose own `source` skips the I/O error).
pub fn tls_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::{error::Error, io, sync::Arc};
    fn is_rustls(err: &(dyn Error + 'static)) -> bool {
        err.is::<rustls::Error>()
            || err
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
    }
    let mut next = Some(err);
    while let Some(err) = next {
        let shared = err.downcast_ref::<Arc<dyn Error + Send + Sync>>();
        if is_rustls(err) || shared.is_some_and(|shared| is_rustls(&**shared)) {
            return true;
        }
        next = err.source();
    }
    false
}

/// Retries `connect` with capped back-off until it succeeds, so a process started before
/// Postgres or Redis waits for them instead of exiting.
pub async fn wait_for<T, E, F>(what: &str, connect: impl FnMut() -> F) -> T
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    match retry_while(what, connect, |_| true).await {
        Ok(value) => value,
        Err(_) => unreachable!("every error is retried"),
    }
}

/// [`wait_for`], but only while `retryable` says waiting may mend the error; any other error
/// is returned at once.
pub async fn retry_while<T, E, F>(
    what: &str,
    mut connect: impl FnMut() -> F,
    retryable: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match connect().await {
            Err(err) if retryable(&err) => {
                tracing::warn!(%err, "waiting for {what}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::tls_failed;

    fn refused_certificate() -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )
    }

    #[test]
    fn a_refused_certificate_is_found_in_redis_and_sqlx_errors_but_an_outage_is_not() {
        assert!(tls_failed(&redis::RedisError::from(refused_certificate())));
        assert!(tls_failed(&sqlx::Error::Io(refused_certificate())));
        let outage = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(!tls_failed(&sqlx::Error::Io(outage)));
        let outage = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!tls_failed(&redis::RedisError::from(outage)));
    }
}
