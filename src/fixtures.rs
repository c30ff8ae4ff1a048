//! Fakes for scenario tests (test builds only), as kube-rs's controller-rs keeps in its
//! `fixtures.rs`: an apiserver that holds ImageJobs in memory and answers the calls the
//! controller and the facade make (get, list, watch, create, merge / JSON / apply patches,
//! delete with finalizers, events), and a Temporal gateway whose workflows a test scripts. They
//! prove branches in milliseconds; the live stack proves the integration.

use crate::{
    crd::ImageJob,
    temporal::{
        client::{
            ClosedRun, Dispatch, ExecutionStatus, SearchingRun, StartOutcome, TimelineEntry, Unrun,
            WorkflowGateway, WorkflowSnapshot,
        },
        contract::{ImageProcessingInput, ProcessingStatus, WorkflowState},
        error::TemporalError,
    },
};
use async_trait::async_trait;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

type Body = UnsyncBoxBody<Bytes, Infallible>;
/// Where an open watch's events go.
type WatchSender = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// One request the fake apiserver answered: method, path and query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string.
    pub query: String,
}

#[derive(Default)]
struct Store {
    /// Jobs by namespace and name, as JSON.
    jobs: BTreeMap<(String, String), Value>,
    version: u64,
    seen: Vec<Seen>,
    /// Open watches: their namespace (all when `None`) and their event stream.
    watches: Vec<(Option<String>, WatchSender)>,
    /// Events recorded, as posted.
    events: Vec<Value>,
}

/// An apiserver holding ImageJobs in memory.
#[derive(Clone, Default)]
pub struct FakeApiServer(Arc<Mutex<Store>>);

/// Where a request goes.
enum Target {
    /// ImageJobs of a namespace (all when `None`), or one of them, or its status.
    Jobs {
        ns: Option<String>,
        name: Option<String>,
        status: bool,
    },
    /// Events of a namespace.
    Events,
    Other,
}

fn target(path: &str) -> Target {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis", "imagejob.dev", _, "imagejobs"] => Target::Jobs {
            ns: None,
            name: None,
            status: false,
        },
        [
            "apis",
            "imagejob.dev",
            _,
            "namespaces",
            ns,
            "imagejobs",
            rest @ ..,
        ] => Target::Jobs {
            ns: Some((*ns).to_owned()),
            name: rest.first().map(|n| (*n).to_owned()),
            status: rest.get(1) == Some(&"status"),
        },
        ["apis", "events.k8s.io", _, "namespaces", _, "events", ..] => Target::Events,
        _ => Target::Other,
    }
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn full(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .unwrap_or_default()
}

impl FakeApiServer {
    /// A client of this apiserver, with `default` as its default namespace.
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `job` as it is (its uid and versions as given), as if it had been created.
    pub fn put(&self, job: &ImageJob) {
        let mut value = serde_json::to_value(job).unwrap_or_default();
        let mut store = self.lock();
        store.version += 1;
        value["metadata"]["resourceVersion"] = json!(store.version.to_string());
        let key = key_of(&value);
        store.jobs.insert(key, value);
    }

    /// The job `ns/name` as the apiserver holds it now.
    pub fn job(&self, ns: &str, name: &str) -> Option<ImageJob> {
        let store = self.lock();
        let value = store.jobs.get(&(ns.to_owned(), name.to_owned()))?;
        serde_json::from_value(value.clone()).ok()
    }

