//! The order the list endpoint pages through, kept as jobs change instead of sorted per request:
//! a page is a range of an ordered set, `O(log n + page)` with 100,000 jobs cached.

use crate::{crd::ImageJob, temporal::contract::ProcessingStatus};
use kube::ResourceExt;
use std::{
    collections::{BTreeSet, HashMap},
    ops::Bound,
    sync::Arc,
};

/// Creation time then name: a stable order in which new jobs come last. The name follows the
/// last `/`, so a key names its job.
pub fn sort_key(job: &ImageJob) -> String {
    let created = job.created_second();
    format!("{created:020}/{}", job.name_any())
}

/// The job name in a sort key.
pub fn name_in(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

/// Which page: keys after `after` (exclusive) in the page's order, of `status` only when given.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageQuery<'a> {
    /// Only jobs in this status.
    pub status: Option<ProcessingStatus>,
    /// The continue token: the last key of the previous page.
    pub after: Option<&'a str>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Jobs on the page.
    pub limit: usize,
}

/// Jobs in list order, all of them and by status. A job's key is allocated once and shared
/// by the sets it is in.
#[derive(Default)]
pub struct ListIndex {
    all: BTreeSet<Arc<str>>,
    by_status: HashMap<ProcessingStatus, BTreeSet<Arc<str>>>,
    /// Each job's key and status, to move it when it changes.
    entry_of: HashMap<String, (Arc<str>, ProcessingStatus)>,
}

impl ListIndex {
    /// Adds a job, or moves it to its new status.
    pub fn upsert(&mut self, job: &ImageJob) {
        let (key, status) = (
            Arc::<str>::from(sort_key(job)),
            job.phase().processing_status(),
        );
        let name = job.name_any();
        if let Some((old_key, old_status)) = self.entry_of.get(&name) {
            if **old_key == *key && *old_status == status {
                return;
            }
            self.remove(&name);
        }
        self.all.insert(key.clone());
        self.by_status
            .entry(status)
            .or_default()
            .insert(key.clone());
        self.entry_of.insert(name, (key, status));
    }

    /// Drops a job by name.
    pub fn remove(&mut self, name: &str) {
        if let Some((key, status)) = self.entry_of.remove(name) {
            self.all.remove(&key);
            if let Some(set) = self.by_status.get_mut(&status) {
                set.remove(&key);
            }
        }
    }

    /// Up to `limit + 1` keys of the page, of the jobs `keep` takes: one more than asked, so
    /// the caller knows whether another page follows.
    pub fn page(&self, query: &PageQuery, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let PageQuery {
            status,
            after,
            newest_first,
            limit,
        } = *query;
        let empty = BTreeSet::new();
        let set = match status {
            Some(s) => self.by_status.get(&s).unwrap_or(&empty),
            None => &self.all,
        };
        let take = limit.saturating_add(1);
        let bound = after.map_or(Bound::Unbounded, Bound::Excluded);
        if newest_first {
            let range = set.range::<str, _>((Bound::Unbounded, bound));
            let kept = range.rev().filter(|k| keep(k));
            kept.take(take).map(|k| k.to_string()).collect()
        } else {
            let range = set.range::<str, _>((bound, Bound::Unbounded));
            let kept = range.filter(|k| keep(k));
            kept.take(take).map(|k| k.to_string()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageJobSpec, ImageJobStatus, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(name: &str, second: i64, phase: Phase) -> ImageJob {
        let mut job = ImageJob::new(name, ImageJobSpec::default());
        job.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
        ));
        job.status = Some(ImageJobStatus {
            phase,
            ..Default::default()
        });
        job
    }

    fn q<'a>(
        status: Option<ProcessingStatus>,
        after: Option<&'a str>,
        newest_first: bool,
        limit: usize,
    ) -> PageQuery<'a> {
        PageQuery {
            status,
            after,
            newest_first,
            limit,
        }
    }

    fn names(keys: Vec<String>) -> Vec<String> {
        keys.iter().map(|k| name_in(k).to_owned()).collect()
    }

    #[test]
    fn pages_follow_creation_order_both_ways_and_filter_by_status() {
        let mut index = ListIndex::default();
        for (name, second, phase) in [
            ("c", 3, Phase::Completed),
            ("a", 1, Phase::Processing),
            ("b", 2, Phase::Failed),
            ("d", 4, Phase::Completed),
        ] {
            index.upsert(&job(name, second, phase));
        }
        assert_eq!(
            names(index.page(&q(None, None, false, 2), |_| true)),
            ["a", "b", "c"]
        );
        let after_b = sort_key(&job("b", 2, Phase::Failed));
        let second_page = index.page(&q(None, Some(&after_b), false, 2), |_| true);
        assert_eq!(names(second_page), ["c", "d"]);
        assert_eq!(
            names(index.page(&q(None, None, true, 1), |_| true)),
            ["d", "c"]
        );
        assert_eq!(
            names(index.page(
                &q(Some(ProcessingStatus::Completed), None, false, 5),
                |_| true
            )),
            ["c", "d"]
        );
        assert!(
            index
                .page(
                    &q(Some(ProcessingStatus::Cancelled), None, false, 5),
                    |_| true
                )
                .is_empty()
        );
    }

    #[test]
    fn a_job_moves_between_statuses_and_leaves_on_removal() {
        let mut index = ListIndex::default();
        index.upsert(&job("a", 1, Phase::Processing));
        index.upsert(&job("a", 1, Phase::Completed));
        assert!(
            index
                .page(
                    &q(Some(ProcessingStatus::Processing), None, false, 5),
                    |_| true
                )
                .is_empty()
        );
        assert_eq!(names(index.page(&q(None, None, false, 5), |_| true)), ["a"]);
        assert_eq!(
            names(index.page(
                &q(Some(ProcessingStatus::Completed), None, false, 5),
                |_| true
            )),
            ["a"]
        );
        index.remove("a");
        assert!(index.page(&q(None, None, false, 5), |_| true).is_empty());
        assert!(
            index
                .page(
                    &q(Some(ProcessingStatus::Completed), None, false, 5),
                    |_| true
                )
                .is_empty()
        );
    }
}
