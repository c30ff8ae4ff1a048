//! The facade's one error type: every failure is a JSON body
//! `{"error": {"code", "message", "field"?}}` with a fitting 4xx/5xx status.

use crate::temporal::contract::ProcessingStatus;
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is invalid.
    #[error("{message}")]
    InvalidField {
        /// The field's path, e.g. `tags[3]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    RequestTimeout(std::time::Duration),
    /// The body is not declared as JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body is larger than the limit.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A query parameter is invalid.
    #[error("invalid query parameter {field}: {message}")]
    InvalidQuery {
        /// The parameter.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such workflow.
    #[error("workflow {0} not found")]
    NotFound(String),
    /// No such route.
    #[error("no route for this path")]
    NoRoute,
    /// The route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No bearer token.
    #[error("missing bearer token")]
    Unauthenticated,
    /// A token that is not accepted.
    #[error("token not accepted")]
    Forbidden,
    /// The Kubernetes apiserver refused or failed.
    #[error("Kubernetes API error: {message}")]
    Kubernetes {
        /// HTTP status to answer with.
        status: StatusCode,
        /// The apiserver's message.
        message: String,
    },
    /// The apiserver refused the facade's own credentials (401/403): the facade is
    /// misconfigured, not the caller unauthorised. Answered 502, so a client (the jobs page)
    /// never takes it for its own token being refused; the apiserver's words (which name the
    /// facade's service account) go to the log only.
    #[error(
        "Kubernetes refused the facade's request: its service account lacks the rights (see the facade's log)"
    )]
    KubernetesForbidden,
    /// An `Idempotency-Key` already used for a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// The job has finished; there is nothing to cancel.
    #[error("workflow {workflow_id} already finished ({status}); nothing to cancel")]
    AlreadyFinished {
        /// The workflow.
        workflow_id: String,
        /// How it ended.
        status: ProcessingStatus,
    },
    /// Only a failed or cancelled job whose workflow started can be retried.
    #[error("workflow {workflow_id} is {status}; only a failed or cancelled job can be retried")]
    NotRetryable {
        /// The workflow.
        workflow_id: String,
        /// Where it stands.
        status: ProcessingStatus,
    },
    /// A dependency (apiserver, Temporal) cannot be reached.
    #[error("{0} unavailable")]
    Unavailable(String),
    /// This replica holds as many of these open as it may (see [`super::Limits`]).
    #[error("too many {0} open on this replica; retry shortly")]
    Busy(&'static str),
    /// The client creates jobs faster than its rate (see [`super::quota`]).
    #[error("too many jobs created by this client; retry after {} s", retry_seconds(*retry_after))]
    RateLimited {
        /// When one more create will be admitted.
        retry_after: std::time::Duration,
    },
    /// The client has as many jobs in flight as it may (see [`super::quota`]).
    #[error("this client has {limit} jobs not finished yet, its limit; retry once some finish")]
    TooManyJobs {
        /// The cap.
        limit: usize,
        /// A guess at when one finishes.
        retry_after: std::time::Duration,
    },
}

/// Whole seconds of a `Retry-After`, rounded up (never 0: "now" would be a busy loop).
fn retry_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// The JSON error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error's details.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_field`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::InvalidQuery { .. } => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Kubernetes { status, .. } => (*status, "kubernetes_error"),
            ApiError::KubernetesForbidden => (StatusCode::BAD_GATEWAY, "kubernetes_forbidden"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::TooManyJobs { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_jobs"),
            ApiError::IdempotencyKeyReused => (StatusCode::CONFLICT, "idempotency_key_reused"),
            ApiError::AlreadyFinished { .. } => (StatusCode::CONFLICT, "already_finished"),
            ApiError::NotRetryable { .. } => (StatusCode::CONFLICT, "not_retryable"),
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::InvalidField { field, .. } | ApiError::InvalidQuery { field, .. } => {
                Some(field.clone())
            }
            ApiError::IdempotencyKeyReused => Some("Idempotency-Key".into()),
            _ => None,
        }
    }

    /// How long the client should wait before trying again, when that is known.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ApiError::Busy(_) => Some(std::time::Duration::from_secs(1)),
            ApiError::RateLimited { retry_after } | ApiError::TooManyJobs { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// An invalid-field error.
    pub fn field_error(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
                tracing::warn!(code = status.code, message = %status.message,
                    "the apiserver refused the facade's request: check its RBAC");
                ApiError::KubernetesForbidden
            }
            kube::Error::Api(status) => {
                let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY);
                // A 5xx of the apiserver is a bad gateway for our client, not our own crash.
                let code = if code.is_server_error() {
                    StatusCode::BAD_GATEWAY
                } else {
                    code
                };
                ApiError::Kubernetes {
                    status: code,
                    message: status.message,
                }
            }
            other => {
                tracing::warn!(error = %other, "apiserver unreachable");
                ApiError::Unavailable("Kubernetes apiserver".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(wait) = self.retry_after() {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_seconds(wait)),
            );
        }
        response
    }
}
