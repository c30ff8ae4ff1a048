//! Router tests without a socket (`tower::ServiceExt::oneshot`, as axum's testing example does)
//! over the fake apiserver and the fake Temporal gateway (`crate::fixtures`): auth, validation
//! and the mapping of every error to its status and JSON body. The live stack proves the same
//! endpoints end to end (tests/facade.rs).

use super::{
    auth::Auth, cache::JobCache, drain::Draining, limits::Limits, metrics::FacadeMetrics,
    quota::CreateQuota, router::router, state::FacadeState,
};
use crate::{
    admin::{self, AdminRole},
    crd::{ImageJob, ImageJobStatus, Phase},
    fixtures::{FakeApiServer, FakeGateway},
};
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use tower::ServiceExt;

const NS: &str = "shop";
const TOKEN: &str = "router-test-token-5b8e";

struct Facade {
    api: FakeApiServer,
    state: Arc<FacadeState>,
    router: Router,
    _tokens: tempfile::TempDir,
}

/// The facade over the fakes, its cache filled from `jobs`.
async fn facade(jobs: &[ImageJob]) -> Facade {
    let api = FakeApiServer::default();
    for job in jobs {
        api.put(job);
    }
    let jobs: Api<ImageJob> = Api::namespaced(api.client(), NS);
    let (cache, driver) = JobCache::start(jobs.clone(), NS.into());
    tokio::spawn(driver);
    for _ in 0..200 {
        if cache.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cache.is_ready(), "the cache filled from the fake apiserver");
    let tokens = tempfile::tempdir().expect("tempdir");
    let path = tokens.path().join("tokens");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    let auth = Auth::from_file(path).expect("auth");
    let state = Arc::new(FacadeState {
        api: jobs,
        namespace: NS.into(),
        cache,
        gateway: Arc::new(FakeGateway::default()),
        similarity_default: false,
        job_ttl: None,
        metrics: Arc::new(FacadeMetrics::new()),
        temporal_ui_url: None,
        temporal_namespace: "default".into(),
        codec: None,
        draining: Draining::never(),
        limits: Limits::default(),
        quota: CreateQuota::new(Default::default()),
    });
    Facade {
        api,
        router: router(state.clone(), auth),
        state,
        _tokens: tokens,
    }
}

/// Sends one request; the status and the JSON body (`Null` when there is none).
async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("a request");
    let response = router.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Posts `request` to `/images/process` with the token; the status and the answer.
async fn post(f: &Facade, request: Value) -> (StatusCode, Value) {
    send(
        &f.router,
        "POST",
        "/images/process",
        Some(TOKEN),
        Some(request),
    )
    .await
}

