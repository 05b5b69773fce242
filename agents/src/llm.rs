//! One OpenAI-compatible chat model, as every LLM caller of this crate uses it: the
//! connection (rig-core's Chat Completions wire with a per-call timeout), what its failures
//! mean for a job ([`LlmError`]: a rejected key is dead, a rate limit waits the provider's
//! delay, an outage retries), and the hook that meters a run's calls.
//!
//! `chat`, not `completion`: OpenAI's flagship route is the Responses API, which Ollama, vLLM
//! and most compatible servers do not serve.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::future::BoxFuture;
use rig_agent::{
    agent::{
        AgentHook, CompletionCallAction, CompletionCallEvent, HookContext, ModelTurnAction,
        ModelTurnFinished,
    },
    completion::PromptError,
};
use rig_core::{
    ProviderError,
    completion::Usage,
    driver::Model,
    error::ErrorKind,
    providers::openai::{
        OpenAIConfig,
        wire::{Auth, Chat},
    },
};

use taskfleet_jobs::public_address;

use taskfleet_jobs::provider_reply::{provider_message, scrub};

use crate::openai_embedder::retry_after;

/// A chat model at an OpenAI-compatible endpoint. Cheap to clone: clones share one HTTP
/// client.
#[derive(Clone)]
pub struct LlmModel {
    inner: Arc<Inner>,
}

struct Inner {
    model_name: String,
    base_url: String,
    chat: Model<Chat>,
    call_timeout: Duration,
    /// Kept to scrub it from messages.
    api_key: String,
}

impl fmt::Debug for LlmModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmModel")
            .field("model", &self.inner.model_name)
            .field("base_url", &self.inner.base_url)
            .field("call_timeout", &self.inner.call_timeout)
            .finish_non_exhaustive()
    }
}

impl LlmModel {
    /// `base_url` like "https://api.openai.com/v1" or "http://127.0.0.1:11434/v1" (the
    /// `/chat/completions` path is appended). An empty `api_key` sends no `Authorization`
    /// header, for local servers that take none. `call_timeout` bounds each model call,
    /// connection and whole answer included. `reach` is [`Reach::Public`] for a URL a tenant
    /// typed, [`Reach::Anywhere`] for the operator's.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: &str,
        call_timeout: Duration,
        reach: Reach,
    ) -> anyhow::Result<LlmModel> {
        let base_url = base_url.trim().trim_end_matches('/');
        let Some(host) = base_url
            .strip_prefix("https://")
            .or_else(|| base_url.strip_prefix("http://"))
        else {
            anyhow::bail!("the LLM base URL must start with http:// or https://");
        };
        anyhow::ensure!(
            !host.is_empty() && !host.starts_with('/'),
            "the LLM base URL names no host"
        );
        let model = model.trim();
        anyhow::ensure!(!model.is_empty(), "the LLM model is empty");
        // A key read from a file often ends with a newline, which no header may carry.
        let api_key = api_key.trim();
        anyhow::ensure!(
            !api_key.chars().any(char::is_control),
            "the LLM API key holds control characters"
        );
        anyhow::ensure!(!call_timeout.is_zero(), "the LLM call timeout is zero");
        let host_name = host.split(['/', '?', '#']).next().unwrap_or(host);
        let host_name = match host_name.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host_name,
        };
        anyhow::ensure!(
            reach == Reach::Anywhere || !public_address::is_refused_host(host_name),
            "the LLM base URL names this machine or a private network"
        );

        let mut config = OpenAIConfig::new(api_key).with_base_url(base_url);
        if api_key.is_empty() {
            config.auth = Auth::OptionalBearer;
        }
        // Its own reqwest client, for the per-request timeout (connection and body included).
        // No redirects: an answer must come from the endpoint named, not wherever it points.
        let mut http = rig_reqwest::reqwest::Client::builder()
            .timeout(call_timeout)
            .redirect(rig_reqwest::reqwest::redirect::Policy::none());
        if reach == Reach::Public {
            http = http.dns_resolver(PublicOnly);
        }
        let http = http
            .build()
            .map_err(|error| anyhow::anyhow!("cannot build the LLM's HTTP client: {error}"))?;
        let chat = config
            .connect(rig_reqwest::ReqwestClient::from(http))
            .chat(model);
        Ok(LlmModel {
            inner: Arc::new(Inner {
                model_name: model.to_owned(),
                base_url: base_url.to_owned(),
                chat,
                call_timeout,
                api_key: api_key.to_owned(),
            }),
        })
    }

    /// The model's name, as configured.
    pub fn model(&self) -> &str {
        &self.inner.model_name
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    pub(crate) fn chat(&self) -> Model<Chat> {
        self.inner.chat.clone()
    }

    /// `message` without this model's API key in it.
    pub(crate) fn scrub(&self, message: String) -> String {
        scrub(message, &self.inner.api_key)
    }

    /// What a failed run means, with the key scrubbed from every message.
    pub(crate) fn failure(&self, error: &PromptError, meter: &RunMeter) -> LlmError {
        match classify(error, meter, self.inner.call_timeout) {
            LlmError::RateLimited {
                retry_after,
                message,
            } => LlmError::RateLimited {
                retry_after,
                message: self.scrub(message),
            },
            LlmError::Unavailable(message) => LlmError::Unavailable(self.scrub(message)),
            LlmError::NoAnswer(message) => LlmError::NoAnswer(self.scrub(message)),
            LlmError::Failed(message) => LlmError::Failed(self.scrub(message)),
            LlmError::Rejected => LlmError::Rejected,
        }
    }
}

