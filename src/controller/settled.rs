//! Finished jobs kept out of the controller's cache.
//!
//! A job that is finished, has no TTL after finishing and is not being deleted needs no
//! reconcile until someone deletes it, and then the watch brings it back with a deletion
//! timestamp (or as gone, if it had no finalizer). Kept in kube-runtime's store it would cost
//! about 1.2 KB for as long as it exists, most of the controller's memory with 100,000 jobs;
//! here each such *settled* job leaves the store and only its uid and phase are kept, for the
//! phase metrics. The stage sits between each namespace's watcher and the store:
//! an `Apply` of a settled job becomes a `Delete` (it leaves the store if it was there, and
//! wakes no reconcile), a settled job in a list is not passed on, and a relist rebuilds the
//! record from the list as the store rebuilds itself.

use crate::crd::{ImageJob, Phase};
use kube::runtime::watcher::Event;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};
use uuid::Uuid;

/// The settled jobs of one watch stream.
#[derive(Default)]
struct Record {
    jobs: HashMap<Uuid, Phase>,
    /// The record being rebuilt by a list (between `Init` and `InitDone`).
    listing: Option<HashMap<Uuid, Phase>>,
}

/// The settled jobs of every watch stream of one controller (one stream per watched namespace,
/// or one for all), shared between the streams and the metrics.
#[derive(Clone)]
pub struct SettledJobs(Arc<[Mutex<Record>]>);

impl SettledJobs {
    /// A record for `streams` watch streams.
    pub fn new(streams: usize) -> Self {
        Self((0..streams.max(1)).map(|_| Mutex::default()).collect())
    }

    fn record(&self, stream: usize) -> MutexGuard<'_, Record> {
        // The record holds plain data and is never left half-changed: a poisoned lock is usable.
        self.0[stream]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What to pass on to the store for `event` of watch stream number `stream`.
    pub fn set_aside(&self, stream: usize, event: Event<ImageJob>) -> Option<Event<ImageJob>> {
        let mut record = self.record(stream);
        match event {
            Event::Apply(job) => match settled(&job) {
                Some((uid, phase)) => {
                    record.jobs.insert(uid, phase);
                    Some(Event::Delete(job))
                }
                None => {
                    if let Some(uid) = job.uid_key() {
                        record.jobs.remove(&uid);
                    }
                    Some(Event::Apply(job))
                }
            },
            Event::Delete(job) => {
                if let Some(uid) = job.uid_key() {
                    record.jobs.remove(&uid);
                }
                Some(Event::Delete(job))
            }
            Event::Init => {
                record.listing = Some(HashMap::new());
                Some(Event::Init)
            }
            Event::InitApply(job) => match settled(&job) {
                Some((uid, phase)) => {
                    record.listing.get_or_insert_default().insert(uid, phase);
                    None
                }
                None => Some(Event::InitApply(job)),
            },
            Event::InitDone => {
                let mut listed = record.listing.take().unwrap_or_default();
                listed.shrink_to_fit();
                record.jobs = listed;
                Some(Event::InitDone)
            }
        }
    }

    /// How many settled jobs there are in each phase.
    pub fn phase_counts(&self) -> HashMap<Phase, i64> {
        let mut counts = HashMap::new();
        for stream in 0..self.0.len() {
            for phase in self.record(stream).jobs.values() {
                *counts.entry(*phase).or_default() += 1;
            }
        }
        counts
    }

    /// How many settled jobs there are.
    pub fn count(&self) -> usize {
        (0..self.0.len())
            .map(|stream| self.record(stream).jobs.len())
            .sum()
    }
}

