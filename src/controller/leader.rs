//! Leader election over a `coordination.k8s.io/v1` Lease: only the holder reconciles. The
//! decision is a pure function of the Lease and the clock; the write uses the Lease's
//! resourceVersion, so two candidates cannot both win.

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use std::time::Duration;
use tracing::{info, warn};

/// Which Lease and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// Our identity (pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

/// What to do with the Lease as it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// Decides from the Lease's spec, the time and our identity.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match renewed.and_then(|r| r.checked_add(duration).ok()) {
                Some(expiry) if expiry > now => Decision::Wait,
                _ => Decision::Acquire,
            }
        }
    }
}

/// Acquires and renews one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    /// An elector for the configured Lease.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// One round: returns whether we hold the Lease afterwards.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.settings.name).await?;
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.settings.identity,
            now,
        );
        if decision == Decision::Wait {
            return Ok(false);
        }
        let mut spec = existing
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        if decision == Decision::Acquire {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(existing.is_some()));
        }
        spec.holder_identity = Some(self.settings.identity.clone());
        spec.lease_duration_seconds =
            Some(i32::try_from(self.settings.duration.as_secs()).unwrap_or(15));
        spec.renew_time = Some(MicroTime(now));
        let result = match existing {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
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
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote first (409): not ours this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until we hold the Lease.
    pub async fn acquire(&self) {
        let retry = self.settings.duration / 5;
        loop {
            match self.try_lead().await {
                Ok(true) => {
                    info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election round failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the Lease until a renewal fails for longer than the lease lasts; then returns
    /// (the caller must stop reconciling: another replica may lead now).
    pub async fn hold(&self) {
        let every = self.settings.duration / 3;
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match self.try_lead().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.settings.name, "leadership lost");
                    return;
                }
                Err(e) => warn!(error = %e, "lease renewal failed"),
            }
            if last_renewal.elapsed() >= self.settings.duration {
                warn!(lease = %self.settings.name, "lease not renewed in time; leadership lost");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(decide(None, "me", now), Decision::Acquire);
        assert_eq!(decide(Some(&spec("me", 990)), "me", now), Decision::Renew);
        assert_eq!(decide(Some(&spec("other", 990)), "me", now), Decision::Wait);
        assert_eq!(
            decide(Some(&spec("other", 980)), "me", now),
            Decision::Acquire
        );
        assert_eq!(decide(Some(&spec("", 999)), "me", now), Decision::Acquire);
    }
}
