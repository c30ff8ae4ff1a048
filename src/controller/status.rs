//! Pure decisions: a job and what Temporal says of its workflow -> the job's status. No client
//! required; unit-tested below.

use crate::{
    crd::{
        CONDITION_CANCEL_REQUESTED, CONDITION_SPEC_APPLIED, CONDITION_SUCCEEDED,
        CONDITION_TEMPORAL_REACHABLE, ImageJob, ImageJobSpec, ImageJobStatus, InvalidField, Phase,
        SimilarMatch, SimilaritySummary,
    },
    digest::sha256_hex,
    similarity::SimilarityResults,
    temporal::{
        client::{ExecutionStatus, WorkflowSnapshot},
        contract::ImageProcessingInput,
    },
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use std::time::SystemTime;

/// How many matches the status keeps.
const TOP_MATCHES: usize = 5;

/// The workflow input for a job's spec.
pub fn workflow_input(spec: &ImageJobSpec) -> ImageProcessingInput {
    ImageProcessingInput {
        url: spec.url.clone(),
        title: spec.title.clone(),
        description: spec.description.clone(),
        tags: spec.tags.clone(),
        similarity_search: spec.similarity_search,
    }
}

/// Digest of the spec fields a workflow is started with (its input): a later spec with another
/// digest was edited after start.
pub fn spec_digest(spec: &ImageJobSpec) -> String {
    input_digest(&workflow_input(spec))
}

/// Digest of a workflow's input: [`spec_digest`] of the spec it was made from.
pub fn input_digest(input: &ImageProcessingInput) -> String {
    let input = serde_json::to_vec(input).unwrap_or_default();
    sha256_hex(&input)[..16].to_owned()
}

fn time(t: SystemTime) -> Option<Time> {
    Timestamp::try_from(t).ok().map(Time)
}

/// The status for a job whose workflow Temporal described as `snapshot`.
pub fn from_snapshot(
    job: &ImageJob,
    workflow_id: &str,
    snapshot: &WorkflowSnapshot,
    now: &Time,
) -> ImageJobStatus {
    let mut status = base(job, workflow_id);
    // A run's start does not move: the time first recorded for it stays (the controller's own
    // clock when it started the run; Temporal's differs by milliseconds), so reading the same
    // run again never rewrites the status for it.
    let same_run = status.run_id.is_some() && status.run_id == snapshot.run_id;
    status.run_id = snapshot.run_id.clone().or(status.run_id);
    if !(same_run && status.start_time.is_some()) {
        status.start_time = snapshot.start_time.and_then(time).or(status.start_time);
    }
    status.phase = Phase::from(snapshot.execution.processing_status());
    if status.phase.is_terminal() {
        status.completion_time = snapshot
            .close_time
            .and_then(time)
            .or_else(|| Some(now.clone()));
    }
    if let Some(state) = &snapshot.state {
        status.image_id = state.image_id.clone().or(status.image_id);
        status.metadata_stored = state.metadata_stored;
        status.similarity_search_completed = state.similarity_search_completed;
        status.error = state.error.clone();
    }
    if status.error.is_none() {
        status.error = snapshot.failure.clone();
    }
    if let Some(results) = &snapshot.similarity {
        status.similarity = Some(Box::new(summarize(results)));
    }
    if let Some(reason) = &snapshot.similarity_skipped {
        status.similarity = Some(Box::new(SimilaritySummary {
            summary: "skipped".into(),
            skipped_reason: Some(reason.clone()),
            ..Default::default()
        }));
    }
    let (value, reason, message) = succeeded_condition(snapshot.execution, status.error.as_deref());
    set_condition(
        &mut status.conditions,
        CONDITION_SUCCEEDED,
        value,
        reason,
        &message,
        now,
    );
    set_condition(
        &mut status.conditions,
        CONDITION_TEMPORAL_REACHABLE,
        "True",
        "Connected",
        "Temporal answered",
        now,
    );
    status
}

/// The status for a job whose workflow could not be reached: the condition says so, the rest
/// is kept.
pub fn temporal_unreachable(
    job: &ImageJob,
    workflow_id: &str,
    error: &str,
    now: &Time,
) -> ImageJobStatus {
    let mut status = base(job, workflow_id);
    let message = format!("cannot reach Temporal: {error}");
    set_condition(
        &mut status.conditions,
        CONDITION_TEMPORAL_REACHABLE,
        "False",
        "TemporalUnavailable",
        &message,
        now,
    );
    if !status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SUCCEEDED)
    {
        set_condition(
            &mut status.conditions,
            CONDITION_SUCCEEDED,
            "Unknown",
            "Pending",
            "waiting for Temporal",
            now,
        );
    }
    status
}

