//! The fake OpenAI: `POST /openai/v1/embeddings` and `POST /openai/v1/chat/completions`, so the
//! base URL an OpenAI client takes is `{url}/openai/v1`.
//!
//! It answers as OpenAI does: the key as a Bearer token (only [`OPENAI_API_KEY`]), the request
//! `{model, input: string | [string] | [token] | [[token]], dimensions?, encoding_format?}`,
//! the answer `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//! "model", "usage"}` with OpenAI's `x-ratelimit-*` and `openai-*` headers, and every refusal in
//! its `{"error": {"message", "type", "param", "code"}}` shape.
//!
//! The vectors hash the lower-cased words of each input into `dimensions` buckets (256 when the
//! request names none), signed, and L2-normalised: identical texts get identical vectors, and
//! texts that share words point the same way. Like the other fakes its budget never runs out
//! by itself: a 429 comes only from [`FaultRule::openai_rate_limited`].
//!
//! The chat model is a scripted focus-list reviewer ([`ChatMode`]): it answers in the
//! chat-completions shape (`choices[].message` with `tool_calls` and `finish_reason:
//! "tool_calls"`, or `content` and `"stop"`; `usage`), checks the conversation as OpenAI does (a
//! `tool` message answers a call of the assistant message before it, every call is answered),
//! and remembers the tool results it was sent.
//!
//! [`FaultRule::openai_rate_limited`]: crate::fake_providers::FaultRule::openai_rate_limited

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use base64::Engine as _;
use poem::{Request, Response, Route, handler, post};
use serde_json::{Value, json};

use super::{lock, reply, traffic::Answer};

/// The one key the fake accepts.
pub const OPENAI_API_KEY: &str = "sk-fake-taskfleet";

/// The width of a vector when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 256;

/// OpenAI's most inputs in one request.
const MAX_INPUTS: usize = 2048;

const REQUEST_LIMIT: u64 = 3_000;
const TOKEN_LIMIT: u64 = 1_000_000;
const ORGANIZATION: &str = "org-taskfleetfake";
const KEYS_PAGE: &str = "https://platform.openai.com/account/api-keys";

/// The tool the fake chat model reviews focus lists with (`taskfleet_agents::llm_review`'s).
const READ_CANDIDATES: &str = "read_candidates";

/// The reason the fake reviewer gives each pick.
pub const FAKE_REVIEW_REASON: &str = "picked by the fake reviewer";

/// The id [`ChatMode::UnknownId`] picks: no task's.
pub const UNKNOWN_TASK_ID: &str = "00000000-0000-4000-8000-00000000dead";

pub(crate) fn routes() -> Route {
    Route::new()
        .at("/v1/embeddings", post(embeddings))
        .at("/v1/chat/completions", post(chat_completions))
}

/// How the fake chat model answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChatMode {
    /// Until the conversation holds a tool result, calls `read_candidates` for today, week and
    /// month (three calls in one turn); then answers JSON `{"today": [{"id", "reason"}], "week",
    /// "month"}` picking, in each horizon, the formula's top 3 (by `formula_rank`) in reverse
    /// order, each with the reason [`FAKE_REVIEW_REASON`].
    #[default]
    Reviewer,
    /// Reads the candidates as the reviewer does, then answers prose, not JSON.
    OffSchema,
    /// Reads the candidates, then answers the reviewer's JSON with [`UNKNOWN_TASK_ID`] as the
    /// first pick for today.
    UnknownId,
    /// Calls `read_candidates` for today on every turn and never answers.
    ToolsForever,
}

/// A tool result a chat request carried, as the model was sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatToolResult {
    /// The called tool's name.
    pub tool: String,
    /// The call's arguments (a string when they were not JSON).
    pub arguments: Value,
    /// The result's text.
    pub content: String,
}

