//! Every error leaves the API as JSON `{error, message}` with the right status.

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Object,
    error::{AuthorizationError, ParseRequestPayloadError},
    payload::Json,
};

#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `invalid_payload`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// A parameter is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or unknown API key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The key's role does not allow this (operator only).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource for this tenant.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The client took longer than `TASKFLEET_BODY_TIMEOUT_SECS` to send its body
    /// (`request_timeout`).
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// The job's state does not allow this, or an idempotency key was reused with another
    /// payload.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is over `TASKFLEET_MAX_BODY_BYTES` (`payload_too_large`).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not `application/json`, or has no `Content-Type` (`unsupported_media_type`).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The request is well-formed JSON but cannot be accepted as it is.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// The tenant's monthly LLM token budget is spent (`budget_exceeded`), or the key made
    /// more requests of this class than its rate limit allows (`rate_limited`); `Retry-After`
    /// is the seconds until it may try again.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// The headers are over `TASKFLEET_MAX_HEADER_BYTES` (`headers_too_large`).
    #[oai(status = 431)]
    HeadersTooLarge(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The LLM provider failed the call (`llm_failed`).
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A dependency (Postgres, Redis) is unavailable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn body(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.to_owned(),
        message: message.into(),
    })
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(body("bad_request", message))
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::Unauthorized(body("unauthorized", message))
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden(body("forbidden", message))
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound(body("not_found", message))
    }

    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::RequestTimeout(body("request_timeout", message))
    }

    pub fn payload_too_large(message: impl Into<String>) -> ApiError {
        ApiError::PayloadTooLarge(body("payload_too_large", message))
    }

    pub fn headers_too_large(message: impl Into<String>) -> ApiError {
        ApiError::HeadersTooLarge(body("headers_too_large", message))
    }

    pub fn conflict(error: &str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict(body(error, message))
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable(body("invalid_payload", message))
    }

    /// A 422 with its own code, for requests that are valid but cannot be served as things
    /// stand (e.g. `llm_not_configured`).
    pub fn unprocessable(error: &str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable(body(error, message))
    }

    /// A 429 that tells the client to come back in `retry_after_secs`.
    pub fn too_many_requests(
        error: &str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> ApiError {
        ApiError::TooManyRequests(body(error, message), retry_after_secs)
    }

    pub fn internal(error: &str, message: impl Into<String>) -> ApiError {
        ApiError::Internal(body(error, message))
    }

    pub fn bad_gateway(error: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadGateway(body(error, message))
    }

    /// The same error with its message rewritten (prefixed with where it applies).
    pub fn with_message(self, rewrite: impl FnOnce(String) -> String) -> ApiError {
        let rewritten = |Json(body): Json<ErrorBody>| {
            Json(ErrorBody {
                message: rewrite(body.message),
                error: body.error,
            })
        };
        match self {
            ApiError::BadRequest(b) => ApiError::BadRequest(rewritten(b)),
            ApiError::Unauthorized(b) => ApiError::Unauthorized(rewritten(b)),
            ApiError::Forbidden(b) => ApiError::Forbidden(rewritten(b)),
            ApiError::NotFound(b) => ApiError::NotFound(rewritten(b)),
            ApiError::RequestTimeout(b) => ApiError::RequestTimeout(rewritten(b)),
            ApiError::Conflict(b) => ApiError::Conflict(rewritten(b)),
            ApiError::PayloadTooLarge(b) => ApiError::PayloadTooLarge(rewritten(b)),
            ApiError::UnsupportedMediaType(b) => ApiError::UnsupportedMediaType(rewritten(b)),
            ApiError::Unprocessable(b) => ApiError::Unprocessable(rewritten(b)),
            ApiError::TooManyRequests(b, after) => ApiError::TooManyRequests(rewritten(b), after),
            ApiError::HeadersTooLarge(b) => ApiError::HeadersTooLarge(rewritten(b)),
            ApiError::Internal(b) => ApiError::Internal(rewritten(b)),
            ApiError::BadGateway(b) => ApiError::BadGateway(rewritten(b)),
            ApiError::Unavailable(b) => ApiError::Unavailable(rewritten(b)),
        }
    }
}

impl From<taskfleet_storage::InsertError> for ApiError {
    fn from(err: taskfleet_storage::InsertError) -> ApiError {
        match err {
            taskfleet_storage::InsertError::Db(err) => err.into(),
            conflict @ taskfleet_storage::InsertError::IdempotencyConflict { .. } => {
                ApiError::conflict("idempotency_key_reused", conflict.to_string())
            }
            released @ taskfleet_storage::InsertError::KeyReleased { .. } => {
                ApiError::conflict("idempotency_key_expired", released.to_string())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> ApiError {
        ApiError::from(&err)
    }
}

/// A group commit's error, shared by every request of its batch.
impl From<std::sync::Arc<sqlx::Error>> for ApiError {
    fn from(err: std::sync::Arc<sqlx::Error>) -> ApiError {
        ApiError::from(&*err)
    }
}

impl From<&sqlx::Error> for ApiError {
    fn from(err: &sqlx::Error) -> ApiError {
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => ApiError::Unavailable(body(
                "ledger_unavailable",
                "the job ledger (Postgres) is unavailable; nothing was changed, retry later",
            )),
            other => {
                tracing::error!(err = %other, "ledger query failed");
                ApiError::Internal(body("internal", "the ledger query failed"))
            }
        }
    }
}

/// poem-openapi's messages for a bad job say which type failed but not which field ("Expected
/// input type \"ExecutorRun\", found null"); serde's say "missing field `tool`" or list the
/// valid kinds. So a job body that poem-openapi refused is decoded again with serde, and its
/// message is returned when it has one.
pub fn explain_job_payload(path: &str, body: &[u8]) -> Option<ApiError> {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)] // decoded only for its error message
    struct Batch {
        jobs: Vec<taskfleet_jobs::JobSpec>,
    }
    let error = match path {
        "/v1/jobs" => serde_json::from_slice::<taskfleet_jobs::JobSpec>(body).err()?,
        "/v1/jobs/batch" => serde_json::from_slice::<Batch>(body).err()?,
        _ => return None,
    };
    Some(ApiError::invalid(error.to_string()))
}

/// Turns errors raised by poem and poem-openapi themselves (bad JSON, missing auth, unknown
/// route, oversize body) into the same JSON shape as ours.
pub async fn json_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let message = err.to_string();
    let (status, code, message) = if err.is::<ParseRequestPayloadError>() {
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", message)
    } else if err.is::<AuthorizationError>() {
        (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API key as `Authorization: Bearer <key>`".to_owned(),
        )
    } else {
        let status = err.status();
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return ApiError::UnsupportedMediaType(body(
                "unsupported_media_type",
                format!("{message}: send the body as `Content-Type: application/json`"),
            ))
            .into_response();
        }
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        (status, code, message)
    };
    body(code, message).with_status(status).into_response()
}
