//! A watcher's view of a burst: when each job was first seen started (`Processing`, a step or
//! its end) and first seen finished.

use futures::StreamExt;
use imagejob_operator::crd::{ImageJob, Phase};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// First-seen times by job name.
#[derive(Default)]
struct Seen {
    started: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
    gone: HashMap<String, Instant>,
}

/// A watch on one namespace's jobs, recording when each was first seen started and finished.
pub struct Progress {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts watching `ns`.
    pub fn watch(client: &Client, ns: &str) -> Self {
        let api: Api<ImageJob> = Api::namespaced(client.clone(), ns);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(Ok(event)) = events.next().await {
                let now = Instant::now();
                let job = match event {
                    watcher::Event::Apply(job) | watcher::Event::InitApply(job) => job,
                    watcher::Event::Delete(job) => {
                        let mut seen = record.lock().expect("lock");
                        seen.gone.entry(job.name_any()).or_insert(now);
                        continue;
                    }
                    watcher::Event::Init | watcher::Event::InitDone => continue,
                };
                let phase = job.phase();
                let mut seen = record.lock().expect("lock");
                if phase != Phase::Pending {
                    seen.started.entry(job.name_any()).or_insert(now);
                }
                if phase.is_terminal() {
                    seen.finished.entry(job.name_any()).or_insert(now);
                }
            }
        });
        Self { seen, task }
    }

    /// Waits until `n` jobs were seen finished; the seconds from `since` until every job was
    /// seen started, and until the last was seen finished.
    pub async fn wait(&self, n: usize, since: Instant, limit: Duration) -> (f64, f64) {
        loop {
            {
                let seen = self.seen.lock().expect("lock");
                if seen.finished.len() >= n {
                    let last = |m: &HashMap<String, Instant>| {
                        m.values()
                            .map(|at| at.duration_since(since).as_secs_f64())
                            .fold(0.0, f64::max)
                    };
                    return (last(&seen.started), last(&seen.finished));
                }
                assert!(
                    since.elapsed() < limit,
                    "{} of {n} jobs finished after {limit:?}",
                    seen.finished.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many jobs were seen finished so far.
    pub fn finished(&self) -> usize {
        self.seen.lock().expect("lock").finished.len()
    }

    /// How many of `names` were seen started.
    pub fn started_of(&self, names: &[String]) -> usize {
        let seen = self.seen.lock().expect("lock");
        names
            .iter()
            .filter(|n| seen.started.contains_key(*n))
            .count()
    }

    /// When `name` was first seen finished, or gone.
    pub fn ended_at(&self, name: &str) -> Option<Instant> {
        let seen = self.seen.lock().expect("lock");
        seen.finished
            .get(name)
            .or_else(|| seen.gone.get(name))
            .copied()
    }

    /// When `name` was seen deleted.
    pub fn gone_at(&self, name: &str) -> Option<Instant> {
        self.seen.lock().expect("lock").gone.get(name).copied()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
