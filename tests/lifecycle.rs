//! The job lifecycle on the real stack: cancel that keeps the record (kubectl and facade), live
//! progress from the workflow's history, the status-write budget, spec edits after start.

use imagejob_testkit as support;

use imagejob_operator::{
    controller::status::spec_digest,
    crd::{
        CONDITION_CANCEL_REQUESTED, CONDITION_SPEC_APPLIED, CONDITION_SUCCEEDED, ImageJob, Phase,
    },
    store::MetadataStore,
    temporal::{
        client::{ExecutionStatus, WorkflowGateway},
        error::TemporalError,
    },
};
use kube::api::{Api, Patch, PatchParams};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{
    TestWorker, eventually,
    facade_env::TestFacade,
    kube_env::{self, InProcessController, Setup, create, wait_job, wait_phase},
    lykdat::{FakeLykdat, Reply},
};

const JOB_WAIT: Duration = Duration::from_secs(60);
/// How long a step may take to show in the status here: well under the controller's 60 s
/// safety-net resync, so a pass proves the status followed the history, not a timer. (The
/// latency itself is a benchmark figure.)
const PROGRESS_WAIT: Duration = Duration::from_secs(5);

/// Waits until the fake has received its first search request; returns when.
async fn search_started(fake: &FakeLykdat) -> Instant {
    eventually("the similarity search to run", JOB_WAIT, || async {
        (!fake.requests().is_empty()).then_some(())
    })
    .await;
    Instant::now()
}

#[tokio::test]
async fn kubectl_cancel_during_the_search_keeps_the_job_cancelled_with_its_final_state() {
    let s = Setup::new("cancel-kubectl").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(120))]).await;
    let worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    create(&s.api, "slow", kube_env::spec(true)).await;
    let searching = search_started(&fake).await;

    // Progress shows while the search runs, from the history, not from a resync.
    let running = wait_job(
        &s.api,
        "slow",
        "metadata_stored and the image id mid-run",
        PROGRESS_WAIT,
        |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.metadata_stored && s.image_id.is_some())
        },
    )
    .await;
    println!(
        "metadata_stored visible {:?} after the search started",
        searching.elapsed()
    );
    assert_eq!(running.phase(), Phase::Processing);

    support::kubectl(&[
        "patch",
        "imagejob",
        "slow",
        "-n",
        &s.ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"status":"Cancelled"}}"#,
    ]);
    let job = wait_phase(&s.api, "slow", Phase::Cancelled).await;
    let status = job.status.clone().unwrap();
    assert!(
        status.metadata_stored,
        "the document was written before the cancel"
    );
    assert!(!status.similarity_search_completed);
    assert!(status.completion_time.is_some());
    let succeeded = job.condition(CONDITION_SUCCEEDED).unwrap();
    assert_eq!(
        (succeeded.status.as_str(), succeeded.reason.as_str()),
        ("False", "Cancelled")
    );
    let requested = job
        .condition(CONDITION_CANCEL_REQUESTED)
        .expect("CancelRequested");
    assert_eq!(
        (requested.status.as_str(), requested.reason.as_str()),
        ("True", "Signalled")
    );

    // Temporal closed the workflow as cancelled; the stored document agrees with the status.
    let workflow_id = status.workflow_id.unwrap();
    let snapshot = support::gateway(&s.settings)
        .snapshot(&workflow_id)
        .await
        .unwrap();
    assert_eq!(snapshot.execution, ExecutionStatus::Cancelled);
    let image_id = status.image_id.unwrap();
    let doc = worker
        .store
        .get(&image_id)
        .await
        .unwrap()
        .expect("stored document");
    assert_eq!(doc.url, "https://example.com/image.jpg");

    // The record stays; the printer columns and events say what happened.
    let row = support::kubectl(&["get", "imagejob", "slow", "-n", &s.ns, "--no-headers"]);
    assert!(row.contains("Cancelled"), "{row}");
    let reasons = kube_env::event_reasons(&s.client, &s.ns, "slow").await;
    assert!(reasons.iter().any(|r| r == "Cancelled"), "{reasons:?}");
}

#[tokio::test]
async fn a_job_cancelled_before_it_started_never_starts_a_workflow() {
    let s = Setup::new("cancel-early").await;
    let mut spec = kube_env::spec(false);
    spec.status = Some(imagejob_operator::crd::RequestedStatus::Cancelled);
    let created = create(&s.api, "early", spec).await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;

    let job = wait_phase(&s.api, "early", Phase::Cancelled).await;
    let succeeded = job.condition(CONDITION_SUCCEEDED).unwrap();
    assert_eq!(succeeded.message, "cancelled before its workflow started");
    let workflow_id = imagejob_operator::controller::workflow_id(&created).unwrap();
    let gateway = support::gateway(&s.settings);
    assert!(matches!(
        gateway.snapshot(&workflow_id).await,
        Err(TemporalError::NotFound)
    ));
}

