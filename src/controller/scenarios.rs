//! Scenario tests of reconcile against the fake apiserver and the fake Temporal gateway
//! (`crate::fixtures`): each path (claim and start, progress, completion, cancel by spec,
//! cleanup on delete, TTL, a missing workflow, Temporal unreachable) in milliseconds. The live
//! stack proves the same paths end to end (tests/controller.rs, tests/lifecycle.rs).

use super::{
    backoff::Backoffs,
    context::{Context, DeletionClock, Settings},
    metrics::ControllerMetrics,
    reconcile::reconcile,
    watches::WorkflowWatches,
};
use crate::{
    crd::{FINALIZER, ImageJob, ImageJobSpec, ImageJobStatus, Phase},
    fixtures::{FakeApiServer, FakeGateway, closed, running},
    kube_client::WriteFence,
    temporal::{client::ExecutionStatus, contract::WorkflowState, error::TemporalError},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::events::Reporter};
use std::{sync::Arc, time::Duration};

const NS: &str = "team-a";

/// The controller's context over the fakes.
fn context(api: &FakeApiServer, gateway: &Arc<FakeGateway>) -> Arc<Context> {
    let (wake, _woken) = futures::channel::mpsc::unbounded();
    let (cache, _) = kube::runtime::reflector::store();
    let gateway: Arc<dyn crate::temporal::client::WorkflowGateway> = gateway.clone();
    Arc::new(Context {
        client: api.client(),
        gateway: gateway.clone(),
        metrics: Arc::new(ControllerMetrics::new()),
        fence: WriteFence::open(),
        settings: Settings {
            namespaces: vec![NS.into()],
            max_workflow_watches: 10,
            concurrency: 4,
            instance: Some("scenario".into()),
            release_after: Duration::from_secs(300),
            fairness_weights: [("team-a".to_owned(), 2.0)].into(),
            notifier: None,
        },
        reporter: Reporter {
            controller: "imagejob-operator".into(),
            instance: Some("scenario".into()),
        },
        watches: WorkflowWatches::new(gateway, wake.clone(), 10, Default::default()),
        backoffs: Backoffs::default(),
        deletions: DeletionClock::default(),
        slots: super::fair::FairSlots::new(4, wake, cache),
        deliveries: Arc::new(tokio::sync::Semaphore::new(4)),
    })
}

/// The fakes and a controller context over them.
fn fakes() -> (FakeApiServer, Arc<FakeGateway>, Arc<Context>) {
    let (api, gateway) = (FakeApiServer::default(), Arc::new(FakeGateway::default()));
    let ctx = context(&api, &gateway);
    (api, gateway, ctx)
}

/// A workflow's state once its document is stored.
fn stored() -> WorkflowState {
    WorkflowState {
        image_id: Some("img-1".into()),
        metadata_stored: true,
        ..Default::default()
    }
}

fn spec() -> ImageJobSpec {
    ImageJobSpec {
        url: "https://example.com/shirt.png".into(),
        title: Some("Shirt".into()),
        tags: vec!["shirt".into()],
        ..Default::default()
    }
}

