//! Leader election over a `coordination.k8s.io/v1` Lease, with client-go's semantics:
//!
//! - a candidate judges another holder's lease expired by *its own* monotonic clock: the record
//!   (holder, renew time, transitions) must stay unchanged for a whole lease duration since this
//!   process last saw it change; the holder's `renewTime` is never compared with our clock;
//! - the holder renews every retry period and may act only until `renew deadline` (shorter than
//!   the lease duration) after the start of its last successful renewal: that deadline is kept
//!   in a [`WriteFence`], which every apiserver write checks synchronously before it is sent, so a
//!   paused or partitioned leader stops writing the moment the deadline passes, whatever its tasks
//!   were doing;
//! - every Lease call is bounded by a timeout; writes carry the Lease's resourceVersion, so two
//!   candidates cannot both win;
//! - on graceful shutdown the holder releases the Lease (empty holder, 1 s duration) and
//!   candidates watching it take over at once.

use crate::kube_client::WriteFence;
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use std::{pin::Pin, time::Duration};
use tokio::time::Instant;
use tracing::{info, warn};

/// Which Lease, who we are, and the timing (client-go's names and defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// Our identity (pod name).
    pub identity: String,
    /// How long candidates wait, from the last change they saw, before taking the Lease over.
    pub lease_duration: Duration,
    /// How long the holder may act after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// Interval between acquire or renew attempts.
    pub retry_period: Duration,
}

/// Why the timing cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    /// The holder must stop acting before candidates may take over.
    #[error("the renew deadline ({0:?}) must be shorter than the lease duration ({1:?})")]
    RenewDeadlineTooLong(Duration, Duration),
    /// A renewal must be retried at least once before the deadline.
    #[error("the retry period ({0:?}) must be shorter than the renew deadline ({1:?})")]
    RetryPeriodTooLong(Duration, Duration),
}

impl LeaseSettings {
    /// Checks client-go's invariants: retry period < renew deadline < lease duration.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.renew_deadline >= self.lease_duration {
            return Err(TimingError::RenewDeadlineTooLong(
                self.renew_deadline,
                self.lease_duration,
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(TimingError::RetryPeriodTooLong(
                self.retry_period,
                self.renew_deadline,
            ));
        }
        Ok(())
    }
}

/// The part of a Lease record whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
    duration: Duration,
}

impl Record {
    fn of(spec: &LeaseSpec, fallback: Duration) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(fallback, Duration::from_secs),
        }
    }
}

