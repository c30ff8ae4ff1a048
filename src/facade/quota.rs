//! Per-client limits on creating jobs, so one token cannot fill the namespace, the caches of
//! every replica and the similarity API's quota: a rate (a token bucket per client, on this
//! replica) and a cap on the client's jobs in flight (counted from the watch cache, so every
//! replica sees the jobs the others created). Beyond either, `429` with `Retry-After`.

use super::error::ApiError;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Label on each job the facade creates: which client (token) created it, as the first 16 hex
/// digits of the token's SHA-256 (the token itself is never stored).
pub const CLIENT_LABEL: &str = "imagejob.dev/client";
/// The client of every request when authentication is off.
pub const ANONYMOUS_CLIENT: &str = "anonymous";
/// Default creates per second per client, on each replica.
pub const DEFAULT_CREATE_RATE: f64 = 50.0;
/// Default creates a client may make at once before the rate applies.
pub const DEFAULT_CREATE_BURST: u32 = 500;
/// Default jobs in flight (not finished) per client.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// `Retry-After` of a client at its cap of jobs in flight: a guess at how soon one finishes.
const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Clients with a bucket beyond which buckets refilled to the brim are swept.
const BUCKET_SWEEP_AT: usize = 10_000;

/// How much one client may create.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuotaSettings {
    /// Creates per second (0: no rate limit).
    pub per_second: f64,
    /// Creates at once before the rate applies.
    pub burst: u32,
    /// Jobs not finished yet (0: no cap).
    pub max_in_flight: usize,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_CREATE_RATE,
            burst: DEFAULT_CREATE_BURST,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The create limits of one replica.
pub struct CreateQuota {
    settings: QuotaSettings,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A client's token bucket: `tokens` creates left at `at`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CreateQuota {
    /// Limits as `settings` say.
    pub fn new(settings: QuotaSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::default(),
        }
    }

    /// Takes one create for `client`, who has `in_flight` jobs not finished: refused with 429
    /// and how long to wait when the client is at its cap or past its rate.
    pub fn admit(&self, client: &str, in_flight: usize) -> Result<(), ApiError> {
        self.admit_at(client, in_flight, Instant::now())
    }

    fn admit_at(&self, client: &str, in_flight: usize, now: Instant) -> Result<(), ApiError> {
        let QuotaSettings {
            per_second,
            burst,
            max_in_flight,
        } = self.settings;
        if max_in_flight > 0 && in_flight >= max_in_flight {
            return Err(ApiError::TooManyJobs {
                limit: max_in_flight,
                retry_after: IN_FLIGHT_RETRY_AFTER,
            });
        }
        if per_second <= 0.0 {
            return Ok(());
        }
        let full = f64::from(burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= BUCKET_SWEEP_AT {
            buckets.retain(|_, b| b.refilled(now, per_second, full) < full);
        }
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, per_second, full);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / per_second);
        Err(ApiError::RateLimited { retry_after: wait })
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, per_second: f64, full: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * per_second).min(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_second: f64, burst: u32, max_in_flight: usize) -> CreateQuota {
        CreateQuota::new(QuotaSettings {
            per_second,
            burst,
            max_in_flight,
        })
    }

    fn retry_after(result: Result<(), ApiError>) -> Duration {
        match result {
            Err(ApiError::RateLimited { retry_after }) => retry_after,
            other => panic!("expected a rate limit, got {other:?}"),
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let quota = quota(2.0, 3, 0);
        let start = Instant::now();
        for _ in 0..3 {
            quota.admit_at("a", 0, start).unwrap();
        }
        let wait = retry_after(quota.admit_at("a", 0, start));
        assert_eq!(wait, Duration::from_millis(500), "one create every 0.5 s");
        quota
            .admit_at("b", 0, start)
            .expect("another client has its own bucket");
        let later = start + Duration::from_millis(500);
        quota.admit_at("a", 0, later).expect("refilled by one");
        retry_after(quota.admit_at("a", 0, later));
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            quota.admit_at("a", 0, much_later).unwrap();
        }
        retry_after(quota.admit_at("a", 0, much_later));
    }

    #[test]
    fn a_client_at_its_cap_of_jobs_in_flight_is_refused_whatever_its_rate() {
        let quota = quota(0.0, 0, 10);
        quota.admit("a", 9).unwrap();
        match quota.admit("a", 10) {
            Err(ApiError::TooManyJobs { limit, retry_after }) => {
                assert_eq!(limit, 10);
                assert!(retry_after > Duration::ZERO);
            }
            other => panic!("expected the cap, got {other:?}"),
        }
        let unlimited = quota_unlimited();
        unlimited.admit("a", 1_000_000).unwrap();
    }

    fn quota_unlimited() -> CreateQuota {
        quota(0.0, 0, 0)
    }

    #[test]
    fn buckets_of_idle_clients_are_swept() {
        let quota = quota(1000.0, 1, 0);
        let start = Instant::now();
        for i in 0..BUCKET_SWEEP_AT {
            quota.admit_at(&format!("c{i}"), 0, start).unwrap();
        }
        quota
            .admit_at("late", 0, start + Duration::from_secs(1))
            .unwrap();
        let held = quota.buckets.lock().unwrap().len();
        assert_eq!(held, 1, "only the newest bucket is not full");
    }
}
