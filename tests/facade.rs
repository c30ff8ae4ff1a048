//! The REST facade over a real apiserver; end to end with the controller and worker on the
//! real stack; schemathesis against its OpenAPI document.

use imagejob_testkit as support;

use imagejob_operator::{
    crd::{
        ImageJob, ImageJobStatus, MAX_DESCRIPTION_LEN, MAX_TAG_LEN, MAX_TITLE_LEN, MAX_URL_LEN,
        Phase,
    },
    facade::{CLIENT_LABEL, Limits, QuotaSettings},
    temporal::client::{ExecutionStatus, WorkflowGateway},
};
use kube::ResourceExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    TestWorker, eventually,
    facade_env::{TOKEN, TestFacade},
    kube_env::{self, InProcessController, Setup},
    lykdat::{FakeLykdat, Reply},
};

async fn setup(prefix: &str) -> (Setup, TestFacade) {
    let s = Setup::new(prefix).await;
    let facade = TestFacade::start(&s.client, &s.ns, &s.settings).await;
    (s, facade)
}

fn valid() -> Value {
    json!({"url": "https://example.com/image.jpg", "title": "Product Image", "description": "Blue shirt", "tags": ["clothing", "shirt"]})
}

async fn post(f: &TestFacade, body: &Value) -> (StatusCode, Value) {
    let (status, body, _) = post_with_retry_after(f, body).await;
    (status, body)
}

#[tokio::test]
async fn invalid_input_gets_a_json_error_naming_the_field_and_creates_nothing() {
    let (s, facade) = setup("invalid").await;
    let mut cases: Vec<(Value, u16, &str)> = vec![
        (json!({"url": "ftp://example.com/a.jpg"}), 422, "url"),
        (
            json!({"url": format!("https://e.com/{}", "a".repeat(2040))}),
            422,
            "url",
        ),
        (
            json!({"url": "https://e.com/a", "tags": vec!["t"; 33]}),
            422,
            "tags",
        ),
        (
            json!({"url": "https://e.com/a", "tags": ["ok", "x".repeat(65)]}),
            422,
            "tags[1]",
        ),
        (
            json!({"url": "https://e.com/a", "tags": [""]}),
            422,
            "tags[0]",
        ),
        (
            json!({"url": "https://e.com/a", "title": "t".repeat(257)}),
            422,
            "title",
        ),
        (
            json!({"url": "https://e.com/a", "description": "d".repeat(4097)}),
            422,
            "description",
        ),
        // Limits count bytes: 65 characters of 4 bytes each.
        (
            json!({"url": "https://e.com/a", "title": "\u{1F455}".repeat(65)}),
            422,
            "title",
        ),
        (
            json!({"url": "https://e.com/a", "colour": "blue"}),
            422,
            "colour",
        ),
        (json!({"title": "no url"}), 422, "url"),
        (
            json!({"url": "https://e.com/a", "tags": "shirt"}),
            422,
            "tags",
        ),
        (json!({"url": 42}), 422, "url"),
    ];
    for (body, code, field) in cases.drain(..) {
        let (status, err) = post(&facade, &body).await;
        assert_eq!(status.as_u16(), code, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(err["error"]["code"], "invalid_field");
    }
    let f = &facade;
    let raw = |ct: &'static str, body: Vec<u8>| {
        f.http
            .post(f.url("/images/process"))
            .header("content-type", ct)
            .body(body)
    };
    let huge = json!({"url": "https://e.com/a", "description": "d".repeat(100_000)});
    let requests = [
        (
            raw("application/json", b"{\"url\": ".to_vec()),
            400,
            "malformed_json",
        ),
        (
            raw("text/plain", valid().to_string().into_bytes()),
            415,
            "unsupported_media_type",
        ),
        (
            raw("application/json", huge.to_string().into_bytes()),
            413,
            "payload_too_large",
        ),
        (
            f.http.put(f.url("/images/process")),
            405,
            "method_not_allowed",
        ),
        (f.http.get(f.url("/nowhere")), 404, "no_route"),
        (
            f.http.get(f.url("/images/workflows?limit=0")),
            400,
            "invalid_query",
        ),
    ];
    for (request, status, code) in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{code}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        if code == "invalid_query" {
            assert_eq!(body["error"]["field"], "limit");
        }
    }

    assert_eq!(
        kube_env::count(&s.api).await,
        0,
        "a rejected request created a job"
    );
}

