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

/// What the dispatcher (or the API) places in a Redis queue for one job: everything a worker
/// needs to run it at once, read from the row the dispatch updated. The ledger stays the
/// truth: a delivery runs only while its `epoch` is the job's, and its start is written while
/// it runs (ADR 0017); Redis holds a small, disposable window of these.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dispatch {
    pub job_id: uuid::Uuid,
    /// The fencing epoch this delivery runs under. Every dispatch raises the job's, so of two
    /// copies of a job only the latest can start, and a copy pushed again after its job
    /// moved on starts nothing.
    pub epoch: i64,
    /// The attempt this delivery is, counting from 1.
    pub attempt: i32,
    pub max_attempts: i32,
    pub tenant_id: uuid::Uuid,
    pub queue: Queue,
    pub kind: String,
    /// When the job fell due: its wait for a worker counts from here.
    pub run_at: chrono::DateTime<chrono::Utc>,
    /// The `X-Request-ID` of the request that created the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The job's spec, as the ledger keeps it; `None` when it is too large to travel through
    /// Redis: the delivery's start then brings it from the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

impl Dispatch {
    /// What the ledger needs to start this delivery: its start is written while the job
    /// runs, so it must not hold on to the spec.
    pub fn start_request(&self) -> StartRequest {
        StartRequest {
            job_id: self.job_id,
            epoch: self.epoch,
            bring_payload: self.payload.is_none(),
        }
    }
}

/// A delivery's start, as the ledger writes it: the job, the epoch its dispatch raised, and
/// whether the start must bring the spec the delivery came without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartRequest {
    pub job_id: uuid::Uuid,
    pub epoch: i64,
    pub bring_payload: bool,
}
