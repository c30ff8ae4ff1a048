//! The HTTP/1 server of the facade and of every admin port: axum's router on hyper connections
//! with a deadline for each request's headers, so a client that opens connections and sends nothing, or its headers a
//! byte at a time (slowloris), holds a connection for [`HEADER_READ_TIMEOUT`] at most. axum's
//! own `serve` sets no such deadline, and hyper's protocol-sniffing server (HTTP/1 and 2) has
//! none before the first bytes (hyperium/hyper#3962), so connections are served as HTTP/1 by
//! hyper directly. The facade's request bodies get their deadline from its body middleware.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use std::time::Duration;
use tokio::net::TcpListener;

/// Longest a connection may take to send a request's headers, counted from the moment the
/// server waits for them (a new connection, or an idle kept-alive one).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the requests in progress to be answered (idle connections are closed at once).
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