/// What the chat model has seen and spent.
#[derive(Default)]
pub(crate) struct Chat {
    pub mode: ChatMode,
    /// Each tool result once, in the order first received.
    pub tool_results: Vec<ChatToolResult>,
    seen_calls: HashSet<String>,
    calls_made: u64,
    /// Tokens reported in `usage`, over every answer.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The fake's per-minute budget, reported in the `x-ratelimit-*` headers, and its chat model.
#[derive(Default)]
pub(crate) struct OpenAi {
    window_start: Option<Instant>,
    requests: u64,
    tokens: u64,
    served: u64,
    pub chat: Chat,
}

impl OpenAi {
    /// Counts a request of `tokens` tokens; its request id and the budget headers.
    fn spend(&mut self, tokens: u64) -> (String, Vec<(&'static str, String)>) {
        let now = Instant::now();
        let start = match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(60) => start,
            _ => {
                self.requests = 0;
                self.tokens = 0;
                self.window_start = Some(now);
                now
            }
        };
        self.requests += 1;
        self.tokens += tokens;
        self.served += 1;
        let reset = (start + Duration::from_secs(60)).saturating_duration_since(now);
        let headers = vec![
            ("x-ratelimit-limit-requests", REQUEST_LIMIT.to_string()),
            ("x-ratelimit-limit-tokens", TOKEN_LIMIT.to_string()),
            // Never 0: see the module documentation.
            (
                "x-ratelimit-remaining-requests",
                REQUEST_LIMIT
                    .saturating_sub(self.requests)
                    .max(1)
                    .to_string(),
            ),
            (
                "x-ratelimit-remaining-tokens",
                TOKEN_LIMIT.saturating_sub(self.tokens).max(1).to_string(),
            ),
            ("x-ratelimit-reset-requests", go_duration(reset)),
            ("x-ratelimit-reset-tokens", go_duration(reset)),
        ];
        (format!("req_{:032x}", self.served), headers)
    }
}

/// A duration as Go (and so OpenAI) prints it: "120ms", "1.5s", "6m0s".
fn go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (minutes, millis) = (millis / 60_000, millis % 60_000);
    let seconds = format!("{}.{:03}", millis / 1000, millis % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// OpenAI's error body.
fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn refusal(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    reply::json(
        status,
        &error_body(message, "invalid_request_error", param, code),
    )
}

/// OpenAI's answer to a body that is not JSON.
fn unparsable() -> Response {
    refusal(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
        None,
        None,
    )
}

/// OpenAI's answer to an input it cannot read (an empty list, an empty string, a mix).
fn invalid_input() -> Response {
    refusal(
        400,
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        None,
        None,
    )
}

/// "sk-abc*************wxyz", as OpenAI quotes a key it does not know.
fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// What one input is made of.
enum Input {
    Text(String),
    Tokens(Vec<u64>),
}

impl Input {
    /// The lower-cased words of a text (token ids for a token array), never none.
    fn words(&self) -> Vec<String> {
        match self {
            Input::Text(text) => {
                let words: Vec<String> = text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|word| !word.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                if words.is_empty() {
                    vec![text.clone()]
                } else {
                    words
                }
            }
            Input::Tokens(tokens) => tokens.iter().map(|token| format!("#{token}")).collect(),
        }
    }
}

/// `input` as OpenAI takes it, or `None` when OpenAI would call it invalid.
fn inputs(input: &Value) -> Option<Vec<Input>> {
    let text = |value: &Value| {
        value
            .as_str()
            .filter(|text| !text.is_empty())
            .map(|text| Input::Text(text.to_owned()))
    };
    let tokens = |value: &Value| -> Option<Input> {
        let tokens = value
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()?;
        (!tokens.is_empty()).then_some(Input::Tokens(tokens))
    };
    let inputs = match input {
        Value::String(_) => vec![text(input)?],
        Value::Array(items) if items.first().is_some_and(Value::is_u64) => vec![tokens(input)?],
        Value::Array(items) if items.first().is_some_and(Value::is_array) => {
            items.iter().map(tokens).collect::<Option<_>>()?
        }
        Value::Array(items) => items.iter().map(text).collect::<Option<_>>()?,
        _ => return None,
    };
    (!inputs.is_empty() && inputs.len() <= MAX_INPUTS).then_some(inputs)
}

/// FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
fn fnv1a(word: &str) -> u64 {
    word.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The signed feature hash of `words` into `dimensions` buckets, L2-normalised.
fn feature_vector(words: &[String], dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dimensions];
    for word in words {
        let hash = fnv1a(word);
        let bucket = (hash % dimensions as u64) as usize;
        vector[bucket] += if hash >> 63 == 1 { -1.0 } else { 1.0 };
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    } else {
        // Words whose signs cancelled out: still a unit vector, and still the same one for
        // the same text.
        vector[(fnv1a(&words.concat()) % dimensions as u64) as usize] = 1.0;
    }
    vector
}

/// OpenAI's 401 for a missing or unknown key, or `None` for the one key the fake accepts.
fn unauthorized(req: &Request) -> Option<Response> {
    match reply::bearer(req).filter(|key| !key.is_empty()) {
        None => Some(refusal(
            401,
            &format!(
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from {KEYS_PAGE}."
            ),
            None,
            None,
        )),
        Some(key) if key != OPENAI_API_KEY => Some(refusal(
            401,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at {KEYS_PAGE}.",
                masked(key)
            ),
            None,
            Some("invalid_api_key"),
        )),
        Some(_) => None,
    }
}

#[handler]
async fn embeddings(req: &Request, body: String) -> Response {
    if let Some(refused) = unauthorized(req) {
        return refused;
    }

    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return unparsable();
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return refusal(400, "you must provide a model parameter", None, None);
    };
    let Some(inputs) = request.get("input").and_then(inputs) else {
        return invalid_input();
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(_) if model == "text-embedding-ada-002" => {
            return refusal(
                400,
                "This model does not support specifying dimensions.",
                None,
                None,
            );
        }
        Some(value) => match value.as_u64().filter(|n| (1..=3072).contains(n)) {
            Some(dimensions) => dimensions as usize,
            None => {
                return refusal(
                    400,
                    &format!(
                        "Invalid value for 'dimensions' = {value}. Must be an integer between 1 and 3072."
                    ),
                    Some("dimensions"),
                    Some("invalid_value"),
                );
            }
        },
    };
    let base64 = match request.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return refusal(
                400,
                &format!("Invalid value: '{other}'. Supported values are: 'float' and 'base64'."),
                Some("encoding_format"),
                Some("invalid_value"),
            );
        }
    };

    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let words = input.words();
            tokens += words.len() as u64;
            let vector = feature_vector(&words, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let (request_id, budget) = lock(req).openai.spend(tokens);

    with_openai_headers(
        reply::json(
            200,
            &json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }),
        ),
        model,
        request_id,
        budget,
    )
}

