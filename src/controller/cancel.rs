//! Cancel without delete: a job whose spec says `status: Cancelled` gets the seed's `cancel`
//! signal, then Temporal's request-cancel if its workflow has not stopped within
//! [`SIGNAL_GRACE`]; a workflow that has not run a single task (queued, perhaps behind
//! thousands) is terminated at once instead, as nothing of it ran (see
//! [`WorkflowGateway::stop_unrun`](crate::temporal::client::WorkflowGateway::stop_unrun)); the workflow's close (seen by its watch) ends the job `Cancelled` with the
//! final state, and the ImageJob stays. The `CancelRequested` condition records what was sent
//! and when, so a new leader carries on where the old one stopped.

use super::{context::Context, error::Result, status};
use crate::{
    crd::ImageJobStatus,
    temporal::{client::Unrun, error::TemporalError},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use std::time::Duration;
use tracing::info;

/// How long the `cancel` signal alone is given before Temporal's request-cancel.
pub(super) const SIGNAL_GRACE: Duration = Duration::from_secs(5);
/// Next look at a workflow asked to stop (its close watch usually wakes the job first).
const CHECK_AGAIN: Duration = Duration::from_secs(5);
/// `CancelRequested` reasons.
const SIGNALLED: &str = "Signalled";
const REQUEST_CANCELLED: &str = "RequestCancelled";
const TERMINATED_UNRUN: &str = "TerminatedBeforeRun";
/// Next look at a workflow terminated before it ran (its watch or the list usually wakes the
/// job first).
const TERMINATED_CHECK: Duration = Duration::from_secs(1);

/// How a running workflow is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// The seed's `cancel` signal: the workflow cancels its running step and ends cancelled.
    Signal,
    /// Temporal's request-cancel, for a workflow that did not act on the signal.
    RequestCancel,
}

/// Asks the workflow to stop; a workflow that no longer exists needs nothing.
pub(super) async fn send(ctx: &Context, workflow_id: &str, how: Stop) -> Result<()> {
    let sent = match how {
        Stop::Signal => ctx.gateway.signal_cancel(workflow_id).await,
        Stop::RequestCancel => ctx.gateway.request_cancel(workflow_id).await,
    };
    match sent {
        Ok(()) | Err(TemporalError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// For a job asked to cancel whose workflow still runs: sends what is due and records it in
/// `desired`; returns when to look again.
pub(super) async fn request(
    workflow_id: &str,
    desired: &mut ImageJobStatus,
    now: &Time,
    ctx: &Context,
) -> Result<Duration> {
    let Some(signalled) = status::cancel_signalled_at(desired) else {
        if let Ok(Unrun::Terminated) = ctx.gateway.stop_unrun(workflow_id).await {
            info!(%workflow_id, "cancel requested by spec.status before the workflow ran a task; terminated it");
            let message = "the workflow had not run a single task: terminated, nothing to clean up";
            status::mark_cancel_requested(desired, TERMINATED_UNRUN, message, now);
            return Ok(TERMINATED_CHECK);
        }
        info!(%workflow_id, "cancel requested by spec.status; sending the cancel signal");
        send(ctx, workflow_id, Stop::Signal).await?;
        let message = "cancel signal sent; waiting for the workflow to stop";
        status::mark_cancel_requested(desired, SIGNALLED, message, now);
        return Ok(SIGNAL_GRACE);
    };
    let waited = Duration::try_from(Timestamp::now().duration_since(signalled)).unwrap_or_default();
    if waited < SIGNAL_GRACE {
        return Ok(SIGNAL_GRACE - waited);
    }
    let escalated = desired
        .conditions
        .iter()
        .any(|c| c.reason == REQUEST_CANCELLED || c.reason == TERMINATED_UNRUN);
    if !escalated {
        info!(%workflow_id, "workflow still running after the cancel signal; requesting cancellation");
        send(ctx, workflow_id, Stop::RequestCancel).await?;
        let message =
            "the workflow did not stop on the cancel signal; cancellation requested from Temporal";
        status::mark_cancel_requested(desired, REQUEST_CANCELLED, message, now);
    }
    Ok(CHECK_AGAIN)
}
