//! imagejob-operator: runs image-processing jobs, declared as `ImageJob` resources, as durable
//! Temporal workflows.

/// Command-line and environment configuration of every role.
pub mod config;
/// Kubernetes controller: one workflow per ImageJob, its state in the ImageJob's status.
pub mod controller;
/// The `ImageJob` custom resource.
pub mod crd;
/// SHA-256 digests in hex.
pub mod digest;
/// REST facade: the seed's endpoints over ImageJobs.
pub mod facade;
/// Fetching a job's image from its untrusted URL: address checks, size, time and pixel limits.
pub mod fetch;
/// The allocator (jemalloc) and its statistics.
pub mod heap;
/// The Kubernetes client, with its requests counted and its writes fenced.
pub mod kube_client;
/// The list (from the apiserver's watch cache, decoded as it arrives) and watch of ImageJobs.
pub mod list_watch;
/// Prometheus metrics shared by the roles.
pub mod metrics;
/// The worker's readiness probe: polling, and Temporal answering.
pub mod probes;
/// The `run` role: worker, controller and facade in one process.
pub mod run;
/// The shutdown signal (SIGINT, SIGTERM) the roles wait on.
pub mod shutdown;
/// Lykdat visual similarity search client.
pub mod similarity;
/// Image metadata stores (embedded file database, Couchbase).
pub mod store;
/// Logging setup.
pub mod telemetry;
/// The Temporal workflow, its activities, the worker and our client gateway.
pub mod temporal;
/// TLS crypto provider selection.
pub mod tls;
