//! The chat agent of `agent.chat`: a rig agent over an OpenAI-compatible chat model with the
//! five task tools (`taskfleet_jobs::task_tool`), the conversation's recent history and the
//! person's open tasks. It streams: the reply's text arrives piece by piece as the model
//! writes it, so a chat window shows it typing.
//!
//! What lies outside this crate (running a tool over the ledger, the token budget, where the
//! reply's pieces go) is the [`ChatHost`]'s: the worker implements it over storage. Before each
//! model call the agent asks the host to reserve the most the call can cost (its prompt,
//! counted with OpenAI's o200k tokenizer, and [`MAX_REPLY_TOKENS`]); a refusal stops the run.
//! After each call it settles with what the provider says the call spent.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::{StreamExt, future::BoxFuture};
use rig_agent::{
    AgentBuilder,
    agent::{
        AgentHook, CompletionCallAction, CompletionCallEvent, HookContext, MultiTurnStreamItem,
    },
    streaming::{Item, StreamEvent},
    tool::{DynamicTool, ToolErrorKind, ToolExecutionError, ToolOutput},
};
use rig_core::message::{
    AssistantContent, AssistantMessage, Message, ToolCall, ToolFunction, ToolName,
    ToolResultContent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskfleet_jobs::{TaskTool, ToolError};

use crate::llm::{
    BudgetHook, BudgetRefusal, LlmError, LlmModel, RunMeter, TokenBudget, TokenUsage, count_tokens,
};

/// Model calls a message may take: tool calls and the answer.
pub const MAX_TURNS: usize = 5;

/// The most messages of the conversation the model sees.
pub const HISTORY_MESSAGES: usize = 10;

/// The most tokens of history the model sees; older messages go first.
pub const HISTORY_TOKENS: usize = 2_000;

/// The most tokens of a model's answer (`max_tokens`), reserved with every call.
pub const MAX_REPLY_TOKENS: u64 = taskfleet_storage::llm_budget::ANSWER_TOKENS as u64;

/// The most open tasks named in the system prompt.
const TASKS_SHOWN: usize = 30;

const SYSTEM_PROMPT: &str = "\
You are the person's to-do assistant. You read and change their tasks only through the tools: \
add_task, list_tasks, complete_task, delete_task and update_task. A task's id comes from the \
task list below, or from what a tool answered; never make one up. When a tool answers with an \
error, read it and try again (list_tasks finds ids). When the person says \"it\", they mean the \
task the conversation was last about. Answer briefly, in the person's language, and say what \
you changed.";

/// Where the agent's world lies: the tools, the budget and the reply's readers.
pub trait ChatHost: TokenBudget {
    /// Runs a task tool: its answer, or the error the model is shown.
    fn call_tool(&self, name: String, arguments: Value)
    -> BoxFuture<'static, Result<Value, Value>>;

    /// A piece of the reply, as the model writes it.
    fn reply_delta(&self, text: &str);
}

/// One earlier message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct PastMessage {
    pub from_user: bool,
    pub content: String,
    /// A reply's tool calls, in order.
    pub tool_calls: Vec<ToolCallRecord>,
}

/// A tool call the model made, with what it answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The provider's id for the call.
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub arguments: Value,
    pub result: Value,
    /// Whether the tool refused the call (`result` says why).
    #[serde(default)]
    pub error: bool,
}

/// An open task, as the system prompt names it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLine {
    pub id: String,
    pub title: String,
    /// `today`, `week` or `month`, with its rank when it is in a focus list.
    pub horizon: String,
    pub rank: Option<i32>,
    pub due_at: Option<DateTime<Utc>>,
}

/// What the model is asked.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub message: String,
    /// Oldest first; trimmed to [`HISTORY_MESSAGES`] and [`HISTORY_TOKENS`] here.
    pub history: Vec<PastMessage>,
    /// Focus lists first.
    pub tasks: Vec<TaskLine>,
    pub now: DateTime<Utc>,
    pub zone: Tz,
}

/// The model's answer to one message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub text: String,
    pub tool_calls: Vec<ToolCallRecord>,
    pub usage: TokenUsage,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The budget refused a call, or could not be asked.
    #[error(transparent)]
    Budget(#[from] BudgetRefusal),
    /// A tool's store did not answer: the run stopped, and may succeed later.
    #[error("{0}")]
    Store(String),
}

