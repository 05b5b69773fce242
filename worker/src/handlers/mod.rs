//! One handler per job kind. A handler returns the job's result, or a failure that says
//! whether trying again could help.

pub mod changelog;
pub mod executor;

use serde_json::Value;
use taskfleet_jobs::JobSpec;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub message: String,
    /// Retrying cannot help (bad input, unknown kind): the job is dead at once.
    pub permanent: bool,
}

impl JobFailure {
    pub fn permanent(message: impl Into<String>) -> JobFailure {
        JobFailure {
            message: message.into(),
            permanent: true,
        }
    }
}

pub type HandlerResult = Result<Value, JobFailure>;

/// Runs the handler of the job's kind.
pub async fn run(spec: &JobSpec) -> HandlerResult {
    match spec {
        JobSpec::ExecutorRun(run) => executor::run(run).await,
        other => Err(JobFailure::permanent(format!(
            "no handler for job kind `{}` in this worker",
            other.kind()
        ))),
    }
}
