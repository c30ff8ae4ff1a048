//! Shared setup of the integration tests: the real stack started by `scripts/test.sh` (its
//! addresses come from the environment), unique namespaces and task queues per test, an
//! in-process worker, a local fake of Lykdat's HTTP API, child processes killed on drop, and
//! wait-for-condition helpers.

pub mod browser;
pub mod facade_env;
pub mod fairness;
pub mod finished;
pub mod images;
pub mod kube_env;
pub mod lykdat;
pub mod tls_proxy;
pub mod webdriver;

use imagejob_operator::{
    fetch::{AddressPolicy, FetchLimits, ImageFetcher},
    similarity::{Catalog, CatalogSearch, Describer, LykdatClient, SimilarityBackend},
    store::{EmbeddedStore, MetadataStore},
    temporal::{
        client::TemporalGateway,
        connection::TemporalSettings,
        worker::{ImageActivities, WorkerHandle, WorkerTuning, spawn_worker},
    },
};
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    process::{Child, Command},
    sync::{Arc, Mutex, Once},
    time::Duration,
};

/// The Lykdat API key of the test workers: as long and as unlike any word as a real one (an
/// error message naming the key has it redacted, which a key like "key" would turn into
/// mangling every message with the word).
pub const LYKDAT_KEY: &str = "test-lykdat-key-4c1d9e";

/// Installs the crypto provider and test logging once per test binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        imagejob_operator::tls::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A variable set by `scripts/test.sh` from the stack it started.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the real stack (kube-apiserver + etcd + Temporal) and exports its addresses")
    })
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Temporal settings of the shared stack, on a task queue of the test's own.
pub fn temporal(task_queue: &str) -> TemporalSettings {
    TemporalSettings {
        host: stack_env("TEMPORAL_HOST"),
        port: stack_env("TEMPORAL_PORT")
            .parse()
            .expect("TEMPORAL_PORT is a port"),
        namespace: "default".into(),
        task_queue: task_queue.into(),
        ..Default::default()
    }
}

/// A gateway for those settings.
pub fn gateway(settings: &TemporalSettings) -> Arc<TemporalGateway> {
    Arc::new(TemporalGateway::new(settings.clone()))
}

/// A Lykdat client for a (fake) base URL.
pub fn lykdat_client(base: &str, key: Option<&str>, timeout: Duration) -> LykdatClient {
    LykdatClient::new(
        &base.parse().expect("base URL"),
        key.map(str::to_owned),
        timeout,
    )
    .expect("client")
}

/// The image model's weights, installed by `scripts/install-deps.sh` under `$IJ_CACHE`.
pub fn model_path() -> std::path::PathBuf {
    let cache = std::env::var_os("IJ_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/imagejob-operator")
        });
    let path = cache.join("models/efficientnet-lite0.safetensors");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps.sh",
        path.display()
    );
    path
}

/// Photographs of scikit-image's data set, installed by `scripts/install-deps.sh`.
pub fn photo(name: &str) -> image::RgbImage {
    let path = model_path()
        .parent()
        .and_then(|m| m.parent())
        .expect("the cache")
        .join("photos")
        .join(name);
    image::open(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{} (installed by scripts/install-deps.sh): {e}",
                path.display()
            )
        })
        .to_rgb8()
}

/// The Lykdat backend without a key: searches are skipped and nothing is ever fetched.
pub fn no_similarity() -> SimilarityBackend {
    SimilarityBackend::Lykdat(lykdat_client(
        "http://127.0.0.1:9",
        None,
        Duration::from_secs(1),
    ))
}

