//! Completion notifications on the real stack: the controller process (configured by its
//! environment, as the chart configures it), the worker, a local sink that fails as scripted.
//! Every sink here is on loopback.

use imagejob_testkit as support;

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use hmac::{Hmac, Mac};
use imagejob_operator::crd::{
    CONDITION_NOTIFIED, DeliveryState, ImageJob, NotificationSink, NotifySpec, Phase,
};
use kube::ResourceExt;
use serde_json::Value;
use sha2::Sha256;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};
use support::{
    ControllerProcess, TestWorker, eventually,
    kube_env::{self, Setup, create, wait_job, wait_phase},
};

const KEY: &str = "notify-test-key-7d2f";
const WAIT: Duration = Duration::from_secs(60);

/// One request the sink received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct Script {
    /// Statuses to answer on each path, in order; the last repeats; 200 on other paths.
    statuses: HashMap<String, VecDeque<u16>>,
    /// `Retry-After` seconds sent with a 503.
    retry_after: u64,
    received: Vec<Received>,
}

/// A local HTTP sink answering from a script of statuses and recording what it received;
/// while held, it records each request and answers none until it is let go.
#[derive(Clone)]
struct Sink {
    base: String,
    script: Arc<Mutex<Script>>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

/// What the sink's handler reads.
#[derive(Clone)]
struct SinkState {
    script: Arc<Mutex<Script>>,
    open: tokio::sync::watch::Receiver<bool>,
}

impl Sink {
    /// A sink answering `path`'s requests with `statuses`, a 503 asking to wait `retry_after`.
    async fn start(path: &str, statuses: &[u16], retry_after: u64) -> Self {
        let script = Arc::new(Mutex::new(Script {
            statuses: [(path.to_owned(), statuses.iter().copied().collect())].into(),
            retry_after,
            ..Default::default()
        }));
        let (open, gate) = tokio::sync::watch::channel(true);
        let state = SinkState {
            script: script.clone(),
            open: gate,
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            script,
            open: Arc::new(open),
        }
    }

