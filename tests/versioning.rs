//! Worker Deployment Versioning on the real server: workflows started while build A (our Rust
//! worker) is the deployment's current version stay pinned to A and finish there after build B
//! becomes current, while new workflows run on B. Build B (`tests/python/build_b_worker.py`)
//! runs workflow code that could not replay A's histories: a non-deterministic change.

use imagejob_testkit as support;

use imagejob_operator::crd::Phase;
use serde_json::Value;
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};
use support::{
    ChildGuard, eventually,
    kube_env::{self, InProcessController, Setup, create, wait_job},
    lykdat::{FakeLykdat, Reply},
};

const WAIT: Duration = Duration::from_secs(90);

/// A worker process serving `build_id` of `deployment`.
fn worker(s: &Setup, deployment: &str, build_id: &str, lykdat: &str, dir: &Path) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(support::operator_bin())
            .arg("worker")
            .env("TEMPORAL_TASK_QUEUE", &s.settings.task_queue)
            .env("WORKER_DEPLOYMENT_NAME", deployment)
            .env("WORKER_BUILD_ID", build_id)
            .env("EMBEDDED_STORE_PATH", dir.join(format!("{build_id}.redb")))
            .env("LYKDAT_BASE_URL", lykdat)
            .env("LYKDAT_API_KEY", support::LYKDAT_KEY)
            .env("RUST_LOG", "warn"),
    )
}

/// Build B: the Python SDK's worker with incompatible workflow code.
fn python_worker(s: &Setup, deployment: &str, build_id: &str) -> ChildGuard {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/build_b_worker.py"
    );
    ChildGuard::spawn(
        Command::new("python3")
            .arg(script)
            .args([
                &s.settings.address(),
                &s.settings.task_queue,
                deployment,
                build_id,
            ])
            .stdout(Stdio::null()),
    )
}

fn temporal_cli(s: &Setup, args: &[&str]) -> Option<String> {
    support::temporal_cli(&s.settings.address(), args).ok()
}

/// Makes `build_id` the deployment's current version, once its worker has registered it.
async fn make_current(s: &Setup, deployment: &str, build_id: &str) {
    eventually(&format!("{build_id} to become current"), WAIT, || async {
        temporal_cli(
            s,
            &[
                "worker",
                "deployment",
                "set-current-version",
                "--deployment-name",
                deployment,
                "--build-id",
                build_id,
                "--yes",
            ],
        )
    })
    .await;
}

/// The build id a workflow is pinned to, from `temporal workflow describe`.
fn pinned_build(s: &Setup, workflow_id: &str) -> (String, String) {
    let out = temporal_cli(
        s,
        &[
            "workflow",
            "describe",
            "--output",
            "json",
            "-w",
            workflow_id,
        ],
    )
    .expect("describe the workflow");
    let described: Value = serde_json::from_str(&out).expect("describe JSON");
    let info = &described["workflowExtendedInfo"]["versioningInfo"];
    let info = if info.is_null() {
        &described["workflowExecutionInfo"]["versioningInfo"]
    } else {
        info
    };
    (
        info["behavior"].as_str().unwrap_or("").to_owned(),
        info["deploymentVersion"]["buildId"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

async fn workflow_id_when(s: &Setup, name: &str, phase: Phase) -> String {
    let job = wait_job(
        &s.api,
        name,
        &format!("{name} {}", phase.as_str()),
        WAIT,
        |j| j.phase() == phase,
    )
    .await;
    job.status
        .and_then(|st| st.workflow_id)
        .expect("workflow id")
}

#[tokio::test]
async fn running_workflows_finish_on_their_build_while_new_ones_run_on_the_next() {
    let s = Setup::new("versioning").await;
    let deployment = support::unique("imagejob-worker");
    let dir = tempfile::tempdir().unwrap();
    // Build A's search is slow enough to still run when B becomes current.
    let lykdat_a = FakeLykdat::start(vec![
        Reply::ok(&[("From Build A", 0.9)]).after(Duration::from_secs(8)),
    ])
    .await;
    let _a = worker(&s, &deployment, "A", &lykdat_a.base_url, dir.path());
    make_current(&s, &deployment, "A").await;
    let _controller = InProcessController::start(&s.client, &s.settings, &s.ns).await;

    create(&s.api, "on-a", kube_env::spec(true)).await;
    eventually("build A's search to start", WAIT, || async {
        (!lykdat_a.requests().is_empty()).then_some(())
    })
    .await;

    let _b = python_worker(&s, &deployment, "B");
    make_current(&s, &deployment, "B").await;
    create(&s.api, "on-b", kube_env::spec(true)).await;

    let id_b = workflow_id_when(&s, "on-b", Phase::Completed).await;
    let id_a = workflow_id_when(&s, "on-a", Phase::Completed).await;
    let job_a = s.api.get("on-a").await.unwrap().status.unwrap();
    assert_eq!(
        job_a.similarity.expect("results").top_matches[0].name,
        "From Build A",
        "the pinned workflow finished on build A's code"
    );
    assert_ne!(job_a.image_id.as_deref(), Some("from-build-b"));
    assert_eq!(
        lykdat_a.requests().len(),
        1,
        "build A served only its own workflow"
    );
    let job_b = s.api.get("on-b").await.unwrap().status.unwrap();
    assert_eq!(
        job_b.image_id.as_deref(),
        Some("from-build-b"),
        "the new workflow ran build B's code"
    );
    assert_eq!(
        pinned_build(&s, &id_a),
        ("VERSIONING_BEHAVIOR_PINNED".into(), "A".into())
    );
    assert_eq!(
        pinned_build(&s, &id_b),
        ("VERSIONING_BEHAVIOR_PINNED".into(), "B".into())
    );
}
