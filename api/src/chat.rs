//! Chat with the task assistant. Before an `agent.chat` job is accepted (`/v1/jobs`, a batch,
//! `/v1/chat`) the API checks what the worker would otherwise find out only after the job was
//! queued: the conversation is the tenant's, an LLM is there to answer, and the month's token
//! budget is not spent. `POST /v1/chat` submits such a job and waits a while for its reply, so
//! a simple client needs neither the job API nor the event stream.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Query},
    payload::Json,
};
use serde::Deserialize;
use serde_json::Value;
use taskfleet_jobs::{JobOptions, JobSpec, JobState, spec::AgentChat};
use taskfleet_storage::{BudgetStatus, JobRecord, Scope};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    auth::TenantKey,
    error::ApiError,
    events::job_end_announced,
    jobs::{accept, with_idempotency_header},
    observe::RequestId,
    state::AppState,
};

/// How long `POST /v1/chat` waits for the reply when the request does not say.
const DEFAULT_WAIT_SECS: u64 = 10;
/// How often a waiting chat reads its job again without an announcement from the hub.
const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// The refusal of a chat when neither the tenant nor the fleet has an LLM.
pub fn no_llm() -> ApiError {
    ApiError::unprocessable(
        "llm_not_configured",
        "no LLM is configured for this tenant, and agent.chat needs one: set one with PUT \
         /v1/llm, or have the operator set the fleet's TASKFLEET_LLM_BASE_URL and \
         TASKFLEET_LLM_MODEL",
    )
}

/// The checks an `agent.chat` job meets before it is accepted; other kinds pass.
pub async fn check_chat(state: &AppState, tenant: Uuid, spec: &JobSpec) -> Result<(), ApiError> {
    let JobSpec::AgentChat(chat) = spec else {
        return Ok(());
    };
    check_conversation_and_llm(state, tenant, chat).await?;
    let budget = state.budgets.status(tenant).await?;
    match budget.exhausted() {
        true => Err(budget_exceeded(&budget, None)),
        false => Ok(()),
    }
}

/// The checks of a schedule's `agent.chat` target. Not the budget: the schedule fires later,
/// perhaps in a month with budget left.
pub async fn check_scheduled_chat(
    state: &AppState,
    tenant: Uuid,
    spec: &JobSpec,
) -> Result<(), ApiError> {
    match spec {
        JobSpec::AgentChat(chat) => check_conversation_and_llm(state, tenant, chat).await,
        _ => Ok(()),
    }
}

async fn check_conversation_and_llm(
    state: &AppState,
    tenant: Uuid,
    chat: &AgentChat,
) -> Result<(), ApiError> {
    if let Some(id) = chat.conversation_id
        && !state.conversations.known(tenant, id).await?
    {
        return Err(ApiError::not_found(format!("no conversation {id}")));
    }
    if state.llm.fleet_provider().is_none() && !state.llm_providers.exists(tenant).await? {
        return Err(no_llm());
    }
    Ok(())
}

/// 429 `budget_exceeded`, saying when the budget resets and with `Retry-After` until then.
/// `why` is the worker's own account of a refusal, when there is one.
fn budget_exceeded(budget: &BudgetStatus, why: Option<&str>) -> ApiError {
    let resets_at = budget.resets_at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let message = match (why, budget.limit) {
        // The worker's refusal names the reset too, but not in RFC 3339.
        (Some(why), _) => {
            let why = why.split("; it resets at").next().unwrap_or(why);
            format!("{why}; it resets at {resets_at}")
        }
        (None, Some(limit)) => {
            let left = match budget.remaining() {
                Some(0) | None => "is spent".to_owned(),
                Some(left) if budget.refused => {
                    format!("has {left} tokens left, fewer than a call this month needed")
                }
                Some(left) => format!("has {left} tokens left, too few for a call"),
            };
            format!(
                "the monthly LLM budget of {limit} tokens {left} ({} used, {} held by calls in \
                 flight); it resets at {resets_at}",
                budget.used, budget.reserved
            )
        }
        (None, None) => format!("the monthly LLM budget is spent; it resets at {resets_at}"),
    };
    let retry_after = (budget.resets_at - Utc::now()).num_seconds().max(1) as u64;
    ApiError::too_many_requests("budget_exceeded", message, retry_after)
}

#[derive(Debug, Object)]
pub struct ChatInput {
    /// What the person writes: 1 to 10,000 characters.
    #[oai(validator(min_length = 1, max_length = 10000))]
    pub message: String,
    /// The conversation to continue; absent starts one, whose id is the job's.
    #[oai(nullable)]
    pub conversation_id: Option<Uuid>,
}

/// Tokens an LLM call (or a chat turn's calls) spent.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct TokenCount {
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// A task tool the assistant called while answering.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct ChatToolCall {
    pub name: String,
    pub arguments: Value,
    /// What the tool returned (an error's JSON when it refused).
    pub result: Value,
}

#[derive(Debug, Object)]
pub struct ChatReply {
    /// The `agent.chat` job that answered.
    pub job_id: Uuid,
    pub conversation_id: Uuid,
    /// The assistant's answer.
    pub response: String,
    /// The task tools it called, in order; their changes are made.
    pub tool_calls: Vec<ChatToolCall>,
    pub model: String,
    /// Whose LLM answered: `tenant` (its own, `PUT /v1/llm`) or `fleet`.
    pub provider: String,
    pub usage: TokenCount,
}