/// The status for a job whose recorded workflow no longer exists in Temporal (its retention ran
/// out, or Temporal's data was lost): Failed, saying so.
pub fn workflow_missing(job: &ImageJob, workflow_id: &str, now: &Time) -> ImageJobStatus {
    let message = format!("workflow {workflow_id} no longer exists in Temporal");
    failed(base(job, workflow_id), "WorkflowNotFound", message, now)
}

fn base(job: &ImageJob, workflow_id: &str) -> ImageJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    status.workflow_id = Some(workflow_id.to_owned());
    status.observed_generation = job.metadata.generation;
    // Until the workflow started, it will start with the current spec.
    if status.run_id.is_none() || status.started_spec_digest.is_none() {
        status.started_spec_digest = Some(spec_digest(&job.spec));
    }
    status
}

/// Reports an edit of the spec after the workflow started: `SpecApplied` False (the workflow
/// keeps the spec it started with), True again once the edit is undone. Returns whether the
/// spec now differs from the started one.
pub fn check_spec_edits(job: &ImageJob, status: &mut ImageJobStatus, now: &Time) -> bool {
    let Some(started) = status.started_spec_digest.as_deref() else {
        return false;
    };
    let edited = started != spec_digest(&job.spec);
    let reported = status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SPEC_APPLIED);
    if edited {
        let message = format!(
            "the spec was edited after the workflow started (now generation {}); the workflow keeps the spec it started with: create a new ImageJob to process the new one",
            job.metadata.generation.unwrap_or_default()
        );
        set_condition(
            &mut status.conditions,
            CONDITION_SPEC_APPLIED,
            "False",
            "EditedAfterStart",
            &message,
            now,
        );
    } else if reported {
        set_condition(
            &mut status.conditions,
            CONDITION_SPEC_APPLIED,
            "True",
            "AsStarted",
            "the spec is the one the workflow started with",
            now,
        );
    }
    edited
}

/// When the controller sent the `cancel` signal for `spec.status: Cancelled`, if it did.
pub fn cancel_signalled_at(status: &ImageJobStatus) -> Option<Timestamp> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_CANCEL_REQUESTED && c.status == "True")
        .map(|c| c.last_transition_time.0)
}

/// Records that the controller asked the workflow to stop; `how` says by which means.
pub fn mark_cancel_requested(status: &mut ImageJobStatus, how: &str, message: &str, now: &Time) {
    set_condition(
        &mut status.conditions,
        CONDITION_CANCEL_REQUESTED,
        "True",
        how,
        message,
        now,
    );
}

/// The status of a job cancelled (`spec.status: Cancelled`) before its workflow started: no
/// workflow will run.
pub fn cancelled_before_start(job: &ImageJob, workflow_id: &str, now: &Time) -> ImageJobStatus {
    let mut status = base(job, workflow_id);
    status.phase = Phase::Cancelled;
    status.completion_time.get_or_insert_with(|| now.clone());
    set_condition(
        &mut status.conditions,
        CONDITION_SUCCEEDED,
        "False",
        "Cancelled",
        "cancelled before its workflow started",
        now,
    );
    status
}

/// The status of a job whose spec is outside the CRD's limits (see
/// [`crate::crd::ImageJobSpec::validate`]): failed before any workflow started, none will.
pub fn invalid_spec(job: &ImageJob, invalid: &InvalidField, now: &Time) -> ImageJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    status.observed_generation = job.metadata.generation;
    let message = format!("spec.{}: {}", invalid.field, invalid.message);
    failed(status, "InvalidSpec", message, now)
}

/// `status` ended Failed for `reason`, `message` saying why (in `error` and the condition).
fn failed(mut status: ImageJobStatus, reason: &str, message: String, now: &Time) -> ImageJobStatus {
    status.phase = Phase::Failed;
    status.completion_time.get_or_insert_with(|| now.clone());
    set_condition(
        &mut status.conditions,
        CONDITION_SUCCEEDED,
        "False",
        reason,
        &message,
        now,
    );
    status.error = Some(message);
    status
}

