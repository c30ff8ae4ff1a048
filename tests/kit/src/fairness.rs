//! One namespace's backlog, then another's few jobs: how long each waits. The fair-sharing test
//! and benchmark both run it.

use crate::finished::Finished;
use futures::{StreamExt, stream};
use imagejob_operator::crd::{ImageJob, ImageJobSpec};
use kube::{Api, ResourceExt, api::PostParams};
use std::time::{Duration, Instant};

/// Jobs created at once by one namespace.
const CREATES_IN_FLIGHT: usize = 64;

/// What one run measured, from the moment the few were submitted.
#[derive(Debug, Clone)]
pub struct Shares {
    /// Jobs of the backlog, and of the few.
    pub backlog: usize,
    /// Jobs of the few.
    pub few: usize,
    /// Submitting the backlog took this long.
    pub backlog_submitted_in: Duration,
    /// The few's median completion time.
    pub few_median: Duration,
    /// The few's last completion.
    pub few_last: Duration,
    /// The backlog's last completion.
    pub backlog_last: Duration,
    /// Backlog jobs already finished when the last of the few finished.
    pub backlog_done_by_then: usize,
}

/// Creates `backlog` jobs in `first`'s namespace at once, then `few` in `second`'s, and waits
/// for all of them; each job stores its document only (no search).
pub async fn backlog_then_few(
    first: &Api<ImageJob>,
    second: &Api<ImageJob>,
    backlog: usize,
    few: usize,
) -> Shares {
    let (first_done, second_done) = (Finished::default(), Finished::default());
    first_done.watch(first.clone());
    second_done.watch(second.clone());
    let started = Instant::now();
    let backlog_uids = create_many(first, "backlog", backlog).await;
    let backlog_submitted_in = started.elapsed();
    let submitted = Instant::now();
    let few_uids = create_many(second, "few", few).await;
    let mut few_times = second_done.wait_all(&few_uids).await;
    let backlog_done_by_then = first_done.count();
    let backlog_times = first_done.wait_all(&backlog_uids).await;
    few_times.sort();
    let since = |at: &Instant| at.saturating_duration_since(submitted);
    Shares {
        backlog,
        few,
        backlog_submitted_in,
        few_median: few_times.get(few / 2).map(since).unwrap_or_default(),
        few_last: few_times.last().map(since).unwrap_or_default(),
        backlog_last: backlog_times.iter().max().map(since).unwrap_or_default(),
        backlog_done_by_then,
    }
}

/// Creates `n` jobs named `<prefix>-<i>` in `api`'s namespace, many at once; their uids.
async fn create_many(api: &Api<ImageJob>, prefix: &str, n: usize) -> Vec<String> {
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let job = ImageJob::new(
                &format!("{prefix}-{i}"),
                ImageJobSpec {
                    url: format!("https://example.com/{prefix}/{i}.jpg"),
                    ..Default::default()
                },
            );
            async move {
                let created = api.create(&PostParams::default(), &job).await;
                created.expect("create a job").uid().expect("a uid")
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .collect()
        .await
}