    /// Holds (false) or lets go (true) every answer.
    fn answer(&self, open: bool) {
        self.open.send_replace(open);
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn received(&self, path: &str) -> Vec<Received> {
        let script = self.script.lock().unwrap();
        let all = script.received.iter();
        all.filter(|r| r.path == path).cloned().collect()
    }
}

async fn receive(
    State(state): State<SinkState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, HeaderMap, &'static str) {
    let path = uri.path().trim_start_matches('/').to_owned();
    state.script.lock().unwrap().received.push(Received {
        path: path.clone(),
        headers,
        body: body.to_vec(),
    });
    let _ = state.open.clone().wait_for(|open| *open).await;
    let mut script = state.script.lock().unwrap();
    let status = match script.statuses.get_mut(&path) {
        Some(statuses) if statuses.len() > 1 => statuses.pop_front().unwrap_or(200),
        Some(statuses) => statuses.front().copied().unwrap_or(200),
        None => 200,
    };
    let mut answer = HeaderMap::new();
    if status == 503 {
        answer.insert(
            "retry-after",
            script.retry_after.to_string().parse().unwrap(),
        );
    }
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        answer,
        "",
    )
}

/// The controller process with notifications to `sink` (its `ops` path), job sinks allowed on
/// 127.0.0.1, at most `max_attempts`.
fn controller(s: &Setup, sink: &Sink, max_attempts: u32) -> ControllerProcess {
    ControllerProcess::start(
        &s.settings,
        &s.ns,
        &[
            ("NOTIFY_SINK_URL", sink.url("ops")),
            ("NOTIFY_ALLOWED_HOSTS", "127.0.0.1".into()),
            ("NOTIFY_SIGNING_KEY", KEY.into()),
            ("NOTIFY_MAX_ATTEMPTS", max_attempts.to_string()),
        ],
    )
}

fn signature_of(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn delivery(job: &ImageJob, sink: NotificationSink) -> imagejob_operator::crd::Notification {
    let status = job.status.as_ref().expect("status");
    (status.deliveries().iter())
        .find(|d| d.sink == sink)
        .cloned()
        .unwrap_or_else(|| panic!("a {sink:?} delivery in {status:?}"))
}

fn settled(job: &ImageJob) -> bool {
    let status = job.status.as_ref();
    let deliveries = status.map(|s| s.deliveries()).unwrap_or_default();
    !deliveries.is_empty() && deliveries.iter().all(|d| d.state != DeliveryState::Pending)
}

/// A sink that fails its first two attempts gets the CloudEvent on the third, signed; the job's
/// own (allowed) sink gets the same event; the status records both deliveries.
#[tokio::test]
async fn a_sink_failing_twice_gets_the_signed_cloudevent_on_the_third_attempt() {
    let s = Setup::new("notify").await;
    let sink = Sink::start("ops", &[503, 500, 200], 1).await;
    let _worker = TestWorker::plain(&s.settings);
    let ctl = controller(&s, &sink, 10);
    let mut spec = kube_env::spec(false);
    spec.notify = Some(Box::new(NotifySpec {
        sink: sink.url("own"),
    }));
    let created = create(&s.api, "shirt", spec).await;
    let job = wait_job(
        &s.api,
        "shirt",
        "every notification delivered",
        WAIT,
        settled,
    )
    .await;
    assert_eq!(job.phase(), Phase::Completed);

    let operator = delivery(&job, NotificationSink::Operator);
    assert_eq!(operator.state, DeliveryState::Delivered, "{operator:?}");
    assert_eq!(operator.failures, 2);
    assert!(operator.delivered_time.is_some());
    let own = delivery(&job, NotificationSink::Job);
    assert_eq!(own.state, DeliveryState::Delivered, "{own:?}");

    let attempts = sink.received("ops");
    assert_eq!(attempts.len(), 3, "two failures, then the delivery");
    let ids: Vec<Value> = (attempts.iter())
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one event id: {ids:?}");
    let last = attempts.last().unwrap();
    assert_eq!(last.headers["content-type"], "application/cloudevents+json");
    assert_eq!(
        last.headers["x-imagejob-signature"].to_str().unwrap(),
        signature_of(&last.body),
        "the HMAC-SHA256 of the body under the configured key"
    );
    let event: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "dev.imagejob.job.completed");
    assert_eq!(event["id"], format!("{}.1", created.uid().unwrap()));
    assert_eq!(
        event["source"],
        format!(
            "/apis/imagejob.dev/v1alpha1/namespaces/{}/imagejobs/shirt",
            s.ns
        )
    );
    let status = job.status.clone().unwrap();
    assert_eq!(event["subject"], status.workflow_id.clone().unwrap());
    assert_eq!(event["data"]["state"]["status"], "completed");
    assert_eq!(event["data"]["state"]["metadata_stored"], true);
    assert_eq!(
        event["data"]["state"]["image_id"],
        status.image_id.clone().unwrap()
    );
    let own_event: Value = serde_json::from_slice(&sink.received("own")[0].body).unwrap();
    assert_eq!(own_event["id"], event["id"]);

    let notified = job.condition(CONDITION_NOTIFIED).expect("Notified");
    assert_eq!(
        (notified.status.as_str(), notified.reason.as_str()),
        ("True", "Delivered")
    );
    let metrics = ctl.metrics().await.expect("metrics");
    let count = |outcome: &str| {
        metrics
            .get(&format!(
                "imagejob_controller_notifications_total{{outcome=\"{outcome}\"}}"
            ))
            .copied()
    };
    assert_eq!(
        (count("delivered"), count("retried")),
        (Some(2.0), Some(2.0))
    );
}

/// A sink that never accepts is given up after the configured attempts, and says so (status
/// condition, event, metric); a job's sink off the allow-list is not contacted at all. Neither
/// holds the job: it completed.
#[tokio::test]
async fn a_dead_sink_and_a_sink_off_the_allow_list_are_visible_and_never_hold_the_job() {
    let s = Setup::new("deadsink").await;
    let sink = Sink::start("ops", &[500], 1).await;
    let _worker = TestWorker::plain(&s.settings);
    let ctl = controller(&s, &sink, 2);
    let mut spec = kube_env::spec(false);
    // Loopback, but not 127.0.0.1: off the allow-list.
    spec.notify = Some(Box::new(NotifySpec {
        sink: sink.url("own").replace("127.0.0.1", "127.0.0.2"),
    }));
    create(&s.api, "shirt", spec).await;
    let job = wait_job(&s.api, "shirt", "every notification settled", WAIT, settled).await;
    assert_eq!(job.phase(), Phase::Completed, "the job is not held");

    let operator = delivery(&job, NotificationSink::Operator);
    assert_eq!(
        (operator.state, operator.failures),
        (DeliveryState::Failed, 2)
    );
    assert!(
        operator
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("HTTP 500"),
        "{operator:?}"
    );
    assert_eq!(sink.received("ops").len(), 2);
    let own = delivery(&job, NotificationSink::Job);
    assert_eq!(own.state, DeliveryState::Refused);
    assert!(
        own.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("allow-list"),
        "{own:?}"
    );
    assert!(sink.received("own").is_empty());

    let notified = job.condition(CONDITION_NOTIFIED).expect("Notified");
    assert_eq!(notified.status, "False");
    assert!(
        ["SinkFailed", "SinkNotAllowed"].contains(&notified.reason.as_str()),
        "{notified:?}"
    );
    let reasons = eventually("the events", Duration::from_secs(10), || async {
        let reasons = kube_env::event_reasons(&s.client, &s.ns, "shirt").await;
        (reasons.contains(&"NotificationFailed".to_owned())
            && reasons.contains(&"NotificationRefused".to_owned()))
        .then_some(reasons)
    })
    .await;
    assert!(reasons.contains(&"Completed".to_owned()), "{reasons:?}");
    let metrics = ctl.metrics().await.expect("metrics");
    let failed = "imagejob_controller_notifications_total{outcome=\"failed\"}";
    let refused = "imagejob_controller_notifications_total{outcome=\"refused\"}";
    assert_eq!(
        (metrics.get(failed), metrics.get(refused)),
        (Some(&1.0), Some(&1.0))
    );
}

/// At least once across a controller crash: the first attempt fails, the controller is killed
/// with the delivery still pending in the job's status, and the next controller delivers the
/// same event.
#[tokio::test]
async fn a_controller_killed_before_the_delivery_leaves_it_to_the_next_one() {
    let s = Setup::new("notifykill").await;
    // The first attempt is told to wait 8 s: the controller is killed within them.
    let sink = Sink::start("ops", &[503, 200], 8).await;
    let _worker = TestWorker::plain(&s.settings);
    let mut first = controller(&s, &sink, 10);
    create(&s.api, "shirt", kube_env::spec(false)).await;
    let pending = wait_job(&s.api, "shirt", "a failed first attempt", WAIT, |job| {
        (job.status
            .as_ref()
            .map(|s| s.deliveries())
            .unwrap_or_default()
            .iter())
        .any(|d| d.failures == 1 && d.state == DeliveryState::Pending)
    })
    .await;
    first.child.kill();
    assert_eq!(pending.phase(), Phase::Completed);
    assert_eq!(sink.received("ops").len(), 1);

    let _second = controller(&s, &sink, 10);
    let job = wait_phase(&s.api, "shirt", Phase::Completed).await;
    let job = wait_job(&s.api, &job.name_any(), "the delivery", WAIT, settled).await;
    let operator = delivery(&job, NotificationSink::Operator);
    assert_eq!(operator.state, DeliveryState::Delivered);
    let received = sink.received("ops");
    assert_eq!(received.len(), 2, "the failed attempt, then the delivery");
    let id = |r: &Received| serde_json::from_slice::<Value>(&r.body).unwrap()["id"].clone();
    assert_eq!(id(&received[0]), id(&received[1]), "the same event");
}

/// Deliveries hold no reconcile slot: with one slot and a sink that answers nothing, every job
/// still completes while the first deliveries wait on the sink.
#[tokio::test]
async fn a_sink_that_never_answers_holds_no_other_jobs_progress() {
    let s = Setup::new("slowsink").await;
    let sink = Sink::start("ops", &[200], 1).await;
    sink.answer(false);
    let _worker = TestWorker::plain(&s.settings);
    let _ctl = ControllerProcess::start(
        &s.settings,
        &s.ns,
        &[
            ("NOTIFY_SINK_URL", sink.url("ops")),
            ("NOTIFY_TIMEOUT_SECS", "300".into()),
            ("RECONCILE_CONCURRENCY", "1".into()),
        ],
    );
    let names = ["first", "second", "third"];
    create(&s.api, names[0], kube_env::spec(false)).await;
    eventually("the first delivery to reach the sink", WAIT, || async {
        (!sink.received("ops").is_empty()).then_some(())
    })
    .await;
    for name in &names[1..] {
        create(&s.api, name, kube_env::spec(false)).await;
    }
    for name in names {
        wait_phase(&s.api, name, Phase::Completed).await;
    }
    assert!(
        (s.api.get("first").await.unwrap()).notification_pending(),
        "the first delivery is still waiting on the sink"
    );
    sink.answer(true);
    for name in names {
        wait_job(&s.api, name, "its delivery", WAIT, settled).await;
    }
}