fn succeeded_condition(
    execution: ExecutionStatus,
    error: Option<&str>,
) -> (&'static str, &'static str, String) {
    let error = error.unwrap_or_default().to_owned();
    match execution {
        ExecutionStatus::Running => ("Unknown", "Processing", "workflow running".into()),
        ExecutionStatus::Completed => ("True", "Completed", "workflow completed".into()),
        ExecutionStatus::Failed => ("False", "Failed", error),
        ExecutionStatus::Terminated => ("False", "Terminated", error),
        ExecutionStatus::TimedOut => ("False", "TimedOut", error),
        ExecutionStatus::Cancelled => ("False", "Cancelled", "workflow cancelled".into()),
    }
}

/// Sets a condition; `lastTransitionTime` only moves when its status changes.
pub(super) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    let transition = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: transition,
        observed_generation: None,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// The status's short similarity summary.
pub fn summarize(results: &SimilarityResults) -> SimilaritySummary {
    let summary = match results.products.first() {
        Some(best) => format!("{} matches, best {:.2}", results.products.len(), best.score),
        None => "no matches".to_owned(),
    };
    SimilaritySummary {
        summary,
        skipped_reason: None,
        total_matches: u32::try_from(results.products.len()).unwrap_or(u32::MAX),
        top_matches: results
            .products
            .iter()
            .take(TOP_MATCHES)
            .map(|p| SimilarMatch {
                name: p.name.clone(),
                brand: p.brand_name.clone(),
                url: p.url.clone(),
                score: format!("{:.3}", p.score),
            })
            .collect(),
    }
}

