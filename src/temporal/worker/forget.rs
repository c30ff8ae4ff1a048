//! `ForgetCatalogImage`: removes a deleted job's images from the catalog, on the similarity task
//! queue (so the catalog's owner runs it). The controller starts one per deleted job that asked
//! for a search; Temporal keeps it until the owner has done it, whatever restarts meanwhile.

use super::{activities::SearchActivities, policy::forget_catalog_image_options};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowResult, WorkflowTermination};

/// Removes the images of the job run by the workflow named in its input from the catalog.
#[workflow]
#[derive(Default)]
pub struct ForgetCatalogImage;

#[workflow_methods]
impl ForgetCatalogImage {
    /// Runs `forget_catalog_image` and returns how many images went.
    #[run(name = "ForgetCatalogImage")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        workflow_id: String,
    ) -> WorkflowResult<usize> {
        ctx.execute_activity(
            SearchActivities::forget_catalog_image,
            workflow_id,
            forget_catalog_image_options(),
        )
        .await
        .map_err(WorkflowTermination::from)
    }
}