    /// The jobs of namespace `ns`, by name.
    pub fn jobs(&self, ns: &str) -> Vec<ImageJob> {
        self.lock()
            .jobs
            .iter()
            .filter(|((job_ns, _), _)| job_ns == ns)
            .filter_map(|(_, job)| serde_json::from_value(job.clone()).ok())
            .collect()
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The reasons of the events recorded so far.
    pub fn event_reasons(&self) -> Vec<String> {
        self.lock()
            .events
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, request: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.lock().seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
        });
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match (target(&path), parts.method) {
            (Target::Jobs { ns, name: None, .. }, Method::GET) if query.contains("watch=true") => {
                self.watch(ns)
            }
            (Target::Jobs { ns, name: None, .. }, Method::GET) => self.list(ns.as_deref()),
            (
                Target::Jobs {
                    ns: Some(ns),
                    name: Some(name),
                    ..
                },
                Method::GET,
            ) => match self.job_value(&ns, &name) {
                Some(job) => full(StatusCode::OK, &job),
                None => not_found(&name),
            },
            (
                Target::Jobs {
                    ns: Some(ns),
                    name: None,
                    ..
                },
                Method::POST,
            ) => self.create(&ns, body),
            (
                Target::Jobs {
                    ns: Some(ns),
                    name: Some(name),
                    status,
                },
                Method::PATCH,
            ) => self.patch(&ns, &name, status, &content_type, body),
            (
                Target::Jobs {
                    ns: Some(ns),
                    name: Some(name),
                    ..
                },
                Method::DELETE,
            ) => self.delete(&ns, &name),
            (Target::Events, Method::POST | Method::PATCH) => {
                self.lock().events.push(body.clone());
                full(StatusCode::CREATED, &body)
            }
            _ => full(
                StatusCode::NOT_FOUND,
                &status_body(StatusCode::NOT_FOUND, "NotFound", "not served by the fake"),
            ),
        }
    }

    fn job_value(&self, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .jobs
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    fn list(&self, ns: Option<&str>) -> Response<Body> {
        let store = self.lock();
        let items: Vec<&Value> = store
            .jobs
            .iter()
            .filter(|((job_ns, _), _)| ns.is_none_or(|ns| ns == job_ns))
            .map(|(_, job)| job)
            .collect();
        full(
            StatusCode::OK,
            &json!({
                "apiVersion": "imagejob.dev/v1alpha1", "kind": "ImageJobList",
                "metadata": {"resourceVersion": store.version.to_string()},
                "items": items,
            }),
        )
    }

    /// A watch that stays open and carries every later change of its namespace.
    fn watch(&self, ns: Option<String>) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded();
        self.lock().watches.push((ns, tx));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(rx).boxed_unsync())
            .unwrap_or_default()
    }

    /// Sends a watch event to the open watches of the job's namespace.
    fn notify(store: &mut Store, kind: &str, job: &Value) {
        let ns = job["metadata"]["namespace"].as_str().unwrap_or_default();
        let line = format!("{}\n", json!({"type": kind, "object": job}));
        store.watches.retain(|(watched, tx)| {
            if watched.as_deref().is_some_and(|w| w != ns) {
                return !tx.is_closed();
            }
            tx.unbounded_send(Ok(Frame::data(Bytes::from(line.clone()))))
                .is_ok()
        });
    }

    fn create(&self, ns: &str, mut job: Value) -> Response<Body> {
        let mut store = self.lock();
        let mut name = job["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty()
            && let Some(prefix) = job["metadata"]["generateName"].as_str()
        {
            name = format!(
                "{prefix}{}",
                &uuid::Uuid::new_v4().simple().to_string()[..5]
            );
            job["metadata"]["name"] = json!(name);
        }
        if name.is_empty() || store.jobs.contains_key(&(ns.to_owned(), name.clone())) {
            return full(
                StatusCode::CONFLICT,
                &status_body(StatusCode::CONFLICT, "AlreadyExists", &name),
            );
        }
        store.version += 1;
        let meta = &mut job["metadata"];
        meta["namespace"] = json!(ns);
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["resourceVersion"] = json!(store.version.to_string());
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-12-04T00:00:00Z");
        store.jobs.insert((ns.to_owned(), name), job.clone());
        Self::notify(&mut store, "ADDED", &job);
        full(StatusCode::CREATED, &job)
    }

    fn patch(
        &self,
        ns: &str,
        name: &str,
        status: bool,
        content_type: &str,
        patch: Value,
    ) -> Response<Body> {
        let mut store = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(mut job) = store.jobs.get(&key).cloned() else {
            return not_found(name);
        };
        let before_spec = job["spec"].clone();
        let stored_version = job["metadata"]["resourceVersion"].clone();
        if content_type.contains("json-patch") {
            // As the apiserver's: a `test` of null passes on a path that is absent.
            let ops: Vec<Value> = patch
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|op| {
                    let absent_null = op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"]
                            .as_str()
                            .is_some_and(|p| job.pointer(p).is_none());
                    !absent_null
                })
                .collect();
            let applied = serde_json::from_value::<json_patch::Patch>(Value::Array(ops))
                .map_err(|e| e.to_string())
                .and_then(|p| json_patch::patch(&mut job, &p).map_err(|e| e.to_string()));
            if let Err(e) = applied {
                return full(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &status_body(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e),
                );
            }
        } else if status {
            // Server-side apply of the status: the fields given replace ours.
            json_patch::merge(&mut job["status"], &patch["status"]);
            if let Some(version) = patch["metadata"].get("resourceVersion") {
                job["metadata"]["resourceVersion"] = version.clone();
            }
        } else {
            json_patch::merge(&mut job, &patch);
        }
        if job["metadata"]["resourceVersion"] != stored_version {
            // As the apiserver's: a patch naming another resourceVersion is refused.
            return conflict();
        }
        store.version += 1;
        job["metadata"]["resourceVersion"] = json!(store.version.to_string());
        if job["spec"] != before_spec {
            let generation = job["metadata"]["generation"].as_i64().unwrap_or(1);
            job["metadata"]["generation"] = json!(generation + 1);
        }
        let finalizers_left = job["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if job["metadata"]["deletionTimestamp"].is_string() && !finalizers_left {
            store.jobs.remove(&key);
            Self::notify(&mut store, "DELETED", &job);
        } else {
            store.jobs.insert(key, job.clone());
            Self::notify(&mut store, "MODIFIED", &job);
        }
        full(StatusCode::OK, &job)
    }

    fn delete(&self, ns: &str, name: &str) -> Response<Body> {
        let mut store = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        let Some(mut job) = store.jobs.get(&key).cloned() else {
            return not_found(name);
        };
        let has_finalizers = job["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        store.version += 1;
        job["metadata"]["resourceVersion"] = json!(store.version.to_string());
        if has_finalizers {
            job["metadata"]["deletionTimestamp"] = json!("2026-12-04T00:00:00Z");
            store.jobs.insert(key, job.clone());
            Self::notify(&mut store, "MODIFIED", &job);
        } else {
            store.jobs.remove(&key);
            Self::notify(&mut store, "DELETED", &job);
        }
        full(StatusCode::OK, &job)
    }
}