/// The uid and phase of a settled job: finished, no TTL after finishing, not being deleted, no
/// retry asked for, no notification to deliver.
fn settled(job: &ImageJob) -> Option<(Uuid, Phase)> {
    let phase = job.phase();
    let settled = phase.is_terminal()
        && job.spec.ttl_seconds_after_finished.is_none()
        && job.metadata.deletion_timestamp.is_none()
        && !job.has_work_after_finish();
    settled
        .then(|| job.uid_key().map(|uid| (uid, phase)))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageJobSpec, ImageJobStatus};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use kube::{ResourceExt, runtime::reflector};

    fn job(n: u128, phase: Phase) -> ImageJob {
        let mut job = ImageJob::new(&format!("job-{n}"), ImageJobSpec::default());
        job.metadata.namespace = Some("default".into());
        job.metadata.uid = Some(Uuid::from_u128(n).to_string());
        job.status = Some(ImageJobStatus {
            phase,
            ..Default::default()
        });
        job
    }

    fn deleting(n: u128, phase: Phase) -> ImageJob {
        let mut job = job(n, phase);
        job.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        job
    }

    /// A complete list of `jobs`: `Init`, an `InitApply` each, `InitDone`.
    fn listed(jobs: Vec<ImageJob>) -> Vec<Event<ImageJob>> {
        std::iter::once(Event::Init)
            .chain(jobs.into_iter().map(Event::InitApply))
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }

    /// Feeds `events` through the stage into a real reflector store; the store's names after.
    fn feed(settled: &SettledJobs, events: Vec<Event<ImageJob>>) -> Vec<String> {
        let (store, mut writer) = reflector::store::<ImageJob>();
        for event in events {
            if let Some(out) = settled.set_aside(0, event) {
                writer.apply_watcher_event(&out);
            }
        }
        let mut names: Vec<_> = store.state().iter().map(|j| j.name_any()).collect();
        names.sort();
        names
    }

    #[test]
    fn finished_jobs_without_ttl_leave_the_cache_and_are_counted() {
        let settled = SettledJobs::new(1);
        let mut with_ttl = job(3, Phase::Completed);
        with_ttl.spec.ttl_seconds_after_finished = Some(60);
        let mut events = listed(vec![
            job(1, Phase::Processing),
            job(2, Phase::Completed),
            with_ttl,
            deleting(4, Phase::Failed),
        ]);
        // Job 1 finishes; job 5 is created finished (restored from a backup, say).
        events.push(Event::Apply(job(1, Phase::Cancelled)));
        events.push(Event::Apply(job(5, Phase::Completed)));
        // Job 6 failed and is to be retried: it comes back.
        events.push(Event::Apply(job(6, Phase::Failed)));
        let mut retried = job(6, Phase::Failed);
        retried.spec.retry = Some(1);
        events.push(Event::Apply(retried));
        let cached = feed(&settled, events);
        assert_eq!(cached, ["job-3", "job-4", "job-6"]);
        let counts = settled.phase_counts();
        assert_eq!(counts.get(&Phase::Completed), Some(&2));
        assert_eq!(counts.get(&Phase::Cancelled), Some(&1));
        assert_eq!(settled.count(), 3);
    }

    #[test]
    fn a_deletion_brings_a_settled_job_back_and_its_end_forgets_it() {
        let settled = SettledJobs::new(1);
        let mut events = listed(vec![job(1, Phase::Completed), job(2, Phase::Completed)]);
        events.push(Event::Apply(deleting(1, Phase::Completed)));
        let cached = feed(&settled, events);
        assert_eq!(cached, ["job-1"], "the deleted job is reconciled again");
        assert_eq!(settled.count(), 1);
        feed(&settled, vec![Event::Delete(job(2, Phase::Completed))]);
        assert_eq!(settled.count(), 0);
    }

    #[test]
    fn a_relist_rebuilds_the_record() {
        let settled = SettledJobs::new(2);
        feed(
            &settled,
            listed(vec![job(1, Phase::Completed), job(2, Phase::Completed)]),
        );
        assert_eq!(settled.count(), 2);
        // The watch desynced; job 1 was deleted meanwhile (no Delete seen), 3 and 4 finished.
        feed(
            &settled,
            vec![
                Event::Init,
                Event::InitApply(job(2, Phase::Completed)),
                Event::InitApply(job(3, Phase::Failed)),
                Event::InitApply(job(4, Phase::Failed)),
            ],
        );
        assert_eq!(
            settled.count(),
            2,
            "the old record holds until the list is complete"
        );
        feed(&settled, vec![Event::InitDone]);
        let counts = settled.phase_counts();
        assert_eq!(
            (counts.get(&Phase::Completed), counts.get(&Phase::Failed)),
            (Some(&1), Some(&2))
        );
    }
}
