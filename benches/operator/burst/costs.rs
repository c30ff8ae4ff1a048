//! What each request a job makes costs the kube-apiserver and etcd, measured alone: [`EACH`] of
//! each kind in a namespace of their own, one watcher on its jobs (as the controller is), no
//! controller; the two processes' CPU over each kind, per request. The per-job cost of a path is
//! then the number of each it makes times these.

use super::{Bench, IN_FLIGHT, cpu, progress::Progress};
use futures::future::join_all;
use imagejob_operator::{
    controller::status,
    crd::{FIELD_MANAGER, FINALIZER, ImageJob, ImageJobSpec},
    temporal::{
        client::{ExecutionStatus, WorkflowSnapshot},
        contract::{ProcessingStatus, WorkflowState},
    },
};
use imagejob_testkit::kube_env::create_namespace;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};
use std::{future::Future, sync::Arc, time::SystemTime};
use tokio::sync::Semaphore;

/// Requests of each kind.
const EACH: usize = 500;

/// One kind's cost: apiserver and etcd CPU ms per request.
pub struct Cost {
    pub kind: &'static str,
    pub apiserver_ms: f64,
    pub etcd_ms: f64,
}

/// Runs `request(i)` for `0..EACH`, [`IN_FLIGHT`] at once.
async fn each<F, Fut>(request: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let tasks = (0..EACH).map(|i| {
        let (gate, request) = (gate.clone(), request(i));
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            request.await;
        })
    });
    for t in join_all(tasks).await {
        t.expect("request task");
    }
}

fn spec(i: usize) -> ImageJobSpec {
    ImageJobSpec {
        url: format!("https://example.com/{i}.jpg"),
        tags: vec!["bench".into()],
        ..Default::default()
    }
}

/// The status the controller writes first (a run started, nothing more known), and the one it
/// writes at the end (completed, the document stored).
fn statuses(job: &ImageJob) -> (Value, Value) {
    let id = job.workflow_id().expect("uid");
    let now = Time(Timestamp::now());
    let mut first = status::from_snapshot(
        job,
        &id,
        &WorkflowSnapshot::started("run-1".into(), SystemTime::now()),
        &now,
    );
    first.started_spec_digest = Some(status::spec_digest(&job.spec));
    let done = WorkflowSnapshot {
        execution: ExecutionStatus::Completed,
        close_time: Some(SystemTime::now()),
        state: Some(WorkflowState {
            image_id: Some(uuid::Uuid::new_v4().to_string()),
            status: ProcessingStatus::Completed,
            metadata_stored: true,
            ..Default::default()
        }),
        ..WorkflowSnapshot::started("run-1".into(), SystemTime::now())
    };
    let mut last = status::from_snapshot(job, &id, &done, &now);
    last.started_spec_digest = first.started_spec_digest.clone();
    let body = |s| json!({"apiVersion": ImageJob::api_version(&()), "kind": ImageJob::kind(&()), "status": s});
    (body(first), body(last))
}

