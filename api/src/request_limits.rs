//! What one request may hold, and for how long: its headers (431), its body (413), and the
//! time its client takes to send that body (408). A slow client holds a connection and a
//! task, never more than these allow; a silent connection is closed by the server's idle
//! timeout.

use std::{sync::Arc, time::Duration};

use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::error::ParseRequestPayloadError;

use crate::error::{ApiError, explain_job_payload};

#[derive(Debug, Clone, clap::Args)]
pub struct RequestLimitArgs {
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "TASKFLEET_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most bytes of request headers (names and values) accepted; more get 431.
    #[arg(long, env = "TASKFLEET_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds a client has to send its whole request body; a slower one gets 408.
    #[arg(long, env = "TASKFLEET_BODY_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// Seconds a connection may stay silent (no byte either way) before it is closed. SSE
    /// streams send a comment every 15 s, so they stay open.
    #[arg(long, env = "TASKFLEET_IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(20..))]
    pub idle_timeout_secs: u64,
}

impl RequestLimitArgs {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// The limits a request is held to before its route sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub body_timeout: Duration,
}

impl From<&RequestLimitArgs> for RequestLimits {
    fn from(args: &RequestLimitArgs) -> RequestLimits {
        RequestLimits {
            max_body_bytes: args.max_body_bytes,
            max_header_bytes: args.max_header_bytes,
            body_timeout: Duration::from_secs(args.body_timeout_secs),
        }
    }
}

/// Checks the headers, then reads the body within its size and time (413 past the size,
/// whether or not the client sent a `Content-Length`: poem's `SizeLimit` refuses requests
/// without one). Keeps the bytes to explain a job payload that does not parse.
pub async fn limit_request<E: Endpoint>(
    endpoint: Arc<E>,
    mut req: Request,
    limits: RequestLimits,
) -> poem::Result<Response> {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ApiError::headers_too_large(format!(
            "the request's headers hold {header_bytes} bytes; at most {} are accepted",
            limits.max_header_bytes
        ))
        .into());
    }
    let body = req.take_body().into_bytes_limit(limits.max_body_bytes);
    let body = match tokio::time::timeout(limits.body_timeout, body).await {
        Ok(Ok(body)) => body,
        Ok(Err(poem::error::ReadBodyError::PayloadTooLarge)) => {
            return Err(ApiError::payload_too_large(format!(
                "the request body is over {} bytes (TASKFLEET_MAX_BODY_BYTES)",
                limits.max_body_bytes
            ))
            .into());
        }
        Ok(Err(err)) => return Err(err.into()),
        Err(_) => {
            return Err(ApiError::request_timeout(format!(
                "the request body did not arrive within {} s",
                limits.body_timeout.as_secs()
            ))
            .into());
        }
    };
    req.set_body(body.clone());
    let path = req.uri().path().to_owned();
    match endpoint.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(err) if err.is::<ParseRequestPayloadError>() => {
            Err(explain_job_payload(&path, &body).map_or(err, Into::into))
        }
        Err(err) => Err(err),
    }
}