/// `response` with the headers OpenAI sends with every answer: the model, organisation and
/// version, the request id and the rate-limit budget.
fn with_openai_headers(
    mut response: Response,
    model: &str,
    request_id: String,
    budget: Vec<(&'static str, String)>,
) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        ("openai-model", model.to_owned()),
        ("openai-organization", ORGANIZATION.to_owned()),
        ("openai-processing-ms", "12".to_owned()),
        ("openai-version", "2020-10-01".to_owned()),
        ("x-request-id", request_id),
    ];
    for (name, value) in fixed.into_iter().chain(budget) {
        headers.insert(
            name,
            value
                .parse()
                .expect("names, numbers and ids are header values"),
        );
    }
    response
}

/// What a chat request's messages say: every tool result, with its call.
struct Conversation {
    results: Vec<(String, ChatToolResult)>,
}

/// The text of a message's `content`: a string, or the text parts of an array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl Conversation {
    /// Reads `messages` as OpenAI checks them: a `tool` message answers a call of the
    /// assistant message before it, and every call is answered before the conversation goes
    /// on. Else OpenAI's 400.
    fn read(messages: &[Value]) -> Result<Conversation, Box<Response>> {
        let mut calls: Vec<(String, String, Value)> = Vec::new();
        let mut pending: Vec<String> = Vec::new();
        let mut results = Vec::new();
        let unanswered = |at: usize, pending: &[String]| {
            Box::new(refusal(
                400,
                &format!(
                    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                    pending.join(", ")
                ),
                Some(&format!("messages.[{at}].role")),
                None,
            ))
        };
        for (at, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            if role != "tool" && !pending.is_empty() {
                return Err(unanswered(at, &pending));
            }
            match role {
                "system" | "developer" | "user" | "function" => {}
                "assistant" => {
                    for call in message
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                        let name = call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let arguments = call
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let arguments = serde_json::from_str(arguments)
                            .unwrap_or_else(|_| Value::String(arguments.to_owned()));
                        calls.push((id.to_owned(), name.to_owned(), arguments));
                        pending.push(id.to_owned());
                    }
                }
                "tool" => {
                    let id = message
                        .get("tool_call_id")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let Some(answered) = pending.iter().position(|call| call == id) else {
                        return Err(Box::new(refusal(
                            400,
                            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                            Some(&format!("messages.[{at}].role")),
                            None,
                        )));
                    };
                    pending.remove(answered);
                    let (_, tool, arguments) = calls
                        .iter()
                        .find(|(call, _, _)| call == id)
                        .cloned()
                        .expect("a pending call was recorded");
                    results.push((
                        id.to_owned(),
                        ChatToolResult {
                            tool,
                            arguments,
                            content: content_text(message.get("content")),
                        },
                    ));
                }
                other => {
                    return Err(Box::new(refusal(
                        400,
                        &format!(
                            "Invalid value: '{other}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                        ),
                        Some(&format!("messages[{at}].role")),
                        Some("invalid_value"),
                    )));
                }
            }
        }
        if !pending.is_empty() {
            return Err(unanswered(messages.len(), &pending));
        }
        Ok(Conversation { results })
    }
}

