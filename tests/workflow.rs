//! `ImageProcessingWorkflow` and its activities on a real Temporal dev server, with a real
//! worker (in-process, or the operator binary where the test kills it).

use imagejob_testkit as support;

use async_trait::async_trait;
use futures::future::join_all;
use imagejob_operator::{
    store::{ImageDocument, MetadataStore, StoreError},
    temporal::{
        client::{ExecutionStatus, TemporalGateway, WorkflowGateway, WorkflowSnapshot},
        connection::TemporalSettings,
        contract::{ImageProcessingInput, ProcessingStatus},
        worker::WorkerTuning,
    },
};
use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use support::{
    ChildGuard, TestWorker, eventually,
    lykdat::{FakeLykdat, Reply},
};

const CLOSE_WAIT: Duration = Duration::from_secs(60);

/// A store that fails its first `failures` writes, counting attempts.
struct FlakyStore {
    inner: Arc<dyn MetadataStore>,
    failures: u32,
    attempts: Arc<AtomicU32>,
}

#[async_trait]
impl MetadataStore for FlakyStore {
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.failures {
            return Err(StoreError::Unavailable(format!(
                "injected outage on attempt {attempt}"
            )));
        }
        self.inner.upsert(doc).await
    }

    async fn get(&self, image_id: &str) -> Result<Option<ImageDocument>, StoreError> {
        self.inner.get(image_id).await
    }
}

/// A store whose writes take a while: a cancellation arrives while one is under way.
struct SlowStore {
    inner: Arc<dyn MetadataStore>,
    delay: Duration,
    started: Arc<AtomicU32>,
}

#[async_trait]
impl MetadataStore for SlowStore {
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.upsert(doc).await
    }

    async fn get(&self, image_id: &str) -> Result<Option<ImageDocument>, StoreError> {
        self.inner.get(image_id).await
    }
}

fn input(similarity_search: bool) -> ImageProcessingInput {
    ImageProcessingInput {
        url: "https://example.com/image.jpg".into(),
        title: Some("Product Image".into()),
        description: Some("Blue shirt".into()),
        tags: vec!["clothing".into(), "shirt".into()],
        similarity_search,
    }
}

fn setup() -> (TemporalSettings, Arc<TemporalGateway>, String) {
    support::init();
    let settings = support::temporal(&support::unique("wf-queue"));
    let gateway = support::gateway(&settings);
    (
        settings,
        gateway,
        format!("image-processing-{}", uuid::Uuid::new_v4()),
    )
}

/// Waits for the workflow to close every way the gateway can: following its history (the close
/// event decoded by the gateway, read alone or, with no window, among every event) and
/// `get_result`, which must all tell the same end; then returns a fresh snapshot.
async fn finish(gateway: &TemporalGateway, id: &str) -> WorkflowSnapshot {
    let followed = tokio::time::timeout(CLOSE_WAIT, gateway.follow(id, CLOSE_WAIT, &|| {}))
        .await
        .expect("workflow closed in time")
        .expect("follow");
    let stepped = gateway.follow(id, Duration::ZERO, &|| {}).await;
    let waited = gateway.wait_closed(id).await.expect("wait_closed");
    let snapshot = gateway.snapshot(id).await.expect("snapshot");
    let closed_at = followed.close_time.expect("the close event's time");
    assert!(
        snapshot.start_time.is_some_and(|start| start <= closed_at)
            && closed_at <= SystemTime::now(),
        "closed at {closed_at:?}, started at {:?}",
        snapshot.start_time
    );
    let end = |s: WorkflowSnapshot| WorkflowSnapshot {
        close_time: None,
        ..s
    };
    let stepped = stepped.expect("follow, every event read");
    assert_eq!(stepped.close_time, Some(closed_at), "one close event");
    assert_eq!(
        end(followed),
        end(waited.clone()),
        "the close event says what get_result says"
    );
    assert_eq!(end(stepped), end(waited), "read among every event too");
    snapshot
}

/// The retry policy recorded in the workflow history for the activity of this type.
fn recorded_retry_policy(
    settings: &TemporalSettings,
    id: &str,
    activity: &str,
) -> serde_json::Value {
    let history = support::cli_history(&settings.address(), id);
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .find_map(|e| {
            let attrs = &e["activityTaskScheduledEventAttributes"];
            (attrs["activityType"]["name"] == activity).then(|| attrs["retryPolicy"].clone())
        })
        .unwrap_or_else(|| panic!("no {activity} scheduled in {id}"))
}

