//! `--fairness N`: fair sharing between namespaces. One namespace submits N jobs at once, then
//! another submits 10; both namespaces' completion times, with Temporal's fairness on (the
//! stack's dev server, `matching.enableFairness=true`) and off (a private dev server started
//! without it), each with a worker and a controller of its own on a task queue of its own.

use super::{controller_env, spawn, temporal_env};
use imagejob_operator::{crd::ImageJob, temporal::connection::TemporalSettings};
use imagejob_testkit::{
    PrivateTemporal,
    fairness::{Shares, backlog_then_few},
    free_port,
    kube_env::create_namespace,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::path::Path;

/// Jobs the second namespace submits.
const FEW: usize = 10;

/// The figures with fairness on and off.
pub struct Figures {
    on: Shares,
    off: Shares,
}

/// Runs the phase: on the stack's Temporal (`on`), then on a private one without fairness.
pub async fn run(
    client: &Client,
    run_id: &str,
    backlog: usize,
    on: &TemporalSettings,
    data: &Path,
) -> Figures {
    eprintln!("fairness on: {backlog} jobs in one namespace, then {FEW} in another");
    let on = one(client, &format!("fair-on-{run_id}"), backlog, on, data).await;
    // `one` gives each run a task queue of its own.
    let server = PrivateTemporal::start_without_fairness("unused");
    eprintln!("fairness off: the same on a Temporal dev server without it");
    let off = one(
        client,
        &format!("fair-off-{run_id}"),
        backlog,
        &server.settings,
        data,
    )
    .await;
    Figures { on, off }
}

/// One run: a worker and a controller on `settings` (a task queue of their own), the backlog in
/// namespace `<prefix>-a`, the few in `<prefix>-b`.
async fn one(
    client: &Client,
    prefix: &str,
    backlog: usize,
    settings: &TemporalSettings,
    data: &Path,
) -> Shares {
    let settings = TemporalSettings {
        task_queue: format!("{prefix}-queue"),
        ..settings.clone()
    };
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    create_namespace(client, &a).await;
    create_namespace(client, &b).await;
    let mut worker_env = temporal_env(&settings);
    let store = data.join(format!("{prefix}.redb"));
    worker_env.push(("EMBEDDED_STORE_PATH", store.display().to_string()));
    let _worker = spawn("worker", &worker_env);
    let _controller = spawn(
        "controller",
        &controller_env(&format!("{a},{b}"), &settings, free_port()),
    );
    let first: Api<ImageJob> = Api::namespaced(client.clone(), &a);
    let second: Api<ImageJob> = Api::namespaced(client.clone(), &b);
    backlog_then_few(&first, &second, backlog, FEW).await
}

/// Prints the table; the figures as JSON.
pub fn print(figures: &Figures) -> Value {
    let row = |name: &str, s: &Shares| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {} of {} |",
            s.backlog_submitted_in.as_secs_f64(),
            s.few_median.as_secs_f64(),
            s.few_last.as_secs_f64(),
            s.backlog_last.as_secs_f64(),
            s.backlog_done_by_then,
            s.backlog,
        );
        json!({
            "backlog": s.backlog, "few": s.few,
            "backlog_submitted_s": s.backlog_submitted_in.as_secs_f64(),
            "few_median_s": s.few_median.as_secs_f64(),
            "few_last_s": s.few_last.as_secs_f64(),
            "backlog_last_s": s.backlog_last.as_secs_f64(),
            "backlog_done_when_few_done": s.backlog_done_by_then,
        })
    };
    println!(
        "\nfair sharing: namespace A submits {} jobs at once, then namespace B {} (seconds from B's submission)",
        figures.on.backlog, figures.on.few
    );
    println!(
        "| Temporal fairness | A submitted in | B median | B last | A last | A done when B was |"
    );
    println!("|---|---|---|---|---|---|");
    let on = row("on", &figures.on);
    let off = row("off", &figures.off);
    json!({"on": on, "off": off})
}
