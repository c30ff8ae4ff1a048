//! The controller on the real stack: kube-apiserver + etcd, Temporal, the real worker.

use imagejob_testkit as support;

use async_trait::async_trait;
use imagejob_operator::{
    crd::{CONDITION_SUCCEEDED, CONDITION_TEMPORAL_REACHABLE, ImageJob, Phase},
    store::{ImageDocument, MetadataStore, StoreError},
    temporal::{
        client::{ExecutionStatus, WorkflowGateway},
        error::TemporalError,
    },
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, ResourceExt, api::DeleteParams};
use std::{sync::Arc, time::Duration};
use support::{
    ControllerProcess, TestWorker, eventually,
    kube_env::{self, InProcessController, Setup, create, wait_job, wait_phase},
    lykdat::{FakeLykdat, Reply},
};

const JOB_WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> Setup {
    Setup::new(prefix).await
}

#[tokio::test]
async fn a_job_completes_with_every_status_field_and_kubectl_wait_returns() {
    let s = setup("complete").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[
        ("Blue Oxford", 0.93),
        ("Navy Tee", 0.71),
    ])])
    .await;
    let worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(10));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let created = create(&s.api, "shirt", kube_env::spec(true)).await;

    let wait = tokio::process::Command::new("kubectl")
        .args([
            "wait",
            "--for=condition=Succeeded",
            "ij/shirt",
            "-n",
            &s.ns,
            "--timeout=60s",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        wait.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&wait.stderr)
    );

    let job = s.api.get("shirt").await.unwrap();
    let status = job.status.clone().expect("status");
    assert_eq!(status.phase, Phase::Completed);
    assert_eq!(
        status.workflow_id,
        Some(format!("image-processing-{}", created.uid().unwrap()))
    );
    assert!(status.run_id.is_some());
    assert!(status.metadata_stored && status.similarity_search_completed);
    assert_eq!(status.error, None);
    assert_eq!(status.observed_generation, Some(1));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert!(status.start_time <= status.completion_time);
    let similarity = status.similarity.expect("similarity summary");
    assert_eq!(similarity.total_matches, 2);
    assert_eq!(similarity.top_matches[0].name, "Blue Oxford");
    assert_eq!(similarity.summary, "2 matches, best 0.93");
    let succeeded = job.condition(CONDITION_SUCCEEDED).unwrap();
    assert_eq!(
        (succeeded.status.as_str(), succeeded.reason.as_str()),
        ("True", "Completed")
    );
    let image_id = status.image_id.expect("image id");
    let doc = worker
        .store
        .get(&image_id)
        .await
        .unwrap()
        .expect("metadata document");
    assert_eq!(doc.url, "https://example.com/image.jpg");

    let reasons = eventually(
        "Started and Completed events",
        Duration::from_secs(10),
        || async {
            let reasons = kube_env::event_reasons(&s.client, &s.ns, "shirt").await;
            reasons.contains(&"Completed".to_owned()).then_some(reasons)
        },
    )
    .await;
    assert!(!reasons.contains(&"Failed".to_owned()));
}

struct AlwaysFailing;

#[async_trait]
impl MetadataStore for AlwaysFailing {
    async fn upsert(&self, _doc: &ImageDocument) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("couchbase node down".into()))
    }
    async fn get(&self, _id: &str) -> Result<Option<ImageDocument>, StoreError> {
        Ok(None)
    }
}

#[tokio::test]
async fn an_activity_failing_past_its_retries_ends_failed_with_the_error() {
    let s = setup("failed").await;
    let _worker = TestWorker::start(&s.settings, support::no_similarity(), |_| {
        Arc::new(AlwaysFailing)
    });
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    create(&s.api, "doomed", kube_env::spec(false)).await;
    let job = wait_phase(&s.api, "doomed", Phase::Failed).await;
    let status = job.status.clone().unwrap();
    assert!(
        status
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("couchbase node down"),
        "{status:?}"
    );
    assert!(!status.metadata_stored);
    let c = job.condition(CONDITION_SUCCEEDED).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Failed"));
    assert!(c.message.contains("couchbase node down"));
    assert!(status.completion_time.is_some());
}

