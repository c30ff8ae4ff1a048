//! The CloudEvent of a job's end, in CloudEvents 1.0 structured JSON.

use crate::crd::{ImageJob, ImageJobStatus, Phase};
use kube::ResourceExt;
use serde_json::{Value, json};

/// Prefix of the events' `type`: `dev.imagejob.job.completed`, `.failed` or `.cancelled`.
pub const EVENT_TYPE_PREFIX: &str = "dev.imagejob.job.";

/// The CloudEvent announcing that `job` ended with `status` (its final status), with the id
/// `event_id` (the same on every delivery attempt). `data` holds the job's identity, the seed's
/// state words and the similarity summary.
pub fn completion_event(job: &ImageJob, status: &ImageJobStatus, event_id: &str) -> Value {
    let outcome = match status.phase {
        Phase::Completed => "completed",
        Phase::Cancelled => "cancelled",
        Phase::Failed | Phase::Pending | Phase::Processing => "failed",
    };
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let similarity = status.similarity.as_deref().map(|s| {
        json!({
            "summary": s.summary,
            "skipped_reason": s.skipped_reason,
            "total_matches": s.total_matches,
            "top_matches": s.top_matches.iter().map(|m| json!({
                "name": m.name, "brand": m.brand, "url": m.url, "score": m.score,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "specversion": "1.0",
        "id": event_id,
        "type": format!("{EVENT_TYPE_PREFIX}{outcome}"),
        "source": format!("/apis/imagejob.dev/v1alpha1/namespaces/{namespace}/imagejobs/{name}"),
        "subject": status.workflow_id,
        "time": status.completion_time.as_ref().map(|t| t.0.to_string()),
        "datacontenttype": "application/json",
        "data": {
            "workflow_id": status.workflow_id,
            "namespace": namespace,
            "name": name,
            "uid": job.uid(),
            "attempt": status.attempt(),
            "state": {
                "image_id": status.image_id,
                "status": status.phase.processing_status(),
                "metadata_stored": status.metadata_stored,
                "similarity_search_completed": status.similarity_search_completed,
                "error": status.error,
            },
            "similarity": similarity,
            "started_at": status.start_time.as_ref().map(|t| t.0.to_string()),
            "finished_at": status.completion_time.as_ref().map(|t| t.0.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageJobSpec, SimilaritySummary};

    #[test]
    fn the_event_says_how_the_job_ended_in_cloudevents_words() {
        let mut job = ImageJob::new("shirt", ImageJobSpec::default());
        job.metadata.namespace = Some("shop".into());
        let status = ImageJobStatus {
            phase: Phase::Completed,
            workflow_id: Some("image-processing-1".into()),
            image_id: Some("img-1".into()),
            metadata_stored: true,
            similarity: Some(Box::new(SimilaritySummary {
                summary: "2 matches, best 0.93".into(),
                total_matches: 2,
                ..Default::default()
            })),
            ..Default::default()
        };
        let event = completion_event(&job, &status, "uid-1.1");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], "uid-1.1");
        assert_eq!(event["type"], "dev.imagejob.job.completed");
        assert_eq!(
            event["source"],
            "/apis/imagejob.dev/v1alpha1/namespaces/shop/imagejobs/shirt"
        );
        assert_eq!(event["subject"], "image-processing-1");
        assert_eq!(event["data"]["state"]["status"], "completed");
        assert_eq!(event["data"]["state"]["image_id"], "img-1");
        assert_eq!(event["data"]["similarity"]["total_matches"], 2);
        assert_eq!(event["data"]["attempt"], 1);
        let failed = ImageJobStatus {
            phase: Phase::Failed,
            ..status
        };
        let event = completion_event(&job, &failed, "uid-1.1");
        assert_eq!(event["type"], "dev.imagejob.job.failed");
    }
}
