//! The worker's admin role: its metrics, and a readiness that tells the truth at once. Ready means the worker runs its poll
//! loop *and* Temporal answered in its namespace within the last few seconds (a background
//! check every [`CHECK_EVERY`]), so a lost server or a missing namespace turns it unready
//! instead of a probe that hangs or lies.

use crate::{
    admin::AdminRole,
    metrics::Exposition,
    temporal::{client::TemporalGateway, error::TemporalError},
};
use async_trait::async_trait;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

/// Interval of the background check.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Bound of one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How old the last good check may be for the worker to count as ready.
const FRESH_FOR: Duration = Duration::from_secs(6);

/// What the readiness probe answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Polling, and Temporal answered recently.
    Ready,
    /// Not ready, and why.
    NotReady(String),
}

/// Tracks the worker's poll loop and Temporal's answers.
#[derive(Clone)]
pub struct WorkerReadiness {
    polling: Arc<AtomicBool>,
    last: Arc<Mutex<Result<Instant, String>>>,
}

impl WorkerReadiness {
    /// Starts checking Temporal through `gateway` in the background; `polling` is the worker's
    /// poll-loop flag.
    pub fn start(gateway: TemporalGateway, polling: Arc<AtomicBool>) -> Self {
        let readiness = Self {
            polling,
            last: Arc::new(Mutex::new(Err("Temporal not checked yet".into()))),
        };
        let last = readiness.last.clone();
        tokio::spawn(async move {
            loop {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, gateway.health()).await {
                    Ok(Ok(())) => Ok(Instant::now()),
                    Ok(Err(TemporalError::NamespaceNotFound(m))) => Err(m),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("Temporal did not answer within {CHECK_TIMEOUT:?}")),
                };
                if let Ok(mut slot) = last.lock() {
                    *slot = outcome;
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        });
        readiness
    }

    /// The answer right now (never waits).
    pub fn now(&self) -> Readiness {
        if !self.polling.load(Ordering::Acquire) {
            return Readiness::NotReady("the worker is not polling its task queue".into());
        }
        match self.last.lock().map(|l| l.clone()) {
            Ok(Ok(at)) if at.elapsed() <= FRESH_FOR => Readiness::Ready,
            Ok(Ok(at)) => {
                Readiness::NotReady(format!("Temporal last answered {:?} ago", at.elapsed()))
            }
            Ok(Err(why)) => Readiness::NotReady(why),
            Err(_) => Readiness::NotReady("readiness state poisoned".into()),
        }
    }
}

/// The worker on its admin port: ready while it polls and Temporal answers; its metrics are
/// the SDK's (task latencies, slots, pollers) and the process's.
pub struct WorkerAdmin {
    /// The readiness tracker.
    pub readiness: WorkerReadiness,
    /// The worker's metrics.
    pub exposition: Exposition,
}

#[async_trait]
impl AdminRole for WorkerAdmin {
    fn name(&self) -> &'static str {
        "worker"
    }

    fn readiness(&self) -> Result<String, String> {
        match self.readiness.now() {
            Readiness::Ready => Ok("polling".into()),
            Readiness::NotReady(why) => Err(why),
        }
    }

    async fn metrics(&self) -> String {
        self.exposition.text().await
    }
}
