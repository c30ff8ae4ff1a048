//! The controller: exactly one Temporal workflow per ImageJob, the workflow's state in the
//! ImageJob's status, cancellation on delete, TTL after finish.

mod apply;
mod backoff;
mod cancel;
mod claim;
mod cleanup;
pub mod compaction;
mod leader;
mod lifecycle;
mod namespaces;
mod settled;
pub mod status;
mod watches;

pub use leader::{LeaderElector, LeaseSettings, TimingError};
pub use lifecycle::{HeldJobs, Lifecycle};

use crate::{
    crd::{FINALIZER, ImageJob, ImageJobSpec, ImageJobStatus},
    kube_client::WriteFence,
    metrics::SharedMetrics,
    temporal::{GatewayError, WorkflowGateway},
};
use backoff::Backoffs;
use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, Store},
        watcher,
    },
};
pub use settled::SettledJobs;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::{info, instrument, warn};
use watches::WorkflowWatches;

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Temporal call failed.
    #[error(transparent)]
    Temporal(#[from] GatewayError),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object has no uid (not from the apiserver).
    #[error("object has no uid")]
    MissingUid,
    /// A cancelled workflow has not closed yet; deletion waits and looks again in `retry_in`.
    #[error("workflow {workflow_id} has not closed after cancellation yet")]
    CancelPending {
        /// The workflow being cancelled.
        workflow_id: String,
        /// When to look again.
        retry_in: Duration,
    },
}

impl Error {
    /// Whether the error says the ImageJob no longer exists (a 404 from the apiserver).
    fn is_object_gone(&self) -> bool {
        use kube::runtime::finalizer::Error as FinalizerError;
        let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        match self {
            Error::Kube(e) => gone(e),
            Error::Finalizer(e) => match e.as_ref() {
                FinalizerError::RemoveFinalizer(e) => gone(e),
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    inner.is_object_gone()
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Every [`Error::kind`], so each error series is exported (at 0) before the first error.
    pub const KINDS: &'static [&'static str] = &[
        "kube",
        "temporal",
        "finalizer",
        "missing_uid",
        "cancel_pending",
    ];

    /// The error's kind, a label of the reconcile error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Temporal(_) => "temporal",
            Error::Finalizer(_) => "finalizer",
            Error::MissingUid => "missing_uid",
            Error::CancelPending { .. } => "cancel_pending",
        }
    }
}

/// Result of controller operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Temporal gateway.
    pub gateway: Arc<dyn WorkflowGateway>,
    /// Metrics.
    pub metrics: SharedMetrics,
    /// Open while this replica may write (it leads).
    pub fence: WriteFence,
    settings: Settings,
    reporter: Reporter,
    watches: WorkflowWatches,
    backoffs: Backoffs,
    deletions: cleanup::DeletionClock,
}

/// The workflow id of a job (see [`ImageJob::workflow_id`]); an error for an object without a
/// uid.
pub fn workflow_id(job: &ImageJob) -> Result<String> {
    job.workflow_id().ok_or(Error::MissingUid)
}

impl Context {
    /// Drops every per-job entry of a job that is gone.
    fn forget(&self, job: &ImageJob, workflow_id: &str) {
        let uid = job.uid().unwrap_or_default();
        self.backoffs.reset(&uid);
        self.deletions.forget(&uid);
        self.metrics.forget_job(&uid);
        self.watches.forget(workflow_id);
    }

    /// Per-job entries held in memory (backoffs, watches, write counters): bounded by the jobs
    /// that exist and are not finished; exported as `imagejob_controller_tracked_jobs`.
    fn tracked(&self) -> usize {
        self.backoffs.tracked() + self.watches.tracked() + self.metrics.tracked_jobs()
    }

