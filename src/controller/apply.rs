//! Apply: start the job's workflow once, mirror its state into the status, wake on its close,
//! delete the job when its TTL after finishing runs out.

use super::{
    cancel,
    context::{Context, workflow_id},
    error::{Error, Result},
    notify, retry, status,
    watches::{Started, Tracking},
    write::{FIRST_WRITE_AFTER, requeue_for_ttl, until, write_status},
};
use crate::{
    crd::{CONDITION_SPEC_APPLIED, ImageJob, ImageJobStatus, Phase},
    temporal::{
        client::{Dispatch, WorkflowSnapshot},
        error::TemporalError,
    },
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use tracing::{info, warn};

/// Re-read interval of a running job whose close is watched (a safety net only).
const WATCHED_RESYNC: Duration = Duration::from_secs(60);
/// Re-read interval of a running job whose close is listed (a safety net only: thousands of
/// jobs queued in a burst are not each read every minute).
const LISTED_RESYNC: Duration = Duration::from_secs(300);
/// Poll interval of a running job when listing closes fails.
const POLLED_RESYNC: Duration = Duration::from_secs(5);

/// When a running job is read again, by how its close reaches it.
fn resync(tracking: Tracking) -> Duration {
    match tracking {
        Tracking::Watched => WATCHED_RESYNC,
        Tracking::Listed => LISTED_RESYNC,
        Tracking::Polled => POLLED_RESYNC,
    }
}
pub(super) async fn apply(job: Arc<ImageJob>, ctx: &Context) -> Result<Action> {
    let uid = job.uid().ok_or(Error::MissingUid)?;
    let id = workflow_id(&job)?;
    if job.retry_pending() {
        return retry::retry(job, ctx).await;
    }
    if job.phase().is_terminal() {
        // A watch may still report the close it saw after the job was finished from a read.
        ctx.watches.forget(&id);
        if let Some(later) = notify::deliver_due(&job, ctx).await? {
            return Ok(later);
        }
        return expire(&job, ctx).await;
    }
    let current = job.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let cancelling = job.spec.cancel_requested();
    if current.run_id.is_none()
        && !ctx.watches.is_tracked(&id)
        && let Err(invalid) = job.spec.validate()
    {
        // Within the schema (an apiserver counts characters), outside the limits in bytes.
        let mut desired = status::invalid_spec(&job, &invalid, &now);
        notify::outbox(&job, &current, &mut desired, ctx);
        if write_status(&job, &current, &desired, ctx).await? {
            announce(&job, &desired, ctx).await;
        }
        ctx.metrics.job_finished(&uid);
        return Ok(requeue_for_ttl(&job, &desired));
    }

    let mut desired = match observe(&job, &id, &current, !cancelling, ctx).await {
        Ok(Observed::JustStarted { run_id, at }) => {
            // The watch (or the list) wakes the job when the workflow ends or progresses;
            // with listing down, the job is simply read again.
            let job_ref = ObjectRef::from_obj(job.as_ref());
            let started = Started {
                run_id,
                at,
                spec_digest: status::spec_digest(&job.spec),
            };
            let tracking = ctx.watches.ensure_started(&id, job_ref, started);
            ctx.backoffs.reset(&uid);
            let first_read = match tracking {
                Tracking::Watched | Tracking::Listed => FIRST_WRITE_AFTER,
                Tracking::Polled => POLLED_RESYNC,
            };
            return Ok(Action::requeue(first_read));
        }
        Ok(Observed::Now(snapshot)) => status::from_snapshot(&job, &id, &snapshot, &now),
        // Started before (a run id is recorded) yet gone: it will not come back.
        Err(TemporalError::NotFound) if current.run_id.is_some() => {
            status::workflow_missing(&job, &id, &now)
        }
        // Cancelled before its workflow started: none will.
        Err(TemporalError::NotFound) if cancelling => {
            status::cancelled_before_start(&job, &id, &now)
        }
        Err(e) if e.is_unavailable() => {
            let desired = status::temporal_unreachable(&job, &id, &e.to_string(), &now);
            if write_status(&job, &current, &desired, ctx).await? {
                ctx.event(
                    &job,
                    EventType::Warning,
                    "TemporalUnavailable",
                    e.to_string(),
                )
                .await;
            }
            return Ok(Action::requeue(ctx.backoffs.next(&uid)));
        }
        Err(e) => return Err(e.into()),
    };
    if current.started_spec_digest.is_none()
        && let Some(digest) = started_digest(&id, &desired, ctx).await
    {
        // The spec may have been edited before this first write: record the one started.
        desired.started_spec_digest = Some(digest);
    }
    let edited = status::check_spec_edits(&job, &mut desired, &now);
    let cancel_check = if cancelling && !desired.phase.is_terminal() {
        Some(cancel::request(&id, &mut desired, &now, ctx).await?)
    } else {
        None
    };
    ctx.backoffs.reset(&uid);
    notify::outbox(&job, &current, &mut desired, ctx);
    if write_status(&job, &current, &desired, ctx).await? {
        if desired.phase != current.phase {
            announce(&job, &desired, ctx).await;
        }
        if edited && !spec_edit_reported(&current) {
            ctx.event(
                &job,
                EventType::Warning,
                "SpecEditedAfterStart",
                "the workflow keeps the spec it started with; create a new ImageJob for the new spec".into(),
            )
            .await;
        }
    }
    if desired.phase.is_terminal() {
        ctx.metrics.job_finished(&uid);
        ctx.watches.forget(&id);
        return Ok(requeue_for_ttl(&job, &desired));
    }
    let resync = resync(ctx.watches.ensure(&id, ObjectRef::from_obj(job.as_ref())));
    Ok(Action::requeue(
        cancel_check.map_or(resync, |c| c.min(resync)),
    ))
}

/// Digest of the spec the job's workflow started with, for its first status write: known to
/// the watch of a workflow this controller started; for one it adopted (started by a controller
/// that stopped before writing), read from the workflow's input in Temporal. `None` (the
/// current spec is taken) when no workflow started, or its input cannot be read.
async fn started_digest(id: &str, desired: &ImageJobStatus, ctx: &Context) -> Option<String> {
    if let Some(digest) = ctx.watches.started_spec_digest(id) {
        return Some(digest);
    }
    desired.run_id.as_ref()?;
    match ctx.gateway.started_input(id).await {
        Ok(input) => Some(status::input_digest(&input)),
        Err(e) => {
            warn!(workflow_id = %id, error = %e, "the workflow's input could not be read: the job's current spec is taken as the one it started with");
            None
        }
    }
}

/// Whether the status already reports a spec edit after start.
fn spec_edit_reported(status: &ImageJobStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SPEC_APPLIED && c.status == "False")
}

