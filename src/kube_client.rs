//! The Kubernetes client of the roles, with every request counted by verb in the metrics
//! (`imagejob_apiserver_requests_total`), so "apiserver requests per job" can be measured, and
//! every write checked against a [`WriteFence`] right before it is sent.

use crate::metrics::KubeMetrics;
use kube::{
    Client, Config,
    client::{Body, ClientBuilder},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{filter::FilterLayer, util::MapRequestLayer};

/// Until when this process may write to the apiserver. A leader-elected controller opens it
/// until its renew deadline on every successful Lease renewal; the client refuses every write
/// (anything but GET/LIST/WATCH, and Lease calls) while it is closed. The check reads the
/// monotonic clock synchronously before the request leaves, so a process that was paused past
/// its deadline cannot send a single write when it wakes.
#[derive(Clone, Debug)]
pub struct WriteFence(Arc<Mutex<FenceState>>);

#[derive(Clone, Copy, Debug)]
enum FenceState {
    Open,
    Until(Instant),
    Closed,
}

impl WriteFence {
    /// Always open: a process that does not take part in leader election.
    pub fn open() -> Self {
        Self(Arc::new(Mutex::new(FenceState::Open)))
    }

    /// Closed until [`WriteFence::open_until`].
    pub fn closed() -> Self {
        Self(Arc::new(Mutex::new(FenceState::Closed)))
    }

    fn set(&self, state: FenceState) {
        if let Ok(mut s) = self.0.lock() {
            *s = state;
        }
    }

    /// Open until `deadline`.
    pub fn open_until(&self, deadline: Instant) {
        self.set(FenceState::Until(deadline));
    }

    /// Closed from now on.
    pub fn close(&self) {
        self.set(FenceState::Closed);
    }

    /// How long it stays open (zero when closed).
    pub fn remaining(&self) -> Duration {
        match self.0.lock().map(|s| *s) {
            Ok(FenceState::Open) => Duration::MAX,
            Ok(FenceState::Until(deadline)) => deadline.saturating_duration_since(Instant::now()),
            Ok(FenceState::Closed) | Err(_) => Duration::ZERO,
        }
    }

    /// Whether writes may be sent now.
    pub fn is_open(&self) -> bool {
        !self.remaining().is_zero()
    }
}

/// A write refused by a closed [`WriteFence`].
#[derive(Debug, thiserror::Error)]
#[error("write refused: this replica is not the leader (its lease renew deadline passed)")]
pub struct Fenced;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No kubeconfig or in-cluster configuration was found or it is invalid.
    #[error("Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// The verb label of a request: the HTTP method, or `WATCH` for a watch.
fn verb(request: &http::Request<Body>) -> &'static str {
    let watching = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
    match (request.method().as_str(), watching) {
        ("GET", true) => "WATCH",
        ("GET", false) => "GET",
        ("POST", _) => "POST",
        ("PUT", _) => "PUT",
        ("PATCH", _) => "PATCH",
        ("DELETE", _) => "DELETE",
        _ => "OTHER",
    }
}

/// The resource label of a request.
fn resource(request: &http::Request<Body>) -> &'static str {
    let path = request.uri().path();
    ["imagejobs", "events", "leases"]
        .into_iter()
        .find(|r| path.split('/').any(|segment| segment == *r))
        .unwrap_or("other")
}

/// Whether a request may pass a closed fence: reads, and the Lease calls of the election.
fn passes_closed_fence(request: &http::Request<Body>) -> bool {
    matches!(verb(request), "GET" | "WATCH")
        || request
            .uri()
            .path()
            .starts_with("/apis/coordination.k8s.io/")
}

/// A client from the kubeconfig or the in-cluster configuration, counting the requests it
/// sends and refusing writes while `fence` is closed.
pub async fn counted(metrics: KubeMetrics, fence: WriteFence) -> Result<Client, ClientError> {
    let config = Config::infer().await?;
    let counter = metrics.clone();
    let count = MapRequestLayer::new(move |request: http::Request<Body>| {
        counter.apiserver_request(verb(&request), resource(&request));
        request
    });
    let guard = FilterLayer::new(move |request: http::Request<Body>| {
        if passes_closed_fence(&request) || fence.is_open() {
            Ok(request)
        } else {
            metrics.write_fenced();
            Err(Fenced)
        }
    });
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&guard)
        .build())
}