/// Where a run's tokens are accounted: the tenant's monthly budget, kept by the caller.
pub trait TokenBudget: Send + Sync + 'static {
    /// Holds `tokens` for the next model call; a refusal stops the run before the call.
    fn reserve(&self, tokens: u64) -> BoxFuture<'static, Result<(), BudgetRefusal>>;

    /// The call last reserved for is over and spent `usage` (zeros: it got no answer).
    fn settle(&self, usage: TokenUsage) -> BoxFuture<'static, ()>;
}

/// Why a call was not made for the budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefusal {
    /// The month's budget has no room for the call: retrying cannot help before it resets.
    #[error("budget_exceeded: {0}")]
    Exceeded(String),
    /// The budget could not be checked (its store failed): worth retrying.
    #[error("the token budget could not be checked: {0}")]
    Unavailable(String),
}

/// Which addresses a model's endpoint may be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The operator's endpoint: anywhere, a local Ollama included.
    Anywhere,
    /// A tenant's endpoint: public internet addresses only, checked on every address its
    /// name resolves to when a connection is made (`taskfleet_jobs::public_address`).
    Public,
}

/// Resolves names to their public addresses only; a name with none fails to connect.
struct PublicOnly;

impl rig_reqwest::reqwest::dns::Resolve for PublicOnly {
    fn resolve(
        &self,
        name: rig_reqwest::reqwest::dns::Name,
    ) -> rig_reqwest::reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| public_address::is_public(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as rig_reqwest::reqwest::dns::Addrs)
        })
    }
}

/// Why a model run gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// The provider refused the credentials (401/403): retrying cannot help.
    #[error("the LLM provider rejected the API key")]
    Rejected,
    /// The provider asked us to slow down (429); `retry_after` is its delay when it said.
    #[error("the LLM provider is rate limiting: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// The provider failed or could not be reached (5xx, timeouts, connection errors).
    #[error("the LLM provider is unavailable: {0}")]
    Unavailable(String),
    /// The model did not finish: it kept calling tools, or called one that does not exist.
    #[error("the LLM gave no answer: {0}")]
    NoAnswer(String),
    /// Anything else: another 4xx, a reply that is not a chat completion, an exhausted quota.
    #[error("the LLM call failed: {0}")]
    Failed(String),
}

