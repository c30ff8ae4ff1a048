//! The operator against raw Temporal, side by side, in one run, on the real local stack that
//! `scripts/bench.sh` starts. Prints a table and writes the same figures as JSON.
//!
//! 1. raw Temporal: N workflows started by a Temporal client against the worker;
//! 2. the operator: N ImageJobs created through the apiserver, until `Completed`;
//! 3. the facade: N `POST /images/process` until completed, and `GET .../status` under `wrk`;
//! 4. efficiency: status writes and apiserver requests per job (kubectl path and facade path
//!    apart), controller CPU time per job, every process's CPU per job ([`cpu`]), controller
//!    RSS with 1,000 and 10,000 ImageJobs present, worker RSS;
//! 5. `--scale N` ([`scale`]): N finished jobs, a controller started over them, the facade;
//! 6. `--tuning` ([`tuning`]): raw Temporal throughput for several worker settings;
//! 7. `--listed-steps N` ([`steps`]): how soon jobs the controller does not watch show their
//!    similarity search step.
//!
//! Phases 1 and 2 run at each `--concurrency` level. Each figure is the median of `--reps`
//! repetitions, with min and max; a warm-up is excluded.

mod burst;
mod cpu;
mod fairness;
mod load;
mod scale;
mod steps;
mod tuning;

use clap::Parser;
use futures::future::join_all;
use imagejob_operator::{
    crd::{ImageJob, ImageJobSpec, ImageJobStatus, Phase},
    temporal::{
        client::{TemporalGateway, WorkflowGateway},
        connection::TemporalSettings,
        contract::ImageProcessingInput,
    },
};
use imagejob_testkit::{
    ChildGuard, eventually, finished::Finished, free_port, kube_env::create_namespace,
    operator_command, until_ready,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// Memory with `jobs` finished ImageJobs present, MiB.
struct Rss {
    jobs: usize,
    controller: f64,
    /// The facade over typical jobs.
    facade: f64,
    /// The facade over jobs as wide as the limits allow.
    facade_widest: f64,
}

#[derive(Parser, Debug)]
struct Args {
    /// Workflows / jobs per phase and repetition.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Repetitions of each phase (figures are medians).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Jobs in flight at once when submitting: phases 1 and 2 run at each level, the facade at
    /// the highest.
    #[arg(long, value_delimiter = ',', default_value = "4,32")]
    concurrency: Vec<usize>,
    /// Finished ImageJobs of the scale phase (0: skipped).
    #[arg(long, default_value_t = 0)]
    scale: usize,
    /// One facade under 1,000 waiting `/result` requests and 10,000 idle connections.
    #[arg(long)]
    facade_load: bool,
    /// Compare worker settings on raw Temporal throughput.
    #[arg(long)]
    tuning: bool,
    /// Fair sharing: one namespace's backlog of this many jobs, then another's 10, with
    /// Temporal's fairness on and off (0: skipped).
    #[arg(long, default_value_t = 0)]
    fairness: usize,
    /// Run the fairness phase alone.
    #[arg(long, requires = "fairness")]
    fairness_only: bool,
    /// Listed jobs' search step: this many similarity jobs at once, none watched (0: skipped).
    #[arg(long, default_value_t = 0)]
    listed_steps: usize,
    /// Run the listed-steps phase alone.
    #[arg(long, requires = "listed_steps")]
    listed_steps_only: bool,
    /// Bursts: this many jobs submitted at once through kubectl, the facade and a Temporal
    /// client, side by side (comma-separated sizes; none: skipped).
    #[arg(long, value_delimiter = ',')]
    burst: Vec<usize>,
    /// How the bursts are submitted (comma-separated; the ratios need `raw`).
    #[arg(long, value_delimiter = ',', default_value = "raw,kubectl,facade")]
    burst_paths: Vec<burst::Submit>,
    /// Cancel under a backlog: jobs cancelled and deleted behind this many queued (0: skipped).
    #[arg(long, default_value_t = 0)]
    cancel_backlog: usize,
    /// Run the burst and cancel phases alone.
    #[arg(long)]
    burst_only: bool,
    /// ImageJob counts at which the controller's RSS is measured.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rss_jobs: Vec<usize>,
    /// Seconds of each `wrk` run on the status endpoint.
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    /// `wrk` connections.
    #[arg(long, default_value_t = 32)]
    wrk_connections: u32,
    /// Folder of the JSON results.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const TOKEN: &str = "bench-token";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench.sh"))
}

/// `imagejob-operator ROLE` with `envs`, its output dropped, killed on drop.
fn spawn(role: &str, envs: &[(&str, String)]) -> ChildGuard {
    let mut cmd = operator_command(role);
    cmd.stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    ChildGuard::spawn(&mut cmd)
}

/// Median, min and max of one figure over the repetitions.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut values: Vec<f64>) -> Stat {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Stat {
        median,
        min: values[0],
        max: values[n - 1],
    }
}