/// A job as the apiserver holds it: a uid, our finalizer when `claimed`.
fn job(name: &str, spec: ImageJobSpec, claimed: bool) -> ImageJob {
    let mut job = ImageJob::new(name, spec);
    job.metadata.namespace = Some(NS.into());
    job.metadata.uid = Some(format!("uid-{name}"));
    job.metadata.generation = Some(1);
    if claimed {
        job.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    job
}

fn workflow_id(job: &ImageJob) -> String {
    job.workflow_id().expect("a uid")
}

/// Reconciles the job as the apiserver holds it now.
async fn reconcile_now(api: &FakeApiServer, ctx: &Arc<Context>, name: &str) -> super::Result<()> {
    let job = api.job(NS, name).expect("the job exists");
    reconcile(Arc::new(job), ctx.clone()).await.map(|_| ())
}

/// The job `name` after the workflow was started and its first status written.
fn started(name: &str, spec: ImageJobSpec, gateway: &FakeGateway) -> ImageJob {
    let mut job = job(name, spec, true);
    let id = workflow_id(&job);
    job.status = Some(ImageJobStatus {
        phase: Phase::Processing,
        workflow_id: Some(id.clone()),
        run_id: Some("run-1".into()),
        started_spec_digest: Some(super::status::spec_digest(&job.spec)),
        ..Default::default()
    });
    gateway.set(&id, Ok(running(WorkflowState::default())));
    job
}

#[tokio::test]
async fn a_new_job_is_claimed_then_its_workflow_started_once() {
    let (api, gateway, ctx) = fakes();
    let new = job("shirt", spec(), false);
    api.put(&new);

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    let held = api.job(NS, "shirt").expect("the job");
    assert_eq!(held.metadata.finalizers, Some(vec![FINALIZER.to_owned()]));
    assert_eq!(
        gateway.calls(),
        vec![format!("start {}", workflow_id(&new))]
    );
    assert!(
        held.status.is_none(),
        "nothing is written until the workflow shows a step or ends"
    );
}

#[tokio::test]
async fn a_running_workflow_shows_its_steps_in_the_status() {
    let (api, gateway, ctx) = fakes();
    let job = started("shirt", spec(), &gateway);
    api.put(&job);
    let state = stored();
    gateway.set(&workflow_id(&job), Ok(running(state)));

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    let status = api.job(NS, "shirt").and_then(|j| j.status).expect("status");
    assert_eq!(status.phase, Phase::Processing);
    assert_eq!(status.image_id.as_deref(), Some("img-1"));
    assert!(status.metadata_stored);
    assert_eq!(
        gateway.count("start"),
        0,
        "a started workflow is not started again"
    );
}

#[tokio::test]
async fn a_completed_workflow_completes_the_job_and_says_so_once() {
    let (api, gateway, ctx) = fakes();
    let job = started("shirt", spec(), &gateway);
    api.put(&job);
    let state = stored();
    gateway.set(
        &workflow_id(&job),
        Ok(closed(ExecutionStatus::Completed, state)),
    );

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");
    reconcile_now(&api, &ctx, "shirt").await.expect("again");

    let done = api.job(NS, "shirt").expect("the job");
    assert_eq!(done.phase(), Phase::Completed);
    let succeeded = done.condition("Succeeded").expect("Succeeded");
    assert_eq!(
        (succeeded.status.as_str(), succeeded.reason.as_str()),
        ("True", "Completed")
    );
    assert!(done.status.and_then(|s| s.completion_time).is_some());
    assert_eq!(
        api.event_reasons(),
        vec!["Completed"],
        "one event, at the end"
    );
}

#[tokio::test]
async fn a_job_read_before_its_own_claim_landed_is_read_again_not_failed() {
    let (api, gateway, ctx) = fakes();
    let unclaimed = job("shirt", spec(), false);
    // The apiserver already holds the job claimed; the reconcile starts from the older copy.
    api.put(&job("shirt", spec(), true));

    reconcile(Arc::new(unclaimed), ctx.clone())
        .await
        .expect("the stale copy is read again, not an error");

    assert_eq!(gateway.count("start"), 1);
    let held = api.job(NS, "shirt").expect("the job");
    assert_eq!(held.finalizers(), [FINALIZER.to_owned()], "claimed once");
}

#[tokio::test]
async fn a_job_cancelled_by_its_spec_signals_its_workflow_and_records_it() {
    let (api, gateway, ctx) = fakes();
    let cancelled = ImageJobSpec {
        status: Some(crate::crd::RequestedStatus::Cancelled),
        ..spec()
    };
    let job = started("shirt", cancelled, &gateway);
    api.put(&job);

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    assert_eq!(gateway.count("signal_cancel"), 1);
    let held = api.job(NS, "shirt").expect("the job");
    let requested = held.condition("CancelRequested").expect("CancelRequested");
    assert_eq!(
        (requested.status.as_str(), requested.reason.as_str()),
        ("True", "Signalled")
    );
    assert_eq!(
        held.phase(),
        Phase::Processing,
        "it ends when the workflow does"
    );
}

#[tokio::test]
async fn a_job_cancelled_before_its_workflow_started_never_starts_one() {
    let (api, gateway, ctx) = fakes();
    let cancelled = ImageJobSpec {
        status: Some(crate::crd::RequestedStatus::Cancelled),
        ..spec()
    };
    api.put(&job("shirt", cancelled, true));

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    assert_eq!(gateway.count("start"), 0);
    assert_eq!(
        api.job(NS, "shirt").expect("the job").phase(),
        Phase::Cancelled
    );
}

#[tokio::test]
async fn a_deleted_running_job_is_released_only_once_its_workflow_closed() {
    let (api, gateway, ctx) = fakes();
    let mut job = started("shirt", spec(), &gateway);
    job.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    api.put(&job);

    let pending = reconcile_now(&api, &ctx, "shirt").await;
    assert!(
        pending.is_err(),
        "cleanup waits for the workflow: {pending:?}"
    );
    assert_eq!(gateway.count("signal_cancel"), 1);
    assert!(
        api.job(NS, "shirt").is_some(),
        "the finalizer holds the job"
    );

    let id = workflow_id(&job);
    gateway.set(
        &id,
        Ok(closed(ExecutionStatus::Cancelled, WorkflowState::default())),
    );
    reconcile_now(&api, &ctx, "shirt").await.expect("cleanup");
    assert!(
        api.job(NS, "shirt").is_none(),
        "released once the workflow closed"
    );
    assert!(api.event_reasons().contains(&"Cancelled".to_owned()));
}

#[tokio::test]
async fn a_queued_job_cancelled_by_its_spec_is_terminated_not_signalled() {
    let (api, gateway, ctx) = fakes();
    let cancelled = ImageJobSpec {
        status: Some(crate::crd::RequestedStatus::Cancelled),
        ..spec()
    };
    let job = started("shirt", cancelled, &gateway);
    gateway.set_unrun(&workflow_id(&job));
    api.put(&job);
    let before_the_write = api.job(NS, "shirt").expect("the job");

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    assert_eq!(gateway.count("stop_unrun"), 1);
    assert_eq!(gateway.count("signal_cancel"), 0, "no worker needed");
    let held = api.job(NS, "shirt").expect("the job");
    let requested = held.condition("CancelRequested").expect("CancelRequested");
    assert_eq!(requested.reason, "TerminatedBeforeRun");

    // Its close (a watch's or the list's) wakes it at once, perhaps before the cache shows the
    // write above: the step from that older copy ends it cancelled and keeps the condition.
    reconcile(Arc::new(before_the_write), ctx.clone())
        .await
        .expect("reconcile from the older copy");
    let done = api.job(NS, "shirt").expect("the job");
    assert_eq!(done.phase(), Phase::Cancelled);
    let requested = done
        .condition("CancelRequested")
        .expect("CancelRequested kept");
    assert_eq!(requested.reason, "TerminatedBeforeRun");
}

#[tokio::test]
async fn a_deleted_queued_job_is_released_at_once() {
    let (api, gateway, ctx) = fakes();
    let mut job = started("shirt", spec(), &gateway);
    job.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    gateway.set_unrun(&workflow_id(&job));
    api.put(&job);

    reconcile_now(&api, &ctx, "shirt").await.expect("cleanup");

    assert_eq!(gateway.count("signal_cancel"), 0, "no worker needed");
    assert!(api.job(NS, "shirt").is_none(), "released at once");
    assert!(api.event_reasons().contains(&"Cancelled".to_owned()));
}

#[tokio::test]
async fn a_just_started_job_is_first_written_processing_without_a_temporal_read() {
    let (api, gateway, ctx) = fakes();
    api.put(&job("shirt", spec(), true));
    reconcile_now(&api, &ctx, "shirt").await.expect("start");
    assert_eq!(gateway.count("start"), 1);
    let calls = gateway.calls().len();

    // Its first write (when nothing more was seen of its run) reads nothing from Temporal.
    reconcile_now(&api, &ctx, "shirt")
        .await
        .expect("first write");
    assert_eq!(gateway.calls().len(), calls, "{:?}", gateway.calls());
    let held = api.job(NS, "shirt").expect("the job");
    let status = held.status.clone().expect("status");
    assert_eq!(held.phase(), Phase::Processing);
    assert_eq!(status.run_id.as_deref(), Some("run-1"));
    assert!(status.start_time.is_some());
}

#[tokio::test]
async fn a_deleted_job_that_searched_has_its_image_forgotten() {
    let (api, gateway, ctx) = fakes();
    let searched = ImageJobSpec {
        similarity_search: true,
        ..spec()
    };
    let mut job = started("shirt", searched, &gateway);
    let id = workflow_id(&job);
    gateway.set(
        &id,
        Ok(closed(ExecutionStatus::Completed, WorkflowState::default())),
    );
    if let Some(status) = job.status.as_mut() {
        status.phase = Phase::Completed;
    }
    job.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    api.put(&job);

    reconcile_now(&api, &ctx, "shirt").await.expect("cleanup");

    assert_eq!(gateway.calls(), vec![format!("forget_catalog_image {id}")]);
    assert!(api.job(NS, "shirt").is_none());
}

#[tokio::test]
async fn a_finished_job_past_its_ttl_is_deleted_and_one_within_it_is_not() {
    let (api, gateway, ctx) = fakes();
    for (name, finished_ago) in [("old", 120), ("young", 0)] {
        let with_ttl = ImageJobSpec {
            ttl_seconds_after_finished: Some(60),
            ..spec()
        };
        let mut job = job(name, with_ttl, true);
        let finished = Timestamp::now() - Duration::from_secs(finished_ago);
        job.status = Some(ImageJobStatus {
            phase: Phase::Completed,
            completion_time: Some(Time(finished)),
            ..Default::default()
        });
        api.put(&job);
        reconcile_now(&api, &ctx, name).await.expect("reconcile");
    }
    let deleted: Vec<_> = api
        .seen()
        .into_iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path)
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(deleted[0].ends_with("/imagejobs/old"));
    assert!(api.job(NS, "young").is_some());
    assert!(
        gateway.calls().is_empty(),
        "a finished job costs no Temporal call"
    );
}

