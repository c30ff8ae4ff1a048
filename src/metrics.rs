//! Prometheus metrics of the controller (reconciles, errors, durations, status writes, jobs by
//! phase, apiserver requests) and of the facade (requests).

use crate::{
    crd::{ImageJob, Phase},
    heap::{ProcessGauges, ReleaseSpare},
    temporal::SdkMetrics,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

/// Label of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// Error kind.
    pub kind: String,
}

/// Labels of apiserver requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// Request verb.
    pub verb: String,
    /// Resource: `imagejobs`, `events`, `leases` or `other`.
    pub resource: String,
}

/// Label of the jobs gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Job phase.
    pub phase: String,
}

/// Label of facade responses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// Status class, e.g. `2xx`.
    pub class: String,
}

/// All metrics of one process.
pub struct Metrics {
    registry: Registry,
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
    /// Requests the controller made to the apiserver, by verb.
    pub apiserver_requests: Family<RequestLabel, Counter>,
    /// ImageJobs the controller watches, by phase.
    pub jobs: Family<PhaseLabel, Gauge>,
    /// ImageJobs in the controller's cache (the others are settled: finished, without a TTL).
    pub cached_jobs: Gauge,
    /// Facade requests, by status class.
    pub http_requests: Family<ClassLabel, Counter>,
    /// Facade `GET .../result` requests in flight (each may wait for its job to finish).
    pub result_waiters: Gauge,
    /// Writes refused because this replica was not (or no longer) the leader.
    pub fenced_writes: Counter,
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
    heap: ProcessGauges,
    writes_by_job: Mutex<HashMap<String, u64>>,
    /// The Temporal SDK's exporter this process's client connections record into.
    sdk: OnceLock<SdkMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("imagejob");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabel, Counter>::default();
        let reconcile_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0,
        ]);
        let status_writes = Counter::default();
        let status_writes_per_job = Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0]);
        let apiserver_requests = Family::<RequestLabel, Counter>::default();
        let jobs = Family::<PhaseLabel, Gauge>::default();
        let http_requests = Family::<ClassLabel, Counter>::default();
        let result_waiters = Gauge::default();
        registry.register(
            "facade_result_waiters",
            "Facade GET .../result requests in flight, each waiting up to its timeout for the job to finish",
            result_waiters.clone(),
        );
        let fenced_writes = Counter::default();
        let cache_rebuilds = Counter::default();
        registry.register(
            "controller_cache_rebuilds",
            "Controller rebuilds after the job cache shrank far below its peak",
            cache_rebuilds.clone(),
        );
        let job_caches = Gauge::default();
        registry.register(
            "controller_job_caches",
            "Job caches alive: 1 while leading, 2 for a moment during a rebuild, 0 on standby; more means a stopped controller's cache was kept",
            job_caches.clone(),
        );
        let leader = Gauge::default();
        let tracked_jobs = Gauge::default();
        let cached_jobs = Gauge::default();
        registry.register(
            "controller_cached_jobs",
            "ImageJobs in the controller's cache; the other watched ones are finished without a TTL and kept as a uid and a phase",
            cached_jobs.clone(),
        );
        let heap = ProcessGauges::register(&mut registry);
        let jobs_waiting_for_temporal = Gauge::default();
        let watch_errors = Counter::default();
        registry.register(
            "watch_errors",
            "Failed lists and watches of ImageJobs (each retried with backoff): refused rights, an unreachable apiserver",
            watch_errors.clone(),
        );
        registry.register(
            "jobs_waiting_for_temporal",
            "Unfinished ImageJobs whose last reconcile could not use Temporal (TemporalReachable=False)",
            jobs_waiting_for_temporal.clone(),
        );
        registry.register(
            "controller_tracked_jobs",
            "Per-job entries in the controller's memory (backoffs, watches, write counters)",
            tracked_jobs.clone(),
        );
        registry.register(
            "fenced_writes",
            "Apiserver writes refused because this replica was not the leader",
            fenced_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (or runs without election)",
            leader.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles failed, by kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        registry.register(
            "status_writes",
            "ImageJob status writes",
            status_writes.clone(),
        );
        registry.register(
            "status_writes_per_job",
            "Status writes of each finished job",
            status_writes_per_job.clone(),
        );
        registry.register(
            "apiserver_requests",
            "Requests to the apiserver, by verb",
            apiserver_requests.clone(),
        );
        registry.register("jobs", "ImageJobs watched, by phase", jobs.clone());
        registry.register(
            "http_requests",
            "Facade requests, by status class",
            http_requests.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            status_writes_per_job,
            apiserver_requests,
            jobs,
            http_requests,
            result_waiters,
            fenced_writes,
            leader,
            tracked_jobs,
            cached_jobs,
            cache_rebuilds,
            job_caches,
            heap,
            jobs_waiting_for_temporal,
            watch_errors,
            writes_by_job: Mutex::new(HashMap::new()),
            sdk: OnceLock::new(),
        }
    }

    /// Counts one request to the apiserver.
    pub fn apiserver_request(&self, verb: &str, resource: &str) {
        self.apiserver_requests
            .get_or_create(&RequestLabel {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// Exports a zero series for each reconcile error kind, so rates and alerts see them
    /// before the first error.
    pub fn declare_error_kinds(&self, kinds: &[&str]) {
        for kind in kinds {
            drop(self.reconcile_errors.get_or_create(&ErrorLabel {
                kind: (*kind).to_owned(),
            }));
        }
    }

    /// Counts one failed reconcile.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records a reconcile's duration.
    pub fn reconcile_took(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts one write refused by the write fence.
    pub fn write_fenced(&self) {
        self.fenced_writes.inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records how many jobs have per-job entries.
    pub fn set_tracked_jobs(&self, n: usize) {
        self.tracked_jobs.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Forgets a job that is gone (deleted before it finished): no entry outlives its job.
    pub fn forget_job(&self, uid: &str) {
        if let Ok(mut map) = self.writes_by_job.lock() {
            map.remove(uid);
            map.release_spare();
        }
    }

    /// Jobs with per-job bookkeeping (status writes not yet observed).
    pub fn tracked_jobs(&self) -> usize {
        self.writes_by_job.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Counts one status write of the job with this uid.
    pub fn status_written(&self, uid: &str) {
        self.status_writes.inc();
        if let Ok(mut map) = self.writes_by_job.lock() {
            *map.entry(uid.to_owned()).or_default() += 1;
        }
    }

    /// The job finished: its write count goes into the histogram.
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

    /// Counts one facade response of this status class.
    pub fn http_response(&self, status: u16) {
        self.http_requests
            .get_or_create(&ClassLabel {
                class: format!("{}xx", status / 100),
            })
            .inc();
    }

    /// Sets the jobs-by-phase gauges from the cache's contents and the counts of the settled
    /// jobs kept out of it.
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

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.heap.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Serves `sdk`'s figures (the process's Temporal requests) with these in [`Self::exposition`].
    pub fn relay_sdk(&self, sdk: SdkMetrics) {
        let _ = self.sdk.set(sdk);
    }

    /// What `/metrics` answers: the relayed Temporal SDK figures, then these.
    pub async fn exposition(&self) -> String {
        let mut out = match self.sdk.get() {
            Some(sdk) => sdk.scrape().await,
            None => String::new(),
        };
        out.push_str(&self.encode());
        out
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_per_job_are_observed_once_finished() {
        let m = Metrics::new();
        m.status_written("a");
        m.status_written("a");
        m.status_written("b");
        m.job_finished("a");
        m.job_finished("a");
        let text = m.encode();
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
