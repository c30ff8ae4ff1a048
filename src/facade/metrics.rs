//! The facade's metrics: responses by status class and `/result` requests waiting, beside the
//! Kubernetes client's counts and the process's figures.

use crate::metrics::{Exposition, KubeMetrics};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

/// Label of facade responses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// Status class, e.g. `2xx`.
    pub class: String,
}

/// Everything the facade exports.
pub struct FacadeMetrics {
    /// The registry and `/metrics` text.
    pub exposition: Exposition,
    /// The Kubernetes client's counts.
    pub kube: KubeMetrics,
    /// Responses, by status class.
    pub http_requests: Family<ClassLabel, Counter>,
    /// `GET .../result` requests in flight (each may wait for its job to finish).
    pub result_waiters: Gauge,
}

impl Default for FacadeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FacadeMetrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut exposition = Exposition::new();
        let kube = KubeMetrics::register(exposition.registry());
        let mut metrics = Self {
            kube,
            http_requests: Family::default(),
            result_waiters: Gauge::default(),
            exposition,
        };
        let registry = metrics.exposition.registry();
        registry.register(
            "facade_result_waiters",
            "Facade GET .../result requests in flight, each waiting up to its timeout for the job to finish",
            metrics.result_waiters.clone(),
        );
        registry.register(
            "http_requests",
            "Facade requests, by status class",
            metrics.http_requests.clone(),
        );
        metrics
    }

    /// Counts a response.
    pub fn http_response(&self, status: u16) {
        self.http_requests
            .get_or_create(&ClassLabel {
                class: format!("{}xx", status / 100),
            })
            .inc();
    }
}
