//! The `ImageJob` custom resource: its spec (the seed's POST body), its status (the seed's
//! workflow state in Kubernetes form) and the constants the controller and facade share.

use crate::temporal::contract::ProcessingStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Finalizer the controller puts on every job so deleting it cancels its workflow first.
pub const FINALIZER: &str = "imagejob.dev/workflow-cancel";
/// Field manager of every status write (server-side apply).
pub const FIELD_MANAGER: &str = "imagejob-operator";
/// Prefix of every workflow id, as in the seed (`image-processing-<uuid>`).
pub const WORKFLOW_ID_PREFIX: &str = "image-processing-";
/// Condition type set True when the job completed, False when it failed or was cancelled.
pub const CONDITION_SUCCEEDED: &str = "Succeeded";
/// The job uid in an ImageJob's workflow id: the prefix and a UUID in the one form the
/// apiserver writes (lowercase, hyphenated). Other spellings of the same UUID (uppercase,
/// braces, no hyphens, a URN) name no job: every lookup answers them alike, as unknown.
pub fn workflow_uid(id: &str) -> Option<uuid::Uuid> {
    let text = id.strip_prefix(WORKFLOW_ID_PREFIX)?;
    let uid = uuid::Uuid::try_parse(text).ok()?;
    (uid.hyphenated().to_string() == text).then_some(uid)
}

/// Whether `id` is an ImageJob's workflow id (see [`workflow_uid`]).
pub fn is_workflow_id(id: &str) -> bool {
    workflow_uid(id).is_some()
}

/// Annotation an admin sets on a job stuck in deletion to release it without cancelling its
/// workflow (for a Temporal that is gone for good).
pub const RELEASE_ANNOTATION: &str = "imagejob.dev/release-without-cancel";
/// Condition type set False while Temporal cannot be reached.
pub const CONDITION_TEMPORAL_REACHABLE: &str = "TemporalReachable";
/// Condition type set True once the controller asked the workflow to stop (`spec.status:
/// Cancelled`); its transition time is when the `cancel` signal was sent.
pub const CONDITION_CANCEL_REQUESTED: &str = "CancelRequested";
/// Condition type set False when the spec was edited after the workflow started (the workflow
/// keeps the spec it started with), True again when the edit is undone.
pub const CONDITION_SPEC_APPLIED: &str = "SpecApplied";

/// Condition type of a finished job's completion notifications: True once every sink accepted
/// them, False while one fails (`Retrying`) or once one was given up (`SinkFailed`) or not sent
/// (`SinkNotAllowed`).
pub const CONDITION_NOTIFIED: &str = "Notified";

/// The characters an image URL may not contain: ASCII whitespace, spelled out in its schema
/// pattern (`\s` means other sets in the apiserver's Go regexps and in JSON Schema's).
pub const URL_FORBIDDEN: [char; 6] = ['\t', '\n', '\u{b}', '\u{c}', '\r', ' '];
/// Longest accepted image URL, in bytes of UTF-8 (as every limit below: a byte limit bounds what
/// a job costs to keep and send, whatever its characters).
pub const MAX_URL_LEN: usize = 2048;
/// Longest accepted title, in bytes.
pub const MAX_TITLE_LEN: usize = 256;
/// Longest accepted description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Most tags on one job.
pub const MAX_TAGS: usize = 32;
/// Longest accepted tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// A spec field outside its limits: which one (its JSON path in the spec, e.g. `tags[3]`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidField {
    /// The field's path, e.g. `title` or `tags[3]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidField {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An image to process: its metadata is stored and, optionally, a visual similarity search is
