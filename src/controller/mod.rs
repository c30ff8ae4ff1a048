//! The controller: exactly one Temporal workflow per ImageJob, the workflow's state in the
//! ImageJob's status, cancellation on delete, TTL after finish.
//!
//! Its files, bottom up: [`error`] and the pure [`status`] mapping; the per-job bookkeeping
//! (`backoff`, `watches`, `settled`, the reconcile slots shared by namespace: `fair`) and the
//! [`context`] every reconcile shares; the steps
//! (`claim`, `apply`, `cancel`, `retry`, `notify`, `cleanup`, over the status `write`) and `reconcile`
//! calling them; the cache (`jobs`, `namespaces`, and `stored`, which wakes a job only once it is cached) and one controller `run`; leader election (`leader`) and the `lifecycle` that
//! runs, stops and rebuilds the controller (`compaction`) as leadership and memory require.

mod admin;
mod apply;
mod backoff;
mod cancel;
mod claim;
mod cleanup;
pub mod compaction;
mod context;
mod error;
mod fair;
mod jobs;
mod leader;
mod lifecycle;
mod metrics;
mod namespaces;
mod notify;
mod rebase;
mod reconcile;
mod retry;
mod run;
#[cfg(test)]
mod scenarios;
mod settled;
pub mod status;
mod stored;
mod watches;
mod write;

pub use admin::ControllerAdmin;
pub use context::{Context, Settings, workflow_id};
pub use error::{Error, Result};
pub use jobs::{HeldJobs, Jobs};
pub use leader::{LeaderElector, LeaseSettings, TimingError};
pub use lifecycle::Lifecycle;
pub use metrics::{ControllerMetrics, SharedControllerMetrics};
pub use run::run;
pub use settled::SettledJobs;
