//! The handlers: the seed's three endpoints, cancel, delete and list.

use super::{
    actions,
    auth::Caller,
    cache::Page,
    error::ApiError,
    filter::JobFilter,
    idempotency,
    list_index::PageQuery,
    model::{
        AttemptView, CancelResponse, ListOrder, ListQuery, ListResponse, ProcessRequest,
        ProcessResponse, ResultQuery, ResultResponse, RetryResponse, StateView, StatusResponse,
        TimelineResponse, TimelineStep, WorkflowSummary,
    },
    quota::{ANONYMOUS_CLIENT, CLIENT_LABEL},
    state::FacadeState,
};
use crate::{
    crd::{FINALIZER, ImageJob},
    temporal::{client::ExecutionStatus, contract::ProcessingStatus, error::TemporalError},
};
use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use std::{sync::Arc, time::Duration};

/// Default wait of the result endpoint.
pub const DEFAULT_RESULT_WAIT: Duration = Duration::from_secs(30);
/// Longest wait of the result endpoint.
pub const MAX_RESULT_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;

/// Parses a JSON body strictly: the content type must say JSON; errors name the field.
pub(super) fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::MalformedJson(inner.to_string());
        }
        let path = e.path().to_string();
        let message = inner.to_string();
        ApiError::field_error(field_name(&path, &message), message)
    })
}

/// The offending field of a serde data error: the path, or for a missing field the path of its
/// parent plus the name serde puts in the message.
fn field_name(path: &str, message: &str) -> String {
    let missing = message
        .split("missing field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next());
    match (missing, path) {
        (Some(name), ".") => name.to_owned(),
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, path) => path.to_owned(),
    }
}

pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        let message = e.body_text();
        ApiError::InvalidQuery {
            field: query_field(&message).unwrap_or("query").to_owned(),
            message,
        }
    })
}

/// The parameter a query rejection is about: an unknown one, or the one whose value is wrong
/// (axum names it before the reason: "Failed to deserialize query string: status: unknown
/// variant ...").
fn query_field(message: &str) -> Option<&str> {
    if let Some(rest) = message.split("unknown field `").nth(1) {
        return rest.split('`').next();
    }
    let reason = message.split_once("query string: ")?.1;
    let (field, _) = reason.split_once(": ")?;
    field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(field)
}

