//! Everything Temporal, in two sides: [`client`] (connection, gateway, codec: what the
//! controller and the facade use) and [`worker`] (the workflow, its activities and the worker
//! loop), sharing the workflow's contract ([`types`]: its input, state and result).
//!
//! The client names the workflow through its definition (`ImageProcessingWorkflow`, its
//! `cancel` signal and `get_status` query), which the SDK generates from the workflow code.

pub mod client;
mod sdk_metrics;
mod types;
pub mod worker;

pub use client::{
    CREDENTIALS_RECHECK, CodecError, CredentialsFingerprint, ExecutionStatus, GatewayError,
    PayloadCipher, StartOutcome, TemporalGateway, TemporalSettings, TimelineEntry, WorkflowGateway,
    WorkflowSnapshot, connect,
};
pub use sdk_metrics::SdkMetrics;
pub use types::{
    ImageProcessingInput, ImageProcessingResult, ProcessingStatus, SimilaritySearchOutcome,
    WorkflowState, forget_workflow_id, similarity_task_queue,
};
pub use worker::{
    ForgetCatalogImage, ImageActivities, ImageProcessingWorkflow, SIMILARITY_QUEUE_PATCH,
    WorkerHandle, WorkerTuning, WorkerVersion, similarity_search_retry, spawn_worker,
    store_metadata_retry,
};