/// A worker running in this process, with an embedded store in a temporary folder.
pub struct TestWorker {
    pub handle: Option<WorkerHandle>,
    pub store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

impl TestWorker {
    /// Starts a worker with the embedded store, `store` wrapping it when given.
    pub fn start(
        settings: &TemporalSettings,
        similarity: SimilarityBackend,
        wrap: impl FnOnce(EmbeddedStore) -> Arc<dyn MetadataStore>,
    ) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            settings,
            |_| similarity,
            wrap,
            WorkerTuning::default(),
        )
    }

    fn start_in(
        dir: tempfile::TempDir,
        settings: &TemporalSettings,
        similarity: impl FnOnce(&std::path::Path) -> SimilarityBackend,
        wrap: impl FnOnce(EmbeddedStore) -> Arc<dyn MetadataStore>,
        tuning: WorkerTuning,
    ) -> Self {
        let store = EmbeddedStore::open(&dir.path().join("meta.redb")).expect("store");
        let activities = ImageActivities::new(wrap(store.clone()), similarity(dir.path()));
        let handle =
            spawn_worker(settings.clone(), activities, tuning, None, None).expect("worker");
        Self {
            handle: Some(handle),
            store,
            _dir: dir,
        }
    }

    /// A worker with a plain embedded store whose Lykdat client points at `base_url` (a fake).
    pub fn with_lykdat(settings: &TemporalSettings, base_url: &str, timeout: Duration) -> Self {
        Self::with_lykdat_tuned(settings, base_url, timeout, WorkerTuning::default())
    }

    /// The same, with `tuning` (slots, pollers, the similarity queue's rate limit).
    pub fn with_lykdat_tuned(
        settings: &TemporalSettings,
        base_url: &str,
        timeout: Duration,
        tuning: WorkerTuning,
    ) -> Self {
        let lykdat = lykdat_client(base_url, Some(LYKDAT_KEY), timeout);
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            settings,
            |_| SimilarityBackend::Lykdat(lykdat),
            |s| Arc::new(s),
            tuning,
        )
    }

    /// A worker with a plain embedded store and no similarity backend ([`no_similarity`]).
    pub fn plain(settings: &TemporalSettings) -> Self {
        Self::start(settings, no_similarity(), |s| Arc::new(s))
    }

    /// A worker with the catalog backend, its catalog beside its store, fetching within
    /// `limits` from the public internet and the `allowed` ranges only.
    pub fn with_catalog(
        settings: &TemporalSettings,
        allowed: &[&str],
        limits: FetchLimits,
    ) -> Self {
        let policy = AddressPolicy::allowing(allowed.iter().map(|c| c.parse().unwrap()).collect());
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            settings,
            |dir| {
                let fetcher = ImageFetcher::new(policy, limits).expect("fetcher");
                let catalog = Catalog::open(&dir.join("catalog.redb")).expect("catalog");
                SimilarityBackend::Catalog(CatalogSearch::new(
                    fetcher,
                    catalog,
                    Describer::Classical,
                ))
            },
            |s| Arc::new(s),
            WorkerTuning::default(),
        )
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        // Dropping the handle asks the worker thread to stop.
        self.handle.take();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a request and reads its JSON answer.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    let response = request.send().await.expect("request");
    response.json().await.expect("a JSON body")
}

/// Runs the Temporal CLI with `args` against the server at `address`: what it printed, or
/// what it said on stderr when it failed.
pub fn temporal_cli(address: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("temporal")
        .args(args)
        .args(["--address", address])
        .output()
        .map_err(|e| format!("running the temporal CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A workflow's history as the Temporal CLI prints it raw (`temporal workflow show --output
/// json`): payloads as base64, nothing decoded.
pub fn cli_history(address: &str, workflow_id: &str) -> serde_json::Value {
    let args = [
        "workflow",
        "show",
        "--output",
        "json",
        "--workflow-id",
        workflow_id,
    ];
    let text = temporal_cli(address, &args)
        .unwrap_or_else(|e| panic!("temporal workflow show {workflow_id}: {e}"));
    serde_json::from_str(&text).expect("history JSON")
}

/// The holder of the Lease `name`, when one holds it (an empty holder is none).
pub async fn lease_holder(
    leases: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// A file holding `values` as JSON (a chart's values file).
pub fn values_file(values: &serde_json::Value) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), values.to_string()).expect("write values");
    file
}

/// How many executions the Temporal at `address` has under this workflow id (its
/// visibility, which lags a moment behind a start).
pub fn executions(address: &str, workflow_id: &str) -> usize {
    let query = format!("WorkflowId = '{workflow_id}'");
    let args = ["workflow", "list", "--output", "json", "--query", &query];
    let text =
        temporal_cli(address, &args).unwrap_or_else(|e| panic!("temporal workflow list: {e}"));
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(items)) => items.len(),
        _ => text
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .count(),
    }
}