impl LlmError {
    /// Whether a later run may succeed without anyone changing anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. } | LlmError::Unavailable(_)
        )
    }

    /// The delay the provider asked for, when it asked.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the provider itself is failing (what a circuit breaker counts), as opposed
    /// to answering that it is up: a refusal, a rate limit, a model that rambles.
    pub fn is_outage(&self) -> bool {
        matches!(self, LlmError::Unavailable(_))
    }
}

/// Tokens spent, summed over every model call of a review.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
}

impl TokenUsage {
    pub(crate) fn add(&mut self, usage: &Usage) {
        self.input += usage.input_tokens.unwrap_or(0);
        self.output += usage.output_tokens.unwrap_or(0);
    }
}

impl From<Usage> for TokenUsage {
    fn from(usage: Usage) -> TokenUsage {
        let mut total = TokenUsage::default();
        total.add(&usage);
        total
    }
}

/// Sorts a failed run by what the caller should do about it. `meter` knows how long the
/// last model call ran.
fn classify(error: &PromptError, meter: &RunMeter, call_timeout: Duration) -> LlmError {
    match error {
        PromptError::MaxTurns { max_turns, .. } => {
            return LlmError::NoAnswer(format!(
                "no answer within {max_turns} model calls (it kept calling tools)"
            ));
        }
        PromptError::UnknownToolCall { tool_name, .. } => {
            return LlmError::NoAnswer(format!(
                "it called a tool that does not exist: {tool_name}"
            ));
        }
        _ => {}
    }
    if let Some(status) = error.provider_response_status() {
        let status = status.as_u16();
        let message = provider_message(status, error.provider_response_body().unwrap_or(""));
        return match status {
            401 | 403 => LlmError::Rejected,
            // OpenAI answers an exhausted quota with 429 too, but waiting cannot mend billing.
            429 if message.contains("insufficient_quota") => LlmError::Failed(message),
            429 => LlmError::RateLimited {
                retry_after: error.provider_response_headers().and_then(|headers| {
                    retry_after(
                        |name| headers.get(name).and_then(|value| value.to_str().ok()),
                        Utc::now(),
                    )
                }),
                message,
            },
            // 408: the server gave up waiting for the request, a timeout like ours.
            408 | 500..=599 => LlmError::Unavailable(message),
            _ => LlmError::Failed(message),
        };
    }
    let described = described(error);
    let transport = match error {
        PromptError::Provider(error) => matches!(error, ProviderError::Http(_)),
        PromptError::Report(report) => matches!(report.kind, ErrorKind::Http | ErrorKind::Timeout),
        _ => false,
    };
    // The client's timeout ends a call `call_timeout` after it began.
    let timed_out = described.contains("timed out")
        || (transport && meter.call_elapsed().is_some_and(|ran| ran >= call_timeout));
    if timed_out {
        return LlmError::Unavailable(format!("no answer within {}s", call_timeout.as_secs_f64()));
    }
    let unavailable = transport
        || match error {
            // A reply cut short, or another failure rig calls transient.
            PromptError::Provider(error) => error.is_retryable(),
            // The same, relayed over the agent's bus.
            PromptError::Report(report) => report.retryable,
            _ => false,
        };
    if unavailable {
        LlmError::Unavailable(described)
    } else {
        LlmError::Failed(described)
    }
}

/// The error and each of its causes, "outer: inner: …", without repeats.
fn described(error: &PromptError) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if let PromptError::Report(report) = error {
        parts.extend(report.source_chain.iter().cloned());
    }
    let mut seen = HashSet::new();
    parts.retain(|part| !part.is_empty() && seen.insert(part.clone()));
    // A cause already quoted inside its parent says nothing new.
    let kept: Vec<&String> = parts
        .iter()
        .enumerate()
        .filter(|(at, part)| {
            !parts[..*at]
                .iter()
                .any(|outer| outer.contains(part.as_str()))
        })
        .map(|(_, part)| part)
        .collect();
    kept.iter()
        .map(|part| part.as_str())
        .collect::<Vec<_>>()
        .join(": ")
}

