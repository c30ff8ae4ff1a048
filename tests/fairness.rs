//! Fair sharing between namespaces on the real stack (the stack's Temporal dispatches by
//! fairness key: `matching.enableFairness`): one namespace submits a backlog of 2,000 jobs, then
//! another submits 10; the 10 finish long before the backlog does, not behind it. The same run
//! with fairness off, side by side, is the benchmark's (`scripts/bench.sh --fairness 2000`).

use imagejob_testkit as support;

use imagejob_operator::crd::ImageJob;
use kube::Api;
use std::time::Duration;
use support::{
    ControllerProcess, TestWorker,
    fairness::backlog_then_few,
    kube_env::{self, Setup},
};

const BACKLOG: usize = 2000;
const FEW: usize = 10;
/// Longest the whole run may take (about 4 minutes on this project's 2-core machine).
const WHOLE_RUN: Duration = Duration::from_secs(900);

#[tokio::test]
async fn a_namespaces_ten_jobs_finish_long_before_anothers_backlog_of_two_thousand() {
    let a = Setup::new("fair-a").await;
    let b_ns = kube_env::namespace(&a.client, "fair-b").await;
    let b: Api<ImageJob> = Api::namespaced(a.client.clone(), &b_ns);
    let _worker = TestWorker::plain(&a.settings);
    let _controller = ControllerProcess::start(&a.settings, &format!("{},{b_ns}", a.ns), &[]);

    let run = backlog_then_few(&a.api, &b, BACKLOG, FEW);
    let shares = tokio::time::timeout(WHOLE_RUN, run)
        .await
        .unwrap_or_else(|_| panic!("{BACKLOG} + {FEW} jobs not all finished in {WHOLE_RUN:?}"));
    println!("{shares:#?}");
    assert!(
        shares.few_last * 3 < shares.backlog_last,
        "the few finished in {:?}, the backlog in {:?}: the few waited behind it",
        shares.few_last,
        shares.backlog_last
    );
    assert!(
        shares.backlog_done_by_then < BACKLOG / 2,
        "{} of the backlog had finished before the few: {shares:#?}",
        shares.backlog_done_by_then
    );
}