#[tokio::test]
async fn temporal_dev_server_answers_through_the_rust_client() {
    let (_, gateway, _) = setup();
    gateway.health().await.expect("Temporal health");
}

#[tokio::test]
async fn a_worker_and_a_client_with_gzip_on_run_a_workflow() {
    let (settings, _, id) = setup();
    let settings = TemporalSettings {
        gzip: true,
        ..settings
    };
    let gateway = support::gateway(&settings);
    let _worker = TestWorker::plain(&settings);
    gateway.start(&id, input(false)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    assert!(snap.state.expect("state").metadata_stored);
}

#[tokio::test]
async fn completes_without_similarity_and_stores_one_document() {
    let (settings, gateway, id) = setup();
    let worker = TestWorker::plain(&settings);
    let started = gateway.start(&id, input(false)).await.unwrap();
    assert!(!started.already_started);
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    let state = snap.state.expect("state");
    assert_eq!(state.status, ProcessingStatus::Completed);
    assert!(state.metadata_stored && !state.similarity_search_completed);
    assert_eq!(state.error, None);
    let image_id = state.image_id.expect("image id");
    let doc = worker
        .store
        .get(&image_id)
        .await
        .unwrap()
        .expect("document stored");
    assert_eq!(doc.workflow_id, id);
    assert_eq!(doc.title.as_deref(), Some("Product Image"));
    assert_eq!(doc.tags, ["clothing", "shirt"]);
    assert_eq!(worker.store.count().await.unwrap(), 1);
    assert!(worker.handle.as_ref().is_some_and(|h| h.is_polling()));
}

#[tokio::test]
async fn with_similarity_state_is_queryable_while_running_and_results_are_returned() {
    let (settings, gateway, id) = setup();
    let fake = FakeLykdat::start(vec![
        Reply::ok(&[("low", 0.2), ("high", 0.95)]).after(Duration::from_secs(2)),
    ])
    .await;
    let _worker = TestWorker::with_lykdat(&settings, &fake.base_url, Duration::from_secs(10));
    gateway.start(&id, input(true)).await.unwrap();
    let running = eventually(
        "metadata stored while the search runs",
        Duration::from_secs(20),
        || async {
            let snap = gateway.snapshot(&id).await.ok()?;
            let state = snap.state.clone()?;
            (snap.execution == ExecutionStatus::Running && state.metadata_stored).then_some(state)
        },
    )
    .await;
    assert_eq!(running.status, ProcessingStatus::Processing);
    assert!(!running.similarity_search_completed);
    let snap = finish(&gateway, &id).await;
    let state = snap.state.expect("state");
    assert_eq!(state.status, ProcessingStatus::Completed);
    assert!(state.similarity_search_completed);
    let names: Vec<_> = snap
        .similarity
        .expect("results")
        .products
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["high", "low"]);
}

#[tokio::test]
async fn similarity_500_then_200_is_retried_with_the_seed_policy() {
    let (settings, gateway, id) = setup();
    let fake = FakeLykdat::start(vec![Reply::error(500, "boom"), Reply::ok(&[("a", 0.9)])]).await;
    let _worker = TestWorker::with_lykdat(&settings, &fake.base_url, Duration::from_secs(10));
    gateway.start(&id, input(true)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    assert!(snap.state.unwrap().similarity_search_completed);
    assert_eq!(fake.requests().len(), 2);
    let policy = recorded_retry_policy(&settings, &id, "run_similarity_search");
    assert_eq!(policy["initialInterval"], "2s");
    assert_eq!(policy["maximumInterval"], "20s");
    assert_eq!(policy["backoffCoefficient"], 2.0);
    assert_eq!(policy["maximumAttempts"], 3);
}

#[tokio::test]
async fn a_429_waits_as_long_as_lykdats_retry_after_says() {
    let (settings, gateway, id) = setup();
    let fake = FakeLykdat::start(vec![
        Reply::error(429, "slow down").retry_after("6"),
        Reply::ok(&[("a", 0.9)]),
    ])
    .await;
    let _worker = TestWorker::with_lykdat(&settings, &fake.base_url, Duration::from_secs(10));
    gateway.start(&id, input(true)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 2, "one 429, then the search");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_secs(6),
        "the retry came {waited:?} after the 429: Retry-After said 6 s (the policy alone waits 2 s)"
    );
}