/// Start processing an image: creates an ImageJob; its controller starts the workflow.
#[utoipa::path(post, path = "/images/process", request_body = ProcessRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = "Makes retries safe: the same key with the same body returns the same workflow_id and creates nothing; with another body it is a 409")),
    responses((status = 202, body = ProcessResponse), (status = 400, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody, description = "Idempotency-Key already used with a different request"),
              (status = 415, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
              (status = 429, body = super::error::ErrorBody, description = "this client creates jobs faster than its rate (`rate_limited`) or has as many unfinished jobs as it may (`too_many_jobs`): retry after Retry-After"),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn process(
    State(state): State<Arc<FacadeState>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ProcessRequest = parse_json(&headers, &body)?;
    let user_labels = request.labels.clone().unwrap_or_default();
    let mut spec = request.into_spec(state.similarity_default)?;
    let client = caller.map_or_else(|| ANONYMOUS_CLIENT.to_owned(), |c| c.client_id());
    state.quota.admit(&client, state.cache.in_flight(&client))?;
    spec.ttl_seconds_after_finished = state.job_ttl.map(i64::from);
    let keyed = idempotency::keyed(&headers, &spec)?;
    let mut job = ImageJob::new("", spec);
    job.metadata = ObjectMeta {
        name: keyed.as_ref().map(|k| k.name.clone()),
        generate_name: keyed.is_none().then(|| "image-".into()),
        annotations: keyed.as_ref().map(|k| k.annotations.clone()),
        namespace: Some(state.namespace.clone()),
        labels: Some(
            user_labels
                .into_iter()
                .chain([
                    (
                        "app.kubernetes.io/created-by".to_owned(),
                        "imagejob-facade".to_owned(),
                    ),
                    (CLIENT_LABEL.to_owned(), client),
                ])
                .collect(),
        ),
        // Set now, so the controller need not add it: one apiserver request less per job.
        finalizers: Some(vec![FINALIZER.to_owned()]),
        ..Default::default()
    };
    let created = match (create_job(&state.api, &job).await, &keyed) {
        (Ok(created), _) => created,
        // The key was used before: the same request gets the same job, another is refused.
        (Err(kube::Error::Api(e)), Some(keyed)) if e.code == 409 => {
            let existing = state.api.get(&keyed.name).await?;
            idempotency::same_request(&existing, keyed)?;
            existing
        }
        (Err(e), _) => return Err(e.into()),
    };
    state.cache.remember(&created);
    let workflow_id = (created.workflow_id())
        .ok_or_else(|| ApiError::Unavailable("Kubernetes apiserver".into()))?;
    tracing::info!(name = %created.name_any(), %workflow_id, "image job created");
    let body = ProcessResponse {
        workflow_id,
        status: ProcessingStatus::Processing,
        message: "Image processing workflow started successfully".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Creates of a job with a generated name made before the facade gives up: the apiserver picks
/// a 5-character suffix and, when that name is taken, refuses the create with a 500
/// `ServerTimeout` ("please try again") rather than picking another. With 100,000 jobs in the
/// namespace that is about 1 create in 140; four collisions in a row, about 1 in 4 x 10^8.
const GENERATED_NAME_ATTEMPTS: usize = 4;

/// Creates `job`, again (with a new generated name) while its generated name was taken.
async fn create_job(api: &Api<ImageJob>, job: &ImageJob) -> Result<ImageJob, kube::Error> {
    let mut attempt = 1;
    loop {
        match api.create(&PostParams::default(), job).await {
            Err(kube::Error::Api(e))
                if generated_name_taken(job, &e) && attempt < GENERATED_NAME_ATTEMPTS =>
            {
                tracing::info!(attempt, "generated job name taken; creating again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether the apiserver refused `job`'s create because the name it generated exists.
fn generated_name_taken(job: &ImageJob, status: &kube::core::Status) -> bool {
    job.metadata.generate_name.is_some() && status.code == 500 && status.reason == "ServerTimeout"
}

/// How long a lookup that misses the cache waits for the watch to deliver the job. Another
/// replica may have created it a moment ago (read-your-writes across replicas): the apiserver
/// has committed it, and its watch event is on the way.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

/// The job behind a workflow id: from the cache, or, for a job created a moment ago (by this
/// replica or another) whose watch event has not arrived yet, once the watch delivers it.
async fn find(state: &FacadeState, workflow_id: &str) -> Result<Arc<ImageJob>, ApiError> {
    if let Some(job) = state.cache.get(workflow_id) {
        return Ok(job);
    }
    if !state.cache.is_ready() {
        return Err(ApiError::Unavailable(
            "the job cache is still filling".into(),
        ));
    }
    // Created by this replica: its name is known, read it straight from the apiserver.
    if let Some(name) = state.cache.name_of(workflow_id) {
        return match state.api.get_opt(&name).await? {
            Some(job) if job.runs(workflow_id) => Ok(Arc::new(job)),
            // Gone, or another job under its name now (an idempotency key used again).
            _ => Err(ApiError::NotFound(workflow_id.to_owned())),
        };
    }
    if !crate::crd::is_workflow_id(workflow_id) || state.cache.was_deleted(workflow_id) {
        return Err(ApiError::NotFound(workflow_id.to_owned()));
    }
    let mut changes = state.cache.subscribe();
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        if let Some(job) = state.cache.get(workflow_id) {
            return Ok(job);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return Err(ApiError::NotFound(workflow_id.to_owned())),
        }
    }
}

/// The workflow's state (the seed's `get_status` shape), from the watch cache.
#[utoipa::path(get, path = "/images/workflow/{workflow_id}/status",
    params(("workflow_id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = StatusResponse), (status = 404, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn status(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
) -> Result<Json<StatusResponse>, ApiError> {
    let (view, attempts, job_deleted) = match find(&state, &workflow_id).await {
        Ok(job) => (StateView::of(&job), AttemptView::all_of(&job), false),
        Err(ApiError::NotFound(_)) => {
            let snapshot = from_temporal(&state, &workflow_id).await?;
            (StateView::of_snapshot(&snapshot), Vec::new(), true)
        }
        Err(e) => return Err(e),
    };
    Ok(Json(StatusResponse {
        state: view,
        attempts,
        workflow_id,
        job_deleted,
    }))
}

/// What Temporal still holds of a workflow whose ImageJob is gone (deleted, or its TTL ran
/// out): answered for as long as Temporal retains the workflow, 404 after that.
async fn from_temporal(
    state: &FacadeState,
    workflow_id: &str,
) -> Result<crate::temporal::client::WorkflowSnapshot, ApiError> {
    if !crate::crd::is_workflow_id(workflow_id) {
        return Err(ApiError::NotFound(workflow_id.to_owned()));
    }
    match state.gateway.snapshot(workflow_id).await {
        Ok(snapshot) => Ok(snapshot),
        Err(TemporalError::NotFound) => Err(ApiError::NotFound(workflow_id.to_owned())),
        Err(e) => {
            tracing::warn!(%workflow_id, error = %e, "Temporal lookup failed");
            Err(ApiError::Unavailable("Temporal".into()))
        }
    }
}

/// Waits until the workflow finished (woken by the watch, not polled) and returns its result
/// with all similarity results. When `timeout` runs out first, or the replica starts shutting
/// down: `202` with `done: false` and a `Retry-After` header.
#[utoipa::path(get, path = "/images/workflow/{workflow_id}/result",
    params(("workflow_id" = String, Path, description = "Workflow id"), ResultQuery),
    responses((status = 200, body = ResultResponse), (status = 202, body = ResultResponse, description = "still running when the wait ended (its timeout, or this replica shutting down): ask again after Retry-After"),
              (status = 400, body = super::error::ErrorBody, description = "invalid query parameter"),
              (status = 404, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted"),
              (status = 503, body = super::error::ErrorBody, description = "too many requests waiting on this replica (see Retry-After)")),
    security(("bearer" = [])))]
pub async fn result(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
    params: Result<Query<ResultQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let _place = state.limits.result_waiter()?;
    let _in_flight = InFlight::count(&state.metrics.result_waiters);
    let wait = params
        .timeout
        .map(|t| Duration::from_secs(t.into()))
        .unwrap_or(DEFAULT_RESULT_WAIT);
    if wait > MAX_RESULT_WAIT {
        return Err(ApiError::InvalidQuery {
            field: "timeout".into(),
            message: format!("timeout must be 0 to {} seconds", MAX_RESULT_WAIT.as_secs()),
        });
    }
    let mut changes = state.cache.subscribe_job(&workflow_id);
    let deadline = tokio::time::Instant::now() + wait;
    let job = loop {
        let job = match find(&state, &workflow_id).await {
            Ok(job) => job,
            Err(ApiError::NotFound(_)) => {
                return result_from_temporal(&state, workflow_id, deadline).await;
            }
            Err(e) => return Err(e),
        };
        if job.phase().is_terminal() {
            break job;
        }
        // A facade shutting down answers at once: the client asks again, at another replica.
        let woken = tokio::time::timeout_at(deadline, changes.changed());
        if !matches!(state.draining.or_drain(woken).await, Some(Ok(Ok(())))) {
            return Ok(still_running(ResultResponse {
                workflow_id,
                done: false,
                state: StateView::of(&job),
                similarity: None,
                similarity_skipped: None,
                job_deleted: false,
            }));
        }
    };
    let similarity = if job.spec.similarity_search
        && job
            .status
            .as_ref()
            .is_some_and(|s| s.similarity_search_completed)
    {
        match state.gateway.snapshot(&workflow_id).await {
            Ok(snapshot) => snapshot.similarity,
            Err(TemporalError::NotFound) => None,
            Err(e) => {
                tracing::warn!(%workflow_id, error = %e, "similarity results unavailable");
                return Err(ApiError::Unavailable("Temporal".into()));
            }
        }
    } else {
        None
    };
    let body = ResultResponse {
        workflow_id,
        done: true,
        state: StateView::of(&job),
        similarity,
        similarity_skipped: job
            .status
            .as_ref()
            .and_then(|s| s.similarity.as_ref())
            .and_then(|s| s.skipped_reason.clone()),
        job_deleted: false,
    };
    Ok(Json(body).into_response())
}

/// Counts a request in a gauge while it is answered.
struct InFlight(Gauge);

impl InFlight {
    fn count(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The result of a workflow whose ImageJob is gone (deleted while a client waited, or its TTL
/// ran out): from Temporal, waiting for the close until `deadline` if it still runs.
async fn result_from_temporal(
    state: &FacadeState,
    workflow_id: String,
    deadline: tokio::time::Instant,
) -> Result<Response, ApiError> {
    let mut snapshot = from_temporal(state, &workflow_id).await?;
    if snapshot.execution == ExecutionStatus::Running {
        let closed = tokio::time::timeout_at(deadline, state.gateway.wait_closed(&workflow_id));
        if let Some(Ok(Ok(closed))) = state.draining.or_drain(closed).await {
            snapshot = closed;
        }
    }
    let done = snapshot.execution != ExecutionStatus::Running;
    let body = ResultResponse {
        workflow_id,
        done,
        state: StateView::of_snapshot(&snapshot),
        similarity: snapshot.similarity,
        similarity_skipped: snapshot.similarity_skipped,
        job_deleted: true,
    };
    Ok(if done {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        still_running(body)
    })
}

/// `202` for a result asked for while the workflow still runs, with when to ask again.
fn still_running(body: ResultResponse) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Cancels a workflow and keeps its record: sets the ImageJob's `spec.status` to `Cancelled`;
/// the controller sends the `cancel` signal and the job ends `cancelled` with the workflow's
/// final state. Asking again is harmless; a finished job answers 409.
#[utoipa::path(post, path = "/images/workflow/{workflow_id}/cancel",
    params(("workflow_id" = String, Path, description = "Workflow id")),
    responses((status = 202, body = CancelResponse), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody, description = "the workflow already finished"),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find(&state, &workflow_id).await?;
    actions::cancel(&state, &job, &workflow_id).await?;
    let body = CancelResponse {
        workflow_id,
        status: "cancelling".into(),
        message: "Image processing workflow is being cancelled; its record is kept".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Retries a failed or cancelled job from the step that did not finish: raises the ImageJob's
/// `spec.retry`; the controller resumes the same workflow (Temporal's reset: a stored document
/// is not written again) and records the attempt that ended. Asking again while the retry is
/// pending is harmless; a job that is processing or completed answers 409.
#[utoipa::path(post, path = "/images/workflow/{workflow_id}/retry",
    params(("workflow_id" = String, Path, description = "Workflow id")),
    responses((status = 202, body = RetryResponse), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody, description = "the job is processing or completed"),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find(&state, &workflow_id).await?;
    let attempt = actions::retry(&state, &job, &workflow_id).await?;
    let body = RetryResponse {
        workflow_id,
        attempt,
        status: "retrying".into(),
        message: format!("attempt {attempt} resumes from the step that did not finish"),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Cancels a workflow and removes its record: deletes its ImageJob; the controller cancels the
/// running workflow first. Its status and result stay readable from Temporal.
#[utoipa::path(delete, path = "/images/workflow/{workflow_id}",
    params(("workflow_id" = String, Path, description = "Workflow id")),
    responses((status = 202, body = CancelResponse), (status = 404, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find(&state, &workflow_id).await?;
    actions::delete(&state, &job, &workflow_id).await?;
    let body = CancelResponse {
        workflow_id,
        status: "cancelling".into(),
        message: "Image processing workflow is being cancelled".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// One job as the list shows it (title, tags, times, state), from the watch cache.
#[utoipa::path(get, path = "/images/workflow/{workflow_id}",
    params(("workflow_id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = WorkflowSummary), (status = 404, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn summary(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
) -> Result<Json<WorkflowSummary>, ApiError> {
    let job = find(&state, &workflow_id).await?;
    WorkflowSummary::of(&job)
        .map(Json)
        .ok_or(ApiError::NotFound(workflow_id))
}

/// The workflow's steps with the times Temporal recorded them (the jobs page's timeline).
#[utoipa::path(get, path = "/images/workflow/{workflow_id}/timeline",
    params(("workflow_id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = TimelineResponse), (status = 404, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn timeline(
    State(state): State<Arc<FacadeState>>,
    Path(workflow_id): Path<String>,
) -> Result<Json<TimelineResponse>, ApiError> {
    // Only a job of this facade's namespace has its history read: never any other workflow of
    // the Temporal namespace.
    let created = find(&state, &workflow_id)
        .await?
        .metadata
        .creation_timestamp
        .clone();
    let recorded = match state.gateway.timeline(&workflow_id).await {
        Ok(steps) => steps,
        // A job whose workflow has not started yet has only its creation.
        Err(TemporalError::NotFound) => Vec::new(),
        Err(e) => {
            tracing::warn!(%workflow_id, error = %e, "Temporal history unavailable");
            return Err(ApiError::Unavailable("Temporal".into()));
        }
    };
    let created = created.map(|t| TimelineStep {
        step: "created".into(),
        at: t.0.to_string(),
    });
    let recorded = recorded.into_iter().filter_map(|entry| {
        let at = k8s_openapi::jiff::Timestamp::try_from(entry.at).ok()?;
        Some(TimelineStep {
            step: entry.step.into(),
            at: at.to_string(),
        })
    });
    Ok(Json(TimelineResponse {
        workflow_id,
        steps: created.into_iter().chain(recorded).collect(),
    }))
}

/// The page of cached jobs `params` asks for, of those `filter` (made from them) takes.
pub(super) fn page_of(
    state: &FacadeState,
    params: &ListQuery,
    filter: &JobFilter,
) -> Result<Page, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidQuery {
            field: "limit".into(),
            message: format!("limit must be 1 to {MAX_PAGE}"),
        });
    }
    let query = PageQuery {
        status: filter.status(),
        after: params.continue_token.as_deref(),
        newest_first: params.order.unwrap_or_default() == ListOrder::Newest,
        limit,
    };
    Ok(state.cache.page(&query, filter))
}

/// Lists workflows in pages, oldest (default) or newest first, by status, tag, text in the
/// title, creation time and label selector.
#[utoipa::path(get, path = "/images/workflows", params(ListQuery),
    responses((status = 200, body = ListResponse), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody, description = "missing bearer token"),
              (status = 403, body = super::error::ErrorBody, description = "token not accepted")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<FacadeState>>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let params = query(params)?;
    let filter = JobFilter::new(&params.filters())?;
    let page = page_of(&state, &params, &filter)?;
    let items = page
        .jobs
        .iter()
        .filter_map(|job| WorkflowSummary::of(job))
        .collect();
    Ok(Json(ListResponse {
        items,
        continue_token: page.next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ImageJobSpec;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// What the apiserver answers a create whose generated name exists (`CheckGeneratedNameError`).
    const NAME_TAKEN: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"The POST operation against ImageJob.imagejob.dev could not be completed at this time, please try again.","reason":"ServerTimeout","details":{"name":"POST","group":"imagejob.dev","kind":"ImageJob","retryAfterSeconds":0},"code":500}"#;

    /// An apiserver stand-in that refuses the first `taken` creates as name collisions, then
    /// creates; returns the API and the count of creates it was sent.
    fn apiserver(taken: usize) -> (Api<ImageJob>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let service = tower::service_fn(move |_request: http::Request<kube::client::Body>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (code, body) = if n < taken {
                (500, NAME_TAKEN.to_owned())
            } else {
                let mut job = ImageJob::new(&format!("image-{n}"), ImageJobSpec::default());
                job.metadata.uid = Some("0b4c3a52-55a4-4d7c-8a58-d1b9a0c5a111".into());
                (201, serde_json::to_string(&job).unwrap_or_default())
            };
            async move {
                http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body.into_bytes()))
            }
        });
        let client = kube::Client::new(service, "jobs");
        (Api::namespaced(client, "jobs"), calls)
    }

    fn generated() -> ImageJob {
        let mut job = ImageJob::new("", ImageJobSpec::default());
        job.metadata.name = None;
        job.metadata.generate_name = Some("image-".into());
        job
    }

    #[tokio::test]
    async fn a_taken_generated_name_is_created_again() {
        let (api, calls) = apiserver(2);
        let created = create_job(&api, &generated()).await.expect("created");
        assert_eq!(created.name_any(), "image-2");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_create_gives_up_after_its_attempts() {
        let (api, calls) = apiserver(usize::MAX);
        let refused = create_job(&api, &generated()).await;
        assert!(matches!(refused, Err(kube::Error::Api(e)) if e.reason == "ServerTimeout"));
        assert_eq!(calls.load(Ordering::SeqCst), GENERATED_NAME_ATTEMPTS);
    }

    #[tokio::test]
    async fn a_named_job_is_not_created_again() {
        // An Idempotency-Key names the job: a collision there means something else.
        let (api, calls) = apiserver(1);
        let named = ImageJob::new("keyed", ImageJobSpec::default());
        assert!(create_job(&api, &named).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
