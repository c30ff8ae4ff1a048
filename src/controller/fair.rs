//! Reconcile slots shared fairly between namespaces. At most `RECONCILE_CONCURRENCY` reconciles
//! run at once; while others wait, each slot that frees goes to the next namespace in turn, so a
//! namespace that submits thousands of jobs at once cannot make another's few wait behind its
//! whole backlog before their workflows even start (kube-runtime's own queue is one line, first
//! come first served). Temporal then shares its task queues the same way, by fairness key.
//!
//! A job that has to wait is not a reconcile left waiting: its reconcile ends at once and the job
//! is queued by reference; when its turn comes, a slot is kept for it and the job is woken (the
//! same channel the workflow watches wake jobs by), and its next reconcile takes the slot.
//! kube-runtime polls every running reconcile each time any of them may progress, so 10,000
//! reconciles parked on a slot cost the controller's CPU quadratically in a burst.

use crate::crd::ImageJob;
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// How long a slot is kept for a woken job before it goes to the next one (the job was deleted
/// just after it was woken). A job that comes later than this (a controller starved of CPU)
/// takes a free slot, or waits its turn again.
const KEPT_FOR: Duration = Duration::from_secs(30);

/// The slots; cheap to clone (shared).
#[derive(Clone)]
pub struct FairSlots(Arc<Mutex<State>>);

/// Whether a job may reconcile now.
pub enum Admission<T = Slot> {
    /// Its slot (or what holds it), held while it runs.
    Go(T),
    /// It waits for its turn; it is woken when it comes.
    Queued,
    /// The controller is stopping: no more slots.
    Closed,
}

impl<T> Admission<T> {
    /// The same admission, what holds the slot wrapped by `wrap`.
    pub fn map<U>(self, wrap: impl FnOnce(T) -> U) -> Admission<U> {
        match self {
            Admission::Go(held) => Admission::Go(wrap(held)),
            Admission::Queued => Admission::Queued,
            Admission::Closed => Admission::Closed,
        }
    }
}

struct State {
    /// Most reconciles at once.
    capacity: usize,
    /// Slots taken: reconciles running, and slots kept for woken jobs.
    taken: usize,
    /// Waiting jobs, by namespace, first come first.
    waiting: HashMap<String, VecDeque<ObjectRef<ImageJob>>>,
    /// The waiting jobs, to queue each once.
    queued: HashSet<ObjectRef<ImageJob>>,
    /// Namespaces with waiting jobs, in their turn order.
    turns: VecDeque<String>,
    /// Slots kept for woken jobs, since when.
    kept: HashMap<ObjectRef<ImageJob>, Instant>,
    /// Wakes a job whose turn came.
    wake: UnboundedSender<ObjectRef<ImageJob>>,
    /// The jobs as cached: a waiting job deleted meanwhile is passed over.
    jobs: Store<ImageJob>,
    /// No more slots are given (the controller is stopping).
    closed: bool,
}

/// A slot held by a running reconcile; freed (handed to the next in turn) on drop.
pub struct Slot(FairSlots);

