//! Why a reconcile failed; every failure is retried with backoff.

use crate::temporal::error::TemporalError;
use std::time::Duration;

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Temporal call failed.
    #[error(transparent)]
    Temporal(#[from] TemporalError),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object has no uid (not from the apiserver).
    #[error("object has no uid")]
    MissingUid,
    /// A cancelled workflow has not closed yet; deletion waits and looks again in `retry_in`.
    #[error("workflow {workflow_id} has not closed after cancellation yet")]
    CancelPending {
        /// The workflow being cancelled.
        workflow_id: String,
        /// When to look again.
        retry_in: Duration,
    },
}

impl Error {
    /// Whether the error says the ImageJob no longer exists (a 404 from the apiserver).
    pub(super) fn is_object_gone(&self) -> bool {
        use kube::runtime::finalizer::Error as FinalizerError;
        let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        match self {
            Error::Kube(e) => gone(e),
            Error::Finalizer(e) => match e.as_ref() {
                FinalizerError::RemoveFinalizer(e) => gone(e),
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    inner.is_object_gone()
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Every [`Error::kind`], so each error series is exported (at 0) before the first error.
    pub const KINDS: &'static [&'static str] = &[
        "kube",
        "temporal",
        "finalizer",
        "missing_uid",
        "cancel_pending",
    ];

    /// The error's kind, a label of the reconcile error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Temporal(_) => "temporal",
            Error::Finalizer(_) => "finalizer",
            Error::MissingUid => "missing_uid",
            Error::CancelPending { .. } => "cancel_pending",
        }
    }
}

/// Result of controller operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
