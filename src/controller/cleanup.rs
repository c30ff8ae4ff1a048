//! Cleanup on delete: a running workflow is cancelled (the seed's `cancel` signal, then
//! Temporal's request-cancel if it has not ended after a grace period) before the finalizer
//! goes; one that has not run a single task is terminated at once (nothing of it ran). Finished
//! jobs and workflows that do not exist go at once.
//!
//! Cleanup never waits inside a reconcile: each round sends what is due and returns
//! [`Error::CancelPending`], retried shortly (the workflow's close watch wakes it earlier), so an
//! unreachable Temporal holds no reconcile slot. A job whose workflow cannot be cancelled is
//! released after [`Settings::release_after`](super::Settings::release_after) with a Warning event, or at once when an
//! admin sets the [`RELEASE_ANNOTATION`].

use super::{
    cancel::{self, SIGNAL_GRACE, Stop},
    context::{Context, workflow_id},
    error::{Error, Result},
};
use crate::{
    crd::{ImageJob, RELEASE_ANNOTATION},
    temporal::{
        client::{ExecutionStatus, Unrun},
        error::TemporalError,
    },
};
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use std::{sync::Arc, time::Duration};
use tracing::{info, warn};

/// Next look at a workflow being cancelled (its close watch usually wakes the job first).
const CHECK_AGAIN: Duration = Duration::from_secs(1);

pub(super) async fn cleanup(job: Arc<ImageJob>, ctx: &Context) -> Result<Action> {
    let id = workflow_id(&job)?;
    cancel(&job, &id, ctx).await?;
    forget_catalogued(&job, &id, ctx).await?;
    ctx.forget(&job, &id);
    Ok(Action::await_change())
}

/// Once the workflow has stopped: a job that asked for a search has its image removed from the
/// catalog (durably: a workflow on the similarity queue, which the catalog's owner runs), so no
/// later search returns a match pointing at a job that is gone. Results computed before keep
/// their matches, as they were. Temporal unreachable past the release deadline: released with a
/// Warning event saying the image may stay catalogued.
async fn forget_catalogued(job: &ImageJob, id: &str, ctx: &Context) -> Result<()> {
    if !job.spec.similarity_search {
        return Ok(());
    }
    match ctx.gateway.forget_catalog_image(id).await {
        Ok(()) => {
            info!(name = %job.name_any(), workflow_id = %id, "job deleted; its image leaves the similarity catalog");
            Ok(())
        }
        Err(e) if deleting_for(job, ctx) >= ctx.settings.release_after => {
            let note = format!(
                "the image of workflow {id} could not be removed from the similarity catalog ({e}); released, later searches may still match it"
            );
            warn!(name = %job.name_any(), workflow_id = %id, "{note}");
            ctx.event(job, EventType::Warning, "CatalogRemovalFailed", note)
                .await;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// How long this replica has seen the job being deleted.
fn deleting_for(job: &ImageJob, ctx: &Context) -> Duration {
    ctx.deletions.waited(&job.uid().unwrap_or_default())
}

/// Ok once the finalizer may go; `CancelPending` while the workflow is being cancelled.
async fn cancel(job: &ImageJob, id: &str, ctx: &Context) -> Result<()> {
    if job.phase().is_terminal() {
        return Ok(());
    }
    if job.annotations().contains_key(RELEASE_ANNOTATION) {
        let note = format!(
            "released by the {RELEASE_ANNOTATION} annotation without cancelling workflow {id}; it may still run in Temporal"
        );
        warn!(name = %job.name_any(), workflow_id = %id, "{note}");
        ctx.event(job, EventType::Warning, "ReleasedWithoutCancel", note)
            .await;
        return Ok(());
    }
    let waited = deleting_for(job, ctx);
    if waited >= ctx.settings.release_after {
        let note = format!(
            "workflow {id} could not be cancelled within {:?} of deletion; released, it may still run in Temporal",
            ctx.settings.release_after
        );
        warn!(name = %job.name_any(), workflow_id = %id, "{note}");
        ctx.event(job, EventType::Warning, "CancelTimedOut", note)
            .await;
        return Ok(());
    }
    let stopped = match ctx.watches.take_closed(id) {
        Some(closed) => Ok(Unrun::Ran(closed.execution)),
        None => ctx.gateway.stop_unrun(id).await,
    };
    match stopped {
        Err(TemporalError::NotFound) => return Ok(()),
        Ok(Unrun::Terminated) => {
            info!(name = %job.name_any(), workflow_id = %id, "job deleted before its workflow ran a task; terminated it");
            let note = format!("workflow {id} had not run a task: terminated on delete");
            ctx.event(job, EventType::Normal, "Cancelled", note).await;
            return Ok(());
        }
        Ok(Unrun::Ran(ExecutionStatus::Running)) => {}
        Ok(Unrun::Ran(ExecutionStatus::Cancelled)) => {
            let note = format!("workflow {id} cancelled on delete");
            ctx.event(job, EventType::Normal, "Cancelled", note).await;
            return Ok(());
        }
        Ok(_) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let how = if waited < SIGNAL_GRACE {
        info!(name = %job.name_any(), workflow_id = %id, "job deleted while running; sending the cancel signal");
        Stop::Signal
    } else {
        info!(name = %job.name_any(), workflow_id = %id, "workflow still running after the cancel signal; requesting cancellation");
        Stop::RequestCancel
    };
    cancel::send(ctx, id, how).await?;
    ctx.watches.ensure(id, ObjectRef::from_obj(job));
    Err(Error::CancelPending {
        workflow_id: id.to_owned(),
        retry_in: CHECK_AGAIN,
    })
}