fn conflict() -> Response<Body> {
    full(
        StatusCode::CONFLICT,
        &status_body(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        ),
    )
}

fn key_of(job: &Value) -> (String, String) {
    let meta = &job["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn not_found(name: &str) -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        &status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{name} not found"),
        ),
    )
}

/// A Temporal gateway whose workflows are scripted: what a start creates, what each read says.
#[derive(Default)]
pub struct FakeGateway {
    workflows: Mutex<HashMap<String, Result<WorkflowSnapshot, TemporalError>>>,
    inputs: Mutex<HashMap<String, ImageProcessingInput>>,
    calls: Mutex<Vec<String>>,
    dispatches: Mutex<HashMap<String, Dispatch>>,
    /// Every call fails with this when set.
    down: Mutex<Option<TemporalError>>,
    /// Workflows no worker has taken yet: [`WorkflowGateway::stop_unrun`] terminates them.
    unrun: Mutex<HashSet<String>>,
}

impl FakeGateway {
    /// What reads of workflow `id` answer from now on.
    pub fn set(&self, id: &str, snapshot: Result<WorkflowSnapshot, TemporalError>) {
        lock(&self.workflows).insert(id.to_owned(), snapshot);
    }

    /// Marks workflow `id` as not yet taken by a worker: asked to stop, it is terminated.
    pub fn set_unrun(&self, id: &str) {
        lock(&self.unrun).insert(id.to_owned());
    }

    /// How the workflow `id` was started to be dispatched.
    pub fn dispatch_of(&self, id: &str) -> Option<Dispatch> {
        lock(&self.dispatches).get(id).cloned()
    }

    /// Makes every call fail with `error` (`None`: answer again).
    pub fn fail_with(&self, error: Option<TemporalError>) {
        *lock(&self.down) = error;
    }

