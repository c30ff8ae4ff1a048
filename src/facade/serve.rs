//! The facade as production runs it: its admin port (probes and metrics), then the API until
//! shutdown, then the drain (see `drain`): not ready, waiting requests answered, new ones
//! served until the drain period ends. The admin port answers until the API has stopped.

use super::{auth::Auth, drain::DrainStart, router::router, state::FacadeState};
use crate::{admin, http, shutdown::Shutdown};
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tracing::info;

/// The ports the facade serves.
pub struct Ports {
    /// The API, the docs and the jobs page.
    pub api: TcpListener,
    /// Probes and metrics.
    pub admin: TcpListener,
}

/// How the facade leaves on shutdown.
pub struct Drain {
    /// Starts the drain the state's `draining` watches.
    pub start: DrainStart,
    /// How long new requests are still served once draining.
    pub period: Duration,
}

/// Serves the facade of `state` on `ports` until `shutdown` and through its drain.
pub async fn serve(
    state: Arc<FacadeState>,
    auth: Auth,
    ports: Ports,
    drain: Drain,
    shutdown: Shutdown,
) {
    let (api_stopped, admin_stop) = tokio::sync::oneshot::channel::<()>();
    let admin = admin::spawn(ports.admin, state.clone(), async move {
        let _ = admin_stop.await;
    });
    if let Ok(addr) = ports.api.local_addr() {
        info!(%addr, namespace = %state.namespace, "facade listening");
    }
    let drained = async move {
        shutdown.wait().await;
        info!(
            period = ?drain.period,
            "draining: not ready, waiting requests answered, new ones served until the drain ends"
        );
        drain.start.start();
        tokio::time::sleep(drain.period).await;
    };
    http::serve(ports.api, router(state, auth), drained).await;
    drop(api_stopped);
    let _ = admin.await;
}
