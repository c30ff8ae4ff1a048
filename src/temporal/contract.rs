//! The workflows' contract, what client and worker agree on: names (workflow types, the
//! `get_status` query, the `cancel` signal, task queues, ids), input, state and result. Field
//! names are the seed's, in snake_case JSON.
//!
//! The client calls the workflows through the definitions here; the worker's workflow code
//! (`temporal::worker`) is checked against them by its unit tests, so neither side imports the
//! other.

use crate::similarity::SimilarityResults;
use serde::{Deserialize, Serialize};
use temporalio_common::{
    HasWorkflowDefinition, QueryDefinition, SignalDefinition, WorkflowDefinition,
    search_attributes::SearchAttributeKey,
};

/// Type name of the seed's image processing workflow.
pub const IMAGE_PROCESSING_WORKFLOW: &str = "ImageProcessingWorkflow";
/// Name of the query answering the workflow's [`WorkflowState`].
pub const GET_STATUS_QUERY: &str = "get_status";
/// Name of the seed's cancel signal.
pub const CANCEL_SIGNAL: &str = "cancel";
/// Type name of the workflow removing a deleted job's images from the catalog.
pub const FORGET_CATALOG_IMAGE_WORKFLOW: &str = "ForgetCatalogImage";
/// The search attribute (a Keyword) through which a running workflow shows its step to
/// Temporal's visibility: empty from its start, the stored image's id once its metadata document
/// is stored and its similarity search runs. The controller lists the runs in that step once a
/// second, so a job it does not follow shows the step without a history read. A workflow sets it
/// only when it was started with it (a namespace where the attribute is registered); see
/// `docs/production.md`.
pub const IMAGE_ID_ATTRIBUTE: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("ImageJobImageId");

/// `ImageProcessingWorkflow`, as clients start it: [`ImageProcessingInput`] in,
/// [`ImageProcessingResult`] out.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageProcessing;

impl WorkflowDefinition for ImageProcessing {
    type Input = ImageProcessingInput;
    type Output = ImageProcessingResult;
    fn name(&self) -> &str {
        IMAGE_PROCESSING_WORKFLOW
    }
}

impl HasWorkflowDefinition for ImageProcessing {
    type Run = Self;
}

/// The `get_status` query of [`ImageProcessing`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GetStatus;

impl QueryDefinition for GetStatus {
    type Workflow = ImageProcessing;
    type Input = ();
    type Output = WorkflowState;
    fn name(&self) -> &str {
        GET_STATUS_QUERY
    }
}

/// The `cancel` signal of [`ImageProcessing`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Cancel;

impl SignalDefinition for Cancel {
    type Workflow = ImageProcessing;
    type Input = ();
    fn name(&self) -> &str {
        CANCEL_SIGNAL
    }
}

/// `ForgetCatalogImage`, as the controller starts it: the deleted job's workflow id in, the
/// number of images removed out.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForgetImages;

impl WorkflowDefinition for ForgetImages {
    type Input = String;
    type Output = usize;
    fn name(&self) -> &str {
        FORGET_CATALOG_IMAGE_WORKFLOW
    }
}

impl HasWorkflowDefinition for ForgetImages {
    type Run = Self;
}

/// Input of `ImageProcessingWorkflow`: the seed's POST body plus the similarity switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ImageProcessingInput {
    /// Image URL.
    pub url: String,
    /// Optional title.
    #[serde(default)]
    pub title: Option<String>,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether to run the Lykdat similarity search.
    #[serde(default)]
    pub similarity_search: bool,
}

/// The seed's `status` values: the workflow's state, the REST API's `status` fields and its
/// `?status=` filter all spell them through this type.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProcessingStatus {
    /// Steps are running.
    #[default]
    Processing,
    /// All steps finished.
    Completed,
    /// A step failed after its retries.
    Failed,
    /// The workflow was cancelled (signal or request-cancel).
    Cancelled,
}

impl ProcessingStatus {
    /// The word, as JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingStatus::Processing => "processing",
            ProcessingStatus::Completed => "completed",
            ProcessingStatus::Failed => "failed",
            ProcessingStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ProcessingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The workflow's state, answered by the `get_status` query at any time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WorkflowState {
    /// Id of the image's metadata document, chosen by the workflow.
    pub image_id: Option<String>,
    /// processing, completed, failed or cancelled.
    pub status: ProcessingStatus,
    /// Whether the metadata document was stored.
    pub metadata_stored: bool,
    /// Whether the similarity search ran to completion.
    pub similarity_search_completed: bool,
    /// What went wrong or was skipped, in words.
    pub error: Option<String>,
}

/// Result of a completed workflow: the final state and the similarity results, if any.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ImageProcessingResult {
    /// Final state.
    pub state: WorkflowState,
    /// Similarity results, when the search ran.
    pub similarity: Option<SimilarityResults>,
    /// Why the requested similarity search did not run (no API key configured), when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity_skipped: Option<String>,
}

/// Input of the `store_image_metadata` activity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoreImageMetadataInput {
    /// Id chosen by the workflow (deterministic across retries).
    pub image_id: String,
    /// Id of the calling workflow.
    pub workflow_id: String,
    /// Image URL.
    pub url: String,
    /// Optional title.
    pub title: Option<String>,
    /// Optional description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Creation time fixed by the workflow (RFC 3339).
    pub created_at: String,
}

/// Input of the `run_similarity_search` activity (the seed's parameters).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SimilaritySearchInput {
    /// Image identifier.
    pub image_id: String,
    /// Image URL to search with.
    pub image_url: String,
    /// The job's title, recorded with the image in the catalog (sent since the
    /// `similarity-task-queue` patch; the worker searching may not see the stored document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The calling workflow's id, recorded with the image in the catalog (as `title`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
}

/// Task queue of the similarity search (and of removing a deleted job's image from the catalog),
/// beside the workflow's `task_queue`: served by the workers that can search, so the catalog's
/// owner alone serves it when workflows run on several workers.
pub fn similarity_task_queue(task_queue: &str) -> String {
    format!("{task_queue}-similarity")
}

/// Id of the `ForgetCatalogImage` workflow for the job run by `workflow_id`: one per job.
pub fn forget_workflow_id(workflow_id: &str) -> String {
    format!("forget-{workflow_id}")
}

/// What `run_similarity_search` did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SimilaritySearchOutcome {
    /// The search ran.
    Completed {
        /// Its results.
        results: SimilarityResults,
    },
    /// The search could not run and retrying will not change that (no API key configured).
    Skipped {
        /// Why, in words.
        reason: String,
    },
}
