//! The worker side of Temporal: the workflow, its activities and their retry policies, and the
//! worker loop.

mod activities;
mod forget;
mod policy;
mod run;
mod workflow;

pub use activities::ImageActivities;
pub use forget::ForgetCatalogImage;
pub use policy::{similarity_search_retry, store_metadata_retry};
pub use run::{WorkerHandle, WorkerTuning, WorkerVersion, spawn_worker};
pub use workflow::{IMAGE_ID_PATCH, ImageProcessingWorkflow, SIMILARITY_QUEUE_PATCH};
