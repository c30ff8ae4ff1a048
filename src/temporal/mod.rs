//! Everything Temporal: the workflow and activities (run by the worker), the worker process, and
//! the gateway the controller and facade use to start, read and cancel workflows.

mod activities;
mod codec;
mod connection;
mod gateway;
mod history;
mod policy;
mod sdk_metrics;
mod types;
mod worker;
mod workflow;

pub use activities::ImageActivities;
pub use codec::{CodecError, PayloadCipher};
pub use connection::{CREDENTIALS_RECHECK, CredentialsFingerprint, TemporalSettings, connect};
pub use gateway::{
    ExecutionStatus, GatewayError, StartOutcome, TemporalGateway, WorkflowGateway, WorkflowSnapshot,
};
pub use history::TimelineEntry;
pub use policy::{similarity_search_retry, store_metadata_retry};
pub use sdk_metrics::SdkMetrics;
pub use types::{
    ImageProcessingInput, ImageProcessingResult, ProcessingStatus, SimilaritySearchOutcome,
    WorkflowState,
};
pub use worker::{WorkerHandle, WorkerTuning, spawn_worker};
pub use workflow::ImageProcessingWorkflow;
