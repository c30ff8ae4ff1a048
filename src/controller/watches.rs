//! Long polls on running workflows: each wakes its job the moment its workflow closes, so the
//! status follows Temporal within milliseconds instead of a polling interval. Bounded in number;
//! jobs beyond the bound are polled.

use crate::{
    crd::ImageJob,
    temporal::{WorkflowGateway, WorkflowSnapshot},
};
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Pause after a failed long poll before waking the job, so an outage does not spin.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The set of workflows being watched, and what the closed ones left (so the woken reconcile
/// needs no further Temporal call).
pub struct WorkflowWatches {
    gateway: Arc<dyn WorkflowGateway>,
    wake: UnboundedSender<ObjectRef<ImageJob>>,
    active: Arc<Mutex<HashSet<String>>>,
    closed: Arc<Mutex<HashMap<String, WorkflowSnapshot>>>,
    max: usize,
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
            active: Arc::default(),
            closed: Arc::default(),
            max,
        }
    }

    /// Makes sure `workflow_id` is watched; false when the bound is reached (poll instead).
    pub fn ensure(&self, workflow_id: &str, job: ObjectRef<ImageJob>) -> bool {
        let Ok(mut active) = self.active.lock() else {
            return false;
        };
        if active.contains(workflow_id) {
            return true;
        }
        if active.len() >= self.max {
            return false;
        }
        active.insert(workflow_id.to_owned());
        let id = workflow_id.to_owned();
        let gateway = self.gateway.clone();
        let wake = self.wake.clone();
        let set = self.active.clone();
        let closed = self.closed.clone();
        tokio::spawn(async move {
            match gateway.wait_closed(&id).await {
                Ok(snapshot) => {
                    if let Ok(mut closed) = closed.lock() {
                        closed.insert(id.clone(), snapshot);
                    }
                }
                Err(e) => {
                    tracing::debug!(workflow_id = %id, error = %e, "workflow watch failed");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
            if let Ok(mut active) = set.lock() {
                active.remove(&id);
            }
            let _ = wake.unbounded_send(job);
        });
        true
    }

    /// What the workflow left when it closed, if a watch saw it close (taken once).
    pub fn take_closed(&self, workflow_id: &str) -> Option<WorkflowSnapshot> {
        self.closed.lock().ok()?.remove(workflow_id)
    }
}
