//! Cleanup on delete: a running workflow is cancelled (the seed's `cancel` signal, then
//! Temporal's request-cancel if it does not end) before the finalizer goes. Finished jobs and
//! workflows that do not exist go at once.

use super::{Context, Error, Result, workflow_id};
use crate::{
    crd::ImageJob,
    temporal::{ExecutionStatus, GatewayError},
};
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use std::{sync::Arc, time::Duration};
use tracing::info;

/// How long the workflow gets to end after the signal before request-cancel.
const SIGNAL_GRACE: Duration = Duration::from_secs(5);
/// How long the workflow gets to end after request-cancel before the reconcile is retried.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

pub(super) async fn cleanup(job: Arc<ImageJob>, ctx: &Context) -> Result<Action> {
    if job.phase().is_terminal() {
        return Ok(Action::await_change());
    }
    let id = workflow_id(&job)?;
    // Whatever a watch kept for this workflow is of no use any more.
    ctx.watches.take_closed(&id);
    match ctx.gateway.snapshot(&id).await {
        Err(GatewayError::NotFound) => return Ok(Action::await_change()),
        Ok(snapshot) if snapshot.execution != ExecutionStatus::Running => {
            return Ok(Action::await_change());
        }
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    info!(name = %job.name_any(), workflow_id = %id, "job deleted while running; cancelling its workflow");
    if ended_after(ctx.gateway.signal_cancel(&id), &id, SIGNAL_GRACE, ctx).await?
        || ended_after(ctx.gateway.request_cancel(&id), &id, CANCEL_GRACE, ctx).await?
    {
        ctx.event(
            &job,
            EventType::Normal,
            "Cancelled",
            format!("workflow {id} cancelled on delete"),
        )
        .await;
        return Ok(Action::await_change());
    }
    Err(Error::StillRunning(id))
}

/// Sends a cancellation and waits up to `grace` for the workflow to close.
async fn ended_after(
    cancellation: impl Future<Output = Result<(), GatewayError>>,
    id: &str,
    grace: Duration,
    ctx: &Context,
) -> Result<bool> {
    match cancellation.await {
        Ok(()) => {}
        Err(GatewayError::NotFound) => return Ok(true),
        Err(e) => return Err(e.into()),
    }
    match tokio::time::timeout(grace, ctx.gateway.wait_closed(id)).await {
        Ok(Ok(_)) | Ok(Err(GatewayError::NotFound)) => Ok(true),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(false),
    }
}
