//! What a cancel and a delete do to one job, for the single and the bulk endpoints alike.

use super::{error::ApiError, state::FacadeState};
use crate::crd::{ImageJob, RequestedStatus};
use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
};

/// Cancels `job` and keeps its record: `spec.status: Cancelled`, which the controller turns
/// into the seed's `cancel` signal. A finished job is refused with how it ended.
pub async fn cancel(
    state: &FacadeState,
    job: &ImageJob,
    workflow_id: &str,
) -> Result<(), ApiError> {
    let finished = |job: &ImageJob| ApiError::AlreadyFinished {
        workflow_id: workflow_id.to_owned(),
        status: job.phase().processing_status(),
    };
    if job.phase().is_terminal() {
        return Err(finished(job));
    }
    // Conditional on the job not having changed since it was read, so a job that finished in
    // between is told as finished, not silently marked.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "spec": {"status": RequestedStatus::Cancelled},
    });
    let patched = state
        .api
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    match patched {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(ApiError::NotFound(workflow_id.to_owned()));
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let fresh = state.api.get(&job.name_any()).await?;
            if !fresh.runs(workflow_id) {
                return Err(ApiError::NotFound(workflow_id.to_owned()));
            }
            if fresh.phase().is_terminal() {
                return Err(finished(&fresh));
            }
            // The uid in the patch is a precondition: never another job under the same name.
            let patch = serde_json::json!({
                "metadata": {"uid": job.uid()},
                "spec": {"status": RequestedStatus::Cancelled},
            });
            state
                .api
                .patch(
                    &job.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(name = %job.name_any(), %workflow_id, "cancel requested");
    Ok(())
}

/// Asks for `job` to be retried: raises `spec.retry` (and clears a `spec.status: Cancelled`) on
/// a failed or cancelled job; returns the number of the attempt the retry starts. A retry
/// already asked for and not yet acted on is not asked again.
pub async fn retry(
    state: &FacadeState,
    job: &ImageJob,
    workflow_id: &str,
) -> Result<u32, ApiError> {
    let not_retryable = |job: &ImageJob| ApiError::NotRetryable {
        workflow_id: workflow_id.to_owned(),
        status: job.phase().processing_status(),
    };
    let attempt = |job: &ImageJob| job.status.as_ref().map_or(1, |s| s.attempt());
    if job.retry_pending() {
        return Ok(attempt(job).saturating_add(1));
    }
    if !job.retryable() {
        return Err(not_retryable(job));
    }
    // Conditional on the job not having changed since it was read: a retry acted on in between
    // is not asked for twice.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "spec": {"retry": job.spec.retry.unwrap_or(0).saturating_add(1), "status": null},
    });
    let patched = state
        .api
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    match patched {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(ApiError::NotFound(workflow_id.to_owned()));
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let fresh = state.api.get(&job.name_any()).await?;
            if !fresh.runs(workflow_id) {
                return Err(ApiError::NotFound(workflow_id.to_owned()));
            }
            if fresh.retry_pending() {
                return Ok(attempt(&fresh).saturating_add(1));
            }
            return Err(not_retryable(&fresh));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(name = %job.name_any(), %workflow_id, "retry requested");
    Ok(attempt(job).saturating_add(1))
}

/// Deletes `job`; the controller cancels its running workflow first. Its status and result
/// stay readable from Temporal.
pub async fn delete(
    state: &FacadeState,
    job: &ImageJob,
    workflow_id: &str,
) -> Result<(), ApiError> {
    match state
        .api
        .delete(&job.name_any(), &job.delete_exactly())
        .await
    {
        Ok(_) => {}
        // Gone, or a job of another workflow under its name now.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            return Err(ApiError::NotFound(workflow_id.to_owned()));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(name = %job.name_any(), %workflow_id, "delete requested");
    Ok(())
}
