//! What every role's metrics share: one registry (prefix `imagejob`), the process's heap and
//! runtime figures, the apiserver requests the Kubernetes client counts, and the Temporal SDK's
//! own metrics relayed beside them. Each role registers its own in the same registry
//! (`controller::ControllerMetrics`, `facade::FacadeMetrics`); the worker has only these.

use crate::{heap::ProcessGauges, temporal::sdk_metrics::SdkMetrics};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use std::sync::OnceLock;

/// A role's registry and what it answers on `/metrics`.
pub struct Exposition {
    registry: Registry,
    heap: ProcessGauges,
    /// The Temporal SDK's exporter this process's client connections record into.
    sdk: OnceLock<SdkMetrics>,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    /// A registry with the process's figures registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("imagejob");
        let heap = ProcessGauges::register(&mut registry);
        Self {
            registry,
            heap,
            sdk: OnceLock::new(),
        }
    }

    /// The registry, for a role's metrics to register in while they are built.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Serves `sdk`'s figures (the process's Temporal requests, a worker's task figures) with
    /// these in [`Self::text`].
    pub fn relay_sdk(&self, sdk: SdkMetrics) {
        let _ = self.sdk.set(sdk);
    }

    /// The registry's own figures, without the SDK's.
    pub fn encode(&self) -> String {
        self.heap.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// What `/metrics` answers: the relayed Temporal SDK figures, then the registry's.
    pub async fn text(&self) -> String {
        let mut out = match self.sdk.get() {
            Some(sdk) => sdk.scrape().await,
            None => String::new(),
        };
        out.push_str(&self.encode());
        out
    }
}

/// Labels of apiserver requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// Request verb.
    pub verb: String,
    /// Resource: `imagejobs`, `events`, `leases` or `other`.
    pub resource: String,
}

/// What the Kubernetes client counts, in the controller and the facade alike.
#[derive(Clone, Debug)]
pub struct KubeMetrics {
    /// Requests made to the apiserver, by verb and resource.
    pub apiserver_requests: Family<RequestLabel, Counter>,
    /// Writes refused because this replica was not (or no longer) the leader.
    pub fenced_writes: Counter,
}

impl KubeMetrics {
    /// The client's metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            apiserver_requests: Family::default(),
            fenced_writes: Counter::default(),
        };
        registry.register(
            "fenced_writes",
            "Apiserver writes refused because this replica was not the leader",
            metrics.fenced_writes.clone(),
        );
        registry.register(
            "apiserver_requests",
            "Requests to the apiserver, by verb",
            metrics.apiserver_requests.clone(),
        );
        metrics
    }

    /// Counts a request.
    pub fn apiserver_request(&self, verb: &str, resource: &str) {
        self.apiserver_requests
            .get_or_create(&RequestLabel {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// Counts a write the fence refused.
    pub fn write_fenced(&self) {
        self.fenced_writes.inc();
    }
}
