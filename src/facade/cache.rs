//! The facade's watch cache: a reflector over the facade namespace's ImageJobs, an index from
//! workflow id to job, and a change signal that wakes result waiters (no polling).

use super::{
    filter::JobFilter,
    in_flight::InFlight,
    list_index::{ListIndex, PageQuery, name_in},
};
use crate::crd::ImageJob;
use futures::{Stream, StreamExt};
use kube::{
    Api, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, Event},
    },
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// How many updates a slow subscriber may fall behind before it is told to reload.
const UPDATES_BUFFER: usize = 1024;

/// One change of the cached jobs, as pushed to the jobs page.
#[derive(Clone, Debug)]
pub enum JobUpdate {
    /// A job was created or changed.
    Applied(Arc<ImageJob>),
    /// The job behind this workflow id was deleted.
    Deleted(String),
    /// The watch relisted: subscribers should reload.
    Relisted,
}

/// Jobs of one namespace, by workflow id.
#[derive(Clone)]
pub struct JobCache {
    namespace: String,
    store: Store<ImageJob>,
    /// Job names by uid, the uid parsed (16 bytes instead of a 36-character string).
    names_by_uid: Arc<RwLock<HashMap<Uuid, String>>>,
    list_order: Arc<RwLock<ListIndex>>,
    in_flight: Arc<RwLock<InFlight>>,
    changes: watch::Sender<u64>,
    updates: broadcast::Sender<JobUpdate>,
    ready: Arc<AtomicBool>,
    deleted: Arc<RwLock<Tombstones>>,
    /// Per job, what its waiters (`/result`) are woken by: a change of that job only.
    job_waiters: Arc<Mutex<HashMap<Uuid, watch::Sender<u64>>>>,
}

/// One page of jobs, in list order.
pub struct Page {
    /// The jobs.
    pub jobs: Vec<Arc<ImageJob>>,
    /// The continue token of the next page, when one follows.
    pub next: Option<String>,
}