#[tokio::test]
async fn auth_requires_a_known_bearer_token() {
    let (s, facade) = setup("auth").await;
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(facade.url("/images/process"))
        .json(&valid())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unauthenticated"
    );
    let r = anonymous
        .get(facade.url("/images/workflows"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    let r = anonymous
        .get(facade.url("/images/workflows"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for open in ["/healthz", "/readyz", "/openapi.json", "/docs"] {
        assert_eq!(
            anonymous
                .get(facade.url(open))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{open}"
        );
    }
    // Metrics are on the admin port only, which neither the Service nor the Ingress publishes.
    let public_metrics = anonymous.get(facade.url("/metrics")).send().await.unwrap();
    assert_eq!(public_metrics.status(), 404);
    assert!(
        facade
            .metrics()
            .await
            .contains("imagejob_http_requests_total")
    );
    assert_eq!(kube_env::count(&s.api).await, 0);
}

#[tokio::test]
async fn unknown_workflow_ids_are_404() {
    let (s, facade) = setup("unknown").await;
    let id = format!("image-processing-{}", uuid::Uuid::new_v4());
    let foreign = format!("image-processing-{}", uuid::Uuid::new_v4());
    support::gateway(&s.settings)
        .start(&foreign, Default::default())
        .await
        .expect("a workflow started straight in Temporal");
    for (method, path) in [
        (
            reqwest::Method::GET,
            format!("/images/workflow/{id}/status"),
        ),
        (
            reqwest::Method::GET,
            format!("/images/workflow/{id}/result?timeout=1"),
        ),
        (reqwest::Method::DELETE, format!("/images/workflow/{id}")),
        (
            reqwest::Method::GET,
            "/images/workflow/not-even-an-id/status".to_owned(),
        ),
        (
            reqwest::Method::GET,
            format!("/images/workflow/{id}/timeline"),
        ),
        // A workflow of the Temporal namespace that is no job of this facade: its history is
        // not read.
        (
            reqwest::Method::GET,
            format!("/images/workflow/{foreign}/timeline"),
        ),
    ] {
        let r = facade
            .http
            .request(method.clone(), facade.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "not_found"
        );
    }
}

#[tokio::test]
async fn post_then_status_completes_and_result_equals_the_job_and_the_workflow() {
    let (s, facade) = setup("e2e").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[
        ("Blue Oxford", 0.93),
        ("Navy Tee", 0.71),
    ])])
    .await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(10));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut body = valid();
    body["similarity_search"] = json!(true);
    let (status, accepted) = post(&facade, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "processing");
    assert_eq!(
        accepted["message"],
        "Image processing workflow started successfully"
    );
    let workflow_id = accepted["workflow_id"].as_str().unwrap().to_owned();
    let job = s
        .api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .pop()
        .expect("one job created");
    assert_eq!(
        workflow_id,
        format!("image-processing-{}", job.uid().unwrap())
    );

    let status_path = format!("/images/workflow/{workflow_id}/status");
    let first: Value = facade.get_json(&status_path).await;
    assert_eq!(first["workflow_id"], workflow_id.as_str());
    let result: Value = facade
        .get_json(&format!("/images/workflow/{workflow_id}/result?timeout=60"))
        .await;
    assert_eq!(result["done"], true, "{result}");
    let final_status: Value = facade.get_json(&status_path).await;
    let state = &final_status["state"];
    assert_eq!(state["status"], "completed");
    assert_eq!(state["metadata_stored"], true);
    assert_eq!(state["similarity_search_completed"], true);
    assert_eq!(state["error"], Value::Null);
    assert_eq!(&result["state"], state);

    let job = s.api.get(&job.name_any()).await.unwrap();
    let job_status = job.status.unwrap();
    assert_eq!(job_status.phase, Phase::Completed);
    assert_eq!(state["image_id"], job_status.image_id.unwrap().as_str());
    let workflow = support::gateway(&s.settings)
        .snapshot(&workflow_id)
        .await
        .unwrap();
    assert_eq!(workflow.execution, ExecutionStatus::Completed);
    assert_eq!(
        result["similarity"],
        serde_json::to_value(workflow.similarity.unwrap()).unwrap()
    );
    assert_eq!(result["similarity"]["products"][0]["name"], "Blue Oxford");

    // The same uid spelled otherwise names no job, on every route alike.
    let uid = workflow_id.trim_start_matches("image-processing-");
    for other in [
        uid.to_uppercase(),
        format!("{{{uid}}}"),
        uid.replace('-', ""),
    ] {
        for tail in ["status", "result?timeout=1", "timeline"] {
            let path = format!("/images/workflow/image-processing-{other}/{tail}");
            let response = facade.http.get(facade.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
}

#[tokio::test]
async fn result_is_woken_by_the_watch_and_times_out_cleanly() {
    let (s, facade) = setup("wake").await;
    let fake =
        FakeLykdat::start(vec![Reply::ok(&[("a", 0.5)]).after(Duration::from_secs(4))]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(10));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut body = valid();
    body["similarity_search"] = json!(true);
    let (_, accepted) = post(&facade, &body).await;
    let workflow_id = accepted["workflow_id"].as_str().unwrap().to_owned();
    let result_url = |t: u64| {
        facade.url(&format!(
            "/images/workflow/{workflow_id}/result?timeout={t}"
        ))
    };

    let r = facade.http.get(result_url(1)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "1");
    let early: Value = r.json().await.unwrap();
    assert_eq!(early["done"], false);
    assert_eq!(early["state"]["status"], "processing");

    let waiting = tokio::spawn({
        let (http, url) = (facade.http.clone(), result_url(60));
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    let name = s.api.list(&Default::default()).await.unwrap().items[0].name_any();
    kube_env::wait_job(&s.api, &name, "Completed", Duration::from_secs(60), |j| {
        j.phase() == Phase::Completed
    })
    .await;
    let completed_at = tokio::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiting request answered right after completion, not at its timeout")
        .unwrap();
    assert!(completed_at.elapsed() < Duration::from_secs(3));
    assert_eq!(result["done"], true);
    assert_eq!(result["state"]["status"], "completed");
}

#[tokio::test]
async fn delete_cancels_a_running_job() {
    let (s, facade) = setup("cancel").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(120))]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut body = valid();
    body["similarity_search"] = json!(true);
    let (_, accepted) = post(&facade, &body).await;
    let workflow_id = accepted["workflow_id"].as_str().unwrap().to_owned();
    eventually(
        "the similarity search to run",
        Duration::from_secs(60),
        || async { (!fake.requests().is_empty()).then_some(()) },
    )
    .await;

    let name = kube_env::only_name(&s.api).await;
    // A client already waiting for the result gets the final, cancelled state, not a 404.
    let waiter = facade
        .http
        .get(facade.url(&format!(
            "/images/workflow/{workflow_id}/result?timeout=120"
        )))
        .send();
    let delete = async {
        eventually(
            "the result request to wait",
            Duration::from_secs(30),
            || async {
                let metrics = facade.metrics().await;
                metrics
                    .lines()
                    .any(|l| l == "imagejob_facade_result_waiters 1")
                    .then_some(())
            },
        )
        .await;
        facade
            .http
            .delete(facade.url(&format!("/images/workflow/{workflow_id}")))
            .send()
            .await
            .unwrap()
    };
    let (waited, r) = tokio::join!(waiter, delete);
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelling");
    let waited = waited.unwrap();
    assert_eq!(waited.status(), StatusCode::OK);
    let waited: Value = waited.json().await.unwrap();
    assert_eq!(waited["done"], true, "{waited}");
    assert_eq!(waited["state"]["status"], "cancelled", "{waited}");

    // Once the job is gone, its status still answers, from Temporal.
    kube_env::wait_gone(&s.api, &name, Duration::from_secs(60)).await;
    let status = facade
        .get_json(&format!("/images/workflow/{workflow_id}/status"))
        .await;
    assert_eq!(status["job_deleted"], true, "{status}");
    assert_eq!(status["state"]["status"], "cancelled", "{status}");
    assert_eq!(status["state"]["metadata_stored"], true, "{status}");
    let workflow = support::gateway(&s.settings)
        .snapshot(&workflow_id)
        .await
        .unwrap();
    assert_eq!(workflow.execution, ExecutionStatus::Cancelled);
}

/// The job's `GET .../status` answer once its state says `wanted`.
async fn status_once(facade: &TestFacade, workflow_id: &str, wanted: &str) -> Value {
    let path = format!("/images/workflow/{workflow_id}/status");
    let what = format!("{workflow_id} to be {wanted}");
    eventually(&what, Duration::from_secs(60), || async {
        let status = facade.get_json(&path).await;
        (status["state"]["status"] == wanted).then_some(status)
    })
    .await
}

/// Retry through the facade: a job cancelled during its search is retried by `POST .../retry`;
/// the same workflow resumes at the search (the document stays, the image id too) and completes;
/// its status lists both attempts; a retry of the completed job is a 409 naming why.
#[tokio::test]
async fn a_job_cancelled_mid_search_is_retried_by_post_and_completes_with_both_attempts() {
    let (s, facade) = setup("retry").await;
    let fake = FakeLykdat::start(vec![
        Reply::ok(&[]).after(Duration::from_secs(120)),
        Reply::ok(&[("Blue Oxford", 0.93)]),
    ])
    .await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut body = valid();
    body["similarity_search"] = json!(true);
    let (_, accepted) = post(&facade, &body).await;
    let workflow_id = accepted["workflow_id"].as_str().unwrap().to_owned();
    let path = |action: &str| facade.url(&format!("/images/workflow/{workflow_id}/{action}"));
    eventually(
        "the similarity search to run",
        Duration::from_secs(60),
        || async { (!fake.requests().is_empty()).then_some(()) },
    )
    .await;
    let r = facade.http.post(path("cancel")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let cancelled = status_once(&facade, &workflow_id, "cancelled").await;
    assert_eq!(cancelled["state"]["metadata_stored"], true, "{cancelled}");

    let r = facade.http.post(path("retry")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let retried: Value = r.json().await.unwrap();
    assert_eq!(
        (retried["attempt"].as_u64(), retried["status"].as_str()),
        (Some(2), Some("retrying"))
    );
    let done = status_once(&facade, &workflow_id, "completed").await;
    assert_eq!(
        done["state"]["image_id"], cancelled["state"]["image_id"],
        "{done}"
    );
    assert_eq!(done["state"]["similarity_search_completed"], true, "{done}");
    let attempts = done["attempts"].as_array().expect("attempts");
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| (a["attempt"].as_u64(), a["status"].as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [(Some(1), Some("cancelled")), (Some(2), Some("completed"))],
        "{done}"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a["started_at"].is_string() && a["finished_at"].is_string()),
        "{done}"
    );
    assert_eq!(fake.requests().len(), 2, "the search ran again, once");

    let r = facade.http.post(path("retry")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "not_retryable", "{refused}");
}

/// Filters and bulk actions on the real stack: jobs posted with labels and tags, the list
/// filtered by each, and a bulk cancel by label selector that cancels the running jobs of one
/// team the way a single cancel does (they end `cancelled`) and leaves the other team's.
#[tokio::test]
async fn the_list_filters_by_label_and_tag_and_a_bulk_cancel_ends_what_it_took() {
    let (s, facade) = setup("bulk").await;
    let fake = FakeLykdat::start(vec![Reply::ok(&[]).after(Duration::from_secs(120))]).await;
    let _worker = TestWorker::with_lykdat(&s.settings, &fake.base_url, Duration::from_secs(150));
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let mut ids = std::collections::BTreeMap::new();
    for (team, tag) in [("a", "shirt"), ("a", "shoe"), ("b", "shirt")] {
        let mut body = valid();
        body["similarity_search"] = json!(true);
        body["labels"] = json!({"team": team});
        body["tags"] = json!([tag]);
        let (status, accepted) = post(&facade, &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        let id = accepted["workflow_id"].as_str().unwrap().to_owned();
        ids.insert(id, (team, tag));
    }
    let listed = |query: &'static str| {
        let facade = &facade;
        async move {
            let page = facade.get_json(&format!("/images/workflows?{query}")).await;
            let mut found: Vec<String> = page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["workflow_id"].as_str().unwrap().to_owned())
                .collect();
            found.sort();
            found
        }
    };
    let expected = |keep: &dyn Fn(&str, &str) -> bool| -> Vec<String> {
        ids.iter()
            .filter(|(_, (team, tag))| keep(team, tag))
            .map(|(id, _)| id.clone())
            .collect()
    };
    eventually("all three listed", Duration::from_secs(20), || async {
        (listed("limit=10").await.len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        listed("label_selector=team%3Da").await,
        expected(&|team, _| team == "a")
    );
    assert_eq!(
        listed("tag=shirt").await,
        expected(&|_, tag| tag == "shirt")
    );
    assert_eq!(
        listed("tag=shirt&label_selector=team!%3Da").await,
        expected(&|team, tag| team == "b" && tag == "shirt")
    );
    eventually("the searches to run", Duration::from_secs(60), || async {
        (fake.requests().len() == 3).then_some(())
    })
    .await;

    let response = facade
        .http
        .post(facade.url("/images/workflows/cancel?label_selector=team%3Da"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["count"], 2, "{done}");
    let gateway = support::gateway(&s.settings);
    for (id, (team, _)) in &ids {
        let snapshot = gateway.snapshot(id).await.unwrap();
        if *team == "a" {
            let ended = gateway.wait_closed(id).await.unwrap();
            assert_eq!(ended.execution, ExecutionStatus::Cancelled, "{id}");
        } else {
            assert_eq!(
                snapshot.execution,
                ExecutionStatus::Running,
                "{id} was left running"
            );
        }
    }
    eventually(
        "the cancelled jobs to show it",
        Duration::from_secs(30),
        || async {
            (listed("status=cancelled").await == expected(&|team, _| team == "a")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn fifty_concurrent_posts_make_fifty_jobs_that_all_complete_and_list_in_pages() {
    let (s, facade) = setup("fifty").await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let posts = (0..50).map(|i| {
        let (http, url) = (facade.http.clone(), facade.url("/images/process"));
        async move {
            let body =
                json!({"url": format!("https://example.com/{i}.jpg"), "tags": [format!("n{i}")]});
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            r.json::<Value>().await.unwrap()["workflow_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let mut ids = futures::future::join_all(posts).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "50 distinct workflow ids");

    let listed = eventually(
        "50 completed jobs in the list",
        Duration::from_secs(120),
        || async {
            let mut seen = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut url = facade.url("/images/workflows?status=completed&limit=20");
                if let Some(t) = &token {
                    url.push_str(&format!(
                        "&continue={}",
                        url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
                    ));
                }
                let page: Value = facade.http.get(url).send().await.ok()?.json().await.ok()?;
                let items = page["items"].as_array()?;
                assert!(items.len() <= 20);
                seen.extend(
                    items
                        .iter()
                        .filter_map(|i| i["workflow_id"].as_str().map(str::to_owned)),
                );
                match page["continue"].as_str() {
                    Some(t) => token = Some(t.to_owned()),
                    None => break,
                }
            }
            (seen.len() == 50).then_some(seen)
        },
    )
    .await;
    let mut listed = listed;
    listed.sort();
    assert_eq!(listed, ids);
    assert_eq!(
        s.api.list(&Default::default()).await.unwrap().items.len(),
        50
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let (s, facade) = setup("fuzz").await;
    // Jobs the fuzzer creates complete at once, so its result calls do not wait out their timeout.
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    // Its cache goes to a scratch folder, not the work tree.
    let scratch = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("schemathesis")
        .current_dir(scratch.path())
        .args(["run", &facade.url("/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,positive_data_acceptance,negative_data_rejection"])
        .args(["--max-examples", "300", "--request-timeout", "10", "--phases", "examples,coverage,fuzzing"])
        // The event stream never ends by design; the jobs page test covers it.
        .args(["--exclude-path", "/images/events"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        // Limits are bytes, which the schema's maxLength (characters) cannot say: the hooks
        // keep generated bodies within them, so every check stays on.
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/schemathesis_byte_limits.py"),
        )
        .env(
            "IJ_BYTE_LIMITS",
            format!(
                "url={MAX_URL_LEN},title={MAX_TITLE_LEN},description={MAX_DESCRIPTION_LEN},tags={MAX_TAG_LEN}"
            ),
        )
        .output()
        .await
        .expect("schemathesis is installed by scripts/install-deps.sh");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
}

/// A facade replica as its own process (the chart's topology: several behind one Service).
fn facade_process(
    s: &Setup,
    tokens: &std::path::Path,
    extra: &[(&str, &str)],
) -> (support::ChildGuard, String, String) {
    let (port, admin_port) = (support::free_port(), support::free_port());
    let child = support::ChildGuard::spawn(
        std::process::Command::new(support::operator_bin())
            .arg("facade")
            .env("FACADE_ADDR", format!("127.0.0.1:{port}"))
            .env("FACADE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("FACADE_NAMESPACE", &s.ns)
            .env("FACADE_TOKENS_FILE", tokens)
            .env("TEMPORAL_HOST", &s.settings.host)
            .env("TEMPORAL_PORT", s.settings.port.to_string())
            .env("TEMPORAL_TASK_QUEUE", &s.settings.task_queue)
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied()),
    );
    (
        child,
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{admin_port}"),
    )
}

/// Waits until the facade at `base` answers `/readyz` with `code`.
async fn readyz_answers(http: &reqwest::Client, base: &str, code: u16) {
    eventually(
        &format!("{base}/readyz to answer {code}"),
        Duration::from_secs(30),
        || async {
            let r = http.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status().as_u16() == code).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn any_replica_answers_for_a_job_another_replica_just_accepted() {
    let s = Setup::new("replicas").await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("tokens");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (_a, replica_a, _) = facade_process(&s, &token_file, &[]);
    let (_b, replica_b, replica_b_admin) = facade_process(&s, &token_file, &[]);
    let http = reqwest::Client::new();
    for base in [&replica_a, &replica_b] {
        readyz_answers(&http, base, 200).await;
    }
    let mut not_found = Vec::new();
    let mut last_id = String::new();
    for i in 0..200 {
        let created: Value = http
            .post(format!("{replica_a}/images/process"))
            .bearer_auth(TOKEN)
            .json(&json!({"url": format!("https://example.com/{i}.jpg")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["workflow_id"]
            .as_str()
            .expect("a workflow id")
            .to_owned();
        let status = http
            .get(format!("{replica_b}/images/workflow/{id}/status"))
            .bearer_auth(TOKEN)
            .send();
        let result = http
            .get(format!(
                "{replica_b}/images/workflow/{id}/result?timeout=30"
            ))
            .bearer_auth(TOKEN)
            .send();
        let (status, result) = tokio::join!(status, result);
        let (status, result) = (status.unwrap(), result.unwrap());
        if status.status() == StatusCode::NOT_FOUND || result.status() == StatusCode::NOT_FOUND {
            not_found.push(id.clone());
        }
        assert!(
            status.status().is_success(),
            "status of {id} on replica B: {}",
            status.status()
        );
        assert_eq!(
            result.status(),
            StatusCode::OK,
            "result of {id} on replica B"
        );
        let result: Value = result.json().await.unwrap();
        assert_eq!(result["done"], true);
        assert_eq!(result["state"]["status"], "completed", "{result}");
        last_id = id;
    }
    assert!(not_found.is_empty(), "404s from replica B: {not_found:?}");

    // A timeline is read from Temporal's history: the replica's /metrics counts that call (the
    // SDK's client metrics, relayed beside its own).
    let history_reads = || async {
        let text = http
            .get(format!("{replica_b_admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let reads = text
            .lines()
            .filter(|l| l.starts_with("temporal_request_total{"))
            .filter(|l| l.contains("operation=\"GetWorkflowExecutionHistory\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
        Some((reads, text.contains("imagejob_http_requests_total")))
    };
    let (before, own) = history_reads().await.expect("replica B's metrics");
    assert!(own, "the facade's own metrics are served too");
    let timeline = http
        .get(format!("{replica_b}/images/workflow/{last_id}/timeline"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(timeline.status(), StatusCode::OK);
    let (after, _) = history_reads().await.expect("replica B's metrics");
    assert!(
        after > before,
        "the history read is not counted: {before} then {after}"
    );
}

#[tokio::test]
async fn the_api_explorer_loads_offline_in_chromium_and_lists_every_operation() {
    let (_s, facade) = setup("explorer").await;
    let url = facade.url("/docs/");
    let page = tokio::task::spawn_blocking(move || support::browser::load(&url))
        .await
        .unwrap();
    let mut paths: Vec<&str> = page
        .dom
        .split("opblock-summary-path\" data-path=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/images/events",
            "/images/process",
            "/images/workflow/{workflow_id}",
            "/images/workflow/{workflow_id}",
            "/images/workflow/{workflow_id}/cancel",
            "/images/workflow/{workflow_id}/result",
            "/images/workflow/{workflow_id}/retry",
            "/images/workflow/{workflow_id}/status",
            "/images/workflow/{workflow_id}/timeline",
            "/images/workflows",
            "/images/workflows/cancel",
            "/images/workflows/delete"
        ],
        "the explorer lists every operation"
    );
    assert!(page.dom.contains("Authorize"), "the bearer scheme is wired");
    assert!(
        page.page_requests
            .iter()
            .any(|u| u.ends_with("/openapi.json")),
        "{:?}",
        page.page_requests
    );
    let outside: Vec<_> = page
        .page_requests
        .iter()
        .filter(|u| !u.starts_with(&facade.base))
        .collect();
    assert!(
        outside.is_empty(),
        "requests leaving localhost: {outside:?}"
    );
    // No other site may frame it, and a token given to "Authorize" is not kept by the browser.
    let docs = facade.http.get(facade.url("/docs/")).send().await.unwrap();
    assert_eq!(
        docs.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    assert_eq!(docs.headers()["x-frame-options"], "DENY");
    let config = facade
        .http
        .get(facade.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        config.contains("\"persistAuthorization\": false"),
        "{config}"
    );
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_makes_one_job_on_any_replica() {
    let (s, facade) = setup("idempotent").await;
    let other_replica = TestFacade::start(&s.client, &s.ns, &s.settings).await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let send = |f: &TestFacade, key: &str, body: &Value| {
        f.http
            .post(f.url("/images/process"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
    };
    let first = send(&facade, "order-42", &valid()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    for f in [&facade, &other_replica] {
        let again = send(f, "order-42", &valid()).await.unwrap();
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["workflow_id"], first["workflow_id"]);
    }
    let mut different = valid();
    different["title"] = json!("Another image");
    let conflict = send(&facade, "order-42", &different).await.unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let conflict: Value = conflict.json().await.unwrap();
    assert_eq!(conflict["error"]["field"], "Idempotency-Key", "{conflict}");
    assert_eq!(kube_env::count(&s.api).await, 1, "one ImageJob");

    // Without the header nothing changes: two posts, two jobs.
    post(&facade, &valid()).await;
    post(&facade, &valid()).await;
    assert_eq!(kube_env::count(&s.api).await, 3);
}

#[tokio::test]
async fn a_job_whose_ttl_ran_out_still_answers_from_temporal() {
    let s = Setup::new("after-ttl").await;
    let facade = TestFacade::start_with_ttl(&s.client, &s.ns, &s.settings, Some(1)).await;
    let _worker = TestWorker::plain(&s.settings);
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
    let (_, accepted) = post(&facade, &valid()).await;
    let id = accepted["workflow_id"].as_str().unwrap().to_owned();
    let done = facade
        .get_json(&format!("/images/workflow/{id}/result?timeout=60"))
        .await;
    assert_eq!(done["state"]["status"], "completed", "{done}");
    assert_eq!(done["job_deleted"], false);
    let name = kube_env::only_name(&s.api).await;
    assert_eq!(
        s.api
            .get(&name)
            .await
            .unwrap()
            .spec
            .ttl_seconds_after_finished,
        Some(1),
        "facade jobs get the configured TTL"
    );
    kube_env::wait_gone(&s.api, &name, Duration::from_secs(60)).await;
    // The facade answers from its watch cache, which sees the controller's delete a moment
    // after the apiserver did.
    let status = eventually(
        "the facade to see the job deleted",
        Duration::from_secs(30),
        || async {
            let status = facade
                .get_json(&format!("/images/workflow/{id}/status"))
                .await;
            (status["job_deleted"] == true).then_some(status)
        },
    )
    .await;
    assert_eq!(
        status["state"], done["state"],
        "the same state as before the TTL"
    );
    let result = facade
        .get_json(&format!("/images/workflow/{id}/result"))
        .await;
    assert_eq!(result["done"], true);
    assert_eq!(result["state"], done["state"]);
}

/// SIGTERM, as in a rolling update: the replica reports itself not ready at once, answers a
/// waiting `result` at once (202, ask again), ends its event streams (browsers reconnect
/// elsewhere), still serves requests during its drain period, then exits cleanly.
#[tokio::test]
async fn a_replica_told_to_stop_drains_without_dropping_a_request() {
    let s = Setup::new("drain").await;
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("tokens");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // No controller: the job stays Pending, so a wait for its result lasts.
    let (mut replica, base, admin) =
        facade_process(&s, &token_file, &[("FACADE_DRAIN_SECS", "10")]);
    let http = reqwest::Client::new();
    readyz_answers(&http, &base, 200).await;
    let accepted: Value = support::json_of(
        http.post(format!("{base}/images/process"))
            .bearer_auth(TOKEN)
            .json(&json!({"url": "https://example.com/drain.jpg"})),
    )
    .await;
    let id = accepted["workflow_id"]
        .as_str()
        .expect("accepted")
        .to_owned();
    let waiting = tokio::spawn(
        http.get(format!("{base}/images/workflow/{id}/result?timeout=120"))
            .bearer_auth(TOKEN)
            .send(),
    );
    let events = http
        .get(format!("{base}/images/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let stream_ended = tokio::spawn(async move {
        let mut events = events;
        while events
            .chunk()
            .await
            .expect("the event stream ends cleanly, not cut")
            .is_some()
        {}
    });
    eventually(
        "the result request to wait",
        Duration::from_secs(30),
        || async {
            let metrics = http.get(format!("{admin}/metrics")).send().await.ok()?;
            let text = metrics.text().await.ok()?;
            text.lines()
                .any(|l| l == "imagejob_facade_result_waiters 1")
                .then_some(())
        },
    )
    .await;

    let exited = tokio::task::spawn_blocking(move || replica.terminate());
    readyz_answers(&http, &base, 503).await;
    let answered = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting result is answered when the drain starts, not after its 120 s")
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!(answered.status(), StatusCode::ACCEPTED);
    assert_eq!(
        answered.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["done"], false, "{body}");
    tokio::time::timeout(Duration::from_secs(20), stream_ended)
        .await
        .expect("the event stream ends when the drain starts")
        .unwrap();
    // Both ended while the replica still serves: within its drain, not at its end.
    let listed = http
        .get(format!("{base}/images/workflows"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("served while draining");
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        listed.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "a draining replica closes each connection after its answer"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .expect("the replica exits after its drain")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn waiters_and_event_streams_beyond_the_caps_get_503_with_retry_after() {
    let s = Setup::new("caps").await;
    let facade = TestFacade::start_with(
        &s.client,
        &s.ns,
        &s.settings,
        None,
        Limits::new(2, 1),
        QuotaSettings::default(),
    )
    .await;
    // No controller: the job stays unfinished, so every `/result` waits its whole timeout.
    let (status, accepted) = post(&facade, &valid()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let result = |timeout: u32| {
        let id = accepted["workflow_id"].as_str().unwrap().to_owned();
        facade
            .http
            .get(facade.url(&format!("/images/workflow/{id}/result?timeout={timeout}")))
    };
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(result(60).send())).collect();
    eventually("both waiters waiting", Duration::from_secs(20), || async {
        let metrics = facade.metrics().await;
        metrics
            .lines()
            .any(|l| l == "imagejob_facade_result_waiters 2")
            .then_some(())
    })
    .await;
    let refused = result(0).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "busy");
    // The waiters gone (their clients hung up), places are free again.
    waiting.iter().for_each(|w| w.abort());
    eventually(
        "a waiter admitted again",
        Duration::from_secs(20),
        || async { (result(0).send().await.ok()?.status() == StatusCode::ACCEPTED).then_some(()) },
    )
    .await;

    let stream = || facade.http.get(facade.url("/images/events")).send();
    let first = stream().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = stream().await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()["retry-after"], "1");
    drop(first);
    eventually(
        "a stream admitted again",
        Duration::from_secs(20),
        || async { (stream().await.ok()?.status() == StatusCode::OK).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_leaves_the_file() {
    let (_s, facade) = setup("revoked").await;
    let mut stream = facade
        .http
        .get(facade.url("/images/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let hello = stream.chunk().await.unwrap().expect("the hello event");
    assert!(String::from_utf8_lossy(&hello).contains("hello"));

    // The Secret rotated without the stream's token.
    let path = facade.tokens.path().join("tokens");
    std::fs::write(&path, "another-token-0123456789\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await
    .expect("the stream ended once its token was gone");
    let again = facade
        .http
        .get(facade.url("/images/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_facade_refused_by_the_apiserver_answers_502_not_the_callers_403() {
    let s = Setup::new("refused").await;
    // A user who may read ImageJobs in the namespace but not create them: the facade's cache
    // fills, its POST is refused by the apiserver.
    let user = support::unique("facade-readonly");
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "read-jobs"},
        "rules": [{"apiGroups": ["imagejob.dev"], "resources": ["imagejobs"],
                   "verbs": ["get", "list", "watch"]}]
    }))
    .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "read-jobs"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-jobs"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    let params = kube::api::PostParams::default();
    kube::Api::namespaced(s.client.clone(), &s.ns)
        .create(&params, &role)
        .await
        .unwrap();
    kube::Api::namespaced(s.client.clone(), &s.ns)
        .create(&params, &binding)
        .await
        .unwrap();
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user.clone());
    let readonly = kube::Client::try_from(config).unwrap();
    let facade = TestFacade::start(&readonly, &s.ns, &s.settings).await;

    let (status, body) = post(&facade, &valid()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "kubernetes_forbidden");
    assert!(
        !body.to_string().contains(&user),
        "the apiserver's words, naming the facade's identity, stay in the log: {body}"
    );
    assert_eq!(kube_env::count(&s.api).await, 0, "nothing was created");
}

/// A facade replica of `s`'s namespace with these create limits.
async fn facade_with_quota(s: &Setup, quota: QuotaSettings) -> TestFacade {
    TestFacade::start_with(
        &s.client,
        &s.ns,
        &s.settings,
        None,
        Limits::default(),
        quota,
    )
    .await
}

fn assert_too_many(
    status: StatusCode,
    body: &Value,
    headers_retry_after: Option<&str>,
    code: &str,
) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let wait: u64 = headers_retry_after
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(wait >= 1, "{wait}");
}

async fn post_with_retry_after(
    f: &TestFacade,
    body: &Value,
) -> (StatusCode, Value, Option<String>) {
    let r = f
        .http
        .post(f.url("/images/process"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry = (r.headers().get("retry-after"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test]
async fn a_client_past_its_create_rate_gets_429_with_retry_after() {
    let s = Setup::new("rate").await;
    let quota = QuotaSettings {
        per_second: 0.5,
        burst: 2,
        max_in_flight: 0,
    };
    let facade = facade_with_quota(&s, quota).await;
    for _ in 0..2 {
        let (status, body) = post(&facade, &valid()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let (status, body, retry) = post_with_retry_after(&facade, &valid()).await;
    assert_too_many(status, &body, retry.as_deref(), "rate_limited");
    assert_eq!(retry.as_deref(), Some("2"), "one create every 2 s");
    let jobs: kube::Api<ImageJob> = s.api.clone();
    let listed = jobs.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2, "the refused request created nothing");
}

#[tokio::test]
async fn a_clients_cap_of_unfinished_jobs_holds_across_replicas_and_frees_as_jobs_finish() {
    let s = Setup::new("inflight").await;
    let quota = QuotaSettings {
        per_second: 0.0,
        burst: 0,
        max_in_flight: 2,
    };
    let (a, b) = (
        facade_with_quota(&s, quota).await,
        facade_with_quota(&s, quota).await,
    );
    // No controller: the jobs stay Pending, unfinished.
    let mut names = Vec::new();
    for _ in 0..2 {
        let (status, body) = post(&a, &valid()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        names.push(body["workflow_id"].as_str().unwrap().to_owned());
    }
    let (status, body, retry) = post_with_retry_after(&a, &valid()).await;
    assert_too_many(status, &body, retry.as_deref(), "too_many_jobs");
    // The other replica counts them too, once its watch has delivered them.
    eventually(
        "replica b to see both jobs",
        Duration::from_secs(20),
        || async {
            let page = b.get_json("/images/workflows").await;
            (page["items"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;
    let (status, body, retry) = post_with_retry_after(&b, &valid()).await;
    assert_too_many(status, &body, retry.as_deref(), "too_many_jobs");
    let jobs = s.api.list(&Default::default()).await.unwrap().items;
    assert_eq!(jobs.len(), 2, "nothing created beyond the cap");
    let client = jobs[0].labels()[CLIENT_LABEL].clone();
    assert_eq!(
        client.len(),
        16,
        "a digest prefix, never the token: {client}"
    );
    assert!(!TOKEN.contains(&client));
    assert!(jobs.iter().all(|j| j.labels()[CLIENT_LABEL] == client));

    // One job finishes: one more may be created, on either replica.
    let mut finished = jobs[0].clone();
    finished.status = Some(ImageJobStatus {
        phase: Phase::Completed,
        ..Default::default()
    });
    s.api
        .replace_status(&finished.name_any(), &Default::default(), &finished)
        .await
        .unwrap();
    eventually(
        "replica b admits one more",
        Duration::from_secs(20),
        || async {
            let (status, _, _) = post_with_retry_after(&b, &valid()).await;
            (status == StatusCode::ACCEPTED).then_some(())
        },
    )
    .await;
    let (status, body, retry) = post_with_retry_after(&b, &valid()).await;
    assert_too_many(status, &body, retry.as_deref(), "too_many_jobs");
}

/// Reads from `stream` until the server closes it (or resets it); what it sent, and how long
/// the close took from `since`.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    since: std::time::Instant,
) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let bound = imagejob_operator::http::HEADER_READ_TIMEOUT + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(bound, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {bound:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        since.elapsed(),
    )
}

#[tokio::test]
async fn connections_that_send_no_headers_or_stall_in_them_are_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let (_s, facade) = setup("slowloris").await;
    let addr = facade.base.trim_start_matches("http://").to_owned();
    let limit = imagejob_operator::http::HEADER_READ_TIMEOUT;
    // A connection that sends nothing, and one that stops in the middle of its headers.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    stalled
        .write_all(b"GET /images/workflows HTTP/1.1\r\nHost: x\r\nAuthori")
        .await
        .unwrap();
    for (name, stream) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let (received, after) = read_until_closed(stream, started).await;
        assert!(
            !received.contains("200 OK"),
            "{name}: nothing was served: {received}"
        );
        assert!(
            after >= limit - Duration::from_secs(1),
            "{name}: closed after {after:?}, before the {limit:?} deadline"
        );
    }
    // The replica serves others all along.
    let listed = facade
        .http
        .get(facade.url("/images/workflows"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_creates_nothing() {
    use tokio::io::AsyncWriteExt;
    let (s, facade) = setup("slowbody").await;
    let addr = facade.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let head = format!(
        "POST /images/process HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"url\": \"https://e.com/a.jpg\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (received, after) = read_until_closed(&mut stream, started).await;
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("\"request_timeout\""), "{received}");
    assert!(
        after >= Duration::from_secs(9),
        "answered after {after:?}, before the body deadline"
    );
    let jobs = s.api.list(&Default::default()).await.unwrap();
    assert!(jobs.items.is_empty(), "nothing created");
}
