//! An embedder for any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI itself, Ollama,
//! vLLM, …), called through rig-core's OpenAI wire on its bundled reqwest transport.
//!
//! rig sends `{"model", "input": [texts], "dimensions"}` to `{base_url}/embeddings` with the
//! key as a Bearer token, and keeps a refused reply whole (status, body, headers) on its
//! [`ProviderError`]: that is what sorts a failure into an [`EmbedError`] here.

use std::{fmt, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rig_core::{
    ProviderError,
    driver::Model,
    providers::openai::{
        OpenAIConfig,
        wire::{Auth, Embeddings},
    },
};
use serde_json::Value;

use taskfleet_jobs::provider_reply::{provider_message, scrub};

use crate::embedder::{EmbedError, Embedded};

/// The most texts sent in one request (OpenAI takes 2048; smaller requests stay well under
/// its per-request token limit and the timeout).
pub const MAX_BATCH: usize = 256;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An OpenAI-compatible embeddings endpoint. Cheap to clone: clones share one client.
#[derive(Clone)]
pub struct OpenAiEmbedder {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    /// The model's name, as configured (usage is recorded under it).
    model_name: String,
    dimensions: usize,
    model: Model<Embeddings>,
    /// Kept only to scrub it from messages, in case a provider echoes it.
    api_key: String,
}

impl fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("id", &self.inner.id)
            .field("dimensions", &self.inner.dimensions)
            .finish_non_exhaustive()
    }
}

