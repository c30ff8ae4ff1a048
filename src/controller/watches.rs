//! Long polls on running workflows' histories: each wakes its job when its workflow makes
//! progress (steps landing within [`PROGRESS_WINDOW`] of each other wake it once, and not at all
//! when the workflow closes within it) and the moment it closes, so the status follows Temporal
//! within a second instead of a polling interval, with few writes. Bounded in number: beyond the
//! bound (a burst of thousands, most of them queued in Temporal), a workflow is *listed*: one
//! call every [`LIST_EVERY`] asks Temporal's visibility which runs closed, for all of them at
//! once, and only a closed one's close event is read (its job's single history read). A
//! workflow is listed, not watched, while others are listed, so a job started behind a backlog
//! does not long-poll (one history read each 20 s of Temporal's long poll) through the wait.
//! The runs in their similarity search step (the search attribute their workflow sets, see
//! `temporal::client::visibility`) are listed every half second, so a listed job shows that
//! step within a second too, with no history read. When listing fails, listed jobs are polled.

use crate::{
    crd::ImageJob,
    heap::ReleaseSpare,
    temporal::client::{ClosedRun, SearchingRun, WorkflowGateway, WorkflowSnapshot},
};
use futures::{StreamExt, channel::mpsc::UnboundedSender};
use kube::runtime::reflector::ObjectRef;
use prometheus_client::metrics::counter::Counter;
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
/// How often the runs that closed are listed while workflows are listed.
pub const LIST_EVERY: Duration = Duration::from_secs(1);
/// How far back each list reaches before the previous one: a run's close reaches Temporal's
/// visibility a moment after it happened.
const LIST_OVERLAP: Duration = Duration::from_secs(10);
/// Failed list rounds in a row after which listed jobs are polled.
const LIST_FAILURES_BEFORE_POLLING: u32 = 3;
/// Close events read at once after a list.
const CLOSES_READ_AT_ONCE: usize = 16;

/// How a workflow's close reaches its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    /// A long poll on its history: its steps within the progress window, its close at once.
    Watched,
    /// Listed: its close is found by the list of closed runs, within [`LIST_EVERY`].
    Listed,
    /// Listing fails: the job is read again on a timer.
    Polled,
}

/// Workflows being watched, and what the closed ones left until their job takes it. One lock,
/// so a job forgotten while its watch ends cannot leave an entry behind.
struct Watched {
    active: HashSet<String>,
    /// Workflows beyond the bound, with their job and when they were listed.
    listed: HashMap<String, (ObjectRef<ImageJob>, SystemTime)>,
    closed: HashMap<String, WorkflowSnapshot>,
    /// Listed workflows found in their search step, until their job takes it.
    stepped: HashMap<String, WorkflowSnapshot>,
    /// How the workflows this controller started were started, until their job is forgotten.
    started: HashMap<String, Started>,
    /// Workflows that made progress (a watched one's step was scheduled or ended, a listed one
    /// was found in its search step).
    progressed: HashSet<String>,
    /// Whether the last list rounds worked.
    listing: bool,
}

impl Default for Watched {
    fn default() -> Self {
        Self {
            active: HashSet::default(),
            listed: HashMap::default(),
            closed: HashMap::default(),
            stepped: HashMap::default(),
            started: HashMap::default(),
            progressed: HashSet::default(),
            listing: true,
        }
    }
}

impl Watched {
    fn listed_as(&self) -> Tracking {
        if self.listing {
            Tracking::Listed
        } else {
            Tracking::Polled
        }
    }
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
    /// Wakes the lister when a first workflow is listed.
    listed: Arc<tokio::sync::Notify>,
    /// Dropped with these watches, which ends every long poll they started and the lister.
    alive: tokio::sync::watch::Sender<()>,
}

