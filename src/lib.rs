//! imagejob-operator: runs image-processing jobs, declared as `ImageJob` resources, as durable
//! Temporal workflows.
//!
//! *The seed* is the clothing app's design this crate implements: its names, payloads, retry
//! policies and `TEMPORAL_*` variables are our contract (docs/resource.md, "The workflow
//! contract"). "The seed's X" in these docs means X as that design defines it.
//!
//! The layers of the modules, bottom up, are drawn in docs/architecture.md and checked by
//! tests/layers.rs.

/// One admin server (probes and metrics) for every role.
pub mod admin;
/// Command-line and environment configuration of every role.
pub mod config;
/// Kubernetes controller: one workflow per ImageJob, its state in the ImageJob's status.
pub mod controller;
/// The `ImageJob` custom resource.
pub mod crd;
/// SHA-256 digests and HMAC-SHA256 signatures in hex.
pub mod digest;
/// REST facade: the seed's endpoints over ImageJobs.
pub mod facade;
/// Fetching a job's image from its untrusted URL: address checks, size, time and pixel limits.
pub mod fetch;
/// Fakes of the apiserver and of Temporal for scenario tests.
#[cfg(test)]
mod fixtures;
/// The allocator (jemalloc) and its statistics.
pub mod heap;
/// This process's host name.
pub mod host;
/// The HTTP/1 server of the facade and the admin ports, with a header deadline.
pub mod http;
/// The Kubernetes client, with its requests counted and its writes fenced.
pub mod kube_client;
/// The list (from the apiserver's watch cache, decoded as it arrives) and watch of ImageJobs.
pub mod list_watch;
/// What every role's metrics share: registry, process figures, apiserver requests, the SDK's.
pub mod metrics;
/// Completion notifications: a job's end as a signed CloudEvent to the configured sinks.
pub mod notify;
/// The worker's admin role: ready while polling and Temporal answers; its metrics.
pub mod probes;
/// The composition root: each role built from its configuration.
pub mod run;
/// The shutdown signal (SIGINT, SIGTERM) the roles wait on.
pub mod shutdown;
/// Similarity search: Lykdat's hosted API, or our own catalog and image model.
pub mod similarity;
/// Image metadata stores (embedded file database, Couchbase).
pub mod store;
/// Logging setup.
pub mod telemetry;
/// Temporal: the workflows' contract, the connection, the client side and the worker side.
pub mod temporal;
/// TLS crypto provider selection.
pub mod tls;