#[derive(Debug, Object)]
pub struct ChatPending {
    /// The `agent.chat` job answering; `GET /v1/jobs/{id}` has the reply once it succeeded.
    pub job_id: Uuid,
    pub conversation_id: Uuid,
    /// The job's event stream: the reply arrives as `job_progress` events, piece by piece,
    /// then `job_succeeded` (or `job_dead`).
    pub events_url: String,
}

#[derive(ApiResponse)]
pub enum ChatAnswer {
    /// The reply, within `wait` seconds.
    #[oai(status = 200)]
    Replied(Json<ChatReply>),
    /// Not answered within `wait` seconds: the job goes on; follow `events_url`.
    #[oai(status = 202)]
    Pending(Json<ChatPending>),
}

/// A succeeded `agent.chat` job's result, as the worker writes it.
#[derive(Deserialize)]
struct ChatResult {
    response: String,
    #[serde(default)]
    tool_calls: Vec<ChatToolCall>,
    model: String,
    provider: String,
    usage: TokenCount,
}

pub struct ChatApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Chat")]
impl ChatApi {
    /// Send a chat message
    ///
    /// Submits an `agent.chat` job (checked and recorded as `POST /v1/jobs` would) and waits
    /// up to `wait` seconds for the assistant's reply: 200 with it, or 202 with the job and
    /// its event stream when it takes longer. A conversation that does not exist is 404, a
    /// tenant with no LLM (its own or the fleet's) 422, a spent monthly budget 429; a reply
    /// the LLM could not give is 502 `llm_failed`.
    #[oai(path = "/chat", method = "post", operation_id = "chat")]
    async fn chat(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        body: Json<ChatInput>,
        /// Seconds to wait for the reply, 0 to 60 (default 10).
        #[oai(validator(maximum(value = "60")))]
        wait: Query<Option<u64>>,
        /// Sending the same message again with the same key finds the first job (and its
        /// reply) instead of asking again.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> Result<ChatAnswer, ApiError> {
        let ChatInput {
            message,
            conversation_id,
        } = body.0;
        let mut spec = JobSpec::AgentChat(AgentChat {
            conversation_id,
            message,
            options: JobOptions::default(),
        });
        with_idempotency_header(&mut spec, idempotency_key.0)?;
        // Subscribed before the job exists, so its end cannot be announced unheard.
        let mut live = state.hub.subscribe();
        let job = accept(&state, &auth, &request_id, vec![spec], false)
            .await?
            .remove(0)
            .into_record();
        // The job's own conversation: with an idempotency key the job found may be an
        // earlier one, whose conversation is not necessarily the one this request named.
        let conversation_id = match serde_json::from_value::<JobSpec>(job.payload.clone()) {
            Ok(JobSpec::AgentChat(chat)) => chat.conversation_id.unwrap_or(job.id),
            _ => conversation_id.unwrap_or(job.id),
        };
        let wait = Duration::from_secs(wait.0.unwrap_or(DEFAULT_WAIT_SECS));
        let deadline = Instant::now() + wait;
        let (scope, id) = (Scope::Tenant(auth.0.id), job.id);
        let mut job = job;
        while !finished(&job) && Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = job_end_announced(&mut live, |ended| ended == id) => {}
                _ = tokio::time::sleep(RECHECK_EVERY) => {}
            }
            job = state
                .ledger
                .get(scope, id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        }
        answer(&state, auth.0.id, job, conversation_id).await
    }
}

fn finished(job: &JobRecord) -> bool {
    job.state.parse::<JobState>().is_ok_and(|state| {
        matches!(
            state,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    })
}

/// The chat's answer from its job as it stands.
async fn answer(
    state: &AppState,
    tenant: Uuid,
    job: JobRecord,
    conversation_id: Uuid,
) -> Result<ChatAnswer, ApiError> {
    match job.state.parse::<JobState>() {
        Ok(JobState::Succeeded) => {
            let result: ChatResult = job
                .result
                .and_then(|result| serde_json::from_value(result).ok())
                .ok_or_else(|| {
                    tracing::error!(job_id = %job.id, "an agent.chat job succeeded without a reply");
                    ApiError::internal("internal", format!("job {} has no chat reply", job.id))
                })?;
            Ok(ChatAnswer::Replied(Json(ChatReply {
                job_id: job.id,
                conversation_id,
                response: result.response,
                tool_calls: result.tool_calls,
                model: result.model,
                provider: result.provider,
                usage: result.usage,
            })))
        }
        Ok(JobState::Dead) => {
            let error = job
                .error
                .unwrap_or_else(|| "the chat job failed".to_owned());
            match error.strip_prefix("budget_exceeded: ") {
                Some(why) => {
                    let budget = state.budgets.status(tenant).await?;
                    Err(budget_exceeded(&budget, Some(why)))
                }
                None => Err(ApiError::bad_gateway("llm_failed", error)),
            }
        }
        Ok(JobState::Cancelled) => Err(ApiError::conflict(
            "cancelled",
            format!("job {} was cancelled before it answered", job.id),
        )),
        _ => Ok(ChatAnswer::Pending(Json(ChatPending {
            job_id: job.id,
            conversation_id,
            events_url: format!("/v1/jobs/{}/events", job.id),
        }))),
    }
}
