//! `agent.chat`: one message of a conversation, answered by the chat agent with the task
//! tools. The conversation's recent history (its id is its first job's) and the tenant's open
//! tasks are read, and the agent runs on the tenant's LLM (its own, or the
//! fleet's) within the tenant's token budget. The reply streams as `job_progress` events;
//! the message and the reply, with its tool calls, are stored once the reply is complete.
//!
//! Tool calls change tasks as they are made. A job that fails after some of them and runs
//! again repeats only what the model asks again; its `add_task`s find the tasks the first
//! attempt added (`TaskToolbox`), so a retry does not add "buy milk" twice.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use taskfleet_agents::{
    BudgetRefusal, ChatError, ChatHost, ChatRequest, PastMessage, TaskLine, TokenBudget,
    TokenUsage, ToolCallRecord, chat_agent,
};
use taskfleet_jobs::spec::AgentChat;
use taskfleet_storage::{ChatMessage, LlmCallKind, TaskToolbox, Turn};
use tokio::sync::mpsc;

use super::{HandlerResult, JobContext, JobFailure};
use crate::llm_access::{self, JobBudget};

/// How long reply pieces gather before they go out as one progress event: a chat window
/// still sees the reply grow, and a long reply is tens of events rather than hundreds.
const DELTA_LINGER: Duration = Duration::from_millis(100);

pub async fn chat(job: &AgentChat, ctx: &JobContext) -> HandlerResult {
    let services = &ctx.services;
    let conversation = job.conversation_id.unwrap_or(ctx.job_id);
    let writable = services
        .conversations
        .writable(ctx.tenant_id, conversation)
        .await
        .map_err(store_failed)?;
    if !writable {
        return Err(JobFailure::permanent(format!(
            "no conversation {conversation} for this tenant"
        )));
    }
    let Some(llm) = llm_access::tenant_llm(ctx).await? else {
        return Err(JobFailure::permanent(
            "no LLM is configured for this tenant: set one with PUT /v1/llm, or the fleet's \
             TASKFLEET_LLM_BASE_URL and TASKFLEET_LLM_MODEL",
        ));
    };
    let history = services
        .conversations
        .history(
            ctx.tenant_id,
            conversation,
            ctx.job_id,
            chat_agent::HISTORY_MESSAGES as i64,
        )
        .await
        .map_err(store_failed)?;
    let toolbox = TaskToolbox::open(
        services.tasks.clone(),
        ctx.tenant_id,
        "agent.chat",
        ctx.request_id.clone(),
        Some(ctx.job_id),
    )
    .await
    .map_err(store_failed)?;
    let (open, _) = toolbox.open_tasks().await.map_err(store_failed)?;
    let request = ChatRequest {
        message: job.message.clone(),
        history: history.iter().map(past_message).collect(),
        tasks: open
            .iter()
            .map(|task| TaskLine {
                id: task.id.to_string(),
                title: task.title.clone(),
                horizon: task.horizon.clone(),
                rank: task.rank,
                due_at: task.due_at,
            })
            .collect(),
        now: chrono::Utc::now(),
        zone: toolbox.zone(),
    };

    let permit = llm.breaker.admit().map_err(|wait| JobFailure {
        message: format!(
            "the LLM endpoint {} is failing; calls to it pause for {}s",
            llm.model.base_url(),
            wait.as_secs().max(1)
        ),
        permanent: false,
        retry_after: Some(wait),
    })?;
    let (deltas, pieces) = mpsc::unbounded_channel();
    let streamer = tokio::spawn(stream_reply(ctx.clone(), pieces));
    let host = Arc::new(ChatJob {
        budget: JobBudget::new(ctx, LlmCallKind::Chat, &llm.model),
        toolbox: Arc::new(toolbox),
        deltas,
    });
    let answered = chat_agent::answer(&llm.model, host.clone(), request).await;
    match &answered {
        Err(ChatError::Llm(error)) if error.is_outage() => permit.failed(),
        _ => permit.succeeded(),
    }
    let spent = host.budget.spent();
    // The last pieces go out before the job's outcome.
    drop(host);
    let _ = streamer.await;
    let reply = match answered {
        Ok(reply) => reply,
        Err(ChatError::Llm(error)) => return Err(llm_access::job_failure(&error)),
        Err(ChatError::Budget(refusal)) => return Err(llm_access::refusal_failure(&refusal)),
        Err(ChatError::Store(why)) => return Err(JobFailure::retryable(why)),
    };
    let tool_calls = serde_json::to_value(&reply.tool_calls).unwrap_or(Value::Null);
    let usage = if reply.usage == TokenUsage::default() {
        spent
    } else {
        reply.usage
    };
    let recorded = services
        .conversations
        .record(Turn {
            tenant: ctx.tenant_id,
            conversation,
            job: ctx.job_id,
            message: &job.message,
            reply: &reply.text,
            tool_calls: &tool_calls,
            model: llm.model.model(),
            input_tokens: usage.input as i64,
            output_tokens: usage.output as i64,
        })
        .await
        .map_err(store_failed)?;
    if !recorded {
        return Err(JobFailure::permanent(format!(
            "no conversation {conversation} for this tenant"
        )));
    }
    let calls: Vec<Value> = reply
        .tool_calls
        .iter()
        .map(|call| json!({"name": call.name, "arguments": call.arguments, "result": call.result}))
        .collect();
    Ok(json!({
        "conversation_id": conversation,
        "response": reply.text,
        "tool_calls": calls,
        "model": llm.model.model(),
        "provider": llm.owner,
        "usage": {"input_tokens": usage.input, "output_tokens": usage.output},
    }))
}

fn store_failed(err: sqlx::Error) -> JobFailure {
    JobFailure::retryable(format!("the store failed: {err}"))
}

fn past_message(message: &ChatMessage) -> PastMessage {
    PastMessage {
        from_user: message.role == "user",
        content: message.content.clone(),
        tool_calls: serde_json::from_value::<Vec<ToolCallRecord>>(message.tool_calls.clone())
            .unwrap_or_default(),
    }
}

/// Sends the reply's pieces as progress events, a batch every [`DELTA_LINGER`], until the
/// agent is done (every sender dropped).
async fn stream_reply(ctx: JobContext, mut pieces: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = pieces.recv().await {
        let mut text = first;
        let deadline = tokio::time::Instant::now() + DELTA_LINGER;
        while let Ok(Some(piece)) = tokio::time::timeout_at(deadline, pieces.recv()).await {
            text.push_str(&piece);
        }
        ctx.progress(None, &text).await;
    }
}

/// The agent's world for one job: the tenant's task tools, its budget, the reply's stream.
struct ChatJob {
    budget: JobBudget,
    toolbox: Arc<TaskToolbox>,
    deltas: mpsc::UnboundedSender<String>,
}

impl TokenBudget for ChatJob {
    fn reserve(&self, tokens: u64) -> BoxFuture<'static, Result<(), BudgetRefusal>> {
        self.budget.reserve(tokens)
    }

    fn settle(&self, usage: TokenUsage) -> BoxFuture<'static, ()> {
        self.budget.settle(usage)
    }
}

impl ChatHost for ChatJob {
    fn call_tool(
        &self,
        name: String,
        arguments: Value,
    ) -> BoxFuture<'static, Result<Value, Value>> {
        let toolbox = self.toolbox.clone();
        Box::pin(async move {
            toolbox
                .call(&name, arguments)
                .await
                .map_err(|error| error.to_json())
        })
    }

    fn reply_delta(&self, text: &str) {
        // The receiver lives until the agent is done; a send after that has no reader.
        let _ = self.deltas.send(text.to_owned());
    }
}
