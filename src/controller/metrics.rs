//! The controller's metrics: reconciles, errors and durations, status writes (and per job),
//! jobs by phase, leadership, caches, and the per-job write counts behind
//! `status_writes_per_job`.

use super::watches::ListedFinds;
use crate::{
    crd::{ImageJob, Phase},
    heap::ReleaseSpare,
    metrics::{Exposition, KubeMetrics},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};
use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Label of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// Error kind.
    pub kind: String,
}

/// Label of the notification outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered`, `retried`, `failed` or `refused`.
    pub outcome: &'static str,
}

/// Label of the jobs gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Job phase.
    pub phase: String,
}

/// Everything the controller exports.
pub struct ControllerMetrics {
    /// The registry and `/metrics` text.
    pub exposition: Exposition,
    /// The Kubernetes client's counts.
    pub kube: KubeMetrics,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Status writes, all jobs.
    pub status_writes: Counter,
    /// Status writes per finished job.
    pub status_writes_per_job: Histogram,
    /// ImageJobs the controller watches, by phase.
    pub jobs: Family<PhaseLabel, Gauge>,
    /// ImageJobs in the controller's cache (the others are settled: finished, without a TTL).
    pub cached_jobs: Gauge,
    /// 1 while this replica holds the leader Lease (or runs without election), else 0.
    pub leader: Gauge,
    /// Jobs with per-job entries in the controller's memory.
    pub tracked_jobs: Gauge,
    /// Controller rebuilds that gave a shrunken cache's memory back.
    pub cache_rebuilds: Counter,
    /// Job caches alive: 1 while leading, 2 for a moment during a rebuild, 0 on standby.
    pub job_caches: Gauge,
    /// Unfinished jobs whose last reconcile could not use Temporal (`TemporalReachable=False`).
    pub jobs_waiting_for_temporal: Gauge,
    /// Failed lists and watches of ImageJobs (each retried with backoff).
    pub watch_errors: Counter,
    /// Completion notification attempts, by outcome.
    pub notifications: Family<OutcomeLabel, Counter>,
    /// What listing found of the workflows beyond the watch bound: closes and search steps.
    pub listed: ListedFinds,
    writes_by_job: Mutex<HashMap<String, u64>>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut exposition = Exposition::new();
        let kube = KubeMetrics::register(exposition.registry());
        let mut metrics = Self {
            exposition,
            kube,
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0,
            ]),
            status_writes: Counter::default(),
            status_writes_per_job: Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0]),
            jobs: Family::default(),
            cached_jobs: Gauge::default(),
            leader: Gauge::default(),
            tracked_jobs: Gauge::default(),
            cache_rebuilds: Counter::default(),
            job_caches: Gauge::default(),
            jobs_waiting_for_temporal: Gauge::default(),
            watch_errors: Counter::default(),
            notifications: Family::default(),
            listed: ListedFinds::default(),
            writes_by_job: Mutex::new(HashMap::new()),
        };
        let registry = metrics.exposition.registry();
        registry.register(
            "controller_cache_rebuilds",
            "Controller rebuilds after the job cache shrank far below its peak",
            metrics.cache_rebuilds.clone(),
        );
        registry.register(
            "controller_job_caches",
            "Job caches alive: 1 while leading, 2 for a moment during a rebuild, 0 on standby; more means a stopped controller's cache was kept",
            metrics.job_caches.clone(),
        );
        registry.register(
            "controller_cached_jobs",
            "ImageJobs in the controller's cache; the other watched ones are finished without a TTL and kept as a uid and a phase",
            metrics.cached_jobs.clone(),
        );
        registry.register(
            "controller_notifications",
            "Completion notification attempts by outcome: delivered, retried (a failed attempt to be tried again), failed (given up: the sink kept failing or refused it), refused (the job's sink is not allowed)",
            metrics.notifications.clone(),
        );
        registry.register(
            "controller_listed_closes",
            "Workflow closes found by listing the closed runs (workflows beyond MAX_WORKFLOW_WATCHES, or started while others were listed), each read with one history read",
            metrics.listed.closes.clone(),
        );
        registry.register(
            "controller_listed_steps",
            "Similarity search steps found by listing the runs in that step (workflows beyond MAX_WORKFLOW_WATCHES), each shown with no history read",
            metrics.listed.steps.clone(),
        );
        registry.register(
            "watch_errors",
            "Failed lists and watches of ImageJobs (each retried with backoff): refused rights, an unreachable apiserver",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "jobs_waiting_for_temporal",
            "Unfinished ImageJobs whose last reconcile could not use Temporal (TemporalReachable=False)",
            metrics.jobs_waiting_for_temporal.clone(),
        );
        registry.register(
            "controller_tracked_jobs",
            "Per-job entries in the controller's memory (backoffs, watches, write counters)",
            metrics.tracked_jobs.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (or runs without election)",
            metrics.leader.clone(),
        );
        registry.register("reconciles", "Reconciles run", metrics.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles failed, by kind",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "status_writes",
            "ImageJob status writes",
            metrics.status_writes.clone(),
        );
        registry.register(
            "status_writes_per_job",
            "Status writes of each finished job",
            metrics.status_writes_per_job.clone(),
        );
        registry.register("jobs", "ImageJobs watched, by phase", metrics.jobs.clone());
        metrics
    }

    /// Creates a zero series for each error kind, so alerts see them before the first error.
    pub fn declare_error_kinds(&self, kinds: &[&str]) {
        for kind in kinds {
            drop(self.reconcile_errors.get_or_create(&ErrorLabel {
                kind: (*kind).to_owned(),
            }));
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a reconcile and its duration.
    pub fn reconcile_took(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Sets the tracked-jobs gauge.
    pub fn set_tracked_jobs(&self, n: usize) {
        self.tracked_jobs.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Drops the write count of a job that is gone.
    pub fn forget_job(&self, uid: &str) {
        if let Ok(mut map) = self.writes_by_job.lock() {
            map.remove(uid);
            map.release_spare();
        }
    }

    /// Jobs whose writes are being counted.
    pub fn tracked_jobs(&self) -> usize {
        self.writes_by_job.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Counts a notification attempt's `outcome`.
    pub fn notification(&self, outcome: &'static str) {
        self.notifications
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a status write of job `uid`.
    pub fn status_written(&self, uid: &str) {
        self.status_writes.inc();
        if let Ok(mut map) = self.writes_by_job.lock() {
            *map.entry(uid.to_owned()).or_default() += 1;
        }
    }

    /// Observes the writes of a finished job, once.
    pub fn job_finished(&self, uid: &str) {
        let writes = self.writes_by_job.lock().ok().and_then(|mut m| {
            let writes = m.remove(uid);
            m.release_spare();
            writes
        });
        if let Some(writes) = writes {
            self.status_writes_per_job.observe(writes as f64);
        }
    }

    /// Sets the jobs-by-phase gauges from the cached jobs and the settled jobs' counts.
    pub fn count_phases<'a>(
        &self,
        jobs: impl Iterator<Item = &'a ImageJob>,
        settled: HashMap<Phase, i64>,
    ) {
        let mut counts = settled;
        let mut waiting = 0;
        let mut cached = 0;
        for job in jobs {
            cached += 1;
            *counts.entry(job.phase()).or_default() += 1;
            waiting += i64::from(!job.phase().is_terminal() && job.temporal_unreachable());
        }
        self.jobs_waiting_for_temporal.set(waiting);
        self.cached_jobs.set(cached);
        for phase in [
            Phase::Pending,
            Phase::Processing,
            Phase::Completed,
            Phase::Failed,
            Phase::Cancelled,
        ] {
            self.jobs
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().to_owned(),
                })
                .set(counts.get(&phase).copied().unwrap_or(0));
        }
    }
}

/// Shared handle.
pub type SharedControllerMetrics = std::sync::Arc<ControllerMetrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_per_job_are_observed_once_finished() {
        let m = ControllerMetrics::new();
        m.status_written("a");
        m.status_written("a");
        m.status_written("b");
        m.job_finished("a");
        m.job_finished("a");
        let text = m.exposition.encode();
        assert!(text.contains("imagejob_status_writes_total 3"), "{text}");
        assert!(
            text.contains("imagejob_status_writes_per_job_count 1"),
            "{text}"
        );
        assert!(
            text.contains("imagejob_status_writes_per_job_sum 2.0"),
            "{text}"
        );
    }
}
