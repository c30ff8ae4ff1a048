//! The controller's life in one process: campaign for the Lease (when election is on), run the
//! controller while leading, rebuild it when its cache shrank far below its peak, and stop
//! everything a term started the moment leadership is lost.
//!
//! A term is one future: the controller, its compaction check and the jobs it holds live inside
//! it, so dropping the term (leadership lost) frees all of them. Nothing a term starts is
//! spawned apart from it.

use super::metrics::SharedControllerMetrics;
use super::{
    admin::ControllerAdmin,
    compaction,
    context::Settings,
    jobs::{HeldJobs, Jobs},
    leader::{LeaderElector, LeaseSettings},
    run,
};
use crate::{kube_client::WriteFence, shutdown::Shutdown, temporal::client::WorkflowGateway};
use kube::Client;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::warn;

/// What every term of the controller is built from.
#[derive(Clone)]
pub struct Lifecycle {
    /// The fenced Kubernetes client.
    pub client: Client,
    /// Temporal.
    pub gateway: Arc<dyn WorkflowGateway>,
    /// The controller's metrics.
    pub metrics: SharedControllerMetrics,
    /// The controller's settings.
    pub settings: Settings,
    /// The write fence the elector opens and closes (always open without election).
    pub fence: WriteFence,
    /// Where the current term's jobs are published.
    pub held: HeldJobs,
    /// The smallest cache peak worth a rebuild (0: never rebuild).
    pub rebuild_min_peak: usize,
}

impl Lifecycle {
    /// The controller role as production runs it: its admin server on `admin` (probes and
    /// metrics), and [`Self::run`] until `shutdown`.
    pub async fn serve(self, lease: Option<LeaseSettings>, admin: TcpListener, shutdown: Shutdown) {
        let role = Arc::new(ControllerAdmin::new(
            self.metrics.clone(),
            self.held.clone(),
        ));
        let server = crate::admin::spawn(admin, role, shutdown.clone().wait());
        self.run(lease, shutdown).await;
        let _ = server.await;
    }

    /// Runs until `shutdown`: at once without a Lease, else each time this replica wins it.
    /// On shutdown a held Lease is released so a candidate takes over without waiting.
    pub async fn run(self, lease: Option<LeaseSettings>, shutdown: Shutdown) {
        let Some(lease) = lease else {
            self.metrics.set_leader(true);
            self.term(shutdown).await;
            return;
        };
        let mut elector = LeaderElector::new(self.client.clone(), lease, self.fence.clone());
        loop {
            tokio::select! {
                () = elector.acquire() => {}
                () = shutdown.clone().wait() => return,
            }
            self.metrics.set_leader(true);
            let lost = tokio::select! {
                () = self.term(shutdown.clone()) => false,
                () = elector.hold() => true,
            };
            self.metrics.set_leader(false);
            self.publish(None);
            if !lost {
                elector.release().await;
                return;
            }
            warn!("leadership lost: reconciles stopped; campaigning again");
        }
    }

    /// One term: a controller at a time until `stop`; a new one whenever the cache shrank far
    /// enough below its peak that a fresh one gives memory back.
    async fn term(&self, stop: Shutdown) {
        loop {
            let rebuild = Arc::new(Notify::new());
            let until = {
                let (stop, rebuild) = (stop.clone(), rebuild.clone());
                async move {
                    tokio::select! {
                        () = stop.wait() => {}
                        () = rebuild.notified() => {}
                    }
                }
            };
            let (jobs, running) = run::run(
                self.client.clone(),
                self.gateway.clone(),
                self.metrics.clone(),
                self.settings.clone(),
                self.fence.clone(),
                until,
            )
            .await;
            self.publish(Some(jobs.clone()));
            let mut running = std::pin::pin!(running);
            tokio::select! {
                () = &mut running => {}
                () = compaction::due(jobs, self.rebuild_min_peak) => {
                    rebuild.notify_one();
                    running.await;
                }
            }
            if stop.requested() {
                return;
            }
            self.metrics.cache_rebuilds.inc();
        }
    }

    fn publish(&self, jobs: Option<Jobs>) {
        if let Ok(mut slot) = self.held.write() {
            *slot = jobs;
        }
    }
}
