//! The Temporal worker: polls the task queue and runs the workflow and its activities. The SDK's
//! worker future is `!Send`, so it gets a thread of its own with a current-thread runtime.

use super::{
    activities::ImageActivities, forget::ForgetCatalogImage, workflow::ImageProcessingWorkflow,
};
use crate::temporal::{
    connection::{CREDENTIALS_RECHECK, TemporalSettings, connect},
    contract::similarity_task_queue,
    error::TemporalError,
    sdk_metrics::SdkMetrics,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};
use temporalio_common::{
    WorkerDeploymentVersion,
    worker::{VersioningBehavior, WorkerDeploymentOptions},
};
use temporalio_sdk::{
    Runtime, Worker, WorkerOptions, WorkerOptionsBuilder,
    runtime::{
        PollerBehavior, RuntimeOptions,
        worker_tuner::{FixedSizeSlotSupplier, TunerHolder},
    },
};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Worker Deployment Versioning: the worker serves one version (deployment name + build id);
/// new workflows go to the deployment's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerVersion {
    /// Worker Deployment name (the chart's release-worker name).
    pub deployment_name: String,
    /// This worker's build id (the chart defaults it to the image tag).
    pub build_id: String,
    /// Pinned: a workflow finishes on the build it started on (that build's workers must run
    /// until its workflows drain). Otherwise auto-upgrade: it moves to the current version at
    /// its next task, so workflow changes must stay replay-compatible (patching).
    pub pinned: bool,
}

impl WorkerVersion {
    fn options(&self) -> WorkerDeploymentOptions {
        WorkerDeploymentOptions::new(
            WorkerDeploymentVersion::builder()
                .deployment_name(self.deployment_name.clone())
                .build_id(self.build_id.clone())
                .build(),
        )
        .use_worker_versioning(true)
        .default_versioning_behavior(if self.pinned {
            VersioningBehavior::Pinned
        } else {
            VersioningBehavior::AutoUpgrade
        })
        .build()
    }
}

/// How much work one worker takes on at once, and how fast the similarity queue is served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerTuning {
    /// Workflow task slots.
    pub max_concurrent_workflow_tasks: usize,
    /// Activity slots.
    pub max_concurrent_activities: usize,
    /// Concurrent workflow task polls.
    pub workflow_pollers: usize,
    /// Concurrent activity task polls.
    pub activity_pollers: usize,
    /// Sticky workflow cache size.
    pub max_cached_workflows: usize,
    /// Most activities (searches) per second on the similarity queue, across all its workers
    /// (enforced by the Temporal server); `None`: no limit.
    pub similarity_searches_per_second: Option<f64>,
}

impl Default for WorkerTuning {
    fn default() -> Self {
        Self::SDK_DEFAULTS
    }
}

impl WorkerTuning {
    /// The SDK's own defaults, which the worker's options default to (chosen by measurement:
    /// see README, Performance).
    pub const SDK_DEFAULTS: Self = Self {
        max_concurrent_workflow_tasks: 100,
        max_concurrent_activities: 100,
        workflow_pollers: 5,
        activity_pollers: 5,
        max_cached_workflows: 1000,
        similarity_searches_per_second: None,
    };

    fn slots(&self) -> TunerHolder {
        TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(
                self.max_concurrent_workflow_tasks,
            ))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(self.max_concurrent_activities))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(
                self.max_concurrent_activities,
            ))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
            .build()
    }
}

/// A running worker: stop it with [`WorkerHandle::shutdown`].
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    polling: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Whether the worker is connected and polling its task queue right now.
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }

    /// A flag that tracks [`WorkerHandle::is_polling`], for a readiness probe.
    pub fn polling_flag(&self) -> Arc<AtomicBool> {
        self.polling.clone()
    }

    /// Asks the worker to finish its running tasks and stop, and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a worker on its own thread. It (re)connects until it succeeds, restarts after the
/// server drops it or when its credential files are rotated (finishing running tasks first),
/// until shut down. With `metrics`, the SDK records its worker metrics there.
pub fn spawn_worker(
    settings: TemporalSettings,
    activities: ImageActivities,
    tuning: WorkerTuning,
    version: Option<WorkerVersion>,
    metrics: Option<SdkMetrics>,
) -> Result<WorkerHandle, TemporalError> {
    let (stop, stopped) = watch::channel(false);
    let polling = Arc::new(AtomicBool::new(false));
    let flag = polling.clone();
    let thread = std::thread::Builder::new()
        .name("temporal-worker".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return error!(error = %e, "cannot build the worker runtime"),
            };
            let worker = WorkerSetup {
                settings,
                activities,
                tuning,
                version,
                metrics,
            };
            rt.block_on(run_until_stopped(worker, stopped, flag));
        })
        .map_err(|e| TemporalError::Config(format!("cannot start the worker thread: {e}")))?;
    Ok(WorkerHandle {
        stop,
        thread: Some(thread),
        polling,
    })
}

/// What every (re)start of the worker is made from.
struct WorkerSetup {
    settings: TemporalSettings,
    activities: ImageActivities,
    tuning: WorkerTuning,
    version: Option<WorkerVersion>,
    metrics: Option<SdkMetrics>,
}