/// Answers `request` with `llm`, streaming the reply to `host`. `usage` in the error case is
/// settled with the host as calls answered; the caller needs nothing more.
pub async fn answer(
    llm: &LlmModel,
    host: Arc<dyn ChatHost>,
    request: ChatRequest,
) -> Result<ChatReply, ChatError> {
    let outage = Outage::default();
    let tools: Vec<DynamicTool> = TaskTool::ALL
        .into_iter()
        .map(|tool| task_tool(tool, host.clone(), outage.clone()))
        .collect();
    let preamble = system_prompt(&request);
    let fixed_tokens = count_tokens(&preamble) + tool_definition_tokens();
    let budget = BudgetHook::new(host.clone(), fixed_tokens, MAX_REPLY_TOKENS);
    let agent = AgentBuilder::new(llm.chat())
        .name("taskfleet-chat")
        .preamble(preamble)
        .max_tokens(MAX_REPLY_TOKENS)
        .dynamic_tools(tools)
        .build();
    let meter = RunMeter::default();
    let mut stream = agent
        .prompt(request.message.as_str())
        .history(history_messages(&trim_history(request.history)))
        .max_turns(MAX_TURNS)
        .add_hook(outage.clone())
        .add_hook(meter.clone())
        .add_hook(budget.clone())
        .stream();

    let mut calls: Vec<ToolCallRecord> = Vec::new();
    let mut outcome = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(MultiTurnStreamItem::StreamAssistantItem(Item::Event(StreamEvent::Text {
                text,
                ..
            }))) => host.reply_delta(&text),
            Ok(MultiTurnStreamItem::ToolCall { tool_call }) => calls.push(ToolCallRecord {
                id: tool_call.id.to_string(),
                name: tool_call.function.name.to_string(),
                arguments: Value::Object(tool_call.function.arguments.clone()),
                result: Value::Null,
                error: false,
            }),
            Ok(MultiTurnStreamItem::ToolResult { tool_result }) => {
                let id = tool_result.call.to_string();
                if let Some(call) = calls.iter_mut().rev().find(|call| call.id == id) {
                    call.result = result_value(&tool_result.content);
                    call.error = tool_result.is_error;
                }
            }
            Ok(MultiTurnStreamItem::FinalResponse(response)) => {
                outcome = Some(Ok(ChatReply {
                    text: response.output(),
                    tool_calls: std::mem::take(&mut calls),
                    usage: TokenUsage::from(response.usage()),
                }));
            }
            Ok(_) => {}
            Err(error) => {
                outcome = Some(Err(error));
                break;
            }
        }
    }
    // A call that failed (or was never sent) holds its reservation until settled.
    host.settle(TokenUsage::default()).await;
    if let Some(why) = outage.reason() {
        return Err(ChatError::Store(why));
    }
    match outcome {
        Some(Ok(reply)) => Ok(reply),
        Some(Err(error)) => Err(budget.refusal().map_or_else(
            || ChatError::Llm(llm.failure(&error, &meter)),
            ChatError::Budget,
        )),
        None => Err(ChatError::Llm(LlmError::Failed(
            "the model's stream ended without an answer".to_owned(),
        ))),
    }
}

/// A tool whose store did not answer: the run stops before its next model call (the model
/// cannot mend an outage, and the job should try again rather than answer "I couldn't").
#[derive(Clone, Default)]
struct Outage {
    reason: Arc<Mutex<Option<String>>>,
}

impl Outage {
    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn record(&self, why: String) {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(why);
    }
}

impl AgentHook for Outage {
    async fn on_completion_call(
        &self,
        _ctx: &HookContext,
        _event: CompletionCallEvent<'_>,
    ) -> CompletionCallAction {
        match self.reason() {
            Some(why) => CompletionCallAction::Stop(why),
            None => CompletionCallAction::Continue,
        }
    }
}

/// A tool the model may call, run by the host.
fn task_tool(tool: TaskTool, host: Arc<dyn ChatHost>, outage: Outage) -> DynamicTool {
    let name = ToolName::new(tool.name()).expect("tool names are not empty");
    DynamicTool::new(
        name,
        tool.description(),
        tool.parameters(),
        move |arguments: Value| {
            let answer = host.call_tool(tool.name().to_owned(), arguments);
            let outage = outage.clone();
            Box::pin(async move {
                match answer.await {
                    Ok(value) => Ok(ToolOutput::json(value)),
                    Err(error) if error["error"] == ToolError::UNAVAILABLE => {
                        let why = format!("{} failed: {}", tool.name(), error["message"]);
                        outage.record(why.clone());
                        Err(ToolExecutionError::new(ToolErrorKind::Provider, why))
                    }
                    // The model reads the error's JSON and can recover.
                    Err(error) => Err(ToolExecutionError::new(
                        ToolErrorKind::InvalidArgs,
                        error.to_string(),
                    )),
                }
            })
        },
    )
}

