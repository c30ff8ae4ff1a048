//! The status write every step makes (server-side apply, conditional on what the decision was
//! made from) and when a job is looked at again after it.

use super::{context::Context, error::Result, rebase::rebase, status};
use crate::crd::{FIELD_MANAGER, ImageJob, ImageJobStatus};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use std::time::Duration;

/// How long a just-started job waits for its first status write when its workflow shows no
/// progress. Its watch wakes it at its first step (written as Processing, with the step, after
/// the progress window) and at its end (one that ends within the window gets a single write);
/// a workflow still queued for a worker by then is written as Processing, so a job waiting on
/// busy or absent workers is seen started. Under load most jobs wait in Temporal's queue for
/// seconds and then run in well under one: with 2 s here, jobs at 32 in flight got 1.5 status
/// writes each on average (1.0 at 4 in flight).
pub(super) const FIRST_WRITE_AFTER: Duration = Duration::from_secs(10);

/// Writes the status by server-side apply when it changed; returns whether it wrote.
///
/// The write is conditional on the resourceVersion the decision was made from, so it can never
/// land on a job that changed since, such as one a newer leader already finished: on a conflict
/// the job is read again, a job that is terminal by then is left as it is, and on any other
/// what this step decided is carried onto the fresh status ([`rebase`]): a write of ours the
/// cache had not shown yet stays.
pub(super) async fn write_status(
    job: &ImageJob,
    current: &ImageJobStatus,
    desired: &ImageJobStatus,
    ctx: &Context,
) -> Result<bool> {
    if job.status.is_some() && desired == current {
        return Ok(false);
    }
    let api: Api<ImageJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    match apply_status(&api, job, desired).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let Some(fresh) = api.get_opt(&job.name_any()).await? else {
                return Ok(false);
            };
            if fresh.phase().is_terminal() || fresh.uid() != job.uid() {
                return Ok(false);
            }
            let rebased = rebase(current, desired, fresh.status.as_ref());
            apply_status(&api, &fresh, &rebased).await?;
        }
        result => {
            result?;
        }
    }
    ctx.metrics.status_written(&job.uid().unwrap_or_default());
    Ok(true)
}

/// One server-side apply of the status, preconditioned on `seen`'s resourceVersion. (A JSON
/// patch replacing the status costs the apiserver the same, measured apart: see
/// docs/performance.md, "What each request costs".)
async fn apply_status(
    api: &Api<ImageJob>,
    seen: &ImageJob,
    desired: &ImageJobStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": ImageJob::api_version(&()),
        "kind": ImageJob::kind(&()),
        "metadata": {"resourceVersion": seen.resource_version()},
        "status": desired,
    });
    api.patch_status(
        &seen.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

pub(super) fn requeue_for_ttl(job: &ImageJob, status: &ImageJobStatus) -> Action {
    let mut finished = job.clone();
    finished.status = Some(status.clone());
    match status::ttl_deadline(&finished) {
        Some(deadline) => Action::requeue(until(deadline)),
        None => Action::await_change(),
    }
}

pub(super) fn until(deadline: Timestamp) -> Duration {
    let left = deadline.duration_since(Timestamp::now());
    Duration::try_from(left)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100))
}