#[tokio::test]
async fn status_follows_each_step_within_the_write_budget() {
    let s = Setup::new("progress").await;
    // Each search takes 6 s, long enough for the stored metadata to show on its own.
    let replies = (0..3).map(|_| Reply::ok(&[("Tee", 0.8)]).after(Duration::from_secs(6)));
    let fake = FakeLykdat::start(replies.collect()).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(30));
    let controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;

    for i in 0..3 {
        create(&s.api, &format!("searched-{i}"), kube_env::spec(true)).await;
    }
    for i in 0..3 {
        // Mid-run: stored while its search runs.
        let what = "metadata stored while the search runs";
        wait_job(&s.api, &format!("searched-{i}"), what, JOB_WAIT, |j| {
            j.phase() == Phase::Processing && j.status.as_ref().is_some_and(|s| s.metadata_stored)
        })
        .await;
    }
    for i in 0..3 {
        wait_phase(&s.api, &format!("searched-{i}"), Phase::Completed).await;
    }
    let with_search = controller.metrics.status_writes.get();
    assert!(
        with_search <= 9,
        "{with_search} status writes for 3 jobs with a search (at most 3 each)"
    );

    for i in 0..5 {
        create(&s.api, &format!("fast-{i}"), kube_env::spec(false)).await;
    }
    for i in 0..5 {
        wait_phase(&s.api, &format!("fast-{i}"), Phase::Completed).await;
    }
    let fast = controller.metrics.status_writes.get() - with_search;
    assert!(
        fast <= 10,
        "{fast} status writes for 5 fast jobs (at most 2 each)"
    );
}

