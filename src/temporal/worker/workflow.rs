//! `ImageProcessingWorkflow`: store metadata, optionally run the similarity search, keep a state
//! readable by the `get_status` query, honour the `cancel` signal and Temporal's request-cancel.
//! Workflow code only: no I/O, clock or randomness but the context's.

use super::{
    activities::{SearchActivities, StoreActivities},
    policy::{similarity_search_options, store_metadata_options},
};
use crate::temporal::contract::{
    IMAGE_ID_ATTRIBUTE, ImageProcessingInput, ImageProcessingResult, ProcessingStatus,
    SimilaritySearchInput, SimilaritySearchOutcome, StoreImageMetadataInput, WorkflowState,
    similarity_task_queue,
};
use futures::future::FusedFuture;
use std::pin::pin;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflows::select;
use temporalio_sdk::{
    ActivityExecutionError, ApplicationFailure, SyncWorkflowContext, WorkflowCancellationToken,
    WorkflowContext, WorkflowContextView, WorkflowResult, WorkflowTermination,
};

/// Patch: the search runs on the similarity task queue (served by the workers able to search:
/// the catalog's owner) and its input carries the job's title and workflow id. Workflows
/// started before it run the search on their own task queue.
pub const SIMILARITY_QUEUE_PATCH: &str = "similarity-task-queue";
/// Patch: a workflow started with [`IMAGE_ID_ATTRIBUTE`] sets it to the stored image's id as
/// its similarity search begins. A history from before it (a run an older worker took past its
/// store) replays without the upsert.
pub const IMAGE_ID_PATCH: &str = "image-id-search-attribute";

/// The seed's image processing workflow.
#[workflow]
#[derive(Default)]
pub struct ImageProcessingWorkflow {
    state: WorkflowState,
    similarity: Option<crate::similarity::SimilarityResults>,
    similarity_skipped: Option<String>,
    cancel_requested: bool,
}

#[workflow_methods]
impl ImageProcessingWorkflow {
    /// Runs the steps and returns the final state with the similarity results.
    #[run(name = "ImageProcessingWorkflow")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: ImageProcessingInput,
    ) -> WorkflowResult<ImageProcessingResult> {
        let image_id = ctx.uuid4();
        // Cancels the running step; a child of the workflow's own cancellation token, so
        // request-cancel reaches the steps too.
        let steps = ctx.cancellation_token().child_token();
        ctx.state_mut(|w| w.state.image_id = Some(image_id.clone()));
        let created_at = ctx
            .workflow_time()
            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
            .unwrap_or_default();

        let store_input = StoreImageMetadataInput {
            image_id: image_id.clone(),
            workflow_id: ctx.workflow_id().to_owned(),
            url: input.url.clone(),
            title: input.title.clone(),
            description: input.description.clone(),
            tags: input.tags.clone(),
            created_at,
        };
        if cancel_requested(ctx) {
            return Err(cancelled(ctx));
        }
        let store = ctx.execute_activity(
            StoreActivities::store_image_metadata,
            store_input,
            store_metadata_options(steps.clone()),
        );
        let stored = guarded(ctx, &steps, store).await;
        if let Err(e) = stored {
            return Err(step_failed(ctx, &e));
        }
        ctx.state_mut(|w| w.state.metadata_stored = true);
        // A cancellation that arrived while the document was being written ends the workflow
        // here, with the document reported as stored.
        if cancel_requested(ctx) {
            return Err(cancelled(ctx));
        }

        if input.similarity_search {
            show_search_step(ctx, &image_id);
            let mut search_input = SimilaritySearchInput {
                image_id,
                image_url: input.url,
                title: None,
                workflow_id: None,
            };
            let mut options = similarity_search_options(steps.clone());
            if ctx.patched(SIMILARITY_QUEUE_PATCH) {
                options.task_queue = Some(similarity_task_queue(ctx.task_queue()));
                search_input.title = input.title.clone();
                search_input.workflow_id = Some(ctx.workflow_id().to_owned());
            }
            let search = ctx.execute_activity(
                SearchActivities::run_similarity_search,
                search_input,
                options,
            );
            let searched = guarded(ctx, &steps, search).await;
            match searched {
                Ok(SimilaritySearchOutcome::Completed { results }) => ctx.state_mut(|w| {
                    w.state.similarity_search_completed = true;
                    w.similarity = Some(results);
                }),
                // A skip is not an error: the job succeeded; the result says why no search ran.
                Ok(SimilaritySearchOutcome::Skipped { reason }) => {
                    ctx.state_mut(|w| w.similarity_skipped = Some(reason))
                }
                Err(e) => return Err(step_failed(ctx, &e)),
            }
        }

        Ok(ctx.state_mut(|w| {
            w.state.status = ProcessingStatus::Completed;
            ImageProcessingResult {
                state: w.state.clone(),
                similarity: w.similarity.clone(),
                similarity_skipped: w.similarity_skipped.clone(),
            }
        }))
    }

    /// The seed's state query.
    #[query(name = "get_status")]
    pub fn get_status(&self, _ctx: &WorkflowContextView) -> WorkflowState {
        self.state.clone()
    }

    /// The seed's cancellation signal: cancels the running step and ends the workflow as
    /// cancelled.
    #[signal(name = "cancel")]
    pub fn cancel(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _input: ()) {
        self.cancel_requested = true;
    }
}

