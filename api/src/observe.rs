//! What every request goes through first: a request id (the client's `X-Request-ID`, or a new
//! one) that is echoed back, logged on every line the request causes and stored on the jobs it
//! creates; an access log line; and the `taskfleet_http_request_duration_seconds` histogram.

use std::{sync::Arc, time::Instant};

use poem::{Endpoint, IntoResponse, PathPattern, Request, Response, http::StatusCode};
use taskfleet_telemetry::metrics;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::json_error;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id when it is a sane token (it lands in logs and the ledger), else a
    /// new one.
    fn of(req: &Request) -> RequestId {
        let given = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 128
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
            });
        RequestId(given.map_or_else(|| Uuid::now_v7().simple().to_string(), str::to_owned))
    }
}

/// The route templates of the OpenAPI document (`/v1/jobs/{id}`), used as the `route` label.
/// poem-openapi registers its routes with numbered parameters (`/v1/jobs/:param0`), so the
/// matched pattern is mapped back to the documented path it stands for.
#[derive(Debug, Clone, Default)]
pub struct RouteTemplates(Vec<String>);

impl RouteTemplates {
    pub fn new(documented: impl IntoIterator<Item = String>) -> RouteTemplates {
        RouteTemplates(documented.into_iter().collect())
    }

    /// The label of a matched pattern. Requests that matched no route share one label (the
    /// nested routers answer those 404s under their prefix, `/` or `/dashboard`), so
    /// scanners cannot blow up the metric's cardinality.
    fn label(&self, pattern: Option<&PathPattern>, status: StatusCode) -> String {
        let Some(pattern) = pattern.filter(|_| status != StatusCode::NOT_FOUND) else {
            return self
                .documented(pattern)
                .unwrap_or_else(|| "unmatched".to_owned());
        };
        self.documented(Some(pattern))
            .unwrap_or_else(|| pattern.0.to_string())
    }

    /// The documented template `pattern` stands for, if any.
    fn documented(&self, pattern: Option<&PathPattern>) -> Option<String> {
        let pattern = pattern?;
        let is_param = |part: &str| part.starts_with(':') || part.starts_with('{');
        let matched: Vec<&str> = pattern.0.split('/').collect();
        self.0
            .iter()
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == matched.len()
                    && parts.iter().zip(&matched).all(|(documented, seen)| {
                        documented == seen || (is_param(documented) && is_param(seen))
                    })
            })
            .cloned()
    }
}

pub async fn observe<E: Endpoint>(
    endpoint: Arc<E>,
    mut req: Request,
    routes: &RouteTemplates,
) -> poem::Result<Response> {
    let started = Instant::now();
    let request_id = RequestId::of(&req);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    req.set_data(request_id.clone());
    let span = tracing::info_span!("request", request_id = %request_id.0, %method, %path);
    let (mut resp, pattern) = match endpoint.call(req).instrument(span.clone()).await {
        Ok(resp) => {
            let resp = resp.into_response();
            let pattern = resp.data::<PathPattern>().cloned();
            (resp, pattern)
        }
        Err(err) => {
            let pattern = err.data::<PathPattern>().cloned();
            (json_error(err).await, pattern)
        }
    };
    let status = resp.status();
    let route = routes.label(pattern.as_ref(), status);
    let elapsed = started.elapsed();
    metrics::HTTP_REQUEST_DURATION
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            %route,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "served"
        )
    });
    if let Ok(value) = request_id.0.parse() {
        resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_use_openapi_templates() {
        let routes = RouteTemplates::new(
            ["/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/jobs/batch"].map(String::from),
        );
        let label =
            |pattern: &str, status| routes.label(Some(&PathPattern(pattern.into())), status);
        assert_eq!(
            label("/v1/jobs/:param0/events", StatusCode::OK),
            "/v1/jobs/{id}/events"
        );
        assert_eq!(label("/v1/jobs/:param0", StatusCode::OK), "/v1/jobs/{id}");
        // A documented route's own 404 (no such job) keeps its label.
        assert_eq!(
            label("/v1/jobs/:param0", StatusCode::NOT_FOUND),
            "/v1/jobs/{id}"
        );
        assert_eq!(
            label("/v1/jobs/batch", StatusCode::CREATED),
            "/v1/jobs/batch"
        );
        assert_eq!(label("/metrics", StatusCode::OK), "/metrics");
        // Paths nothing serves: the nested routers' 404s, and no pattern at all.
        assert_eq!(label("/", StatusCode::NOT_FOUND), "unmatched");
        assert_eq!(label("/dashboard", StatusCode::NOT_FOUND), "unmatched");
        assert_eq!(routes.label(None, StatusCode::NOT_FOUND), "unmatched");
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let with = |id: &str| {
            let req = Request::builder().header(REQUEST_ID_HEADER, id).finish();
            RequestId::of(&req).0
        };
        assert_eq!(with("abc-123_x.y"), "abc-123_x.y");
        let replaced = with("evil\" value");
        assert_ne!(replaced, "evil\" value");
        assert_eq!(replaced.len(), 32);
        assert_ne!(with(&"a".repeat(129)), "a".repeat(129));
    }
}