/// What to do with the Lease as it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free, released, or unchanged for a whole lease duration since we saw it change: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// Decides from the record, our identity and how long ago (by our clock) we saw it change.
fn decide(record: Option<&Record>, me: &str, unchanged_for: Duration) -> Decision {
    match record {
        None => Decision::Acquire,
        Some(r) => match r.holder.as_deref() {
            Some(holder) if holder == me => Decision::Renew,
            None => Decision::Acquire,
            Some(_) if unchanged_for >= r.duration => Decision::Acquire,
            Some(_) => Decision::Wait,
        },
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The apiserver refused or failed the call.
    #[error("Lease call failed: {0}")]
    Kube(#[from] kube::Error),
    /// The call did not answer in time.
    #[error("Lease call timed out after {0:?}")]
    Timeout(Duration),
}

/// Acquires, renews and releases one Lease; opens and closes the [`WriteFence`].
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    fence: WriteFence,
    /// The last record seen and when (our clock) it last changed.
    observed: Option<(Record, Instant)>,
}

impl LeaderElector {
    /// An elector for the configured Lease. `client` must not be fenced for Leases (the
    /// fence exempts `coordination.k8s.io`).
    pub fn new(client: Client, settings: LeaseSettings, fence: WriteFence) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            fence,
            observed: None,
        }
    }

    async fn bounded<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LeaseError::Timeout(limit)),
        }
    }

    fn observe(&mut self, record: Option<Record>, now: Instant) -> Duration {
        match (record, &self.observed) {
            (Some(r), Some((seen, since))) if *seen == r => now.saturating_duration_since(*since),
            (Some(r), _) => {
                self.observed = Some((r, now));
                Duration::ZERO
            }
            (None, _) => {
                self.observed = None;
                Duration::ZERO
            }
        }
    }

    /// One round, every call bounded by `limit`: whether we hold the Lease afterwards. On
    /// success the fence opens until the round's start plus the renew deadline.
    pub async fn try_acquire_or_renew(&mut self, limit: Duration) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let existing = self
            .bounded(limit, self.api.get_opt(&self.settings.name))
            .await?;
        let record = existing
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .map(|s| Record::of(s, self.settings.lease_duration));
        // The record is dated when the answer arrived, as client-go does: the holder may have
        // renewed just before the apiserver read it, however long ago the request was sent.
        let unchanged_for = self.observe(record.clone(), Instant::now());
        let decision = decide(record.as_ref(), &self.settings.identity, unchanged_for);
        if decision == Decision::Wait {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        let mut spec = existing
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        if decision == Decision::Acquire {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(existing.is_some()));
        }
        spec.holder_identity = Some(self.settings.identity.clone());
        spec.lease_duration_seconds = Some(seconds(self.settings.lease_duration));
        spec.renew_time = Some(now);
        let remaining = limit.saturating_sub(started.elapsed());
        let written = match existing {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.bounded(
                    remaining,
                    self.api
                        .replace(&self.settings.name, &PostParams::default(), &lease),
                )
                .await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.bounded(remaining, self.api.create(&PostParams::default(), &lease))
                    .await
            }
        };
        match written {
            Ok(lease) => {
                let record = lease
                    .spec
                    .as_ref()
                    .map(|s| Record::of(s, self.settings.lease_duration));
                self.observe(record, Instant::now());
                self.fence
                    .open_until(started + self.settings.renew_deadline);
                Ok(true)
            }
            // Someone else wrote first (409): not ours this round.
            Err(LeaseError::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Changes of the Lease, so a candidate tries again the moment it is released.
    fn changes(&self) -> Pin<Box<dyn Stream<Item = ()> + Send>> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.settings.name));
        watcher(self.api.clone(), config)
            .default_backoff()
            .applied_objects()
            .map(|_| ())
            .boxed()
    }

    /// Waits until we hold the Lease: a round every retry period, and at once on a change.
    pub async fn acquire(&mut self) {
        let mut changes = self.changes();
        loop {
            match self
                .try_acquire_or_renew(self.settings.renew_deadline)
                .await
            {
                Ok(true) => {
                    info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election round failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry_period) => {}
                _ = changes.next() => {}
            }
        }
    }

    /// Renews every retry period while we lead; returns (with the fence closed) once a renewal
    /// did not succeed before the renew deadline, or the Lease went to someone else.
    pub async fn hold(&mut self) {
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let left = self.fence.remaining();
            if left.is_zero() {
                break;
            }
            match self.try_acquire_or_renew(left).await {
                Ok(true) => continue,
                Ok(false) => {
                    warn!(lease = %self.settings.name, "the Lease is held by another replica");
                    break;
                }
                Err(e) => warn!(error = %e, "lease renewal failed"),
            }
        }
        self.fence.close();
        warn!(lease = %self.settings.name, "leadership lost: every write stops now");
    }

    /// Gives the Lease up (graceful shutdown), so a candidate takes over without waiting a
    /// lease duration. Only while we still hold it.
    pub async fn release(&mut self) {
        let left = self.fence.remaining();
        self.fence.close();
        if left.is_zero() {
            return;
        }
        let Ok(Some(mut lease)) = self
            .bounded(left, self.api.get_opt(&self.settings.name))
            .await
        else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        let params = PostParams::default();
        let replace = self.api.replace(&self.settings.name, &params, &lease);
        match self.bounded(left, replace).await {
            Ok(_) => info!(lease = %self.settings.name, "Lease released"),
            Err(e) => warn!(error = %e, "Lease not released; candidates wait for it to expire"),
        }
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A Lease API stand-in: one Lease held by `old`, whose GETs are answered after `get_delay`
    /// (by the call's index) with the Lease as it is when the answer leaves; watches never
    /// answer. Every successful PUT is recorded with the (paused) time it arrived.
    struct LeaseApi {
        lease: Mutex<Lease>,
        gets: Mutex<usize>,
        writes: Mutex<Vec<(Instant, Option<String>)>>,
    }

    /// The resource version after `lease`'s.
    fn next_version(lease: &Lease) -> Option<String> {
        let version: u64 = lease.metadata.resource_version.as_ref()?.parse().ok()?;
        Some((version + 1).to_string())
    }

    impl LeaseApi {
        fn held_by(holder: &str) -> Arc<Self> {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some("lease".into()),
                    namespace: Some("ns".into()),
                    resource_version: Some("1".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(15),
                    renew_time: Some(MicroTime(Timestamp::from_second(1_000).unwrap())),
                    ..Default::default()
                }),
            };
            Arc::new(Self {
                lease: Mutex::new(lease),
                gets: Mutex::new(0),
                writes: Mutex::new(Vec::new()),
            })
        }

        /// The holder renews: a new renew time and resource version.
        fn renew(&self) {
            let mut lease = self.lease.lock().unwrap();
            lease.metadata.resource_version = next_version(&lease);
            let spec = lease.spec.as_mut().unwrap();
            spec.renew_time = Some(MicroTime(Timestamp::from_second(2_000).unwrap()));
        }

        fn client(self: &Arc<Self>, get_delay: fn(usize, &LeaseApi) -> Duration) -> Client {
            let api = self.clone();
            let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
                let api = api.clone();
                async move {
                    let query = request.uri().query().unwrap_or_default().to_owned();
                    let ok = |body: Vec<u8>| {
                        http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(kube::client::Body::from(body))
                    };
                    if query.contains("watch=true") {
                        return std::future::pending().await;
                    }
                    if request.method() == http::Method::GET && query.contains("fieldSelector") {
                        let list = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"LeaseList","metadata":{"resourceVersion":"1"},"items":[]}"#;
                        return ok(list.as_bytes().to_vec());
                    }
                    if request.method() == http::Method::GET {
                        let n = {
                            let mut gets = api.gets.lock().unwrap();
                            *gets += 1;
                            *gets - 1
                        };
                        tokio::time::sleep(get_delay(n, &api)).await;
                        let lease = api.lease.lock().unwrap().clone();
                        return ok(serde_json::to_vec(&lease).unwrap());
                    }
                    // PUT: a replace, refused on a stale resource version.
                    let body = request.into_body().collect_bytes().await.unwrap();
                    let mut sent: Lease = serde_json::from_slice(&body).unwrap();
                    let mut lease = api.lease.lock().unwrap();
                    if sent.metadata.resource_version != lease.metadata.resource_version {
                        let conflict = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Conflict","code":409}"#;
                        return http::Response::builder()
                            .status(409)
                            .header("content-type", "application/json")
                            .body(kube::client::Body::from(conflict.as_bytes().to_vec()));
                    }
                    sent.metadata.resource_version = next_version(&lease);
                    *lease = sent.clone();
                    let holder = sent.spec.as_ref().and_then(|s| s.holder_identity.clone());
                    api.writes.lock().unwrap().push((Instant::now(), holder));
                    ok(serde_json::to_vec(&sent).unwrap())
                }
            });
            Client::new(service, "ns")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_does_not_let_a_candidate_in_before_the_old_holders_fence_closed() {
        let api = LeaseApi::held_by("old");
        let start = Instant::now();
        // The first GET takes 8 s; the holder renews just before the apiserver reads the Lease
        // for it (its renewal round started 7.9 s in, so its fence stays open until 17.9 s),
        // then stops renewing. Later GETs are fast.
        let client = api.client(|n, api| {
            if n == 0 {
                api.renew();
                Duration::from_secs(8)
            } else {
                Duration::ZERO
            }
        });
        let old_fence_closes = start + Duration::from_millis(7_900) + Duration::from_secs(10);
        let settings = LeaseSettings {
            name: "lease".into(),
            namespace: "ns".into(),
            identity: "candidate".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let fence = WriteFence::closed();
        let mut elector = LeaderElector::new(client, settings, fence.clone());
        tokio::time::timeout(Duration::from_secs(60), elector.acquire())
            .await
            .expect("the candidate acquires once the Lease stayed unchanged long enough");
        let writes = api.writes.lock().unwrap().clone();
        let [(taken_at, holder)] = writes.as_slice() else {
            panic!("one takeover write expected: {writes:?}");
        };
        assert_eq!(holder.as_deref(), Some("candidate"));
        assert!(
            *taken_at >= old_fence_closes,
            "taken over {:?} after the start, while the old holder's fence was open until {:?}",
            *taken_at - start,
            old_fence_closes - start
        );
        assert!(fence.is_open());
    }

    fn record(holder: &str) -> Record {
        Record {
            holder: Some(holder.into()).filter(|h: &String| !h.is_empty()),
            renew_time: Some(Timestamp::from_second(1_000).unwrap()),
            transitions: Some(0),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn expiry_is_judged_by_how_long_we_saw_the_record_unchanged() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, "me", s(0)), Decision::Acquire);
        assert_eq!(decide(Some(&record("me")), "me", s(0)), Decision::Renew);
        assert_eq!(decide(Some(&record("other")), "me", s(14)), Decision::Wait);
        assert_eq!(
            decide(Some(&record("other")), "me", s(15)),
            Decision::Acquire
        );
        assert_eq!(decide(Some(&record("")), "me", s(0)), Decision::Acquire);
    }

    #[test]
    fn the_holders_renew_time_is_not_compared_with_our_clock() {
        // A renewTime far in the past (a skewed holder clock) does not make the lease look
        // expired: only our own observation time counts.
        let mut skewed = record("other");
        skewed.renew_time = Some(Timestamp::from_second(1).unwrap());
        assert_eq!(
            decide(Some(&skewed), "me", Duration::from_secs(1)),
            Decision::Wait
        );
    }

    #[test]
    fn timing_follows_client_go_invariants() {
        let settings = |lease, renew, retry| LeaseSettings {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        };
        assert_eq!(settings(15, 10, 2).validate(), Ok(()));
        assert!(matches!(
            settings(10, 10, 2).validate(),
            Err(TimingError::RenewDeadlineTooLong(..))
        ));
        assert!(matches!(
            settings(15, 10, 10).validate(),
            Err(TimingError::RetryPeriodTooLong(..))
        ));
    }
}
