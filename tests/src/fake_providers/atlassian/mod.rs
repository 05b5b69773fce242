//! The fake Atlassian: OAuth 2.0 (3LO) under `/atlassian/auth`, the API gateway under
//! `/atlassian/api` (accessible-resources, then Jira at `/ex/jira/{cloudid}` and Confluence at
//! `/ex/confluence/{cloudid}`, with Bearer tokens), and the one cloud site under
//! `/atlassian/site` (the same Jira and Confluence endpoints, with Basic email:API-token).

pub(crate) mod confluence;
pub(crate) mod jira;
mod jql;
mod oauth;

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{Duration, DurationRound, Utc};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler, post};
use serde_json::json;

use super::{FakeProvider, authorization::Issuer, lock, reply, traffic::Answer};

/// The one cloud site's id.
pub(crate) const CLOUD_ID: &str = "4f1c6e9a-2b7d-4c3e-9a51-7d2e8b0c6f13";
/// The user every token of the fake belongs to.
pub(crate) const ACCOUNT_ID: &str = "5b10ac8d82e05b22cc7d4ef5";
pub(crate) const EMAIL: &str = "demo@example.com";
pub(crate) const DISPLAY_NAME: &str = "Demo User";

pub(crate) fn routes() -> Route {
    let gateway = products("/ex/jira/:cloud_id", "/ex/confluence/:cloud_id")
        .at(
            "/oauth/token/accessible-resources",
            get(accessible_resources),
        )
        .around(gateway_authentication);
    let site = products("", "").around(site_authentication);
    Route::new()
        .at("/auth/authorize", get(oauth::authorize))
        .at("/auth/oauth/token", post(oauth::issue_token))
        .nest("/api", gateway)
        .nest("/site", site)
}

/// Jira's and Confluence's endpoints under their prefixes.
fn products(jira: &str, confluence: &str) -> Route {
    Route::new()
        .at(format!("{jira}/rest/api/3/myself"), get(jira::myself))
        .at(
            format!("{jira}/rest/api/3/search/jql"),
            get(jira::search).post(jira::search),
        )
        .at(
            format!("{confluence}/wiki/rest/api/user/current"),
            get(confluence::current_user),
        )
        .at(
            format!("{confluence}/wiki/api/v2/tasks"),
            get(confluence::list_tasks),
        )
}

#[handler]
async fn accessible_resources(req: &Request) -> Response {
    reply::json(
        200,
        &json!([{
            "id": CLOUD_ID,
            "url": site_url(req),
            "name": "demo",
            "scopes": ["read:jira-work", "read:jira-user", "read:confluence-content.all", "read:task:confluence", "offline_access"],
            "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png",
        }]),
    )
}

/// The site as the client addressed this server.
pub(crate) fn site_url(req: &Request) -> String {
    format!("{}/atlassian/site", reply::origin(req))
}

/// What the request's URL holds before `marker` (`/rest/api/3`, `/wiki`): the product's base
/// as the client addressed it, for `self` links.
pub(crate) fn base_before(req: &Request, marker: &str) -> String {
    let path = req.original_uri().path();
    let end = path.find(marker).unwrap_or(path.len());
    format!("{}{}", reply::origin(req), &path[..end])
}

/// api.atlassian.com: an OAuth access token whose site is the one in the path.
async fn gateway_authentication<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let accepted =
        reply::bearer(&req).is_some_and(|token| lock(&req).auth.accepts(Issuer::Atlassian, token));
    if !accepted {
        return Ok(reply::json(
            401,
            &json!({"code": 401, "message": "Unauthorized"}),
        ));
    }
    let path = req.uri().path();
    let cloud_id = path
        .strip_prefix("/ex/")
        .and_then(|rest| rest.split('/').nth(1));
    if cloud_id.is_some_and(|id| id != CLOUD_ID) {
        return Ok(reply::json(
            401,
            &json!({"code": 401, "message": "Unauthorized; scope does not match"}),
        ));
    }
    Ok(next.call(req).await?.into_response())
}

/// The site itself: Basic auth with an account's email and one of its API tokens.
async fn site_authentication<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let accepted = reply::credentials(&req, "basic")
        .and_then(|encoded| STANDARD.decode(encoded).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .is_some_and(|pair| {
            pair.split_once(':').is_some_and(|(email, token)| {
                lock(&req).auth.accepts_atlassian_api_token(email, token)
            })
        });
    if accepted {
        return Ok(next.call(req).await?.into_response());
    }
    let mut response = if req.uri().path().starts_with("/wiki/") {
        confluence_error(401, "UNAUTHORIZED", "Unauthorized")
    } else {
        jira_error(
            401,
            "You are not authenticated. Authentication required to perform this operation.",
        )
    };
    response.headers_mut().insert(
        "X-Seraph-LoginReason",
        "AUTHENTICATED_FAILED".parse().expect("a header value"),
    );
    Ok(response)
}

/// Jira's error body.
pub(crate) fn jira_error(status: u16, message: &str) -> Response {
    reply::json(status, &jira_error_body(message))
}

fn jira_error_body(message: &str) -> serde_json::Value {
    json!({"errorMessages": [message], "errors": {}})
}

/// Confluence's v2 error body.
pub(crate) fn confluence_error(status: u16, code: &str, title: &str) -> Response {
    reply::json(status, &confluence_error_body(status, code, title))
}

fn confluence_error_body(status: u16, code: &str, title: &str) -> serde_json::Value {
    json!({"errors": [{"status": status, "code": code, "title": title, "detail": null}]})
}

/// Atlassian's rate limit: 429 with when to retry, the budget at 0, when it resets and why.
pub(crate) fn rate_limited(provider: FakeProvider, retry_after_secs: u64) -> Answer {
    // Jira writes the reset to the minute (`yyyy-MM-ddTHH:mmZ`): round up, never before it.
    let reset = (Utc::now() + Duration::seconds(retry_after_secs as i64 + 59))
        .duration_trunc(Duration::minutes(1))
        .expect("a minute divides any time");
    let (reason, body) = if provider == FakeProvider::Confluence {
        (
            "confluence-quota-based",
            confluence_error_body(429, "TOO_MANY_REQUESTS", "Too Many Requests"),
        )
    } else {
        ("jira-quota-based", jira_error_body("Rate limit exceeded."))
    };
    Answer {
        status: 429,
        headers: vec![
            ("Retry-After".into(), retry_after_secs.to_string()),
            ("X-RateLimit-Limit".into(), "100".into()),
            ("X-RateLimit-Remaining".into(), "0".into()),
            (
                "X-RateLimit-Reset".into(),
                reset.format("%Y-%m-%dT%H:%MZ").to_string(),
            ),
            ("RateLimit-Reason".into(), reason.into()),
        ],
        body: body.to_string(),
    }
}

pub(crate) fn server_error(provider: FakeProvider, status: u16) -> Answer {
    let title = reply::status(status)
        .canonical_reason()
        .unwrap_or("Server Error");
    let body = if provider == FakeProvider::Confluence {
        let code = title.to_ascii_uppercase().replace(' ', "_");
        confluence_error_body(status, &code, title)
    } else {
        jira_error_body("Internal server error")
    };
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}