fn percentile(sorted_ms: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted_ms.len() as f64).ceil() as usize).clamp(1, sorted_ms.len());
    sorted_ms[rank - 1]
}

/// Throughput and latency percentiles of one repetition.
struct Run {
    per_sec: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn summarize(wall: Duration, mut latencies_ms: Vec<f64>) -> Run {
    latencies_ms.sort_by(f64::total_cmp);
    Run {
        per_sec: latencies_ms.len() as f64 / wall.as_secs_f64(),
        p50: percentile(&latencies_ms, 0.50),
        p95: percentile(&latencies_ms, 0.95),
        p99: percentile(&latencies_ms, 0.99),
    }
}

fn input(i: usize) -> ImageProcessingInput {
    ImageProcessingInput {
        url: format!("https://example.com/{i}.jpg"),
        title: Some("bench".into()),
        description: None,
        tags: vec!["bench".into()],
        similarity_search: false,
    }
}

/// Phase 1: workflows straight through Temporal.
async fn raw_temporal(gateway: &Arc<TemporalGateway>, n: usize, concurrency: usize) -> Run {
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks = (0..n).map(|i| {
        let (gateway, gate) = (gateway.clone(), gate.clone());
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let id = format!("image-processing-{}", uuid::Uuid::new_v4());
            let t0 = Instant::now();
            gateway.start(&id, input(i)).await.expect("start");
            gateway.wait_closed(&id).await.expect("wait");
            t0.elapsed().as_secs_f64() * 1000.0
        })
    });
    let latencies = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    summarize(started.elapsed(), latencies)
}

/// For each job: from Temporal closing its workflow to the watch seeing it finished (ms).
async fn close_to_visible(
    gateway: &TemporalGateway,
    finished: &Finished,
    uids: &[String],
) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(uids.len());
    for uid in uids {
        let id = format!("image-processing-{uid}");
        let closed = gateway
            .snapshot(&id)
            .await
            .expect("snapshot")
            .close_time
            .expect("closed");
        let seen = finished.seen_at(uid).expect("seen");
        let ms = match seen.duration_since(closed) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -e.duration().as_secs_f64() * 1000.0,
        };
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// Submits `n` jobs through `submit` (which returns each job's uid), `concurrency` at a time,
/// and times each from its submission until the watch sees it finished.
async fn through_jobs<F, Fut>(
    finished: &Finished,
    n: usize,
    concurrency: usize,
    submit: F,
) -> (Run, Vec<String>)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
{
    // Like the raw path, a job holds its slot until it finished: `concurrency` jobs in flight.
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks = (0..n).map(|i| {
        let (gate, submit, finished) = (gate.clone(), submit.clone(), finished.clone());
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let t0 = Instant::now();
            let uid = submit(i).await;
            let done = finished.wait_all(std::slice::from_ref(&uid)).await[0];
            (done.duration_since(t0).as_secs_f64() * 1000.0, uid)
        })
    });
    let (latencies, uids) = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .unzip();
    (summarize(started.elapsed(), latencies), uids)
}