/// The most requests that arrived within any one second.
fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut busiest = 0;
    let mut first = 0;
    for (last, at) in arrivals.iter().enumerate() {
        while *at - arrivals[first] >= Duration::from_secs(1) {
            first += 1;
        }
        busiest = busiest.max(last + 1 - first);
    }
    busiest
}

/// Lykdat's quota is per key and per second: with the similarity queue limited to `RATE`
/// searches a second, 200 jobs started at once reach Lykdat at that pace (without it, 100
/// activity slots send them within a second or two), and every one completes.
#[tokio::test]
async fn similarity_searches_keep_to_the_rate_limit_under_200_jobs_at_once() {
    const JOBS: usize = 200;
    const RATE: f64 = 10.0;
    let (settings, gateway, _) = setup();
    let fake = FakeLykdat::start(vec![Reply::ok(&[("a", 0.9)])]).await;
    let tuning = WorkerTuning {
        similarity_searches_per_second: Some(RATE),
        ..WorkerTuning::default()
    };
    let _worker =
        TestWorker::with_lykdat_tuned(&settings, &fake.base_url, Duration::from_secs(10), tuning);
    let ids: Vec<String> = (0..JOBS)
        .map(|_| format!("image-processing-{}", uuid::Uuid::new_v4()))
        .collect();
    for started in join_all(ids.iter().map(|id| gateway.start(id, input(true)))).await {
        started.expect("start");
    }
    for closed in join_all(ids.iter().map(|id| gateway.wait_closed(id))).await {
        assert_eq!(
            closed.expect("closed").execution,
            ExecutionStatus::Completed
        );
    }
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), JOBS, "one search a job");
    let busiest = busiest_second(&arrivals);
    assert!(
        busiest as f64 <= RATE * 2.0,
        "{busiest} searches within one second, the limit is {RATE}/s"
    );
    let span = arrivals[JOBS - 1] - arrivals[0];
    let least = Duration::from_secs_f64(JOBS as f64 / RATE * 0.8);
    assert!(
        span >= least,
        "{JOBS} searches arrived within {span:?}: at {RATE}/s they take about {:?}",
        Duration::from_secs_f64(JOBS as f64 / RATE)
    );
}