#[tokio::test]
async fn a_started_job_whose_workflow_vanished_fails_with_the_reason() {
    let (api, gateway, ctx) = fakes();
    let job = started("shirt", spec(), &gateway);
    gateway.set(&workflow_id(&job), Err(TemporalError::NotFound));
    api.put(&job);

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    let failed = api.job(NS, "shirt").expect("the job");
    assert_eq!(failed.phase(), Phase::Failed);
    let succeeded = failed.condition("Succeeded").expect("Succeeded");
    assert_eq!(succeeded.reason, "WorkflowNotFound");
}

#[tokio::test]
async fn an_unreachable_temporal_leaves_the_job_waiting_not_failed() {
    let (api, gateway, ctx) = fakes();
    api.put(&job("shirt", spec(), true));
    gateway.fail_with(Some(TemporalError::Unavailable(
        "connection refused".into(),
    )));

    reconcile_now(&api, &ctx, "shirt")
        .await
        .expect("retried, not an error");

    let waiting = api.job(NS, "shirt").expect("the job");
    assert_eq!(waiting.phase(), Phase::Pending);
    let reachable = waiting.condition("TemporalReachable").expect("condition");
    assert_eq!(
        (reachable.status.as_str(), reachable.reason.as_str()),
        ("False", "TemporalUnavailable")
    );
    assert_eq!(api.event_reasons(), vec!["TemporalUnavailable"]);
}