/// Phase 2: jobs created through the apiserver, until Completed.
async fn operator(
    api: &Api<ImageJob>,
    finished: &Finished,
    n: usize,
    concurrency: usize,
    tag: &str,
) -> (Run, Vec<String>) {
    let (api, tag) = (api.clone(), tag.to_owned());
    through_jobs(finished, n, concurrency, move |i| {
        let (api, name) = (api.clone(), format!("{tag}-{i}"));
        async move {
            let spec = ImageJobSpec {
                url: format!("https://example.com/{i}.jpg"),
                tags: vec!["bench".into()],
                ..Default::default()
            };
            let job = api
                .create(&PostParams::default(), &ImageJob::new(&name, spec))
                .await
                .expect("create");
            job.uid().expect("uid")
        }
    })
    .await
}

/// Phase 3a: POST /images/process until completed.
async fn facade_posts(base: &str, finished: &Finished, n: usize, concurrency: usize) -> Run {
    let (http, url) = (reqwest::Client::new(), format!("{base}/images/process"));
    through_jobs(finished, n, concurrency, move |i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(&json!({"url": format!("https://example.com/{i}.jpg"), "tags": ["bench"]}))
                .send()
                .await
                .expect("post");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            let id = body["workflow_id"]
                .as_str()
                .unwrap_or_else(|| panic!("POST answered {status}: {body}"));
            id.trim_start_matches("image-processing-").to_owned()
        }
    })
    .await
    .0
}

fn parse_wrk_latency(text: &str) -> f64 {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// `GET url` under wrk: (requests/s, p50 ms, p99 ms).
fn wrk(url: &str, seconds: u64, connections: u32) -> (f64, f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}"), url])
        .output()
        .expect("wrk (scripts/install-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let pct = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| parse_wrk_latency(v.trim()))
            .unwrap_or(f64::NAN)
    };
    (rps, pct("50%"), pct("99%"))
}

/// Sums the samples of a metric in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// Adds finished jobs (status Completed) until `ns` holds `total`, while no controller runs.
async fn fill_finished(
    client: &Client,
    ns: &str,
    total: usize,
    spec_of: fn(usize) -> ImageJobSpec,
) {
    let api: Api<ImageJob> = Api::namespaced(client.clone(), ns);
    let have = api
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len();
    let gate = Arc::new(Semaphore::new(64));
    let tasks = (have..total).map(|i| {
        let (api, gate) = (api.clone(), gate.clone());
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let name = format!("done-{i}");
            // As a job the controller ran carries it.
            let meta = ObjectMeta { name: Some(name.clone()), finalizers: Some(vec![imagejob_operator::crd::FINALIZER.into()]), ..Default::default() };
            let spec = spec_of(i);
            let job = ImageJob { metadata: meta, ..ImageJob::new(&name, spec) };
            let created = api.create(&PostParams::default(), &job).await.expect("create");
            let status = ImageJobStatus {
                phase: Phase::Completed,
                workflow_id: Some(format!("image-processing-{}", created.uid().expect("uid"))),
                image_id: Some(uuid::Uuid::new_v4().to_string()),
                metadata_stored: true,
                ..Default::default()
            };
            let patch = json!({"apiVersion": "imagejob.dev/v1alpha1", "kind": "ImageJob", "status": status});
            api.patch_status(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&patch)).await.expect("status");
        })
    });
    for t in join_all(tasks).await {
        t.expect("task");
    }
}

/// The spec of a typical bench job.
fn small_spec(i: usize) -> ImageJobSpec {
    ImageJobSpec {
        url: format!("https://example.com/{i}.jpg"),
        tags: vec!["bench".into(), "rss".into()],
        ..Default::default()
    }
}

/// The largest spec the limits allow: every field at its byte limit, of 4-byte characters
/// where a character may be any (the worst a client can make a replica's cache hold).
fn widest_spec(i: usize) -> ImageJobSpec {
    use imagejob_operator::crd::{
        MAX_DESCRIPTION_LEN, MAX_TAG_LEN, MAX_TAGS, MAX_TITLE_LEN, MAX_URL_LEN,
    };
    let wide = |bytes: usize| "\u{1F455}".repeat(bytes / 4);
    let url = format!("https://example.com/{i}/");
    ImageJobSpec {
        url: format!("{url}{}", "a".repeat(MAX_URL_LEN - url.len())),
        title: Some(wide(MAX_TITLE_LEN)),
        description: Some(wide(MAX_DESCRIPTION_LEN)),
        tags: (0..MAX_TAGS).map(|_| wide(MAX_TAG_LEN)).collect(),
        ..Default::default()
    }
}