    /// The calls made so far, as `"<method> <workflow id>"`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// How many calls of `method` were made.
    pub fn count(&self, method: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.split(' ').next() == Some(method))
            .count()
    }

    fn call(&self, method: &str, id: &str) -> Result<(), TemporalError> {
        lock(&self.calls).push(format!("{method} {id}"));
        match lock(&self.down).clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn read(&self, id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        lock(&self.workflows)
            .get(id)
            .cloned()
            .unwrap_or(Err(TemporalError::NotFound))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A workflow running with `state`.
pub fn running(state: WorkflowState) -> WorkflowSnapshot {
    WorkflowSnapshot {
        run_id: Some("run-1".into()),
        execution: ExecutionStatus::Running,
        start_time: Some(std::time::SystemTime::now()),
        close_time: None,
        state: Some(state),
        similarity: None,
        similarity_skipped: None,
        failure: None,
    }
}

/// A workflow closed as `execution` with `state`.
pub fn closed(execution: ExecutionStatus, state: WorkflowState) -> WorkflowSnapshot {
    WorkflowSnapshot {
        close_time: Some(std::time::SystemTime::now()),
        execution,
        ..running(state)
    }
}

#[async_trait]
impl WorkflowGateway for FakeGateway {
    async fn start_dispatched(
        &self,
        workflow_id: &str,
        input: ImageProcessingInput,
        dispatch: Dispatch,
    ) -> Result<StartOutcome, TemporalError> {
        self.call("start", workflow_id)?;
        lock(&self.dispatches).insert(workflow_id.to_owned(), dispatch);
        let already_started = lock(&self.workflows).contains_key(workflow_id);
        if !already_started {
            self.set(workflow_id, Ok(running(WorkflowState::default())));
            lock(&self.inputs).insert(workflow_id.to_owned(), input);
        }
        Ok(StartOutcome {
            run_id: Some("run-1".into()),
            already_started,
        })
    }

    async fn forget_catalog_image(&self, workflow_id: &str) -> Result<(), TemporalError> {
        self.call("forget_catalog_image", workflow_id)
    }

    async fn snapshot(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        self.call("snapshot", workflow_id)?;
        self.read(workflow_id)
    }

    async fn close_of(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        self.call("close_of", workflow_id)?;
        self.read(workflow_id)
    }

    async fn closed_since(&self, _since: SystemTime) -> Result<Vec<ClosedRun>, TemporalError> {
        self.call("closed_since", "")?;
        let workflows = lock(&self.workflows);
        let closed = workflows.iter().filter_map(|(id, read)| {
            let snapshot = read.as_ref().ok()?;
            (snapshot.execution != ExecutionStatus::Running).then(|| ClosedRun {
                workflow_id: id.clone(),
                run_id: snapshot.run_id.clone().unwrap_or_default(),
                start_time: snapshot.start_time,
                close_time: snapshot.close_time,
            })
        });
        Ok(closed.collect())
    }

    async fn searching(&self) -> Result<Vec<SearchingRun>, TemporalError> {
        self.call("searching", "")?;
        let workflows = lock(&self.workflows);
        let searching = workflows.iter().filter_map(|(id, read)| {
            let snapshot = read.as_ref().ok()?;
            let state = snapshot.state.as_ref()?;
            let running = snapshot.execution == ExecutionStatus::Running;
            (running && state.metadata_stored).then(|| SearchingRun {
                workflow_id: id.clone(),
                run_id: snapshot.run_id.clone().unwrap_or_default(),
                start_time: snapshot.start_time,
                image_id: state.image_id.clone().unwrap_or_default(),
            })
        });
        Ok(searching.collect())
    }

    async fn stop_unrun(&self, workflow_id: &str) -> Result<Unrun, TemporalError> {
        self.call("stop_unrun", workflow_id)?;
        if lock(&self.unrun).remove(workflow_id) {
            self.set(
                workflow_id,
                Ok(closed(ExecutionStatus::Cancelled, WorkflowState::default())),
            );
            return Ok(Unrun::Terminated);
        }
        self.read(workflow_id).map(|s| Unrun::Ran(s.execution))
    }

    async fn signal_cancel(&self, workflow_id: &str) -> Result<(), TemporalError> {
        self.call("signal_cancel", workflow_id)
    }

    async fn request_cancel(&self, workflow_id: &str) -> Result<(), TemporalError> {
        self.call("request_cancel", workflow_id)
    }

    async fn wait_closed(&self, _workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        // Scenario tests drive each reconcile themselves: no watch ever wakes one.
        std::future::pending().await
    }

    async fn follow(
        &self,
        _workflow_id: &str,
        _window: Duration,
        _progressed: &(dyn Fn() + Send + Sync),
    ) -> Result<WorkflowSnapshot, TemporalError> {
        std::future::pending().await
    }

    async fn timeline(&self, workflow_id: &str) -> Result<Vec<TimelineEntry>, TemporalError> {
        self.call("timeline", workflow_id)?;
        Ok(Vec::new())
    }

    async fn started_input(
        &self,
        workflow_id: &str,
    ) -> Result<ImageProcessingInput, TemporalError> {
        self.call("started_input", workflow_id)?;
        lock(&self.inputs)
            .get(workflow_id)
            .cloned()
            .ok_or(TemporalError::NotFound)
    }

    /// Resumes the workflow as a new run, `<run_id>-resumed`, running with the state it had.
    async fn resume(
        &self,
        workflow_id: &str,
        run_id: &str,
        _request_id: &str,
    ) -> Result<String, TemporalError> {
        self.call("resume", workflow_id)?;
        let before = self.read(workflow_id)?;
        let resumed = format!("{run_id}-resumed");
        let mut state = before.state.unwrap_or_default();
        state.status = ProcessingStatus::Processing;
        state.error = None;
        self.set(
            workflow_id,
            Ok(WorkflowSnapshot {
                run_id: Some(resumed.clone()),
                ..running(state)
            }),
        );
        Ok(resumed)
    }
}
