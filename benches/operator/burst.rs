//! `--burst N[,N…]`: a catalog upload. N jobs submitted at once through kubectl (one
//! `kubectl apply` of N ImageJobs), through the facade (N concurrent `POST /images/process`) and
//! as N workflows started at once by a Temporal client, one after the other on the same worker:
//! drain time (first submit to the last job seen finished by a watcher), the time until every job
//! shows it started, peak memory, Temporal calls and history reads per job (the Temporal server's
//! own counts), apiserver requests, writes and watch events per job (the apiserver's own counts)
//! and every process's CPU per job. Then the cancel phase ([`cancel`]): jobs cancelled and
//! deleted while a backlog is queued ahead of them.

mod cancel;
mod costs;
mod counts;
mod progress;

use super::{cpu, spawn, temporal_env};
use counts::Counts;
pub use counts::temporal_job_calls;
use imagejob_operator::temporal::{
    client::{Dispatch, TemporalGateway, WorkflowGateway},
    connection::TemporalSettings,
};
use imagejob_testkit::{ChildGuard, free_port, kube_env::create_namespace, until_ready};
use kube::Client;
use progress::Progress;
use serde_json::{Value, json};
use std::{
    io::Write,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// Starts and POSTs in flight at once (a client's connection pool, not a throttle: the
/// operator's paths queue behind the apiserver and the facade the same way).
const IN_FLIGHT: usize = 256;
/// How often the raw path's watcher counts completed workflows.
const COUNT_EVERY: Duration = Duration::from_millis(250);
/// The raw path's name in the tables.
const RAW: &str = "raw Temporal";
/// The raw path with the operator's fairness key.
const RAW_KEYED: &str = "raw Temporal, fairness key";
/// Longest a burst may take before the benchmark gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

/// What the burst phase needs of the harness.
pub struct Bench<'a> {
    pub client: &'a Client,
    pub run_id: &'a str,
    pub settings: &'a TemporalSettings,
    pub temporal_metrics: &'a str,
    pub data: &'a Path,
    /// The facade's bearer-token file.
    pub tokens: &'a Path,
    pub token: &'a str,
}

/// One path of one burst.
pub struct PathFigures {
    pub path: &'static str,
    pub jobs: usize,
    /// From the first submit until the last submit returned, s.
    pub submit_seconds: f64,
    /// From the first submit until the watcher saw the last job finished, s.
    pub drain_seconds: f64,
    /// Until every job showed `Processing`, a step or its end (operator paths), s.
    pub shown_seconds: Option<f64>,
    pub controller_peak_mib: Option<f64>,
    pub facade_peak_mib: Option<f64>,
    pub counts: Counts,
    /// CPU ms per job, by process.
    pub cpu_ms: Vec<(&'static str, f64)>,
}

impl PathFigures {
    fn per_sec(&self) -> f64 {
        self.jobs as f64 / self.drain_seconds
    }

    fn total_cpu_ms(&self) -> f64 {
        self.cpu_ms
            .iter()
            .map(|(_, ms)| ms)
            .filter(|ms| ms.is_finite())
            .sum()
    }

    /// Apiserver, etcd and controller CPU per job: the Kubernetes side of the operator.
    fn kubernetes_side_ms(&self) -> f64 {
        self.cpu_ms
            .iter()
            .filter(|(name, _)| matches!(*name, "kube-apiserver" | "etcd" | "controller"))
            .map(|(_, ms)| ms)
            .filter(|ms| ms.is_finite())
            .sum()
    }
}

/// The ways a burst is submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Submit {
    /// N workflows started by a Temporal client: the baseline.
    Raw,
    /// The same with the dispatch the operator sends (its namespace as the fairness key), to
    /// tell what fairness costs Temporal from what the operator's calls cost it.
    RawKeyed,
    /// One `kubectl apply` of N ImageJobs.
    Kubectl,
    /// N concurrent facade POSTs.
    Facade,
}