impl WorkflowWatches {
    /// Watches that wake jobs through `wake`, at most `max` at once; what listing finds is
    /// counted in `found`.
    pub fn new(
        gateway: Arc<dyn WorkflowGateway>,
        wake: UnboundedSender<ObjectRef<ImageJob>>,
        max: usize,
        found: ListedFinds,
    ) -> Self {
        let this = Self {
            gateway,
            wake,
            watched: Arc::default(),
            max,
            listed: Arc::default(),
            alive: tokio::sync::watch::Sender::new(()),
        };
        let lister = Lister {
            gateway: this.gateway.clone(),
            wake: this.wake.clone(),
            watched: this.watched.clone(),
            listed: this.listed.clone(),
            found,
        };
        let mut alive = this.alive.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = lister.run() => {}
                _ = alive.changed() => {}
            }
        });
        this
    }

    /// Watches a workflow this controller has just started: its close snapshot carries the run
    /// and its start, so the job's single status write records them too, and
    /// [`WorkflowWatches::started_spec_digest`] the spec it started with.
    pub fn ensure_started(
        &self,
        workflow_id: &str,
        job: ObjectRef<ImageJob>,
        started: Started,
    ) -> Tracking {
        if let Ok(mut watched) = self.watched.lock() {
            watched.started.insert(workflow_id.to_owned(), started);
        }
        self.ensure(workflow_id, job)
    }

    /// The run this controller started for `workflow_id` and when, while nothing more is known
    /// of it (no step seen, no close): what its job's first status write says, with no call.
    pub fn unprogressed_start(&self, workflow_id: &str) -> Option<(String, SystemTime)> {
        let watched = self.watched.lock().ok()?;
        if watched.progressed.contains(workflow_id) || watched.closed.contains_key(workflow_id) {
            return None;
        }
        let started = watched.started.get(workflow_id)?;
        Some((started.run_id.clone(), started.at))
    }

    /// Digest of the spec this controller started the workflow with.
    pub fn started_spec_digest(&self, workflow_id: &str) -> Option<String> {
        let watched = self.watched.lock().ok()?;
        Some(watched.started.get(workflow_id)?.spec_digest.clone())
    }

    /// Makes sure `workflow_id`'s close reaches its job: watched while under the bound and no
    /// workflow is listed, listed otherwise.
    pub fn ensure(&self, workflow_id: &str, job: ObjectRef<ImageJob>) -> Tracking {
        let Ok(mut watched) = self.watched.lock() else {
            return Tracking::Polled;
        };
        if watched.active.contains(workflow_id) {
            return Tracking::Watched;
        }
        if watched.listed.contains_key(workflow_id) {
            return watched.listed_as();
        }
        if watched.active.len() >= self.max || !watched.listed.is_empty() {
            watched
                .listed
                .insert(workflow_id.to_owned(), (job, SystemTime::now()));
            self.listed.notify_one();
            return watched.listed_as();
        }
        watched.active.insert(workflow_id.to_owned());
        let id = workflow_id.to_owned();
        let gateway = self.gateway.clone();
        let wake = self.wake.clone();
        let state = self.watched.clone();
        let watch = async move {
            let progressed = || {
                let wanted = state.lock().is_ok_and(|mut w| {
                    let wanted = w.active.contains(&id);
                    if wanted {
                        w.progressed.insert(id.clone());
                    }
                    wanted
                });
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
        Tracking::Watched
    }

    /// Whether `workflow_id` is watched or listed (so its workflow exists: it was started or
    /// found).
    pub fn is_tracked(&self, workflow_id: &str) -> bool {
        self.watched
            .lock()
            .is_ok_and(|w| w.active.contains(workflow_id) || w.listed.contains_key(workflow_id))
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
            w.listed.remove(workflow_id);
            w.closed.remove(workflow_id);
            w.stepped.remove(workflow_id);
            w.started.remove(workflow_id);
            w.progressed.remove(workflow_id);
            w.active.release_spare();
            w.listed.release_spare();
            w.closed.release_spare();
            w.stepped.release_spare();
            w.started.release_spare();
            w.progressed.release_spare();
        }
    }

    /// The step a listed workflow was found in, if the list found one since (taken once).
    pub fn take_step(&self, workflow_id: &str) -> Option<WorkflowSnapshot> {
        let mut w = self.watched.lock().ok()?;
        let step = w.stepped.remove(workflow_id);
        w.stepped.release_spare();
        step
    }

    /// Workflows watched or with a close snapshot waiting.
    pub fn tracked(&self) -> usize {
        self.watched
            .lock()
            .map(|w| {
                w.active.len() + w.listed.len() + w.closed.len() + w.stepped.len() + w.started.len()
            })
            .unwrap_or(0)
    }
}

/// What listing found, counted.
#[derive(Clone, Debug, Default)]
pub struct ListedFinds {
    /// Closes of listed workflows.
    pub closes: Counter,
    /// Listed workflows found in their similarity search step.
    pub steps: Counter,
}

/// The loop that finds the listed workflows' closes and steps.
struct Lister {
    gateway: Arc<dyn WorkflowGateway>,
    wake: UnboundedSender<ObjectRef<ImageJob>>,
    watched: Arc<Mutex<Watched>>,
    listed: Arc<tokio::sync::Notify>,
    found: ListedFinds,
}

