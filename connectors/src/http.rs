//! The one HTTP layer every provider call goes through, so a provider file holds only what is
//! particular to its provider. For each call, in order:
//!
//! 1. the provider's circuit breaker admits it, or it fails at once ([`crate::breaker`]);
//! 2. it waits for the provider's and the connector's rate limits (governor, per process);
//! 3. it is sent with a timeout, and retried inside the call with full-jitter backoff
//!    (the project's own [`RetryPolicy`]) while the answer is a 5xx, a timeout or a
//!    connection failure;
//! 4. a 429, or a 403 that says a rate limit was hit, is not retried here: it becomes
//!    [`ProviderError::RateLimited`] carrying the provider's own delay (`Retry-After`,
//!    GitHub's `x-ratelimit-reset` epoch seconds, Atlassian's `X-RateLimit-Reset` instant),
//!    which the job's retry waits out;
//! 5. every try is timed in `taskfleet_provider_request_duration_seconds{provider,outcome}`.
//!
//! Other answers (2xx and the remaining 4xx) come back as an [`Answer`] for the provider to
//! read, since some 4xx mean something to it (Gmail's 404 for an expired history id).

use std::{collections::HashMap, num::NonZeroU32, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use reqwest::{StatusCode, header::HeaderMap};
use serde::de::DeserializeOwned;
use taskfleet_jobs::RetryPolicy;
use taskfleet_telemetry::metrics;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{Provider, ProviderError, breaker::Breaker, error::detail, settings::ProviderSettings};

/// Tries of one call while the provider fails transiently.
const IN_CALL_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(2),
    max_attempts: 3,
};
/// The wait after a rate limit that named no delay.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait a provider's rate-limit headers are taken at their word for.
const LONGEST_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connectors whose keyed rate-limit state is kept before idle ones are dropped.
const KEYED_LIMITS_KEPT: usize = 10_000;

/// A provider's answer that the layer does not turn into an error itself. Its `Debug`
/// leaves the body out: a token endpoint's holds tokens.
#[derive(Clone)]
pub struct Answer {
    pub provider: Provider,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("provider", &self.provider)
            .field("status", &self.status)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl Answer {
    /// The body as `T` for a 2xx; a 4xx becomes its error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        self.error_for_status()?;
        self.decode()
    }

    /// The body as `T`, whatever the status.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|err| ProviderError::Unreadable {
            provider: self.provider,
            detail: detail(&err.to_string()),
        })
    }

    /// Ok for a 2xx; the error a 4xx means otherwise.
    pub fn error_for_status(&self) -> Result<(), ProviderError> {
        let provider = self.provider;
        match self.status {
            status if status.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => Err(ProviderError::Unauthorized { provider }),
            StatusCode::FORBIDDEN => Err(ProviderError::Forbidden {
                provider,
                detail: self.message(),
            }),
            StatusCode::NOT_FOUND => Err(ProviderError::NotFound {
                provider,
                detail: self.message(),
            }),
            status => Err(ProviderError::Rejected {
                provider,
                status: status.as_u16(),
                detail: self.message(),
            }),
        }
    }

    /// The provider's own words for an error, from the shapes they use: GitHub's
    /// `message`, Google's `error.message`, Jira's `errorMessages`, OAuth's
    /// `error_description`; else the body's text.
    pub fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return detail(&text);
        };
        let found = [
            value.pointer("/error/message"),
            value.pointer("/message"),
            value.pointer("/errorMessages/0"),
            value.pointer("/error_description"),
            value.pointer("/error"),
        ]
        .into_iter()
        .flatten()
        .find_map(serde_json::Value::as_str);
        detail(found.unwrap_or(&text))
    }
}

/// The rate limits and breaker of one provider.
struct Lane {
    provider: DefaultDirectRateLimiter,
    connectors: DefaultKeyedRateLimiter<Uuid>,
    breaker: Breaker,
}

pub struct Http {
    client: reqwest::Client,
    timeout: Duration,
    lanes: HashMap<Provider, Lane>,
}

/// How one try ended, as the layer sees it.
enum Tried {
    Answer(Answer),
    RateLimited(ProviderError),
    /// Worth trying again inside the call.
    Transient(ProviderError),
}