impl OpenAiEmbedder {
    /// `base_url` like "https://api.openai.com/v1" or "http://127.0.0.1:9180/openai/v1" (the
    /// `/embeddings` path is appended). An empty `api_key` sends no `Authorization` header,
    /// for local servers that take none.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: &str,
        dimensions: usize,
    ) -> anyhow::Result<Self> {
        let base_url = base_url.trim().trim_end_matches('/');
        let Some(host) = base_url
            .strip_prefix("https://")
            .or_else(|| base_url.strip_prefix("http://"))
        else {
            anyhow::bail!("the embeddings base URL must start with http:// or https://");
        };
        anyhow::ensure!(
            !host.is_empty() && !host.starts_with('/'),
            "the embeddings base URL names no host"
        );
        let model = model.trim();
        anyhow::ensure!(!model.is_empty(), "the embedding model is empty");
        anyhow::ensure!(dimensions > 0, "embeddings need at least one dimension");
        // A key read from a file often ends with a newline, which no header may carry.
        let api_key = api_key.trim();
        anyhow::ensure!(
            !api_key.chars().any(char::is_control),
            "the embeddings API key holds control characters"
        );

        let mut config = OpenAIConfig::new(api_key).with_base_url(base_url);
        if api_key.is_empty() {
            config.auth = Auth::OptionalBearer;
        }
        // Usage is read from the raw answer when there; some compatible servers leave it out.
        config.dialect.quirks.embedding.requires_usage = false;
        // Declaring the width makes rig send `dimensions` (to every model but
        // text-embedding-ada-002) and refuse a reply of any other width.
        let model_handle = config.client().embedding(model, Some(dimensions));

        Ok(OpenAiEmbedder {
            inner: Arc::new(Inner {
                id: format!("openai:{model}:{dimensions}@{base_url}"),
                model_name: model.to_owned(),
                dimensions,
                model: model_handle,
                api_key: api_key.to_owned(),
            }),
        })
    }

    /// "openai:{model}:{dimensions}@{base_url without trailing slash}"
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn dimensions(&self) -> usize {
        self.inner.dimensions
    }

    pub fn model(&self) -> &str {
        &self.inner.model_name
    }

    /// One vector per text, in order, in requests of at most [`MAX_BATCH`] texts sent one
    /// after another, and the tokens the provider says they cost. The first failing request
    /// fails the whole call.
    pub async fn embed(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        let mut embedded = Embedded {
            vectors: Vec::with_capacity(texts.len()),
            input_tokens: 0,
        };
        for batch in texts.chunks(MAX_BATCH) {
            let (vectors, tokens) = self.embed_batch(batch).await?;
            embedded.vectors.extend(vectors);
            embedded.input_tokens += tokens;
        }
        Ok(embedded)
    }

    async fn embed_batch(&self, batch: &[String]) -> Result<(Vec<Vec<f32>>, u64), EmbedError> {
        let call = self.inner.model.call(batch.to_vec());
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(self.scrubbed(classify(&error))),
            Err(_) => {
                return Err(EmbedError::Unavailable(format!(
                    "no answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
        };
        // rig has checked the count against the batch and each width against `dimensions`.
        let vectors = response
            .embeddings
            .into_iter()
            .map(|embedding| embedding.vec.into_iter().map(|x| x as f32).collect())
            .collect();
        // OpenAI reports `usage.prompt_tokens`; servers that leave it out cost nothing here.
        let tokens = response
            .raw
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let vectors = in_input_order(vectors, &response.raw)
            .map_err(|message| self.scrubbed_unusable(message))?;
        Ok((vectors, tokens))
    }

    fn scrubbed(&self, error: EmbedError) -> EmbedError {
        let scrub = |message: String| scrub(message, &self.inner.api_key);
        match error {
            EmbedError::RateLimited {
                retry_after,
                message,
            } => EmbedError::RateLimited {
                retry_after,
                message: scrub(message),
            },
            EmbedError::Unavailable(message) => EmbedError::Unavailable(scrub(message)),
            EmbedError::Unusable(message) => EmbedError::Unusable(scrub(message)),
            EmbedError::Model(message) => EmbedError::Model(scrub(message)),
            EmbedError::Rejected => EmbedError::Rejected,
        }
    }

    fn scrubbed_unusable(&self, message: String) -> EmbedError {
        EmbedError::Unusable(scrub(message, &self.inner.api_key))
    }
}

/// Sorts a failed call by what the job should do about it.
fn classify(error: &ProviderError) -> EmbedError {
    if let Some(status) = error.provider_response_status() {
        let status = status.as_u16();
        let message = provider_message(status, error.provider_response_body().unwrap_or(""));
        return match status {
            401 | 403 => EmbedError::Rejected,
            // OpenAI answers an exhausted quota with 429 too, but waiting cannot mend billing.
            429 if message.contains("insufficient_quota") => EmbedError::Unusable(message),
            429 => EmbedError::RateLimited {
                retry_after: error.provider_response_headers().and_then(|headers| {
                    retry_after(
                        |name| headers.get(name).and_then(|value| value.to_str().ok()),
                        Utc::now(),
                    )
                }),
                message,
            },
            // 408: the server gave up waiting for the request, a timeout like ours.
            408 | 500..=599 => EmbedError::Unavailable(message),
            _ => EmbedError::Unusable(message),
        };
    }
    match error {
        // No reply at all: refused connection, reset, DNS, TLS, a body cut short.
        ProviderError::Http(_) => EmbedError::Unavailable(error.to_string()),
        // A 2xx reply that is not an embeddings answer, or the wrong count or width of
        // vectors, or a request rig would not build.
        _ if error.is_retryable() => EmbedError::Unavailable(error.to_string()),
        _ => EmbedError::Unusable(error.to_string()),
    }
}

/// The delay a 429 asks for, from its headers (`header` looks one up by lower-case name):
/// `retry-after-ms`, then `Retry-After` (seconds or an HTTP date), then OpenAI's
/// `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` ("1s", "6m0s", "120ms"): the one
/// whose budget `x-ratelimit-remaining-*` reports spent, the longer of the two when neither or
/// both are.
pub(crate) fn retry_after<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if let Some(millis) = header("retry-after-ms").and_then(|value| parse_seconds(value, 1e-3)) {
        return Some(millis);
    }
    if let Some(delay) = header("retry-after").and_then(|value| parse_retry_after(value, now)) {
        return Some(delay);
    }
    let reset =
        |budget: &str| header(&format!("x-ratelimit-reset-{budget}")).and_then(parse_go_duration);
    let spent = |budget: &str| {
        header(&format!("x-ratelimit-remaining-{budget}"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            == Some(0)
    };
    let (requests, tokens) = (reset("requests"), reset("tokens"));
    match (spent("requests"), spent("tokens")) {
        (true, false) if requests.is_some() => requests,
        (false, true) if tokens.is_some() => tokens,
        _ => requests.max(tokens),
    }
}

/// `Retry-After`: delay-seconds, or an HTTP date (counted from `now`, never negative).
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    parse_seconds(value, 1.0).or_else(|| {
        let at = DateTime::parse_from_rfc2822(value.trim()).ok()?;
        Some(
            (at.with_timezone(&Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO),
        )
    })
}

/// A non-negative number of `unit` seconds ("7", "1.5").
fn parse_seconds(value: &str, unit: f64) -> Option<Duration> {
    let number = value.trim().parse::<f64>().ok()?;
    (number.is_finite() && number >= 0.0).then(|| Duration::from_secs_f64(number * unit))
}

/// A Go `time.Duration` as OpenAI prints it: "1s", "6m0s", "120ms", "1h2m3.5s", "0s".
fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        seconds += number * scale;
    }
    seconds
        .is_finite()
        .then(|| Duration::from_secs_f64(seconds))
}

/// The vectors in input order. rig keeps them in the order of the answer's `data`; OpenAI
/// also numbers each with `index`, which this follows when the raw answer carries them all.
fn in_input_order(vectors: Vec<Vec<f32>>, raw: &Value) -> Result<Vec<Vec<f32>>, String> {
    let Some(data) = raw.get("data").and_then(Value::as_array) else {
        return Ok(vectors);
    };
    let indexes: Option<Vec<usize>> = data
        .iter()
        .map(|datum| {
            datum
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|index| usize::try_from(index).ok())
        })
        .collect();
    let Some(indexes) = indexes.filter(|indexes| indexes.len() == vectors.len()) else {
        return Ok(vectors);
    };
    if indexes.iter().enumerate().all(|(at, index)| at == *index) {
        return Ok(vectors);
    }
    let mut ordered: Vec<Option<Vec<f32>>> = vec![None; vectors.len()];
    for (index, vector) in indexes.into_iter().zip(vectors) {
        match ordered.get_mut(index) {
            Some(slot) if slot.is_none() => *slot = Some(vector),
            _ => {
                return Err(format!(
                    "the answer's embeddings are not numbered 0 to {} once each",
                    ordered.len() - 1
                ));
            }
        }
    }
    Ok(ordered.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rig_core::http_client::{HeaderMap, HeaderValue, StatusCode};
    use serde_json::json;

    /// Header names in lower case, as `HeaderMap` keeps them.
    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn delay(pairs: &[(&'static str, &str)]) -> Option<Duration> {
        let map = headers(pairs);
        retry_after(
            |name| map.get(name).and_then(|value| value.to_str().ok()),
            Utc::now(),
        )
    }

    fn refused(status: u16, body: &str, pairs: &[(&'static str, &str)]) -> ProviderError {
        ProviderError::from_http_response(StatusCode::from_u16(status).unwrap(), body)
            .with_response_headers(Some(headers(pairs)))
    }

    const OPENAI_401: &str = r#"{"error": {"message": "Incorrect API key provided: sk-abc***xyz.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#;

    #[test]
    fn go_durations_as_openai_prints_them() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        for bad in ["", "s", "12", "1x", "-1s", "1.2.3s", "ms5"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:26:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_delay_a_429_asks_for() {
        assert_eq!(delay(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        // Retry-After wins over OpenAI's reset times.
        assert_eq!(
            delay(&[("retry-after", "7"), ("x-ratelimit-reset-requests", "6m0s")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            delay(&[("retry-after-ms", "250"), ("retry-after", "1")]),
            Some(Duration::from_millis(250))
        );
        // The budget that is spent decides.
        assert_eq!(
            delay(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-remaining-tokens", "99000"),
                ("x-ratelimit-reset-requests", "120ms"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            Some(Duration::from_millis(120))
        );
        assert_eq!(
            delay(&[
                ("x-ratelimit-remaining-requests", "2999"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-requests", "20ms"),
                ("x-ratelimit-reset-tokens", "1s"),
            ]),
            Some(Duration::from_secs(1))
        );
        // Neither said spent: the longer wait.
        assert_eq!(
            delay(&[
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            delay(&[("x-ratelimit-reset-tokens", "2s")]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(delay(&[("retry-after", "later")]), None);
        assert_eq!(delay(&[]), None);
    }

    #[test]
    fn failures_sorted_by_status() {
        assert_eq!(
            classify(&refused(401, OPENAI_401, &[])),
            EmbedError::Rejected
        );
        assert_eq!(classify(&refused(403, "{}", &[])), EmbedError::Rejected);
        assert_eq!(
            classify(&refused(
                429,
                r#"{"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}"#,
                &[("retry-after", "7")],
            )),
            EmbedError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                message: "HTTP 429: Rate limit reached (rate_limit_exceeded)".to_owned(),
            }
        );
        assert_eq!(
            classify(&refused(429, "", &[])),
            EmbedError::RateLimited {
                retry_after: None,
                message: "HTTP 429".to_owned(),
            }
        );
        assert!(matches!(
            classify(&refused(503, "upstream connect error", &[])),
            EmbedError::Unavailable(message) if message == "HTTP 503: upstream connect error"
        ));
        assert!(matches!(
            classify(&refused(408, "", &[])),
            EmbedError::Unavailable(_)
        ));
        assert_eq!(
            classify(&refused(
                400,
                r#"{"error": {"message": "This model does not support specifying dimensions.", "type": "invalid_request_error", "param": null, "code": null}}"#,
                &[],
            )),
            EmbedError::Unusable(
                "HTTP 400: This model does not support specifying dimensions. (invalid_request_error)"
                    .to_owned()
            )
        );
        assert!(matches!(
            classify(&ProviderError::Response(
                "provider returned 2 embeddings for 3 documents".into()
            )),
            EmbedError::Unusable(_)
        ));
        assert!(matches!(
            classify(&ProviderError::MismatchedDimensions {
                provider: "openai".into(),
                requested: 256,
                returned: 1536,
            }),
            EmbedError::Unusable(_)
        ));
    }

    #[test]
    fn the_key_never_shows() {
        let embedder =
            OpenAiEmbedder::new("https://api.openai.com/v1/", "m", "sk-secret-123", 8).unwrap();
        let debug = format!("{embedder:?}");
        assert!(!debug.contains("sk-secret-123"), "{debug}");
        assert!(matches!(
            embedder.scrubbed(EmbedError::Unusable("HTTP 400: sk-secret-123".into())),
            EmbedError::Unusable(message) if message == "HTTP 400: [redacted]"
        ));
    }

    #[test]
    fn the_id_names_model_width_and_endpoint() {
        let embedder = OpenAiEmbedder::new(
            "http://127.0.0.1:9180/openai/v1/",
            "text-embedding-3-small",
            "",
            256,
        )
        .unwrap();
        assert_eq!(
            embedder.id(),
            "openai:text-embedding-3-small:256@http://127.0.0.1:9180/openai/v1"
        );
        assert_eq!(embedder.dimensions(), 256);
        assert!(OpenAiEmbedder::new("api.openai.com/v1", "m", "k", 8).is_err());
        assert!(OpenAiEmbedder::new("https://", "m", "k", 8).is_err());
        assert!(OpenAiEmbedder::new("https://api.openai.com/v1", " ", "k", 8).is_err());
        assert!(OpenAiEmbedder::new("https://api.openai.com/v1", "m", "k", 0).is_err());
        assert!(OpenAiEmbedder::new("https://api.openai.com/v1", "m", "k\u{0}", 8).is_err());
    }

    #[test]
    fn vectors_follow_the_answers_indexes() {
        let vectors = vec![vec![1.0], vec![2.0], vec![3.0]];
        let raw = |indexes: &[u64]| json!({"data": indexes.iter().map(|index| json!({"index": index})).collect::<Vec<_>>()});
        assert_eq!(
            in_input_order(vectors.clone(), &raw(&[0, 1, 2])).unwrap(),
            vectors
        );
        assert_eq!(
            in_input_order(vectors.clone(), &raw(&[2, 0, 1])).unwrap(),
            vec![vec![2.0], vec![3.0], vec![1.0]]
        );
        assert!(in_input_order(vectors.clone(), &raw(&[0, 0, 1])).is_err());
        assert!(in_input_order(vectors.clone(), &raw(&[0, 1, 3])).is_err());
        // No indexes to go by: the order rig kept.
        assert_eq!(
            in_input_order(vectors.clone(), &Value::Null).unwrap(),
            vectors
        );
        assert_eq!(
            in_input_order(vectors.clone(), &json!({"data": [{}, {}, {}]})).unwrap(),
            vectors
        );
    }
}