impl Lister {
    /// Lists the runs that closed every [`LIST_EVERY`] while workflows are listed; each listed
    /// one found closed has its close event read and its job woken. The runs in their search
    /// step are listed twice as often, the second time beside the closes (whose reads take a
    /// while when many close at once), so a step shows within a second of reaching visibility.
    async fn run(self) {
        // Closes from here on are asked for (less the overlap); `None` while nothing is listed.
        let mut since: Option<SystemTime> = None;
        let mut failures = 0;
        loop {
            let earliest = self.earliest_listed();
            let Some(earliest) = earliest else {
                since = None;
                self.listed.notified().await;
                continue;
            };
            tokio::time::sleep(LIST_EVERY / 2).await;
            self.steps().await;
            tokio::time::sleep(LIST_EVERY / 2).await;
            let round = SystemTime::now();
            let from = since.unwrap_or(earliest) - LIST_OVERLAP;
            let (closes, ()) = tokio::join!(self.round(from), self.steps());
            match closes {
                Ok(()) => {
                    since = Some(round);
                    failures = 0;
                    self.set_listing(true);
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "listing the closed workflows failed");
                    if failures >= LIST_FAILURES_BEFORE_POLLING {
                        self.set_listing(false);
                    }
                }
            }
        }
    }

    fn earliest_listed(&self) -> Option<SystemTime> {
        let watched = self.watched.lock().ok()?;
        watched.listed.values().map(|(_, at)| *at).min()
    }

    /// One round: the runs closed since `from`, the listed ones' close events read.
    async fn round(&self, from: SystemTime) -> Result<(), crate::temporal::error::TemporalError> {
        let closed = self.gateway.closed_since(from).await?;
        let wanted: Vec<ClosedRun> = {
            let Ok(watched) = self.watched.lock() else {
                return Ok(());
            };
            closed
                .into_iter()
                .filter(|run| watched.listed.contains_key(&run.workflow_id))
                .collect()
        };
        let failed = std::sync::atomic::AtomicBool::new(false);
        futures::stream::iter(wanted)
            .for_each_concurrent(CLOSES_READ_AT_ONCE, |run| {
                let failed = &failed;
                async move {
                    match self.gateway.close_of(&run.workflow_id).await {
                        Ok(snapshot) => self.closed(run, snapshot),
                        Err(e) => {
                            tracing::debug!(workflow_id = %run.workflow_id, error = %e, "reading a listed workflow's close failed");
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
            .await;
        if failed.into_inner() {
            // Listed again from the same point next round.
            return Err(crate::temporal::error::TemporalError::Rpc(
                "a close event could not be read".into(),
            ));
        }
        Ok(())
    }

    /// Finds the listed runs in their similarity search step, and wakes each one's job once to
    /// show it. A failed list is left to the next round (the closes are what must not be
    /// missed).
    async fn steps(&self) {
        let searching = match self.gateway.searching().await {
            Ok(searching) => searching,
            Err(e) => {
                tracing::debug!(error = %e, "listing the workflows in their search step failed");
                return;
            }
        };
        let woken: Vec<ObjectRef<ImageJob>> = {
            let Ok(mut w) = self.watched.lock() else {
                return;
            };
            searching
                .into_iter()
                .filter_map(|run: SearchingRun| {
                    let (job, _) = w.listed.get(&run.workflow_id)?;
                    let job = job.clone();
                    if !w.progressed.insert(run.workflow_id.clone()) {
                        return None;
                    }
                    w.stepped.insert(run.workflow_id.clone(), run.snapshot());
                    Some(job)
                })
                .collect()
        };
        for job in woken {
            self.found.steps.inc();
            let _ = self.wake.unbounded_send(job);
        }
    }

    /// Hands a listed run's close to its job, unless the job was forgotten meanwhile.
    fn closed(&self, run: ClosedRun, mut snapshot: WorkflowSnapshot) {
        let job = self.watched.lock().ok().and_then(|mut w| {
            let (job, _) = w.listed.remove(&run.workflow_id)?;
            w.listed.release_spare();
            snapshot.run_id = Some(run.run_id);
            snapshot.start_time = snapshot.start_time.or(run.start_time);
            snapshot.close_time = run.close_time.or(snapshot.close_time);
            w.closed.insert(run.workflow_id, snapshot);
            Some(job)
        });
        if let Some(job) = job {
            self.found.closes.inc();
            let _ = self.wake.unbounded_send(job);
        }
    }

    /// Records whether listing works; when it stops working, every listed job is woken to be
    /// polled instead.
    fn set_listing(&self, works: bool) {
        let woken: Vec<ObjectRef<ImageJob>> = match self.watched.lock() {
            Ok(mut w) if w.listing != works => {
                w.listing = works;
                if works {
                    Vec::new()
                } else {
                    w.listed.values().map(|(job, _)| job.clone()).collect()
                }
            }
            _ => Vec::new(),
        };
        for job in woken {
            let _ = self.wake.unbounded_send(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{FakeGateway, closed},
        temporal::{client::ExecutionStatus, contract::WorkflowState, error::TemporalError},
    };
    use futures::channel::mpsc;

    fn job(name: &str) -> ObjectRef<ImageJob> {
        ObjectRef::new(name).within("team-a")
    }

    fn watches(
        gateway: &Arc<FakeGateway>,
    ) -> (
        WorkflowWatches,
        mpsc::UnboundedReceiver<ObjectRef<ImageJob>>,
        ListedFinds,
    ) {
        let (wake, woken) = mpsc::unbounded();
        let found = ListedFinds::default();
        let gateway: Arc<dyn WorkflowGateway> = gateway.clone();
        (
            WorkflowWatches::new(gateway, wake, 1, found.clone()),
            woken,
            found,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_bound_workflows_are_listed_and_their_close_found_by_the_list() {
        let gateway = Arc::new(FakeGateway::default());
        let (watches, mut woken, found) = watches(&gateway);
        assert_eq!(watches.ensure("wf-a", job("a")), Tracking::Watched);
        assert_eq!(watches.ensure("wf-b", job("b")), Tracking::Listed);
        assert!(watches.is_tracked("wf-b"));

        gateway.set(
            "wf-b",
            Ok(closed(ExecutionStatus::Completed, WorkflowState::default())),
        );
        let first = woken.next().await.expect("a job woken");
        assert_eq!(first.name, "b");
        let snapshot = watches.take_closed("wf-b").expect("its close, read once");
        assert_eq!(snapshot.execution, ExecutionStatus::Completed);
        assert_eq!(found.closes.get(), 1);
        assert!(!watches.is_tracked("wf-b"));
        assert_eq!(gateway.count("close_of"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_listed_workflow_in_its_search_step_shows_it_once_without_a_history_read() {
        let gateway = Arc::new(FakeGateway::default());
        let (watches, mut woken, found) = watches(&gateway);
        assert_eq!(watches.ensure("wf-a", job("a")), Tracking::Watched);
        assert_eq!(watches.ensure("wf-b", job("b")), Tracking::Listed);
        let searching = WorkflowState {
            image_id: Some("img-b".into()),
            metadata_stored: true,
            ..WorkflowState::default()
        };
        let mut running = closed(ExecutionStatus::Running, searching);
        running.run_id = Some("run-b".into());
        gateway.set("wf-b", Ok(running));

        let first = woken.next().await.expect("a job woken");
        assert_eq!(first.name, "b");
        let step = watches.take_step("wf-b").expect("its step, taken once");
        assert_eq!(step.execution, ExecutionStatus::Running);
        assert_eq!(step.run_id.as_deref(), Some("run-b"));
        let state = step.state.expect("a state");
        assert!(state.metadata_stored);
        assert_eq!(state.image_id.as_deref(), Some("img-b"));
        assert!(watches.take_step("wf-b").is_none());
        // Still listed (its close is to come), and not woken again for the same step.
        assert!(watches.is_tracked("wf-b"));
        tokio::time::sleep(LIST_EVERY * 3).await;
        assert!(watches.take_step("wf-b").is_none());
        assert_eq!(found.steps.get(), 1);
        assert!(gateway.count("searching") >= 3);
        assert_eq!(gateway.count("close_of"), 0);
        assert_eq!(gateway.count("snapshot"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_workflow_started_while_others_are_listed_is_listed_too() {
        let gateway = Arc::new(FakeGateway::default());
        let (watches, _woken, _found) = watches(&gateway);
        assert_eq!(watches.ensure("wf-a", job("a")), Tracking::Watched);
        assert_eq!(watches.ensure("wf-b", job("b")), Tracking::Listed);
        watches.forget("wf-a");
        // A watch slot is free, but wf-b waits in the list: wf-c (behind it) is listed too.
        assert_eq!(watches.ensure("wf-c", job("c")), Tracking::Listed);
        watches.forget("wf-b");
        watches.forget("wf-c");
        assert_eq!(watches.ensure("wf-d", job("d")), Tracking::Watched);
    }

    #[tokio::test(start_paused = true)]
    async fn when_listing_fails_listed_jobs_are_woken_to_be_polled() {
        let gateway = Arc::new(FakeGateway::default());
        let (watches, mut woken, _found) = watches(&gateway);
        assert_eq!(watches.ensure("wf-a", job("a")), Tracking::Watched);
        gateway.fail_with(Some(TemporalError::Rpc("visibility down".into())));
        assert_eq!(watches.ensure("wf-b", job("b")), Tracking::Listed);
        let woken_job = woken.next().await.expect("the listed job woken");
        assert_eq!(woken_job.name, "b");
        assert_eq!(watches.ensure("wf-b", job("b")), Tracking::Polled);

        gateway.fail_with(None);
        tokio::time::sleep(LIST_EVERY * 3).await;
        assert_eq!(watches.ensure("wf-b", job("b")), Tracking::Listed);
    }
}
