//! `--tuning`: raw Temporal throughput with the worker's settings varied, each on a worker and
//! task queue of its own, so the defaults are chosen by measurement.

use super::{Run, Stat, raw_temporal, spawn, stat, temporal_env};
use imagejob_operator::temporal::{client::TemporalGateway, connection::TemporalSettings};
use serde_json::{Value, json};
use std::sync::Arc;

/// One worker setting: its name and environment.
struct Setting {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
}

/// The settings compared; the first is the shipped default.
const SETTINGS: [Setting; 4] = [
    Setting {
        name: "default (100 slots each, 5+5 pollers, 1000 cached)",
        env: &[],
    },
    Setting {
        name: "2+2 pollers",
        env: &[
            ("WORKER_WORKFLOW_POLLERS", "2"),
            ("WORKER_ACTIVITY_POLLERS", "2"),
        ],
    },
    Setting {
        name: "10+10 pollers",
        env: &[
            ("WORKER_WORKFLOW_POLLERS", "10"),
            ("WORKER_ACTIVITY_POLLERS", "10"),
        ],
    },
    Setting {
        name: "20 slots each",
        env: &[
            ("WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", "20"),
            ("WORKER_MAX_CONCURRENT_ACTIVITIES", "20"),
        ],
    },
];

/// Throughput (jobs/s) of each setting: median, min, max of `reps` runs of `jobs` workflows at
/// `concurrency` in flight.
pub async fn run(
    base: &TemporalSettings,
    store_dir: &std::path::Path,
    jobs: usize,
    reps: usize,
    concurrency: usize,
) -> Vec<(&'static str, Stat)> {
    let mut results = Vec::new();
    for (i, setting) in SETTINGS.iter().enumerate() {
        eprintln!("tuning: {}", setting.name);
        let settings = TemporalSettings {
            task_queue: format!("{}-tuning-{i}", base.task_queue),
            ..base.clone()
        };
        let mut env = temporal_env(&settings);
        let store = store_dir.join(format!("tuning-{i}.redb"));
        env.push(("EMBEDDED_STORE_PATH", store.display().to_string()));
        env.extend(setting.env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let _worker = spawn("worker", &env);
        let gateway = Arc::new(TemporalGateway::new(settings));
        raw_temporal(&gateway, 20, concurrency).await;
        let mut runs: Vec<Run> = Vec::with_capacity(reps);
        for _ in 0..reps {
            runs.push(raw_temporal(&gateway, jobs, concurrency).await);
        }
        results.push((setting.name, stat(runs.iter().map(|r| r.per_sec).collect())));
    }
    results
}

/// The results as JSON.
pub fn json(results: &[(&'static str, Stat)]) -> Value {
    Value::Array(
        results
            .iter()
            .map(|(name, s)| json!({"setting": name, "jobs_per_sec": super::stat_json(*s)}))
            .collect(),
    )
}
