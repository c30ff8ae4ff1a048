//! The catalog similarity backend on a real Temporal server with a real worker: a job's top
//! match is its known near-duplicate, marked a duplicate by its perceptual hash, every kind of refused image
//! fails its own job with its reason while a good job beside it completes, and a worker
//! restarted on its folder keeps its catalog. Every image is served on 127.0.0.1; nothing is
//! fetched from anywhere else.

use imagejob_testkit as support;

use imagejob_operator::{
    fetch::FetchLimits,
    temporal::{
        client::{ExecutionStatus, TemporalGateway, WorkflowGateway, WorkflowSnapshot},
        connection::TemporalSettings,
        contract::ImageProcessingInput,
    },
};
use std::{process::Command, time::Duration};
use support::{
    ChildGuard, TestWorker,
    images::{ImageServer, garment, jpeg, png},
};

const CLOSE_WAIT: Duration = Duration::from_secs(90);

fn setup() -> (TemporalSettings, std::sync::Arc<TemporalGateway>) {
    support::init();
    let settings = support::temporal(&support::unique("similar-queue"));
    let gateway = support::gateway(&settings);
    (settings, gateway)
}

fn limits() -> FetchLimits {
    FetchLimits {
        timeout: Duration::from_secs(2),
        ..FetchLimits::default()
    }
}

/// Starts one job with a similarity search on `url` and returns its workflow id.
async fn start(gateway: &TemporalGateway, title: &str, url: String) -> String {
    let id = format!("image-processing-{}", uuid::Uuid::new_v4());
    let input = ImageProcessingInput {
        url,
        title: Some(title.to_owned()),
        similarity_search: true,
        ..Default::default()
    };
    gateway.start(&id, input).await.expect("start");
    id
}

/// Waits for the workflow `id` to close and returns its snapshot.
async fn closed(gateway: &TemporalGateway, id: &str) -> WorkflowSnapshot {
    tokio::time::timeout(CLOSE_WAIT, gateway.wait_closed(id))
        .await
        .expect("closed in time")
        .expect("wait_closed")
}

/// Runs one job with a similarity search on `url` and returns its closed snapshot.
async fn run(gateway: &TemporalGateway, title: &str, url: String) -> WorkflowSnapshot {
    let id = start(gateway, title, url).await;
    closed(gateway, &id).await
}

/// The products a catalog of six garments is made of: (file, title, picture).
fn products() -> Vec<(&'static str, &'static str, image::RgbImage)> {
    vec![
        ("red.png", "Red shirt", garment([200, 30, 30], 0, 0, 320)),
        ("blue.png", "Blue shirt", garment([30, 50, 200], 0, 0, 320)),
        (
            "green-stripes.png",
            "Green striped dress",
            garment([30, 150, 60], 2, 1, 320),
        ),
        (
            "black-trousers.png",
            "Black trousers",
            garment([25, 25, 25], 1, 0, 320),
        ),
        (
            "yellow-dots.png",
            "Yellow dotted shirt",
            garment([230, 200, 40], 0, 2, 320),
        ),
        (
            "purple-dress.png",
            "Purple dress",
            garment([120, 40, 150], 2, 0, 320),
        ),
    ]
}

fn serve_products(server: &ImageServer) {
    for (file, _, picture) in products() {
        server.put(file, png(&picture), "image/png");
    }
}

