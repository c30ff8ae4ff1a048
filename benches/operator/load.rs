//! `--facade-load`: one facade replica holding 1,000 waiting `/result` requests and then
//! 10,000 idle connections (opened and sending nothing), while `GET .../status` is measured
//! with `wrk`; then how many of the idle connections the replica closed once its header
//! deadline passed, and its peak RSS.

use super::{facade_base, metric_sum, scrape, spawn, wrk};
use imagejob_operator::crd::{ImageJob, ImageJobSpec};
use imagejob_testkit::until_ready;
use kube::{Api, Client, ResourceExt, api::PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// Waiting `/result` requests.
const WAITERS: usize = 1_000;
/// Idle connections.
const IDLE: usize = 10_000;

/// What the phase measured.
pub struct Load {
    waiters: usize,
    idle_opened: usize,
    status: (f64, f64, f64),
    rss_mib: f64,
    idle_closed: usize,
    closed_within_s: f64,
}

/// Runs the phase in namespace `ns`, which no controller watches (its job stays unfinished, so
/// every `/result` on it waits), with a facade started from `env`.
pub async fn run(
    client: &Client,
    ns: &str,
    env: Vec<(&'static str, String)>,
    wrk_seconds: u64,
) -> Load {
    let api: Api<ImageJob> = Api::namespaced(client.clone(), ns);
    let spec = ImageJobSpec {
        url: "https://example.com/waiting.jpg".into(),
        ..Default::default()
    };
    let job = api
        .create(&PostParams::default(), &ImageJob::new("waiting", spec))
        .await
        .expect("create");
    let id = format!("image-processing-{}", job.uid().expect("uid"));
    let base = facade_base(&env);
    let admin = env
        .iter()
        .find(|(k, _)| *k == "FACADE_ADMIN_ADDR")
        .map(|(_, v)| format!("http://{v}/metrics"))
        .expect("FACADE_ADMIN_ADDR");
    let addr = base.trim_start_matches("http://").to_owned();
    let facade = spawn("facade", &env);
    until_ready(&base, Duration::from_secs(120)).await;

    eprintln!("load: {WAITERS} waiting /result requests");
    let http = reqwest::Client::new();
    let waiting: Vec<_> = (0..WAITERS)
        .map(|_| {
            tokio::spawn(
                http.get(format!("{base}/images/workflow/{id}/result?timeout=120"))
                    .bearer_auth(super::TOKEN)
                    .send(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiters = loop {
        let n = metric_sum(&scrape(&admin).await, "imagejob_facade_result_waiters") as usize;
        if n >= WAITERS || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    eprintln!("load: {IDLE} idle connections, then GET status under wrk");
    let opened_at = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        match TcpStream::connect(&addr).await {
            Ok(stream) => idle.push(stream),
            Err(e) => {
                eprintln!("load: connection {} refused: {e}", idle.len());
                break;
            }
        }
    }
    let idle_opened = idle.len();
    let status_url = format!("{base}/images/workflow/{id}/status");
    let seconds = wrk_seconds.min(5);
    let status = wrk(&status_url, seconds, 8);
    let rss_mib = facade.rss_mib();

    // The header deadline closes every idle connection; count them as they go.
    let reads = idle.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let closed = matches!(
                tokio::time::timeout(Duration::from_secs(40), stream.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            );
            closed.then(|| opened_at.elapsed().as_secs_f64())
        })
    });
    let mut idle_closed = 0;
    let mut closed_within_s: f64 = 0.0;
    for read in futures::future::join_all(reads).await {
        if let Ok(Some(at)) = read {
            idle_closed += 1;
            closed_within_s = closed_within_s.max(at);
        }
    }
    waiting.iter().for_each(|w| w.abort());
    drop(facade);
    Load {
        waiters,
        idle_opened,
        status,
        rss_mib,
        idle_closed,
        closed_within_s,
    }
}

impl Load {
    /// Table rows: figure, value, target.
    pub fn rows(&self) -> Vec<(String, String, &'static str)> {
        let (rps, p50, p99) = self.status;
        vec![
            (
                format!(
                    "facade under {} waiting /result + {} idle connections: GET status req/s, p50 / p99 ms",
                    self.waiters, self.idle_opened
                ),
                format!("{rps:.0}, {p50:.2} / {p99:.2}"),
                "p99 <= 50",
            ),
            ("  its RSS, MiB".into(), format!("{:.1}", self.rss_mib), ""),
            (
                "  idle connections closed by the header deadline, last after s".into(),
                format!(
                    "{} of {}, {:.1}",
                    self.idle_closed, self.idle_opened, self.closed_within_s
                ),
                "all",
            ),
        ]
    }

    /// The figures as JSON.
    pub fn json(&self) -> Value {
        let (rps, p50, p99) = self.status;
        json!({"waiting_results": self.waiters, "idle_connections": self.idle_opened,
            "status_requests_per_sec": rps, "status_p50_ms": p50, "status_p99_ms": p99,
            "rss_mib": self.rss_mib, "idle_closed": self.idle_closed,
            "idle_closed_within_s": self.closed_within_s})
    }
}
