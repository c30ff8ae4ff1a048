//! A secured Temporal: TLS with a private CA, mTLS and an API key, through a real TLS
//! terminator (nginx) in front of the dev server. Worker, controller and facade (`run`)
//! complete jobs through it, configured only by Temporal's own variables; a wrong CA, a missing
//! client certificate and a wrong API key each give a clear error in the job's status and the
//! log, and no crash; rotated credential files are picked up without a restart.

use imagejob_testkit as support;

use imagejob_operator::crd::{CONDITION_TEMPORAL_REACHABLE, ImageJob, Phase};
use serde_json::{Value, json};
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};
use support::{
    ChildGuard,
    kube_env::{self, Setup, create, wait_job},
    tls_proxy::{API_KEY, Pki, TlsProxy},
};

const JOB_WAIT: Duration = Duration::from_secs(90);

/// What a `run` process is told about Temporal, beside the proxy's address.
struct Credentials {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
    api_key_file: PathBuf,
}

impl Credentials {
    fn good(pki: &Pki) -> Self {
        Self {
            ca: pki.path("ca.crt"),
            client: Some((pki.path("client.crt"), pki.path("client.key"))),
            api_key_file: pki.write("api-key", API_KEY.as_bytes()),
        }
    }
}

/// `imagejob-operator run` (worker, controller and facade) against the proxy, its log in a file.
struct Operator {
    child: ChildGuard,
    log: PathBuf,
    facade: String,
}

impl Operator {
    fn start(s: &Setup, proxy: &TlsProxy, credentials: &Credentials, dir: &Path) -> Self {
        let facade_port = support::free_port();
        let log = dir.join("operator.log");
        let mut cmd = Command::new(support::operator_bin());
        cmd.arg("run")
            .env("TEMPORAL_ADDRESS", &proxy.address)
            .env("TEMPORAL_TLS_SERVER_NAME", "localhost")
            .env("TEMPORAL_TLS_SERVER_CA_CERT_PATH", &credentials.ca)
            .env("TEMPORAL_API_KEY_FILE", &credentials.api_key_file)
            .env("TEMPORAL_TASK_QUEUE", &s.settings.task_queue)
            .env("WATCH_NAMESPACES", &s.ns)
            .env("FACADE_NAMESPACE", &s.ns)
            .env("FACADE_ADDR", format!("127.0.0.1:{facade_port}"))
            .env("FACADE_NO_AUTH", "true")
            .env(
                "FACADE_ADMIN_ADDR",
                format!("127.0.0.1:{}", support::free_port()),
            )
            .env(
                "CONTROLLER_METRICS_ADDR",
                format!("127.0.0.1:{}", support::free_port()),
            )
            .env("METADATA_STORE", "embedded")
            .env("EMBEDDED_STORE_PATH", dir.join("meta.redb"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        if let Some((cert, key)) = &credentials.client {
            cmd.env("TEMPORAL_TLS_CLIENT_CERT_PATH", cert)
                .env("TEMPORAL_TLS_CLIENT_KEY_PATH", key);
        }
        Self {
            child: ChildGuard::spawn(&mut cmd),
            log,
            facade: format!("http://127.0.0.1:{facade_port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics if the process has exited.
    fn assert_alive(&mut self) {
        let exited = self.child.0.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "the operator exited: {exited:?}\n{}",
            self.log()
        );
    }
}

/// A namespace and task queue of the test's own, a fresh PKI, nginx in front of Temporal, and a
/// scratch directory.
async fn secured_stack(prefix: &str) -> (Setup, Pki, TlsProxy, tempfile::TempDir) {
    let s = Setup::new(prefix).await;
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, &s.settings.address());
    (s, pki, proxy, tempfile::tempdir().expect("temp dir"))
}

/// Creates job `name`, waits until it reports Temporal unreachable, and returns the
/// condition's message; a wait that fails shows `operator`'s log, which says why.
async fn refused_job(s: &Setup, operator: &Operator, name: &str) -> String {
    use futures::FutureExt;
    create(&s.api, name, kube_env::spec(false)).await;
    let wait = wait_job(&s.api, name, "TemporalReachable=False", JOB_WAIT, |j| {
        reachable(j).is_some_and(|(status, _)| status == "False")
    });
    let job = std::panic::AssertUnwindSafe(wait)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{name} never reported Temporal unreachable; the operator's log:\n{}",
                operator.log()
            )
        });
    reachable(&job).map(|(_, m)| m).unwrap_or_default()
}

fn reachable(job: &ImageJob) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_TEMPORAL_REACHABLE)
        .map(|c| (c.status.clone(), c.message.clone()))
}

