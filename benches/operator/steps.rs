//! `--listed-steps N`: how soon a job the controller does not watch shows its similarity search
//! step. N jobs with similarity search are created at once, with no workflow watched
//! (`MAX_WORKFLOW_WATCHES=0`: every job is listed, as the jobs beyond the bound of a burst);
//! a worker searches through a local fake of Lykdat that answers after [`SEARCH_TAKES`]. For
//! each job: from the moment its workflow set `ImageJobImageId` (the upsert event's time in its
//! history) to the moment a watcher saw the job `Processing` with its document stored; with the
//! controller's history reads and status writes per job, and the steps its list found.

use super::{controller_env, metric_sum, percentile, scrape, spawn, temporal_env};
use futures::{StreamExt, future::join_all};
use imagejob_operator::{
    crd::{ImageJob, ImageJobSpec, Phase},
    temporal::connection::TemporalSettings,
};
use imagejob_testkit::{
    cli_history, eventually, free_port,
    kube_env::create_namespace,
    lykdat::{FakeLykdat, Reply},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

/// How long the fake Lykdat takes to answer a search: each job's search step lasts about that.
const SEARCH_TAKES: Duration = Duration::from_secs(3);
/// How long the phase may take before it is given up.
const LIMIT: Duration = Duration::from_secs(600);

/// The phase's figures.
pub struct Figures {
    jobs: usize,
    /// Jobs seen in their search step before their end.
    shown: usize,
    /// Seconds from each shown job's upsert to the watcher seeing it, sorted.
    delays: Vec<f64>,
    history_reads_per_job: f64,
    status_writes_per_job: f64,
    listed_steps: f64,
}

/// When a watcher first saw each job in its search step, and finished.
#[derive(Default)]
struct Seen {
    stepped: HashMap<String, SystemTime>,
    finished: HashMap<String, SystemTime>,
}

/// Watches `api`'s jobs, recording [`Seen`].
fn watch(api: Api<ImageJob>, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = std::pin::pin!(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        while let Some(Ok(job)) = events.next().await {
            let now = SystemTime::now();
            let stored = job.status.as_ref().is_some_and(|s| s.metadata_stored);
            let mut seen = seen.lock().expect("lock");
            if job.phase() == Phase::Processing && stored {
                seen.stepped.entry(job.name_any()).or_insert(now);
            }
            if job.phase().is_terminal() {
                seen.finished.entry(job.name_any()).or_insert(now);
            }
        }
    })
}

/// When the workflow set its search attribute, from its history.
fn upserted_at(address: &str, workflow_id: &str) -> Option<SystemTime> {
    let history = cli_history(address, workflow_id);
    let event = history["events"]
        .as_array()?
        .iter()
        .find(|e| e["eventType"] == "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES")?;
    let at = chrono::DateTime::parse_from_rfc3339(event["eventTime"].as_str()?).ok()?;
    Some(at.with_timezone(&chrono::Utc).into())
}

/// Runs the phase: a worker, a controller watching no workflow, `n` jobs at once.
pub async fn run(
    client: &Client,
    run_id: &str,
    n: usize,
    settings: &TemporalSettings,
    data: &Path,
) -> Figures {
    let settings = TemporalSettings {
        task_queue: format!("steps-{run_id}"),
        ..settings.clone()
    };
    let ns = format!("steps-{run_id}");
    create_namespace(client, &ns).await;
    let lykdat = FakeLykdat::start(vec![Reply::ok(&[("p-1", 0.9)]).after(SEARCH_TAKES)]).await;
    let mut worker_env = temporal_env(&settings);
    let store = data.join(format!("steps-{run_id}.redb"));
    worker_env.extend([
        ("EMBEDDED_STORE_PATH", store.display().to_string()),
        ("LYKDAT_API_KEY", "bench-lykdat-key".to_owned()),
        ("LYKDAT_BASE_URL", lykdat.base_url.clone()),
        ("SIMILARITY_SEARCHES_PER_SECOND", "1000".to_owned()),
    ]);
    let _worker = spawn("worker", &worker_env);
    let port = free_port();
    let mut env = controller_env(&ns, &settings, port);
    env.push(("MAX_WORKFLOW_WATCHES", "0".to_owned()));
    let _controller = spawn("controller", &env);
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    eventually("the controller's metrics", LIMIT, || async {
        reqwest::get(&metrics_url)
            .await
            .ok()?
            .error_for_status()
            .ok()
    })
    .await;

    let api: Api<ImageJob> = Api::namespaced(client.clone(), &ns);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watcher = watch(api.clone(), seen.clone());
    eprintln!("listed steps: {n} jobs with similarity search, none watched");
    let creates = (0..n).map(|i| {
        let job = ImageJob {
            metadata: ObjectMeta {
                name: Some(format!("step-{i}")),
                ..Default::default()
            },
            spec: ImageJobSpec {
                url: format!("https://example.com/{i}.jpg"),
                similarity_search: true,
                ..Default::default()
            },
            status: None,
        };
        let api = api.clone();
        async move { api.create(&PostParams::default(), &job).await }
    });
    let created: Vec<ImageJob> = join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("create"))
        .collect();
    eventually("every job finished", LIMIT, || async {
        (seen.lock().expect("lock").finished.len() >= n).then_some(())
    })
    .await;
    watcher.abort();

    let after = scrape(&metrics_url).await;
    let history_reads = ["temporal_request_total", "temporal_long_request_total"]
        .iter()
        .map(|name| operation_sum(&after, name, "GetWorkflowExecutionHistory"))
        .sum::<f64>();
    let seen = seen.lock().expect("lock");
    let mut delays: Vec<f64> = created
        .iter()
        .filter_map(|job| {
            let shown = seen.stepped.get(&job.name_any())?;
            let id = format!("image-processing-{}", job.uid()?);
            let upserted = upserted_at(&settings.address(), &id)?;
            Some(
                shown
                    .duration_since(upserted)
                    .unwrap_or_default()
                    .as_secs_f64(),
            )
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    Figures {
        jobs: n,
        shown: seen.stepped.len(),
        delays,
        history_reads_per_job: history_reads / n as f64,
        status_writes_per_job: metric_sum(&after, "imagejob_status_writes_total") / n as f64,
        listed_steps: metric_sum(&after, "imagejob_controller_listed_steps_total"),
    }
}

/// Sums a metric's samples for one Temporal `operation`.
fn operation_sum(text: &str, name: &str, operation: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(&format!("operation=\"{operation}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prints the table; the figures as JSON.
pub fn print(f: &Figures) -> Value {
    let pct = |q: f64| {
        if f.delays.is_empty() {
            f64::NAN
        } else {
            percentile(&f.delays, q)
        }
    };
    let max = f.delays.last().copied().unwrap_or(f64::NAN);
    println!(
        "\nlisted jobs' search step: {} jobs, none watched, each search {:.0} s",
        f.jobs,
        SEARCH_TAKES.as_secs_f64()
    );
    println!(
        "| shown in their step | step to shown p50 / p95 / p99 / max, s | history reads a job | status writes a job | steps found by the list |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} of {} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} | {:.2} | {:.0} |",
        f.shown,
        f.jobs,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        max,
        f.history_reads_per_job,
        f.status_writes_per_job,
        f.listed_steps
    );
    json!({
        "jobs": f.jobs, "search_s": SEARCH_TAKES.as_secs_f64(), "shown": f.shown,
        "measured": f.delays.len(),
        "step_to_shown_s": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": max},
        "history_reads_per_job": f.history_reads_per_job,
        "status_writes_per_job": f.status_writes_per_job,
        "listed_steps": f.listed_steps,
    })
}
