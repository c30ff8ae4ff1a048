//! The allocator's own view of the process heap (jemalloc's `stats.*`), exported as metrics so
//! that memory held by live objects can be told apart from memory the allocator keeps.
//!
//! jemalloc is the binary's allocator, set with its options in `main.rs` (and in the benchmark
//! harnesses that measure memory in-process): glibc's malloc kept a controller at its peak RSS
//! after 10,000 jobs were created and deleted (docs/performance.md, the churn benchmark).

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash},
};
use tikv_jemalloc_ctl::{epoch, stats};

// The unit tests read these figures, so they run on jemalloc too. (The library itself sets no
// allocator: its test build loads its normal build through the test kit, and two would clash.)
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One reading of jemalloc's statistics, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in pages that hold live allocations.
    pub active: u64,
    /// Bytes of allocator metadata.
    pub metadata: u64,
    /// Bytes of physically resident pages the allocator maps (close to its share of RSS).
    pub resident: u64,
}

impl HeapStats {
    /// Reads fresh figures; `None` if jemalloc's statistics cannot be read.
    pub fn read() -> Option<Self> {
        epoch::advance().ok()?;
        let read = |value: Result<usize, _>| value.ok().map(|v: usize| v as u64);
        Some(Self {
            allocated: read(stats::allocated::read())?,
            active: read(stats::active::read())?,
            metadata: read(stats::metadata::read())?,
            resident: read(stats::resident::read())?,
        })
    }
}

/// The heap figures and the async runtime's live tasks as Prometheus gauges, refreshed before
/// each scrape: together they show whether memory or work outlives what started it.
#[derive(Clone, Default)]
pub struct ProcessGauges {
    allocated: Gauge,
    resident: Gauge,
    alive_tasks: Gauge,
}

impl ProcessGauges {
    /// Gauges registered as `<prefix>_heap_allocated_bytes`, `<prefix>_heap_resident_bytes` and
    /// `<prefix>_runtime_alive_tasks`.
    pub fn register(registry: &mut Registry) -> Self {
        let gauges = Self::default();
        registry.register(
            "heap_allocated_bytes",
            "Bytes in live heap allocations (jemalloc stats.allocated)",
            gauges.allocated.clone(),
        );
        registry.register(
            "heap_resident_bytes",
            "Resident bytes the allocator maps (jemalloc stats.resident)",
            gauges.resident.clone(),
        );
        registry.register(
            "runtime_alive_tasks",
            "Tasks alive in the async runtime (tokio's num_alive_tasks)",
            gauges.alive_tasks.clone(),
        );
        gauges
    }

    /// Reads the allocator's and the runtime's figures into the gauges.
    pub fn refresh(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            self.alive_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        if let Some(heap) = HeapStats::read() {
            self.allocated
                .set(i64::try_from(heap.allocated).unwrap_or(i64::MAX));
            self.resident
                .set(i64::try_from(heap.resident).unwrap_or(i64::MAX));
        }
    }
}

/// Gives back a map's spare room once it holds under a quarter of its capacity: a map filled
/// by a burst of jobs otherwise keeps its peak size for the life of the process.
pub trait ReleaseSpare {
    /// Shrinks the collection if it is mostly empty.
    fn release_spare(&mut self);
}

/// Capacity below which a map is left alone.
const SPARE_FLOOR: usize = 64;

impl<K: Eq + Hash, V, S: BuildHasher> ReleaseSpare for HashMap<K, V, S> {
    fn release_spare(&mut self) {
        if self.capacity() > SPARE_FLOOR && self.len() * 4 < self.capacity() {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<K: Eq + Hash, S: BuildHasher> ReleaseSpare for HashSet<K, S> {
    fn release_spare(&mut self) {
        if self.capacity() > SPARE_FLOOR && self.len() * 4 < self.capacity() {
            self.shrink_to(self.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_allocations_show_in_the_figures() {
        let block = std::hint::black_box(vec![1u8; 8 << 20]);
        let during = HeapStats::read().expect("jemalloc statistics");
        assert!(during.allocated >= 8 << 20, "{during:?}");
        assert!(during.active >= during.allocated, "{during:?}");
        assert!(during.resident >= during.active, "{during:?}");
        drop(block);
    }

    #[test]
    fn a_drained_map_gives_its_room_back_and_a_full_one_keeps_it() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let peak = map.capacity();
        map.release_spare();
        assert_eq!(map.capacity(), peak, "a full map keeps its room");
        map.retain(|k, _| *k < 10);
        map.release_spare();
        assert!(map.capacity() < 64, "{} of {peak}", map.capacity());
        assert_eq!(map.len(), 10);
    }
}