/// A tool result's content as JSON (its text parsed when it is JSON).
fn result_value(content: &[ToolResultContent]) -> Value {
    let texts: Vec<Value> = content
        .iter()
        .map(|part| match part {
            ToolResultContent::Json { value } => value.clone(),
            ToolResultContent::Text(text) => serde_json::from_str(&text.text)
                .unwrap_or_else(|_| Value::String(text.text.clone())),
            other => serde_json::to_value(other).unwrap_or(Value::Null),
        })
        .collect();
    match <[Value; 1]>::try_from(texts) {
        Ok([one]) => one,
        Err(many) => Value::Array(many),
    }
}

/// The latest [`HISTORY_MESSAGES`] messages, less the oldest while they hold more than
/// [`HISTORY_TOKENS`] tokens (a message goes whole, with its tool calls).
pub fn trim_history(history: Vec<PastMessage>) -> Vec<PastMessage> {
    let start = history.len().saturating_sub(HISTORY_MESSAGES);
    let recent = &history[start..];
    let mut tokens = 0;
    let mut keep = recent.len();
    for message in recent.iter().rev() {
        tokens += message_tokens(message);
        if tokens > HISTORY_TOKENS {
            break;
        }
        keep -= 1;
    }
    recent[keep..].to_vec()
}

fn message_tokens(message: &PastMessage) -> usize {
    let calls = message
        .tool_calls
        .iter()
        .map(|call| {
            count_tokens(&call.name)
                + count_tokens(&call.arguments.to_string())
                + count_tokens(&replayed_result(&call.result).to_string())
        })
        .sum::<usize>();
    count_tokens(&message.content) + calls
}

/// The history as the model is sent it: a reply's tool calls, each answered by its result,
/// then its text.
fn history_messages(history: &[PastMessage]) -> Vec<Message> {
    let mut messages = Vec::new();
    for message in history {
        if message.from_user {
            messages.push(Message::user(message.content.clone()));
            continue;
        }
        for call in &message.tool_calls {
            let Ok(name) = ToolName::new(call.name.clone()) else {
                continue;
            };
            let call_made = ToolCall::from_wire(
                call.id.clone(),
                ToolFunction::new(name, call.arguments.clone()),
            );
            let content = vec![ToolResultContent::text(
                replayed_result(&call.result).to_string(),
            )];
            let result = if call.error {
                call_made.error_result(content)
            } else {
                call_made.result(content)
            };
            messages.push(Message::Assistant(AssistantMessage::new(vec![
                AssistantContent::ToolCall(call_made),
            ])));
            messages.push(Message::tool_results(vec![result]));
        }
        if !message.content.is_empty() {
            messages.push(Message::assistant(message.content.clone()));
        }
    }
    messages
}

/// The most characters of an earlier tool result replayed in the history.
const REPLAYED_RESULT_CHARS: usize = 1_000;

/// An earlier tool result as the history replays it: its tasks by id, title and status only
/// (what "it" and "the second one" refer to), cut to [`REPLAYED_RESULT_CHARS`]. A list of 50
/// tasks in full would otherwise push every earlier message out of the history.
fn replayed_result(result: &Value) -> Value {
    let brief = |task: &Value| serde_json::json!({"id": task["id"], "title": task["title"], "status": task["status"]});
    let compact = match (result.get("tasks"), result.get("task")) {
        (Some(Value::Array(tasks)), _) => serde_json::json!({
            "tasks": tasks.iter().map(brief).collect::<Vec<_>>(),
            "total": result["total"],
        }),
        (_, Some(task)) if task.is_object() => serde_json::json!({"task": brief(task)}),
        _ => result.clone(),
    };
    let text = compact.to_string();
    match text.char_indices().nth(REPLAYED_RESULT_CHARS) {
        Some((end, _)) => Value::String(format!("{}…", &text[..end])),
        None => compact,
    }
}

/// The instructions, the day, and the person's open tasks.
fn system_prompt(request: &ChatRequest) -> String {
    let local = request.now.with_timezone(&request.zone);
    let mut prompt = format!(
        "{SYSTEM_PROMPT}\n\nIt is {} in the time zone {}.\n",
        local.format("%A %Y-%m-%d %H:%M"),
        request.zone.name()
    );
    if request.tasks.is_empty() {
        prompt.push_str("The person has no open tasks.");
        return prompt;
    }
    prompt.push_str("Their open tasks, focus lists first (id | title | list | due):\n");
    for task in request.tasks.iter().take(TASKS_SHOWN) {
        let list = match task.rank {
            Some(rank) if rank <= 3 => format!("{} #{rank}", task.horizon),
            _ => task.horizon.clone(),
        };
        let due = task.due_at.map_or_else(
            || "-".to_owned(),
            |due| {
                due.with_timezone(&request.zone)
                    .format("%Y-%m-%d %H:%M")
                    .to_string()
            },
        );
        let title: String = task.title.chars().take(120).collect();
        prompt.push_str(&format!("{} | {title} | {list} | {due}\n", task.id));
    }
    if request.tasks.len() > TASKS_SHOWN {
        prompt.push_str(&format!(
            "… and {} more (list_tasks shows them).\n",
            request.tasks.len() - TASKS_SHOWN
        ));
    }
    prompt
}

