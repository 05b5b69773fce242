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
//! The chat model plays one of two scripts, chosen by the tools a request offers. With an
//! `add_task` tool it is a to-do assistant ([`openai_assistant`]) that reads what to do off
//! the last user message and the tool results after it, one tool call a turn, and can be told
//! to stall (a reply that starts and never ends). Otherwise it is a focus-list reviewer
//! ([`ChatMode`]). Either answers in the chat-completions shape (`choices[].message` with
//! `tool_calls` and `finish_reason: "tool_calls"`, or `content` and `"stop"`; `usage`), checks
//! the conversation as OpenAI does (a `tool` message answers a call of the assistant message
//! before it, every call is answered), and remembers the request bodies and the tool results
//! it was sent.
//!
//! With `"stream": true` the same answer comes as OpenAI streams it: server-sent events, each
//! `data: <chat.completion.chunk>`, then `data: [DONE]`. The first delta carries the role, the
//! text follows word by word and each tool call as its header (id, name, empty arguments) then
//! its arguments in pieces, a last chunk has an empty delta and the finish reason, and with
//! `stream_options.include_usage` a final chunk with no choices carries the `usage` (the others
//! then carry `"usage": null`). The chunks are paced a few milliseconds apart so a client sees
//! the reply typed. Authentication, headers and token accounting are the unary answer's.
//!
//! [`openai_assistant`]: super::openai_assistant
//! [`FaultRule::openai_rate_limited`]: crate::fake_providers::FaultRule::openai_rate_limited

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use base64::Engine as _;
use poem::{Body, Request, Response, Route, handler, post};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::{
    lock,
    openai_assistant::{self, ADD_TASK},
    reply,
    traffic::Answer,
};

/// The one key the fake accepts.
pub const OPENAI_API_KEY: &str = "sk-fake-taskfleet";

/// The width of a vector when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 256;

/// OpenAI's most inputs in one request.
const MAX_INPUTS: usize = 2048;

/// How long a stalled reply hangs: longer than any client's timeout, so it never ends in a
/// test.
const STALL: Duration = Duration::from_secs(60 * 60);

/// The pause between two chunks of a streamed answer: enough for each to leave in its own
/// write, so a client sees the reply being typed, and short enough not to slow tests.
const TYPING: Duration = Duration::from_millis(5);

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
    /// Every chat request body that parsed as JSON, in the order received (refused ones
    /// included), so tests can check the history and system prompt a model was sent.
    pub requests: Vec<Value>,
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
pub(super) fn content_text(content: Option<&Value>) -> String {
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
    /// A text that starts and never finishes: the unary answer comes only after [`STALL`], the
    /// streamed one sends its first words and then nothing until then.
    Stall(String),
}

impl Chat {
    /// The next turn of the conversation `messages` (as `conversation` reads them): the to-do
    /// assistant's when the request offers `add_task`, else the reviewer's, as this mode plays
    /// it.
    fn answer(&mut self, messages: &[Value], conversation: &Conversation, tools: &[&str]) -> Turn {
        for (id, result) in &conversation.results {
            if self.seen_calls.insert(id.clone()) {
                self.tool_results.push(result.clone());
            }
        }
        if tools.contains(&ADD_TASK) {
            return match openai_assistant::reply(messages) {
                openai_assistant::Reply::Call { tool, arguments } => {
                    Turn::Calls(vec![self.call(tool, &arguments)])
                }
                openai_assistant::Reply::Text(text) => Turn::Text(text),
                openai_assistant::Reply::Stall(text) => Turn::Stall(text),
            };
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
                .map(|horizon| self.call(READ_CANDIDATES, &json!({"horizon": horizon})))
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

    /// A call of `tool` with `arguments`, under a fresh id.
    fn call(&mut self, tool: &str, arguments: &Value) -> Value {
        self.calls_made += 1;
        json!({
            "id": format!("call_{:024x}", self.calls_made),
            "type": "function",
            "function": {"name": tool, "arguments": arguments.to_string()},
        })
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
    lock(req).openai.chat.requests.push(request.clone());
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return refusal(400, "you must provide a model parameter", None, None);
    };
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let stream_options = request
        .get("stream_options")
        .filter(|options| !options.is_null());
    if stream_options.is_some() && !stream {
        return refusal(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        );
    }
    let include_usage = stream_options
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
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

    // The world stays locked only for the answer and its accounting: never across an await.
    let (turn, prompt_tokens, completion_tokens, request_id, budget) = {
        let mut world = lock(req);
        let turn = world.openai.chat.answer(messages, &conversation, &tools);
        let prompt_tokens = token_estimate(&body);
        let completion_tokens = token_estimate(&message(&turn).to_string());
        world.openai.chat.prompt_tokens += prompt_tokens;
        world.openai.chat.completion_tokens += completion_tokens;
        let (request_id, budget) = world.openai.spend(prompt_tokens + completion_tokens);
        (turn, prompt_tokens, completion_tokens, request_id, budget)
    };

    let head = ChunkHead {
        id: format!("chatcmpl-{}", request_id.trim_start_matches("req_")),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        model: model.to_owned(),
        include_usage,
    };
    let usage = usage(prompt_tokens, completion_tokens);
    let stalled = matches!(turn, Turn::Stall(_));
    let response = if stream {
        Response::builder()
            .content_type("text/event-stream; charset=utf-8")
            .body(event_stream(stream_events(&head, &turn, &usage), stalled))
    } else {
        if stalled {
            tokio::time::sleep(STALL).await;
        }
        reply::json(
            200,
            &json!({
                "id": head.id,
                "object": "chat.completion",
                "created": head.created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": message(&turn),
                    "logprobs": null,
                    "finish_reason": match turn {
                        Turn::Calls(_) => "tool_calls",
                        Turn::Text(_) | Turn::Stall(_) => "stop",
                    },
                }],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": "fp_taskfleet",
            }),
        )
    };
    with_openai_headers(response, model, request_id, budget)
}