#[tokio::test]
async fn similarity_401_fails_at_once_with_lykdats_message() {
    let (settings, gateway, id) = setup();
    let fake = FakeLykdat::start(vec![Reply::error(401, "invalid api key")]).await;
    let _worker = TestWorker::with_lykdat(&settings, &fake.base_url, Duration::from_secs(10));
    gateway.start(&id, input(true)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Failed);
    let state = snap.state.expect("state in the failure details");
    assert_eq!(state.status, ProcessingStatus::Failed);
    assert!(state.metadata_stored);
    assert!(
        state
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("invalid api key"),
        "{state:?}"
    );
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn without_a_lykdat_key_the_job_completes_and_says_the_search_was_skipped() {
    let (settings, gateway, id) = setup();
    let _worker = TestWorker::plain(&settings);
    gateway.start(&id, input(true)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    let state = snap.state.unwrap();
    assert_eq!(state.status, ProcessingStatus::Completed);
    assert!(state.metadata_stored && !state.similarity_search_completed);
    assert_eq!(state.error, None, "a skipped search is not an error");
    assert!(
        snap.similarity_skipped
            .unwrap_or_default()
            .contains("LYKDAT_API_KEY")
    );
}

#[tokio::test]
async fn store_failing_twice_succeeds_on_the_third_attempt_with_one_document() {
    let (settings, gateway, id) = setup();
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let worker = TestWorker::start(&settings, support::no_similarity(), move |s| {
        Arc::new(FlakyStore {
            inner: Arc::new(s),
            failures: 2,
            attempts: counter,
        })
    });
    gateway.start(&id, input(false)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(worker.store.count().await.unwrap(), 1);
    let policy = recorded_retry_policy(&settings, &id, "store_image_metadata");
    assert_eq!(policy["initialInterval"], "1s");
    assert_eq!(policy["maximumInterval"], "10s");
    assert_eq!(policy["backoffCoefficient"], 2.0);
    assert_eq!(policy["maximumAttempts"], 3);
}

#[tokio::test]
async fn store_retries_exhausted_end_failed_with_the_error() {
    let (settings, gateway, id) = setup();
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let _worker = TestWorker::start(&settings, support::no_similarity(), move |s| {
        Arc::new(FlakyStore {
            inner: Arc::new(s),
            failures: u32::MAX,
            attempts: counter,
        })
    });
    gateway.start(&id, input(false)).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Failed);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let state = snap.state.expect("state");
    assert_eq!(state.status, ProcessingStatus::Failed);
    assert!(!state.metadata_stored);
    assert!(
        state
            .error
            .unwrap_or_default()
            .contains("injected outage on attempt 3")
    );
}

async fn cancel_while_searching(by_signal: bool) {
    let (settings, gateway, id) = setup();
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(60))]).await;
    let _worker = TestWorker::with_lykdat(&settings, &fake.base_url, Duration::from_secs(90));
    gateway.start(&id, input(true)).await.unwrap();
    eventually(
        "the similarity search to be running",
        Duration::from_secs(20),
        || async { (!fake.requests().is_empty()).then_some(()) },
    )
    .await;
    if by_signal {
        gateway.signal_cancel(&id).await.unwrap();
    } else {
        gateway.request_cancel(&id).await.unwrap();
    }
    let snap = tokio::time::timeout(Duration::from_secs(15), finish(&gateway, &id))
        .await
        .expect("cancelled promptly");
    assert_eq!(snap.execution, ExecutionStatus::Cancelled);
    let state = snap.state.expect("state in the cancellation details");
    assert_eq!(state.status, ProcessingStatus::Cancelled);
    assert!(state.metadata_stored && !state.similarity_search_completed);
}

#[tokio::test]
async fn cancel_signal_while_an_activity_runs_ends_cancelled() {
    cancel_while_searching(true).await;
}

#[tokio::test]
async fn request_cancel_while_an_activity_runs_ends_cancelled() {
    cancel_while_searching(false).await;
}

#[tokio::test]
async fn starting_the_same_id_twice_starts_one_workflow() {
    let (settings, gateway, id) = setup();
    let first = gateway.start(&id, input(false)).await.unwrap();
    let second = gateway.start(&id, input(false)).await.unwrap();
    assert!(!first.already_started && second.already_started);
    assert_eq!(first.run_id, second.run_id);
    let _worker = TestWorker::plain(&settings);
    let done = finish(&gateway, &id).await;
    assert_eq!(done.execution, ExecutionStatus::Completed);
    let after = gateway.start(&id, input(false)).await.unwrap();
    assert!(after.already_started, "a closed workflow id is not reused");
    assert_eq!(gateway.snapshot(&id).await.unwrap().run_id, done.run_id);
}

fn worker_process(settings: &TemporalSettings, lykdat: &str, dir: &std::path::Path) -> ChildGuard {
    ChildGuard::spawn(&mut worker_command(settings, lykdat, dir))
}

fn worker_command(settings: &TemporalSettings, lykdat: &str, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(support::operator_bin());
    cmd.arg("worker")
        .env("TEMPORAL_HOST", &settings.host)
        .env("TEMPORAL_PORT", settings.port.to_string())
        .env("TEMPORAL_TASK_QUEUE", &settings.task_queue)
        .env("EMBEDDED_STORE_PATH", dir.join("meta.redb"))
        .env("LYKDAT_BASE_URL", lykdat)
        .env("LYKDAT_API_KEY", support::LYKDAT_KEY)
        .env("RUST_LOG", "warn");
    cmd
}

