//! `--scale N`: N finished ImageJobs present. A controller started over them (what a restart
//! is) is timed to ready and to the end of its first pass, with the status writes and the
//! Temporal calls it made; then the facade's memory and its status and list latencies.

use super::{
    burst::temporal_job_calls, controller_env, fill_finished, metric_sum, scrape, small_spec,
    spawn, wrk,
};
use imagejob_operator::temporal::connection::TemporalSettings;
use imagejob_testkit::{free_port, is_ready};
use kube::Client;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The figures of the scale phase.
pub struct Scale {
    pub jobs: usize,
    pub fill_seconds: f64,
    pub ready_seconds: f64,
    pub first_pass_seconds: f64,
    /// Jobs in the controller's cache once synced (the rest are settled).
    pub cached_jobs: f64,
    pub status_writes: f64,
    pub temporal_calls: f64,
    pub controller_rss_mib: f64,
    pub facade_rss_mib: f64,
    /// (requests/s, p50 ms, p99 ms)
    pub facade_status: (f64, f64, f64),
    pub facade_list: (f64, f64, f64),
}

/// Waits until `check` holds, polling every 100 ms; the seconds it took.
async fn seconds_until<F, Fut>(what: &str, started: Instant, mut check: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = started + Duration::from_secs(1800);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed().as_secs_f64()
}

/// Runs the phase over `n` finished jobs in namespace `ns`.
pub async fn run(
    client: &Client,
    ns: &str,
    n: usize,
    settings: &TemporalSettings,
    temporal_metrics: &str,
    facade_env: Vec<(&'static str, String)>,
    wrk_seconds: u64,
) -> Scale {
    eprintln!("scale: creating {n} finished ImageJobs");
    let t0 = Instant::now();
    fill_finished(client, ns, n, small_spec).await;
    let fill_seconds = t0.elapsed().as_secs_f64();

    eprintln!("scale: a controller started over them");
    let calls_before = temporal_job_calls(temporal_metrics).await;
    let port = free_port();
    let started = Instant::now();
    let controller = spawn("controller", &controller_env(ns, settings, port));
    let base = format!("http://127.0.0.1:{port}");
    let ready_seconds =
        seconds_until("the controller to be ready", started, || is_ready(&base)).await;
    let metrics = format!("{base}/metrics");
    // Settled jobs (finished, no TTL) are kept out of the cache and need no reconcile: the
    // first pass is one reconcile per job the cache holds once synced.
    let cached = metric_sum(&scrape(&metrics).await, "imagejob_controller_cached_jobs");
    let first_pass_seconds = seconds_until("the first reconcile pass", started, || async {
        metric_sum(&scrape(&metrics).await, "imagejob_reconciles_total") >= cached
    })
    .await;
    let after = scrape(&metrics).await;
    let status_writes = metric_sum(&after, "imagejob_status_writes_total");
    let temporal_calls = temporal_job_calls(temporal_metrics).await - calls_before;
    let controller_rss_mib = controller.rss_mib();
    drop(controller);

    eprintln!("scale: the facade over them");
    let facade = spawn("facade", &facade_env);
    let facade_base = super::facade_base(&facade_env);
    seconds_until("the facade to be ready", Instant::now(), || {
        is_ready(&facade_base)
    })
    .await;
    let one = super::first_workflow_id(client, ns).await;
    let facade_status = wrk(
        &format!("{facade_base}/images/workflow/{one}/status"),
        wrk_seconds,
        8,
    );
    let facade_list = wrk(
        &format!("{facade_base}/images/workflows?limit=100&order=newest"),
        wrk_seconds,
        8,
    );
    let facade_rss_mib = facade.rss_mib();
    Scale {
        jobs: n,
        fill_seconds,
        ready_seconds,
        first_pass_seconds,
        cached_jobs: cached,
        status_writes,
        temporal_calls,
        controller_rss_mib,
        facade_rss_mib,
        facade_status,
        facade_list,
    }
}

impl Scale {
    /// Table rows: figure, value, target.
    pub fn rows(&self) -> Vec<(String, String, &'static str)> {
        let n = self.jobs;
        let lat =
            |(rps, p50, p99): (f64, f64, f64)| format!("{p50:.2} / {p99:.2} ({rps:.0} req/s)");
        vec![
            (
                format!("scale: {n} finished jobs created, s"),
                format!("{:.0}", self.fill_seconds),
                "",
            ),
            (
                format!("scale: controller ready over {n} jobs, s"),
                format!("{:.1}", self.ready_seconds),
                "",
            ),
            (
                "scale: jobs in the controller's cache (others settled)".into(),
                format!("{:.0}", self.cached_jobs),
                "",
            ),
            (
                "scale: controller first pass done, s".into(),
                format!("{:.1}", self.first_pass_seconds),
                "<= 30",
            ),
            (
                "scale: status writes in that start".into(),
                format!("{:.0}", self.status_writes),
                "0",
            ),
            (
                "scale: Temporal job calls in that start".into(),
                format!("{:.0}", self.temporal_calls),
                "0",
            ),
            (
                format!("scale: controller RSS with {n} jobs, MiB"),
                format!("{:.1}", self.controller_rss_mib),
                "<= 150",
            ),
            (
                format!("scale: facade RSS with {n} jobs, MiB"),
                format!("{:.1}", self.facade_rss_mib),
                "<= 200",
            ),
            (
                "scale: facade GET status p50 / p99 ms".into(),
                lat(self.facade_status),
                "p99 <= 5",
            ),
            (
                "scale: facade list page (100) p50 / p99 ms".into(),
                lat(self.facade_list),
                "p99 <= 10",
            ),
        ]
    }

    /// The figures as JSON.
    pub fn json(&self) -> Value {
        let lat = |(rps, p50, p99): (f64, f64, f64)| json!({"requests_per_sec": rps, "p50_ms": p50, "p99_ms": p99});
        json!({
            "jobs": self.jobs,
            "fill_seconds": self.fill_seconds,
            "controller_ready_seconds": self.ready_seconds,
            "controller_first_pass_seconds": self.first_pass_seconds,
            "controller_cached_jobs": self.cached_jobs,
            "status_writes_at_start": self.status_writes,
            "temporal_job_calls_at_start": self.temporal_calls,
            "controller_rss_mib": self.controller_rss_mib,
            "facade_rss_mib": self.facade_rss_mib,
            "facade_get_status": lat(self.facade_status),
            "facade_list_page": lat(self.facade_list),
        })
    }
}