/// run on it, by one durable Temporal `ImageProcessingWorkflow`.
// The printer columns repeat `type_ = "string"`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "imagejob.dev",
    version = "v1alpha1",
    kind = "ImageJob",
    plural = "imagejobs",
    shortname = "ij",
    namespaced,
    doc = "An image-processing job: its metadata is stored and, optionally, a visual similarity search runs on it, in one durable Temporal workflow.",
    status = "ImageJobStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Image ID", type_ = "string", json_path = ".status.imageId"),
    printcolumn(
        name = "Similarity",
        type_ = "string",
        json_path = ".status.similarity.summary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Workflow",
        type_ = "string",
        json_path = ".status.workflowId",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageJobSpec {
    /// Public http(s) URL of the image (at most 2048 bytes).
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\t\n\v\f\r ]+$"))]
    pub url: String,
    /// Optional title of the image (at most 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub title: Option<String>,
    /// Optional description of the image (at most 4096 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Tags of the image (at most 32, each 1 to 64 bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub tags: Vec<String>,
    /// Run a Lykdat visual similarity search on the image after storing its metadata.
    #[serde(default)]
    pub similarity_search: bool,
    /// Delete the job this many seconds after it finished (completed, failed or cancelled).
    /// Unset: finished jobs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Set to `Cancelled` to cancel the job and keep its record (as Tekton's `spec.status`): the
    /// workflow gets the `cancel` signal, then Temporal's request-cancel if it has not stopped
    /// within a few seconds, and the job ends `Cancelled` with the workflow's final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RequestedStatus>,
    /// Priority of the job's workflow in Temporal's task queues: 1 (first) to 5 (last); 3 when
    /// unset. Jobs of different namespaces also take turns (fairness), whatever their priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub priority: Option<u8>,
    /// Raise by one to retry a `Failed` or `Cancelled` job from the step that did not finish
    /// (a stored document is not written again). The controller acts on each raise once: a raise
    /// on a job that is running or completed is refused with a `RetryRefused` event. Remove
    /// `status: Cancelled` in the same edit to retry a job cancelled that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// Where to send this job's completion notification (a CloudEvent), beside the operator's
    /// own sink: only to hosts the operator's allow-list (`NOTIFY_ALLOWED_HOSTS`) permits.
    // Boxed: see `ImageJobStatus::similarity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Box<NotifySpec>>,
}

/// A job's own completion notification.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySpec {
    /// http(s) URL the CloudEvent is POSTed to.
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\t\n\v\f\r ]+$"))]
    pub sink: String,
}

/// Set to `Cancelled` to cancel the job and keep its record (as Tekton's `spec.status`): the
/// workflow gets the `cancel` signal, then Temporal's request-cancel if it has not stopped within
/// a few seconds, and the job ends `Cancelled` with the workflow's final state.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RequestedStatus {
    /// Stop the job; its ImageJob stays.
    Cancelled,
}

/// Checks that `url`, the value of `field`, is an http(s) URL of at most [`MAX_URL_LEN`] bytes.
fn check_url(field: &str, url: &str) -> Result<(), InvalidField> {
    if url.is_empty() {
        return Err(InvalidField::new(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if url.len() > MAX_URL_LEN {
        return Err(InvalidField::new(
            field,
            format!("{field} longer than {MAX_URL_LEN} bytes"),
        ));
    }
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    if !scheme_ok || rest.is_empty() || url.contains(URL_FORBIDDEN) {
        return Err(InvalidField::new(
            field,
            format!("{field} must be an http or https URL"),
        ));
    }
    Ok(())
}

impl ImageJobSpec {
    /// Checks the limits every job must meet, naming the first field outside them. The CRD
    /// schema says the same with `maxLength`, which an apiserver counts in characters: a field
    /// of multi-byte characters can pass the schema and still be refused here, by the facade
    /// before it creates the job and by the controller before it starts a workflow.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_url("url", &self.url)?;
        if let Some(notify) = &self.notify {
            check_url("notify.sink", &notify.sink)?;
        }
        if self.priority.is_some_and(|p| !(1..=5).contains(&p)) {
            return Err(InvalidField::new(
                "priority",
                "priority must be 1 (first) to 5 (last)",
            ));
        }
        if self.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE_LEN) {
            return Err(InvalidField::new(
                "title",
                format!("title longer than {MAX_TITLE_LEN} bytes"),
            ));
        }
        if (self.description.as_ref()).is_some_and(|d| d.len() > MAX_DESCRIPTION_LEN) {
            return Err(InvalidField::new(
                "description",
                format!("description longer than {MAX_DESCRIPTION_LEN} bytes"),
            ));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(InvalidField::new(
                "tags",
                format!("more than {MAX_TAGS} tags"),
            ));
        }
        if let Some(i) = (self.tags.iter()).position(|t| t.is_empty() || t.len() > MAX_TAG_LEN) {
            return Err(InvalidField::new(
                format!("tags[{i}]"),
                format!("each tag must be 1 to {MAX_TAG_LEN} bytes"),
            ));
        }
        Ok(())
    }

    /// Whether the user asked for the job to be cancelled (`spec.status: Cancelled`).
    pub fn cancel_requested(&self) -> bool {
        self.status == Some(RequestedStatus::Cancelled)
    }
}

/// Where a job is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted; its workflow is not started yet.
    #[default]
    Pending,
    /// Its workflow is running.
    Processing,
    /// Its workflow completed.
    Completed,
    /// Its workflow failed, was terminated or timed out.
    Failed,
    /// Its workflow was cancelled.
    Cancelled,
}

