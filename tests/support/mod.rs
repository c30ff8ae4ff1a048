//! Shared setup of the integration tests: the real stack started by `scripts/test.sh` (its
//! addresses come from the environment), unique namespaces and task queues per test, an
//! in-process worker, a local fake of Lykdat's HTTP API, child processes killed on drop, and
//! wait-for-condition helpers.
#![allow(dead_code)]

pub mod lykdat;

use imagejob_operator::{
    similarity::LykdatClient,
    store::{EmbeddedStore, MetadataStore},
    temporal::{ImageActivities, TemporalGateway, TemporalSettings, WorkerHandle, spawn_worker},
};
use std::{
    future::Future,
    process::{Child, Command},
    sync::{Arc, Once},
    time::Duration,
};

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
        lykdat: LykdatClient,
        wrap: impl FnOnce(EmbeddedStore) -> Arc<dyn MetadataStore>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("meta.redb")).expect("store");
        let activities = ImageActivities::new(wrap(store.clone()), lykdat);
        let handle = spawn_worker(settings.clone(), activities).expect("worker");
        Self {
            handle: Some(handle),
            store,
            _dir: dir,
        }
    }

    /// A worker with a plain embedded store and no Lykdat key.
    pub fn plain(settings: &TemporalSettings) -> Self {
        Self::start(
            settings,
            lykdat_client("http://127.0.0.1:9", None, Duration::from_secs(1)),
            |s| Arc::new(s),
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

/// The operator binary built by cargo for the integration tests.
pub fn operator_bin() -> &'static str {
    env!("CARGO_BIN_EXE_imagejob-operator")
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

/// A TCP port free right now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