async fn completed(s: &Setup, name: &str) -> ImageJob {
    wait_job(&s.api, name, &format!("{name} Completed"), JOB_WAIT, |j| {
        j.phase() == Phase::Completed
    })
    .await
}

#[tokio::test]
async fn every_role_completes_jobs_through_tls_mtls_and_an_api_key() {
    let (s, pki, proxy, dir) = secured_stack("tls").await;
    let mut operator = Operator::start(&s, &proxy, &Credentials::good(&pki), dir.path());

    create(&s.api, "through-tls", kube_env::spec(false)).await;
    let job = completed(&s, "through-tls").await;
    assert!(
        job.status.unwrap().metadata_stored,
        "the worker stored the metadata"
    );

    let http = reqwest::Client::new();
    let accepted: Value = support::eventually("the facade", JOB_WAIT, || async {
        let response = http
            .post(format!("{}/images/process", operator.facade))
            .json(&json!({"url": "https://example.com/tls.jpg", "title": "over TLS"}))
            .send()
            .await
            .ok()?;
        (response.status() == 202).then_some(response.json().await.ok()?)
    })
    .await;
    let workflow_id = accepted["workflow_id"].as_str().expect("workflow id");
    let result = support::json_of(http.get(format!(
        "{}/images/workflow/{workflow_id}/result?timeout=60",
        operator.facade
    )))
    .await;
    assert_eq!(result["done"], true, "{result}");
    assert_eq!(result["state"]["status"], "completed", "{result}");
    // The timeline is read from Temporal's history by the facade itself.
    let timeline = support::json_of(http.get(format!(
        "{}/images/workflow/{workflow_id}/timeline",
        operator.facade
    )))
    .await;
    let steps: Vec<&str> = timeline["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["step"].as_str())
        .collect();
    assert!(steps.contains(&"completed"), "{timeline}");

    let log = proxy.access_log();
    assert!(
        log.contains("CN=imagejob-client") && log.contains("PollWorkflowTaskQueue"),
        "the calls went through the proxy with the client certificate:\n{log}"
    );
    operator.assert_alive();
    let printed = operator.log();
    assert!(!printed.contains(API_KEY), "the API key was logged");
}

#[tokio::test]
async fn a_wrong_server_ca_is_reported_and_a_rotated_ca_file_is_picked_up() {
    let (s, pki, proxy, dir) = secured_stack("tls-ca").await;
    let trusted = pki.write(
        "trusted.crt",
        &std::fs::read(pki.path("other-ca.crt")).unwrap(),
    );
    let credentials = Credentials {
        ca: trusted.clone(),
        ..Credentials::good(&pki)
    };
    let mut operator = Operator::start(&s, &proxy, &credentials, dir.path());
    let message = refused_job(&s, &operator, "wrong-ca").await;
    assert!(message.contains("UnknownIssuer"), "{message}");
    operator.assert_alive();
    assert!(
        operator.log().contains("UnknownIssuer"),
        "{}",
        operator.log()
    );

    std::fs::copy(pki.path("ca.crt"), &trusted).unwrap();
    completed(&s, "wrong-ca").await;
    operator.assert_alive();
}

#[tokio::test]
async fn a_missing_client_certificate_is_reported_without_a_crash() {
    let (s, pki, proxy, dir) = secured_stack("tls-mtls").await;
    let credentials = Credentials {
        client: None,
        ..Credentials::good(&pki)
    };
    let mut operator = Operator::start(&s, &proxy, &credentials, dir.path());
    let message = refused_job(&s, &operator, "no-client-cert").await;
    assert!(message.contains("client certificate required"), "{message}");
    operator.assert_alive();
    assert!(operator.log().contains("certificate"), "{}", operator.log());
}

#[tokio::test]
async fn a_wrong_api_key_is_reported_and_a_rotated_key_file_is_picked_up() {
    let (s, pki, proxy, dir) = secured_stack("tls-key").await;
    let credentials = Credentials {
        api_key_file: pki.write("rotating-key", b"not-the-key\n"),
        ..Credentials::good(&pki)
    };
    let mut operator = Operator::start(&s, &proxy, &credentials, dir.path());
    let message = refused_job(&s, &operator, "wrong-key").await;
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(message.contains("Unauthenticated"), "{message}");
    assert!(
        !message.contains("not-the-key"),
        "the key itself is not shown"
    );
    operator.assert_alive();

    std::fs::write(&credentials.api_key_file, format!("{API_KEY}\n")).unwrap();
    completed(&s, "wrong-key").await;
    operator.assert_alive();
    assert!(!operator.log().contains(API_KEY), "the API key was logged");
}