impl Phase {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }

    /// The phase's name as shown in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Processing => "Processing",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }

    /// The phase in the workflow's words: `processing` until the workflow ends.
    pub fn processing_status(self) -> ProcessingStatus {
        match self {
            Phase::Pending | Phase::Processing => ProcessingStatus::Processing,
            Phase::Completed => ProcessingStatus::Completed,
            Phase::Failed => ProcessingStatus::Failed,
            Phase::Cancelled => ProcessingStatus::Cancelled,
        }
    }
}

impl From<ProcessingStatus> for Phase {
    /// The phase of a job whose workflow is in this state.
    fn from(status: ProcessingStatus) -> Self {
        match status {
            ProcessingStatus::Processing => Phase::Processing,
            ProcessingStatus::Completed => Phase::Completed,
            ProcessingStatus::Failed => Phase::Failed,
            ProcessingStatus::Cancelled => Phase::Cancelled,
        }
    }
}

/// Observed state of an ImageJob, read from its workflow.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageJobStatus {
    /// Pending, Processing, Completed, Failed or Cancelled.
    #[serde(default)]
    pub phase: Phase,
    /// Id of the job's Temporal workflow (`image-processing-<uid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Run id of the job's Temporal workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Id of the stored image metadata document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Whether the image metadata was stored.
    #[serde(default)]
    pub metadata_stored: bool,
    /// Whether the similarity search ran to completion.
    #[serde(default)]
    pub similarity_search_completed: bool,
    /// Why the job failed, in words (null on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Standard conditions; `Succeeded` is True, False or Unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status was computed for (edits after start are reported by
    /// the `SpecApplied` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Digest of the spec fields the workflow was started with (url, title, description, tags,
    /// similaritySearch): how an edit after start is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_spec_digest: Option<String>,
    /// When the workflow started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the workflow finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Short summary of the similarity search (the full result is served by the facade).
    // Boxed: it keeps a cached job within a smaller allocation class (`ImageJob` 704 bytes
    // instead of 776), 12 MiB less per process with 100,000 jobs cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<Box<SimilaritySummary>>,
    /// The last `spec.retry` the controller acted on (retried, or refused the retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_retry: Option<u32>,
    /// The job's earlier attempts, oldest first: each retry records here how the attempt
    /// before it ended. The current attempt (number `attempts.len() + 1`) is the rest of the
    /// status.
    // Boxed: an empty list costs a cached job 8 bytes instead of 24 (see `similarity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Box<Vec<Attempt>>>,
    /// The outbox of the job's completion notifications: one entry per sink, written with the
    /// status that finished the job and updated as each is delivered (so a controller that
    /// restarts before a delivery makes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Box<Vec<Notification>>>,
}

/// The delivery of one completion notification.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Which sink: the operator's or the job's own (`spec.notify.sink`).
    pub sink: NotificationSink,
    /// The CloudEvent's `id`: the same on every delivery attempt, so a receiver can drop repeats.
    pub event_id: String,
    /// Where the delivery stands.
    pub state: DeliveryState,
    /// Failed delivery attempts so far.
    #[serde(default)]
    pub failures: u32,
    /// The last failure, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due (while `Pending` after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// When the sink accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_time: Option<Time>,
}

/// Which sink a notification goes to.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NotificationSink {
    /// The operator's (`NOTIFY_SINK_URL`).
    Operator,
    /// The job's own (`spec.notify.sink`).
    Job,
}

