//! What the handlers share: the API and cache of the facade's namespace, Temporal, metrics,
//! limits and quotas.

use super::metrics::FacadeMetrics;
use super::{cache::JobCache, drain::Draining, limits::Limits, quota::CreateQuota};
use crate::{
    crd::ImageJob,
    temporal::{client::WorkflowGateway, codec::PayloadCipher},
};
use kube::Api;
use std::sync::Arc;

/// What the handlers share.
pub struct FacadeState {
    /// ImageJobs in the facade's namespace.
    pub api: Api<ImageJob>,
    /// That namespace.
    pub namespace: String,
    /// The watch cache.
    pub cache: JobCache,
    /// Temporal, for the full results.
    pub gateway: Arc<dyn WorkflowGateway>,
    /// Default of `similarity_search`.
    pub similarity_default: bool,
    /// `ttlSecondsAfterFinished` of the jobs the facade creates (none when `None`).
    pub job_ttl: Option<u32>,
    /// Metrics.
    pub metrics: Arc<FacadeMetrics>,
    /// Base URL of the Temporal UI, for the jobs page's links.
    pub temporal_ui_url: Option<String>,
    /// The Temporal namespace.
    pub temporal_namespace: String,
    /// Payload encryption, when on: served to the Temporal UI as a remote codec.
    pub codec: Option<PayloadCipher>,
    /// Set once the facade is shutting down (see [`Draining`]).
    pub draining: Draining,
    /// Caps on waiting `/result` requests and event streams.
    pub limits: Limits,
    /// Per-client limits on creating jobs.
    pub quota: CreateQuota,
}