/// Uids of jobs this replica saw deleted, the most recent [`TOMBSTONES`] of them: a lookup for
/// one of them answers at once instead of waiting for a watch event that will not come.
#[derive(Default)]
struct Tombstones {
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

/// The indexes a relist builds before they replace the cache's.
#[derive(Default)]
struct Relisted {
    names: HashMap<Uuid, String>,
    order: ListIndex,
    in_flight: InFlight,
}

/// Jobs with waiter entries beyond which entries without a waiter left are swept.
const WAITER_SWEEP_AT: usize = 1_024;

/// How many deleted uids are remembered.
const TOMBSTONES: usize = 100_000;

impl Tombstones {
    fn insert(&mut self, uid: String) {
        if self.set.insert(uid.clone()) {
            self.order.push_back(uid);
        }
        while self.order.len() > TOMBSTONES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// A uid as the key of the name index; the apiserver's uids are UUIDs.
fn uid_key(uid: &str) -> Option<Uuid> {
    Uuid::parse_str(uid).ok()
}

impl JobCache {
    /// Starts watching `api` (namespaced); the returned future drives the watch and must be
    /// polled (spawned) for the cache to fill.
    pub fn start(api: Api<ImageJob>, namespace: String) -> (Self, impl Future<Output = ()> + Send) {
        let (store, writer) = reflector::store();
        let cache = Self::empty(namespace, store);
        let events = crate::list_watch::list_watch(api)
            .default_backoff()
            .modify(ImageJob::trim_for_cache)
            .reflect(writer);
        let driver = cache.clone().drive(events);
        (cache, driver)
    }

    fn empty(namespace: String, store: Store<ImageJob>) -> Self {
        Self {
            namespace,
            store,
            names_by_uid: Arc::default(),
            list_order: Arc::default(),
            in_flight: Arc::default(),
            changes: watch::channel(0).0,
            updates: broadcast::channel(UPDATES_BUFFER).0,
            ready: Arc::default(),
            deleted: Arc::default(),
            job_waiters: Arc::default(),
        }
    }

    async fn drive(self, events: impl Stream<Item = Result<Event<ImageJob>, watcher::Error>>) {
        let mut events = std::pin::pin!(events);
        let mut relisted: Option<Relisted> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(job)) => {
                    self.remember(&job);
                    self.wake_waiters_of(job.uid_key());
                    // Only pages listening need a copy.
                    if self.updates.receiver_count() > 0 {
                        let _ = self.updates.send(JobUpdate::Applied(Arc::new(job)));
                    }
                }
                Ok(Event::Delete(job)) => {
                    self.wake_waiters_of(job.uid_key());
                    if let Some(id) = job.workflow_id() {
                        let _ = self.updates.send(JobUpdate::Deleted(id));
                    }
                    if let Ok(mut order) = self.list_order.write() {
                        order.remove(&job.name_any());
                    }
                    if let (Some(uid), Ok(mut map)) = (job.uid(), self.names_by_uid.write()) {
                        if let Some(key) = uid_key(&uid) {
                            map.remove(&key);
                            if let Ok(mut in_flight) = self.in_flight.write() {
                                in_flight.forget(&key);
                            }
                        }
                        if let Ok(mut deleted) = self.deleted.write() {
                            deleted.insert(uid);
                        }
                    }
                }
                Ok(Event::Init) => relisted = Some(Default::default()),
                Ok(Event::InitApply(job)) => {
                    if let Some(relisted) = relisted.as_mut() {
                        relisted.order.upsert(&job);
                        relisted.in_flight.observe(&job);
                        if let Some(uid) = job.uid_key() {
                            relisted.names.insert(uid, job.name_any());
                        }
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(relisted) = relisted.take() {
                        if let Ok(mut map) = self.names_by_uid.write() {
                            *map = relisted.names;
                        }
                        if let Ok(mut map) = self.list_order.write() {
                            *map = relisted.order;
                        }
                        if let Ok(mut map) = self.in_flight.write() {
                            *map = relisted.in_flight;
                        }
                    }
                    self.ready.store(true, Ordering::Release);
                    let _ = self.updates.send(JobUpdate::Relisted);
                    self.wake_all_waiters();
                }
                Err(e) => tracing::warn!(error = %e, "ImageJob watch failed; retrying"),
            }
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// A receiver that changes when the job behind `workflow_id` changes (or the cache is
    /// rebuilt), and on nothing else: a waiter costs nothing while other jobs move.
    pub fn subscribe_job(&self, workflow_id: &str) -> watch::Receiver<u64> {
        let Some(uid) = crate::crd::workflow_uid(workflow_id) else {
            return watch::channel(0).1;
        };
        let mut waiters = self.job_waiters.lock().unwrap_or_else(|p| p.into_inner());
        if waiters.len() >= WAITER_SWEEP_AT {
            waiters.retain(|_, sender| sender.receiver_count() > 0);
        }
        waiters
            .entry(uid)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake_waiters_of(&self, uid: Option<Uuid>) {
        let Some(uid) = uid else { return };
        let mut waiters = self.job_waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = waiters.get(&uid) {
            if sender.receiver_count() == 0 {
                waiters.remove(&uid);
            } else {
                sender.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    fn wake_all_waiters(&self) {
        let mut waiters = self.job_waiters.lock().unwrap_or_else(|p| p.into_inner());
        waiters.retain(|_, sender| sender.receiver_count() > 0);
        for sender in waiters.values() {
            sender.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Indexes a job (also called right after the facade creates one, before its watch event).
    pub fn remember(&self, job: &ImageJob) {
        if let (Some(uid), Ok(mut map)) = (job.uid_key(), self.names_by_uid.write()) {
            map.insert(uid, job.name_any());
        }
        if let Ok(mut order) = self.list_order.write() {
            order.upsert(job);
        }
        if let Ok(mut in_flight) = self.in_flight.write() {
            in_flight.observe(job);
        }
    }

    /// How many jobs `client` created that have not finished (see [`InFlight`]).
    pub fn in_flight(&self, client: &str) -> usize {
        self.in_flight
            .read()
            .map_or(0, |counts| counts.count(client))
    }

    /// The name of the job behind a workflow id, if it is one of ours.
    pub fn name_of(&self, workflow_id: &str) -> Option<String> {
        let uid = crate::crd::workflow_uid(workflow_id)?;
        self.names_by_uid.read().ok()?.get(&uid).cloned()
    }

    /// The cached job behind a workflow id (never another job under the same name).
    pub fn get(&self, workflow_id: &str) -> Option<Arc<ImageJob>> {
        let name = self.name_of(workflow_id)?;
        self.store
            .get(&ObjectRef::new(&name).within(&self.namespace))
            .filter(|job| job.runs(workflow_id))
    }

    /// Whether this replica saw the job behind a workflow id deleted.
    pub fn was_deleted(&self, workflow_id: &str) -> bool {
        crate::crd::workflow_uid(workflow_id).is_some_and(|uid| {
            self.deleted
                .read()
                .is_ok_and(|d| d.set.contains(&uid.hyphenated().to_string()))
        })
    }

    /// One page of cached jobs in list order (see [`ListIndex::page`]), and where the next one
    /// starts. The next page is decided from the index, before jobs it names that are not in
    /// the store yet (just created here, their watch event still on its way) are left out, so
    /// a short page still says that more follow.
    pub fn page(&self, query: &PageQuery, filter: &JobFilter) -> Page {
        let kept = |key: &str| {
            !filter.needs_job()
                || self
                    .store
                    .get(&ObjectRef::new(name_in(key)).within(&self.namespace))
                    .is_some_and(|job| filter.matches(&job))
        };
        let mut keys = self
            .list_order
            .read()
            .map(|order| order.page(query, kept))
            .unwrap_or_default();
        let next =
            (query.limit > 0 && keys.len() > query.limit).then(|| keys[query.limit - 1].clone());
        keys.truncate(query.limit);
        let jobs = keys
            .iter()
            .filter_map(|key| {
                self.store
                    .get(&ObjectRef::new(name_in(key)).within(&self.namespace))
            })
            .collect();
        Page { jobs, next }
    }

    /// Whether the first list has been received.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Every change of the cached jobs from now on.
    pub fn updates(&self) -> broadcast::Receiver<JobUpdate> {
        self.updates.subscribe()
    }

    /// A receiver that changes on every watch event.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ImageJobSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::time::Duration;

    fn job(name: &str, second: i64) -> ImageJob {
        let mut job = ImageJob::new(name, ImageJobSpec::default());
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some(Uuid::new_v4().to_string());
        job.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
        ));
        job
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_its_own_job_only() {
        let (store, _writer) = reflector::store();
        let cache = JobCache::empty("ns".into(), store);
        let (mine, other) = (job("mine", 1), job("other", 2));
        let id = |j: &ImageJob| j.workflow_id().unwrap();
        let mut waiting = cache.subscribe_job(&id(&mine));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let driven = tokio::spawn(cache.clone().drive(rx));
        tx.unbounded_send(Ok(Event::Apply(other.clone()))).unwrap();
        tx.unbounded_send(Ok(Event::Apply(other))).unwrap();
        // The cache saw both (its own change counter moved) before this waiter is looked at.
        let mut all = cache.subscribe();
        tokio::time::timeout(Duration::from_secs(5), async {
            while *all.borrow_and_update() < 2 {
                all.changed().await.unwrap();
            }
        })
        .await
        .expect("the other job's events were driven");
        assert!(
            !waiting.has_changed().unwrap(),
            "another job's change wakes no one"
        );
        tx.unbounded_send(Ok(Event::Apply(mine))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting.changed())
            .await
            .expect("woken by its own job")
            .unwrap();
        drop(tx);
        driven.await.unwrap();
    }

    #[test]
    fn pages_go_on_past_a_job_indexed_before_its_watch_event() {
        let (store, mut writer) = reflector::store();
        let cache = JobCache::empty("ns".into(), store);
        let (old, created_here, newest) = (job("old", 1), job("created-here", 2), job("newest", 3));
        for stored in [&old, &newest] {
            writer.apply_watcher_event(&Event::Apply(stored.clone()));
        }
        for indexed in [&old, &created_here, &newest] {
            cache.remember(indexed);
        }
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..5 {
            let query = PageQuery {
                status: None,
                after: after.as_deref(),
                newest_first: true,
                limit: 1,
            };
            let page = cache.page(&query, &JobFilter::default());
            seen.extend(page.jobs.iter().map(|j| j.name_any()));
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        assert_eq!(
            seen,
            ["newest", "old"],
            "the job not stored yet is skipped, not the rest"
        );
    }
}
