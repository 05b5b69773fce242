//! What every request meets before a provider sees it: the request log, the fault rules a test
//! set, and the latency it asked for.

use std::{sync::Arc, time::Duration};

use poem::{Endpoint, IntoResponse, Request, Response};

use super::{FakeProvider, Shared, atlassian, github, google, openai, reply};

/// An answer a test imposes on the next requests whose path contains `path_contains`.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub path_contains: String,
    /// The status to answer with; 0 answers normally once `delay` has passed.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How many requests the rule applies to.
    pub times: usize,
    /// How long to wait before answering.
    pub delay: Duration,
}

/// A provider's own words for a refusal: status, headers and body.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl FaultRule {
    /// The provider's real rate-limit answer for requests whose path contains `path_contains`
    /// (GitHub: 403 with x-ratelimit-remaining: 0 and x-ratelimit-reset = now + retry_after;
    /// Jira/Confluence: 429 with Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining: 0,
    /// X-RateLimit-Reset (ISO-8601 UTC instant), RateLimit-Reason; Google: 429 with its JSON
    /// error, reason rateLimitExceeded, and Retry-After). Reset times count from now, when the
    /// rule is made.
    pub fn rate_limited(
        provider: FakeProvider,
        path_contains: &str,
        retry_after_secs: u64,
        times: usize,
    ) -> FaultRule {
        let answer = match provider {
            FakeProvider::Github => github::rate_limited(retry_after_secs),
            FakeProvider::Jira | FakeProvider::Confluence => {
                atlassian::rate_limited(provider, retry_after_secs)
            }
            FakeProvider::Gmail | FakeProvider::Gdrive => {
                google::rate_limited(provider, retry_after_secs)
            }
        };
        FaultRule::answering(path_contains, answer, times)
    }

    /// 500/502/503 style answers with the provider's own error body.
    pub fn server_error(
        provider: FakeProvider,
        path_contains: &str,
        status: u16,
        times: usize,
    ) -> FaultRule {
        let answer = match provider {
            FakeProvider::Github => github::server_error(status),
            FakeProvider::Jira | FakeProvider::Confluence => {
                atlassian::server_error(provider, status)
            }
            FakeProvider::Gmail | FakeProvider::Gdrive => google::server_error(status),
        };
        FaultRule::answering(path_contains, answer, times)
    }

    /// OpenAI's real rate-limit answer for requests whose path contains `path_contains`: 429
    /// with its `rate_limit_exceeded` error, `retry-after: retry_after_secs`, and
    /// `x-ratelimit-remaining-requests: 0` with `x-ratelimit-reset-requests` as long.
    pub fn openai_rate_limited(
        path_contains: &str,
        retry_after_secs: u64,
        times: usize,
    ) -> FaultRule {
        FaultRule::answering(path_contains, openai::rate_limited(retry_after_secs), times)
    }

    /// OpenAI's 500/502/503 answers, with its own error bodies.
    pub fn openai_server_error(path_contains: &str, status: u16, times: usize) -> FaultRule {
        FaultRule::answering(path_contains, openai::server_error(status), times)
    }

    /// Answers only after `delay` (longer than the client's timeout = a timeout).
    pub fn slow(path_contains: &str, delay: Duration, times: usize) -> FaultRule {
        FaultRule {
            path_contains: path_contains.to_owned(),
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            times,
            delay,
        }
    }

    fn answering(path_contains: &str, answer: Answer, times: usize) -> FaultRule {
        FaultRule {
            path_contains: path_contains.to_owned(),
            status: answer.status,
            headers: answer.headers,
            body: answer.body,
            times,
            delay: Duration::ZERO,
        }
    }

    fn response(&self) -> Response {
        let mut response = Response::builder()
            .status(reply::status(self.status))
            .content_type("application/json; charset=utf-8");
        for (name, value) in &self.headers {
            response = response.header(name.as_str(), value.as_str());
        }
        response.body(self.body.clone())
    }
}

#[derive(Default)]
pub(crate) struct Traffic {
    /// The path of every request received, in order.
    paths: Vec<String>,
    /// Rules with applications left, in the order added.
    rules: Vec<FaultRule>,
    /// How long each API request waits before it is served.
    pub latency: Duration,
}

impl Traffic {
    pub fn add_rule(&mut self, rule: FaultRule) {
        if rule.times > 0 {
            self.rules.push(rule);
        }
    }

    pub fn requests(&self, path_contains: &str) -> usize {
        self.paths
            .iter()
            .filter(|path| path.contains(path_contains))
            .count()
    }

    /// Logs a request and takes one application of the first rule that matches it.
    fn admit(&mut self, path: &str) -> Option<FaultRule> {
        self.paths.push(path.to_owned());
        let index = self
            .rules
            .iter()
            .position(|rule| path.contains(&rule.path_contains))?;
        let rule = self.rules[index].clone();
        self.rules[index].times -= 1;
        if self.rules[index].times == 0 {
            self.rules.remove(index);
        }
        Some(rule)
    }
}

/// API requests, as opposed to the OAuth pages and token endpoints.
fn is_api(path: &str) -> bool {
    [
        "/github/api/",
        "/atlassian/api/",
        "/atlassian/site/",
        "/google/api/",
        "/openai/v1/",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
}

/// The middleware around the whole server.
pub(crate) async fn control<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let (rule, latency) = {
        let shared = req.data::<Shared>().expect("the server has its world");
        let mut world = shared.lock().unwrap();
        let latency = if is_api(&path) {
            world.traffic.latency
        } else {
            Duration::ZERO
        };
        (world.traffic.admit(&path), latency)
    };
    if let Some(rule) = rule {
        tokio::time::sleep(rule.delay).await;
        if rule.status != 0 {
            return Ok(rule.response());
        }
    }
    tokio::time::sleep(latency).await;
    Ok(next.call(req).await?.into_response())
}