#[tokio::test]
async fn deleting_a_running_job_cancels_its_workflow_and_the_object_goes() {
    let s = setup("delete").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(120))]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    create(&s.api, "slow", kube_env::spec(true)).await;
    let job = wait_phase(&s.api, "slow", Phase::Processing).await;
    let workflow_id = job.status.unwrap().workflow_id.unwrap();
    eventually("the similarity search to run", JOB_WAIT, || async {
        (!fake.requests().is_empty()).then_some(())
    })
    .await;

    s.api
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    kube_env::wait_gone(&s.api, "slow", JOB_WAIT).await;
    let snapshot = support::gateway(&s.settings)
        .snapshot(&workflow_id)
        .await
        .unwrap();
    assert_eq!(snapshot.execution, ExecutionStatus::Cancelled);
}

#[tokio::test]
async fn a_title_within_the_schemas_characters_but_over_its_bytes_fails_without_a_workflow() {
    let s = setup("bytes").await;
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut spec = kube_env::spec(false);
    // 200 characters, within the schema's maxLength of 256 (the apiserver counts characters);
    // 800 bytes, over the 256-byte limit.
    spec.title = Some("\u{1F455}".repeat(200));
    let created = create(&s.api, "wide", spec).await;
    let job = wait_phase(&s.api, "wide", Phase::Failed).await;
    let status = job.status.clone().unwrap();
    assert_eq!(
        status.error.as_deref(),
        Some("spec.title: title longer than 256 bytes")
    );
    let c = job.condition(CONDITION_SUCCEEDED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    let workflow_id = format!("image-processing-{}", created.uid().unwrap());
    let found = support::gateway(&s.settings).snapshot(&workflow_id).await;
    assert!(
        matches!(found, Err(TemporalError::NotFound)),
        "no workflow started: {found:?}"
    );
    let reasons = eventually("the Failed event", Duration::from_secs(10), || async {
        let reasons = kube_env::event_reasons(&s.client, &s.ns, "wide").await;
        reasons.contains(&"Failed".to_owned()).then_some(reasons)
    })
    .await;
    assert!(!reasons.is_empty());
}

/// A job's priority and its namespace reach Temporal as the workflow's priority and fairness
/// key (as the server records them: `temporal workflow describe`).
#[tokio::test]
async fn a_jobs_priority_and_namespace_reach_temporal_as_its_workflows_dispatch() {
    let s = setup("priority").await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut spec = kube_env::spec(false);
    spec.priority = Some(1);
    let created = create(&s.api, "urgent", spec).await;
    wait_phase(&s.api, "urgent", Phase::Completed).await;
    let workflow_id = created.workflow_id().expect("a uid");
    let args = [
        "workflow",
        "describe",
        "--output",
        "json",
        "--workflow-id",
        &workflow_id,
    ];
    let described = support::temporal_cli(&s.settings.address(), &args).expect("describe");
    let described: serde_json::Value = serde_json::from_str(&described).expect("JSON");
    let priority = &described["workflowExecutionInfo"]["priority"];
    assert_eq!(priority["priorityKey"], 1, "{described}");
    assert_eq!(priority["fairnessKey"], s.ns.as_str(), "{described}");
}

#[tokio::test]
async fn a_controller_killed_right_after_starting_a_workflow_never_starts_a_second() {
    let s = setup("crash").await;
    let gateway = support::gateway(&s.settings);
    // No worker yet: the controller starts the workflow, then its state query has to wait,
    // which leaves the window between "started" and "status written" wide open.
    let mut first = ControllerProcess::start(&s.settings, &s.ns, &[]);
    let created = create(&s.api, "crashy", kube_env::spec(false)).await;
    let workflow_id = format!("image-processing-{}", created.uid().unwrap());
    eventually("the workflow to exist in Temporal", JOB_WAIT, || async {
        gateway.snapshot(&workflow_id).await.ok()
    })
    .await;
    first.child.kill();

    let _worker = TestWorker::plain(&s.settings);
    let second = ControllerProcess::start(&s.settings, &s.ns, &[]);
    let job = wait_phase(&s.api, "crashy", Phase::Completed).await;
    assert_eq!(
        job.status.unwrap().workflow_id.as_deref(),
        Some(workflow_id.as_str())
    );
    // Its Temporal calls are in its /metrics (the SDK's client metrics, relayed): the start it
    // tried (and found made) and the history it followed.
    let metrics = second.metrics().await.expect("the controller's metrics");
    for (name, operation) in [
        ("temporal_request_total", "StartWorkflowExecution"),
        ("temporal_long_request_total", "GetWorkflowExecutionHistory"),
    ] {
        let calls: f64 = metrics
            .iter()
            .filter(|(series, _)| series.starts_with(&format!("{name}{{")))
            .filter(|(series, _)| series.contains(&format!("operation=\"{operation}\"")))
            .map(|(_, value)| value)
            .sum();
        assert!(calls >= 1.0, "no {operation} in {name}: {metrics:?}");
    }
    let count = eventually(
        "the workflow to be visible",
        Duration::from_secs(20),
        || async {
            Some(support::executions(&s.settings.address(), &workflow_id)).filter(|n| *n > 0)
        },
    )
    .await;
    assert_eq!(count, 1, "exactly one workflow for the job");
}

#[tokio::test]
async fn a_new_job_gets_the_finalizer_and_its_workflow_in_one_reconcile() {
    let s = setup("claim").await;
    let gateway = support::gateway(&s.settings);
    // No worker: the workflows wait in Temporal's queue, so nothing they do wakes a job.
    let controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut workflow_ids = Vec::new();
    for name in ["first", "second"] {
        let created = create(&s.api, name, kube_env::spec(false)).await;
        workflow_ids.push(format!("image-processing-{}", created.uid().unwrap()));
    }
    let reconciles = eventually("both workflows started", JOB_WAIT, || async {
        for id in &workflow_ids {
            // Its first history event (a snapshot would wait for a worker to answer its query).
            gateway.started_input(id).await.ok()?;
        }
        Some(controller.metrics.reconciles.get()).filter(|n| *n >= 2)
    })
    .await;
    // One each: kube's finalizer helper took two (the patch, then the start once the watch
    // brought the patch back), so by the second start there would have been at least three.
    assert_eq!(reconciles, 2, "reconciles for two new jobs");
    for name in ["first", "second"] {
        let job = s.api.get(name).await.unwrap();
        assert_eq!(job.finalizers(), [imagejob_operator::crd::FINALIZER]);
    }
}

#[tokio::test]
async fn with_two_controllers_one_leads_and_the_other_takes_over_when_it_dies() {
    let s = setup("leader").await;
    let lease = support::unique("lease");
    let election = |who: &str| {
        vec![
            ("LEADER_ELECTION", "true".to_owned()),
            ("LEASE_NAME", lease.clone()),
            ("LEASE_NAMESPACE", s.ns.clone()),
            ("LEASE_DURATION_SECS", "3".to_owned()),
            ("LEASE_RENEW_DEADLINE_SECS", "2".to_owned()),
            ("LEASE_RETRY_PERIOD_SECS", "0.5".to_owned()),
            ("POD_NAME", who.to_owned()),
        ]
    };
    let _worker = TestWorker::plain(&s.settings);
    let mut a = ControllerProcess::start(&s.settings, &s.ns, &election("ctl-a"));
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let first_leader = eventually("a leader", JOB_WAIT, || {
        support::lease_holder(&leases, &lease)
    })
    .await;
    assert_eq!(first_leader, "ctl-a");
    let _b = ControllerProcess::start(&s.settings, &s.ns, &election("ctl-b"));
    create(&s.api, "first", kube_env::spec(false)).await;
    wait_phase(&s.api, "first", Phase::Completed).await;
    assert_eq!(
        support::lease_holder(&leases, &lease).await.as_deref(),
        Some("ctl-a"),
        "the leader stays while alive"
    );

    a.child.kill();
    create(&s.api, "second", kube_env::spec(false)).await;
    wait_phase(&s.api, "second", Phase::Completed).await;
    assert_eq!(
        support::lease_holder(&leases, &lease).await.as_deref(),
        Some("ctl-b")
    );
}

#[tokio::test]
async fn with_temporal_down_the_job_says_so_and_completes_once_it_is_back() {
    let s = setup("outage").await;
    let temporal = support::PrivateTemporal::start(&s.settings.task_queue);
    let _worker = TestWorker::plain(&temporal.settings);
    let _controller = InProcessController::start(&s.client, &temporal.settings, &s.ns).await;
    support::stack_script(&temporal.dir, &["stop-temporal"]);

    create(&s.api, "patient", kube_env::spec(false)).await;
    let job = wait_job(
        &s.api,
        "patient",
        "TemporalReachable=False",
        JOB_WAIT,
        |j| j.temporal_unreachable(),
    )
    .await;
    let c = job.condition(CONDITION_TEMPORAL_REACHABLE).unwrap();
    assert_eq!(c.reason, "TemporalUnavailable");
    assert_ne!(job.phase(), Phase::Completed);

    support::stack_script(&temporal.dir, &["start-temporal"]);
    let job = wait_job(
        &s.api,
        "patient",
        "phase Completed after the outage",
        Duration::from_secs(120),
        |j| j.phase() == Phase::Completed,
    )
    .await;
    assert_eq!(
        job.condition(CONDITION_TEMPORAL_REACHABLE).unwrap().status,
        "True"
    );
    let reasons = kube_env::event_reasons(&s.client, &s.ns, "patient").await;
    assert!(
        reasons.contains(&"TemporalUnavailable".to_owned()),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_finished_job_is_deleted_after_its_ttl_and_its_events_remain() {
    let s = setup("ttl").await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut spec = kube_env::spec(false);
    spec.ttl_seconds_after_finished = Some(2);
    create(&s.api, "short-lived", spec).await;
    wait_phase(&s.api, "short-lived", Phase::Completed).await;
    kube_env::wait_gone(&s.api, "short-lived", Duration::from_secs(30)).await;
    let reasons = kube_env::event_reasons(&s.client, &s.ns, "short-lived").await;
    assert!(reasons.contains(&"Completed".to_owned()), "{reasons:?}");
}

#[tokio::test]
async fn the_example_job_without_a_lykdat_key_succeeds_and_says_the_search_was_skipped() {
    let s = setup("skipped").await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/imagejob.yaml");
    let kubectl = |args: &[&str]| support::kubectl(&[args, &["-n", &s.ns]].concat());
    kubectl(&["apply", "-f", example]);
    let name = kubectl(&["get", "-f", example, "-o", "jsonpath={.metadata.name}"]);
    let job = wait_phase(&s.api, &name, Phase::Completed).await;
    assert!(job.spec.similarity_search, "the example asks for a search");
    let status = job.status.unwrap();
    assert_eq!(status.error, None, "a success reads as one");
    assert!(status.metadata_stored && !status.similarity_search_completed);
    let similarity = status
        .similarity
        .expect("the similarity part says what happened");
    assert_eq!(similarity.summary, "skipped");
    assert!(
        similarity
            .skipped_reason
            .unwrap_or_default()
            .contains("LYKDAT_API_KEY")
    );
    let table = kubectl(&["get", "ij", &name]);
    // Columns are aligned: read the row at the Similarity header's offset.
    let header = table.lines().next().unwrap();
    let row = table.lines().nth(1).unwrap();
    let column = header.find("SIMILARITY").expect("a Similarity column");
    let cell = row[column..].split_whitespace().next().unwrap_or_default();
    assert_eq!(cell, "skipped", "{table}");
    eventually(
        "a SimilaritySearchSkipped event",
        Duration::from_secs(10),
        || async {
            kube_env::event_reasons(&s.client, &s.ns, &name)
                .await
                .contains(&"SimilaritySearchSkipped".to_owned())
                .then_some(())
        },
    )
    .await;
}

/// The embedded store, holding every write until it is opened.
struct Gated {
    inner: Arc<dyn MetadataStore>,
    open: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl MetadataStore for Gated {
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        self.inner.upsert(doc).await
    }
    async fn get(&self, id: &str) -> Result<Option<ImageDocument>, StoreError> {
        self.inner.get(id).await
    }
}

#[tokio::test]
async fn a_controller_watching_two_namespaces_keeps_the_jobs_of_both_in_its_cache() {
    let s = setup("multi-ns").await;
    let other = kube_env::namespace(&s.client, "multi-ns-b").await;
    let other_api: Api<ImageJob> = Api::namespaced(s.client.clone(), &other);
    let namespaces = format!("{},{other}", s.ns);
    let names: Vec<_> = (0..8).map(|i| format!("job-{i}")).collect();
    for name in &names {
        create(&s.api, name, kube_env::spec(false)).await;
        create(&other_api, name, kube_env::spec(false)).await;
    }
    let (open, gate) = tokio::sync::watch::channel(false);
    let _worker = TestWorker::start(&s.settings, support::no_similarity(), |store| {
        Arc::new(Gated {
            inner: Arc::new(store),
            open: gate,
        })
    });
    // A first controller starts every workflow (each then waits at the store) and dies.
    let mut first = ControllerProcess::start(&s.settings, &namespaces, &[]);
    for api in [&s.api, &other_api] {
        for name in &names {
            wait_phase(api, name, Phase::Processing).await;
        }
    }
    first.child.kill();
    // The second one lists both namespaces, their initial lists interleaved, and finds nothing
    // to write: its cache alone has to hold all 16 jobs for the workflows' ends to reach them.
    let second = ControllerProcess::start(&s.settings, &namespaces, &[]);
    let processing = "imagejob_jobs{phase=\"Processing\"}";
    eventually(
        "all 16 jobs in the new controller's cache",
        JOB_WAIT,
        || async { second.gauge(processing).await.filter(|n| *n == 16.0) },
    )
    .await;
    let _ = open.send(true);
    for api in [&s.api, &other_api] {
        for name in &names {
            wait_phase(api, name, Phase::Completed).await;
        }
    }
}

#[tokio::test]
async fn a_job_found_finished_without_the_finalizer_is_left_as_it_is() {
    let s = setup("settled").await;
    // Finished before this controller ever saw it (restored from a backup, say).
    create(&s.api, "restored", kube_env::spec(false)).await;
    let status = serde_json::json!({
        "apiVersion": "imagejob.dev/v1alpha1",
        "kind": "ImageJob",
        "status": {"phase": "Completed", "workflowId": "image-processing-restored"},
    });
    s.api
        .patch_status(
            "restored",
            &kube::api::PatchParams::apply("backup").force(),
            &kube::api::Patch::Apply(&status),
        )
        .await
        .unwrap();
    let before = s.api.get("restored").await.unwrap();
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    // A job created after it is reconciled after it: once that one completed, the controller
    // has been through the restored one.
    create(&s.api, "fresh", kube_env::spec(false)).await;
    wait_phase(&s.api, "fresh", Phase::Completed).await;
    let after = s.api.get("restored").await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version());
    assert!(after.finalizers().is_empty());
}

#[tokio::test]
async fn finished_jobs_without_a_ttl_leave_the_cache_yet_are_counted_and_released_on_delete() {
    let s = setup("settled-cache").await;
    let _worker = TestWorker::plain(&s.settings);
    let controller = ControllerProcess::start(&s.settings, &s.ns, &[]);
    let mut with_ttl = kube_env::spec(false);
    with_ttl.ttl_seconds_after_finished = Some(3600);
    create(&s.api, "with-ttl", with_ttl).await;
    let settled = ["a", "b", "c"];
    for name in settled {
        create(&s.api, name, kube_env::spec(false)).await;
    }
    for name in settled.iter().chain(&["with-ttl"]) {
        wait_phase(&s.api, name, Phase::Completed).await;
    }
    let cached_and_completed = |want: (f64, f64)| {
        let controller = &controller;
        async move {
            let cached = controller.gauge("imagejob_controller_cached_jobs").await?;
            let completed = controller
                .gauge("imagejob_jobs{phase=\"Completed\"}")
                .await?;
            ((cached, completed) == want).then_some(())
        }
    };
    // Only the job with a TTL stays cached (its deletion is due); all four are counted.
    eventually("one cached job, four completed", JOB_WAIT, || {
        cached_and_completed((1.0, 4.0))
    })
    .await;
    // A settled job keeps the finalizer: its deletion brings it back to the controller, which
    // releases it (the finished workflow needs no cancel).
    let a = s.api.get("a").await.unwrap();
    assert_eq!(a.finalizers(), [imagejob_operator::crd::FINALIZER]);
    s.api.delete("a", &DeleteParams::default()).await.unwrap();
    kube_env::wait_gone(&s.api, "a", JOB_WAIT).await;
    eventually("one cached job, three completed", JOB_WAIT, || {
        cached_and_completed((1.0, 3.0))
    })
    .await;
}

/// The next event of `events`, which must come within [`JOB_WAIT`] and not be an error.
async fn next_event(
    events: &mut futures::stream::BoxStream<
        'static,
        kube::runtime::watcher::Result<kube::runtime::watcher::Event<ImageJob>>,
    >,
) -> kube::runtime::watcher::Event<ImageJob> {
    use futures::StreamExt;
    tokio::time::timeout(JOB_WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test]
async fn the_list_from_the_watch_cache_and_the_watch_after_it_see_every_change() {
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    let s = setup("list-watch").await;
    let first = ["a", "b", "c"];
    for name in first {
        create(&s.api, name, kube_env::spec(false)).await;
    }
    let mut events = imagejob_operator::list_watch::list_watch(s.api.clone()).boxed();
    assert!(matches!(next_event(&mut events).await, Event::Init));
    let mut seen = std::collections::BTreeSet::new();
    loop {
        match next_event(&mut events).await {
            Event::InitApply(job) => seen.insert(job.name_any()),
            Event::InitDone => break,
            other => panic!("{other:?} inside the list"),
        };
    }
    // The watch cache may answer from a moment before the last create: what the list did not
    // have, the watch brings.
    while seen.len() < first.len() {
        match next_event(&mut events).await {
            Event::Apply(job) => seen.insert(job.name_any()),
            other => panic!("{other:?} before every created job was seen"),
        };
    }
    assert_eq!(seen, first.into_iter().map(String::from).collect());
    create(&s.api, "d", kube_env::spec(false)).await;
    match next_event(&mut events).await {
        Event::Apply(job) => assert_eq!(job.name_any(), "d"),
        other => panic!("{other:?} instead of the new job"),
    }
    s.api.delete("a", &DeleteParams::default()).await.unwrap();
    match next_event(&mut events).await {
        Event::Delete(job) => assert_eq!(job.name_any(), "a"),
        other => panic!("{other:?} instead of the deletion"),
    }
}

#[tokio::test]
async fn a_controller_refused_the_list_counts_each_refusal_and_touches_nothing() {
    let s = setup("refused").await;
    create(&s.api, "unseen", kube_env::spec(false)).await;
    // A user with no rights at all: the apiserver refuses its list of ImageJobs (403).
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some("someone-without-rights".into());
    let refused = kube::Client::try_from(config).expect("client");
    let controller = InProcessController::start(&refused, &s.settings, &s.ns).await;
    support::eventually(
        "the refusal to be retried and counted again",
        JOB_WAIT,
        || async { (controller.metrics.watch_errors.get() >= 2).then_some(()) },
    )
    .await;
    assert_eq!(controller.metrics.reconciles.get(), 0);
    let job = s.api.get("unseen").await.expect("the job");
    assert!(job.status.is_none(), "{:?}", job.status);
    assert!(job.finalizers().is_empty(), "{:?}", job.finalizers());
}

/// The kube-apiserver restarted under a running watch: its new cache begins past the version
/// the watch resumes from, so the resumed watch gets 410 Gone. The stream lists again (no older
/// than what it had delivered: no job's version ever goes back) and watches what changes after.
#[tokio::test]
async fn a_watch_too_old_for_a_restarted_apiserver_lists_again_and_goes_on() {
    use futures::StreamExt;
    use imagejob_operator::list_watch::list_watch;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{WatchStreamExt, watcher::Event};
    use std::collections::HashMap;

    let kube = support::PrivateKube::start();
    let client = kube.client().await;
    let api: Api<ImageJob> = Api::namespaced(client.clone(), "default");
    create(&api, "before", kube_env::spec(false)).await;
    let mut events = list_watch(api.clone()).default_backoff().boxed();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let delivered = |seen: &mut HashMap<String, u64>, job: &ImageJob| {
        let version: u64 = job
            .resource_version()
            .and_then(|v| v.parse().ok())
            .expect("an etcd resourceVersion");
        let before = seen.insert(job.name_any(), version).unwrap_or_default();
        assert!(
            version >= before,
            "{} went back from version {before} to {version}",
            job.name_any()
        );
    };
    loop {
        let event = tokio::time::timeout(JOB_WAIT, events.next()).await;
        match event.expect("the first list").expect("open") {
            Ok(Event::InitApply(job)) => delivered(&mut seen, &job),
            Ok(Event::InitDone) => break,
            other => assert!(matches!(other, Ok(Event::Init)), "{other:?}"),
        }
    }

    // Another write, so etcd has moved past the watch's version when the new cache starts.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut marker = ConfigMap::default();
    marker.metadata.name = Some("moves-etcd-on".into());
    configmaps
        .create(&Default::default(), &marker)
        .await
        .expect("configmap");
    kube.restart_apiserver();
    create(&api, "after", kube_env::spec(false)).await;

    let (mut gone, mut relisted, mut relist_done) = (false, Vec::new(), false);
    while !(relist_done && seen.contains_key("after")) {
        let event = tokio::time::timeout(JOB_WAIT, events.next()).await;
        match event.expect("events after the restart") {
            Some(Err(kube::runtime::watcher::Error::WatchError(status))) if status.code == 410 => {
                gone = true
            }
            // The old connection's end, or the apiserver still starting: retried after a pause.
            Some(Err(_)) => {}
            Some(Ok(Event::Init)) => assert!(gone, "a relist without a 410 first"),
            Some(Ok(Event::InitApply(job))) => {
                relisted.push(job.name_any());
                delivered(&mut seen, &job);
            }
            Some(Ok(Event::InitDone)) => relist_done = true,
            Some(Ok(Event::Apply(job))) => delivered(&mut seen, &job),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(gone, "the resumed watch was not told it is too old");
    assert!(
        relisted.contains(&"before".to_owned()),
        "the relist holds every job: {relisted:?}"
    );
}

/// The embedded store, counting the documents written.
struct CountingStore {
    inner: imagejob_operator::store::EmbeddedStore,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl MetadataStore for CountingStore {
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.upsert(doc).await
    }
    async fn get(&self, id: &str) -> Result<Option<ImageDocument>, StoreError> {
        self.inner.get(id).await
    }
}

/// Retry from the failed step, the kubectl way: a job whose search failed (Lykdat refused the
/// key) is retried by raising `spec.retry`; the same workflow resumes at the search, the stored
/// document is not written again, the attempt that failed is kept in the status; a raise on the
/// completed job is refused with an event and changes nothing.
#[tokio::test]
async fn a_failed_search_retried_by_spec_resumes_at_the_search_and_stores_the_document_once() {
    let s = setup("retry").await;
    let fake = FakeLykdat::start(vec![
        Reply::error(401, "invalid api key"),
        Reply::ok(&[("Blue Oxford", 0.93)]),
    ])
    .await;
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lykdat = support::lykdat_client(
        &fake.base_url,
        Some(support::LYKDAT_KEY),
        Duration::from_secs(10),
    );
    let counted = writes.clone();
    let _worker = TestWorker::start(
        &s.settings,
        imagejob_operator::similarity::SimilarityBackend::Lykdat(lykdat),
        move |inner| {
            Arc::new(CountingStore {
                inner,
                writes: counted,
            })
        },
    );
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    create(&s.api, "shirt", kube_env::spec(true)).await;
    let failed = wait_phase(&s.api, "shirt", Phase::Failed).await;
    let failed = failed.status.expect("status");
    assert!(failed.metadata_stored, "{failed:?}");
    assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);

    support::kubectl(&[
        "patch",
        "ij",
        "shirt",
        "-n",
        &s.ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"retry":1}}"#,
    ]);
    let done = wait_phase(&s.api, "shirt", Phase::Completed).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.workflow_id, failed.workflow_id, "the same workflow");
    assert_ne!(status.run_id, failed.run_id, "a new run of it");
    assert_eq!(status.image_id, failed.image_id, "the stored document's id");
    assert_eq!(
        writes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the document is not written again"
    );
    assert_eq!(fake.requests().len(), 2, "the search ran again, once");
    let similarity = status.similarity.clone().expect("similarity");
    assert_eq!(similarity.top_matches[0].name, "Blue Oxford");
    assert_eq!((status.attempt(), status.observed_retry), (2, Some(1)));
    let first = &status.earlier_attempts()[0];
    assert_eq!((first.attempt, first.phase), (1, Phase::Failed));
    assert_eq!(first.run_id, failed.run_id);
    assert!(
        first
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("invalid api key"),
        "{first:?}"
    );
    let history = support::cli_history(&s.settings.address(), &failed.workflow_id.clone().unwrap());
    assert!(
        history
            .to_string()
            .contains("WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW"),
        "the new run is Temporal's reset of the failed one"
    );

    // The job completed: a further raise is refused, once, and nothing runs.
    support::kubectl(&[
        "patch",
        "ij",
        "shirt",
        "-n",
        &s.ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"retry":2}}"#,
    ]);
    let refused = wait_job(&s.api, "shirt", "the retry refused", JOB_WAIT, |job| {
        job.status.as_ref().and_then(|s| s.observed_retry) == Some(2)
    })
    .await;
    assert_eq!(refused.phase(), Phase::Completed);
    // Each event is recorded just after the status write that made it.
    eventually("the retry's events", Duration::from_secs(10), || async {
        let reasons = kube_env::event_reasons(&s.client, &s.ns, "shirt").await;
        let has = |reason: &str| reasons.iter().any(|r| r == reason);
        (has("Retrying") && has("RetryRefused")).then_some(())
    })
    .await;
    assert_eq!(fake.requests().len(), 2);
}