impl WorkerSetup {
    /// One SDK worker per task queue this worker serves: the workflows' queue (the workflow
    /// and its store step, plus the search for workflows started before the
    /// `similarity-task-queue` patch) and the similarity queue (searches and catalog removals).
    fn worker_options(&self) -> Result<Vec<(String, WorkerOptions)>, String> {
        let main = &self.settings.task_queue;
        let mut queues = Vec::new();
        if let Some(store) = self.activities.store() {
            let mut builder = WorkerOptions::new(main.clone())
                .register_workflow::<ImageProcessingWorkflow>()
                .map_err(|e| format!("{e:#}"))?
                .register_activities(store);
            if let Some(search) = self.activities.search() {
                builder = builder.register_activities(search);
            }
            queues.push((main.clone(), self.finish(builder)));
        }
        if let Some(search) = self.activities.search() {
            let queue = similarity_task_queue(main);
            let builder = WorkerOptions::new(queue.clone())
                .register_workflow::<ForgetCatalogImage>()
                .map_err(|e| format!("{e:#}"))?
                .register_activities(search);
            let mut options = self.finish(builder);
            // Searches are rate-limited across every worker of the queue (Lykdat's quota).
            options.max_task_queue_activities_per_second =
                self.tuning.similarity_searches_per_second;
            queues.push((queue, options));
        }
        Ok(queues)
    }

    /// `builder`'s registrations with this worker's tuning and version.
    fn finish(&self, builder: WorkerOptionsBuilder) -> WorkerOptions {
        let tuning = self.tuning;
        let builder = builder
            .max_heartbeat_throttle_interval(HEARTBEAT_THROTTLE)
            .tuner(tuning.slots())
            .workflow_task_poller_behavior(PollerBehavior::SimpleMaximum(tuning.workflow_pollers))
            .activity_task_poller_behavior(PollerBehavior::SimpleMaximum(tuning.activity_pollers))
            .max_cached_workflows(tuning.max_cached_workflows);
        match &self.version {
            Some(version) => builder.deployment_options(version.options()).build(),
            None => builder.build(),
        }
    }
}

async fn run_until_stopped(
    setup: WorkerSetup,
    mut stopped: watch::Receiver<bool>,
    polling: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(200);
    while !*stopped.borrow() {
        let outcome = run_once(&setup, &mut stopped, &polling).await;
        polling.store(false, Ordering::Release);
        match outcome {
            Ok(()) => break,
            Err(e) => warn!(error = %e, retry_in = ?backoff, "worker stopped; restarting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    info!("worker stopped");
}

/// Longest time the SDK holds back a heartbeat (its default is 80% of the heartbeat timeout):
/// a cancellation reaches a running search with its next heartbeat, so within about a second,
/// well inside the controller's grace before request-cancel.
const HEARTBEAT_THROTTLE: Duration = Duration::from_secs(1);

async fn run_once(
    setup: &WorkerSetup,
    stopped: &mut watch::Receiver<bool>,
    polling: &AtomicBool,
) -> Result<(), String> {
    let options = RuntimeOptions::builder()
        .telemetry_options(
            setup
                .metrics
                .as_ref()
                .map(SdkMetrics::telemetry)
                .unwrap_or_default(),
        )
        .build()?;
    let settings = &setup.settings;
    let runtime = Runtime::from_current_tokio(options).map_err(|e| format!("{e:#}"))?;
    let credentials = settings.credentials();
    let meter = setup.metrics.as_ref().and_then(SdkMetrics::client_meter);
    let client = connect(settings, meter).await.map_err(|e| e.to_string())?;
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for (task_queue, options) in setup.worker_options()? {
        queues.push(task_queue);
        workers.push(Worker::new(&runtime, client.clone(), options).map_err(|e| format!("{e:#}"))?);
    }
    let shutdowns: Vec<_> = workers.iter().map(Worker::shutdown_handle).collect();
    let shutdown = || shutdowns.iter().for_each(|stop| stop());
    info!(task_queues = ?queues, temporal = ?settings, "worker polling");
    polling.store(true, Ordering::Release);
    let mut stop_requested = false;
    let mut rotated = false;
    let mut recheck = tokio::time::interval(CREDENTIALS_RECHECK);
    // Every queue's worker runs until all have ended; the first failure ends them all (the
    // others are dropped, and the whole set restarts).
    let run = futures::future::try_join_all(workers.iter_mut().map(Worker::run));
    tokio::pin!(run);
    loop {
        tokio::select! {
            result = &mut run => {
                return match result.map(drop) {
                    Ok(()) if rotated => Err("Temporal credentials changed: reconnecting".to_owned()),
                    Ok(()) if stop_requested || *stopped.borrow() => Ok(()),
                    Ok(()) => Err("worker ended by itself".to_owned()),
                    Err(e) => Err(format!("{e:#}")),
                };
            }
            _ = recheck.tick(), if !stop_requested => {
                if settings.credentials() != credentials {
                    info!("Temporal credentials changed: finishing running tasks, then reconnecting");
                    rotated = true;
                    stop_requested = true;
                    shutdown();
                }
            }
            changed = stopped.changed(), if !stop_requested => {
                if changed.is_err() || *stopped.borrow() {
                    info!("worker shutting down: finishing running tasks");
                    stop_requested = true;
                    shutdown();
                }
            }
        }
    }
}
