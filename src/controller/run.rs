//! One controller run: the list and watch shaped into the cache, the workflow watches, and
//! kube-runtime's controller reconciling until shutdown.

use super::metrics::SharedControllerMetrics;
use super::{
    backoff::Backoffs,
    context::{Context, DELIVERIES_AT_ONCE, DeletionClock, Settings},
    fair::FairSlots,
    jobs::{CacheAlive, Jobs, keep_for_reconcile, trigger_fingerprint, watch},
    namespaces,
    reconcile::{error_policy, reconcile},
    settled::SettledJobs,
    stored::applied_once_stored,
    watches::WorkflowWatches,
};
use crate::{crd::ImageJob, kube_client::WriteFence, temporal::client::WorkflowGateway};
use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{Controller, WatchStreamExt, events::Reporter, reflector},
};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Runs the controller until `shutdown` resolves. The returned jobs fill once the returned
/// future runs.
pub async fn run(
    client: Client,
    gateway: Arc<dyn WorkflowGateway>,
    metrics: SharedControllerMetrics,
    settings: Settings,
    fence: WriteFence,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Jobs, impl Future<Output = ()>) {
    let reporter = Reporter {
        controller: "imagejob-operator".into(),
        instance: settings.instance.clone(),
    };
    let (watch_tx, watch_rx) = futures::channel::mpsc::unbounded();
    let (reader, writer) = reflector::store::<ImageJob>();
    // kube-runtime runs every due reconcile at once; the fair slots bound how many proceed, and
    // wake the ones that wait, in turn.
    let slots = FairSlots::new(
        usize::from(settings.concurrency),
        watch_tx.clone(),
        reader.clone(),
    );
    let deliveries = Arc::new(Semaphore::new(DELIVERIES_AT_ONCE));
    let (closer, stopped) = (slots.clone(), deliveries.clone());
    let shutdown = async move {
        shutdown.await;
        // Reconciles still waiting for a slot or a permit end at once instead of being drained.
        closer.close();
        stopped.close();
    };
    let watch_errors = metrics.watch_errors.clone();
    let listed_finds = metrics.listed.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        gateway: gateway.clone(),
        metrics,
        fence,
        reporter,
        watches: WorkflowWatches::new(
            gateway,
            watch_tx,
            settings.max_workflow_watches,
            listed_finds,
        ),
        backoffs: Backoffs::default(),
        deletions: DeletionClock::default(),
        slots: slots.clone(),
        deliveries,
        settings: settings.clone(),
    });
    let alive = CacheAlive::count(&ctx.metrics.job_caches);
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
    let reflected = events
        .default_backoff()
        .modify(keep_for_reconcile)
        .reflect(writer);
    let jobs = applied_once_stored(reflected, reader.clone())
        .predicate_filter(trigger_fingerprint, Default::default());
    let controller = Controller::for_stream(jobs, reader.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .reconcile_on(watch_rx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(move |outcome| {
            // Reconcile failures are logged by `error_policy`; a failed list or watch (refused
            // rights, an unreachable apiserver) only shows here, and is retried with backoff.
            use kube::runtime::controller::Error as RunError;
            match outcome {
                Err(RunError::QueueError(e)) => {
                    watch_errors.inc();
                    warn!(error = %e, "ImageJob list or watch failed; retrying");
                }
                // kube-runtime drops a wake for a job its cache no longer holds: deleted since.
                Err(RunError::ObjectNotFound(job)) => {
                    debug!(job = %job, "woken job no longer cached; nothing to reconcile");
                }
                _ => {}
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
