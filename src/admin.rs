//! One admin server for every role, as kubert's is for linkerd's controllers: `/healthz` (the
//! process answers), `/readyz` (the role says whether it is ready, and why not) and `/metrics`
//! (the role's Prometheus exposition), on an address of its own that neither the Service nor
//! the Ingress publishes. Every probe answers at once; none waits on a dependency.

use crate::http;
use async_trait::async_trait;
use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use std::{net::SocketAddr, sync::Arc};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::info;

/// What a role tells its admin server.
#[async_trait]
pub trait AdminRole: Send + Sync + 'static {
    /// The role's name in logs (`controller`, `facade`, `worker`).
    fn name(&self) -> &'static str;
    /// `Ok` with what to say when the role is ready, `Err` with why it is not.
    fn readiness(&self) -> Result<String, String>;
    /// The role's metrics, in Prometheus text format.
    async fn metrics(&self) -> String;
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("binding the {role} admin address {addr}: {source}")]
    Bind {
        /// The role.
        role: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The admin router of `role`.
pub fn router(role: Arc<dyn AdminRole>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(role)
}

async fn readyz(State(role): State<Arc<dyn AdminRole>>) -> Response {
    match role.readiness() {
        Ok(ready) => ready.into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(role): State<Arc<dyn AdminRole>>) -> String {
    role.metrics().await
}

/// Binds `addr` for `role`'s admin server.
pub async fn bind(role: &dyn AdminRole, addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind {
            role: role.name(),
            addr,
            source,
        })
}

/// Serves `role`'s admin router on `listener` until `stop` resolves.
pub fn spawn(
    listener: TcpListener,
    role: Arc<dyn AdminRole>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, role = role.name(), "probes and metrics listening");
    }
    tokio::spawn(http::serve(listener, router(role), stop))
}