/// Shows the similarity search step to Temporal's visibility: the stored image's id in
/// [`IMAGE_ID_ATTRIBUTE`], when the workflow was started with that attribute (so it is
/// registered in the namespace) and runs past [`IMAGE_ID_PATCH`].
fn show_search_step(ctx: &WorkflowContext<ImageProcessingWorkflow>, image_id: &str) {
    if ctx.search_attributes().contains_key(&IMAGE_ID_ATTRIBUTE) && ctx.patched(IMAGE_ID_PATCH) {
        ctx.upsert_search_attributes([IMAGE_ID_ATTRIBUTE.value_set(image_id.to_owned())]);
    }
}

/// Whether the `cancel` signal or a request-cancel arrived.
fn cancel_requested(ctx: &WorkflowContext<ImageProcessingWorkflow>) -> bool {
    ctx.state(|w| w.cancel_requested) || ctx.cancellation_token().is_cancelled()
}

/// Runs a step until it ends or the `cancel` signal arrives; then cancels the step (it resolves
/// as cancelled at once) and returns its outcome.
async fn guarded<T>(
    ctx: &WorkflowContext<ImageProcessingWorkflow>,
    steps: &WorkflowCancellationToken,
    step: impl FusedFuture<Output = Result<T, ActivityExecutionError>>,
) -> Result<T, ActivityExecutionError> {
    let mut step = pin!(step);
    let signalled = ctx.wait_condition(|w| w.cancel_requested);
    let mut signalled = pin!(signalled);
    select! {
        outcome = step.as_mut() => return outcome,
        _ = signalled.as_mut() => {}
    };
    steps.cancel_with_reason("cancel signal");
    step.await
}

/// Ends the workflow as Temporal-cancelled, with the final state as details.
fn cancelled(ctx: &WorkflowContext<ImageProcessingWorkflow>) -> WorkflowTermination {
    let state = ctx.state_mut(|w| {
        w.state.status = ProcessingStatus::Cancelled;
        w.state
            .error
            .get_or_insert_with(|| "workflow cancelled".to_owned());
        w.state.clone()
    });
    WorkflowTermination::cancelled_with_details(state)
}

/// Ends the workflow after a step failed: cancelled when the step was cancelled, otherwise
/// failed with the step's error and the final state as details.
fn step_failed(
    ctx: &WorkflowContext<ImageProcessingWorkflow>,
    error: &ActivityExecutionError,
) -> WorkflowTermination {
    if matches!(error, ActivityExecutionError::Cancelled(_)) {
        return cancelled(ctx);
    }
    let message = root_message(error);
    let state = ctx.state_mut(|w| {
        w.state.status = ProcessingStatus::Failed;
        w.state.error = Some(message.clone());
        w.state.clone()
    });
    WorkflowTermination::failed_application(
        ApplicationFailure::builder(message)
            .details(state)
            .non_retryable(true)
            .build(),
    )
}

/// The innermost failure message: the activity's own error, not the wrapper's.
fn root_message(error: &ActivityExecutionError) -> String {
    let mut message = error
        .failure()
        .map(|f| f.message.clone())
        .unwrap_or_else(|| error.to_string());
    let mut cause = error.cause();
    while let Some(inner) = cause {
        let text = &inner.failure().message;
        if !text.is_empty() {
            message = text.clone();
        }
        cause = inner.cause();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::contract::{
        CANCEL_SIGNAL, FORGET_CATALOG_IMAGE_WORKFLOW, GET_STATUS_QUERY, IMAGE_PROCESSING_WORKFLOW,
    };
    use crate::temporal::worker::ForgetCatalogImage;
    use temporalio_common::{QueryDefinition, SignalDefinition, WorkflowDefinition};

    /// The contract's definitions are what clients call; the workflow code must answer to the
    /// same names with the same types (the types are checked by these functions' bounds).
    fn workflow<W>(definition: W) -> String
    where
        W: WorkflowDefinition<Input = ImageProcessingInput, Output = ImageProcessingResult>,
    {
        definition.name().to_owned()
    }

    fn query<Q: QueryDefinition<Input = (), Output = WorkflowState>>(definition: Q) -> String {
        definition.name().to_owned()
    }

    fn signal<S: SignalDefinition<Input = ()>>(definition: S) -> String {
        definition.name().to_owned()
    }

    fn forget<W: WorkflowDefinition<Input = String, Output = usize>>(definition: W) -> String {
        definition.name().to_owned()
    }

    #[test]
    fn the_workflow_code_answers_to_the_contracts_names_and_types() {
        assert_eq!(
            workflow(ImageProcessingWorkflow::run),
            IMAGE_PROCESSING_WORKFLOW
        );
        assert_eq!(query(ImageProcessingWorkflow::get_status), GET_STATUS_QUERY);
        assert_eq!(signal(ImageProcessingWorkflow::cancel), CANCEL_SIGNAL);
        assert_eq!(
            forget(ForgetCatalogImage::run),
            FORGET_CATALOG_IMAGE_WORKFLOW
        );
    }
}
