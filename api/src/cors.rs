//! Cross-origin requests, off by default: `TASKFLEET_CORS_ORIGINS` names the front-ends (their
//! origins, `https://app.example.com`) that may call the API from a browser. A request from one
//! of them gets CORS answers (preflights included, before authentication); from any other
//! origin it gets none, and the browser keeps the answer from the page that asked.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response,
    http::{HeaderValue, Method, header},
    middleware::Cors,
};

/// What a browser front-end may send and read.
const REQUEST_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "last-event-id",
    "x-request-id",
];
const EXPOSED_HEADERS: [&str; 6] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "x-request-id",
    "location",
];

/// The allowed origins, checked at start.
#[derive(Debug, Clone, Default)]
pub struct CorsOrigins(Vec<HeaderValue>);

impl CorsOrigins {
    /// `origins` is a comma-separated list of `scheme://host[:port]`.
    pub fn parse(origins: Option<&str>) -> anyhow::Result<CorsOrigins> {
        let mut allowed = Vec::new();
        for origin in origins.unwrap_or_default().split(',').map(str::trim) {
            if origin.is_empty() {
                continue;
            }
            let url = url::Url::parse(origin).ok().filter(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.path() == "/"
                    && !origin.ends_with('/')
            });
            anyhow::ensure!(
                url.is_some(),
                "TASKFLEET_CORS_ORIGINS: `{origin}` is not an origin like https://app.example.com"
            );
            allowed.push(HeaderValue::from_str(origin)?);
        }
        Ok(CorsOrigins(allowed))
    }

    fn cors(&self) -> Cors {
        Cors::new()
            .allow_origins(self.0.iter().cloned())
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers(REQUEST_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(600)
    }
}

/// Answers requests from an allowed origin with CORS; passes the rest through untouched.
pub async fn cors<E: Endpoint>(
    endpoint: Arc<E>,
    req: Request,
    origins: Arc<CorsOrigins>,
) -> poem::Result<Response> {
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|origin| origins.0.contains(origin));
    if allowed {
        origins.cors().transform(endpoint).call(req).await
    } else {
        endpoint.call(req).await.map(IntoResponse::into_response)
    }
}