#[tokio::test]
async fn a_jobs_top_match_is_its_known_near_duplicate_marked_as_such() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    serve_products(&server);
    // The near-duplicate: the red shirt at 70 % scale, re-encoded as a JPEG of quality 60.
    let red = garment([200, 30, 30], 0, 0, 320);
    let smaller = image::imageops::resize(&red, 224, 224, image::imageops::FilterType::Triangle);
    server.put("red-small.jpg", jpeg(&smaller, 60), "image/jpeg");
    let _worker = TestWorker::with_catalog(&settings, &["127.0.0.1/32"], limits());

    let mut red_image_id = None;
    for (file, title, _) in products() {
        let snap = run(&gateway, title, server.url(file)).await;
        assert_eq!(
            snap.execution,
            ExecutionStatus::Completed,
            "{title}: {snap:?}"
        );
        if file == "red.png" {
            red_image_id = snap.state.and_then(|s| s.image_id);
        }
    }
    let snap = run(&gateway, "Red shirt, smaller", server.url("red-small.jpg")).await;
    assert_eq!(snap.execution, ExecutionStatus::Completed, "{snap:?}");
    let own_id = snap.state.as_ref().and_then(|s| s.image_id.clone());
    let results = snap.similarity.expect("similarity results");
    assert_eq!(results.backend.as_deref(), Some("catalog"));
    assert!(results.descriptor.is_some());
    assert_eq!(
        results.products.len(),
        6,
        "every other catalogued image: {results:?}"
    );
    let top = &results.products[0];
    assert_eq!(top.name, "Red shirt", "{results:?}");
    assert_eq!(top.image_id, red_image_id);
    assert_eq!(top.url.as_deref(), Some(server.url("red.png").as_str()));
    assert_eq!(top.matching_image, top.url);
    assert!(
        top.workflow_id
            .as_deref()
            .is_some_and(|w| w.starts_with("image-processing-"))
    );
    // The same picture rescaled and re-encoded keeps its perceptual hash; other products differ.
    assert!(top.duplicate, "{results:?}");
    assert!(
        results.products[1..].iter().all(|p| !p.duplicate),
        "{results:?}"
    );
    assert!(
        results.products.iter().all(|p| p.image_id != own_id),
        "never itself"
    );
    assert!(
        results
            .products
            .windows(2)
            .all(|w| w[0].score >= w[1].score)
    );

    let copy = run(&gateway, "Red shirt again", server.url("red.png")).await;
    let results = copy.similarity.expect("similarity results");
    assert_eq!(results.products[0].name, "Red shirt");
    assert!(results.products[0].duplicate, "{results:?}");
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    serve_products(&server);
    let _worker = TestWorker::with_catalog(&settings, &[], limits());
    let port = server.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/red.png"),
        format!("http://[::1]:{port}/red.png"),
        format!("http://localhost:{port}/red.png"),
    ] {
        let snap = run(&gateway, "loopback", url.clone()).await;
        assert_eq!(snap.execution, ExecutionStatus::Failed, "{url}");
        let error = snap.state.and_then(|s| s.error).unwrap_or_default();
        assert!(
            error.contains("resolves to a loopback address"),
            "{url}: {error}"
        );
    }
    assert_eq!(server.hits("red.png"), 0, "nothing was fetched");
}

#[tokio::test]
async fn each_bad_image_fails_its_own_job_with_its_reason_once_and_a_good_job_completes() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    serve_products(&server);
    let _worker = TestWorker::with_catalog(&settings, &["127.0.0.1/32"], limits());
    let cases = [
        (
            "redirect-to/127.0.0.2",
            "resolves to a loopback address (127.0.0.2)",
            "redirect-to",
        ),
        ("big", "image larger than 20 MiB", "big"),
        ("page.html", "not an image", "page.html"),
        (
            "bomb.png",
            "exceeds the limit of 40000000 pixels",
            "bomb.png",
        ),
    ];
    let bad = cases
        .iter()
        .map(|(path, _, _)| run(&gateway, path, server.url(path)));
    let good = run(&gateway, "Red shirt", server.url("red.png"));
    let (bad, good) = tokio::join!(futures::future::join_all(bad), good);
    assert_eq!(good.execution, ExecutionStatus::Completed, "{good:?}");
    for ((path, reason, counted), snap) in cases.iter().zip(bad) {
        assert_eq!(snap.execution, ExecutionStatus::Failed, "{path}");
        let error = snap.state.and_then(|s| s.error).unwrap_or_default();
        assert!(error.contains(reason), "{path}: {error}");
        assert_eq!(server.hits(counted), 1, "{path}: a refusal is not retried");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_is_retried_as_the_policy_says_then_fails() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    let _worker = TestWorker::with_catalog(&settings, &["127.0.0.1/32"], limits());
    let snap = run(&gateway, "hang", server.url("hang")).await;
    assert_eq!(snap.execution, ExecutionStatus::Failed);
    let error = snap.state.and_then(|s| s.error).unwrap_or_default();
    assert!(error.contains("did not answer within 2s"), "{error}");
    assert_eq!(server.hits("hang"), 3, "the seed's policy: 3 attempts");
}

