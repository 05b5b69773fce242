//! `/v1/llm`: a tenant's own LLM provider (bring your own key) — set it, read it back without
//! its key, forget it, and test it with a one-token call. A tenant without one chats on the
//! fleet's provider, when the fleet has one.
//!
//! The test is made by the API itself, to the URL a tenant typed, and its answer is shown to
//! the tenant: so the URL may not name this machine or a private network (unless
//! `TASKFLEET_ALLOW_LOCAL_SITES`), redirects are not followed, and the key is scrubbed from
//! every message.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use serde_json::{Value, json};
use taskfleet_jobs::{
    AuditAction,
    provider_reply::{provider_message, scrub},
    public_address,
};
use taskfleet_storage::{
    AuditEntry, LlmCallKind, LlmProvider, LlmProviderRecord, LlmUsage, ProviderKeyError,
};
use taskfleet_telemetry::metrics;
use uuid::Uuid;

use crate::{auth::TenantKey, chat::no_llm, error::ApiError, state::AppState};

/// The most bytes of a test call's answer read: a chat completion of one token is small.
const ANSWER_BYTES: usize = 64 * 1024;

/// The clients of `POST /v1/llm/test`: each call bounded by `timeout`, connection included,
/// and never redirected.
#[derive(Clone)]
pub struct LlmTestClients {
    /// For the operator's provider: anywhere.
    fleet: reqwest::Client,
    /// For a tenant's: public addresses only (`taskfleet_jobs::public_address`), unless
    /// local sites are let in.
    tenant: reqwest::Client,
}

impl LlmTestClients {
    pub fn new(timeout: Duration, allow_local: bool) -> anyhow::Result<LlmTestClients> {
        let build = |public_only: bool| {
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none());
            if public_only {
                builder = builder.dns_resolver(Arc::new(PublicOnly));
            }
            builder
                .build()
                .map_err(|err| anyhow::anyhow!("cannot build the LLM test's HTTP client: {err}"))
        };
        Ok(LlmTestClients {
            fleet: build(false)?,
            tenant: build(!allow_local)?,
        })
    }
}

