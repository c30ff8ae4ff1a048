//! When each job of a namespace was first seen finished, by a watch: for tests and benchmarks
//! that measure completion times.

use futures::StreamExt;
use imagejob_operator::crd::ImageJob;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::Notify;

/// When each job (by uid) was first seen finished, fed by a watch on its namespace.
#[derive(Clone, Default)]
pub struct Finished {
    at: Arc<Mutex<HashMap<String, (Instant, SystemTime)>>>,
    changed: Arc<Notify>,
}

impl Finished {
    /// Starts recording the jobs of `api` as they finish.
    pub fn watch(&self, api: Api<ImageJob>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut jobs = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(Ok(job)) = jobs.next().await {
                if job.phase().is_terminal()
                    && let Some(uid) = job.uid()
                {
                    this.at
                        .lock()
                        .expect("lock")
                        .entry(uid)
                        .or_insert_with(|| (Instant::now(), SystemTime::now()));
                    this.changed.notify_waiters();
                }
            }
        });
    }

    /// How many jobs were seen finished.
    pub fn count(&self) -> usize {
        self.at.lock().expect("lock").len()
    }

    /// Waits until every job of `uids` was seen finished; when each was.
    pub async fn wait_all(&self, uids: &[String]) -> Vec<Instant> {
        loop {
            // Registered before the check, so a finish between check and wait is not missed.
            let mut notified = std::pin::pin!(self.changed.notified());
            notified.as_mut().enable();
            {
                let at = self.at.lock().expect("lock");
                if uids.iter().all(|u| at.contains_key(u)) {
                    return uids.iter().map(|u| at[u].0).collect();
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// When the watch saw the job finished, by the wall clock.
    pub fn seen_at(&self, uid: &str) -> Option<SystemTime> {
        self.at
            .lock()
            .expect("lock")
            .get(uid)
            .map(|(_, wall)| *wall)
    }
}
