//! What a burst cost the servers, by their own counts: the Temporal frontend's requests (its
//! `service_requests` metric) and the kube-apiserver's requests and watch events (its
//! `apiserver_request_total` and `apiserver_watch_events_total`), taken before and after.

use super::super::{metric_sum, scrape};
use kube::Client;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Temporal frontend calls a client makes for jobs (worker polls and completions excluded).
pub const JOB_CALLS: [&str; 9] = [
    "StartWorkflowExecution",
    "QueryWorkflow",
    "DescribeWorkflowExecution",
    "GetWorkflowExecutionHistory",
    "RequestCancelWorkflowExecution",
    "SignalWorkflowExecution",
    "PollWorkflowExecutionUpdate",
    "ListWorkflowExecutions",
    "TerminateWorkflowExecution",
];
/// Apiserver verbs that write.
const WRITES: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

/// The value of `label` in one exposition line.
fn label<'a>(line: &'a str, label: &str) -> &'a str {
    let key = format!("{label}=\"");
    line.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(value, _)| value)
}

fn value(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The Temporal frontend's request count by operation.
pub fn temporal_by_operation(text: &str) -> BTreeMap<String, f64> {
    let mut by = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("service_requests{") && l.contains("service_name=\"frontend\""))
    {
        *by.entry(label(line, "operation").to_owned()).or_default() += value(line);
    }
    by
}

/// Temporal's own count of the calls in [`JOB_CALLS`] its frontend answered.
pub async fn temporal_job_calls(metrics_url: &str) -> f64 {
    let by = temporal_by_operation(&scrape(metrics_url).await);
    JOB_CALLS.iter().filter_map(|op| by.get(*op)).sum()
}

/// Counters at one moment, keyed by what they count.
pub struct Snapshot {
    temporal: BTreeMap<String, f64>,
    requests: BTreeMap<String, f64>,
    watch_events: BTreeMap<String, f64>,
}

/// Per-job counts of one path.
#[derive(Default)]
pub struct Counts {
    pub temporal_calls: f64,
    pub history_reads: f64,
    pub status_writes: Option<f64>,
    pub apiserver_requests: f64,
    pub apiserver_writes: f64,
    pub watch_events: f64,
    /// Apiserver writes per job by `VERB resource/subresource`.
    pub writes_by: BTreeMap<String, f64>,
    /// Watch events per job by kind.
    pub watch_events_by: BTreeMap<String, f64>,
    /// Temporal client calls per job by operation.
    pub temporal_by: BTreeMap<String, f64>,
}

impl Counts {
    /// The servers' counters now.
    pub async fn take(client: &Client, temporal_metrics: &str) -> Snapshot {
        let temporal = temporal_by_operation(&scrape(temporal_metrics).await);
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .expect("request");
        let text = client
            .request_text(request)
            .await
            .expect("apiserver metrics");
        let (mut requests, mut watch_events) = (BTreeMap::new(), BTreeMap::new());
        for line in text.lines() {
            if line.starts_with("apiserver_request_total{") {
                let sub = label(line, "subresource");
                let key = format!(
                    "{} {}{}{}",
                    label(line, "verb"),
                    label(line, "resource"),
                    if sub.is_empty() { "" } else { "/" },
                    sub
                );
                *requests.entry(key).or_default() += value(line);
            } else if line.starts_with("apiserver_watch_events_total{") {
                let kind = label(line, "kind");
                let key = if kind.is_empty() {
                    label(line, "resource")
                } else {
                    kind
                };
                *watch_events.entry(key.to_owned()).or_default() += value(line);
            }
        }
        Snapshot {
            temporal,
            requests,
            watch_events,
        }
    }
}

fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    n: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)) / n))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

impl Snapshot {
    /// What was counted since `before`, per job of `n`; `status_writes` from the controller.
    pub fn since(&self, before: &Snapshot, n: usize, status_writes: Option<f64>) -> Counts {
        let n = n.max(1) as f64;
        let temporal = delta(&self.temporal, &before.temporal, n);
        let requests = delta(&self.requests, &before.requests, n);
        let watch_events_by = delta(&self.watch_events, &before.watch_events, n);
        let temporal_by: BTreeMap<String, f64> = temporal
            .into_iter()
            .filter(|(op, _)| JOB_CALLS.contains(&op.as_str()))
            .collect();
        let writes_by: BTreeMap<String, f64> = requests
            .iter()
            .filter(|(k, _)| WRITES.iter().any(|w| k.split(' ').next() == Some(*w)))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Counts {
            temporal_calls: temporal_by.values().sum(),
            history_reads: temporal_by
                .get("GetWorkflowExecutionHistory")
                .copied()
                .unwrap_or(0.0),
            status_writes: status_writes.map(|w| w / n),
            apiserver_requests: requests.values().sum(),
            apiserver_writes: writes_by.values().sum(),
            watch_events: watch_events_by.values().sum(),
            writes_by,
            watch_events_by,
            temporal_by,
        }
    }
}

/// The controller's status writes so far.
pub async fn controller(metrics_url: &str) -> f64 {
    metric_sum(&scrape(metrics_url).await, "imagejob_status_writes_total")
}

impl Counts {
    /// Where one path's writes, watch events and Temporal calls went, per job.
    pub fn print_breakdown(&self, path: &str) {
        println!("\n{path}: per job, by what\n");
        println!("| counted | per job |");
        println!("|---|---|");
        for (k, v) in &self.writes_by {
            println!("| apiserver write {k} | {v:.3} |");
        }
        for (k, v) in &self.watch_events_by {
            println!("| watch events {k} | {v:.3} |");
        }
        for (k, v) in &self.temporal_by {
            println!("| Temporal {k} | {v:.3} |");
        }
    }

    /// The counts as JSON.
    pub fn json(&self) -> Value {
        json!({"temporal_client_calls": self.temporal_calls, "temporal_history_reads": self.history_reads,
            "status_writes": self.status_writes, "apiserver_requests": self.apiserver_requests,
            "apiserver_writes": self.apiserver_writes, "apiserver_watch_events": self.watch_events,
            "apiserver_writes_by": self.writes_by, "watch_events_by": self.watch_events_by,
            "temporal_calls_by": self.temporal_by})
    }
}