/// When a finished job is due for deletion, if it has a TTL.
pub fn ttl_deadline(job: &ImageJob) -> Option<Timestamp> {
    let ttl = job.spec.ttl_seconds_after_finished?;
    let finished = job.status.as_ref()?.completion_time.as_ref()?.0;
    finished
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(ttl))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        similarity::SimilarProduct,
        temporal::contract::{ProcessingStatus, WorkflowState},
    };
    use std::time::Duration;

    fn job() -> ImageJob {
        let mut job = ImageJob::new(
            "a",
            ImageJobSpec {
                url: "https://x/a.jpg".into(),
                ..Default::default()
            },
        );
        job.metadata.generation = Some(1);
        job
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn snapshot(execution: ExecutionStatus) -> WorkflowSnapshot {
        WorkflowSnapshot {
            run_id: Some("run".into()),
            execution,
            start_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_799_999_990)),
            close_time: None,
            state: Some(WorkflowState {
                image_id: Some("img".into()),
                status: ProcessingStatus::Processing,
                metadata_stored: false,
                similarity_search_completed: false,
                error: None,
            }),
            similarity: None,
            similarity_skipped: None,
            failure: None,
        }
    }

    fn condition<'a>(s: &'a ImageJobStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn running_workflow_is_processing_with_unknown_condition() {
        let s = from_snapshot(&job(), "wf", &snapshot(ExecutionStatus::Running), &now());
        assert_eq!(s.phase, Phase::Processing);
        assert_eq!(s.workflow_id.as_deref(), Some("wf"));
        assert_eq!(s.run_id.as_deref(), Some("run"));
        assert_eq!(s.image_id.as_deref(), Some("img"));
        assert_eq!(s.observed_generation, Some(1));
        assert!(s.start_time.is_some());
        assert!(s.completion_time.is_none());
        assert_eq!(condition(&s, CONDITION_SUCCEEDED).status, "Unknown");
    }

    #[test]
    fn the_same_run_read_again_keeps_the_start_first_recorded() {
        let mut job = job();
        let first = from_snapshot(&job, "wf", &snapshot(ExecutionStatus::Running), &now());
        job.status = Some(first.clone());
        let mut later = snapshot(ExecutionStatus::Running);
        later.start_time = later
            .start_time
            .map(|t| t + std::time::Duration::from_millis(7));
        let again = from_snapshot(&job, "wf", &later, &now());
        assert_eq!(again.start_time, first.start_time);
        assert_eq!(again, first, "nothing to write");
    }

    #[test]
    fn same_observation_twice_gives_equal_status_so_nothing_is_written() {
        let mut j = job();
        let first = from_snapshot(&j, "wf", &snapshot(ExecutionStatus::Running), &now());
        j.status = Some(first.clone());
        let later = Time(Timestamp::from_second(1_800_000_100).unwrap());
        let second = from_snapshot(&j, "wf", &snapshot(ExecutionStatus::Running), &later);
        assert_eq!(first, second);
    }

    #[test]
    fn completed_workflow_sets_every_field() {
        let mut snap = snapshot(ExecutionStatus::Completed);
        snap.close_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        snap.state = Some(WorkflowState {
            image_id: Some("img".into()),
            status: ProcessingStatus::Completed,
            metadata_stored: true,
            similarity_search_completed: true,
            error: None,
        });
        snap.similarity = Some(SimilarityResults {
            query_image: None,
            products: (0..7)
                .map(|i| SimilarProduct {
                    name: format!("p{i}"),
                    score: 0.9 - f64::from(i) * 0.1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        let s = from_snapshot(&job(), "wf", &snap, &now());
        assert_eq!(s.phase, Phase::Completed);
        assert!(s.metadata_stored && s.similarity_search_completed);
        assert!(s.completion_time.is_some());
        let sim = s.similarity.clone().unwrap();
        assert_eq!(sim.total_matches, 7);
        assert_eq!(sim.top_matches.len(), 5);
        assert_eq!(sim.top_matches[0].score, "0.900");
        assert_eq!(sim.summary, "7 matches, best 0.90");
        let c = condition(&s, CONDITION_SUCCEEDED).clone();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Completed")
        );
    }

    #[test]
    fn a_skipped_search_is_a_success_with_the_reason_in_the_similarity_part() {
        let mut snap = snapshot(ExecutionStatus::Completed);
        snap.similarity_skipped = Some("no key".into());
        let s = from_snapshot(&job(), "wf", &snap, &now());
        assert_eq!(s.phase, Phase::Completed);
        assert_eq!(s.error, None);
        let sim = s.similarity.unwrap();
        assert_eq!(sim.summary, "skipped");
        assert_eq!(sim.skipped_reason.as_deref(), Some("no key"));
    }

    #[test]
    fn terminated_outside_our_control_is_failed_with_a_reason() {
        let mut snap = snapshot(ExecutionStatus::Terminated);
        snap.state = None;
        snap.failure = Some("workflow terminated outside the operator".into());
        let s = from_snapshot(&job(), "wf", &snap, &now());
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(
            s.error.as_deref(),
            Some("workflow terminated outside the operator")
        );
        let c = condition(&s, CONDITION_SUCCEEDED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Terminated")
        );
    }

    #[test]
    fn unreachable_temporal_keeps_the_phase_and_says_why() {
        let s = temporal_unreachable(&job(), "wf", "connection refused", &now());
        assert_eq!(s.phase, Phase::Pending);
        let c = condition(&s, CONDITION_TEMPORAL_REACHABLE);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "TemporalUnavailable")
        );
        assert!(c.message.contains("connection refused"));
        assert_eq!(condition(&s, CONDITION_SUCCEEDED).status, "Unknown");
    }

    #[test]
    fn a_vanished_workflow_fails_the_job_with_a_reason() {
        let mut j = job();
        j.status = Some(ImageJobStatus {
            phase: Phase::Processing,
            run_id: Some("r".into()),
            ..Default::default()
        });
        let s = workflow_missing(&j, "wf", &now());
        assert_eq!(s.phase, Phase::Failed);
        assert!(
            s.error
                .as_deref()
                .unwrap_or_default()
                .contains("no longer exists")
        );
        let c = condition(&s, CONDITION_SUCCEEDED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "WorkflowNotFound")
        );
    }

    #[test]
    fn ttl_deadline_counts_from_completion() {
        let mut j = job();
        assert_eq!(ttl_deadline(&j), None);
        j.spec.ttl_seconds_after_finished = Some(30);
        j.status = Some(ImageJobStatus {
            completion_time: Some(now()),
            ..Default::default()
        });
        assert_eq!(ttl_deadline(&j).unwrap().as_second(), 1_800_000_030);
    }

    #[test]
    fn a_spec_over_its_byte_limits_fails_before_any_workflow_with_the_field_named() {
        let mut job = job();
        job.spec.title = Some("\u{1F455}".repeat(65));
        let invalid = job.spec.validate().expect_err("260 bytes of title");
        let status = invalid_spec(&job, &invalid, &now());
        assert_eq!(status.phase, Phase::Failed);
        assert_eq!(
            status.error.as_deref(),
            Some("spec.title: title longer than 256 bytes")
        );
        assert_eq!(status.workflow_id, None, "no workflow was started");
        let succeeded = (status.conditions.iter())
            .find(|c| c.type_ == CONDITION_SUCCEEDED)
            .expect("Succeeded condition");
        assert_eq!(
            (succeeded.status.as_str(), succeeded.reason.as_str()),
            ("False", "InvalidSpec")
        );
    }
}
