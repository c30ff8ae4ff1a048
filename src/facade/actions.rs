//! What a cancel, a retry and a delete do to one job, for the single and the bulk endpoints
//! alike.

use super::{error::ApiError, state::FacadeState};
use crate::crd::{ImageJob, RequestedStatus};
use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
};

/// Merges `spec` into `job`'s spec on condition that the job did not change since it was read:
/// `None` once merged; on a conflict, the job as it is now (`NotFound` when it is gone, or
/// another job holds its name), for the caller to decide again.
async fn patch_unchanged(
    state: &FacadeState,
    job: &ImageJob,
    workflow_id: &str,
    spec: serde_json::Value,
) -> Result<Option<ImageJob>, ApiError> {
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "spec": spec,
    });
    let params = PatchParams::default();
    match state
        .api
        .patch(&job.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            Err(ApiError::NotFound(workflow_id.to_owned()))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let fresh = state.api.get(&job.name_any()).await?;
            if !fresh.runs(workflow_id) {
                return Err(ApiError::NotFound(workflow_id.to_owned()));
            }
            Ok(Some(fresh))
        }
        Err(e) => Err(e.into()),
    }
}

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
    let cancel = serde_json::json!({"status": RequestedStatus::Cancelled});
    if let Some(fresh) = patch_unchanged(state, job, workflow_id, cancel.clone()).await? {
        if fresh.phase().is_terminal() {
            return Err(finished(&fresh));
        }
        // The uid in the patch is a precondition: never another job under the same name.
        let patch = serde_json::json!({"metadata": {"uid": job.uid()}, "spec": cancel});
        let params = PatchParams::default();
        (state.api)
            .patch(&job.name_any(), &params, &Patch::Merge(&patch))
            .await?;
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
    let next_attempt = |job: &ImageJob| {
        let current = job.status.as_ref().map_or(1, |s| s.attempt());
        current.saturating_add(1)
    };
    if job.retry_pending() {
        return Ok(next_attempt(job));
    }
    if !job.retryable() {
        return Err(not_retryable(job));
    }
    // Conditional on the job not having changed since it was read: a retry acted on in between
    // is not asked for twice.
    let raise =
        serde_json::json!({"retry": job.spec.retry.unwrap_or(0).saturating_add(1), "status": null});
    if let Some(fresh) = patch_unchanged(state, job, workflow_id, raise).await? {
        return match fresh.retry_pending() {
            true => Ok(next_attempt(&fresh)),
            false => Err(not_retryable(&fresh)),
        };
    }
    tracing::info!(name = %job.name_any(), %workflow_id, "retry requested");
    Ok(next_attempt(job))
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