/// Facade RSS (MiB) once it is ready over the jobs of its namespace.
async fn facade_rss(env: &[(&str, String)]) -> f64 {
    let base = facade_base(env);
    let facade = spawn("facade", env);
    until_ready(&base, Duration::from_secs(600)).await;
    let mut rss: f64 = 0.0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss = rss.max(facade.rss_mib());
    }
    rss
}

/// Controller RSS (MiB) over the `jobs` jobs in `ns`, once it is ready and has reconciled every
/// job its cache holds (settled jobs, finished without a TTL, need no reconcile).
async fn controller_rss(ns: &str, settings: &TemporalSettings, jobs: usize) -> f64 {
    let port = free_port();
    let controller = spawn("controller", &controller_env(ns, settings, port));
    let base = format!("http://127.0.0.1:{port}");
    until_ready(&base, Duration::from_secs(600)).await;
    let what = format!("the controller over {jobs} jobs through its first pass");
    eventually(&what, Duration::from_secs(600), || async {
        let text = scrape(&format!("{base}/metrics")).await;
        (metric_sum(&text, "imagejob_reconciles_total")
            >= metric_sum(&text, "imagejob_controller_cached_jobs"))
        .then_some(())
    })
    .await;
    // Settle, then take the highest of a few samples.
    let mut rss: f64 = 0.0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss = rss.max(controller.rss_mib());
    }
    rss
}

fn temporal_env(settings: &TemporalSettings) -> Vec<(&'static str, String)> {
    vec![
        ("TEMPORAL_HOST", settings.host.clone()),
        ("TEMPORAL_PORT", settings.port.to_string()),
        ("TEMPORAL_TASK_QUEUE", settings.task_queue.clone()),
    ]
}

fn controller_env(ns: &str, settings: &TemporalSettings, port: u16) -> Vec<(&'static str, String)> {
    let mut e = temporal_env(settings);
    e.push(("WATCH_NAMESPACES", ns.to_owned()));
    e.push(("CONTROLLER_METRICS_ADDR", format!("127.0.0.1:{port}")));
    e
}