/// `imagejob-operator worker` on `dir` (store and catalog), the catalog backend, loopback
/// allowed, describing with the classical descriptor.
fn worker_process(settings: &TemporalSettings, dir: &std::path::Path) -> ChildGuard {
    ChildGuard::spawn(worker_command(settings, dir).env_remove("IMAGE_MODEL_PATH"))
}

/// [`worker_process`] polling only the task queues `queues` names (`WORKER_QUEUES`).
fn worker_serving(settings: &TemporalSettings, dir: &std::path::Path, queues: &str) -> ChildGuard {
    ChildGuard::spawn(
        worker_command(settings, dir)
            .env_remove("IMAGE_MODEL_PATH")
            .env("WORKER_QUEUES", queues),
    )
}

fn worker_command(settings: &TemporalSettings, dir: &std::path::Path) -> Command {
    let mut command = Command::new(support::operator_bin());
    command
        .arg("worker")
        .env("TEMPORAL_HOST", &settings.host)
        .env("TEMPORAL_PORT", settings.port.to_string())
        .env("TEMPORAL_TASK_QUEUE", &settings.task_queue)
        .env("METADATA_STORE", "embedded")
        .env("EMBEDDED_STORE_PATH", dir.join("metadata.redb"))
        .env("SIMILARITY_BACKEND", "auto")
        .env_remove("LYKDAT_API_KEY")
        .env("IMAGE_FETCH_ALLOW_CIDRS", "127.0.0.1/32")
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test]
async fn a_restarted_worker_keeps_its_catalog() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    serve_products(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut first = worker_process(&settings, dir.path());
    let red = run(&gateway, "Red shirt", server.url("red.png")).await;
    assert_eq!(red.execution, ExecutionStatus::Completed, "{red:?}");
    assert!(
        red.similarity
            .is_some_and(|r| r.backend.as_deref() == Some("catalog")),
        "auto without a Lykdat key is the catalog"
    );
    first.kill();
    assert!(dir.path().join("catalog.redb").exists(), "beside the store");
    let _second = worker_process(&settings, dir.path());
    let copy = run(&gateway, "Red shirt again", server.url("red.png")).await;
    let results = copy.similarity.expect("similarity results");
    assert_eq!(results.products.len(), 1, "{results:?}");
    assert_eq!(results.products[0].name, "Red shirt");
    assert!(results.products[0].duplicate);
}

#[tokio::test]
async fn with_the_model_installed_the_worker_describes_images_with_it() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    serve_products(&server);
    let red = garment([200, 30, 30], 0, 0, 320);
    let cropped = image::imageops::crop_imm(&red, 24, 24, 272, 272).to_image();
    server.put("red-cropped.jpg", jpeg(&cropped, 70), "image/jpeg");
    let dir = tempfile::tempdir().unwrap();
    let model = support::model_path();
    let _worker =
        ChildGuard::spawn(worker_command(&settings, dir.path()).env("IMAGE_MODEL_PATH", &model));
    for (file, title, _) in products() {
        let snap = run(&gateway, title, server.url(file)).await;
        assert_eq!(
            snap.execution,
            ExecutionStatus::Completed,
            "{title}: {snap:?}"
        );
    }
    let snap = run(
        &gateway,
        "Red shirt, cropped",
        server.url("red-cropped.jpg"),
    )
    .await;
    let results = snap.similarity.expect("similarity results");
    assert_eq!(
        results.descriptor.as_deref(),
        Some("efficientnet-lite0+colour-histogram")
    );
    assert_eq!(results.products[0].name, "Red shirt", "{results:?}");
}

