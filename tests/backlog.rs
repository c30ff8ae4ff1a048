//! A backlog on the real stack: jobs whose workflows wait in Temporal's queue (no worker serves
//! their task queue yet), more of them than the controller watches. A queued job cancelled or
//! deleted is let go at once (its workflow, which ran nothing, is terminated: the seed's cancel
//! signal would wait for a worker forever); the jobs beyond the watch bound show `Processing`
//! and, once a worker comes, finish through the list of closed runs; one in its similarity
//! search shows that step through the list of runs in it, with no history read.

use imagejob_testkit as support;

use imagejob_operator::{
    crd::{CONDITION_CANCEL_REQUESTED, ImageJob, Phase},
    temporal::client::UNRUN_TERMINATION,
};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    ControllerProcess, TestWorker, eventually,
    kube_env::{self, Setup, create, wait_gone, wait_job, wait_phase},
    lykdat::{FakeLykdat, Reply},
};

const WAIT: Duration = Duration::from_secs(90);
/// Workflows the controller watches; the others are listed.
const WATCHED: usize = 2;

/// The workflow's history events, by the Temporal CLI.
fn events(s: &Setup, job: &ImageJob) -> Vec<Value> {
    let id = job.status.as_ref().and_then(|st| st.workflow_id.clone());
    let history = support::cli_history(&s.settings.address(), &id.expect("a workflow id"));
    history["events"].as_array().cloned().unwrap_or_default()
}

fn event_types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts the job's workflow ran nothing and was terminated by the operator as unrun.
fn assert_terminated_unrun(s: &Setup, job: &ImageJob) {
    let events = events(s, job);
    let types = event_types(&events);
    assert!(
        !types.iter().any(|t| t.contains("WORKFLOW_TASK_COMPLETED")),
        "no task ran: {types:?}"
    );
    let last = events.last().expect("events");
    assert_eq!(
        last["eventType"], "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED",
        "{types:?}"
    );
    assert_eq!(
        last["workflowExecutionTerminatedEventAttributes"]["reason"],
        UNRUN_TERMINATION
    );
}

#[tokio::test]
async fn queued_jobs_are_let_go_at_once_and_jobs_beyond_the_watch_bound_finish_by_the_list() {
    let s = Setup::new("backlog").await;
    let controller = ControllerProcess::start(
        &s.settings,
        &s.ns,
        &[("MAX_WORKFLOW_WATCHES", WATCHED.to_string())],
    );
    let names: Vec<String> = (0..6).map(|i| format!("queued-{i}")).collect();
    for name in &names {
        create(&s.api, name, kube_env::spec(false)).await;
    }
    // No worker yet: every workflow waits on its first task, and every job shows it started.
    for name in &names {
        wait_job(&s.api, name, "Processing", WAIT, |j| {
            j.phase() == Phase::Processing
        })
        .await;
    }

    // Cancelled by its spec: with no worker, only a termination can end it.
    let patch = json!({"spec": {"status": "Cancelled"}});
    let params = PatchParams::default();
    (s.api
        .patch("queued-0", &params, &Patch::Merge(&patch))
        .await)
        .expect("cancel by spec");
    let cancelled = wait_phase(&s.api, "queued-0", Phase::Cancelled).await;
    let status = cancelled.status.clone().expect("status");
    assert_eq!(status.error.as_deref(), Some("workflow cancelled"));
    assert!(!status.metadata_stored);
    let requested = cancelled.condition(CONDITION_CANCEL_REQUESTED).cloned();
    assert_eq!(
        requested.map(|c| c.reason).as_deref(),
        Some("TerminatedBeforeRun")
    );
    assert_terminated_unrun(&s, &cancelled);

    // Deleted: released at once, its workflow terminated.
    let deleted = s.api.get("queued-1").await.expect("queued-1");
    (s.api.delete("queued-1", &DeleteParams::default()).await).expect("delete");
    wait_gone(&s.api, "queued-1", WAIT).await;
    assert_terminated_unrun(&s, &deleted);

    // A worker comes: the other four finish, the ones beyond the watch bound by the list.
    let _worker = TestWorker::plain(&s.settings);
    for name in &names[2..] {
        let done = wait_phase(&s.api, name, Phase::Completed).await;
        let types = event_types(&events(&s, &done));
        assert!(
            types.contains(&"EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED".to_owned()),
            "{types:?}"
        );
    }
    let listed = eventually("the listed closes counted", WAIT, || async {
        let closes = controller
            .gauge("imagejob_controller_listed_closes_total")
            .await?;
        (closes >= 2.0).then_some(closes)
    })
    .await;
    // Two of the six were watched, four listed: of the four that completed, at least two were
    // listed, and no more than four closes can have been.
    assert!(listed <= 4.0, "{listed} closes listed");
}

/// The controller's reads of workflow histories so far (the SDK's client metrics it serves).
async fn history_reads(controller: &ControllerProcess) -> f64 {
    let metrics = controller
        .metrics()
        .await
        .expect("the controller's metrics");
    metrics
        .iter()
        .filter(|(series, _)| {
            series.starts_with("temporal_request_total{")
                || series.starts_with("temporal_long_request_total{")
        })
        .filter(|(series, _)| series.contains("operation=\"GetWorkflowExecutionHistory\""))
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test]
async fn a_listed_job_shows_its_similarity_search_step_with_no_history_read() {
    /// How long Lykdat takes to answer: the job's search step lasts that long.
    const SEARCH_TAKES: Duration = Duration::from_secs(12);
    let s = Setup::new("listed-step").await;
    // No workflow watched: every job is listed.
    let controller =
        ControllerProcess::start(&s.settings, &s.ns, &[("MAX_WORKFLOW_WATCHES", "0".into())]);
    let lykdat = FakeLykdat::start(vec![Reply::ok(&[("p-1", 0.93)]).after(SEARCH_TAKES)]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &lykdat.base_url, SEARCH_TAKES * 2);
    create(&s.api, "searching", kube_env::spec(true)).await;

    let shown = wait_job(&s.api, "searching", "its search step shown", WAIT, |j| {
        j.phase() == Phase::Processing && j.status.as_ref().is_some_and(|st| st.metadata_stored)
    })
    .await;
    let image_id = shown.status.and_then(|st| st.image_id);
    assert!(image_id.is_some(), "the stored document's id is shown");
    let steps = controller
        .gauge("imagejob_controller_listed_steps_total")
        .await;
    assert_eq!(steps, Some(1.0), "found by the list of runs in the step");
    assert_eq!(history_reads(&controller).await, 0.0, "no history read");

    let done = wait_phase(&s.api, "searching", Phase::Completed).await;
    let status = done.status.expect("status");
    assert_eq!(status.image_id, image_id);
    assert!(status.similarity_search_completed);
    assert_eq!(lykdat.requests().len(), 1, "one search");
}