fn tool_definition_tokens() -> usize {
    TaskTool::ALL
        .into_iter()
        .map(|tool| {
            count_tokens(tool.name())
                + count_tokens(tool.description())
                + count_tokens(&tool.parameters().to_string())
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn said(from_user: bool, words: usize) -> PastMessage {
        PastMessage {
            from_user,
            content: vec!["milk"; words].join(" "),
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn history_keeps_the_last_ten_messages() {
        let history: Vec<PastMessage> = (0..14).map(|n| said(n % 2 == 0, n + 1)).collect();
        let kept = trim_history(history.clone());
        assert_eq!(kept, history[4..].to_vec());
    }

    #[test]
    fn history_drops_the_oldest_past_two_thousand_tokens() {
        // "milk" repeated is about a token a word.
        let history = vec![said(true, 1_500), said(false, 900), said(true, 10)];
        let kept = trim_history(history.clone());
        assert_eq!(kept, history[1..].to_vec());
        let one_too_long = vec![said(true, 2_500)];
        assert!(trim_history(one_too_long).is_empty());
    }

    #[test]
    fn a_long_task_list_does_not_push_the_history_out() {
        let tasks: Vec<Value> = (0..50)
            .map(|n| {
                json!({"id": format!("00000000-0000-4000-8000-{n:012}"),
                       "title": format!("Task number {n} with a fairly long title"),
                       "description": "words ".repeat(40), "status": "open",
                       "horizon": "month", "rank": n, "source": "jira", "url": null})
            })
            .collect();
        let listed = PastMessage {
            from_user: false,
            content: "You have 50 open tasks.".into(),
            tool_calls: vec![ToolCallRecord {
                id: "call_1".into(),
                name: "list_tasks".into(),
                arguments: json!({}),
                result: json!({"tasks": tasks, "total": 50}),
                error: false,
            }],
        };
        let history = vec![said(true, 5), listed, said(true, 5)];
        assert_eq!(trim_history(history.clone()), history);
        let replayed = replayed_result(&history[1].tool_calls[0].result).to_string();
        assert!(
            replayed.contains("00000000-0000-4000-8000-000000000000"),
            "{replayed}"
        );
        assert!(!replayed.contains("words"), "{replayed}");
    }

    #[test]
    fn a_reply_is_replayed_as_its_calls_their_results_then_its_text() {
        let reply = PastMessage {
            from_user: false,
            content: "Added \"Buy milk\".".into(),
            tool_calls: vec![ToolCallRecord {
                id: "call_1".into(),
                name: "add_task".into(),
                arguments: json!({"title": "Buy milk"}),
                result: json!({"task": {"id": "t1", "title": "Buy milk"}}),
                error: false,
            }],
        };
        let messages = history_messages(&[said(true, 3), reply]);
        assert_eq!(messages.len(), 4);
        let wire = serde_json::to_string(&messages).unwrap();
        assert!(wire.contains("call_1"), "{wire}");
        assert!(wire.contains("Buy milk"), "{wire}");
    }

    #[test]
    fn tool_results_read_back_as_json() {
        let content = vec![ToolResultContent::text(r#"{"task": {"id": "t1"}}"#)];
        assert_eq!(result_value(&content), json!({"task": {"id": "t1"}}));
        let content = vec![ToolResultContent::text("no such task")];
        assert_eq!(result_value(&content), json!("no such task"));
    }

    #[test]
    fn the_system_prompt_names_the_day_and_the_focus_lists() {
        let request = ChatRequest {
            message: "hi".into(),
            history: Vec::new(),
            tasks: vec![TaskLine {
                id: "t1".into(),
                title: "Fix the invoice bug".into(),
                horizon: "today".into(),
                rank: Some(1),
                due_at: None,
            }],
            now: "2026-12-02T09:30:00Z".parse().unwrap(),
            zone: Tz::Europe__Paris,
        };
        let prompt = system_prompt(&request);
        assert!(prompt.contains("Wednesday 2026-12-02 10:30"), "{prompt}");
        assert!(
            prompt.contains("t1 | Fix the invoice bug | today #1 | -"),
            "{prompt}"
        );
        assert!(count_tokens(&prompt) > 50);
    }
}