#[tokio::test]
async fn the_catalogs_owner_serves_the_searches_of_workflows_another_worker_runs() {
    let (settings, gateway) = setup();
    let server = ImageServer::start().await;
    serve_products(&server);
    let workflows_dir = tempfile::tempdir().unwrap();
    let owner_dir = tempfile::tempdir().unwrap();
    let _workflows = worker_serving(&settings, workflows_dir.path(), "workflows");
    let mut owner = worker_serving(&settings, owner_dir.path(), "similarity");

    let red_id = start(&gateway, "Red shirt", server.url("red.png")).await;
    let red = closed(&gateway, &red_id).await;
    assert_eq!(red.execution, ExecutionStatus::Completed, "{red:?}");
    let blue = run(&gateway, "Blue shirt", server.url("blue.png")).await;
    let results = blue.similarity.expect("similarity results");
    assert_eq!(results.backend.as_deref(), Some("catalog"));
    assert_eq!(results.products[0].name, "Red shirt", "{results:?}");

    // The owner down: a job stores its document on the other worker, then its search waits
    // for the owner instead of failing, and runs when it is back.
    owner.kill();
    let copy_id = start(&gateway, "Red shirt again", server.url("red.png")).await;
    support::eventually("the copy's document stored", CLOSE_WAIT, || async {
        let snap = gateway.snapshot(&copy_id).await.ok()?;
        snap.state
            .filter(|s| s.metadata_stored && snap.execution == ExecutionStatus::Running)
            .map(drop)
    })
    .await;
    let _owner = worker_serving(&settings, owner_dir.path(), "similarity");
    let copy = closed(&gateway, &copy_id).await;
    assert_eq!(copy.execution, ExecutionStatus::Completed, "{copy:?}");
    let results = copy.similarity.expect("similarity results");
    let top = &results.products[0];
    assert_eq!(top.name, "Red shirt", "{results:?}");
    assert_eq!(top.workflow_id.as_deref(), Some(red_id.as_str()));
    assert!(top.duplicate, "{results:?}");
    assert_eq!(results.products.len(), 2, "red and blue: {results:?}");

    // One catalog, the owner's; the workflows' worker opened none, the owner no store.
    assert!(owner_dir.path().join("catalog.redb").exists());
    assert!(!workflows_dir.path().join("catalog.redb").exists());
    assert!(workflows_dir.path().join("metadata.redb").exists());
    assert!(!owner_dir.path().join("metadata.redb").exists());
}

mod deleted {
    use super::*;
    use imagejob_operator::{
        crd::{ImageJobSpec, Phase},
        temporal::contract::forget_workflow_id,
    };
    use kube::api::DeleteParams;
    use support::kube_env::{InProcessController, Setup, create, wait_gone, wait_phase};

    fn spec(title: &str, url: String) -> ImageJobSpec {
        ImageJobSpec {
            url,
            title: Some(title.to_owned()),
            similarity_search: true,
            ..support::kube_env::spec(true)
        }
    }

    fn match_names(job: &imagejob_operator::crd::ImageJob) -> Vec<String> {
        job.status
            .as_ref()
            .and_then(|s| s.similarity.as_ref())
            .map(|s| s.top_matches.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_deleted_jobs_image_is_removed_from_the_catalog_and_never_matched_again() {
        let s = Setup::new("forget").await;
        let server = ImageServer::start().await;
        serve_products(&server);
        let _worker = TestWorker::with_catalog(&s.settings, &["127.0.0.1/32"], limits());
        let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;
        let gateway = support::gateway(&s.settings);

        create(&s.api, "red", spec("Red shirt", server.url("red.png"))).await;
        let red = wait_phase(&s.api, "red", Phase::Completed).await;
        let red_workflow = red
            .status
            .and_then(|st| st.workflow_id)
            .expect("workflow id");
        create(
            &s.api,
            "red-2",
            spec("Red shirt, 2nd listing", server.url("red.png")),
        )
        .await;
        let second = wait_phase(&s.api, "red-2", Phase::Completed).await;
        assert_eq!(match_names(&second), ["Red shirt"]);

        s.api
            .delete("red", &DeleteParams::default())
            .await
            .expect("delete");
        wait_gone(&s.api, "red", Duration::from_secs(60)).await;
        let forget = forget_workflow_id(&red_workflow);
        support::eventually("the removal workflow completed", CLOSE_WAIT, || async {
            (gateway.execution(&forget).await.ok() == Some(ExecutionStatus::Completed))
                .then_some(())
        })
        .await;

        create(
            &s.api,
            "red-3",
            spec("Red shirt, 3rd listing", server.url("red.png")),
        )
        .await;
        let third = wait_phase(&s.api, "red-3", Phase::Completed).await;
        assert_eq!(
            match_names(&third),
            ["Red shirt, 2nd listing"],
            "the deleted job is matched no more"
        );
        // What was found before the delete stays as it was found.
        let second = s.api.get("red-2").await.expect("red-2");
        assert_eq!(match_names(&second), ["Red shirt"]);
    }
}
