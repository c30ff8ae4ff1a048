//! The roles' entry points: each builds its dependencies from configuration and runs until the
//! shutdown signal. `main` only dispatches here.

use crate::{
    config::{ControllerArgs, FacadeArgs, RunCommand, TemporalArgs, WorkerArgs},
    controller::{self, HeldJobs, Lifecycle},
    crd::ImageJob,
    facade::{self, Auth, Draining, FacadeState, JobCache},
    heap::ProcessGauges,
    kube_client::{self, WriteFence},
    metrics::{Metrics, SharedMetrics},
    probes::{Readiness, WorkerReadiness},
    shutdown::Shutdown,
    similarity::SimilarityBackend,
    temporal::{
        ImageActivities, SdkMetrics, TemporalGateway, TemporalSettings, WorkflowGateway,
        spawn_worker,
    },
};
use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::FutureExt;
use kube::Api;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tracing::{info, warn};

/// `worker`: runs the Temporal worker until shutdown.
pub async fn worker(
    temporal: &TemporalArgs,
    args: &WorkerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let queues = args.worker_queues;
    let store = if queues.runs_workflows() {
        let store = args
            .open_store()
            .await
            .context("opening the metadata store")?;
        info!(store = ?args.metadata_store, "metadata store ready");
        Some(store)
    } else {
        None
    };
    let similarity = if queues.searches() {
        let similarity = args
            .similarity()
            .context("configuring the similarity backend")?;
        log_similarity(args, &similarity);
        Some(similarity)
    } else {
        None
    };
    let activities = match (store, similarity) {
        (Some(store), Some(similarity)) => ImageActivities::new(store, similarity),
        (Some(store), None) => ImageActivities::workflows_only(store),
        (None, Some(similarity)) => ImageActivities::similarity_only(similarity),
        (None, None) => anyhow::bail!("WORKER_QUEUES names no task queue"),
    };
    let settings = temporal.settings()?;
    let sdk_metrics = SdkMetrics::start()?;
    let handle = spawn_worker(
        settings.clone(),
        activities,
        args.tuning.tuning(),
        args.version(),
        Some(sdk_metrics.clone()),
    )?;
    if let Some(addr) = args.worker_health_addr {
        let readiness =
            WorkerReadiness::start(TemporalGateway::new(settings), handle.polling_flag());
        let mut registry = prometheus_client::registry::Registry::with_prefix("imagejob");
        let heap = ProcessGauges::register(&mut registry);
        let own_metrics = Arc::new(registry);
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/metrics",
                get(move || async move {
                    heap.refresh();
                    let mut text = sdk_metrics.scrape().await;
                    // Writing into a String cannot fail.
                    let _ = prometheus_client::encoding::text::encode(&mut text, &own_metrics);
                    text
                }),
            )
            .route(
                "/readyz",
                get(move || async move {
                    match readiness.now() {
                        Readiness::Ready => "polling".into_response(),
                        Readiness::NotReady(why) => {
                            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the worker health address {addr}"))?;
        info!(%addr, "worker probes listening");
        let until = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.wait())
                .await;
        });
    }
    shutdown.wait().await;
    handle.shutdown().await;
    Ok(())
}

/// Says which similarity backend this worker searches with.
fn log_similarity(args: &WorkerArgs, similarity: &SimilarityBackend) {
    match similarity {
        SimilarityBackend::Lykdat(lykdat) if !lykdat.is_configured() => warn!(
            "SIMILARITY_BACKEND=lykdat without LYKDAT_API_KEY: similarity searches will be skipped (jobs still complete)"
        ),
        SimilarityBackend::Lykdat(_) => info!("similarity searches use Lykdat"),
        SimilarityBackend::Catalog(search) => info!(
            catalogued = search.catalog().len(),
            descriptor = search.describer().name(),
            path = %args.catalog_file().display(),
            "similarity searches use the catalog"
        ),
    }
}

/// `controller`: reconciles ImageJobs (as leader, when election is on) until shutdown.
///
/// With election, the replica campaigns; once it leads it runs the controller until shutdown
/// (then releases the Lease) or until leadership is lost: then the write fence is already
/// closed, every in-flight reconcile is dropped at once, and the replica campaigns again.
pub async fn controller(
    temporal: &TemporalArgs,
    args: &ControllerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics: SharedMetrics = Arc::new(Metrics::new());
    let gateway: Arc<dyn WorkflowGateway> =
        Arc::new(metered_gateway(temporal.settings()?, &metrics)?);
    metrics.declare_error_kinds(controller::Error::KINDS);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = args
        .leader_election
        .then(|| args.lease_settings(identity.clone()))
        .transpose()?;
    let fence = if lease.is_some() {
        WriteFence::closed()
    } else {
        WriteFence::open()
    };
    let client = kube_client::counted(metrics.clone(), fence.clone())
        .await
        .context("connecting to Kubernetes")?;
    let held = HeldJobs::default();
    let probes = serve_probes(
        args.metrics_addr,
        metrics.clone(),
        held.clone(),
        shutdown.clone(),
    )
    .await?;
    tokio::spawn(probes);
    let lifecycle = Lifecycle {
        client,
        gateway,
        metrics,
        settings: controller::Settings {
            namespaces: args.watch_namespaces.clone(),
            max_workflow_watches: args.max_workflow_watches,
            concurrency: args.reconcile_concurrency,
            instance: Some(identity),
            release_after: Duration::from_secs(args.cancel_on_delete_timeout_secs),
        },
        fence,
        held,
        rebuild_min_peak: args.cache_rebuild_min_peak,
    };
    lifecycle.run(lease, shutdown).await;
    Ok(())
}

/// A gateway whose Temporal requests are counted by the SDK, relayed in `metrics`' exposition.
fn metered_gateway(
    settings: TemporalSettings,
    metrics: &Metrics,
) -> anyhow::Result<TemporalGateway> {
    let sdk = SdkMetrics::start()?;
    let gateway = TemporalGateway::metered(settings, &sdk);
    metrics.relay_sdk(sdk);
    Ok(gateway)
}

fn default_identity() -> String {
    format!("{}-{}", crate::config::hostname(), std::process::id())
}

#[derive(Clone)]
struct ProbeState {
    metrics: SharedMetrics,
    held: HeldJobs,
    /// When the jobs were last counted by phase for `/metrics`.
    counted: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Jobs are counted by phase (a walk of the whole cache) at most this often, however often
/// `/metrics` is scraped: a scrape flood costs no more than one walk per period.
const PHASE_COUNT_PERIOD: Duration = Duration::from_secs(5);

impl ProbeState {
    fn jobs(&self) -> Option<controller::Jobs> {
        self.held.read().ok().and_then(|s| s.clone())
    }

    /// Whether the jobs are due to be counted again (and, if so, marks them counted now).
    fn count_due(&self) -> bool {
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        let due = counted.is_none_or(|at| at.elapsed() >= PHASE_COUNT_PERIOD);
        if due {
            *counted = Some(std::time::Instant::now());
        }
        due
    }
}

/// Binds the controller's `/metrics`, `/healthz`, `/readyz` server; returns its future.
/// Every probe answers at once: readiness looks at the cache, it never waits for it.
async fn serve_probes(
    addr: SocketAddr,
    metrics: SharedMetrics,
    held: HeldJobs,
    shutdown: Shutdown,
) -> anyhow::Result<impl Future<Output = ()>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<ProbeState>| async move {
                // A standby replica (no store) is ready: it is healthy and waiting to lead.
                match s.jobs() {
                    Some(jobs) if jobs.cache.wait_until_ready().now_or_never().is_none() => {
                        (StatusCode::SERVICE_UNAVAILABLE, "cache not synced yet").into_response()
                    }
                    Some(_) => "ready: leading".into_response(),
                    None => "ready: standby".into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<ProbeState>| async move {
                if let Some(jobs) = s.jobs()
                    && s.count_due()
                {
                    let cached = jobs.cache.state();
                    s.metrics.count_phases(
                        cached.iter().map(|j| j.as_ref()),
                        jobs.settled.phase_counts(),
                    );
                }
                s.metrics.exposition().await
            }),
        )
        .with_state(ProbeState {
            metrics,
            held,
            counted: Arc::default(),
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    info!(%addr, "controller metrics and probes listening");
    Ok(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.wait())
            .await
        {
            warn!(error = %e, "probe server failed");
        }
    })
}

/// `facade`: serves the REST API until shutdown.
pub async fn facade(
    temporal: &TemporalArgs,
    args: &FacadeArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let auth = if args.no_auth {
        warn!(
            "!!! AUTHENTICATION DISABLED (--no-auth): anyone who can reach {} can create and cancel jobs !!!",
            args.facade_addr
        );
        Auth::Disabled
    } else {
        let path = args
            .facade_tokens_file
            .clone()
            .context("FACADE_TOKENS_FILE is required (or --no-auth for local use)")?;
        Auth::from_file(path).context("reading the facade tokens file")?
    };
    let settings = temporal.settings()?;
    let metrics: SharedMetrics = Arc::new(Metrics::new());
    let gateway = Arc::new(metered_gateway(settings.clone(), &metrics)?);
    let client = kube_client::counted(metrics.clone(), WriteFence::open())
        .await
        .context("connecting to Kubernetes")?;
    let api: Api<ImageJob> = Api::namespaced(client, &args.facade_namespace);
    let (cache, driver) = JobCache::start(api.clone(), args.facade_namespace.clone());
    let (start_drain, draining) = Draining::new();
    tokio::spawn(driver);
    let state = Arc::new(FacadeState {
        api,
        namespace: args.facade_namespace.clone(),
        cache,
        temporal_namespace: settings.namespace.clone(),
        codec: settings.codec.clone(),
        gateway,
        similarity_default: args.similarity_search_default,
        job_ttl: (args.job_ttl_secs > 0).then_some(args.job_ttl_secs),
        metrics,
        temporal_ui_url: args.temporal_ui_url.as_ref().map(|u| u.to_string()),
        draining,
        limits: facade::Limits::new(args.max_result_waiters, args.max_event_streams),
        quota: facade::CreateQuota::new(facade::QuotaSettings {
            per_second: args.create_rate,
            burst: args.create_burst,
            max_in_flight: args.max_jobs_in_flight,
        }),
    });
    let listener = tokio::net::TcpListener::bind(args.facade_addr)
        .await
        .with_context(|| format!("binding the facade address {}", args.facade_addr))?;
    let admin = tokio::net::TcpListener::bind(args.facade_admin_addr)
        .await
        .with_context(|| {
            format!(
                "binding the facade admin address {}",
                args.facade_admin_addr
            )
        })?;
    info!(addr = %args.facade_admin_addr, "facade metrics and probes listening");
    // Probes and metrics answer until the API stops (through its drain).
    let (api_stopped, admin_stop) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(facade::serve(
        admin,
        facade::admin_router(state.clone()),
        facade::HEADER_READ_TIMEOUT,
        async move {
            let _ = admin_stop.await;
        },
    ));
    info!(addr = %args.facade_addr, namespace = %args.facade_namespace, "facade listening");
    let drain = Duration::from_secs(args.drain_secs);
    let drained = async move {
        shutdown.wait().await;
        info!(
            ?drain,
            "draining: not ready, waiting requests answered, new ones served until the drain ends"
        );
        start_drain.start();
        tokio::time::sleep(drain).await;
    };
    facade::serve(
        listener,
        facade::router(state, auth),
        facade::HEADER_READ_TIMEOUT,
        drained,
    )
    .await;
    drop(api_stopped);
    let _ = admin.await;
    Ok(())
}

/// `run`: worker, controller and facade in one process.
pub async fn all(cmd: &RunCommand, shutdown: Shutdown) -> anyhow::Result<()> {
    tokio::try_join!(
        worker(&cmd.temporal, &cmd.worker, shutdown.clone()),
        controller(&cmd.temporal, &cmd.controller, shutdown.clone()),
        facade(&cmd.temporal, &cmd.facade, shutdown),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_counted_by_phase_at_most_once_a_period_however_often_scraped() {
        let probes = ProbeState {
            metrics: Arc::new(Metrics::new()),
            held: HeldJobs::default(),
            counted: Arc::default(),
        };
        assert!(probes.count_due(), "the first scrape counts");
        assert!(
            !probes.count_due(),
            "a scrape right after does not walk again"
        );
        *probes.counted.lock().unwrap() = Some(std::time::Instant::now() - PHASE_COUNT_PERIOD);
        assert!(probes.count_due(), "a period later it counts again");
    }
}