fn fmt_stat(s: Stat, digits: usize) -> String {
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

fn stat_json(s: Stat) -> Value {
    json!({"median": s.median, "min": s.min, "max": s.max})
}

/// The facade's URL in its environment.
fn facade_base(env: &[(&str, String)]) -> String {
    env.iter()
        .find(|(k, _)| *k == "FACADE_ADDR")
        .map(|(_, v)| format!("http://{v}"))
        .expect("FACADE_ADDR")
}

/// The workflow id of some job in `ns`.
async fn first_workflow_id(client: &Client, ns: &str) -> String {
    let api: Api<ImageJob> = Api::namespaced(client.clone(), ns);
    let page = api
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .expect("list");
    page.items[0]
        .status
        .clone()
        .and_then(|s| s.workflow_id)
        .expect("a workflow id")
}

/// Controller apiserver requests and status writes counted between two scrapes.
#[derive(Default)]
struct Requests {
    requests: f64,
    writes: f64,
    jobs: usize,
}

impl Requests {
    fn add(&mut self, before: &str, after: &str, jobs: usize) {
        let delta = |name| metric_sum(after, name) - metric_sum(before, name);
        self.requests += delta("imagejob_apiserver_requests_total");
        self.writes += delta("imagejob_status_writes_total");
        self.jobs += jobs;
    }

    fn per_job(&self) -> (f64, f64) {
        let n = self.jobs.max(1) as f64;
        (self.requests / n, self.writes / n)
    }
}

/// Phases 1 and 2 at one concurrency level, over the repetitions.
#[derive(Default)]
struct Level {
    raw: Vec<Run>,
    op: Vec<Run>,
    visible: Vec<Vec<f64>>,
    requests: Requests,
    cpu_raw: cpu::Spent,
    cpu_op: cpu::Spent,
}

impl Level {
    fn ratio(&self) -> Stat {
        stat(
            self.raw
                .iter()
                .zip(&self.op)
                .map(|(r, o)| o.per_sec / r.per_sec)
                .collect(),
        )
    }

    fn overhead(&self) -> Stat {
        stat(
            self.raw
                .iter()
                .zip(&self.op)
                .map(|(r, o)| o.p50 - r.p50)
                .collect(),
        )
    }
}

fn print_paths(title: &str, rows: &[(&str, &[Run])], paths: &mut serde_json::Map<String, Value>) {
    let col = |f: fn(&Run) -> f64, runs: &[Run]| stat(runs.iter().map(f).collect());
    println!("\n{title}\n");
    println!("| path | jobs/s | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for (name, runs) in rows {
        let (t, p50, p95, p99) = (
            col(|r| r.per_sec, runs),
            col(|r| r.p50, runs),
            col(|r| r.p95, runs),
            col(|r| r.p99, runs),
        );
        println!(
            "| {name} | {} | {} | {} | {} |",
            fmt_stat(t, 1),
            fmt_stat(p50, 1),
            fmt_stat(p95, 1),
            fmt_stat(p99, 1)
        );
        paths.insert(
            format!("{title}: {name}"),
            json!({"per_sec": stat_json(t), "p50_ms": stat_json(p50), "p95_ms": stat_json(p95), "p99_ms": stat_json(p99)}),
        );
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    imagejob_operator::tls::install_crypto_provider();
    let settings = TemporalSettings {
        host: env("TEMPORAL_HOST"),
        port: env("TEMPORAL_PORT").parse().expect("port"),
        namespace: "default".into(),
        task_queue: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        ..Default::default()
    };
    let temporal_metrics = format!("http://127.0.0.1:{}/metrics", env("TEMPORAL_METRICS_PORT"));
    let client = Client::try_default().await.expect("KUBECONFIG");
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let data = tempfile::tempdir().expect("tempdir");
    let fair = if args.fairness > 0 {
        Some(fairness::run(&client, run_id, args.fairness, &settings, data.path()).await)
    } else {
        None
    };
    if args.fairness_only {
        let figures = fair.as_ref().map(fairness::print);
        write_results(&args.out, &json!({"commit": commit(), "fairness": figures}));
        return;
    }
    let stepped = if args.listed_steps > 0 {
        let figures = steps::run(&client, run_id, args.listed_steps, &settings, data.path()).await;
        Some(steps::print(&figures))
    } else {
        None
    };
    if args.listed_steps_only {
        write_results(
            &args.out,
            &json!({"commit": commit(), "cores": cores(), "listed_steps": stepped}),
        );
        return;
    }
    let tokens = data.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("tokens");
    let burst = if args.burst.is_empty() && args.cancel_backlog == 0 {
        None
    } else {
        let bench = burst::Bench {
            client: &client,
            run_id,
            settings: &settings,
            temporal_metrics: &temporal_metrics,
            data: data.path(),
            tokens: &tokens,
            token: TOKEN,
        };
        Some(burst::run(&bench, &args.burst, &args.burst_paths, args.cancel_backlog).await)
    };
    if args.burst_only {
        write_results(
            &args.out,
            &json!({"commit": commit(), "cores": cores(), "burst": burst}),
        );
        return;
    }
    let ns = format!("bench-{run_id}");
    create_namespace(&client, &ns).await;
    let api: Api<ImageJob> = Api::namespaced(client.clone(), &ns);
    let highest = args.concurrency.iter().copied().max().unwrap_or(32);

    let mut worker_env = temporal_env(&settings);
    worker_env.push((
        "EMBEDDED_STORE_PATH",
        data.path().join("meta.redb").display().to_string(),
    ));
    let worker = spawn("worker", &worker_env);
    let metrics_port = free_port();
    let controller = spawn("controller", &controller_env(&ns, &settings, metrics_port));
    let facade_env = |namespace: &str| {
        let mut e = temporal_env(&settings);
        e.push(("FACADE_NAMESPACE", namespace.to_owned()));
        e.push(("FACADE_ADDR", format!("127.0.0.1:{}", free_port())));
        e.push(("FACADE_ADMIN_ADDR", format!("127.0.0.1:{}", free_port())));
        e.push(("FACADE_TOKENS_FILE", tokens.display().to_string()));
        e
    };
    let bench_facade = facade_env(&ns);
    let base = facade_base(&bench_facade);
    let facade = spawn("facade", &bench_facade);
    let meter = cpu::Meter::new(&[
        ("worker", worker.0.id()),
        ("controller", controller.0.id()),
        ("facade", facade.0.id()),
    ]);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    until_ready(&base, Duration::from_secs(60)).await;

    let gateway = Arc::new(TemporalGateway::new(settings.clone()));
    let finished = Finished::default();
    finished.watch(api.clone());

    eprintln!("warm-up ({} workflows, jobs and posts)", 20);
    raw_temporal(&gateway, 20, highest).await;
    operator(&api, &finished, 20, highest, "warm").await;
    facade_posts(&base, &finished, 20, highest).await;

    let mut levels: Vec<Level> = args.concurrency.iter().map(|_| Level::default()).collect();
    let mut posts = Vec::new();
    let mut facade_path = Requests::default();
    let controller_cpu_before = meter.seconds(controller.0.id());
    for rep in 0..args.reps {
        eprintln!(
            "repetition {}/{}: {} jobs per phase",
            rep + 1,
            args.reps,
            args.jobs
        );
        for (level, &c) in levels.iter_mut().zip(&args.concurrency) {
            let cpu_before = meter.sample();
            level.raw.push(raw_temporal(&gateway, args.jobs, c).await);
            level.cpu_raw.add(&cpu_before, &meter.sample(), args.jobs);
            let before = scrape(&metrics_url).await;
            let cpu_before = meter.sample();
            let (o, uids) = operator(&api, &finished, args.jobs, c, &format!("r{rep}c{c}")).await;
            level.cpu_op.add(&cpu_before, &meter.sample(), args.jobs);
            // Late writes of the last jobs are counted once their status settled.
            tokio::time::sleep(Duration::from_millis(500)).await;
            level
                .requests
                .add(&before, &scrape(&metrics_url).await, args.jobs);
            level
                .visible
                .push(close_to_visible(&gateway, &finished, &uids).await);
            level.op.push(o);
        }
        let before = scrape(&metrics_url).await;
        posts.push(facade_posts(&base, &finished, args.jobs, highest).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        facade_path.add(&before, &scrape(&metrics_url).await, args.jobs);
    }
    let jobs_through_controller =
        levels.iter().map(|l| l.requests.jobs).sum::<usize>() + facade_path.jobs;
    let cpu_ms_per_job = (meter.seconds(controller.0.id()) - controller_cpu_before) * 1000.0
        / jobs_through_controller as f64;

    let some_id = first_workflow_id(&client, &ns).await;
    let status_url = format!("{base}/images/workflow/{some_id}/status");
    let wrk_runs: Vec<_> = (0..args.reps)
        .map(|_| wrk(&status_url, args.wrk_seconds, args.wrk_connections))
        .collect();

    let worker_rss = worker.rss_mib();
    drop(controller);
    let mut rss = Vec::new();
    let (rss_ns, widest_ns) = (
        format!("bench-rss-{run_id}"),
        format!("bench-widest-{run_id}"),
    );
    create_namespace(&client, &rss_ns).await;
    create_namespace(&client, &widest_ns).await;
    for &n in &args.rss_jobs {
        eprintln!("controller and facade RSS with {n} ImageJobs present, typical and widest");
        fill_finished(&client, &rss_ns, n, small_spec).await;
        fill_finished(&client, &widest_ns, n, widest_spec).await;
        rss.push(Rss {
            jobs: n,
            controller: controller_rss(&rss_ns, &settings, n).await,
            facade: facade_rss(&facade_env(&rss_ns)).await,
            facade_widest: facade_rss(&facade_env(&widest_ns)).await,
        });
    }
    let scaled = if args.scale > 0 {
        let scale_ns = format!("bench-scale-{run_id}");
        create_namespace(&client, &scale_ns).await;
        let env = facade_env(&scale_ns);
        let phase = scale::run(
            &client,
            &scale_ns,
            args.scale,
            &settings,
            &temporal_metrics,
            env,
            args.wrk_seconds,
        );
        Some(phase.await)
    } else {
        None
    };
    let loaded = if args.facade_load {
        let load_ns = format!("bench-load-{run_id}");
        create_namespace(&client, &load_ns).await;
        Some(load::run(&client, &load_ns, facade_env(&load_ns), args.wrk_seconds).await)
    } else {
        None
    };
    let tuned = if args.tuning {
        Some(tuning::run(&settings, data.path(), args.jobs, args.reps, highest).await)
    } else {
        None
    };

    let cores = cores();
    let commit = commit();

    println!(
        "\nimagejob-operator benchmark — {cores} cores, commit {commit}, {} jobs x {} reps, concurrency {:?}",
        args.jobs, args.reps, args.concurrency
    );
    println!("median (min–max)");
    let mut paths = serde_json::Map::new();
    for (level, c) in levels.iter().zip(&args.concurrency) {
        let rows: Vec<(&str, &[Run])> = vec![
            ("raw Temporal", &level.raw),
            ("operator (apiserver)", &level.op),
        ];
        print_paths(&format!("{c} in flight"), &rows, &mut paths);
    }
    print_paths(
        &format!("{highest} in flight"),
        &[("facade POST", &posts)],
        &mut paths,
    );
    let wrk_rps = stat(wrk_runs.iter().map(|w| w.0).collect());
    let wrk_p50 = stat(wrk_runs.iter().map(|w| w.1).collect());
    let wrk_p99 = stat(wrk_runs.iter().map(|w| w.2).collect());
    let (facade_requests, facade_writes) = facade_path.per_job();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut levels_json = Vec::new();
    for (level, &c) in levels.iter().zip(&args.concurrency) {
        let (ratio, overhead) = (level.ratio(), level.overhead());
        let visible_p50 = stat(level.visible.iter().map(|l| percentile(l, 0.50)).collect());
        let visible_p99 = stat(level.visible.iter().map(|l| percentile(l, 0.99)).collect());
        let (ratio_target, overhead_target) = if c <= 4 {
            (">= 0.95", "<= 50")
        } else {
            (">= 0.90", "<= 100")
        };
        rows.push((
            format!("operator / raw throughput, {c} in flight"),
            fmt_stat(ratio, 2),
            ratio_target.into(),
        ));
        rows.push((
            format!("create->Completed overhead p50 ms, {c} in flight"),
            fmt_stat(overhead, 1),
            overhead_target.into(),
        ));
        rows.push((
            format!("Temporal close -> status visible p50 / p99 ms, {c} in flight"),
            format!(
                "{} / {}",
                fmt_stat(visible_p50, 1),
                fmt_stat(visible_p99, 1)
            ),
            String::new(),
        ));
        let (requests, writes) = level.requests.per_job();
        rows.push((
            format!("apiserver requests / status writes per job, kubectl path, {c} in flight"),
            format!("{requests:.2} / {writes:.2}"),
            "<= 3 requests".into(),
        ));
        levels_json.push(json!({"in_flight": c, "operator_over_raw_throughput": stat_json(ratio),
            "apiserver_requests_per_job": requests, "status_writes_per_job": writes,
            "create_to_completed_overhead_p50_ms": stat_json(overhead),
            "close_to_status_visible_ms": {"p50": stat_json(visible_p50), "p99": stat_json(visible_p99)}}));
    }
    rows.push((
        format!("apiserver requests / status writes per job, facade path, {highest} in flight"),
        format!("{facade_requests:.2} / {facade_writes:.2}"),
        "<= 2 requests".into(),
    ));
    rows.push((
        "controller CPU ms per job (user+sys)".into(),
        format!("{cpu_ms_per_job:.2}"),
        "<= 2".into(),
    ));
    rows.push((
        format!(
            "facade GET status req/s (wrk, {} conns)",
            args.wrk_connections
        ),
        fmt_stat(wrk_rps, 0),
        String::new(),
    ));
    rows.push((
        "facade GET status p50 / p99 ms".into(),
        format!("{} / {}", fmt_stat(wrk_p50, 2), fmt_stat(wrk_p99, 2)),
        "p99 <= 5".into(),
    ));
    for r in &rss {
        rows.push((
            format!("controller RSS with {} ImageJobs, MiB", r.jobs),
            format!("{:.1}", r.controller),
            String::new(),
        ));
        rows.push((
            format!(
                "facade RSS with {} ImageJobs, typical / widest allowed, MiB",
                r.jobs
            ),
            format!("{:.1} / {:.1}", r.facade, r.facade_widest),
            String::new(),
        ));
    }
    rows.push((
        "worker RSS, MiB".into(),
        format!("{worker_rss:.1}"),
        String::new(),
    ));
    if let Some(s) = &scaled {
        rows.extend(s.rows().into_iter().map(|(a, b, c)| (a, b, c.to_owned())));
    }
    if let Some(l) = &loaded {
        rows.extend(l.rows().into_iter().map(|(a, b, c)| (a, b, c.to_owned())));
    }
    println!("\n| figure | value | target |");
    println!("|---|---|---|");
    for (figure, value, target) in &rows {
        println!("| {figure} | {value} | {target} |");
    }
    let cpu_levels: Vec<_> = levels
        .iter()
        .zip(&args.concurrency)
        .map(|(l, &c)| (c, &l.cpu_raw, &l.cpu_op))
        .collect();
    let cpu_json = cpu::report(&meter, &cpu_levels);
    if let Some(results) = &tuned {
        println!("\nworker settings, raw Temporal at {highest} in flight\n");
        println!("| setting | jobs/s |");
        println!("|---|---|");
        for (name, s) in results {
            println!("| {name} | {} |", fmt_stat(*s, 1));
        }
    }

    let result = json!({
        "commit": commit, "cores": cores, "jobs": args.jobs, "reps": args.reps, "concurrency": args.concurrency,
        "paths": paths,
        "levels": levels_json,
        "facade_path": {"in_flight": highest, "apiserver_requests_per_job": facade_requests, "status_writes_per_job": facade_writes},
        "controller_cpu_ms_per_job": cpu_ms_per_job,
        "cpu_ms_per_job": cpu_json,
        "facade_get_status": {"connections": args.wrk_connections, "seconds": args.wrk_seconds,
            "requests_per_sec": stat_json(wrk_rps), "p50_ms": stat_json(wrk_p50), "p99_ms": stat_json(wrk_p99)},
        "controller_rss_mib": rss.iter().map(|r| json!({"jobs": r.jobs, "rss_mib": r.controller})).collect::<Vec<_>>(),
        "facade_rss_mib": rss.iter().map(|r| json!({"jobs": r.jobs, "typical": r.facade, "widest": r.facade_widest})).collect::<Vec<_>>(),
        "worker_rss_mib": worker_rss,
        "scale": scaled.as_ref().map(scale::Scale::json),
        "facade_load": loaded.as_ref().map(load::Load::json),
        "worker_settings": tuned.as_deref().map(tuning::json),
        "fairness": fair.as_ref().map(fairness::print),
        "burst": burst,
        "listed_steps": stepped,
    });
    write_results(&args.out, &result);
}

/// The machine's cores.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// The checked-out commit, short.
fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Writes `result` as `bench-<time>.json` in `out`.
fn write_results(out: &std::path::Path, result: &Value) {
    std::fs::create_dir_all(out).expect("results folder");
    let path = out.join(format!(
        "bench-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::write(&path, serde_json::to_string_pretty(result).expect("json"))
        .expect("write results");
    println!("\nJSON: {}", path.display());
}
