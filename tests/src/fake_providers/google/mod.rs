//! The fake Google: OAuth 2.0 (`/google/accounts/o/oauth2/v2/auth` and the token URL
//! `/google/token`) and the APIs under `/google/api`: Gmail (`/gmail/v1/users/me/…`) and
//! Drive (`/drive/v3/…`). Every error has Google's JSON error shape.

mod drive;
mod drive_query;
pub(crate) mod gmail;
mod oauth;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, post};
use serde_json::{Value, json};

pub(crate) use drive::Drive;

use super::{FakeProvider, authorization::Issuer, lock, reply, traffic::Answer};

pub(crate) const EMAIL: &str = "demo@example.com";
pub(crate) const DISPLAY_NAME: &str = "Demo User";

pub(crate) fn routes() -> Route {
    let api = Route::new()
        .at("/gmail/v1/users/me/profile", get(gmail::profile))
        .at("/gmail/v1/users/me/messages", get(gmail::list_messages))
        .at("/gmail/v1/users/me/messages/:id", get(gmail::get_message))
        .at("/gmail/v1/users/me/history", get(gmail::list_history))
        .at("/drive/v3/about", get(drive::about))
        .at("/drive/v3/files", get(drive::list_files))
        .at(
            "/drive/v3/changes/startPageToken",
            get(drive::start_page_token),
        )
        .at("/drive/v3/changes", get(drive::list_changes))
        .around(authenticate);
    Route::new()
        .at("/accounts/o/oauth2/v2/auth", get(oauth::authorize))
        .at("/token", post(oauth::issue_token))
        .nest("/api", api)
}

/// Google's error: one item of its `error.errors` list, and the error around it.
pub(crate) struct GoogleError<'a> {
    pub code: u16,
    pub message: &'a str,
    /// The item's own message, when it differs from the error's (401: "Invalid Credentials").
    pub item_message: Option<&'a str>,
    pub domain: &'a str,
    pub reason: &'a str,
    /// gRPC-style status: NOT_FOUND, INVALID_ARGUMENT, …
    pub status: &'a str,
    /// (location, locationType) of the faulty part of the request.
    pub location: Option<(&'a str, &'a str)>,
}

impl GoogleError<'_> {
    pub fn body(&self) -> Value {
        let item_message = self.item_message.unwrap_or(self.message);
        let mut item =
            json!({"message": item_message, "domain": self.domain, "reason": self.reason});
        if let Some((location, location_type)) = self.location {
            item["location"] = json!(location);
            item["locationType"] = json!(location_type);
        }
        json!({"error": {"code": self.code, "message": self.message, "errors": [item], "status": self.status}})
    }

    pub fn response(&self) -> Response {
        reply::json(self.code, &self.body())
    }
}

pub(crate) fn not_found() -> Response {
    GoogleError {
        code: 404,
        message: "Requested entity was not found.",
        item_message: None,
        domain: "global",
        reason: "notFound",
        status: "NOT_FOUND",
        location: None,
    }
    .response()
}

/// A query parameter Google cannot use.
pub(crate) fn invalid_parameter(name: &str) -> Response {
    GoogleError {
        code: 400,
        message: "Invalid Value",
        item_message: None,
        domain: "global",
        reason: "invalid",
        status: "INVALID_ARGUMENT",
        location: Some((name, "parameter")),
    }
    .response()
}

/// A query parameter the method needs and did not get.
pub(crate) fn missing_parameter(message: &str, name: &str) -> Response {
    GoogleError {
        code: 400,
        message,
        item_message: None,
        domain: "global",
        reason: "required",
        status: "INVALID_ARGUMENT",
        location: Some((name, "parameter")),
    }
    .response()
}

async fn authenticate<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let accepted =
        reply::bearer(&req).is_some_and(|token| lock(&req).auth.accepts(Issuer::Google, token));
    if accepted {
        return Ok(next.call(req).await?.into_response());
    }
    let mut response = GoogleError {
        code: 401,
        message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        item_message: Some("Invalid Credentials"),
        domain: "global",
        reason: "authError",
        status: "UNAUTHENTICATED",
        location: Some(("Authorization", "header")),
    }
    .response();
    response.headers_mut().insert(
        "WWW-Authenticate",
        "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""
            .parse()
            .expect("a header value"),
    );
    Ok(response)
}

/// Google's per-user quota answer: 429 RESOURCE_EXHAUSTED with `Retry-After`.
pub(crate) fn rate_limited(provider: FakeProvider, retry_after_secs: u64) -> Answer {
    let service = if provider == FakeProvider::Gmail {
        "gmail.googleapis.com"
    } else {
        "drive.googleapis.com"
    };
    let message = format!(
        "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' of service '{service}' for consumer 'project_number:418236107253'."
    );
    Answer {
        status: 429,
        headers: vec![("Retry-After".into(), retry_after_secs.to_string())],
        body: GoogleError {
            code: 429,
            message: &message,
            item_message: None,
            domain: "usageLimits",
            reason: "rateLimitExceeded",
            status: "RESOURCE_EXHAUSTED",
            location: None,
        }
        .body()
        .to_string(),
    }
}

pub(crate) fn server_error(status: u16) -> Answer {
    let (message, grpc_status) = match status {
        500 => ("Internal error encountered.", "INTERNAL"),
        503 => ("The service is currently unavailable.", "UNAVAILABLE"),
        _ => ("Backend Error", "UNKNOWN"),
    };
    Answer {
        status,
        headers: Vec::new(),
        body: GoogleError {
            code: status,
            message,
            item_message: None,
            domain: "global",
            reason: "backendError",
            status: grpc_status,
            location: None,
        }
        .body()
        .to_string(),
    }
}
