//! Cancel under a backlog: `backlog` jobs queued in Temporal (created at once, their workflows
//! started, no worker running, so all stay queued), then [`LATE`] more behind them, cancelled a third each by `spec.status: Cancelled`,
//! by the facade's `POST .../cancel` and by delete, each timed from its request until a watcher
//! sees it `Cancelled` (or gone); then the last [`TAIL`] of the backlog deleted by one request,
//! timed until every one is gone; then the rest.

use super::{Bench, IN_FLIGHT, Operator, progress::Progress};
use crate::percentile;
use futures::future::join_all;
use imagejob_operator::{
    crd::{ImageJob, ImageJobSpec},
    temporal::connection::TemporalSettings,
};
use imagejob_testkit::{eventually, kube_env::create_namespace};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// Jobs cancelled behind the backlog.
const LATE: usize = 99;
/// Backlog jobs deleted at once.
const TAIL: usize = 1000;
/// Label on the backlog's last [`TAIL`] jobs.
const TAIL_LABEL: &str = "bench.imagejob.dev/tail";
/// Longest each wait of the phase may take.
const LIMIT: Duration = Duration::from_secs(1800);

/// Creates `names` at once (at most [`IN_FLIGHT`] requests in flight); their uids.
async fn create(
    api: &Api<ImageJob>,
    names: &[String],
    labelled: impl Fn(usize) -> bool,
) -> Vec<String> {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let tasks = names.iter().enumerate().map(|(i, name)| {
        let (api, gate) = (api.clone(), gate.clone());
        let mut job = ImageJob::new(
            name,
            ImageJobSpec {
                url: format!("https://example.com/{i}.jpg"),
                tags: vec!["bench".into()],
                ..Default::default()
            },
        );
        if labelled(i) {
            job.labels_mut().insert(TAIL_LABEL.into(), "true".into());
        }
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let created = api.create(&PostParams::default(), &job).await;
            created.expect("create").uid().expect("uid")
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.expect("create task"))
        .collect()
}

/// Waits until every one of `names` was seen started.
async fn all_started(progress: &Progress, names: &[String], what: &str) {
    eventually(what, LIMIT, || async {
        (progress.started_of(names) == names.len()).then_some(())
    })
    .await;
}

/// p50, p99 and max of latencies in ms.
fn spread(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({"count": ms.len(), "p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN)})
}

/// Runs the phase; prints its table and returns its figures.
pub async fn run(bench: &Bench<'_>, settings: &TemporalSettings, backlog: usize) -> Value {
    let ns = format!("burst-cancel-{}", bench.run_id);
    create_namespace(bench.client, &ns).await;
    let operator = Operator::start(bench, settings, &ns, true).await;
    let base = operator.facade_base();
    let api: Api<ImageJob> = Api::namespaced(bench.client.clone(), &ns);
    let progress = Progress::watch(bench.client, &ns);

    eprintln!("cancel under a backlog: {backlog} jobs queued");
    let names: Vec<String> = (0..backlog).map(|i| format!("backlog-{i}")).collect();
    create(&api, &names, |i| i + TAIL >= backlog).await;
    all_started(&progress, &names, "the backlog's workflows started").await;
    let late: Vec<String> = (0..LATE).map(|i| format!("late-{i}")).collect();
    let uids = create(&api, &late, |_| false).await;
    all_started(&progress, &late, "the late jobs' workflows started").await;
    let queued_ahead = backlog - progress.finished();

    eprintln!(
        "cancel under a backlog: {LATE} late jobs cancelled with {queued_ahead} queued ahead"
    );
    let http = reqwest::Client::new();
    let asked = late.iter().zip(&uids).enumerate().map(|(i, (name, uid))| {
        let (api, http, base) = (api.clone(), http.clone(), base.clone());
        let (name, uid, token) = (name.clone(), uid.clone(), bench.token.to_owned());
        tokio::spawn(async move {
            let at = Instant::now();
            match i % 3 {
                0 => {
                    let patch = json!({"spec": {"status": "Cancelled"}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .expect("spec patch");
                }
                1 => {
                    let url = format!("{base}/images/workflow/image-processing-{uid}/cancel");
                    let response = http
                        .post(url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .expect("cancel");
                    // 409: it finished first (Temporal's queue is not strictly first in, first
                    // out).
                    let status = response.status();
                    assert!(
                        status.is_success() || status == 409,
                        "cancel answered {status}"
                    );
                }
                _ => {
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .expect("delete");
                }
            }
            (i % 3, name, at)
        })
    });
    let asked: Vec<_> = join_all(asked)
        .await
        .into_iter()
        .map(|t| t.expect("cancel task"))
        .collect();
    let mut by_way: [Vec<f64>; 3] = Default::default();
    let mut finished_first = 0;
    for (way, name, at) in asked {
        let ended = eventually(&format!("{name} cancelled"), LIMIT, || async {
            if way == 2 {
                progress.gone_at(&name)
            } else {
                progress.ended_at(&name)
            }
        })
        .await;
        // A job that finished before it was asked has no cancellation to time.
        if way != 2 && ended < at {
            finished_first += 1;
            continue;
        }
        by_way[way].push(ended.duration_since(at).as_secs_f64() * 1000.0);
    }
    let all: Vec<f64> = by_way.iter().flatten().copied().collect();
    let cancels = json!({"spec_status": spread(by_way[0].clone()), "facade_post": spread(by_way[1].clone()),
        "delete": spread(by_way[2].clone()), "all": spread(all)});
    let finished_before_tail = progress.finished();

    eprintln!("cancel under a backlog: the last {TAIL} backlog jobs deleted at once");
    let tail: Vec<String> = names[backlog.saturating_sub(TAIL)..].to_vec();
    let at = Instant::now();
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&format!("{TAIL_LABEL}=true")),
    )
    .await
    .expect("delete the tail");
    eventually("the tail released", LIMIT, || async {
        tail.iter()
            .all(|n| progress.gone_at(n).is_some())
            .then_some(())
    })
    .await;
    let tail_seconds = at.elapsed().as_secs_f64();
    let tail_finished_first = tail
        .iter()
        .filter(|n| progress.ended_at(n) != progress.gone_at(n))
        .count();

    eprintln!("cancel under a backlog: the rest deleted");
    let rest = names.len() - tail.len();
    let at = Instant::now();
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the rest");
    eventually("the rest released", LIMIT, || async {
        names
            .iter()
            .all(|n| progress.gone_at(n).is_some())
            .then_some(())
    })
    .await;
    let rest_seconds = at.elapsed().as_secs_f64();

    let figures = json!({"backlog": backlog, "queued_ahead_when_cancelled": queued_ahead,
        "late_jobs_finished_before_their_cancel": finished_first,
        "cancel_latency": cancels, "finished_before_the_tail_delete": finished_before_tail,
        "tail_deleted": tail.len(), "tail_released_seconds": tail_seconds,
        "tail_jobs_finished_before_released": tail_finished_first,
        "rest_deleted": rest, "rest_released_seconds": rest_seconds});
    println!(
        "\nCancel under a backlog of {backlog} ({queued_ahead} not finished when the {LATE} late jobs were cancelled; {finished_first} of those finished first)\n"
    );
    println!("| figure | value | target |");
    println!("|---|---|---|");
    for (way, key) in [
        ("spec.status: Cancelled", "spec_status"),
        ("facade POST cancel", "facade_post"),
        ("delete", "delete"),
        ("all", "all"),
    ] {
        let s = &cancels[key];
        println!(
            "| {way}: p50 / p99 / max ms ({} jobs) | {:.0} / {:.0} / {:.0} | p99 <= 5000 |",
            s["count"],
            s["p50_ms"].as_f64().unwrap_or(f64::NAN),
            s["p99_ms"].as_f64().unwrap_or(f64::NAN),
            s["max_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "| {} queued jobs deleted at once: all released in, s | {tail_seconds:.1} | <= 60 |",
        tail.len()
    );
    println!("| the other {rest} deleted: released in, s | {rest_seconds:.1} | |");
    drop(operator);
    figures
}