/// The unary answer's `message` for `turn`.
fn message(turn: &Turn) -> Value {
    match turn {
        Turn::Calls(calls) => {
            json!({"role": "assistant", "content": null, "tool_calls": calls, "refusal": null})
        }
        Turn::Text(text) | Turn::Stall(text) => {
            json!({"role": "assistant", "content": text, "refusal": null})
        }
    }
}

/// A chat answer's `usage`, with the details OpenAI reports (all 0 here).
fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
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
    })
}

/// What every chunk of one streamed answer repeats, and whether the request asked for usage.
struct ChunkHead {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkHead {
    /// One `chat.completion.chunk` of `choices` as a server-sent event. With `include_usage`
    /// every chunk has a `usage`: `null` but on the last.
    fn event(&self, choices: Value, usage: Option<&Value>) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "fp_taskfleet",
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        format!("data: {chunk}\n\n")
    }

    /// The chunk of the one choice's `delta`, with its finish reason on the last.
    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> String {
        self.event(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        )
    }
}

/// The events of `turn` streamed, through `data: [DONE]`; a stall's only up to its first word.
fn stream_events(head: &ChunkHead, turn: &Turn, usage: &Value) -> Vec<String> {
    let role = json!({"role": "assistant", "content": "", "refusal": null});
    let text = |text: &str| {
        text.split_inclusive(' ')
            .map(|word| head.delta(json!({"content": word}), None))
            .collect::<Vec<_>>()
    };
    let mut events = Vec::new();
    let finish_reason = match turn {
        Turn::Calls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                // The first chunk names the role; each call opens with its id and name.
                let mut opening = json!({"tool_calls": [{
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }]});
                if index == 0 {
                    opening["role"] = json!("assistant");
                    opening["content"] = Value::Null;
                    opening["refusal"] = Value::Null;
                }
                events.push(head.delta(opening, None));
                let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                events.extend(argument_pieces(arguments).into_iter().map(|piece| {
                    head.delta(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        None,
                    )
                }));
            }
            "tool_calls"
        }
        Turn::Text(reply) => {
            events.push(head.delta(role, None));
            events.extend(text(reply));
            "stop"
        }
        Turn::Stall(reply) => {
            events.push(head.delta(role, None));
            events.extend(text(reply).into_iter().take(1));
            return events;
        }
    };
    events.push(head.delta(json!({}), Some(finish_reason)));
    if head.include_usage {
        events.push(head.event(json!([]), Some(usage)));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// A call's `arguments` in pieces of a few characters, at least two, as OpenAI streams them
/// token by token.
fn argument_pieces(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let size = (chars.len() / 2).clamp(1, 6);
    chars
        .chunks(size)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// A body that sends `events` [`TYPING`] apart; with `hang`, it then stays open for [`STALL`]
/// without another byte, as a reply that never ends. A writer task feeds the body through an
/// in-memory pipe (only `tokio` needed); once the client is gone (the pipe's reader dropped) its
/// next write fails and it stops.
fn event_stream(events: Vec<String>, hang: bool) -> Body {
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        for (at, event) in events.iter().enumerate() {
            if at > 0 {
                tokio::time::sleep(TYPING).await;
            }
            if writer.write_all(event.as_bytes()).await.is_err() {
                return;
            }
        }
        if hang {
            tokio::time::sleep(STALL).await;
        }
    });
    Body::from_async_read(reader)
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
    use crate::fake_providers::FakeProviders;

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

    /// What a client rebuilds from a streamed answer.
    #[derive(Debug, Default)]
    struct Reassembled {
        text: String,
        /// Per call index: id, name, arguments.
        calls: Vec<(String, String, String)>,
        finish_reason: Option<String>,
        usage: Option<Value>,
        done: bool,
    }

    /// Reads `body` as a client does, checking every event's framing and every chunk's shape:
    /// with `include_usage`, every chunk has `usage` (only the last, choiceless one non-null);
    /// without, none has.
    fn reassemble(body: &str, include_usage: bool) -> Reassembled {
        let mut reassembled = Reassembled::default();
        assert!(body.ends_with("\n\n"), "{body:?}");
        for event in body.split_terminator("\n\n") {
            assert!(!reassembled.done, "an event after [DONE]: {event}");
            let data = event
                .strip_prefix("data: ")
                .expect("each event is one data line");
            if data == "[DONE]" {
                reassembled.done = true;
                continue;
            }
            assert!(
                reassembled.usage.is_none(),
                "a chunk after the usage: {data}"
            );
            let chunk: Value = serde_json::from_str(data).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["system_fingerprint"], "fp_taskfleet");
            assert!(chunk["id"].as_str().unwrap().starts_with("chatcmpl-"));
            assert_eq!(include_usage, chunk.get("usage").is_some(), "{chunk}");
            let choices = chunk["choices"].as_array().unwrap();
            if choices.is_empty() {
                assert!(include_usage, "{chunk}");
                reassembled.usage = Some(chunk["usage"].clone());
                continue;
            }
            if include_usage {
                assert_eq!(chunk["usage"], Value::Null, "{chunk}");
            }
            let choice = &choices[0];
            assert_eq!(choice["index"], 0);
            assert!(
                reassembled.finish_reason.is_none(),
                "a delta after the finish: {chunk}"
            );
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert_eq!(choice["delta"], json!({}));
                reassembled.finish_reason = Some(reason.to_owned());
            }
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str() {
                reassembled.text.push_str(text);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap() as usize;
                if let Some(id) = call["id"].as_str() {
                    assert_eq!(index, reassembled.calls.len(), "calls open in order");
                    assert_eq!(call["type"], "function");
                    let name = call["function"]["name"].as_str().unwrap();
                    reassembled
                        .calls
                        .push((id.to_owned(), name.to_owned(), String::new()));
                }
                reassembled.calls[index].2 += call["function"]["arguments"].as_str().unwrap();
            }
        }
        reassembled
    }

    fn head(include_usage: bool) -> ChunkHead {
        ChunkHead {
            id: "chatcmpl-1".to_owned(),
            created: 1_700_000_000,
            model: "gpt-4o-mini".to_owned(),
            include_usage,
        }
    }

    #[test]
    fn a_streamed_text_adds_up_to_the_text_and_carries_usage_when_asked() {
        let text = "Added \"Buy milk\" to your tasks.";
        let usage = usage(40, 9);
        let events = stream_events(&head(true), &Turn::Text(text.to_owned()), &usage);
        // The role, one delta a word, the finish, the usage, [DONE].
        assert_eq!(events.len(), 1 + 6 + 1 + 1 + 1, "{events:#?}");
        let first: Value = serde_json::from_str(&events[0]["data: ".len()..]).unwrap();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": "", "refusal": null})
        );
        let streamed = reassemble(&events.concat(), true);
        assert_eq!(streamed.text, text);
        assert!(streamed.calls.is_empty());
        assert_eq!(streamed.finish_reason.as_deref(), Some("stop"));
        assert_eq!(streamed.usage, Some(usage.clone()));
        assert_eq!(streamed.usage.unwrap()["total_tokens"], 49);
        assert!(streamed.done);

        let streamed = reassemble(
            &stream_events(&head(false), &Turn::Text(text.to_owned()), &usage).concat(),
            false,
        );
        assert_eq!(streamed.text, text);
        assert_eq!(streamed.usage, None);
        assert!(streamed.done);
    }

    #[test]
    fn streamed_tool_calls_add_up_to_their_arguments() {
        let mut chat = Chat::default();
        let calls: Vec<Value> = [
            json!({"title": "Buy milk"}),
            json!({}),
            json!({"horizon": "week"}),
        ]
        .iter()
        .map(|arguments| chat.call("add_task", arguments))
        .collect();
        let events = stream_events(&head(true), &Turn::Calls(calls.clone()), &usage(1, 1));
        let first: Value = serde_json::from_str(&events[0]["data: ".len()..]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            first["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            ""
        );
        let streamed = reassemble(&events.concat(), true);
        assert_eq!(streamed.text, "");
        assert_eq!(streamed.finish_reason.as_deref(), Some("tool_calls"));
        assert!(streamed.usage.is_some() && streamed.done);
        let expected: Vec<(String, String, String)> = calls
            .iter()
            .map(|call| {
                (
                    call["id"].as_str().unwrap().to_owned(),
                    "add_task".to_owned(),
                    call["function"]["arguments"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(streamed.calls, expected);
        assert_eq!(expected[0].0, format!("call_{:024x}", 1));
        // Each call's arguments come in two pieces or more.
        for index in 0..3 {
            let pieces = events
                .iter()
                .filter(|event| event.contains(&format!("\"index\":{index}")))
                .filter(|event| !event.contains("\"id\":\"call_"))
                .count();
            assert!(
                pieces >= 2,
                "call {index} in {pieces} piece(s): {events:#?}"
            );
        }
    }

    /// A to-do agent's request: a system prompt, `message`, and the `add_task` tool.
    fn assistant_request(message: &str) -> Value {
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You manage the user's to-do list."},
                {"role": "user", "content": message},
            ],
            "tools": [{"type": "function", "function": {
                "name": "add_task",
                "description": "Adds a task.",
                "parameters": {"type": "object", "properties": {"title": {"type": "string"}}},
            }}],
        })
    }

    fn streamed(mut request: Value) -> Value {
        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
        request
    }

    #[tokio::test]
    async fn the_assistant_streams_over_http_with_the_unary_answers_headers_and_accounting() {
        let fakes = FakeProviders::start().await;
        let url = format!("{}/chat/completions", fakes.openai_base_url());
        let client = reqwest::Client::new();
        let request = streamed(assistant_request("Add a task to buy milk"));

        let refused = client
            .post(&url)
            .bearer_auth("sk-wrong-key-0001")
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(
            refused.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_api_key"
        );

        let response = client
            .post(&url)
            .bearer_auth(OPENAI_API_KEY)
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with("text/event-stream"));
        assert_eq!(header("openai-model"), "gpt-4o-mini");
        assert!(header("x-request-id").starts_with("req_"));
        assert!(
            response
                .headers()
                .contains_key("x-ratelimit-remaining-tokens")
        );
        let streamed = reassemble(&response.text().await.unwrap(), true);
        assert_eq!(streamed.calls.len(), 1);
        let (_, name, arguments) = &streamed.calls[0];
        assert_eq!(name, "add_task");
        assert_eq!(
            serde_json::from_str::<Value>(arguments).unwrap(),
            json!({"title": "Buy milk"})
        );
        let usage = streamed.usage.unwrap();
        assert_eq!(
            fakes.chat_usage(),
            (
                usage["prompt_tokens"].as_u64().unwrap(),
                usage["completion_tokens"].as_u64().unwrap()
            )
        );
        // The refused request never reached the model.
        assert_eq!(fakes.chat_requests(), [request]);

        let mut unary = assistant_request("Hello");
        unary["stream_options"] = json!({"include_usage": true});
        let refused = client
            .post(&url)
            .bearer_auth(OPENAI_API_KEY)
            .json(&unary)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        assert_eq!(
            refused.json::<Value>().await.unwrap()["error"]["param"],
            "stream_options"
        );
    }

    #[tokio::test]
    async fn a_stalled_reply_never_ends_streamed_or_not() {
        let fakes = FakeProviders::start().await;
        let url = format!("{}/chat/completions", fakes.openai_base_url());
        let client = reqwest::Client::new();

        let mut response = client
            .post(&url)
            .bearer_auth(OPENAI_API_KEY)
            .json(&streamed(assistant_request("Please stall")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut received = Vec::new();
        while !String::from_utf8_lossy(&received).contains("\"content\":\"Let \"") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                .await
                .expect("the first word comes at once")
                .unwrap()
                .expect("the stream is still open");
            received.extend_from_slice(&chunk);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), response.chunk())
                .await
                .is_err(),
            "nothing follows the first word"
        );

        let unary = client
            .post(&url)
            .bearer_auth(OPENAI_API_KEY)
            .timeout(Duration::from_millis(300))
            .json(&assistant_request("Please stall"))
            .send()
            .await;
        assert!(unary.unwrap_err().is_timeout());
    }

    #[test]
    fn a_stalled_stream_sends_only_its_first_word() {
        let events = stream_events(
            &head(true),
            &Turn::Stall("Let me think.".to_owned()),
            &usage(1, 1),
        );
        assert_eq!(events.len(), 2, "{events:#?}");
        let streamed = reassemble(&events.concat(), true);
        assert_eq!(streamed.text, "Let ");
        assert_eq!(streamed.finish_reason, None);
        assert!(!streamed.done);
    }
}
