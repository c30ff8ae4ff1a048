//! Kubernetes helpers shared by the controller and facade tests.

use imagejob_operator::{
    controller::{self, ControllerMetrics, HeldJobs, Lifecycle},
    crd::{ImageJob, ImageJobSpec, Phase},
    kube_client::WriteFence,
    shutdown::{Shutdown, ShutdownTrigger},
    temporal::{client::TemporalGateway, connection::TemporalSettings},
};
use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
    runtime::wait::await_condition,
};
use std::{sync::Arc, time::Duration};

/// What most tests start from: a namespace of their own and a task queue of their own.
pub struct Setup {
    /// Admin client.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
    /// ImageJobs in it.
    pub api: Api<ImageJob>,
    /// Temporal on the test's task queue.
    pub settings: TemporalSettings,
}

impl Setup {
    /// A fresh namespace and task queue named after `prefix`.
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let ns = namespace(&client, prefix).await;
        Self {
            api: Api::namespaced(client.clone(), &ns),
            settings: crate::temporal(&crate::unique(&format!("{prefix}-queue"))),
            client,
            ns,
        }
    }
}

/// A client from the kubeconfig `scripts/test.sh` exported.
pub async fn client() -> Client {
    crate::init();
    crate::stack_env("KUBECONFIG");
    Client::try_default().await.expect("client from KUBECONFIG")
}

/// A fresh namespace.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = crate::unique(prefix);
    create_namespace(client, &name).await;
    name
}

/// Creates the namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// A job spec for the seed's example image.
pub fn spec(similarity_search: bool) -> ImageJobSpec {
    ImageJobSpec {
        url: "https://example.com/image.jpg".into(),
        title: Some("Product Image".into()),
        description: Some("Blue shirt".into()),
        tags: vec!["clothing".into(), "shirt".into()],
        similarity_search,
        ..Default::default()
    }
}

/// Creates a job.
pub async fn create(api: &Api<ImageJob>, name: &str, spec: ImageJobSpec) -> ImageJob {
    api.create(&PostParams::default(), &ImageJob::new(name, spec))
        .await
        .expect("create job")
}

/// How often a wait reads the job again beside its watch: a watch opened on an apiserver that
/// is restarting can stay silent for minutes (its watch cache not yet serving), as informers
/// resync for the same reason.
const REREAD_EVERY: Duration = Duration::from_secs(5);

/// Waits until the job `name` (or its absence) satisfies `condition`, returning what satisfied
/// it: a watch of the one object (`kube::runtime::wait::await_condition`), so the wait ends at
/// the event that satisfies it, with a read every [`REREAD_EVERY`] as a safety net.
async fn until(
    api: &Api<ImageJob>,
    name: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(Option<&ImageJob>) -> bool,
) -> Option<ImageJob> {
    let condition = &condition;
    let watched = async {
        match await_condition(api.clone(), name, move |job: Option<&ImageJob>| {
            condition(job)
        })
        .await
        {
            Ok(job) => job,
            // A broken watch (the apiserver went away): the reads go on.
            Err(_) => std::future::pending().await,
        }
    };
    let reread = async {
        loop {
            tokio::time::sleep(REREAD_EVERY).await;
            if let Ok(job) = api.get_opt(name).await
                && condition(job.as_ref())
            {
                return job;
            }
        }
    };
    let either = async {
        tokio::select! {
            job = watched => job,
            job = reread => job,
        }
    };
    match tokio::time::timeout(timeout, either).await {
        Ok(job) => job,
        Err(_) => {
            // Say where the job stood, so a failure explains itself.
            let last = match api.get_opt(name).await {
                Ok(Some(job)) => serde_json::to_string(&job.status).unwrap_or_default(),
                Ok(None) => "gone".to_owned(),
                Err(e) => format!("unreadable: {e}"),
            };
            panic!("timed out after {timeout:?} waiting for {name}: {what}; its status: {last}")
        }
    }
}

/// Waits until the job satisfies `pred`, returning it.
pub async fn wait_job(
    api: &Api<ImageJob>,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ImageJob) -> bool,
) -> ImageJob {
    until(api, name, what, timeout, |job| job.is_some_and(&pred))
        .await
        .unwrap_or_else(|| panic!("{name} satisfied the wait for {what} without existing"))
}

/// Waits until the job is in `phase`, returning it.
pub async fn wait_phase(api: &Api<ImageJob>, name: &str, phase: Phase) -> ImageJob {
    let what = format!("{name} in phase {}", phase.as_str());
    wait_job(api, name, &what, Duration::from_secs(60), |j| {
        j.phase() == phase
    })
    .await
}

/// Waits until the job `name` no longer exists.
pub async fn wait_gone(api: &Api<ImageJob>, name: &str, timeout: Duration) {
    let what = format!("{name} to disappear");
    until(api, name, &what, timeout, |job| job.is_none()).await;
}

/// The name of the one job `api` lists.
pub async fn only_name(api: &Api<ImageJob>) -> String {
    let list = api.list(&ListParams::default()).await.expect("list jobs");
    assert_eq!(list.items.len(), 1, "exactly one job");
    kube::ResourceExt::name_any(&list.items[0])
}

/// How many jobs `api` lists.
pub async fn count(api: &Api<ImageJob>) -> usize {
    api.list(&ListParams::default())
        .await
        .expect("list jobs")
        .items
        .len()
}

/// Reasons of the events recorded on the object `name`.
pub async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// A controller running in this process through the entry point production runs
/// (`Lifecycle::serve`: admin server, lifecycle, no election), watching `ns`; stopped on drop.
pub struct InProcessController {
    _stop: ShutdownTrigger,
    /// Its metrics.
    pub metrics: Arc<ControllerMetrics>,
    /// `http://127.0.0.1:<port>` of its admin server (probes and `/metrics`).
    pub admin: String,
}

impl InProcessController {
    /// Starts it.
    pub async fn start(client: &Client, settings: &TemporalSettings, ns: &str) -> Self {
        let (stop, shutdown) = Shutdown::triggered();
        let metrics = Arc::new(ControllerMetrics::new());
        let lifecycle = Lifecycle {
            client: client.clone(),
            gateway: Arc::new(TemporalGateway::new(settings.clone())),
            metrics: metrics.clone(),
            settings: controller::Settings {
                namespaces: vec![ns.to_owned()],
                max_workflow_watches: 100,
                concurrency: 32,
                instance: Some("in-process".into()),
                release_after: Duration::from_secs(300),
                fairness_weights: Default::default(),
                notifier: None,
            },
            fence: WriteFence::open(),
            held: HeldJobs::default(),
            rebuild_min_peak: 0,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an admin port");
        let admin = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(lifecycle.serve(None, listener, shutdown));
        Self {
            _stop: stop,
            metrics,
            admin,
        }
    }
}
