//! Jobs not finished yet, counted by the client that created them (their
//! [`CLIENT_LABEL`](super::quota::CLIENT_LABEL)), kept up to date by the watch cache so a
//! client's cap is checked without a scan.

use super::quota::CLIENT_LABEL;
use crate::crd::ImageJob;
use kube::ResourceExt;
use std::{collections::HashMap, sync::Arc};
use uuid::Uuid;

/// Each unfinished job's client, and how many each client has.
#[derive(Default)]
pub struct InFlight {
    clients: HashMap<Uuid, Arc<str>>,
    counts: HashMap<Arc<str>, usize>,
}

impl InFlight {
    /// Counts `job` if it is labelled with a client and not finished, uncounts it otherwise.
    pub fn observe(&mut self, job: &ImageJob) {
        let Some(uid) = job.uid().and_then(|u| Uuid::parse_str(&u).ok()) else {
            return;
        };
        let client = job.labels().get(CLIENT_LABEL);
        match client {
            Some(client) if !job.phase().is_terminal() => {
                if self.clients.get(&uid).is_some_and(|c| **c == **client) {
                    return;
                }
                self.forget(&uid);
                let client: Arc<str> = Arc::from(client.as_str());
                *self.counts.entry(client.clone()).or_default() += 1;
                self.clients.insert(uid, client);
            }
            _ => self.forget(&uid),
        }
    }

    /// Uncounts the job with this uid (deleted, or finished).
    pub fn forget(&mut self, uid: &Uuid) {
        let Some(client) = self.clients.remove(uid) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&client);
            }
        }
    }

    /// How many unfinished jobs `client` has.
    pub fn count(&self, client: &str) -> usize {
        self.counts.get(client).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageJobSpec, ImageJobStatus, Phase};

    fn job(client: Option<&str>, phase: Phase, uid: &Uuid) -> ImageJob {
        let mut job = ImageJob::new("j", ImageJobSpec::default());
        job.metadata.uid = Some(uid.to_string());
        if let Some(client) = client {
            job.labels_mut().insert(CLIENT_LABEL.into(), client.into());
        }
        job.status = Some(ImageJobStatus {
            phase,
            ..Default::default()
        });
        job
    }

    #[test]
    fn jobs_count_while_unfinished_once_each_and_by_their_client() {
        let mut in_flight = InFlight::default();
        let (a1, a2, b1, unlabelled) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        in_flight.observe(&job(Some("a"), Phase::Pending, &a1));
        in_flight.observe(&job(Some("a"), Phase::Processing, &a1));
        in_flight.observe(&job(Some("a"), Phase::Pending, &a2));
        in_flight.observe(&job(Some("b"), Phase::Processing, &b1));
        in_flight.observe(&job(None, Phase::Processing, &unlabelled));
        assert_eq!((in_flight.count("a"), in_flight.count("b")), (2, 1));
        in_flight.observe(&job(Some("a"), Phase::Completed, &a1));
        assert_eq!(in_flight.count("a"), 1, "a finished job no longer counts");
        in_flight.forget(&a2);
        in_flight.forget(&a2);
        assert_eq!(in_flight.count("a"), 0, "a deleted job once");
        assert_eq!(in_flight.count("b"), 1);
        assert!(!in_flight.counts.contains_key("a"), "no empty entries kept");
    }
}
