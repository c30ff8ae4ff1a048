//! Long polls on running workflows' histories: each wakes its job when its workflow makes
//! progress (steps landing within [`PROGRESS_WINDOW`] of each other wake it once, and not at all
//! when the workflow closes within it) and the moment it closes, so the status follows Temporal
//! within a second instead of a polling interval, with few writes. Bounded in number; jobs
//! beyond the bound are polled.

use crate::{
    crd::ImageJob,
    heap::ReleaseSpare,
    temporal::client::{WorkflowGateway, WorkflowSnapshot},
};
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

/// How long progress waits for more (or for the close) before it wakes the job: a job that
/// finishes within it gets no progress write.
pub const PROGRESS_WINDOW: Duration = Duration::from_millis(400);
/// Pause after a failed long poll before waking the job, so an outage does not spin.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Workflows being watched, and what the closed ones left until their job takes it. One lock,
/// so a job forgotten while its watch ends cannot leave an entry behind.
#[derive(Default)]
struct Watched {
    active: HashSet<String>,
    closed: HashMap<String, WorkflowSnapshot>,
    /// How the workflows this controller started were started, until their job is forgotten.
    started: HashMap<String, Started>,
}

/// A workflow this controller started: what its job's first status write records even when
/// the job changed before that write.
#[derive(Debug)]
pub struct Started {
    /// The run started.
    pub run_id: String,
    /// When.
    pub at: SystemTime,
    /// Digest of the spec it was started with (see [`super::status::spec_digest`]).
    pub spec_digest: String,
}

/// The set of workflows being watched, and what the closed ones left (so the woken reconcile
/// needs no further Temporal call).
pub struct WorkflowWatches {
    gateway: Arc<dyn WorkflowGateway>,
    wake: UnboundedSender<ObjectRef<ImageJob>>,
    watched: Arc<Mutex<Watched>>,
    max: usize,
    /// Dropped with these watches, which ends every long poll they started.
    alive: tokio::sync::watch::Sender<()>,
}

impl WorkflowWatches {
    /// Watches that wake jobs through `wake`, at most `max` at once.
    pub fn new(
        gateway: Arc<dyn WorkflowGateway>,
        wake: UnboundedSender<ObjectRef<ImageJob>>,
        max: usize,
    ) -> Self {
        Self {
            gateway,
            wake,
            watched: Arc::default(),
            max,
            alive: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Watches a workflow this controller has just started: its close snapshot carries the run
    /// and its start, so the job's single status write records them too, and
    /// [`WorkflowWatches::started_spec_digest`] the spec it started with.
    pub fn ensure_started(
        &self,
        workflow_id: &str,
        job: ObjectRef<ImageJob>,
        started: Started,
    ) -> bool {
        if let Ok(mut watched) = self.watched.lock() {
            watched.started.insert(workflow_id.to_owned(), started);
        }
        self.ensure(workflow_id, job)
    }

    /// Digest of the spec this controller started the workflow with.
    pub fn started_spec_digest(&self, workflow_id: &str) -> Option<String> {
        let watched = self.watched.lock().ok()?;
        Some(watched.started.get(workflow_id)?.spec_digest.clone())
    }

    /// Makes sure `workflow_id` is watched; false when the bound is reached (poll instead).
    pub fn ensure(&self, workflow_id: &str, job: ObjectRef<ImageJob>) -> bool {
        let Ok(mut watched) = self.watched.lock() else {
            return false;
        };
        if watched.active.contains(workflow_id) {
            return true;
        }
        if watched.active.len() >= self.max {
            return false;
        }
        watched.active.insert(workflow_id.to_owned());
        let id = workflow_id.to_owned();
        let gateway = self.gateway.clone();
        let wake = self.wake.clone();
        let state = self.watched.clone();
        let watch = async move {
            let progressed = || {
                let wanted = state.lock().is_ok_and(|w| w.active.contains(&id));
                if wanted {
                    let _ = wake.unbounded_send(job.clone());
                }
            };
            let outcome = gateway.follow(&id, PROGRESS_WINDOW, &progressed).await;
            if let Err(e) = &outcome {
                tracing::debug!(workflow_id = %id, error = %e, "workflow watch failed");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
            let still_wanted = state.lock().is_ok_and(|mut w| {
                let wanted = w.active.remove(&id);
                w.active.release_spare();
                if let (true, Ok(mut snapshot)) = (wanted, outcome) {
                    if let Some(started) = w.started.get(&id) {
                        snapshot
                            .run_id
                            .get_or_insert_with(|| started.run_id.clone());
                        snapshot.start_time.get_or_insert(started.at);
                    }
                    w.closed.insert(id.clone(), snapshot);
                }
                wanted
            });
            if still_wanted {
                let _ = wake.unbounded_send(job);
            }
        };
        let mut alive = self.alive.subscribe();
        tokio::spawn(async move {
            // `changed` only fails, once the controller these watches served is gone.
            tokio::select! {
                () = watch => {}
                _ = alive.changed() => {}
            }
        });
        true
    }

    /// Whether a watch follows `workflow_id` (so its workflow exists: it was started or found).
    pub fn is_watched(&self, workflow_id: &str) -> bool {
        self.watched
            .lock()
            .is_ok_and(|w| w.active.contains(workflow_id))
    }

    /// What the workflow left when it closed, if a watch saw it close (taken once).
    pub fn take_closed(&self, workflow_id: &str) -> Option<WorkflowSnapshot> {
        let mut w = self.watched.lock().ok()?;
        let closed = w.closed.remove(workflow_id);
        w.closed.release_spare();
        closed
    }

    /// Drops everything kept for a workflow whose job is gone; a watch still running for it
    /// keeps nothing when it ends.
    pub fn forget(&self, workflow_id: &str) {
        if let Ok(mut w) = self.watched.lock() {
            w.active.remove(workflow_id);
            w.closed.remove(workflow_id);
            w.started.remove(workflow_id);
            w.active.release_spare();
            w.closed.release_spare();
            w.started.release_spare();
        }
    }

    /// Workflows watched or with a close snapshot waiting.
    pub fn tracked(&self) -> usize {
        self.watched
            .lock()
            .map(|w| w.active.len() + w.closed.len() + w.started.len())
            .unwrap_or(0)
    }
}