/// Sets the job's title, then waits for its `SpecApplied` condition to be `applied`.
async fn retitle(api: &Api<ImageJob>, name: &str, title: &str, applied: &str) -> ImageJob {
    let patch = json!({"spec": {"title": title}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let what = format!("SpecApplied={applied}");
    wait_job(api, name, &what, JOB_WAIT, |j| {
        j.condition(CONDITION_SPEC_APPLIED)
            .is_some_and(|c| c.status == applied)
    })
    .await
}

/// Creates the job `name` and waits until its workflow runs in Temporal.
async fn create_and_wait_started(s: &Setup, name: &str) {
    let job = create(&s.api, name, kube_env::spec(false)).await;
    let id = format!("image-processing-{}", job.metadata.uid.expect("uid"));
    let gateway = support::gateway(&s.settings);
    eventually("the workflow to start", JOB_WAIT, || async {
        (gateway.execution(&id).await.ok() == Some(ExecutionStatus::Running)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_spec_edit_before_the_first_status_write_is_still_reported() {
    let s = Setup::new("early-edit").await;
    // No worker: the workflow stays queued, so the job's first status write comes 10 s after its
    // start, and the edit lands before it.
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    create_and_wait_started(&s, "early").await;
    let unwritten = s.api.get("early").await.unwrap();
    assert!(unwritten.status.is_none(), "{:?}", unwritten.status);
    let job = retitle(&s.api, "early", "Edited before the first write", "False").await;
    assert_eq!(job.phase(), Phase::Processing);
}

#[tokio::test]
async fn a_spec_edit_made_while_no_controller_ran_is_reported_by_the_next_one() {
    let s = Setup::new("adopted-edit").await;
    // No worker: the workflow stays queued, and the controller that started it is killed before
    // its first status write (10 s after the start).
    let mut first = support::ControllerProcess::start(&s.settings, &s.ns, &[]);
    create_and_wait_started(&s, "adopted").await;
    first.child.kill();
    let patch = json!({"spec": {"title": "Edited while no controller ran"}});
    let edited = s
        .api
        .patch("adopted", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(edited.status.is_none(), "{:?}", edited.status);

    // The next controller adopts the workflow: the spec it started with is read from Temporal.
    let _second = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let job = wait_job(&s.api, "adopted", "SpecApplied=False", JOB_WAIT, |j| {
        j.condition(CONDITION_SPEC_APPLIED)
            .is_some_and(|c| c.status == "False")
    })
    .await;
    let status = job.status.expect("status");
    assert_eq!(status.phase, Phase::Processing);
    assert_eq!(
        status.started_spec_digest.as_deref(),
        Some(spec_digest(&kube_env::spec(false)).as_str()),
        "the digest of the spec the workflow started with"
    );
}

#[tokio::test]
async fn a_spec_edit_after_start_is_reported_and_not_applied() {
    let s = Setup::new("spec-edit").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(20))]).await;
    let worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(30));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    create(&s.api, "edited", kube_env::spec(true)).await;
    search_started(&fake).await;

    let job = retitle(&s.api, "edited", "Another title", "False").await;
    let reported = job.condition(CONDITION_SPEC_APPLIED).unwrap();
    assert_eq!(reported.reason, "EditedAfterStart");
    assert!(
        reported.message.contains("generation 2"),
        "{}",
        reported.message
    );
    // The event is recorded just after the status write that reported the edit.
    eventually(
        "the SpecEditedAfterStart event",
        Duration::from_secs(10),
        || async {
            let reasons = kube_env::event_reasons(&s.client, &s.ns, "edited").await;
            reasons
                .iter()
                .any(|r| r == "SpecEditedAfterStart")
                .then_some(())
        },
    )
    .await;

    // Undoing the edit while the workflow runs says so.
    let job = retitle(&s.api, "edited", "Product Image", "True").await;
    assert_eq!(
        job.phase(),
        Phase::Processing,
        "the undo was seen while running"
    );

    // The workflow went on with the spec it started with.
    let job = wait_phase(&s.api, "edited", Phase::Completed).await;
    let image_id = job.status.clone().unwrap().image_id.unwrap();
    let doc = worker.store.get(&image_id).await.unwrap().unwrap();
    assert_eq!(doc.title.as_deref(), Some("Product Image"));
}

async fn post(facade: &TestFacade, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = facade.http.post(facade.url(path));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let r = request.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn facade_cancel_keeps_the_record_and_answers_a_result_waiter_with_the_cancelled_state() {
    let s = Setup::new("cancel-facade").await;
    let facade = TestFacade::start(&s.client, &s.ns, &s.settings).await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(120))]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let body = json!({"url": "https://example.com/a.jpg", "title": "A", "similarity_search": true});
    let (code, accepted) = post(&facade, "/images/process", Some(body)).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{accepted}");
    let workflow_id = accepted["workflow_id"].as_str().unwrap().to_owned();
    search_started(&fake).await;

    // The facade's status shows the progress too.
    let status_path = format!("/images/workflow/{workflow_id}/status");
    eventually(
        "metadata_stored through the facade",
        PROGRESS_WAIT,
        || async {
            let status = facade.get_json(&status_path).await;
            (status["state"]["metadata_stored"] == true).then_some(())
        },
    )
    .await;

    let waiter = facade
        .http
        .get(facade.url(&format!(
            "/images/workflow/{workflow_id}/result?timeout=120"
        )))
        .send();
    let cancel_path = format!("/images/workflow/{workflow_id}/cancel");
    let cancel = post(&facade, &cancel_path, None);
    let (waited, (code, cancelled)) = tokio::join!(waiter, cancel);
    assert_eq!(code, StatusCode::ACCEPTED, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelling");
    let waited = waited.unwrap();
    assert_eq!(waited.status(), StatusCode::OK);
    let waited: Value = waited.json().await.unwrap();
    assert_eq!(
        (waited["done"].clone(), waited["job_deleted"].clone()),
        (json!(true), json!(false)),
        "{waited}"
    );
    assert_eq!(waited["state"]["status"], "cancelled", "{waited}");
    assert_eq!(waited["state"]["metadata_stored"], true, "{waited}");

    let status = facade.get_json(&status_path).await;
    assert_eq!(status["state"]["status"], "cancelled", "{status}");
    assert_eq!(status["job_deleted"], false, "{status}");
    let name = kube_env::only_name(&s.api).await;
    assert_eq!(s.api.get(&name).await.unwrap().phase(), Phase::Cancelled);
    let snapshot = support::gateway(&s.settings)
        .snapshot(&workflow_id)
        .await
        .unwrap();
    assert_eq!(snapshot.execution, ExecutionStatus::Cancelled);

    // Cancelling a finished job is a 409 naming its state; an unknown id is a 404.
    let (code, again) = post(&facade, &cancel_path, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "already_finished");
    let unknown = format!(
        "/images/workflow/image-processing-{}/cancel",
        uuid::Uuid::new_v4()
    );
    let (code, _) = post(&facade, &unknown, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Without a token, nothing is cancelled.
    let anonymous = reqwest::Client::new()
        .post(facade.url(&format!("/images/workflow/{workflow_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
