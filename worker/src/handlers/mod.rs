//! One handler per job kind. A handler returns the job's result, or a failure that says
//! whether trying again could help.

pub mod changelog;
pub mod chat;
pub mod command;
pub mod connector_account;
pub mod connector_test;
pub mod embed;
pub mod executor;
pub mod ingest;
pub mod prioritise;
pub mod schedule;

use serde_json::Value;
use taskfleet_jobs::{ExecutorRules, JobSpec};

use std::{sync::Arc, time::Duration};

use taskfleet_agents::Agents;
use taskfleet_connectors::Providers;
use taskfleet_storage::{
    Budgets, Connectors, Conversations, Ledger, LlmProviders, Schedules, Sealer, Tasks,
    redis::{Connection, Keys},
};
use uuid::Uuid;

use crate::executor::StartGate;

/// What handlers use besides the ledger, shared by every job of a worker process.
#[derive(Debug, Clone)]
pub struct Services {
    pub schedules: Schedules,
    pub connectors: Connectors,
    pub tasks: Tasks,
    pub providers: Arc<Providers>,
    pub sealer: Sealer,
    pub agents: Agents,
    pub budgets: Budgets,
    pub llm_providers: LlmProviders,
    pub conversations: Conversations,
    pub sandbox: Arc<command::Sandbox>,
}

/// What a handler knows about the attempt it runs, and how it reports progress.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The commands `executor.run` may name, and whether the `fault` tool may run.
    pub executor_rules: ExecutorRules,
    /// The tenant the job belongs to.
    pub tenant_id: Uuid,
    /// The request that created the job; jobs it creates carry it on.
    pub request_id: Option<String>,
    pub(crate) ledger: Ledger,
    pub(crate) services: Services,
    pub(crate) redis: Connection,
    pub(crate) keys: Keys,
    pub(crate) epoch: i64,
    /// The attempt's start, written while a job that may run before it runs (ADR 0017).
    pub(crate) started: StartGate,
    pub(crate) worker: String,
}

impl JobContext {
    /// Tells the dispatcher that the handler created work, so it goes out at once.
    pub async fn wake_dispatcher(&self) {
        taskfleet_storage::redis::wake_dispatcher(&mut self.redis.clone(), &self.keys).await
    }

    /// Records progress on the job (its row shows the latest) and appends `job_progress`;
    /// no percent when the handler cannot tell how far it is. Best effort: a failed write is
    /// logged, and the job goes on. Waits for the attempt's start, without which the ledger
    /// refuses it (a refused start stops the handler meanwhile).
    pub async fn progress(&self, percent: impl Into<Option<f32>>, message: &str) {
        if !self.started.started().await {
            return;
        }
        let percent = percent.into().map(|p| p.clamp(0.0, 100.0));
        let written = self
            .ledger
            .progress(self.job_id, self.epoch, &self.worker, percent, message)
            .await;
        if let Err(err) = written {
            tracing::debug!(%err, "could not record progress");
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub message: String,
    /// Retrying cannot help (bad input, unknown kind): the job is dead at once.
    pub permanent: bool,
    /// The handler knows when trying again makes sense (a provider's `Retry-After`); used
    /// instead of the backoff policy.
    pub retry_after: Option<Duration>,
}

impl JobFailure {
    pub fn permanent(message: impl Into<String>) -> JobFailure {
        JobFailure {
            message: message.into(),
            permanent: true,
            retry_after: None,
        }
    }

    pub fn retryable(message: impl Into<String>) -> JobFailure {
        JobFailure {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }
}

pub type HandlerResult = Result<Value, JobFailure>;

/// Runs the handler of the job's kind.
pub async fn run(spec: &JobSpec, ctx: &JobContext) -> HandlerResult {
    match spec {
        JobSpec::ExecutorRun(run) => executor::run(run, ctx).await,
        JobSpec::ScheduleFire(fire) => schedule::fire(fire, ctx).await,
        JobSpec::IngestConnector(job) => ingest::ingest(job, ctx).await,
        JobSpec::TestConnector(job) => connector_test::test(job, ctx).await,
        JobSpec::EmbedItems(job) => embed::embed(job, ctx).await,
        JobSpec::AgentPrioritise(job) => prioritise::prioritise(job, ctx).await,
        JobSpec::AgentChat(job) => chat::chat(job, ctx).await,
    }
}
