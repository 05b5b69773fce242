//! `JobSpec`: the typed union accepted by `POST /v1/jobs`, discriminated by `kind`, one variant
//! per job kind of DESIGN.md. The same type is stored as the job's payload and decoded by the
//! worker, so the API and the handlers cannot drift apart.

use chrono::{DateTime, Utc};
use poem_openapi::{Object, Union};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    executor::{BuiltinTool, ExecutorRules, ExecutorRun},
    queue::Queue,
};

/// Most tasks one `embed.items` job may name.
pub const MAX_EMBED_ITEMS: usize = 10_000;

/// The longest chat message, in characters.
pub const MAX_CHAT_MESSAGE_CHARS: usize = 10_000;

/// Highest `max_attempts` a job may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// Options every job kind accepts beside its own fields.
#[derive(Debug, Clone, Default, PartialEq, Object, Serialize, Deserialize)]
pub struct JobOptions {
    /// Run no earlier than this instant; absent or past means now.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Higher runs first within a tenant's share of a queue; default 0.
    #[oai(
        validator(minimum(value = "-100"), maximum(value = "100")),
        skip_serializing_if_is_none
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i16>,
    /// Attempts before the job is dead; default depends on the kind.
    #[oai(
        validator(minimum(value = "1"), maximum(value = "100")),
        skip_serializing_if_is_none
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Submitting again with the same key returns the first job instead of creating another
    /// (for the retention window); the `Idempotency-Key` header sets it too.
    #[oai(
        validator(min_length = 1, max_length = 255),
        skip_serializing_if_is_none
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `ingest.connector`: fetch new items from a connector.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct IngestConnector {
    pub connector_id: Uuid,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// `embed.items`: embed items into the tenant's vector store.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct EmbedItems {
    pub item_ids: Vec<Uuid>,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// `agent.prioritise`: score and rank the tenant's tasks.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct AgentPrioritise {
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// `agent.chat`: one chat turn with task tools.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct AgentChat {
    /// The conversation to continue; absent starts one (its id is the job's).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    /// What the person writes: 1 to 10,000 characters.
    #[oai(validator(min_length = 1, max_length = 10000))]
    pub message: String,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// `test.connector`: check a connector's stored credentials.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct TestConnector {
    pub connector_id: Uuid,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// `schedule.fire`: materialise one firing of a schedule.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct ScheduleFire {
    pub schedule_id: Uuid,
    pub fire_at: DateTime<Utc>,
    /// Fired late, once, for slots missed while no scheduler ran.
    #[oai(default)]
    #[serde(default)]
    pub catch_up: bool,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

#[derive(Debug, Clone, PartialEq, Union, Serialize, Deserialize)]
#[oai(discriminator_name = "kind")]
#[serde(tag = "kind")]
pub enum JobSpec {
    #[oai(mapping = "ingest.connector")]
    #[serde(rename = "ingest.connector")]
    IngestConnector(IngestConnector),
    #[oai(mapping = "embed.items")]
    #[serde(rename = "embed.items")]
    EmbedItems(EmbedItems),
    #[oai(mapping = "agent.prioritise")]
    #[serde(rename = "agent.prioritise")]
    AgentPrioritise(AgentPrioritise),
    #[oai(mapping = "agent.chat")]
    #[serde(rename = "agent.chat")]
    AgentChat(AgentChat),
    #[oai(mapping = "test.connector")]
    #[serde(rename = "test.connector")]
    TestConnector(TestConnector),
    #[oai(mapping = "executor.run")]
    #[serde(rename = "executor.run")]
    ExecutorRun(ExecutorRun),
    #[oai(mapping = "schedule.fire")]
    #[serde(rename = "schedule.fire")]
    ScheduleFire(ScheduleFire),
}

/// Every `kind` tag, for error messages.
pub const KINDS: [&str; 7] = [
    "ingest.connector",
    "embed.items",
    "agent.prioritise",
    "agent.chat",
    "test.connector",
    "executor.run",
    "schedule.fire",
];

/// A job that is well-formed JSON but cannot be run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidJob {
    pub message: String,
}

impl InvalidJob {
    pub fn new(message: impl Into<String>) -> Self {
        InvalidJob {
            message: message.into(),
        }
    }
}

impl JobSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::IngestConnector(_) => KINDS[0],
            JobSpec::EmbedItems(_) => KINDS[1],
            JobSpec::AgentPrioritise(_) => KINDS[2],
            JobSpec::AgentChat(_) => KINDS[3],
            JobSpec::TestConnector(_) => KINDS[4],
            JobSpec::ExecutorRun(_) => KINDS[5],
            JobSpec::ScheduleFire(_) => KINDS[6],
        }
    }

    pub fn queue(&self) -> Queue {
        match self {
            JobSpec::IngestConnector(_) => Queue::Ingest,
            JobSpec::EmbedItems(_) => Queue::Embed,
            JobSpec::AgentPrioritise(_) | JobSpec::AgentChat(_) => Queue::Agent,
            JobSpec::TestConnector(_) => Queue::Test,
            JobSpec::ExecutorRun(_) => Queue::Executor,
            JobSpec::ScheduleFire(_) => Queue::Schedule,
        }
    }

    /// Whether a worker may run a delivery of this job while its start is still being
    /// written (ADR 0017). Only `executor.run` may: its result is its only effect, a refused
    /// start throws the run away, and a crash cannot take the worker down with it. Not the
    /// `fault` tool, whose `exit` must be counted as a stall: a job that kills its worker
    /// before its start is recorded would be run, and kill, again and again. The other kinds
    /// call providers and models, or write under the attempt's epoch: they wait for the
    /// start, which their own work outlasts many times over.
    pub fn may_run_before_start(&self) -> bool {
        match self {
            JobSpec::ExecutorRun(run) => BuiltinTool::parse(&run.tool) != Some(BuiltinTool::Fault),
            _ => false,
        }
    }

    pub fn options(&self) -> &JobOptions {
        match self {
            JobSpec::IngestConnector(j) => &j.options,
            JobSpec::EmbedItems(j) => &j.options,
            JobSpec::AgentPrioritise(j) => &j.options,
            JobSpec::AgentChat(j) => &j.options,
            JobSpec::TestConnector(j) => &j.options,
            JobSpec::ExecutorRun(j) => &j.options,
            JobSpec::ScheduleFire(j) => &j.options,
        }
    }

    pub fn options_mut(&mut self) -> &mut JobOptions {
        match self {
            JobSpec::IngestConnector(j) => &mut j.options,
            JobSpec::EmbedItems(j) => &mut j.options,
            JobSpec::AgentPrioritise(j) => &mut j.options,
            JobSpec::AgentChat(j) => &mut j.options,
            JobSpec::TestConnector(j) => &mut j.options,
            JobSpec::ExecutorRun(j) => &mut j.options,
            JobSpec::ScheduleFire(j) => &mut j.options,
        }
    }

    /// Checks what the JSON schema cannot: that a handler for the kind exists, and that the
    /// kind's own fields make sense. A job that fails here is refused, never accepted and
    /// dropped. `executor` holds the operator's allow list of commands and whether the
    /// `fault` tool is admitted (tests only).
    pub fn validate(&self, executor: &ExecutorRules) -> Result<(), InvalidJob> {
        match self {
            JobSpec::ExecutorRun(run) => run.call(executor).map(drop),
            // Whether the connector is the tenant's is the API's to check, with the ledger.
            JobSpec::IngestConnector(_) | JobSpec::TestConnector(_) => Ok(()),
            JobSpec::EmbedItems(embed) if embed.item_ids.is_empty() => {
                Err(InvalidJob::new("`item_ids` must name at least one task"))
            }
            JobSpec::EmbedItems(embed) if embed.item_ids.len() > MAX_EMBED_ITEMS => {
                Err(InvalidJob::new(format!(
                    "`item_ids` may name at most {MAX_EMBED_ITEMS} tasks; split the job"
                )))
            }
            JobSpec::EmbedItems(_) | JobSpec::AgentPrioritise(_) => Ok(()),
            // Whether the conversation is the tenant's, and an LLM and budget are there for
            // it, is the API's to check.
            JobSpec::AgentChat(chat) if chat.message.trim().is_empty() => {
                Err(InvalidJob::new("`message` is empty"))
            }
            JobSpec::AgentChat(chat) if chat.message.chars().count() > MAX_CHAT_MESSAGE_CHARS => {
                Err(InvalidJob::new(format!(
                    "`message` is longer than {MAX_CHAT_MESSAGE_CHARS} characters"
                )))
            }
            JobSpec::AgentChat(_) => Ok(()),
            JobSpec::ScheduleFire(_) => Err(InvalidJob::new(
                "`schedule.fire` jobs are created by schedules; create one under /v1/schedules",
            )),
        }
    }

    /// The job's `max_attempts`, or its kind's default.
    pub fn max_attempts(&self) -> u32 {
        self.options()
            .max_attempts
            .unwrap_or_else(|| crate::RetryPolicy::for_queue(self.queue()).max_attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_round_trips_with_kind_and_options() {
        let value = json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 3},
                           "priority": 5, "max_attempts": 2});
        let spec: JobSpec = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(spec.kind(), "executor.run");
        assert_eq!(spec.queue(), Queue::Executor);
        assert_eq!(spec.options().priority, Some(5));
        assert_eq!(spec.max_attempts(), 2);
        assert_eq!(serde_json::to_value(&spec).unwrap(), value);
    }

    #[test]
    fn only_executor_runs_other_than_faults_may_run_before_their_start() {
        let spec = |value| serde_json::from_value::<JobSpec>(value).unwrap();
        let run = |tool: &str| spec(json!({"kind": "executor.run", "tool": tool}));
        assert!(run("noop").may_run_before_start());
        assert!(run("ruff").may_run_before_start());
        assert!(!run("fault").may_run_before_start());
        let chat = spec(json!({"kind": "agent.chat", "message": "hello"}));
        assert!(!chat.may_run_before_start());
    }

    #[test]
    fn chat_messages_are_one_to_ten_thousand_characters() {
        let chat = |message: String| -> JobSpec {
            serde_json::from_value(json!({"kind": "agent.chat", "message": message})).unwrap()
        };
        assert!(
            chat("Add a task to buy milk".into())
                .validate(&ExecutorRules::default())
                .is_ok()
        );
        assert!(
            chat("é".repeat(10_000))
                .validate(&ExecutorRules::default())
                .is_ok()
        );
        let err = chat("é".repeat(10_001))
            .validate(&ExecutorRules::default())
            .unwrap_err();
        assert!(err.message.contains("10000"), "{err}");
        let err = chat(" \n".into())
            .validate(&ExecutorRules::default())
            .unwrap_err();
        assert!(err.message.contains("empty"), "{err}");
    }
}
