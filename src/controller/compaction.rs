//! When to rebuild the controller so a cache that has shrunk far below its peak gives its
//! memory back.
//!
//! The reflector store, kube-runtime's predicate cache and its scheduler's queue are hash maps
//! and slabs that keep the capacity of the most they ever held (Go's maps in client-go behave the
//! same), and the predicate cache keeps a deleted object's entry for an hour. After 10,000 jobs
//! came and went that is several MiB held for nothing. Once the jobs held (cached, or settled and
//! recorded) have fallen to a quarter of their high-water mark (`CACHE_REBUILD_MIN_PEAK` jobs or
//! more), the controller is rebuilt: a fresh watch, store and scheduler, sized to what is left. A
//! job finishing moves from the cache to the settled record, so only deletions count down. A
//! rebuild costs what a restart costs: one list, and one reconcile per cached job.

use super::jobs::Jobs;
use std::time::Duration;

/// A rebuild is due once the jobs are at most the peak divided by this.
const SHRINK_FACTOR: usize = 4;
/// How often the cache's size is looked at (a read lock and a length: cheap).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Resolves once `jobs` holds a [`SHRINK_FACTOR`]th or less of the most it held, and that
/// most was at least `min_peak` jobs (below it the maps are too small to be worth a rebuild;
/// 0 never resolves).
pub async fn due(jobs: Jobs, min_peak: usize) {
    if min_peak == 0 {
        return std::future::pending().await;
    }
    let mut peak = 0;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let now = jobs.count();
        peak = peak.max(now);
        if shrunk_enough(peak, now, min_peak) {
            tracing::info!(
                peak,
                now,
                "the job cache shrank far below its peak: rebuilding the controller to give the memory back"
            );
            return;
        }
    }
}

fn shrunk_enough(peak: usize, now: usize, min_peak: usize) -> bool {
    peak >= min_peak && now.saturating_mul(SHRINK_FACTOR) <= peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_is_due_only_after_a_large_peak_and_a_deep_fall() {
        assert!(
            !shrunk_enough(1_000, 0, 2_048),
            "small peaks are not worth it"
        );
        assert!(
            !shrunk_enough(10_000, 2_501, 2_048),
            "above a quarter of the peak"
        );
        assert!(shrunk_enough(10_000, 2_500, 2_048));
        assert!(shrunk_enough(2_048, 0, 2_048));
    }
}