    /// Publishes an event on the job; failures are logged, never fatal.
    async fn event(&self, job: &ImageJob, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // A recorder per event: kube's Recorder keeps every event it sent for six minutes (to
        // merge repeats into a series) and scans them all on each publish, which after 10,000
        // jobs held ~40 MiB and cost a scan per event; our events do not repeat.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &job.object_ref(&())).await {
            warn!(namespace = ?job.namespace(), name = %job.name_any(), error = %e, "event not recorded");
        }
    }
}

#[instrument(skip_all, fields(namespace = ?job.namespace(), name = %job.name_any()))]
async fn reconcile(job: Arc<ImageJob>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.fence.is_open() {
        // No longer the leader: touch nothing (the controller is being stopped).
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let api: Api<ImageJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    // A job that is already finished without our finalizer (restored from a backup, say) has
    // no workflow to cancel: it gets none, so a start over many such jobs writes nothing.
    let settled = job.phase().is_terminal()
        && job.metadata.deletion_timestamp.is_none()
        && !job.finalizers().iter().any(|f| f == FINALIZER);
    let result = if settled {
        apply::apply(job, &ctx).await
    } else {
        async {
            // A new job gets the finalizer here and goes on as the patch returned it.
            let job = claim::claimed(&api, job).await?;
            finalizer(&api, FINALIZER, job, |event| async {
                match event {
                    Finalizer::Apply(job) => apply::apply(job, &ctx).await,
                    Finalizer::Cleanup(job) => cleanup::cleanup(job, &ctx).await,
                }
            })
            .await
            .map_err(|e| Error::Finalizer(Box::new(e)))
        }
        .await
    };
    ctx.metrics.reconcile_took(started.elapsed());
    ctx.metrics.set_tracked_jobs(ctx.tracked());
    result
}

fn error_policy(job: Arc<ImageJob>, error: &Error, ctx: Arc<Context>) -> Action {
    use kube::runtime::finalizer::Error as FinalizerError;
    ctx.metrics.reconcile_failed(error.kind());
    let uid = job.uid().unwrap_or_default();
    let delay = match error {
        _ if error.is_object_gone() => {
            // Deleted under our feet: nothing to retry, nothing to remember.
            if let Ok(id) = workflow_id(&job) {
                ctx.forget(&job, &id);
            }
            ctx.metrics.set_tracked_jobs(ctx.tracked());
            return Action::await_change();
        }
        Error::Finalizer(e) => match e.as_ref() {
            FinalizerError::CleanupFailed(Error::CancelPending { retry_in, .. }) => {
                // Not a failure: the workflow is being cancelled; look again shortly.
                info!(namespace = ?job.namespace(), name = %job.name_any(), retry_in = ?retry_in,
                    "waiting for the workflow to close after cancellation");
                return Action::requeue(*retry_in);
            }
            _ => ctx.backoffs.next(&uid),
        },
        _ => ctx.backoffs.next(&uid),
    };
    warn!(namespace = ?job.namespace(), name = %job.name_any(), error = %error, retry_in = ?delay,
        "reconcile failed");
    Action::requeue(delay)
}

/// Hash of what should wake a reconcile: spec changes and deletion. Status writes (ours) are
/// filtered out, so a write does not trigger another Temporal round-trip; so are finalizer
/// changes: the controller goes on from its own finalizer patch without waiting for it to come
/// back (a finalizer someone strips from a running job is put back at its next timed reconcile).
///
/// Finished jobs get none, so every change of theirs passes: the filter keeps an entry per
/// fingerprinted job (about 200 bytes: its name, namespace and uid copied), and a finished
/// job's reconcile calls nothing unless it is being deleted or its TTL ran out.
fn trigger_fingerprint(job: &ImageJob) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if job.phase().is_terminal() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    job.metadata.generation.hash(&mut hasher);
    job.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// What the cache keeps of a job: what [`ImageJob::trim_for_cache`] keeps and, of a finished
/// job, only what its reconcile reads (metadata, phase, completion time, TTL, and whether it
/// searched: its cleanup then removes its image from the catalog). The finished jobs
/// cached are those with a TTL or being deleted (the others are [settled](SettledJobs)), and no
/// write is ever made from a finished job's cached status.
fn keep_for_reconcile(job: &mut ImageJob) {
    job.trim_for_cache();
    if let Some(status) = job.status.as_mut().filter(|s| s.phase.is_terminal()) {
        *status = ImageJobStatus {
            phase: status.phase,
            completion_time: status.completion_time.take(),
            ..Default::default()
        };
        job.spec = ImageJobSpec {
            ttl_seconds_after_finished: job.spec.ttl_seconds_after_finished,
            similarity_search: job.spec.similarity_search,
            ..Default::default()
        };
    }
}

/// What the controller watches and how it names itself.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Most workflows long-polled at once.
    pub max_workflow_watches: usize,
    /// Most reconciles at once (0: unbounded).
    pub concurrency: u16,
    /// This replica's name in events (the pod name).
    pub instance: Option<String>,
    /// How long a deleted job waits for its workflow to be cancelled before it is released
    /// anyway (with a Warning event).
    pub release_after: Duration,
}