/// One assistant turn: tool calls, or text.
enum Turn {
    Calls(Vec<Value>),
    Text(String),
}

impl Chat {
    /// The next turn of the conversation, as this mode plays it.
    fn answer(&mut self, conversation: &Conversation, tools: &[&str]) -> Turn {
        for (id, result) in &conversation.results {
            if self.seen_calls.insert(id.clone()) {
                self.tool_results.push(result.clone());
            }
        }
        if !tools.contains(&READ_CANDIDATES) {
            return Turn::Text(
                "I have no tool to read your tasks with, so I cannot review them.".to_owned(),
            );
        }
        let horizons: &[&str] = match self.mode {
            ChatMode::ToolsForever => &["today"],
            _ if conversation.results.is_empty() => &["today", "week", "month"],
            _ => &[],
        };
        if !horizons.is_empty() {
            let calls = horizons
                .iter()
                .map(|horizon| {
                    self.calls_made += 1;
                    json!({
                        "id": format!("call_{:024x}", self.calls_made),
                        "type": "function",
                        "function": {
                            "name": READ_CANDIDATES,
                            "arguments": json!({"horizon": horizon}).to_string(),
                        },
                    })
                })
                .collect();
            return Turn::Calls(calls);
        }
        let mut picks = reviewer_picks(conversation);
        match self.mode {
            ChatMode::OffSchema => Turn::Text(
                "Looking at your lists, I would start with the most urgent task today and leave the rest for later in the week."
                    .to_owned(),
            ),
            ChatMode::UnknownId => {
                let unknown = json!({"id": UNKNOWN_TASK_ID, "reason": FAKE_REVIEW_REASON});
                if let Some(today) = picks["today"].as_array_mut() {
                    match today.first_mut() {
                        Some(first) => *first = unknown,
                        None => today.push(unknown),
                    }
                }
                Turn::Text(picks.to_string())
            }
            ChatMode::Reviewer | ChatMode::ToolsForever => Turn::Text(picks.to_string()),
        }
    }
}

/// Per horizon read, the formula's top 3 of its candidates in reverse order.
fn reviewer_picks(conversation: &Conversation) -> Value {
    let mut picks = json!({"today": [], "week": [], "month": []});
    for (_, result) in &conversation.results {
        if result.tool != READ_CANDIDATES {
            continue;
        }
        let content: Value = serde_json::from_str(&result.content).unwrap_or(Value::Null);
        let Some(horizon) = result
            .arguments
            .get("horizon")
            .or_else(|| content.get("horizon"))
            .and_then(Value::as_str)
            .filter(|horizon| ["today", "week", "month"].contains(horizon))
        else {
            continue;
        };
        let mut ranked: Vec<(u64, &str)> = content
            .get("candidates")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|candidate| {
                Some((
                    candidate.get("formula_rank")?.as_u64()?,
                    candidate.get("id")?.as_str()?,
                ))
            })
            .collect();
        ranked.sort();
        ranked.truncate(3);
        picks[horizon] = ranked
            .iter()
            .rev()
            .map(|(_, id)| json!({"id": id, "reason": FAKE_REVIEW_REASON}))
            .collect();
    }
    picks
}

/// About four characters a token, as OpenAI's tokenizers average on English.
fn token_estimate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

