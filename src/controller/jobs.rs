//! The jobs a controller holds: the list and watch it reads them from (settled jobs set aside),
//! what its cache keeps of each, which changes wake a reconcile, and the cache's lifetime gauge.

use super::settled::SettledJobs;
use crate::crd::{ImageJob, ImageJobSpec, ImageJobStatus};
use futures::StreamExt;
use kube::{
    Api,
    runtime::{reflector::Store, watcher},
};
use std::sync::Arc;

/// What a running controller holds of the jobs it watches: the cache of those it may reconcile
/// and the record of the settled ones kept out of it.
#[derive(Clone)]
pub struct Jobs {
    /// The jobs that may need a reconcile.
    pub cache: Store<ImageJob>,
    /// Finished jobs without a TTL, by uid and phase.
    pub settled: SettledJobs,
    /// Counted in `controller_job_caches` until the last clone is gone.
    pub(super) _alive: Arc<CacheAlive>,
}

/// Counts one job cache in a gauge for as long as it lives.
pub(super) struct CacheAlive(prometheus_client::metrics::gauge::Gauge);

impl CacheAlive {
    pub(super) fn count(gauge: &prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        gauge.inc();
        Arc::new(Self(gauge.clone()))
    }
}

impl Drop for CacheAlive {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Jobs {
    /// How many jobs are held, cached or settled.
    pub fn count(&self) -> usize {
        self.cache.len() + self.settled.count()
    }
}

/// The controller's jobs while this replica leads (the admin server reads them), `None`
/// otherwise.
pub type HeldJobs = Arc<std::sync::RwLock<Option<Jobs>>>;

/// The list and watch of `api`, its settled jobs set aside in `settled` as stream number
/// `stream`.
pub(super) fn watch(
    api: Api<ImageJob>,
    settled: &SettledJobs,
    stream: usize,
) -> futures::stream::BoxStream<'static, watcher::Result<watcher::Event<ImageJob>>> {
    let settled = settled.clone();
    crate::list_watch::list_watch(api)
        .filter_map(move |item| {
            std::future::ready(match item {
                Ok(event) => settled.set_aside(stream, event).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
        .boxed()
}

/// Hash of what should wake a reconcile: spec changes and deletion. Status writes (ours) are
/// filtered out, so a write does not trigger another Temporal round-trip; so are finalizer
/// changes: the controller goes on from its own finalizer patch without waiting for it to come
/// back (a finalizer someone strips from a running job is put back at its next timed reconcile).
///
/// Finished jobs get none, so every change of theirs passes: the filter keeps an entry per
/// fingerprinted job (about 200 bytes: its name, namespace and uid copied), and a finished
/// job's reconcile calls nothing unless it is being deleted or its TTL ran out.
pub(super) fn trigger_fingerprint(job: &ImageJob) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if job.phase().is_terminal() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    job.metadata.generation.hash(&mut hasher);
    job.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// What the cache keeps of a job: what [`ImageJob::trim_for_cache`] keeps and, of a finished
/// job, only what its reconcile reads (metadata, phase, completion time, TTL, and whether it
/// searched: its cleanup then removes its image from the catalog), unless it is to be retried
/// or has a notification to deliver. The finished jobs
/// cached are those with a TTL or being deleted (the others are [settled](SettledJobs)), and no
/// write is ever made from a finished job's cached status.
pub(super) fn keep_for_reconcile(job: &mut ImageJob) {
    job.trim_for_cache();
    if job.has_work_after_finish() {
        // Its retry, or its notification's delivery, reads and records the whole status.
        return;
    }
    if let Some(status) = job.status.as_mut().filter(|s| s.phase.is_terminal()) {
        *status = ImageJobStatus {
            phase: status.phase,
            completion_time: status.completion_time.take(),
            ..Default::default()
        };
        job.spec = ImageJobSpec {
            ttl_seconds_after_finished: job.spec.ttl_seconds_after_finished,
            similarity_search: job.spec.similarity_search,
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status;
    use crate::crd::{FINALIZER, Phase};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use kube::ResourceExt;

    fn job(phase: Phase) -> ImageJob {
        let mut job = ImageJob::new(
            "shirt",
            ImageJobSpec {
                url: "https://example.com/shirt.jpg".into(),
                tags: vec!["summer".into()],
                ttl_seconds_after_finished: Some(60),
                similarity_search: true,
                ..Default::default()
            },
        );
        job.finalizers_mut().push(FINALIZER.into());
        job.status = Some(ImageJobStatus {
            phase,
            workflow_id: Some("image-processing-1".into()),
            image_id: Some("img-1".into()),
            completion_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        });
        job
    }

    #[test]
    fn a_finished_job_is_cached_with_what_its_reconcile_reads_only() {
        let mut cached = job(Phase::Completed);
        keep_for_reconcile(&mut cached);
        assert_eq!(cached.phase(), Phase::Completed);
        assert_eq!(cached.finalizers(), [FINALIZER]);
        assert_eq!(cached.spec.ttl_seconds_after_finished, Some(60));
        assert!(cached.spec.similarity_search, "its cleanup reads it");
        assert_eq!(cached.spec.url, "");
        assert!(cached.spec.tags.is_empty());
        let status = cached.status.as_ref().expect("status");
        assert_eq!(status.completion_time, Some(Time(Timestamp::UNIX_EPOCH)));
        assert_eq!((&status.workflow_id, &status.image_id), (&None, &None));
        assert_eq!(
            status::ttl_deadline(&cached),
            status::ttl_deadline(&job(Phase::Completed))
        );
    }

    #[test]
    fn a_finished_job_to_be_retried_is_cached_whole() {
        let mut retried = job(Phase::Failed);
        retried.spec.retry = Some(1);
        let mut cached = retried.clone();
        keep_for_reconcile(&mut cached);
        assert_eq!(
            (&cached.spec, &cached.status),
            (&retried.spec, &retried.status)
        );
    }

    #[test]
    fn a_running_job_is_cached_whole_and_fingerprinted() {
        let mut cached = job(Phase::Processing);
        keep_for_reconcile(&mut cached);
        let whole = job(Phase::Processing);
        assert_eq!((&cached.spec, &cached.status), (&whole.spec, &whole.status));
        assert!(trigger_fingerprint(&cached).is_some());
    }

    #[test]
    fn the_finalizer_patch_does_not_wake_a_job_but_an_edit_or_a_delete_does() {
        let mut created = job(Phase::Pending);
        created.metadata.finalizers = None;
        created.metadata.generation = Some(1);
        let mut claimed = created.clone();
        claimed.finalizers_mut().push(FINALIZER.into());
        assert_eq!(trigger_fingerprint(&created), trigger_fingerprint(&claimed));
        let mut edited = claimed.clone();
        edited.metadata.generation = Some(2);
        assert_ne!(trigger_fingerprint(&claimed), trigger_fingerprint(&edited));
        let mut deleting = claimed.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_ne!(
            trigger_fingerprint(&claimed),
            trigger_fingerprint(&deleting)
        );
    }

    #[test]
    fn finished_jobs_are_not_fingerprinted() {
        for phase in [Phase::Completed, Phase::Failed, Phase::Cancelled] {
            assert_eq!(trigger_fingerprint(&job(phase)), None);
        }
    }
}