#[tokio::test]
async fn a_replica_that_lost_its_lease_touches_nothing() {
    let (api, gateway, ctx) = fakes();
    ctx.fence.close();
    api.put(&job("shirt", spec(), false));

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");

    assert!(gateway.calls().is_empty());
    let writes = api.seen().into_iter().filter(|s| s.method != "GET").count();
    assert_eq!(writes, 0);
}

#[tokio::test]
async fn a_workflow_is_dispatched_by_its_jobs_priority_and_namespace() {
    let (api, gateway, ctx) = fakes();
    let urgent = ImageJobSpec {
        priority: Some(1),
        ..spec()
    };
    let new = job("urgent", urgent, true);
    api.put(&new);

    reconcile_now(&api, &ctx, "urgent")
        .await
        .expect("reconcile");

    let dispatch = gateway
        .dispatch_of(&workflow_id(&new))
        .expect("started with a dispatch");
    assert_eq!(dispatch.priority, Some(1));
    assert_eq!(
        dispatch.fairness_key.as_deref(),
        Some(NS),
        "the namespace is the key"
    );
    assert_eq!(
        dispatch.fairness_weight,
        Some(2.0),
        "the namespace's configured weight"
    );
}

/// A job whose workflow failed after storing its document, as its status says.
fn failed(name: &str, gateway: &FakeGateway) -> ImageJob {
    let mut job = started(name, spec(), gateway);
    let state = WorkflowState {
        error: Some("invalid api key".into()),
        ..stored()
    };
    gateway.set(
        &workflow_id(&job),
        Ok(closed(ExecutionStatus::Failed, state)),
    );
    let status = job.status.as_mut().expect("a status");
    status.phase = Phase::Failed;
    status.image_id = Some("img-1".into());
    status.metadata_stored = true;
    status.error = Some("invalid api key".into());
    job
}

