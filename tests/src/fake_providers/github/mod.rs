//! The fake GitHub: the REST API under `/github/api` and the OAuth web flow under `/github`.
//!
//! Every authenticated API answer carries GitHub's `x-ratelimit-*` headers, from the `core`
//! budget or the `search` one. The fake never runs out by itself, so a test's pace cannot
//! decide its outcome: a rate limit comes only from [`FaultRule::rate_limited`].
//!
//! [`FaultRule::rate_limited`]: crate::fake_providers::FaultRule::rate_limited

mod issues;
mod listing;
mod oauth;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler, post};
use serde_json::{Value, json};

pub(crate) use issues::GitHub;

use super::{authorization::Issuer, lock, reply, traffic::Answer};

/// The user every token of the fake belongs to.
pub(crate) const LOGIN: &str = "octo-demo";
pub(crate) const USER_ID: u64 = 583_231;

pub(crate) fn routes() -> Route {
    Route::new()
        .at("/login/oauth/authorize", get(oauth::authorize))
        .at("/login/oauth/access_token", post(oauth::issue_token))
        .nest(
            "/api",
            Route::new()
                .at("/user", get(authenticated_user))
                .at("/issues", get(listing::assigned_issues))
                .at("/search/issues", get(listing::search_issues))
                .around(authenticate),
        )
}

#[handler]
async fn authenticated_user() -> Response {
    let mut user = user_json(LOGIN, USER_ID);
    user["name"] = json!("Octo Demo");
    user["company"] = json!("Acme");
    user["email"] = json!("demo@example.com");
    user["created_at"] = json!("2019-02-11T09:21:48Z");
    user["updated_at"] = json!("2026-01-05T16:02:11Z");
    reply::json(200, &user)
}

/// GitHub's "simple user" object.
pub(crate) fn user_json(login: &str, id: u64) -> Value {
    json!({
        "login": login,
        "id": id,
        "node_id": format!("U_kgDO{id:08X}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "",
        "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
        "type": "User",
        "site_admin": false,
    })
}

/// Accepts a personal access token or an OAuth token (`Bearer X` or `token X`); counts the
/// request against its rate-limit budget.
async fn authenticate<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let search = req.uri().path().starts_with("/search/");
    let token = reply::bearer(&req).or_else(|| reply::credentials(&req, "token"));
    let budget = {
        let mut world = lock(&req);
        match token {
            Some(token)
                if world.auth.accepts_github_pat(token)
                    || world.auth.accepts(Issuer::Github, token) =>
            {
                let rate = &mut world.github.rate;
                Some(if search {
                    rate.search.spend()
                } else {
                    rate.core.spend()
                })
            }
            _ => None,
        }
    };
    let Some(headers) = budget else {
        let message = if token.is_some() {
            "Bad credentials"
        } else {
            "Requires authentication"
        };
        return Ok(reply::json(
            401,
            &json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": "401"}),
        ));
    };
    let mut response = next.call(req).await?.into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            name,
            value.parse().expect("numbers and names are header values"),
        );
    }
    Ok(response)
}

/// One of GitHub's rate-limit budgets: so many requests per window.
pub(crate) struct RateWindow {
    resource: &'static str,
    limit: u32,
    length: Duration,
    used: u32,
    resets_at: DateTime<Utc>,
}

impl RateWindow {
    fn new(resource: &'static str, limit: u32, length: Duration) -> RateWindow {
        RateWindow {
            resource,
            limit,
            length,
            used: 0,
            resets_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    /// Counts a request and returns the headers that report the budget.
    fn spend(&mut self) -> Vec<(&'static str, String)> {
        let now = Utc::now();
        if now >= self.resets_at {
            self.used = 0;
            self.resets_at = now + self.length;
        }
        self.used += 1;
        vec![
            ("x-ratelimit-limit", self.limit.to_string()),
            // Never 0: see the module documentation.
            (
                "x-ratelimit-remaining",
                self.limit.saturating_sub(self.used).max(1).to_string(),
            ),
            ("x-ratelimit-reset", self.resets_at.timestamp().to_string()),
            ("x-ratelimit-used", self.used.to_string()),
            ("x-ratelimit-resource", self.resource.to_owned()),
        ]
    }
}

pub(crate) struct RateLimits {
    core: RateWindow,
    search: RateWindow,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            core: RateWindow::new("core", 5000, Duration::hours(1)),
            search: RateWindow::new("search", 30, Duration::minutes(1)),
        }
    }
}

/// GitHub's primary rate limit: 403, the budget at 0, and when it resets.
pub(crate) fn rate_limited(retry_after_secs: u64) -> Answer {
    let reset = Utc::now().timestamp() + retry_after_secs as i64;
    Answer {
        status: 403,
        headers: vec![
            ("x-ratelimit-limit".into(), "5000".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), reset.to_string()),
            ("x-ratelimit-used".into(), "5000".into()),
            ("x-ratelimit-resource".into(), "core".into()),
        ],
        body: json!({
            "message": format!("API rate limit exceeded for user ID {USER_ID}. If you reach out to GitHub Support for help, please include the request ID C8B4:3E5A:1F0B2C:20A7D1:6756A1B2 and timestamp {} UTC.", Utc::now().format("%Y-%m-%d %H:%M:%S")),
            "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
        })
        .to_string(),
    }
}

pub(crate) fn server_error(status: u16) -> Answer {
    let message = if status == 503 {
        "Service Unavailable"
    } else {
        "Server Error"
    };
    Answer {
        status,
        headers: Vec::new(),
        body: json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()}).to_string(),
    }
}
