//! What every reconcile shares: the clients, the metrics, the write fence, the settings and the
//! per-job bookkeeping (backoffs, workflow watches, deletion clocks).

use super::metrics::SharedControllerMetrics;
use super::{
    backoff::Backoffs,
    error::{Error, Result},
    fair::FairSlots,
    watches::WorkflowWatches,
};
use crate::{crd::ImageJob, kube_client::WriteFence, temporal::client::WorkflowGateway};
use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::warn;

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
    /// Fairness weight of each namespace's jobs in Temporal's task queues (1 when absent).
    pub fairness_weights: std::collections::BTreeMap<String, f32>,
    /// Sends the jobs' completion notifications; none are sent without it.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Temporal gateway.
    pub gateway: Arc<dyn WorkflowGateway>,
    /// Metrics.
    pub metrics: SharedControllerMetrics,
    /// Open while this replica may write (it leads).
    pub fence: WriteFence,
    pub(super) settings: Settings,
    pub(super) reporter: Reporter,
    pub(super) watches: WorkflowWatches,
    pub(super) backoffs: Backoffs,
    pub(super) deletions: DeletionClock,
    pub(super) slots: FairSlots,
    /// Permits of the finished jobs' notification deliveries, apart from the slots.
    pub(super) deliveries: Arc<tokio::sync::Semaphore>,
}

/// Most notification deliveries at once (each bounded by `NOTIFY_TIMEOUT_SECS`).
pub(super) const DELIVERIES_AT_ONCE: usize = 64;

/// The workflow id of a job (see [`ImageJob::workflow_id`]); an error for an object without a
/// uid.
pub fn workflow_id(job: &ImageJob) -> Result<String> {
    job.workflow_id().ok_or(Error::MissingUid)
}

impl Context {
    /// Drops every per-job entry of a job that is gone.
    pub(super) fn forget(&self, job: &ImageJob, workflow_id: &str) {
        let uid = job.uid().unwrap_or_default();
        self.backoffs.reset(&uid);
        self.deletions.forget(&uid);
        self.metrics.forget_job(&uid);
        self.watches.forget(workflow_id);
    }

    /// Per-job entries held in memory (backoffs, watches, write counters): bounded by the jobs
    /// that exist and are not finished; exported as `imagejob_controller_tracked_jobs`.
    pub(super) fn tracked(&self) -> usize {
        self.backoffs.tracked()
            + self.watches.tracked()
            + self.metrics.tracked_jobs()
            + self.slots.waiting()
    }

    /// Publishes an event on the job; failures are logged, never fatal.
    pub(super) async fn event(&self, job: &ImageJob, type_: EventType, reason: &str, note: String) {
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

/// When this replica first saw each job being deleted. How long a deletion has waited is
/// measured on the local clock from there, never by comparing the apiserver's deletion
/// timestamp with the local clock: a controller whose clock runs ahead would otherwise release
/// jobs without cancelling their workflows. After a restart (or a change of leader) the wait
/// starts again: a deadline can come late, never early.
#[derive(Default)]
pub(super) struct DeletionClock {
    first_seen: Mutex<HashMap<String, Instant>>,
}

impl DeletionClock {
    /// How long the job `uid` has been seen being deleted (zero the first time).
    pub(super) fn waited(&self, uid: &str) -> Duration {
        let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(uid.to_owned())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// Forgets a job that is gone.
    pub(super) fn forget(&self, uid: &str) {
        self.first_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_is_timed_from_when_this_replica_saw_it_not_by_the_apiservers_clock() {
        let clock = DeletionClock::default();
        // Whatever the deletion timestamp says (a clock 300 s ahead would read it as 300 s old),
        // a deletion first seen now has waited nothing.
        assert!(clock.waited("a") < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            clock.waited("a") >= Duration::from_millis(20),
            "measured from the first look"
        );
        assert!(
            clock.waited("b") < Duration::from_millis(20),
            "each job on its own"
        );
        clock.forget("a");
        assert!(
            clock.waited("a") < Duration::from_millis(20),
            "a forgotten job starts again"
        );
    }
}