/// Runs every burst size by each of `paths`, then the cancel phase with a backlog of the largest.
pub async fn run(
    bench: &Bench<'_>,
    sizes: &[usize],
    paths: &[Submit],
    cancel_backlog: usize,
) -> Value {
    let settings = TemporalSettings {
        task_queue: format!("burst-{}", bench.run_id),
        ..bench.settings.clone()
    };
    let mut worker_env = temporal_env(&settings);
    worker_env.push((
        "EMBEDDED_STORE_PATH",
        bench.data.join("burst.redb").display().to_string(),
    ));
    let worker = spawn("worker", &worker_env);
    let gateway = Arc::new(TemporalGateway::new(settings.clone()));
    let mut bursts = Vec::new();
    for (round, &n) in sizes.iter().enumerate() {
        let mut figures = Vec::new();
        // A path may run twice (raw before and after the operator's paths): each run its own ids.
        for (k, path) in paths.iter().enumerate() {
            let tag = format!("{}-{round}-{k}", bench.run_id);
            eprintln!("burst of {n}: {path:?}");
            figures.push(match path {
                Submit::Raw => raw(bench, &settings, &gateway, &worker, n, &tag, None).await,
                Submit::RawKeyed => {
                    let key = Some(format!("burst-keyed-{tag}"));
                    raw(bench, &settings, &gateway, &worker, n, &tag, key).await
                }
                Submit::Kubectl => kubectl(bench, &settings, &worker, n, &tag).await,
                Submit::Facade => facade(bench, &settings, &worker, n, &tag).await,
            });
        }
        bursts.push(print(n, &figures));
    }
    // What the operator's requests cost, when an operator path ran.
    let operator_ran = paths
        .iter()
        .any(|p| matches!(p, Submit::Kubectl | Submit::Facade));
    let costs = if operator_ran {
        costs::run(bench).await
    } else {
        Vec::new()
    };
    // The worker stops: every job of the cancel phase's backlog stays queued ahead of the late
    // ones (stopping a queued job needs no worker).
    drop(worker);
    let cancelled = if cancel_backlog > 0 {
        Some(cancel::run(bench, &settings, cancel_backlog).await)
    } else {
        None
    };
    json!({"bursts": bursts, "request_costs": costs::json(&costs), "cancel_under_backlog": cancelled})
}

/// The operator's processes of one path, with what to measure them by.
struct Operator {
    controller: ChildGuard,
    facade: Option<(ChildGuard, String)>,
    metrics: String,
}

impl Operator {
    /// A controller (and a facade) fresh for one path, serving `ns`.
    async fn start(bench: &Bench<'_>, settings: &TemporalSettings, ns: &str, facade: bool) -> Self {
        let port = free_port();
        let controller = spawn("controller", &super::controller_env(ns, settings, port));
        let base = format!("http://127.0.0.1:{port}");
        until_ready(&base, Duration::from_secs(120)).await;
        let facade = if facade {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut env = temporal_env(settings);
            env.push(("FACADE_NAMESPACE", ns.to_owned()));
            env.push(("FACADE_ADDR", addr.clone()));
            env.push(("FACADE_ADMIN_ADDR", format!("127.0.0.1:{}", free_port())));
            env.push(("FACADE_TOKENS_FILE", bench.tokens.display().to_string()));
            // A catalog upload's token is allowed the whole burst at once.
            env.push(("FACADE_CREATE_RATE", "100000".into()));
            env.push(("FACADE_CREATE_BURST", "100000".into()));
            env.push(("FACADE_MAX_JOBS_IN_FLIGHT", "100000".into()));
            let process = spawn("facade", &env);
            let base = format!("http://{addr}");
            until_ready(&base, Duration::from_secs(120)).await;
            Some((process, base))
        } else {
            None
        };
        Self {
            controller,
            facade,
            metrics: format!("{base}/metrics"),
        }
    }

    /// The facade's URL (started with one).
    fn facade_base(&self) -> String {
        let (_, base) = self.facade.as_ref().expect("a facade");
        base.clone()
    }

    fn processes(&self, worker: &ChildGuard) -> cpu::Meter {
        let facade = self.facade.as_ref().map_or(0, |(f, _)| f.0.id());
        cpu::Meter::new(&[
            ("worker", worker.0.id()),
            ("controller", self.controller.0.id()),
            ("facade", facade),
        ])
    }
}