/// What a running controller holds of the jobs it watches: the cache of those it may reconcile
/// and the record of the settled ones kept out of it.
#[derive(Clone)]
pub struct Jobs {
    /// The jobs that may need a reconcile.
    pub cache: Store<ImageJob>,
    /// Finished jobs without a TTL, by uid and phase.
    pub settled: SettledJobs,
    /// Counted in `controller_job_caches` until the last clone is gone.
    _alive: Arc<CacheAlive>,
}

/// Counts one job cache in a gauge for as long as it lives.
struct CacheAlive(prometheus_client::metrics::gauge::Gauge);

impl CacheAlive {
    fn count(gauge: &prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        gauge.inc();
        Arc::new(Self(gauge.clone()))
    }
}

impl Drop for CacheAlive {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Jobs {
    /// How many jobs are held, cached or settled.
    pub fn count(&self) -> usize {
        self.cache.len() + self.settled.count()
    }
}

/// The list and watch of `api`, its settled jobs set aside in `settled` as stream number
/// `stream`.
fn watch(
    api: Api<ImageJob>,
    settled: &SettledJobs,
    stream: usize,
) -> futures::stream::BoxStream<'static, watcher::Result<watcher::Event<ImageJob>>> {
    let settled = settled.clone();
    crate::list_watch::list_watch(api)
        .filter_map(move |item| {
            std::future::ready(match item {
                Ok(event) => settled.set_aside(stream, event).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
        .boxed()
}

/// Runs the controller until `shutdown` resolves. The returned jobs fill once the returned
/// future runs.
pub async fn run(
    client: Client,
    gateway: Arc<dyn WorkflowGateway>,
    metrics: SharedMetrics,
    settings: Settings,
    fence: WriteFence,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Jobs, impl Future<Output = ()>) {
    let reporter = Reporter {
        controller: "imagejob-operator".into(),
        instance: settings.instance.clone(),
    };
    let (watch_tx, watch_rx) = futures::channel::mpsc::unbounded();
    let watch_errors = metrics.watch_errors.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        gateway: gateway.clone(),
        metrics,
        fence,
        reporter,
        watches: WorkflowWatches::new(gateway, watch_tx, settings.max_workflow_watches),
        backoffs: Backoffs::default(),
        deletions: cleanup::DeletionClock::default(),
        settings: settings.clone(),
    });
    let alive = CacheAlive::count(&ctx.metrics.job_caches);
    let (reader, writer) = reflector::store::<ImageJob>();
    let settled = SettledJobs::new(settings.namespaces.len());
    let events = match settings.namespaces.as_slice() {
        [] => watch(Api::all(client), &settled, 0),
        [ns] => watch(Api::namespaced(client, ns), &settled, 0),
        list => {
            let streams = list
                .iter()
                .enumerate()
                .map(|(i, ns)| watch(Api::namespaced(client.clone(), ns), &settled, i))
                .collect();
            namespaces::merge(list.to_vec(), streams, reader.clone()).boxed()
        }
    };
    let jobs = events
        .default_backoff()
        .modify(keep_for_reconcile)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_fingerprint, Default::default());
    let controller = Controller::for_stream(jobs, reader.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .reconcile_on(watch_rx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(move |outcome| {
            // Reconcile failures are logged by `error_policy`; a failed list or watch (refused
            // rights, an unreachable apiserver) only shows here, and is retried with backoff.
            if let Err(kube::runtime::controller::Error::QueueError(e)) = outcome {
                watch_errors.inc();
                warn!(error = %e, "ImageJob list or watch failed; retrying");
            }
            std::future::ready(())
        });
    let done = async move {
        info!("controller running");
        controller.await;
        info!("controller stopped");
    };
    let jobs = Jobs {
        cache: reader,
        settled,
        _alive: alive,
    };
    (jobs, done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn job(phase: Phase) -> ImageJob {
        let mut job = ImageJob::new(
            "shirt",
            ImageJobSpec {
                url: "https://example.com/shirt.jpg".into(),
                tags: vec!["summer".into()],
                ttl_seconds_after_finished: Some(60),
                similarity_search: true,
                ..Default::default()
            },
        );
        job.finalizers_mut().push(FINALIZER.into());
        job.status = Some(ImageJobStatus {
            phase,
            workflow_id: Some("image-processing-1".into()),
            image_id: Some("img-1".into()),
            completion_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        });
        job
    }

    #[test]
    fn a_finished_job_is_cached_with_what_its_reconcile_reads_only() {
        let mut cached = job(Phase::Completed);
        keep_for_reconcile(&mut cached);
        assert_eq!(cached.phase(), Phase::Completed);
        assert_eq!(cached.finalizers(), [FINALIZER]);
        assert_eq!(cached.spec.ttl_seconds_after_finished, Some(60));
        assert!(cached.spec.similarity_search, "its cleanup reads it");
        assert_eq!(cached.spec.url, "");
        assert!(cached.spec.tags.is_empty());
        let status = cached.status.as_ref().expect("status");
        assert_eq!(status.completion_time, Some(Time(Timestamp::UNIX_EPOCH)));
        assert_eq!((&status.workflow_id, &status.image_id), (&None, &None));
        assert_eq!(
            status::ttl_deadline(&cached),
            status::ttl_deadline(&job(Phase::Completed))
        );
    }

    #[test]
    fn a_running_job_is_cached_whole_and_fingerprinted() {
        let mut cached = job(Phase::Processing);
        keep_for_reconcile(&mut cached);
        let whole = job(Phase::Processing);
        assert_eq!((&cached.spec, &cached.status), (&whole.spec, &whole.status));
        assert!(trigger_fingerprint(&cached).is_some());
    }

    #[test]
    fn the_finalizer_patch_does_not_wake_a_job_but_an_edit_or_a_delete_does() {
        let mut created = job(Phase::Pending);
        created.metadata.finalizers = None;
        created.metadata.generation = Some(1);
        let mut claimed = created.clone();
        claimed.finalizers_mut().push(FINALIZER.into());
        assert_eq!(trigger_fingerprint(&created), trigger_fingerprint(&claimed));
        let mut edited = claimed.clone();
        edited.metadata.generation = Some(2);
        assert_ne!(trigger_fingerprint(&claimed), trigger_fingerprint(&edited));
        let mut deleting = claimed.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_ne!(
            trigger_fingerprint(&claimed),
            trigger_fingerprint(&deleting)
        );
    }

    #[test]
    fn finished_jobs_are_not_fingerprinted() {
        for phase in [Phase::Completed, Phase::Failed, Phase::Cancelled] {
            assert_eq!(trigger_fingerprint(&job(phase)), None);
        }
    }
}