/// Runs `kubectl` with `args` against the stack (its `KUBECONFIG`), failing the test with
/// kubectl's words when it fails; what it printed.
pub fn kubectl(args: &[&str]) -> String {
    try_kubectl(args, None, &[]).unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

/// Runs `kubectl` with `args`, `input` on its stdin and `env` set: what it printed, or what it
/// said on stderr when it failed.
pub fn try_kubectl(
    args: &[&str],
    input: Option<&str>,
    env: &[(&str, &str)],
) -> Result<String, String> {
    use std::{io::Write, process::Stdio};
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("running kubectl: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("writing to kubectl: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The operator binary cargo built beside the running test or benchmark (in the profile's
/// folder, one up from the test binaries' `deps/`).
pub fn operator_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary sits in <target>/<profile>/deps");
    let bin = profile.join("imagejob-operator");
    assert!(
        bin.exists(),
        "{} is missing: cargo builds it for the tests",
        bin.display()
    );
    bin
}

/// `imagejob-operator ROLE`, logging at `IJ_CHILD_LOG` (default `warn`).
pub fn operator_command(role: &str) -> Command {
    let mut cmd = Command::new(operator_bin());
    cmd.arg(role).env(
        "RUST_LOG",
        std::env::var("IJ_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

/// Whether the role serving `base` (`http://host:port`) answers its readiness probe with 200.
pub async fn is_ready(base: &str) -> bool {
    reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Waits until the role serving `base` is ready.
pub async fn until_ready(base: &str, timeout: Duration) {
    eventually(&format!("{base} to be ready"), timeout, || async {
        is_ready(base).await.then_some(())
    })
    .await
}

/// A child process killed (SIGKILL) when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawns `cmd`, with its output going to the test's output.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("spawn child process"))
    }

    /// Kills it now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Its resident memory now, in MiB (`VmRSS`; NaN once it is gone).
    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// Sends SIGTERM and waits for it to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        self.0.wait().expect("wait child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A controller process with its metrics address.
pub struct ControllerProcess {
    /// The process.
    pub child: ChildGuard,
    /// Its metrics and probes address (`http://host:port`).
    pub address: String,
}

impl ControllerProcess {
    /// Starts `imagejob-operator controller` on `settings`, watching `ns` (comma-separated
    /// namespaces), with `extra` environment.
    pub fn start(settings: &TemporalSettings, ns: &str, extra: &[(&str, String)]) -> Self {
        let port = free_port();
        let mut cmd = operator_command("controller");
        cmd.env("TEMPORAL_HOST", &settings.host)
            .env("TEMPORAL_PORT", settings.port.to_string())
            .env("TEMPORAL_NAMESPACE", &settings.namespace)
            .env("TEMPORAL_TASK_QUEUE", &settings.task_queue)
            .env("WATCH_NAMESPACES", ns)
            .env("CONTROLLER_METRICS_ADDR", format!("127.0.0.1:{port}"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self {
            child: ChildGuard::spawn(&mut cmd),
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> String {
        self.child.0.id().to_string()
    }

    /// Sends it `signal` (a `kill` signal name).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Its metrics as `name{labels}` -> value.
    pub async fn metrics(&self) -> Option<BTreeMap<String, f64>> {
        let text = reqwest::get(format!("{}/metrics", self.address))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Writes (every verb but GET and WATCH) it sent to the apiserver, Lease renewals aside.
    pub async fn writes(&self) -> Option<f64> {
        let m = self.metrics().await?;
        Some(
            m.iter()
                .filter(|(series, _)| series.starts_with("imagejob_apiserver_requests_total{"))
                .filter(|(series, _)| !series.contains("resource=\"leases\""))
                .filter(|(series, _)| {
                    ["POST", "PUT", "PATCH", "DELETE"]
                        .iter()
                        .any(|v| series.contains(&format!("verb=\"{v}\"")))
                })
                .map(|(_, value)| value)
                .sum(),
        )
    }

    /// One series' value (`name{labels}`), once it answers.
    pub async fn gauge(&self, name: &str) -> Option<f64> {
        self.metrics().await?.get(name).copied()
    }
}

/// Runs `scripts/stack.sh ARGS[0] DIR ARGS[1..]`.
pub fn stack_script(dir: &tempfile::TempDir, args: &[&str]) {
    let script = stack_env("IJ_STACK_SCRIPT");
    let (cmd, rest) = args.split_first().unwrap();
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(cmd)
        .arg(dir.path())
        .args(rest)
        .status()
        .unwrap();
    assert!(status.success(), "stack.sh {args:?}");
}

/// A Temporal server of this test's own, so stopping it disturbs no other test.
pub struct PrivateTemporal {
    /// Its stack folder.
    pub dir: tempfile::TempDir,
    /// Where it listens, on the given task queue.
    pub settings: TemporalSettings,
}

impl PrivateTemporal {
    /// Starts one for `task_queue`.
    pub fn start(task_queue: &str) -> Self {
        Self::start_with(task_queue, &[])
    }

    /// Starts one for `task_queue` that dispatches without fairness keys (Temporal's default).
    pub fn start_without_fairness(task_queue: &str) -> Self {
        Self::start_with(task_queue, &["--no-fairness"])
    }

    fn start_with(task_queue: &str, options: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let args = [&["up", "--only", "temporal"], options].concat();
        stack_script(&dir, &args);
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let port = env
            .lines()
            .find_map(|l| l.strip_prefix("export TEMPORAL_PORT="))
            .expect("port in env")
            .parse()
            .unwrap();
        let settings = TemporalSettings {
            host: "127.0.0.1".into(),
            port,
            namespace: "default".into(),
            task_queue: task_queue.into(),
            ..Default::default()
        };
        Self { dir, settings }
    }
}

impl Drop for PrivateTemporal {
    fn drop(&mut self) {
        stack_script(&self.dir, &["down"]);
    }
}

/// An etcd and kube-apiserver (with the CRD) of this test's own, so restarting the apiserver
/// disturbs no other test.
pub struct PrivateKube {
    /// Its stack folder.
    pub dir: tempfile::TempDir,
}

impl PrivateKube {
    /// Starts one.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        stack_script(&dir, &["up", "--only", "kube"]);
        Self { dir }
    }

    /// An admin client of it.
    pub async fn client(&self) -> kube::Client {
        init();
        let kubeconfig = kube::config::Kubeconfig::read_from(self.dir.path().join("kubeconfig"))
            .expect("the private stack's kubeconfig");
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .expect("config from the private kubeconfig");
        kube::Client::try_from(config).expect("client of the private apiserver")
    }

    /// Stops the kube-apiserver and starts it again (etcd keeps the data; its caches start anew).
    pub fn restart_apiserver(&self) {
        stack_script(&self.dir, &["restart-kube-apiserver"]);
    }
}

impl Drop for PrivateKube {
    fn drop(&mut self) {
        stack_script(&self.dir, &["down"]);
    }
}

/// A TCP port free right now on loopback, never handed out twice by this process.
///
/// Picked at random below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`) and
/// below the NodePort range (30000+), as `scripts/common.sh`'s `free_port` does: a port from
/// `bind(0)` is an ephemeral one, which any outgoing connection of a test running beside may
/// take before the server it was picked for binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (20000u16, ephemeral_low.min(30000));
    assert!(
        high.saturating_sub(low) >= 1000,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for fixed ports"
    );
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = low + (random % u64::from(high - low)) as u16;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}