/// What a run's hook sees of its model calls: their summed usage (for a run that fails after
/// some answered), and when the latest began (an error relayed over the agent's bus no longer
/// says that its request timed out).
#[derive(Clone, Default)]
pub(crate) struct RunMeter {
    state: Arc<Mutex<MeterState>>,
}

#[derive(Default)]
struct MeterState {
    usage: TokenUsage,
    call_started: Option<Instant>,
}

impl RunMeter {
    fn state(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn usage(&self) -> TokenUsage {
        self.state().usage
    }

    /// How long the latest model call has been running.
    fn call_elapsed(&self) -> Option<Duration> {
        self.state().call_started.map(|started| started.elapsed())
    }
}

impl AgentHook for RunMeter {
    async fn on_completion_call(
        &self,
        _ctx: &HookContext,
        _event: CompletionCallEvent<'_>,
    ) -> CompletionCallAction {
        self.state().call_started = Some(Instant::now());
        CompletionCallAction::Continue
    }

    async fn on_model_turn_finished(
        &self,
        _ctx: &HookContext,
        event: ModelTurnFinished<'_>,
    ) -> ModelTurnAction {
        self.state().usage.add(&event.usage);
        ModelTurnAction::Continue
    }
}

/// Tokens of `text` in OpenAI's o200k encoding, which ships inside tiktoken-rs (no download).
/// Other models' tokenizers differ a little; the count is for budgets and trimming.
pub fn count_tokens(text: &str) -> usize {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len()
}

/// Reserves each model call's most before it is sent (the fixed part of every request, what
/// the run has said so far, and the answer's `max_tokens`), and settles it when it answered.
#[derive(Clone)]
pub(crate) struct BudgetHook {
    host: Arc<dyn TokenBudget>,
    /// The system prompt and the tool definitions, sent with every call.
    fixed_tokens: usize,
    max_answer_tokens: u64,
    /// The prompt tokens counted for the call in flight.
    prompt_tokens: Arc<Mutex<u64>>,
    refused: Arc<Mutex<Option<BudgetRefusal>>>,
}

impl BudgetHook {
    pub(crate) fn new(
        host: Arc<dyn TokenBudget>,
        fixed_tokens: usize,
        max_answer_tokens: u64,
    ) -> BudgetHook {
        BudgetHook {
            host,
            fixed_tokens,
            max_answer_tokens,
            prompt_tokens: Arc::new(Mutex::new(0)),
            refused: Arc::new(Mutex::new(None)),
        }
    }

    /// Why the budget stopped the run, when it did.
    pub(crate) fn refusal(&self) -> Option<BudgetRefusal> {
        self.refused
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

impl AgentHook for BudgetHook {
    async fn on_completion_call(
        &self,
        _ctx: &HookContext,
        event: CompletionCallEvent<'_>,
    ) -> CompletionCallAction {
        let sent = serde_json::to_string(&(event.history, event.prompt)).unwrap_or_default();
        let prompt = (self.fixed_tokens + count_tokens(&sent)) as u64;
        *self
            .prompt_tokens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = prompt;
        match self.host.reserve(prompt + self.max_answer_tokens).await {
            Ok(()) => CompletionCallAction::Continue,
            Err(refusal) => {
                let reason = refusal.to_string();
                *self
                    .refused
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(refusal);
                CompletionCallAction::Stop(reason)
            }
        }
    }

    async fn on_model_turn_finished(
        &self,
        _ctx: &HookContext,
        event: ModelTurnFinished<'_>,
    ) -> ModelTurnAction {
        let mut usage = TokenUsage::from(event.usage);
        if usage == TokenUsage::default() {
            // A server that reports no usage (some ignore `stream_options.include_usage`) is
            // charged what the call held: spending must never go unseen by the budget.
            let prompt = *self
                .prompt_tokens
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            tracing::warn!(
                prompt,
                "the LLM reported no token usage; charging the reservation"
            );
            usage = TokenUsage {
                input: prompt,
                output: self.max_answer_tokens,
            };
        }
        self.host.settle(usage).await;
        ModelTurnAction::Continue
    }
}
