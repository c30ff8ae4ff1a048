//! Request bodies are read whole, within a size and a time limit, before a handler runs: a
//! client that declares a body and sends it slowly (or never) gets `408` after
//! [`BODY_READ_TIMEOUT`] instead of holding a connection and a task, and one larger than the
//! route's limit gets `413`; both as JSON errors.

use super::error::ApiError;
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::LengthLimitError;
use std::time::Duration;

/// Longest a request's body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of a group of routes.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Longest a body may take to arrive.
    pub timeout: Duration,
}

impl BodyLimits {
    /// At most `max_bytes`, within [`BODY_READ_TIMEOUT`].
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            timeout: BODY_READ_TIMEOUT,
        }
    }
}

/// Middleware: reads the body within the limits, then hands the request on with it in memory.
pub async fn read_within(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, limits.max_bytes);
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_too_large(&e) => {
            return ApiError::PayloadTooLarge(limits.max_bytes).into_response();
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a request body failed");
            return closing(ApiError::MalformedJson(
                "the request body could not be read".into(),
            ));
        }
        Err(_) => return closing(ApiError::RequestTimeout(limits.timeout)),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn is_too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The error's answer, closing the connection: what is left of the body is not worth reading.
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