#[handler]
async fn chat_completions(req: &Request, body: String) -> Response {
    if let Some(refused) = unauthorized(req) {
        return refused;
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return unparsable();
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return refusal(400, "you must provide a model parameter", None, None);
    };
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return refusal(
            400,
            "The fake OpenAI does not stream chat completions.",
            Some("stream"),
            None,
        );
    }
    let messages = match request.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        Some(_) => {
            return refusal(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                Some("messages"),
                Some("empty_array"),
            );
        }
        None => {
            return refusal(
                400,
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            );
        }
    };
    let conversation = match Conversation::read(messages) {
        Ok(conversation) => conversation,
        Err(refused) => return *refused,
    };
    let tools: Vec<&str> = request
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|tool| tool.pointer("/function/name").and_then(Value::as_str))
        .collect();

    let mut world = lock(req);
    let turn = world.openai.chat.answer(&conversation, &tools);
    let (message, finish_reason) = match turn {
        Turn::Calls(calls) => (
            json!({"role": "assistant", "content": null, "tool_calls": calls, "refusal": null}),
            "tool_calls",
        ),
        Turn::Text(text) => (
            json!({"role": "assistant", "content": text, "refusal": null}),
            "stop",
        ),
    };
    let prompt_tokens = token_estimate(&body);
    let completion_tokens = token_estimate(&message.to_string());
    world.openai.chat.prompt_tokens += prompt_tokens;
    world.openai.chat.completion_tokens += completion_tokens;
    let (request_id, budget) = world.openai.spend(prompt_tokens + completion_tokens);
    drop(world);

    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let body = json!({
        "id": format!("chatcmpl-{}", request_id.trim_start_matches("req_")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_taskfleet",
    });
    with_openai_headers(reply::json(200, &body), model, request_id, budget)
}

/// OpenAI's rate limit: 429 with `retry-after`, its request budget at 0 and when it resets.
pub(crate) fn rate_limited(retry_after_secs: u64) -> Answer {
    Answer {
        status: 429,
        headers: vec![
            ("retry-after".into(), retry_after_secs.to_string()),
            ("x-ratelimit-limit-requests".into(), REQUEST_LIMIT.to_string()),
            ("x-ratelimit-limit-tokens".into(), TOKEN_LIMIT.to_string()),
            ("x-ratelimit-remaining-requests".into(), "0".into()),
            ("x-ratelimit-remaining-tokens".into(), TOKEN_LIMIT.to_string()),
            (
                "x-ratelimit-reset-requests".into(),
                go_duration(Duration::from_secs(retry_after_secs)),
            ),
            ("x-ratelimit-reset-tokens".into(), "0s".into()),
        ],
        body: error_body(
            &format!(
                "Rate limit reached for text-embedding-3-small in organization {ORGANIZATION} on requests per min (RPM): Limit {REQUEST_LIMIT}, Used {REQUEST_LIMIT}, Requested 1. Please try again in {retry_after_secs}s. Visit https://platform.openai.com/account/rate-limits to learn more."
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        )
        .to_string(),
    }
}

/// OpenAI's 5xx answers (502 is its edge's, with the status as the code).
pub(crate) fn server_error(status: u16) -> Answer {
    let body = match status {
        502 => {
            json!({"error": {"code": 502, "message": "Bad gateway.", "param": null, "type": "cf_bad_gateway"}})
        }
        503 => error_body(
            "The server is overloaded or not ready yet.",
            "server_error",
            None,
            None,
        ),
        _ => error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
    };
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        Input::Text(text.to_owned()).words()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_length_and_similar_when_texts_share_words() {
        let a = feature_vector(&words("Fix the login page"), 256);
        let b = feature_vector(&words("fix THE login page!"), 256);
        let c = feature_vector(&words("login page broken"), 256);
        let d = feature_vector(&words("quarterly tax report"), 256);
        assert_eq!(a, b);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cosine(&a, &c) > cosine(&a, &d) + 0.2);
        let punctuation = feature_vector(&words("?!"), 8);
        assert!((cosine(&punctuation, &punctuation) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(120)), "120ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(7)), "7s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn inputs_as_openai_reads_them() {
        assert_eq!(inputs(&json!("one")).map(|i| i.len()), Some(1));
        assert_eq!(inputs(&json!(["a", "b"])).map(|i| i.len()), Some(2));
        assert_eq!(inputs(&json!([1, 2, 3])).map(|i| i.len()), Some(1));
        assert_eq!(inputs(&json!([[1, 2], [3]])).map(|i| i.len()), Some(2));
        for invalid in [
            json!([]),
            json!(""),
            json!(["a", ""]),
            json!(["a", 1]),
            json!(7),
        ] {
            assert!(inputs(&invalid).is_none(), "{invalid}");
        }
        assert_eq!(masked("sk-wrong-key-0001"), "sk-**********0001");
    }
}
