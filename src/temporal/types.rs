//! The workflow's contract with its clients: input, state (the `get_status` query) and result.
//! Field names are the seed's, in snake_case JSON.

use crate::similarity::SimilarityResults;
use serde::{Deserialize, Serialize};

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

/// The seed's `status` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
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