/// Measures each kind; prints the table and returns the costs.
pub async fn run(bench: &Bench<'_>) -> Vec<Cost> {
    let ns = format!("burst-costs-{}", bench.run_id);
    create_namespace(bench.client, &ns).await;
    let api: Api<ImageJob> = Api::namespaced(bench.client.clone(), &ns);
    let _watcher = Progress::watch(bench.client, &ns);
    let meter = cpu::Meter::new(&[]);
    let mut costs = Vec::new();
    let mut measure = |kind: &'static str, before: cpu::Sample| {
        let mut spent = cpu::Spent::default();
        spent.add(&before, &meter.sample(), EACH);
        let ms = spent.per_job_ms();
        // Sample order: Temporal server, kube-apiserver, etcd, ...
        costs.push(Cost {
            kind,
            apiserver_ms: ms[1],
            etcd_ms: ms[2],
        });
    };
    eprintln!("request costs: {EACH} of each kind");

    let before = meter.sample();
    each(|i| {
        let api = api.clone();
        async move {
            let job = ImageJob::new(&format!("plain-{i}"), spec(i));
            api.create(&PostParams::default(), &job)
                .await
                .expect("create");
        }
    })
    .await;
    measure("create (no finalizer: kubectl's object)", before);

    let before = meter.sample();
    each(|i| {
        let api = api.clone();
        async move {
            let meta = ObjectMeta {
                name: Some(format!("claimed-{i}")),
                finalizers: Some(vec![FINALIZER.into()]),
                ..Default::default()
            };
            let job = ImageJob {
                metadata: meta,
                ..ImageJob::new("", spec(i))
            };
            api.create(&PostParams::default(), &job)
                .await
                .expect("create");
        }
    })
    .await;
    measure("create (finalizer set: the facade's object)", before);

    let before = meter.sample();
    each(|i| {
        let api = api.clone();
        async move {
            let patch = json!({"metadata": {"finalizers": [FINALIZER]}});
            let name = format!("plain-{i}");
            (api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await)
                .expect("finalizer patch");
        }
    })
    .await;
    measure("finalizer patch", before);

    let jobs: Vec<ImageJob> = api.list(&Default::default()).await.expect("list").items;
    let plain: Vec<ImageJob> = jobs
        .into_iter()
        .filter(|j| j.name_any().starts_with("plain-"))
        .collect();
    let bodies: Vec<(String, Value, Value)> = plain
        .iter()
        .map(|j| {
            let (first, last) = statuses(j);
            (j.name_any(), first, last)
        })
        .collect();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for (kind, pick) in [
        ("status write: Processing (server-side apply)", 1),
        ("status write: Completed (server-side apply)", 2),
    ] {
        let before = meter.sample();
        each(|i| {
            let (api, apply) = (api.clone(), apply.clone());
            let (name, first, last) = bodies[i].clone();
            async move {
                let body = if pick == 1 { first } else { last };
                (api.patch_status(&name, &apply, &Patch::Apply(&body)).await).expect("status");
            }
        })
        .await;
        measure(kind, before);
    }

    // The same two writes as a JSON patch of the status: the apiserver's update path, without
    // server-side apply's merge.
    let claimed: Vec<(String, Value, Value)> = (api.list(&Default::default()).await)
        .expect("list")
        .items
        .iter()
        .filter(|j| j.name_any().starts_with("claimed-"))
        .map(|j| {
            let (first, last) = statuses(j);
            (
                j.name_any(),
                first["status"].clone(),
                last["status"].clone(),
            )
        })
        .collect();
    for (kind, pick) in [
        ("status write: Processing (JSON patch)", 1),
        ("status write: Completed (JSON patch)", 2),
    ] {
        let before = meter.sample();
        each(|i| {
            let api = api.clone();
            let (name, first, last) = claimed[i].clone();
            async move {
                let status = if pick == 1 { first } else { last };
                let ops = json!([{"op": "add", "path": "/status", "value": status}]);
                let patch: Patch<()> =
                    Patch::Json(serde_json::from_value(ops).expect("a JSON patch"));
                (api.patch_status(&name, &PatchParams::default(), &patch)
                    .await)
                    .expect("status");
            }
        })
        .await;
        measure(kind, before);
    }

    let reporter = Reporter {
        controller: "imagejob-operator".into(),
        instance: Some("bench".into()),
    };
    let before = meter.sample();
    each(|i| {
        let (client, reporter) = (bench.client.clone(), reporter.clone());
        let reference = plain[i].object_ref(&());
        async move {
            let event = Event {
                type_: EventType::Normal,
                reason: "Completed".into(),
                note: Some(format!("image {i} processed")),
                action: "Reconcile".into(),
                secondary: None,
            };
            (Recorder::new(client, reporter)
                .publish(&event, &reference)
                .await)
                .expect("event");
        }
    })
    .await;
    measure("event (Completed)", before);

    let file = super::manifest(bench.data, &ns, "applied", EACH);
    let before = meter.sample();
    super::kubectl_apply(&ns, &file);
    measure(
        "kubectl apply, per object (a GET, a create with the last-applied annotation; discovery and OpenAPI once)",
        before,
    );

    println!("\nWhat each request costs the apiserver and etcd ({EACH} of each, one watcher)\n");
    println!("| request | kube-apiserver CPU ms | etcd CPU ms | together |");
    println!("|---|---|---|---|");
    for c in &costs {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            c.kind,
            c.apiserver_ms,
            c.etcd_ms,
            c.apiserver_ms + c.etcd_ms
        );
    }
    costs
}

/// The costs as JSON.
pub fn json(costs: &[Cost]) -> Value {
    Value::Array(
        costs
            .iter()
            .map(|c| json!({"request": c.kind, "apiserver_ms": c.apiserver_ms, "etcd_ms": c.etcd_ms}))
            .collect(),
    )
}
