//! Building answers: JSON bodies, error pages, OAuth redirects.

use poem::{Request, Response, http::StatusCode};
use serde_json::Value;

pub(crate) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("a valid HTTP status")
}

pub(crate) fn json(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(status(code))
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

/// What a browser would show: the providers answer a bad authorization request with a page, not
/// with a redirect, when they cannot trust the client it names.
pub(crate) fn error_page(code: u16, message: &str) -> Response {
    Response::builder()
        .status(status(code))
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!DOCTYPE html><html><head><title>Error</title></head><body><h1>{message}</h1></body></html>"
        ))
}

/// A 302 to `uri` with `pairs` added to its query.
pub(crate) fn redirect(uri: &str, pairs: &[(&str, &str)]) -> Response {
    let separator = if uri.contains('?') { '&' } else { '?' };
    let query = serde_urlencoded::to_string(pairs).expect("strings encode");
    Response::builder()
        .status(StatusCode::FOUND)
        .header("Location", format!("{uri}{separator}{query}"))
        .finish()
}

/// `http://HOST` as the client addressed this server, for the absolute links providers send.
pub(crate) fn origin(req: &Request) -> String {
    let host = req
        .header("Host")
        .map(str::to_owned)
        .unwrap_or_else(|| req.local_addr().to_string());
    format!("http://{host}")
}

/// The bearer token of the `Authorization` header, whatever the case of its scheme.
pub(crate) fn bearer(req: &Request) -> Option<&str> {
    credentials(req, "bearer")
}

/// The credentials of the `Authorization` header when its scheme is `scheme` (any case).
pub(crate) fn credentials<'a>(req: &'a Request, scheme: &str) -> Option<&'a str> {
    let (given, credentials) = req.header("Authorization")?.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim())
}