/// Where a notification's delivery stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeliveryState {
    /// Not delivered yet; attempted again at `nextAttemptTime`.
    Pending,
    /// The sink accepted it (2xx).
    Delivered,
    /// Given up: the sink kept failing (`NOTIFY_MAX_ATTEMPTS`) or refused it for good (a 4xx).
    Failed,
    /// Not sent: the job's sink is not on the operator's allow-list.
    Refused,
}

/// One finished attempt of a job that was retried.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the job's first run, 2 for its first retry, and so on.
    pub attempt: u32,
    /// The Temporal run of the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How it ended: Failed or Cancelled.
    pub phase: Phase,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ImageJobStatus {
    /// The job's earlier attempts, oldest first.
    pub fn earlier_attempts(&self) -> &[Attempt] {
        self.attempts.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The deliveries of the job's completion notifications (its outbox).
    pub fn deliveries(&self) -> &[Notification] {
        self.notifications.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The number of the current attempt: 1 until the job is retried.
    pub fn attempt(&self) -> u32 {
        u32::try_from(self.earlier_attempts().len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }
}

/// The few best matches of a similarity search.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimilaritySummary {
    /// One line for `kubectl get`: match count and best score, or `skipped`.
    pub summary: String,
    /// Why the requested search did not run (`summary` is `skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_reason: Option<String>,
    /// How many similar products were found.
    pub total_matches: u32,
    /// The best matches, best first (at most five).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_matches: Vec<SimilarMatch>,
}

/// One similar product.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimilarMatch {
    /// Product name.
    pub name: String,
    /// Brand, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// Product page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Similarity score, 0 to 1, as text (Kubernetes avoids floats in APIs).
    pub score: String,
}

impl ImageJob {
    /// The job's uid as a UUID (the apiserver's uids are UUIDs); None for an object that did not
    /// come from it.
    pub fn uid_key(&self) -> Option<uuid::Uuid> {
        self.metadata
            .uid
            .as_deref()
            .and_then(|uid| uuid::Uuid::parse_str(uid).ok())
    }

    /// The id of this job's workflow: `image-processing-<metadata.uid>`, derived from the
    /// object so a crash between starting the workflow and writing the status cannot start a
    /// second one. `None` for an object without a uid (not from the apiserver).
    pub fn workflow_id(&self) -> Option<String> {
        use kube::ResourceExt;
        self.uid().map(|uid| format!("{WORKFLOW_ID_PREFIX}{uid}"))
    }

    /// Whether this job is the one the workflow `workflow_id` runs for (its uid is in the id):
    /// a job created again under a name an older job had is not.
    pub fn runs(&self, workflow_id: &str) -> bool {
        self.uid_key().is_some() && self.uid_key() == workflow_uid(workflow_id)
    }

    /// When the job was created, in seconds since the epoch (0 for an object not from the
    /// apiserver).
    pub fn created_second(&self) -> i64 {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or_default()
    }

    /// Delete parameters that delete this very object only: with its uid as a precondition, a
    /// job deleted and created again under the same name (or another object there) is left
    /// alone, and the apiserver answers 409.
    pub fn delete_exactly(&self) -> kube::api::DeleteParams {
        kube::api::DeleteParams::default().preconditions(kube::api::Preconditions {
            uid: self.metadata.uid.clone(),
            resource_version: None,
        })
    }

    /// Drops what no reader of a watch cache uses and can be large: managed fields, and the
    /// copy of the whole object `kubectl apply` keeps in an annotation.
    pub fn trim_for_cache(&mut self) {
        use kube::ResourceExt;
        self.managed_fields_mut().clear();
        self.annotations_mut()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
    }

    /// The phase of the job, Pending when it has no status yet.
    pub fn phase(&self) -> Phase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// The job's condition of this type, when its status has one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        (self.status.as_ref()?.conditions.iter()).find(|c| c.type_ == type_)
    }

    /// Whether `spec.retry` was raised past what the controller acted on: the job must be
    /// reconciled (retried, or the retry refused) even if it is finished.
    pub fn retry_pending(&self) -> bool {
        let observed = self.status.as_ref().and_then(|s| s.observed_retry);
        self.spec.retry.unwrap_or(0) > observed.unwrap_or(0)
    }

    /// Whether a completion notification of the job is still to be delivered.
    pub fn notification_pending(&self) -> bool {
        let notifications = self
            .status
            .as_ref()
            .and_then(|s| s.notifications.as_deref());
        notifications.is_some_and(|n| n.iter().any(|n| n.state == DeliveryState::Pending))
    }

    /// Whether a finished job still needs the controller: a retry or a notification is due.
    pub fn has_work_after_finish(&self) -> bool {
        self.retry_pending() || self.notification_pending()
    }

    /// Whether the job can be retried: it failed or was cancelled after its workflow started.
    pub fn retryable(&self) -> bool {
        let started = self.status.as_ref().is_some_and(|s| s.run_id.is_some());
        matches!(self.phase(), Phase::Failed | Phase::Cancelled) && started
    }

    /// Whether the status says Temporal could not be used (`TemporalReachable=False`).
    pub fn temporal_unreachable(&self) -> bool {
        self.condition(CONDITION_TEMPORAL_REACHABLE)
            .is_some_and(|c| c.status == "False")
    }
}