/// What [`observe`] found.
enum Observed {
    /// This call started the workflow, as run `run_id` at `at`: nothing to write yet.
    JustStarted {
        /// The new run.
        run_id: String,
        /// When it was started.
        at: SystemTime,
    },
    /// The workflow as it is now.
    Now(Box<WorkflowSnapshot>),
}

/// Starts the job's workflow unless it is known to have started (or `may_start` is false: the
/// job is being cancelled), else reads it; a close a watch (or the list) already saw costs no
/// Temporal call, nor does a search step the list found, nor does the first write of a run
/// this controller started of which nothing more is known (it shows `Processing`, with the run
/// and its start).
async fn observe(
    job: &ImageJob,
    id: &str,
    current: &ImageJobStatus,
    may_start: bool,
    ctx: &Context,
) -> Result<Observed, TemporalError> {
    if let Some(seen) = ctx
        .watches
        .take_closed(id)
        .or_else(|| ctx.watches.take_step(id))
    {
        return Ok(Observed::Now(Box::new(seen)));
    }
    if current.run_id.is_none()
        && let Some((run_id, at)) = ctx.watches.unprogressed_start(id)
    {
        return Ok(Observed::Now(Box::new(WorkflowSnapshot::started(
            run_id, at,
        ))));
    }
    if current.run_id.is_none() && may_start && !ctx.watches.is_tracked(id) {
        let outcome = ctx
            .gateway
            .start_dispatched(id, status::workflow_input(&job.spec), dispatch(job, ctx))
            .await?;
        match outcome.run_id {
            Some(run_id) if !outcome.already_started => {
                info!(workflow_id = %id, %run_id, "workflow started");
                let at = SystemTime::now();
                return Ok(Observed::JustStarted { run_id, at });
            }
            _ => info!(workflow_id = %id, "workflow already started; adopting it"),
        }
    }
    let snapshot = ctx.gateway.snapshot(id).await?;
    Ok(Observed::Now(Box::new(snapshot)))
}

/// How the job's workflow is dispatched: its priority, and its namespace as the fairness key
/// (weighted as configured), so a namespace with a backlog does not hold the others back.
fn dispatch(job: &ImageJob, ctx: &Context) -> Dispatch {
    let namespace = job.namespace().unwrap_or_default();
    Dispatch {
        priority: job.spec.priority.map(u32::from),
        fairness_weight: ctx.settings.fairness_weights.get(&namespace).copied(),
        fairness_key: Some(namespace),
    }
}

async fn announce(job: &ImageJob, status: &ImageJobStatus, ctx: &Context) {
    let error = status.error.clone().unwrap_or_default();
    let (type_, reason, note) = match status.phase {
        Phase::Completed => (
            EventType::Normal,
            "Completed",
            format!(
                "image {} processed",
                status.image_id.clone().unwrap_or_default()
            ),
        ),
        Phase::Failed => (EventType::Warning, "Failed", error),
        Phase::Cancelled => (
            EventType::Normal,
            "Cancelled",
            "workflow cancelled".to_owned(),
        ),
        // The status says it; an event per start would be one more request per job.
        Phase::Processing | Phase::Pending => return,
    };
    info!(name = %job.name_any(), phase = status.phase.as_str(), workflow_id = ?status.workflow_id, "job phase changed");
    ctx.event(job, type_, reason, note).await;
    if let Some(skipped) = status
        .similarity
        .as_ref()
        .and_then(|s| s.skipped_reason.clone())
    {
        ctx.event(job, EventType::Normal, "SimilaritySearchSkipped", skipped)
            .await;
    }
}

/// A finished job: deleted once its TTL ran out, otherwise left alone.
async fn expire(job: &ImageJob, ctx: &Context) -> Result<Action> {
    let Some(deadline) = status::ttl_deadline(job) else {
        return Ok(Action::await_change());
    };
    if deadline > Timestamp::now() {
        return Ok(Action::requeue(until(deadline)));
    }
    info!(name = %job.name_any(), "TTL after finish ran out; deleting the job");
    let api: Api<ImageJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    match api.delete(&job.name_any(), &job.delete_exactly()).await {
        Ok(_) => Ok(Action::await_change()),
        // Gone, or another object under its name now: nothing of this job is left to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