impl Http {
    pub fn new(settings: &ProviderSettings) -> Http {
        let client = reqwest::Client::builder()
            .user_agent(concat!("taskfleet/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("the HTTP client builds with rustls");
        let per_second = |rate: NonZeroU32| Quota::per_second(rate);
        let lanes = Provider::ALL
            .into_iter()
            .map(|provider| {
                let lane = Lane {
                    provider: RateLimiter::direct(per_second(
                        settings.provider_rate_limits.for_provider(provider),
                    )),
                    connectors: RateLimiter::keyed(per_second(
                        settings.connector_rate_limits.for_provider(provider),
                    )),
                    breaker: Breaker::new(
                        provider.name(),
                        settings.breaker_failures,
                        settings.breaker_cooldown(),
                    ),
                };
                (provider, lane)
            })
            .collect();
        Http {
            client,
            timeout: settings.timeout(),
            lanes,
        }
    }

    /// Where provider files start their requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` to `provider` on behalf of `connector` (none for OAuth calls made
    /// before a connector has tokens), as the module documentation describes.
    pub async fn send(
        &self,
        provider: Provider,
        connector: Option<Uuid>,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, ProviderError> {
        self.send_tries(provider, connector, request, IN_CALL_RETRY.max_attempts)
            .await
    }

    /// [`Http::send`] without the retries inside the call, for requests that must not be
    /// sent twice: a token request spends its authorisation code, or a refresh token that
    /// the provider rotates.
    pub async fn send_once(
        &self,
        provider: Provider,
        connector: Option<Uuid>,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, ProviderError> {
        self.send_tries(provider, connector, request, 1).await
    }

    async fn send_tries(
        &self,
        provider: Provider,
        connector: Option<Uuid>,
        request: reqwest::RequestBuilder,
        tries: u32,
    ) -> Result<Answer, ProviderError> {
        let request =
            request
                .timeout(self.timeout)
                .build()
                .map_err(|err| ProviderError::NotConfigured {
                    provider,
                    detail: format!("bad request URL: {}", detail(&err.to_string())),
                })?;
        let lane = &self.lanes[&provider];
        let permit = lane
            .breaker
            .admit()
            .map_err(|retry_after| ProviderError::CircuitOpen {
                provider,
                retry_after,
            })?;
        lane.provider.until_ready().await;
        if let Some(connector) = connector {
            if lane.connectors.len() > KEYED_LIMITS_KEPT {
                lane.connectors.retain_recent();
            }
            lane.connectors.until_key_ready(&connector).await;
        }
        let mut attempt = 1;
        loop {
            let copy = request
                .try_clone()
                .expect("provider requests have buffered bodies");
            let started = Instant::now();
            let tried = self.try_once(provider, copy).await;
            let outcome = match &tried {
                Tried::Answer(answer) if answer.status.is_success() => "ok",
                Tried::Answer(_) => "client_error",
                Tried::RateLimited(_) => "rate_limited",
                Tried::Transient(ProviderError::Timeout { .. }) => "timeout",
                Tried::Transient(ProviderError::Unreachable { .. }) => "unreachable",
                Tried::Transient(_) => "server_error",
            };
            metrics::PROVIDER_REQUEST_DURATION
                .with_label_values(&[provider.name().as_str(), outcome])
                .observe(started.elapsed().as_secs_f64());
            match tried {
                Tried::Answer(answer) => {
                    permit.succeeded();
                    return Ok(answer);
                }
                Tried::RateLimited(err) => {
                    permit.succeeded();
                    return Err(err);
                }
                Tried::Transient(err) if attempt < tries => {
                    tracing::debug!(%provider, attempt, %err, "provider call failed; trying again");
                    let pause = IN_CALL_RETRY.delay(attempt, &mut rand::rng());
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Tried::Transient(err) => {
                    permit.failed();
                    return Err(err);
                }
            }
        }
    }

    async fn try_once(&self, provider: Provider, request: reqwest::Request) -> Tried {
        let failed = |err: reqwest::Error| {
            if err.is_timeout() {
                ProviderError::Timeout {
                    provider,
                    after: self.timeout,
                }
            } else {
                ProviderError::Unreachable {
                    provider,
                    // Without the URL: a query string may carry a code or a token.
                    detail: detail(&err.without_url().to_string()),
                }
            }
        };
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(err) => return Tried::Transient(failed(err)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => return Tried::Transient(failed(err)),
        };
        classify(
            Answer {
                provider,
                status,
                headers,
                body,
            },
            Utc::now(),
        )
    }
}

/// What an answer means to the layer; `now` reads reset instants.
fn classify(answer: Answer, now: DateTime<Utc>) -> Tried {
    let provider = answer.provider;
    if let Some(retry_after) = rate_limit_delay(&answer, now) {
        return Tried::RateLimited(ProviderError::RateLimited {
            provider,
            retry_after,
        });
    }
    if answer.status.is_server_error() {
        return Tried::Transient(ProviderError::ServerError {
            provider,
            status: answer.status.as_u16(),
            retry_after: retry_after(&answer.headers, now),
        });
    }
    Tried::Answer(answer)
}

/// The provider's delay when `answer` says a rate limit was hit: any 429, or a 403 with
/// GitHub's exhausted `x-ratelimit-remaining`, a `Retry-After` (GitHub's secondary limits),
/// or a body that names a rate limit (GitHub's messages, Google's `rateLimitExceeded` and
/// `userRateLimitExceeded` reasons).
fn rate_limit_delay(answer: &Answer, now: DateTime<Utc>) -> Option<Duration> {
    let headers = &answer.headers;
    let exhausted = headers
        .get("x-ratelimit-remaining")
        .is_some_and(|remaining| remaining.as_bytes() == b"0");
    let limited = match answer.status {
        StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::FORBIDDEN => {
            exhausted
                || headers.contains_key("retry-after")
                || String::from_utf8_lossy(&answer.body)
                    .to_ascii_lowercase()
                    .replace(' ', "")
                    .contains("ratelimit")
        }
        _ => false,
    };
    if !limited {
        return None;
    }
    let reset = headers
        .get("x-ratelimit-reset")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| instant_or_epoch(value, now));
    let delay = retry_after(headers, now)
        .or(reset)
        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
    Some(delay.clamp(Duration::from_secs(1), LONGEST_RATE_LIMIT_WAIT))
}

/// `Retry-After`: a number of seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&Utc) - now).to_std().unwrap_or_default())
}

/// A reset time as GitHub sends it (epoch seconds) or as Atlassian does (an ISO 8601 instant),
/// as a delay from `now`.
fn instant_or_epoch(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let at = match value.trim().parse::<i64>() {
        Ok(epoch) => DateTime::from_timestamp(epoch, 0)?,
        Err(_) => DateTime::parse_from_rfc3339(value.trim())
            .ok()?
            .with_timezone(&Utc),
    };
    Some((at - now).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        Answer {
            provider: Provider::Github,
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn githubs_exhausted_primary_limit_waits_for_the_reset_epoch() {
        let reset = (now().timestamp() + 42).to_string();
        let limited = answer(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
            r#"{"message":"API rate limit exceeded for user ID 1."}"#,
        );
        assert_eq!(
            rate_limit_delay(&limited, now()),
            Some(Duration::from_secs(42))
        );
    }

    #[test]
    fn githubs_secondary_limit_and_retry_after() {
        let secondary = answer(
            403,
            &[("retry-after", "30")],
            r#"{"message":"You have exceeded a secondary rate limit."}"#,
        );
        assert_eq!(
            rate_limit_delay(&secondary, now()),
            Some(Duration::from_secs(30))
        );
        let unnamed = answer(
            403,
            &[],
            r#"{"message":"You have exceeded a secondary rate limit."}"#,
        );
        assert_eq!(
            rate_limit_delay(&unnamed, now()),
            Some(DEFAULT_RATE_LIMIT_WAIT)
        );
    }

    #[test]
    fn atlassians_reset_is_an_instant() {
        let limited = answer(
            429,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "2026-12-02T10:00:40Z"),
            ],
            "",
        );
        assert_eq!(
            rate_limit_delay(&limited, now()),
            Some(Duration::from_secs(40))
        );
        let dated = answer(429, &[("retry-after", "Wed, 02 Dec 2026 10:01:00 GMT")], "");
        assert_eq!(
            rate_limit_delay(&dated, now()),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn googles_rate_limit_reasons_count_on_a_403() {
        let limited = answer(
            403,
            &[],
            r#"{"error":{"code":403,"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded"}]}}"#,
        );
        assert_eq!(
            rate_limit_delay(&limited, now()),
            Some(DEFAULT_RATE_LIMIT_WAIT)
        );
    }

    #[test]
    fn a_plain_403_is_forbidden_not_a_rate_limit() {
        let forbidden = answer(
            403,
            &[],
            r#"{"message":"Resource not accessible by integration"}"#,
        );
        assert_eq!(rate_limit_delay(&forbidden, now()), None);
        assert!(matches!(
            classify(forbidden.clone(), now()),
            Tried::Answer(_)
        ));
        assert_eq!(
            forbidden.error_for_status(),
            Err(ProviderError::Forbidden {
                provider: Provider::Github,
                detail: "Resource not accessible by integration".into()
            })
        );
    }

    #[test]
    fn a_503_is_transient_and_keeps_its_delay() {
        let unavailable = answer(503, &[("retry-after", "5")], "busy");
        match classify(unavailable, now()) {
            Tried::Transient(ProviderError::ServerError {
                status: 503,
                retry_after,
                ..
            }) => assert_eq!(retry_after, Some(Duration::from_secs(5))),
            _ => panic!("a 503 is transient"),
        }
    }

    #[test]
    fn error_messages_come_from_each_providers_shape() {
        let google = answer(
            404,
            &[],
            r#"{"error":{"code":404,"message":"Requested entity was not found."}}"#,
        );
        assert_eq!(google.message(), "Requested entity was not found.");
        let jira = answer(
            400,
            &[],
            r#"{"errorMessages":["Error in the JQL Query"],"errors":{}}"#,
        );
        assert_eq!(jira.message(), "Error in the JQL Query");
        let oauth = answer(
            400,
            &[],
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        );
        assert_eq!(oauth.message(), "Token has been expired or revoked.");
        assert_eq!(
            answer(500, &[], "<html>oops</html>").message(),
            "<html>oops</html>"
        );
    }
}
