//! Retry: `spec.retry` raised past `status.observedRetry`. A failed or cancelled job's workflow
//! is resumed from the step that did not finish (Temporal's reset: the steps that completed are
//! not run again), the attempt that ended is recorded in `status.attempts`, and the job follows
//! its new run as it followed the first. Any other job refuses the raise with a `RetryRefused`
//! event. Each raise is acted on once: `observedRetry` records it with the same write.

use super::{
    context::{Context, workflow_id},
    error::Result,
    status,
    watches::Started,
    write::{FIRST_WRITE_AFTER, requeue_for_ttl, write_status},
};
use crate::{
    crd::{
        Attempt, CONDITION_CANCEL_REQUESTED, CONDITION_SUCCEEDED, ImageJob, ImageJobStatus, Phase,
    },
    temporal::error::TemporalError,
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::{controller::Action, events::EventType, reflector::ObjectRef};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use tracing::info;

/// When a running job whose retry was refused is looked at again (its cache then holds the
/// refusal, so it is not refused twice).
const AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// Acts on a raised `spec.retry`: resumes the job's workflow, or refuses.
pub(super) async fn retry(job: Arc<ImageJob>, ctx: &Context) -> Result<Action> {
    let id = workflow_id(&job)?;
    let current = job.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let refusal = match refusal(&job) {
        Some(reason) => Some(reason),
        None => {
            let run_id = current.run_id.clone().unwrap_or_default();
            let request_id = format!("{id}/{run_id}/retry-{}", requested(&job));
            match ctx.gateway.resume(&id, &run_id, &request_id).await {
                Ok(resumed) => {
                    return resume(&job, &id, &current, resumed, now, ctx).await;
                }
                Err(TemporalError::NotFound) => {
                    Some(format!("its workflow {id} no longer exists in Temporal"))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let reason = refusal.unwrap_or_default();
    let mut desired = current.clone();
    desired.observed_retry = Some(requested(&job));
    if write_status(&job, &current, &desired, ctx).await? {
        info!(workflow_id = %id, %reason, "retry refused");
        let note = format!("retry {} refused: {reason}", requested(&job));
        ctx.event(&job, EventType::Warning, "RetryRefused", note)
            .await;
    }
    Ok(if job.phase().is_terminal() {
        requeue_for_ttl(&job, &desired)
    } else {
        Action::requeue(AFTER_REFUSAL)
    })
}

/// The `spec.retry` value asked for.
fn requested(job: &ImageJob) -> u32 {
    job.spec.retry.unwrap_or(0)
}

/// Why the job cannot be retried, if it cannot.
fn refusal(job: &ImageJob) -> Option<String> {
    if !job.retryable() {
        let phase = job.phase().as_str();
        return Some(format!(
            "only a Failed or Cancelled job whose workflow started can be retried; this one is {phase}"
        ));
    }
    job.spec.cancel_requested().then(|| {
        "spec.status is Cancelled: remove it in the same edit that raises spec.retry".to_owned()
    })
}

/// Records the resumed run and follows it as a started one.
async fn resume(
    job: &Arc<ImageJob>,
    id: &str,
    current: &ImageJobStatus,
    run_id: String,
    now: Time,
    ctx: &Context,
) -> Result<Action> {
    let desired = resumed(current, &run_id, requested(job), &now);
    let attempt = desired.attempt();
    info!(workflow_id = %id, %run_id, attempt, "workflow resumed from the step that did not finish");
    if write_status(job, current, &desired, ctx).await? {
        let note = format!("attempt {attempt}: resumed from the step that did not finish");
        ctx.event(job, EventType::Normal, "Retrying", note).await;
    }
    let started = Started {
        run_id,
        at: SystemTime::now(),
        spec_digest: (current.started_spec_digest.clone())
            .unwrap_or_else(|| status::spec_digest(&job.spec)),
    };
    ctx.watches
        .ensure_started(id, ObjectRef::from_obj(job.as_ref()), started);
    ctx.backoffs
        .reset(&job.metadata.uid.clone().unwrap_or_default());
    Ok(Action::requeue(FIRST_WRITE_AFTER))
}

/// The status of a job whose workflow was resumed as run `run_id`: the attempt that ended is
/// recorded, the job is Processing again, with what the steps that completed left (the image id,
/// the stored document); what the resumed step reports is cleared.
pub(super) fn resumed(
    current: &ImageJobStatus,
    run_id: &str,
    retry: u32,
    now: &Time,
) -> ImageJobStatus {
    let ended = Attempt {
        attempt: current.attempt(),
        run_id: current.run_id.clone(),
        start_time: current.start_time.clone(),
        completion_time: current.completion_time.clone(),
        phase: current.phase,
        error: current.error.clone(),
    };
    let mut attempts = current.earlier_attempts().to_vec();
    attempts.push(ended);
    let mut status = ImageJobStatus {
        phase: Phase::Processing,
        run_id: Some(run_id.to_owned()),
        start_time: Some(now.clone()),
        completion_time: None,
        error: None,
        similarity: None,
        similarity_search_completed: false,
        observed_retry: Some(retry),
        attempts: Some(Box::new(attempts)),
        // The new attempt's end is notified anew.
        notifications: None,
        ..current.clone()
    };
    status
        .conditions
        .retain(|c| c.type_ != CONDITION_CANCEL_REQUESTED);
    let message = format!(
        "attempt {}: resumed from the step that did not finish",
        status.attempt()
    );
    status::set_condition(
        &mut status.conditions,
        CONDITION_SUCCEEDED,
        "Unknown",
        "Retrying",
        &message,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ImageJobSpec;

    fn failed_job() -> ImageJob {
        let mut job = ImageJob::new("shirt", ImageJobSpec::default());
        job.status = Some(ImageJobStatus {
            phase: Phase::Failed,
            run_id: Some("run-1".into()),
            image_id: Some("img-1".into()),
            metadata_stored: true,
            error: Some("invalid api key".into()),
            start_time: Some(Time(Timestamp::UNIX_EPOCH)),
            completion_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        });
        job
    }

    #[test]
    fn a_resumed_job_records_the_attempt_that_ended_and_keeps_what_completed() {
        let job = failed_job();
        let now = Time(Timestamp::now());
        let status = resumed(job.status.as_ref().unwrap(), "run-2", 1, &now);
        assert_eq!(status.phase, Phase::Processing);
        assert_eq!(status.run_id.as_deref(), Some("run-2"));
        assert_eq!(status.attempt(), 2);
        let ended = &status.earlier_attempts()[0];
        assert_eq!(
            (ended.attempt, ended.phase, ended.run_id.as_deref()),
            (1, Phase::Failed, Some("run-1"))
        );
        assert_eq!(ended.error.as_deref(), Some("invalid api key"));
        assert_eq!(
            (status.image_id.as_deref(), status.metadata_stored),
            (Some("img-1"), true)
        );
        assert_eq!((&status.error, &status.completion_time), (&None, &None));
        assert_eq!(status.observed_retry, Some(1));
        let succeeded = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SUCCEEDED)
            .unwrap();
        assert_eq!(
            (succeeded.status.as_str(), succeeded.reason.as_str()),
            ("Unknown", "Retrying")
        );
        // A second retry appends.
        let mut again = status.clone();
        again.phase = Phase::Cancelled;
        let third = resumed(&again, "run-3", 2, &now);
        assert_eq!(third.attempt(), 3);
        assert_eq!(third.earlier_attempts()[1].phase, Phase::Cancelled);
    }

    #[test]
    fn only_a_failed_or_cancelled_job_that_ran_may_be_retried() {
        let job = failed_job();
        assert_eq!(refusal(&job), None);
        let mut completed = job.clone();
        completed.status.as_mut().unwrap().phase = Phase::Completed;
        assert!(
            refusal(&completed)
                .unwrap()
                .contains("this one is Completed")
        );
        let mut never_ran = job.clone();
        never_ran.status.as_mut().unwrap().run_id = None;
        assert!(refusal(&never_ran).is_some());
        let mut still_cancelling = job;
        still_cancelling.spec.status = Some(crate::crd::RequestedStatus::Cancelled);
        assert!(refusal(&still_cancelling).unwrap().contains("spec.status"));
    }
}
