//! Why a Temporal call failed, in the terms the controller, the facade and the worker act on;
//! one enum for the connection and every call made over it.

use temporalio_client::tonic::{Code, Status};

/// Why a Temporal call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TemporalError {
    /// Temporal could not be reached or did not answer in time; retrying may help.
    #[error("Temporal unavailable: {0}")]
    Unavailable(String),
    /// The workflow does not exist (Temporal said so about the workflow itself).
    #[error("workflow not found")]
    NotFound,
    /// The configured namespace does not exist: a configuration or server problem, never a
    /// statement about any workflow; retrying after the namespace is fixed or created helps.
    #[error("Temporal namespace not found: {0}")]
    NamespaceNotFound(String),
    /// Temporal refused our credentials (API key, client certificate) or our rights.
    #[error("Temporal refused the credentials: {0}")]
    Unauthorized(String),
    /// The client is misconfigured.
    #[error("Temporal client misconfigured: {0}")]
    Config(String),
    /// Temporal answered with an error.
    #[error("Temporal error: {0}")]
    Rpc(String),
}

impl TemporalError {
    /// Whether the failure is Temporal not being usable as configured (unreachable, its
    /// namespace missing, our credentials refused or unreadable) as opposed to an answer about a
    /// workflow; it is retried with backoff.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            TemporalError::Unavailable(_)
                | TemporalError::NamespaceNotFound(_)
                | TemporalError::Unauthorized(_)
                | TemporalError::Config(_)
        )
    }
}

/// A gRPC NotFound names what is missing in its details (`NamespaceNotFoundFailure` for the
/// namespace, `NotFoundFailure` for an execution); only the second is about the workflow.
pub fn from_not_found(status: &Status) -> TemporalError {
    const NAMESPACE_NOT_FOUND: &[u8] = b"errordetails.v1.NamespaceNotFoundFailure";
    let about_namespace = status
        .details()
        .windows(NAMESPACE_NOT_FOUND.len())
        .any(|w| w == NAMESPACE_NOT_FOUND);
    if about_namespace {
        TemporalError::NamespaceNotFound(status.message().to_owned())
    } else {
        TemporalError::NotFound
    }
}

/// What a gRPC status says: unavailable, refused credentials, not found, or another answer.
pub fn from_status(status: &Status) -> TemporalError {
    match status.code() {
        Code::NotFound => from_not_found(status),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            TemporalError::Unavailable(status.message().to_owned())
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            TemporalError::Unauthorized(format!("{:?}: {}", status.code(), status.message()))
        }
        _ => TemporalError::Rpc(format!("{:?}: {}", status.code(), status.message())),
    }
}
