//! Reconcile slots shared fairly between namespaces. At most `RECONCILE_CONCURRENCY` reconciles
//! run at once; while others wait, each slot that frees goes to the next namespace in turn, so a
//! namespace that submits thousands of jobs at once cannot make another's few wait behind its
//! whole backlog before their workflows even start (kube-runtime's own queue is one line, first
//! come first served). Temporal then shares its task queues the same way, by fairness key.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};
use tokio::sync::oneshot;

/// The slots; cheap to clone (shared).
#[derive(Clone)]
pub struct FairSlots(Arc<Mutex<State>>);

struct State {
    /// Most reconciles at once.
    capacity: usize,
    /// Reconciles running.
    running: usize,
    /// Waiting reconciles, by namespace, first come first.
    waiting: HashMap<String, VecDeque<oneshot::Sender<Slot>>>,
    /// Namespaces with waiters, in their turn order.
    turns: VecDeque<String>,
    /// No more slots are given: waiters get none (the controller is stopping).
    closed: bool,
}

/// A slot held by a running reconcile; freed (handed to the next in turn) on drop.
pub struct Slot(FairSlots);

impl FairSlots {
    /// `capacity` slots (0: unbounded).
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Mutex::new(State {
            capacity: if capacity == 0 { usize::MAX } else { capacity },
            running: 0,
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            closed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters and queues, never left half-changed: a poisoned lock is usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a reconcile of a job in `namespace`, once it is this namespace's turn; `None`
    /// once the slots are closed.
    pub async fn acquire(&self, namespace: &str) -> Option<Slot> {
        let receiver = {
            let mut state = self.state();
            if state.closed {
                return None;
            }
            if state.running < state.capacity && state.turns.is_empty() {
                state.running += 1;
                return Some(Slot(self.clone()));
            }
            let (sender, receiver) = oneshot::channel();
            let queue = state.waiting.entry(namespace.to_owned()).or_default();
            let first_waiter = queue.is_empty();
            queue.push_back(sender);
            if first_waiter {
                state.turns.push_back(namespace.to_owned());
            }
            receiver
        };
        // A slot sent to a waiter that is gone is dropped in the channel, which frees it again.
        receiver.await.ok()
    }

    /// Gives no more slots; every waiter gets none at once.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.waiting.clear();
        state.turns.clear();
    }

    /// Frees a slot: hands it to the first waiter of the next namespace in turn, if any.
    fn release(&self) {
        let mut state = self.state();
        while let Some(namespace) = state.turns.pop_front() {
            let Some(queue) = state.waiting.get_mut(&namespace) else {
                continue;
            };
            let Some(sender) = queue.pop_front() else {
                continue;
            };
            if queue.is_empty() {
                state.waiting.remove(&namespace);
            } else {
                state.turns.push_back(namespace);
            }
            // The slot moves to the waiter (`running` is unchanged). Sent without the lock:
            // a send that fails drops the slot, whose drop takes the lock to free it again.
            drop(state);
            if let Err(slot) = sender.send(Slot(self.clone())) {
                drop(slot);
            }
            return;
        }
        state.running = state.running.saturating_sub(1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits for `slots` to hand out a slot to each of `acquirers` in order; the namespaces in
    /// the order they got it.
    async fn order(
        slots: &FairSlots,
        first: Slot,
        acquirers: Vec<&'static str>,
    ) -> Vec<&'static str> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for namespace in acquirers {
            let (slots, tx) = (slots.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(namespace).await;
                let _ = tx.send((namespace, slot));
            });
            // Queued in this order.
            tokio::task::yield_now().await;
        }
        drop(tx);
        drop(first);
        let mut got = Vec::new();
        while let Some((namespace, slot)) = rx.recv().await {
            got.push(namespace);
            drop(slot);
        }
        got
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_namespace_in_turn() {
        let slots = FairSlots::new(1);
        let first = slots.acquire("a").await.expect("a slot");
        let got = order(&slots, first, vec!["a", "a", "a", "a", "b", "b"]).await;
        assert_eq!(got, ["a", "b", "a", "b", "a", "a"]);
    }

    #[tokio::test]
    async fn no_more_than_the_capacity_run_and_a_waiter_gone_frees_its_slot() {
        let slots = FairSlots::new(2);
        let one = slots.acquire("a").await.expect("one");
        let _two = slots.acquire("a").await.expect("two");
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire("b")).await;
        assert!(third.is_err(), "a third waits");
        // The timed-out waiter is gone; the freed slot passes it by.
        drop(one);
        let fourth = tokio::time::timeout(Duration::from_secs(1), slots.acquire("b")).await;
        assert!(fourth.expect("not left waiting").is_some());
    }

    #[tokio::test]
    async fn closed_slots_let_every_waiter_go_empty_handed() {
        let slots = FairSlots::new(1);
        let _held = slots.acquire("a").await.expect("a slot");
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire("b").await.is_some() })
        };
        tokio::task::yield_now().await;
        slots.close();
        assert!(!waiter.await.expect("the waiter ends"));
        assert!(slots.acquire("c").await.is_none());
    }
}