/// A file of `n` ImageJobs named `<prefix>-<i>`, for `kubectl apply -f`.
pub fn manifest(folder: &Path, ns: &str, prefix: &str, n: usize) -> std::path::PathBuf {
    let file = folder.join(format!("{ns}-{prefix}.yaml"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("manifest"));
    for i in 0..n {
        writeln!(
            out,
            "---\napiVersion: imagejob.dev/v1alpha1\nkind: ImageJob\nmetadata:\n  name: {prefix}-{i}\nspec:\n  url: https://example.com/{i}.jpg\n  tags: [bench]"
        )
        .expect("write manifest");
    }
    out.flush().expect("flush manifest");
    file
}

/// One `kubectl apply -f file` into `ns`.
pub fn kubectl_apply(ns: &str, file: &Path) {
    let applied = Command::new("kubectl")
        .args(["apply", "-n", ns, "-f"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("kubectl");
    assert!(applied.success(), "kubectl apply failed");
}

/// Peak resident memory of a process so far (VmHWM), MiB.
pub fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds of this process's finished children (kubectl).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // cutime and cstime: fields 16 and 17 of the line, 13 and 14 after the name.
    (fields.get(13).copied().unwrap_or(0.0) + fields.get(14).copied().unwrap_or(0.0)) / 100.0
}

/// CPU ms per job of each process of `meter` between two samples.
fn cpu_per_job(
    meter: &cpu::Meter,
    before: &cpu::Sample,
    after: &cpu::Sample,
    n: usize,
) -> Vec<(&'static str, f64)> {
    let mut spent = cpu::Spent::default();
    spent.add(before, after, n);
    meter.names().zip(spent.per_job_ms()).collect()
}

/// N workflows started at once by a Temporal client (with `fairness_key` as their fairness key,
/// if any); done when a count of the completed ones (one visibility call every
/// [`COUNT_EVERY`]) reaches N.
async fn raw(
    bench: &Bench<'_>,
    settings: &TemporalSettings,
    gateway: &Arc<TemporalGateway>,
    worker: &ChildGuard,
    n: usize,
    tag: &str,
    fairness_key: Option<String>,
) -> PathFigures {
    let meter = cpu::Meter::new(&[("worker", worker.0.id()), ("controller", 0), ("facade", 0)]);
    let before = Counts::take(bench.client, bench.temporal_metrics).await;
    let cpu_before = meter.sample();
    let keyed = fairness_key.is_some();
    let prefix = format!("burst-raw-{}{tag}-", if keyed { "keyed-" } else { "" });
    let dispatch = Dispatch {
        fairness_key,
        ..Default::default()
    };
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let starts: Vec<_> = (0..n)
        .map(|i| {
            let (gateway, gate, id) = (gateway.clone(), gate.clone(), format!("{prefix}{i}"));
            let dispatch = dispatch.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                (gateway
                    .start_dispatched(&id, super::input(i), dispatch)
                    .await)
                    .expect("start");
            })
        })
        .collect();
    for start in futures::future::join_all(starts).await {
        start.expect("start task");
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    let client = imagejob_operator::temporal::connection::connect(settings, None)
        .await
        .expect("connect");
    let query = format!("WorkflowId STARTS_WITH '{prefix}' AND ExecutionStatus = 'Completed'");
    loop {
        let done = client
            .count_workflows(query.clone(), Default::default())
            .await
            .expect("count")
            .count();
        if done >= n {
            break;
        }
        assert!(
            started.elapsed() < DRAIN_LIMIT,
            "raw burst: {done}/{n} done"
        );
        tokio::time::sleep(COUNT_EVERY).await;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let cpu_ms = cpu_per_job(&meter, &cpu_before, &meter.sample(), n);
    let after = Counts::take(bench.client, bench.temporal_metrics).await;
    PathFigures {
        path: if keyed { RAW_KEYED } else { RAW },
        jobs: n,
        submit_seconds,
        drain_seconds,
        shown_seconds: None,
        controller_peak_mib: None,
        facade_peak_mib: None,
        counts: after.since(&before, n, None),
        cpu_ms,
    }
}

/// What an operator path measures from just before its submit: the counts, the controller's
/// writes and every process's CPU.
struct Measure<'a> {
    operator: &'a Operator,
    meter: cpu::Meter,
    counts: counts::Snapshot,
    controller_writes: f64,
    cpu: cpu::Sample,
}

impl<'a> Measure<'a> {
    async fn begin(bench: &Bench<'_>, operator: &'a Operator, worker: &ChildGuard) -> Self {
        let meter = operator.processes(worker);
        let counts = Counts::take(bench.client, bench.temporal_metrics).await;
        let controller_writes = counts::controller(&operator.metrics).await;
        let cpu = meter.sample();
        Self {
            operator,
            meter,
            counts,
            controller_writes,
            cpu,
        }
    }

    /// The path's figures once its `n` jobs drained; `extra_cpu` adds processes measured apart.
    async fn end(
        self,
        bench: &Bench<'_>,
        path: &'static str,
        n: usize,
        times: Times,
        extra_cpu: &[(&'static str, f64)],
    ) -> PathFigures {
        let mut cpu_ms = cpu_per_job(&self.meter, &self.cpu, &self.meter.sample(), n);
        cpu_ms.extend_from_slice(extra_cpu);
        let writes = counts::controller(&self.operator.metrics).await - self.controller_writes;
        let after = Counts::take(bench.client, bench.temporal_metrics).await;
        let facade = self.operator.facade.as_ref();
        PathFigures {
            path,
            jobs: n,
            submit_seconds: times.submit,
            drain_seconds: times.drained,
            shown_seconds: Some(times.shown),
            controller_peak_mib: Some(peak_mib(self.operator.controller.0.id())),
            facade_peak_mib: facade.map(|(f, _)| peak_mib(f.0.id())),
            counts: after.since(&self.counts, n, Some(writes)),
            cpu_ms,
        }
    }
}

/// When an operator path's jobs were submitted, all shown started, and all finished, s.
struct Times {
    submit: f64,
    shown: f64,
    drained: f64,
}

/// N ImageJobs in one file, one `kubectl apply`.
async fn kubectl(
    bench: &Bench<'_>,
    settings: &TemporalSettings,
    worker: &ChildGuard,
    n: usize,
    tag: &str,
) -> PathFigures {
    let ns = format!("burst-kubectl-{tag}");
    create_namespace(bench.client, &ns).await;
    let file = manifest(bench.data, &ns, "job", n);
    let operator = Operator::start(bench, settings, &ns, false).await;
    let progress = Progress::watch(bench.client, &ns);
    let measure = Measure::begin(bench, &operator, worker).await;
    let kubectl_before = children_cpu_seconds();
    let started = Instant::now();
    kubectl_apply(&ns, &file);
    let submit = started.elapsed().as_secs_f64();
    let kubectl_ms = (children_cpu_seconds() - kubectl_before) * 1000.0 / n as f64;
    let (shown, drained) = progress.wait(n, started, DRAIN_LIMIT).await;
    let times = Times {
        submit,
        shown,
        drained,
    };
    let kubectl_cpu = [("kubectl", kubectl_ms)];
    (measure.end(bench, "kubectl apply", n, times, &kubectl_cpu)).await
}

/// N concurrent `POST /images/process`.
async fn facade(
    bench: &Bench<'_>,
    settings: &TemporalSettings,
    worker: &ChildGuard,
    n: usize,
    tag: &str,
) -> PathFigures {
    let ns = format!("burst-facade-{tag}");
    create_namespace(bench.client, &ns).await;
    let operator = Operator::start(bench, settings, &ns, true).await;
    let base = operator.facade_base();
    let progress = Progress::watch(bench.client, &ns);
    let measure = Measure::begin(bench, &operator, worker).await;
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("http client");
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let posts: Vec<_> = (0..n)
        .map(|i| {
            let (http, gate, url) = (http.clone(), gate.clone(), format!("{base}/images/process"));
            let token = bench.token.to_owned();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .json(
                        &json!({"url": format!("https://example.com/{i}.jpg"), "tags": ["bench"]}),
                    )
                    .send()
                    .await
                    .expect("post");
                let status = response.status();
                assert!(status.is_success(), "POST answered {status}");
            })
        })
        .collect();
    for post in futures::future::join_all(posts).await {
        post.expect("post task");
    }
    let submit = started.elapsed().as_secs_f64();
    let (shown, drained) = progress.wait(n, started, DRAIN_LIMIT).await;
    let times = Times {
        submit,
        shown,
        drained,
    };
    measure.end(bench, "facade POST", n, times, &[]).await
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// Prints one burst's tables; its figures as JSON.
fn print(n: usize, paths: &[PathFigures]) -> Value {
    // Figures relative to the raw path, when it ran; the mean of its runs when it ran more than
    // once (`raw,kubectl,facade,raw` brackets the operator's paths: Temporal's CPU per job drifts
    // up from one burst to the next as its store grows).
    let raws: Vec<&PathFigures> = paths.iter().filter(|p| p.path == RAW).collect();
    let baseline = (!raws.is_empty()).then(|| {
        let runs = raws.len() as f64;
        let mean =
            |figure: fn(&PathFigures) -> f64| raws.iter().map(|p| figure(p)).sum::<f64>() / runs;
        (mean(PathFigures::per_sec), mean(PathFigures::total_cpu_ms))
    });
    let ratio = |p: &PathFigures| baseline.map(|(per_sec, _)| p.per_sec() / per_sec);
    let ceiling = |p: &PathFigures| baseline.map(|(_, cpu_ms)| cpu_ms / p.total_cpu_ms());
    println!("\nBurst of {n} jobs at once\n");
    println!(
        "| figure | {} |",
        paths.iter().map(|p| p.path).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(paths.len()));
    let row = |name: &str, cell: &dyn Fn(&PathFigures) -> String| {
        let cells: Vec<String> = paths.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("submitted in, s", &|p| format!("{:.1}", p.submit_seconds));
    row("drained in, s", &|p| format!("{:.1}", p.drain_seconds));
    row("jobs/s", &|p| format!("{:.1}", p.per_sec()));
    row(
        "throughput / raw's = raw drain / this drain (target >= 0.90)",
        &|p| opt(ratio(p), 2),
    );
    row("every job shown started after, s", &|p| {
        opt(p.shown_seconds, 1)
    });
    row("controller peak RSS, MiB", &|p| {
        opt(p.controller_peak_mib, 1)
    });
    row("facade peak RSS, MiB", &|p| opt(p.facade_peak_mib, 1));
    row("Temporal client calls per job", &|p| {
        format!("{:.2}", p.counts.temporal_calls)
    });
    row("Temporal history reads per job (target <= 1.2)", &|p| {
        format!("{:.2}", p.counts.history_reads)
    });
    row("status writes per job (target <= 2)", &|p| {
        opt(p.counts.status_writes, 2)
    });
    row("apiserver requests per job", &|p| {
        format!("{:.2}", p.counts.apiserver_requests)
    });
    row("apiserver writes per job", &|p| {
        format!("{:.2}", p.counts.apiserver_writes)
    });
    row("apiserver watch events per job", &|p| {
        format!("{:.2}", p.counts.watch_events)
    });
    // Every process any path measured, in the order first seen (kubectl only on its path).
    let mut names: Vec<&str> = Vec::new();
    for &(name, _) in paths.iter().flat_map(|p| p.cpu_ms.iter()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for name in names {
        row(&format!("CPU ms per job: {name}"), &|p| {
            let ms = p.cpu_ms.iter().find(|(n, _)| *n == name).map(|(_, ms)| *ms);
            opt(ms.filter(|ms| ms.is_finite()), 2)
        });
    }
    row("CPU ms per job: total", &|p| {
        format!("{:.2}", p.total_cpu_ms())
    });
    row(
        "CPU ms per job: apiserver + etcd + controller (target <= 18)",
        &|p| format!("{:.2}", p.kubernetes_side_ms()),
    );
    row("CPU-bound ceiling (raw total / this total)", &|p| {
        opt(ceiling(p), 2)
    });
    row(
        "ratio / ceiling (target >= 0.95 where the ceiling < 0.90)",
        &|p| opt(ratio(p).zip(ceiling(p)).map(|(r, c)| r / c.min(1.0)), 2),
    );
    for p in paths
        .iter()
        .filter(|p| p.path != RAW && p.path != RAW_KEYED)
    {
        p.counts.print_breakdown(p.path);
    }
    Value::Array(
        paths
            .iter()
            .map(|p| {
                json!({"jobs": n, "path": p.path, "submit_seconds": p.submit_seconds,
                    "drain_seconds": p.drain_seconds, "jobs_per_sec": p.per_sec(),
                    "raw_over_this_throughput": ratio(p),
                    "all_shown_started_seconds": p.shown_seconds,
                    "controller_peak_rss_mib": p.controller_peak_mib, "facade_peak_rss_mib": p.facade_peak_mib,
                    "counts_per_job": p.counts.json(),
                    "cpu_ms_per_job": p.cpu_ms.iter().map(|(n, ms)| (n.to_string(), json!(ms))).collect::<serde_json::Map<_, _>>(),
                    "cpu_ms_per_job_total": p.total_cpu_ms(),
                    "kubernetes_side_cpu_ms_per_job": p.kubernetes_side_ms(),
                    "cpu_bound_ceiling": ceiling(p)})
            })
            .collect(),
    )
}