/// Resolves names to their public addresses only; a name with none fails to connect.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| public_address::is_public(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Object)]
pub struct LlmProviderInput {
    /// The OpenAI-compatible API, e.g. `https://api.openai.com/v1` (`/chat/completions` is
    /// appended): OpenAI, Gemini's OpenAI endpoint, a hosted vLLM or Ollama.
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub base_url: String,
    #[oai(validator(min_length = 1, max_length = 200))]
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`; absent for a server that takes none. Stored
    /// sealed; no answer ever shows it.
    #[oai(validator(max_length = 4096))]
    #[oai(nullable)]
    pub api_key: Option<String>,
}

impl std::fmt::Debug for LlmProviderInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmProviderInput")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The tenant's provider as it may be shown: never its key.
#[derive(Debug, Object)]
pub struct LlmProviderSettings {
    pub base_url: String,
    pub model: String,
    /// Whether a key is stored.
    pub has_key: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<LlmProviderRecord> for LlmProviderSettings {
    fn from(record: LlmProviderRecord) -> LlmProviderSettings {
        LlmProviderSettings {
            base_url: record.base_url,
            model: record.model,
            has_key: record.has_key,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// What a one-token call to the provider found.
#[derive(Debug, Object)]
pub struct LlmTest {
    pub ok: bool,
    /// Whose provider was called: `tenant` (its own) or `fleet`.
    pub provider: String,
    pub model: String,
    /// How long the call took, when the provider answered it.
    #[oai(skip_serializing_if_is_none)]
    pub latency_ms: Option<u64>,
    /// The provider's HTTP status, when it refused.
    #[oai(skip_serializing_if_is_none)]
    pub status: Option<u16>,
    /// What went wrong, in words, when not ok.
    #[oai(skip_serializing_if_is_none)]
    pub message: Option<String>,
}

#[derive(ApiResponse)]
pub enum Forgotten {
    /// Forgotten, its sealed key with it: chats use the fleet's provider, if any.
    #[oai(status = 204)]
    Deleted,
}

pub struct LlmApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Llm")]
impl LlmApi {
    /// Set the tenant's own LLM provider
    ///
    /// Replaces any earlier one. Chat jobs and focus-list reviews of this tenant call it
    /// from now on, instead of the fleet's.
    #[oai(path = "/llm", method = "put", operation_id = "setLlmProvider")]
    async fn put(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        body: Json<LlmProviderInput>,
    ) -> Result<Json<LlmProviderSettings>, ApiError> {
        let provider = checked(body.0, state.allow_local_llm)?;
        let record = state
            .llm_providers
            .put(&state.sealer, auth.0.id, &provider)
            .await?;
        // Where and which model; never the key.
        let set = AuditEntry::new(AuditAction::LlmProviderSet, Some(auth.0.id), &auth.0.name)
            .with_detail(json!({
                "base_url": record.base_url,
                "model": record.model,
                "has_key": record.has_key,
            }));
        crate::audit::record(&state, &auth, set).await;
        Ok(Json(record.into()))
    }

    /// Get the tenant's own LLM provider
    ///
    /// Without its key. 404 when the tenant has none; the message says whether the fleet's
    /// applies instead.
    #[oai(path = "/llm", method = "get", operation_id = "getLlmProvider")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
    ) -> Result<Json<LlmProviderSettings>, ApiError> {
        match state.llm_providers.record(auth.0.id).await? {
            Some(record) => Ok(Json(record.into())),
            None if state.llm.fleet_provider().is_some() => Err(ApiError::not_found(
                "this tenant has no LLM provider of its own: the fleet's default provider \
                 applies",
            )),
            None => Err(ApiError::not_found(
                "this tenant has no LLM provider of its own, and the fleet has none either: \
                 set one with PUT /v1/llm to chat",
            )),
        }
    }

    /// Forget the tenant's own LLM provider
    #[oai(path = "/llm", method = "delete", operation_id = "deleteLlmProvider")]
    async fn delete(&self, state: Data<&AppState>, auth: TenantKey) -> Result<Forgotten, ApiError> {
        match state.llm_providers.delete(auth.0.id).await? {
            true => {
                let deleted = AuditEntry::new(
                    AuditAction::LlmProviderDeleted,
                    Some(auth.0.id),
                    &auth.0.name,
                );
                crate::audit::record(&state, &auth, deleted).await;
                Ok(Forgotten::Deleted)
            }
            false => Err(ApiError::not_found(
                "this tenant has no LLM provider of its own",
            )),
        }
    }

    /// Test the LLM provider
    ///
    /// Makes a one-token chat call to the tenant's own provider, or else the fleet's, and
    /// says whether it answered, how fast, or what it said was wrong. Its tokens count
    /// against the tenant's budget (kind `test`).
    #[oai(path = "/llm/test", method = "post", operation_id = "testLlmProvider")]
    async fn test(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
    ) -> Result<Json<LlmTest>, ApiError> {
        let (owner, provider, client) = match own_provider(&state, auth.0.id).await? {
            Some(provider) => ("tenant", provider, &state.llm_http.tenant),
            None => (
                "fleet",
                state.llm.fleet_provider().ok_or_else(no_llm)?,
                &state.llm_http.fleet,
            ),
        };
        let ping = ping(client, &provider, state.llm.call_timeout()).await;
        let mut test = LlmTest {
            ok: false,
            provider: owner.to_owned(),
            model: provider.model.clone(),
            latency_ms: None,
            status: None,
            message: None,
        };
        match ping {
            Ping::Answered {
                latency,
                input_tokens,
                output_tokens,
            } => {
                test.ok = true;
                test.latency_ms = Some(latency.as_millis() as u64);
                record_usage(&state, auth.0.id, &provider, input_tokens, output_tokens).await;
            }
            Ping::Failed { status, message } => {
                test.status = status;
                test.message = Some(scrub(message, &provider.api_key));
            }
        }
        Ok(Json(test))
    }
}

/// The tenant's own provider with its key opened, if it has one.
async fn own_provider(state: &AppState, tenant: Uuid) -> Result<Option<LlmProvider>, ApiError> {
    state
        .llm_providers
        .get(tenant, &state.sealer)
        .await
        .map_err(|err| match err {
            ProviderKeyError::Db(err) => err.into(),
            ProviderKeyError::Open(err) => {
                tracing::error!(%err, %tenant, "a tenant's LLM API key cannot be opened");
                ApiError::internal(
                    "llm_key_unreadable",
                    "the tenant's LLM API key cannot be opened with this server's encryption \
                     keys; set the provider again with PUT /v1/llm",
                )
            }
        })
}

/// Counts a test call's tokens against the tenant's budget. A failure costs the record only.
async fn record_usage(
    state: &AppState,
    tenant: Uuid,
    provider: &LlmProvider,
    input_tokens: i64,
    output_tokens: i64,
) {
    if input_tokens + output_tokens == 0 {
        return;
    }
    let usage = LlmUsage {
        tenant,
        job: None,
        model: &provider.model,
        kind: LlmCallKind::Test,
        input_tokens,
        output_tokens,
    };
    for (direction, tokens) in [("input", input_tokens), ("output", output_tokens)] {
        if tokens > 0 {
            metrics::LLM_TOKENS
                .with_label_values(&[&LlmCallKind::Test.name(), &provider.model, direction])
                .inc_by(tokens as u64);
        }
    }
    if let Err(err) = state.budgets.record(usage).await {
        tracing::warn!(%err, %tenant, "could not record an LLM test call's tokens");
    }
}

/// The provider as typed, checked and tidied (spaces and a trailing `/` trimmed).
fn checked(input: LlmProviderInput, allow_local: bool) -> Result<LlmProvider, ApiError> {
    let example = "e.g. https://api.openai.com/v1";
    let typed = input.base_url.trim();
    let url = reqwest::Url::parse(typed)
        .map_err(|err| ApiError::invalid(format!("`base_url` is not a URL ({err}); {example}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid(format!(
            "`base_url` must start with http:// or https://; {example}"
        )));
    }
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err(ApiError::invalid(format!(
            "`base_url` names no host; {example}"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(
            "`base_url` must not hold credentials: send the key as `api_key`",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ApiError::invalid(format!(
            "`base_url` must be the API's address alone, without a query or fragment; {example}"
        )));
    }
    if !allow_local && public_address::is_refused_host(host) {
        return Err(ApiError::invalid(format!(
            "`base_url` names this machine or a private network, which a tenant's provider may \
             not; {example}"
        )));
    }
    let model = input.model.trim();
    if model.is_empty() || model.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "`model` must be a model's name, e.g. gpt-4o-mini",
        ));
    }
    // A key pasted from a file often ends with a newline, which no header may carry.
    let api_key = input.api_key.as_deref().unwrap_or("").trim();
    if api_key.chars().any(char::is_control) {
        return Err(ApiError::invalid("`api_key` holds control characters"));
    }
    Ok(LlmProvider {
        base_url: url.as_str().trim_end_matches('/').to_owned(),
        model: model.to_owned(),
        api_key: api_key.to_owned(),
    })
}

/// How a one-token call went.
enum Ping {
    Answered {
        latency: Duration,
        input_tokens: i64,
        output_tokens: i64,
    },
    Failed {
        status: Option<u16>,
        message: String,
    },
}

/// `POST {base_url}/chat/completions` asking for one token.
async fn ping(http: &reqwest::Client, provider: &LlmProvider, timeout: Duration) -> Ping {
    let mut request = http
        .post(format!("{}/chat/completions", provider.base_url))
        .json(&json!({
            "model": provider.model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }));
    if !provider.api_key.is_empty() {
        request = request.bearer_auth(&provider.api_key);
    }
    let started = Instant::now();
    let answered = async {
        let mut response = request.send().await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() >= ANSWER_BYTES {
                body.truncate(ANSWER_BYTES);
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = match answered.await {
        Ok(answer) => answer,
        Err(err) => {
            return Ping::Failed {
                status: None,
                message: unreachable(&err, timeout),
            };
        }
    };
    let latency = started.elapsed();
    if !(200..300).contains(&status) {
        return Ping::Failed {
            status: Some(status),
            message: refusal(status, &body),
        };
    }
    let completion = serde_json::from_str::<Value>(&body)
        .ok()
        .filter(|answer| answer.get("choices").is_some_and(Value::is_array));
    let Some(completion) = completion else {
        return Ping::Failed {
            status: Some(status),
            message: format!(
                "the LLM provider answered HTTP {status}, but not with a chat completion: is \
                 `base_url` the API's (it usually ends in /v1)?"
            ),
        };
    };
    let tokens = |name: &str| {
        completion
            .pointer(&format!("/usage/{name}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    Ping::Answered {
        latency,
        input_tokens: tokens("prompt_tokens"),
        output_tokens: tokens("completion_tokens"),
    }
}

/// A refusal in plain words.
fn refusal(status: u16, body: &str) -> String {
    let detail = provider_message(status, body);
    match status {
        401 | 403 => format!("the LLM provider rejected the API key ({detail})"),
        429 => format!("the LLM provider is rate limiting: {detail}"),
        500.. => format!("the LLM provider is unavailable: {detail}"),
        404 => format!("the LLM provider refused the call: {detail}; check `base_url` and `model`"),
        _ => format!("the LLM provider refused the call: {detail}"),
    }
}

/// Why no answer came, in plain words.
fn unreachable(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!(
            "the LLM provider did not answer within {} s",
            timeout.as_secs()
        );
    }
    // The innermost cause says it best: "Connection refused", "failed to lookup address".
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    match err.is_connect() {
        true => format!("the LLM provider cannot be reached: {cause}"),
        false => format!("the call to the LLM provider failed: {cause}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(base_url: &str, api_key: Option<&str>) -> LlmProviderInput {
        LlmProviderInput {
            base_url: base_url.to_owned(),
            model: " gpt-4o-mini ".to_owned(),
            api_key: api_key.map(str::to_owned),
        }
    }

    #[test]
    fn providers_are_tidied_and_checked() {
        let provider =
            checked(input(" https://api.openai.com/v1/ ", Some("sk-1\n")), false).unwrap();
        assert_eq!(provider.base_url, "https://api.openai.com/v1");
        assert_eq!(provider.model, "gpt-4o-mini");
        assert_eq!(provider.api_key, "sk-1");
        for refused in [
            "api.openai.com/v1",
            "ftp://api.openai.com/v1",
            "https://user:pw@api.openai.com/v1",
            "https://api.openai.com/v1?key=1",
            "http://127.0.0.1:11434/v1",
            "http://localhost:11434/v1",
            "http://localhost./v1",
            "http://100.100.100.200/latest",
            "http://10.0.0.5/v1",
            "http://169.254.169.254/latest",
            "http://[::1]:8000/v1",
            "http://[::ffff:192.168.1.1]/v1",
        ] {
            assert!(checked(input(refused, None), false).is_err(), "{refused}");
        }
        assert!(checked(input("http://127.0.0.1:11434/v1", None), true).is_ok());
        assert!(checked(input("https://api.openai.com/v1", Some("sk\u{7}x")), false).is_err());
    }

    #[test]
    fn refusals_are_told_in_plain_words() {
        let openai = r#"{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}"#;
        assert_eq!(
            refusal(401, openai),
            "the LLM provider rejected the API key (HTTP 401: Incorrect API key provided (invalid_api_key))"
        );
        let overloaded = r#"{"error": {"message": "The server is overloaded.", "type": "server_error", "param": null, "code": null}}"#;
        assert_eq!(
            refusal(503, overloaded),
            "the LLM provider is unavailable: HTTP 503: The server is overloaded. (server_error)"
        );
        assert_eq!(
            refusal(502, "<html>Bad gateway</html>"),
            "the LLM provider is unavailable: HTTP 502"
        );
        assert!(
            refusal(429, r#"{"error": "slow down"}"#)
                .starts_with("the LLM provider is rate limiting: HTTP 429: slow down")
        );
    }
}
