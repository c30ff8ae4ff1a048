//! The worker side of Temporal: the workflow, its activities and their retry policies, the
//! worker loop and the SDK's worker metrics.

mod activities;
mod policy;
mod run;
mod sdk_metrics;
mod workflow;

pub use activities::ImageActivities;
pub use policy::{similarity_search_retry, store_metadata_retry};
pub use run::{WorkerHandle, WorkerTuning, WorkerVersion, spawn_worker};
pub use sdk_metrics::SdkMetrics;
pub use workflow::ImageProcessingWorkflow;
