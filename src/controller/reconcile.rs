//! One reconcile: claim the job (finalizer), then apply (start, follow, finish) or clean up
//! (cancel, release); failures are retried with per-job backoff.

use super::{
    apply, claim, cleanup,
    context::{Context, workflow_id},
    error::{Error, Result},
    fair::{Admission, Slot},
};
use crate::crd::{FINALIZER, ImageJob};
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, instrument, warn};

/// Next look at a job waiting for its turn, should its wake be lost (it is woken when its turn
/// comes).
const QUEUED_RECHECK: Duration = Duration::from_secs(300);

#[instrument(skip_all, fields(namespace = ?job.namespace(), name = %job.name_any()))]
pub(super) async fn reconcile(job: Arc<ImageJob>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = job.namespace().unwrap_or_default();
    let _turn = match turn(&job, &ctx).await {
        Admission::Go(turn) => turn,
        // Woken when its turn comes; looked at again anyway after a while.
        Admission::Queued => return Ok(Action::requeue(QUEUED_RECHECK)),
        // The controller is stopping.
        Admission::Closed => return Ok(Action::await_change()),
    };
    if !ctx.fence.is_open() {
        // No longer the leader: touch nothing (the controller is being stopped).
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let api: Api<ImageJob> = Api::namespaced(ctx.client.clone(), &namespace);
    // A job that is already finished without our finalizer (restored from a backup, say) has
    // no workflow to cancel: it gets none, so a start over many such jobs writes nothing; unless
    // it is to be retried (its workflow runs again).
    let settled = job.phase().is_terminal()
        && job.metadata.deletion_timestamp.is_none()
        && !job.finalizers().iter().any(|f| f == FINALIZER)
        && !job.retry_pending();
    let result = if settled {
        apply::apply(job, &ctx).await
    } else {
        async {
            // A new job gets the finalizer here and goes on as the patch returned it.
            let job = claim::claimed(&api, job).await?;
            finalizer(&api, FINALIZER, job, |event| async {
                match event {
                    Finalizer::Apply(job) => apply::apply(job, &ctx).await,
                    Finalizer::Cleanup(job) => cleanup::cleanup(job, &ctx).await,
                }
            })
            .await
            .map_err(|e| Error::Finalizer(Box::new(e)))
        }
        .await
    };
    ctx.metrics.reconcile_took(started.elapsed());
    ctx.metrics.set_tracked_jobs(ctx.tracked());
    result
}

/// What a reconcile holds while it runs: a reconcile slot, or, for a finished job with nothing
/// left but notifications to deliver, a delivery permit, so sinks slow to answer never hold the
/// slots the other jobs need.
/// Both are held for their drop, which frees them.
struct Turn {
    _slot: Option<Slot>,
    _delivery: Option<OwnedSemaphorePermit>,
}

/// The job's turn: a delivery permit (waited for), or a reconcile slot when one is free and no
/// other namespace's turn comes first, else its place in line.
async fn turn(job: &ImageJob, ctx: &Context) -> Admission<Turn> {
    let only_delivers = job.phase().is_terminal()
        && job.notification_pending()
        && !job.retry_pending()
        && job.metadata.deletion_timestamp.is_none();
    if only_delivers {
        return match ctx.deliveries.clone().acquire_owned().await {
            Ok(permit) => Admission::Go(Turn {
                _slot: None,
                _delivery: Some(permit),
            }),
            Err(_) => Admission::Closed,
        };
    }
    let admission = ctx.slots.admit(&ObjectRef::from_obj(job));
    admission.map(|slot| Turn {
        _slot: Some(slot),
        _delivery: None,
    })
}

pub(super) fn error_policy(job: Arc<ImageJob>, error: &Error, ctx: Arc<Context>) -> Action {
    use kube::runtime::finalizer::Error as FinalizerError;
    ctx.metrics.reconcile_failed(error.kind());
    let uid = job.uid().unwrap_or_default();
    let delay = match error {
        _ if error.is_object_gone() => {
            // Deleted under our feet: nothing to retry, nothing to remember.
            if let Ok(id) = workflow_id(&job) {
                ctx.forget(&job, &id);
            }
            ctx.metrics.set_tracked_jobs(ctx.tracked());
            return Action::await_change();
        }
        Error::Finalizer(e) => match e.as_ref() {
            FinalizerError::CleanupFailed(Error::CancelPending { retry_in, .. }) => {
                // Not a failure: the workflow is being cancelled; look again shortly.
                info!(namespace = ?job.namespace(), name = %job.name_any(), retry_in = ?retry_in,
                    "waiting for the workflow to close after cancellation");
                return Action::requeue(*retry_in);
            }
            _ => ctx.backoffs.next(&uid),
        },
        _ => ctx.backoffs.next(&uid),
    };
    warn!(namespace = ?job.namespace(), name = %job.name_any(), error = %error, retry_in = ?delay,
        "reconcile failed");
    Action::requeue(delay)
}