/// Posts `request` to `/images/process`, which must accept it; its answer.
async fn accepted(f: &Facade, request: Value) -> Value {
    let (status, body) = post(f, request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

fn finished(name: &str, phase: Phase) -> ImageJob {
    let mut job = ImageJob::new(
        name,
        crate::crd::ImageJobSpec {
            url: "https://example.com/a.png".into(),
            ..Default::default()
        },
    );
    job.metadata.namespace = Some(NS.into());
    job.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    job.status = Some(ImageJobStatus {
        phase,
        workflow_id: job.workflow_id(),
        ..Default::default()
    });
    job
}

#[tokio::test]
async fn no_token_is_401_and_an_unknown_one_403_both_as_json() {
    let f = facade(&[]).await;
    let (status, body) = send(&f.router, "GET", "/images/workflows", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, body) = send(&f.router, "GET", "/images/workflows", Some("nope"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
}

#[tokio::test]
async fn a_post_with_a_bad_url_is_422_naming_the_field_and_creates_nothing() {
    let f = facade(&[]).await;
    let bad = json!({"url": "ftp://example.com/a.png"});
    let (status, body) = post(&f, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "url");
    assert!(f.api.seen().iter().all(|s| s.method != "POST"));
}

#[tokio::test]
async fn an_unknown_field_is_refused_naming_it() {
    let f = facade(&[]).await;
    let body = json!({"url": "https://example.com/a.png", "colour": "blue"});
    let (status, body) = send(
        &f.router,
        "POST",
        "/images/process",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(body["error"]["field"], "colour", "{body}");
}

#[tokio::test]
async fn a_post_creates_one_imagejob_and_answers_202_with_its_workflow_id() {
    let f = facade(&[]).await;
    let request = json!({"url": "https://example.com/a.png", "title": "A", "tags": ["x"]});
    let body = accepted(&f, request).await;
    assert_eq!(body["status"], "processing");
    let id = body["workflow_id"].as_str().expect("a workflow id");
    let jobs = f.api.jobs(NS);
    assert_eq!(jobs.len(), 1, "one ImageJob created");
    assert_eq!(jobs[0].workflow_id().as_deref(), Some(id));
    assert_eq!(jobs[0].spec.title.as_deref(), Some("A"));
    assert_eq!(jobs[0].spec.tags, vec!["x".to_owned()]);
}

#[tokio::test]
async fn an_unknown_workflow_is_404_as_json() {
    let f = facade(&[]).await;
    let (status, body) = send(
        &f.router,
        "GET",
        "/images/workflow/image-processing-00000000-0000-0000-0000-000000000000/status",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_bad_list_filter_is_400_naming_the_parameter() {
    let f = facade(&[]).await;
    for (uri, field) in [
        ("/images/workflows?status=finished", "status"),
        ("/images/workflows?order=sideways", "order"),
        ("/images/workflows?colour=blue", "colour"),
        ("/images/workflows?limit=0", "limit"),
    ] {
        let (status, body) = send(&f.router, "GET", uri, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["field"], field, "{uri}: {body}");
    }
}

#[tokio::test]
async fn the_list_filters_by_status_word() {
    let done = finished("done", Phase::Completed);
    let gone = finished("gone", Phase::Cancelled);
    let f = facade(&[done, gone]).await;
    let (status, body) = send(
        &f.router,
        "GET",
        "/images/workflows?status=cancelled",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<_> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|w| w["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("gone")]);
}

#[tokio::test]
async fn cancelling_a_finished_job_is_409_with_how_it_ended() {
    let job = finished("done", Phase::Completed);
    let id = job.workflow_id().expect("an id");
    let f = facade(&[job]).await;
    let uri = format!("/images/workflow/{id}/cancel");
    let (status, body) = send(&f.router, "POST", &uri, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_finished");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("(completed)")),
        "{body}"
    );
}

#[tokio::test]
async fn a_retry_raises_spec_retry_of_a_failed_or_cancelled_job_only() {
    let mut failed = finished("failed", Phase::Failed);
    failed.status.as_mut().expect("status").run_id = Some("run-1".into());
    let mut cancelled = finished("cancelled", Phase::Cancelled);
    cancelled.status.as_mut().expect("status").run_id = Some("run-1".into());
    cancelled.spec.status = Some(crate::crd::RequestedStatus::Cancelled);
    let done = finished("done", Phase::Completed);
    let f = facade(&[failed.clone(), cancelled.clone(), done.clone()]).await;
    let retry = |job: &ImageJob| format!("/images/workflow/{}/retry", job.workflow_id().unwrap());

    let (status, body) = send(&f.router, "POST", &retry(&failed), Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (body["attempt"].as_u64(), body["status"].as_str()),
        (Some(2), Some("retrying"))
    );
    assert_eq!(f.api.job(NS, "failed").and_then(|j| j.spec.retry), Some(1));

    let (status, body) = send(&f.router, "POST", &retry(&cancelled), Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let held = f.api.job(NS, "cancelled").expect("the job");
    assert_eq!(
        (held.spec.retry, held.spec.status),
        (Some(1), None),
        "the cancel is lifted"
    );

    let (status, body) = send(&f.router, "POST", &retry(&done), Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_retryable");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is completed")),
        "{body}"
    );
    assert_eq!(f.api.job(NS, "done").and_then(|j| j.spec.retry), None);
}

#[tokio::test]
async fn an_unknown_route_is_404_and_a_wrong_method_405_both_as_json() {
    let f = facade(&[]).await;
    let (status, body) = send(&f.router, "GET", "/nowhere", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, body) = send(&f.router, "PUT", "/images/process", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"]["code"].is_string(), "{body}");
}

#[tokio::test]
async fn the_admin_router_says_ready_and_counts_the_responses() {
    let f = facade(&[]).await;
    send(&f.router, "GET", "/images/workflows", None, None).await;
    let role: Arc<dyn AdminRole> = f.state.clone();
    let admin = admin::router(role);
    let (status, _) = send(&admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let response = admin
        .clone()
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("metrics");
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("text");
    assert!(
        text.contains("imagejob_http_requests_total{class=\"4xx\"} 1"),
        "{text}"
    );
}

/// A job as the facade creates it, with `labels`, `tags` and `title`, in `phase`.
fn labelled(name: &str, phase: Phase, labels: &[(&str, &str)], tags: &[&str]) -> ImageJob {
    let mut job = finished(name, phase);
    job.spec.tags = tags.iter().map(|t| (*t).into()).collect();
    job.spec.title = Some(format!("{name} title"));
    job.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    );
    job
}

/// The names a list or bulk answer lists.
fn names(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().or(i.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_list_filters_by_tag_text_and_label_selector() {
    let f = facade(&[
        labelled("a1", Phase::Processing, &[("team", "a")], &["shirt"]),
        labelled(
            "a2",
            Phase::Completed,
            &[("team", "a"), ("canary", "")],
            &["shoe"],
        ),
        labelled("b1", Phase::Processing, &[("team", "b")], &["shirt"]),
    ])
    .await;
    for (query, expected) in [
        ("tag=shirt", vec!["a1", "b1"]),
        ("text=A2%20TITLE", vec!["a2"]),
        ("label_selector=team%3Da", vec!["a1", "a2"]),
        ("label_selector=team%3Da,!canary", vec!["a1"]),
        ("label_selector=team!%3Da&status=processing", vec!["b1"]),
        ("tag=shirt&label_selector=team%3Db", vec!["b1"]),
    ] {
        let uri = format!("/images/workflows?{query}");
        let (status, body) = send(&f.router, "GET", &uri, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(names(&body, "items"), expected, "{query}");
    }
}

#[tokio::test]
async fn a_filtered_list_pages_with_continue() {
    let jobs: Vec<_> = (0..5)
        .map(|i| labelled(&format!("j{i}"), Phase::Processing, &[("team", "a")], &[]))
        .chain([labelled("other", Phase::Processing, &[("team", "b")], &[])])
        .collect();
    let f = facade(&jobs).await;
    let mut seen = Vec::new();
    let mut uri = "/images/workflows?label_selector=team%3Da&limit=2".to_owned();
    loop {
        let (status, body) = send(&f.router, "GET", &uri, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.extend(names(&body, "items"));
        match body["continue"].as_str() {
            Some(next) => {
                uri = format!("/images/workflows?label_selector=team%3Da&limit=2&continue={next}")
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["j0", "j1", "j2", "j3", "j4"]);
}

#[tokio::test]
async fn a_bulk_cancel_cancels_what_the_filter_takes_and_says_which_it_skipped() {
    let f = facade(&[
        labelled("run1", Phase::Processing, &[("team", "a")], &[]),
        labelled("run2", Phase::Pending, &[("team", "a")], &[]),
        labelled("done", Phase::Completed, &[("team", "a")], &[]),
        labelled("theirs", Phase::Processing, &[("team", "b")], &[]),
    ])
    .await;
    let uri = "/images/workflows/cancel?label_selector=team%3Da";
    let (status, body) = send(&f.router, "POST", uri, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 2, "{body}");
    assert_eq!(body["skipped"][0]["code"], "already_finished", "{body}");
    let cancelled = |name: &str| {
        f.api
            .job(NS, name)
            .is_some_and(|j| j.spec.cancel_requested())
    };
    assert!(cancelled("run1") && cancelled("run2"));
    assert!(!cancelled("done") && !cancelled("theirs"));
}

#[tokio::test]
async fn a_bulk_delete_deletes_what_the_filter_takes() {
    let f = facade(&[
        labelled("old", Phase::Completed, &[], &["catalog-2025"]),
        labelled("new", Phase::Completed, &[], &["catalog-2026"]),
    ])
    .await;
    let uri = "/images/workflows/delete?tag=catalog-2025&status=completed";
    let (status, body) = send(&f.router, "POST", uri, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    assert!(f.api.job(NS, "old").is_none());
    assert!(f.api.job(NS, "new").is_some());
}

#[tokio::test]
async fn labels_given_at_creation_are_set_checked_and_listed() {
    let f = facade(&[]).await;
    let request = json!({"url": "https://example.com/a.png", "labels": {"team": "a"}});
    accepted(&f, request).await;
    let job = f.api.jobs(NS).pop().expect("the job");
    assert_eq!(job.labels().get("team").map(String::as_str), Some("a"));
    assert!(job.labels().contains_key(super::CLIENT_LABEL), "ours kept");
    for bad in [
        json!({"imagejob.dev/client": "x"}),
        json!({"team": "not ok"}),
    ] {
        let request = json!({"url": "https://example.com/a.png", "labels": bad});
        let (status, body) = post(&f, request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], "labels");
    }
}
