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