impl FairSlots {
    /// `capacity` slots (0: unbounded); a job whose turn comes is sent to `wake`, unless `jobs`
    /// no longer holds it.
    pub fn new(
        capacity: usize,
        wake: UnboundedSender<ObjectRef<ImageJob>>,
        jobs: Store<ImageJob>,
    ) -> Self {
        Self(Arc::new(Mutex::new(State {
            capacity: if capacity == 0 { usize::MAX } else { capacity },
            taken: 0,
            waiting: HashMap::new(),
            queued: HashSet::new(),
            turns: VecDeque::new(),
            kept: HashMap::new(),
            wake,
            jobs,
            closed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters and queues, never left half-changed: a poisoned lock is usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `job` now (one kept for it, or a free one when no job waits), or its place in
    /// its namespace's line.
    pub fn admit(&self, job: &ObjectRef<ImageJob>) -> Admission {
        let mut state = self.state();
        if state.closed {
            return Admission::Closed;
        }
        state.reclaim_expired();
        if state.kept.remove(job).is_some() {
            return Admission::Go(Slot(self.clone()));
        }
        if state.queued.contains(job) {
            return Admission::Queued;
        }
        if state.taken < state.capacity && state.turns.is_empty() {
            state.taken += 1;
            return Admission::Go(Slot(self.clone()));
        }
        let namespace = job.namespace.clone().unwrap_or_default();
        let line = state.waiting.entry(namespace.clone()).or_default();
        let first_waiter = line.is_empty();
        line.push_back(job.clone());
        state.queued.insert(job.clone());
        if first_waiter {
            state.turns.push_back(namespace);
        }
        Admission::Queued
    }

    /// Gives no more slots; the waiting jobs are forgotten.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.waiting.clear();
        state.queued.clear();
        state.turns.clear();
        state.kept.clear();
    }

    /// Jobs waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.state().queued.len()
    }
}

impl State {
    /// Frees a slot: keeps it for the first job of the next namespace in turn and wakes that
    /// job; with none waiting, the slot is free.
    fn hand_on(&mut self) {
        while let Some(namespace) = self.turns.pop_front() {
            let Some(job) = self.next_of(&namespace) else {
                continue;
            };
            if self.waiting.contains_key(&namespace) {
                self.turns.push_back(namespace);
            }
            self.kept.insert(job.clone(), Instant::now());
            // The controller stopping drops the receiver: nothing is woken any more.
            let _ = self.wake.unbounded_send(job);
            return;
        }
        self.taken = self.taken.saturating_sub(1);
    }

    /// The first job of `namespace`'s line that is still cached, taken out of the line; the
    /// ones deleted while they waited are dropped on the way.
    fn next_of(&mut self, namespace: &str) -> Option<ObjectRef<ImageJob>> {
        let line = self.waiting.get_mut(namespace)?;
        let mut next = None;
        while let Some(job) = line.pop_front() {
            self.queued.remove(&job);
            if self.jobs.get(&job).is_some() {
                next = Some(job);
                break;
            }
        }
        if line.is_empty() {
            self.waiting.remove(namespace);
        }
        next
    }

    /// Slots kept for woken jobs that did not come for them within [`KEPT_FOR`] go on.
    fn reclaim_expired(&mut self) {
        let expired: Vec<ObjectRef<ImageJob>> = (self.kept.iter())
            .filter(|(_, since)| since.elapsed() >= KEPT_FOR)
            .map(|(job, _)| job.clone())
            .collect();
        for job in expired {
            self.kept.remove(&job);
            self.hand_on();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if !state.closed {
            state.reclaim_expired();
        }
        state.hand_on();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, channel::mpsc};
    use kube::runtime::{reflector, watcher};

    fn job(namespace: &str, name: &str) -> ObjectRef<ImageJob> {
        ObjectRef::new(name).within(namespace)
    }

    /// Slots over a cache that holds the jobs these tests queue, all but `deleted` ones.
    fn slots(capacity: usize) -> (FairSlots, mpsc::UnboundedReceiver<ObjectRef<ImageJob>>) {
        let (reader, mut writer) = reflector::store();
        for namespace in ["a", "b", "c"] {
            for name in [
                "first", "1", "2", "3", "a1", "a2", "a3", "b1", "b2", "gone", "next", "later",
            ] {
                let mut cached = ImageJob::new(name, Default::default());
                cached.metadata.namespace = Some(namespace.into());
                writer.apply_watcher_event(&watcher::Event::Apply(cached));
            }
        }
        let (wake, woken) = mpsc::unbounded();
        (FairSlots::new(capacity, wake, reader), woken)
    }

    fn go(admission: Admission) -> Slot {
        match admission {
            Admission::Go(slot) => slot,
            Admission::Queued => panic!("queued"),
            Admission::Closed => panic!("closed"),
        }
    }

    fn queued(admission: &Admission) -> bool {
        matches!(admission, Admission::Queued)
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_namespace_in_turn() {
        let (slots, mut woken) = slots(1);
        let mut held = go(slots.admit(&job("a", "first")));
        let line = [
            job("a", "a1"),
            job("a", "a2"),
            job("a", "a3"),
            job("b", "b1"),
            job("b", "b2"),
        ];
        for j in &line {
            assert!(queued(&slots.admit(j)), "{j} waits");
        }
        let mut order = Vec::new();
        for _ in &line {
            drop(held);
            let next = woken.next().await.expect("a job woken");
            held = go(slots.admit(&next));
            order.push(next.name);
        }
        assert_eq!(order, ["a1", "b1", "a2", "b2", "a3"]);
    }

    #[test]
    fn no_more_than_the_capacity_run_and_a_waiting_job_is_queued_once() {
        let (slots, _woken) = slots(2);
        let _one = go(slots.admit(&job("a", "1")));
        let _two = go(slots.admit(&job("a", "2")));
        assert!(queued(&slots.admit(&job("b", "3"))));
        assert!(queued(&slots.admit(&job("b", "3"))), "still waiting");
        assert_eq!(slots.waiting(), 1);
    }

    #[tokio::test]
    async fn a_slot_kept_for_a_job_that_never_comes_goes_on() {
        let (slots, mut woken) = slots(1);
        let held = go(slots.admit(&job("a", "1")));
        assert!(queued(&slots.admit(&job("a", "gone"))));
        assert!(queued(&slots.admit(&job("b", "next"))));
        drop(held);
        assert_eq!(woken.next().await.expect("woken").name, "gone");
        // "gone" was deleted and never reconciles again.
        {
            let mut state = slots.state();
            let since = Instant::now().checked_sub(KEPT_FOR).expect("an instant");
            state.kept.values_mut().for_each(|at| *at = since);
        }
        assert!(queued(&slots.admit(&job("c", "later"))));
        assert_eq!(woken.next().await.expect("woken").name, "next");
        let _next = go(slots.admit(&job("b", "next")));
    }

    #[tokio::test]
    async fn a_job_deleted_while_it_waited_is_passed_over() {
        let (slots, mut woken) = slots(1);
        let held = go(slots.admit(&job("a", "1")));
        assert!(queued(&slots.admit(&job("a", "deleted"))));
        assert!(queued(&slots.admit(&job("b", "next"))));
        drop(held);
        assert_eq!(woken.next().await.expect("woken").name, "next");
        assert_eq!(slots.waiting(), 0);
    }

    #[test]
    fn closed_slots_admit_nobody() {
        let (slots, _woken) = slots(1);
        let _held = go(slots.admit(&job("a", "1")));
        assert!(queued(&slots.admit(&job("b", "2"))));
        slots.close();
        assert!(matches!(slots.admit(&job("b", "2")), Admission::Closed));
        assert_eq!(slots.waiting(), 0);
    }
}
