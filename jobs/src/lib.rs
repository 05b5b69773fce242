//! The job catalogue of taskfleet: what a job is, which queue runs it, the states it moves
//! through, the events it leaves and the retry policy. Pure types and rules, so the API, the
//! workers and the tests all agree on one definition; no I/O but reading the operator's allow
//! list of executor commands at start.

pub mod audit;
pub mod event;
pub mod executor;
pub mod executor_commands;
pub mod provider_reply;
pub mod public_address;
pub mod queue;
pub mod retry;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod task;
pub mod task_tool;
pub mod wire;

pub use audit::AuditAction;
pub use event::EventName;
pub use executor::{BuiltinTool, ExecutorRules, ExecutorRun};
pub use executor_commands::{CommandCatalog, CommandTool};
pub use queue::Queue;
pub use retry::RetryPolicy;
pub use schedule::{MissedPolicy, Timing};
pub use spec::{InvalidJob, JobOptions, JobSpec};
pub use state::JobState;
pub use task::{Horizon, Item, TaskStatus};
pub use task_tool::{TaskTool, TaskToolCall, ToolError};

/// What the dispatcher places in a Redis queue: only the ledger id. The payload stays in
/// Postgres, so Redis holds a small, disposable window of work and the ledger stays the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dispatch {
    pub job_id: uuid::Uuid,
}
