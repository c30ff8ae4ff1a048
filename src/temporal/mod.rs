//! Everything Temporal: the workflow and activities (run by the worker), the worker process, and
//! the gateway the controller and facade use to start, read and cancel workflows.

mod activities;
mod gateway;
mod history;
mod policy;
mod types;
mod worker;
mod workflow;

pub use activities::ImageActivities;
pub use gateway::{
    ExecutionStatus, GatewayError, StartOutcome, TemporalGateway, WorkflowGateway, WorkflowSnapshot,
};
pub use history::TimelineEntry;
pub use policy::{similarity_search_retry, store_metadata_retry};
pub use types::{
    ImageProcessingInput, ImageProcessingResult, ProcessingStatus, SimilaritySearchOutcome,
    WorkflowState,
};
pub use worker::{WorkerHandle, spawn_worker};
pub use workflow::ImageProcessingWorkflow;

use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions};
use url::Url;

/// This process in Temporal's histories, its usual `pid@host` form (the host is the pod name
/// in a cluster), so a workflow's history names the very pod that ran each task.
fn identity() -> String {
    format!("{}@{}", std::process::id(), crate::config::hostname())
}

/// Where the Temporal server is and which queue we use (the seed's `TEMPORAL_*` variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemporalSettings {
    /// Server host name (`TEMPORAL_HOST`).
    pub host: String,
    /// gRPC port (`TEMPORAL_PORT`).
    pub port: u16,
    /// Namespace (`TEMPORAL_NAMESPACE`).
    pub namespace: String,
    /// Task queue (`TEMPORAL_TASK_QUEUE`).
    pub task_queue: String,
}

impl TemporalSettings {
    /// The server's gRPC URL.
    pub fn url(&self) -> Result<Url, url::ParseError> {
        Url::parse(&format!("http://{}:{}", self.host, self.port))
    }
}

/// Connects a client to the configured server and namespace.
pub async fn connect(settings: &TemporalSettings) -> Result<Client, GatewayError> {
    let url = settings
        .url()
        .map_err(|e| GatewayError::Config(format!("bad Temporal address: {e}")))?;
    let options = ConnectionOptions::new(url)
        .identity(identity())
        .connect_timeout(std::time::Duration::from_secs(5))
        .build();
    let connection = Connection::connect(options)
        .await
        .map_err(|e| GatewayError::Unavailable(format!("{e:#}")))?;
    Client::new(
        connection,
        ClientOptions::new(settings.namespace.clone()).build(),
    )
    .map_err(|e| GatewayError::Config(format!("{e:#}")))
}
