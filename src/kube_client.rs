//! The Kubernetes client of the roles, with every request counted by verb in the metrics
//! (`imagejob_apiserver_requests_total`), so "apiserver requests per job" can be measured.

use crate::metrics::SharedMetrics;
use kube::{
    Client, Config,
    client::{Body, ClientBuilder},
};
use tower::util::MapRequestLayer;

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

/// A client from the kubeconfig or the in-cluster configuration, counting its requests.
pub async fn counted(metrics: SharedMetrics) -> Result<Client, ClientError> {
    let config = Config::infer().await?;
    let count = MapRequestLayer::new(move |request: http::Request<Body>| {
        metrics.apiserver_request(verb(&request));
        request
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
}
