//! The composition root: each role's dependencies built from its configuration, then handed to
//! the role's own entry point (`Lifecycle::serve`, `facade::serve`, `spawn_worker` and the
//! admin server), the same ones the tests start. `main` only dispatches here.

use crate::{
    admin,
    config::{ControllerArgs, FacadeArgs, RunCommand, TemporalArgs, WorkerArgs},
    controller::{self, ControllerMetrics, HeldJobs, Lifecycle},
    crd::ImageJob,
    facade::{self, Auth, Draining, FacadeMetrics, FacadeState, JobCache},
    kube_client::{self, WriteFence},
    metrics::Exposition,
    notify::Notifier,
    probes::{WorkerAdmin, WorkerReadiness},
    shutdown::Shutdown,
    similarity::SimilarityBackend,
    temporal::{
        client::{TemporalGateway, WorkflowGateway},
        connection::TemporalSettings,
        sdk_metrics::SdkMetrics,
        worker::{ImageActivities, spawn_worker},
    },
};
use anyhow::Context as _;
use kube::Api;
use std::{sync::Arc, time::Duration};
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
    let server = match args.worker_health_addr {
        Some(addr) => {
            let exposition = Exposition::new();
            exposition.relay_sdk(sdk_metrics);
            let role = Arc::new(WorkerAdmin {
                readiness: WorkerReadiness::start(
                    TemporalGateway::new(settings),
                    handle.polling_flag(),
                ),
                exposition,
            });
            let listener = admin::bind(role.as_ref(), addr).await?;
            Some(admin::spawn(listener, role, shutdown.clone().wait()))
        }
        None => None,
    };
    shutdown.wait().await;
    handle.shutdown().await;
    if let Some(server) = server {
        let _ = server.await;
    }
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
    let metrics = Arc::new(ControllerMetrics::new());
    let gateway: Arc<dyn WorkflowGateway> =
        Arc::new(metered_gateway(temporal.settings()?, &metrics.exposition)?);
    metrics.declare_error_kinds(controller::Error::KINDS);
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::host::hostname(), std::process::id()));
    let lease = args
        .leader_election
        .then(|| args.lease_settings(identity.clone()))
        .transpose()?;
    let fence = if lease.is_some() {
        WriteFence::closed()
    } else {
        WriteFence::open()
    };
    let client = kube_client::counted(metrics.kube.clone(), fence.clone())
        .await
        .context("connecting to Kubernetes")?;
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
            fairness_weights: args.fairness_weights.clone(),
            notifier: notifier(args)?,
        },
        fence,
        held: HeldJobs::default(),
        rebuild_min_peak: args.cache_rebuild_min_peak,
    };
    let admin = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    lifecycle.serve(lease, admin, shutdown).await;
    Ok(())
}

/// The sender of completion notifications, when any sink is configured.
fn notifier(args: &ControllerArgs) -> anyhow::Result<Option<Arc<Notifier>>> {
    let Some(settings) = args.notify_settings() else {
        return Ok(None);
    };
    if settings.signing_key.is_none() {
        warn!("NOTIFY_SIGNING_KEY is not set: completion notifications are sent unsigned");
    }
    let notifier = Notifier::new(settings).context("building the notification client")?;
    Ok(Some(Arc::new(notifier)))
}

/// A gateway whose Temporal requests are counted by the SDK, relayed in `exposition`.
fn metered_gateway(
    settings: TemporalSettings,
    exposition: &Exposition,
) -> anyhow::Result<TemporalGateway> {
    let sdk = SdkMetrics::start()?;
    let gateway = TemporalGateway::metered(settings, &sdk);
    exposition.relay_sdk(sdk);
    Ok(gateway)
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
    let metrics = Arc::new(FacadeMetrics::new());
    let gateway = Arc::new(metered_gateway(settings.clone(), &metrics.exposition)?);
    let client = kube_client::counted(metrics.kube.clone(), WriteFence::open())
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
    let ports = facade::Ports {
        api: tokio::net::TcpListener::bind(args.facade_addr)
            .await
            .with_context(|| format!("binding the facade address {}", args.facade_addr))?,
        admin: admin::bind(state.as_ref(), args.facade_admin_addr).await?,
    };
    let drain = facade::Drain {
        start: start_drain,
        period: Duration::from_secs(args.drain_secs),
    };
    facade::serve(state, auth, ports, drain, shutdown).await;
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
