//! Claiming a new job: the controller's finalizer is added, and the reconcile goes on with the
//! object the patch returned.
//!
//! kube's finalizer helper adds the finalizer itself and then waits for the watch to bring the
//! patched job back before applying it: one more watch delivery and reconcile before every
//! workflow start. The patch's answer is the job as it now is, so nothing is gained by waiting;
//! the helper then finds its finalizer and applies at once, and the finalizer still lands before
//! the workflow can exist.

use super::error::Result;
use crate::crd::{FINALIZER, ImageJob};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use std::sync::Arc;

/// Whether `job` still needs the finalizer before anything is started for it.
fn needs_claim(job: &ImageJob) -> bool {
    job.metadata.deletion_timestamp.is_none() && !job.finalizers().iter().any(|f| f == FINALIZER)
}

/// Claims a job at most this many times: its finalizers changed under each (never in practice
/// more than once: the change is our own claim, landed since the job was read).
const CLAIM_ATTEMPTS: usize = 3;

/// `job` with the finalizer: as it is when it has it (or is being deleted), else as the patch
/// adding it returned it. A job whose finalizers changed since it was read (the patch's test
/// fails, 422: under a burst, a reconcile may start from the cache's copy just before our own
/// claim reached it) is read again and claimed from what it is now.
pub(super) async fn claimed(api: &Api<ImageJob>, job: Arc<ImageJob>) -> Result<Arc<ImageJob>> {
    let mut job = job;
    for _ in 1..CLAIM_ATTEMPTS {
        match claim(api, &job).await {
            Err(kube::Error::Api(e)) if e.code == 422 => {
                job = Arc::new(api.get(&job.name_any()).await?);
            }
            claimed => return Ok(claimed?),
        }
    }
    Ok(claim(api, &job).await?)
}

/// One claim of `job` as it was read.
async fn claim(api: &Api<ImageJob>, job: &Arc<ImageJob>) -> Result<Arc<ImageJob>, kube::Error> {
    if !needs_claim(job) {
        return Ok(job.clone());
    }
    let ops = serde_json::from_value(add_finalizer_ops(job.finalizers()))
        .map_err(kube::Error::SerdeError)?;
    let patch: Patch<ImageJob> = Patch::Json(ops);
    let claimed = api
        .patch(&job.name_any(), &PatchParams::default(), &patch)
        .await?;
    Ok(Arc::new(claimed))
}

/// The JSON patch adding the finalizer, which fails (and is retried) rather than duplicating
/// it when the job's finalizers changed since `seen` was read, as kube's helper does.
fn add_finalizer_ops(seen: &[String]) -> Value {
    if seen.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": seen},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(finalizers: &[&str], deleting: bool) -> ImageJob {
        let mut job = ImageJob::new("j", Default::default());
        job.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        if deleting {
            job.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        job
    }

    #[test]
    fn only_a_live_job_without_the_finalizer_is_claimed() {
        assert!(needs_claim(&job(&[], false)));
        assert!(needs_claim(&job(&["other.io/keep"], false)));
        assert!(!needs_claim(&job(&[FINALIZER], false)));
        // A job being deleted may not get new finalizers; there is nothing to start for it.
        assert!(!needs_claim(&job(&[], true)));
    }

    #[test]
    fn the_patch_tests_the_finalizers_it_saw_and_appends_to_them() {
        let first = add_finalizer_ops(&[]);
        assert_eq!(first[0]["value"], Value::Null);
        assert_eq!(first[1]["path"], "/metadata/finalizers");
        assert_eq!(first[1]["value"], json!([FINALIZER]));
        let appended = add_finalizer_ops(&["other.io/keep".to_owned()]);
        assert_eq!(appended[0]["value"], json!(["other.io/keep"]));
        assert_eq!(appended[1]["path"], "/metadata/finalizers/-");
        assert_eq!(appended[1]["value"], FINALIZER);
        // Both parse as the JSON patch the apiserver is sent.
        for ops in [first, appended] {
            let patch: Patch<()> = Patch::Json(serde_json::from_value(ops).unwrap());
            assert!(matches!(patch, Patch::Json(p) if p.0.len() == 2));
        }
    }
}
