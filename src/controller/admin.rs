//! The controller on its admin port: ready on standby or once the leader's cache is synced; its
//! metrics with the jobs counted by phase, a walk of the cache at most once per
//! [`PHASE_COUNT_PERIOD`] however often it is scraped.

use super::{
    jobs::{HeldJobs, Jobs},
    metrics::SharedControllerMetrics,
};
use crate::admin::AdminRole;
use async_trait::async_trait;
use futures::FutureExt;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Jobs are counted by phase at most this often: a scrape flood costs no more than one walk of
/// the cache per period.
pub const PHASE_COUNT_PERIOD: Duration = Duration::from_secs(5);

/// What the controller's admin server reads.
pub struct ControllerAdmin {
    metrics: SharedControllerMetrics,
    held: HeldJobs,
    /// When the jobs were last counted by phase.
    counted: Mutex<Option<Instant>>,
}

impl ControllerAdmin {
    /// The admin role over these metrics and the jobs the lifecycle publishes in `held`.
    pub fn new(metrics: SharedControllerMetrics, held: HeldJobs) -> Self {
        Self {
            metrics,
            held,
            counted: Mutex::new(None),
        }
    }

    fn jobs(&self) -> Option<Jobs> {
        self.held.read().ok().and_then(|s| s.clone())
    }

    /// Whether the jobs are due to be counted again (and, if so, marks them counted now).
    fn count_due(&self) -> bool {
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        let due = counted.is_none_or(|at| at.elapsed() >= PHASE_COUNT_PERIOD);
        if due {
            *counted = Some(Instant::now());
        }
        due
    }
}

#[async_trait]
impl AdminRole for ControllerAdmin {
    fn name(&self) -> &'static str {
        "controller"
    }

    fn readiness(&self) -> Result<String, String> {
        // A standby replica (no jobs held) is ready: it is healthy and waiting to lead.
        match self.jobs() {
            Some(jobs) if jobs.cache.wait_until_ready().now_or_never().is_none() => {
                Err("cache not synced yet".into())
            }
            Some(_) => Ok("ready: leading".into()),
            None => Ok("ready: standby".into()),
        }
    }

    async fn metrics(&self) -> String {
        if let Some(jobs) = self.jobs()
            && self.count_due()
        {
            let cached = jobs.cache.state();
            self.metrics.count_phases(
                cached.iter().map(|j| j.as_ref()),
                jobs.settled.phase_counts(),
            );
        }
        self.metrics.exposition.text().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ControllerMetrics;
    use std::sync::Arc;

    #[test]
    fn jobs_are_counted_by_phase_at_most_once_a_period_however_often_scraped() {
        let admin = ControllerAdmin::new(Arc::new(ControllerMetrics::new()), HeldJobs::default());
        assert!(admin.count_due(), "the first scrape counts");
        assert!(
            !admin.count_due(),
            "a scrape right after does not walk again"
        );
        *admin.counted.lock().unwrap() = Some(Instant::now() - PHASE_COUNT_PERIOD);
        assert!(admin.count_due(), "a period later it counts again");
    }
}