/// The CRD as YAML, exactly as committed in `crds/imagejob.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ImageJob::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn a_job_runs_only_the_workflow_named_after_its_uid() {
        let mut job = ImageJob::new("shirt", ImageJobSpec::default());
        let uid = "0b7c6a2e-5f1d-4c3b-9a8e-1d2c3b4a5f6e";
        assert!(
            !job.runs(&format!("{WORKFLOW_ID_PREFIX}{uid}")),
            "no uid yet"
        );
        job.metadata.uid = Some(uid.into());
        assert!(job.runs(&format!("{WORKFLOW_ID_PREFIX}{uid}")));
        assert!(!job.runs(&format!(
            "{WORKFLOW_ID_PREFIX}1b7c6a2e-5f1d-4c3b-9a8e-1d2c3b4a5f6e"
        )));
    }

    #[test]
    fn a_delete_names_the_object_by_its_uid() {
        let mut job = ImageJob::new("shirt", ImageJobSpec::default());
        job.metadata.uid = Some("0b7c6a2e-5f1d-4c3b-9a8e-1d2c3b4a5f6e".into());
        let params = job.delete_exactly();
        assert_eq!(
            params.preconditions.and_then(|p| p.uid).as_deref(),
            Some("0b7c6a2e-5f1d-4c3b-9a8e-1d2c3b4a5f6e")
        );
    }

    #[test]
    fn a_workflow_id_has_one_spelling_the_apiservers() {
        let uid = "0b7c6a2e-5f1d-4c3b-9a8e-1d2c3b4a5f6e";
        let id = format!("{WORKFLOW_ID_PREFIX}{uid}");
        assert_eq!(
            workflow_uid(&id).map(|u| u.to_string()).as_deref(),
            Some(uid)
        );
        for other in [
            uid.to_uppercase(),
            format!("{{{uid}}}"),
            uid.replace('-', ""),
            format!("urn:uuid:{uid}"),
            format!("{uid} "),
        ] {
            let id = format!("{WORKFLOW_ID_PREFIX}{other}");
            assert!(!is_workflow_id(&id), "{id}");
        }
        assert!(!is_workflow_id(uid), "the prefix is part of it");
    }

    #[test]
    fn a_cached_job_fits_the_768_byte_allocation_class() {
        // Caches hold each job in an `Arc` (two counters before it); jemalloc's classes around
        // it are 640, 768 and 896 bytes.
        assert!(2 * size_of::<usize>() + size_of::<ImageJob>() <= 768);
    }

    #[test]
    fn trimming_for_the_cache_drops_managed_fields_and_the_applied_copy_only() {
        let mut job = ImageJob::new("shirt", ImageJobSpec::default());
        job.annotations_mut().extend([
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{\"big\":true}".to_owned(),
            ),
            ("team".to_owned(), "catalog".to_owned()),
        ]);
        job.managed_fields_mut().push(Default::default());
        job.trim_for_cache();
        assert!(job.managed_fields().is_empty());
        assert_eq!(job.annotations().keys().collect::<Vec<_>>(), ["team"]);
    }
}