#[tokio::test]
async fn a_raised_retry_resumes_a_failed_job_once_and_records_the_attempt() {
    let (api, gateway, ctx) = fakes();
    let mut job = failed("shirt", &gateway);
    job.spec.retry = Some(1);
    api.put(&job);

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");
    reconcile_now(&api, &ctx, "shirt").await.expect("again");

    assert_eq!(gateway.count("resume"), 1, "one raise, one resume");
    let resumed = api.job(NS, "shirt").expect("the job");
    let status = resumed.status.clone().expect("a status");
    assert_eq!(status.phase, Phase::Processing);
    assert_eq!(status.run_id.as_deref(), Some("run-1-resumed"));
    assert_eq!(status.observed_retry, Some(1));
    assert_eq!(status.attempt(), 2);
    let first = &status.earlier_attempts()[0];
    assert_eq!(
        (first.phase, first.error.as_deref()),
        (Phase::Failed, Some("invalid api key"))
    );
    assert_eq!(
        status.image_id.as_deref(),
        Some("img-1"),
        "what completed stays"
    );
    assert_eq!(api.event_reasons(), vec!["Retrying"]);

    // The resumed run completes: the job completes, its attempts kept.
    gateway.set(
        &workflow_id(&resumed),
        Ok(closed(ExecutionStatus::Completed, stored())),
    );
    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");
    let done = api.job(NS, "shirt").expect("the job");
    assert_eq!(done.phase(), Phase::Completed);
    assert_eq!(done.status.expect("status").earlier_attempts().len(), 1);
}

#[tokio::test]
async fn a_retry_of_a_completed_job_is_refused_once_and_changes_nothing() {
    let (api, gateway, ctx) = fakes();
    let mut job = started("shirt", spec(), &gateway);
    job.status.as_mut().expect("status").phase = Phase::Completed;
    job.spec.retry = Some(1);
    api.put(&job);

    reconcile_now(&api, &ctx, "shirt").await.expect("reconcile");
    reconcile_now(&api, &ctx, "shirt").await.expect("again");

    assert_eq!(gateway.count("resume"), 0);
    let held = api.job(NS, "shirt").expect("the job");
    assert_eq!(held.phase(), Phase::Completed);
    assert_eq!(held.status.expect("status").observed_retry, Some(1));
    assert_eq!(api.event_reasons(), vec!["RetryRefused"], "refused once");
}