#[tokio::test]
async fn a_worker_killed_mid_activity_is_replaced_and_the_workflow_completes() {
    let (settings, gateway, id) = setup();
    let fake = FakeLykdat::start(vec![
        Reply::ok(&[("first", 0.1)]).after(Duration::from_secs(120)),
        Reply::ok(&[("second", 0.9)]),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = worker_process(&settings, &fake.base_url, dir.path());
    gateway.start(&id, input(true)).await.unwrap();
    eventually(
        "the first search attempt",
        Duration::from_secs(30),
        || async { (!fake.requests().is_empty()).then_some(()) },
    )
    .await;
    first.kill();
    let _second = worker_process(&settings, &fake.base_url, dir.path());
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed);
    assert_eq!(snap.similarity.unwrap().products[0].name, "second");
    assert_eq!(
        fake.requests().len(),
        2,
        "the killed attempt was retried once"
    );
}

fn seed_client(settings: &TemporalSettings, mode: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/seed_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("{}:{}", settings.host, settings.port))
        .arg(&settings.task_queue)
        .arg(mode)
        .output()
        .expect("python3 with temporalio (installed by scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "seed client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[tokio::test]
async fn the_python_sdk_drives_the_workflow_by_the_seeds_names_and_payloads() {
    let (settings, _gateway, _) = setup();
    let worker = TestWorker::plain(&settings);
    let settings_for_python = settings.clone();
    let seen = tokio::task::spawn_blocking(move || seed_client(&settings_for_python, "complete"))
        .await
        .unwrap();
    let result = &seen["result"];
    assert_eq!(result["state"]["status"], "completed");
    assert_eq!(result["state"]["metadata_stored"], true);
    assert_eq!(result["state"]["similarity_search_completed"], false);
    assert_eq!(seen["final_state"], result["state"]);
    let image_id = result["state"]["image_id"].as_str().expect("image_id");
    let doc = worker.store.get(image_id).await.unwrap().expect("document");
    assert_eq!(doc.workflow_id, seen["workflow_id"].as_str().unwrap());
}

#[tokio::test]
async fn the_python_sdk_cancels_by_the_seeds_signal() {
    let (settings, _gateway, _) = setup();
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(60))]).await;
    let _worker = TestWorker::with_lykdat(&settings, &fake.base_url, Duration::from_secs(90));
    let settings_for_python = settings.clone();
    let seen = tokio::task::spawn_blocking(move || seed_client(&settings_for_python, "cancel"))
        .await
        .unwrap();
    assert_eq!(seen["running_state"]["status"], "processing");
    assert_eq!(seen["outcome"], "CancelledError");
    assert_eq!(seen["final_state"]["status"], "cancelled");
}

#[tokio::test]
async fn the_worker_process_stops_cleanly_on_sigterm() {
    let (settings, gateway, id) = setup();
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut cmd = worker_command(&settings, "http://127.0.0.1:9", dir.path());
    cmd.env("WORKER_HEALTH_ADDR", format!("127.0.0.1:{port}"));
    let mut worker = ChildGuard::spawn(&mut cmd);
    gateway.start(&id, input(false)).await.unwrap();
    let done = finish(&gateway, &id).await;
    assert_eq!(
        done.execution,
        ExecutionStatus::Completed,
        "the worker process served the workflow"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "a polling worker is ready");
    let status = tokio::task::spawn_blocking(move || worker.terminate())
        .await
        .unwrap();
    assert!(
        status.success(),
        "worker exit status after SIGTERM: {status}"
    );
}

#[tokio::test]
async fn a_cancel_during_the_write_reports_cancelled_only_after_it_with_the_document_stored() {
    let (settings, gateway, id) = setup();
    let started = Arc::new(AtomicU32::new(0));
    let counter = started.clone();
    let worker = TestWorker::start(&settings, support::no_similarity(), move |s| {
        Arc::new(SlowStore {
            inner: Arc::new(s),
            delay: Duration::from_secs(3),
            started: counter,
        })
    });
    gateway.start(&id, input(true)).await.unwrap();
    support::eventually("the write to start", Duration::from_secs(30), || async {
        (started.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    gateway.signal_cancel(&id).await.unwrap();
    let snap = finish(&gateway, &id).await;
    assert_eq!(snap.execution, ExecutionStatus::Cancelled);
    let state = snap.state.expect("the final state");
    assert_eq!(state.status, ProcessingStatus::Cancelled);
    let image_id = state.image_id.expect("an image id");
    let stored = worker.store.get(&image_id).await.unwrap();
    assert!(stored.is_some(), "the write finished");
    assert!(
        state.metadata_stored,
        "metadata_stored says true for the document that was written"
    );
}
