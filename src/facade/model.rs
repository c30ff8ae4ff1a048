//! Request and response bodies of the REST API (the seed's shapes), and request validation with
//! the CRD's limits.

use super::{
    error::ApiError,
    filter::{
        FilterQuery, LABEL_NAME_PATTERN, LABEL_VALUE_PATTERN, MAX_USER_LABELS, check_user_labels,
        is_operators_label,
    },
};
use crate::{
    crd::{ImageJob, ImageJobSpec, NotifySpec},
    similarity::SimilarityResults,
    temporal::{client::WorkflowSnapshot, contract::ProcessingStatus},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /images/process` body.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessRequest {
    /// Public http(s) URL of the image (at most 2048 bytes of UTF-8).
    #[schema(
        example = "https://example.com/image.jpg",
        min_length = 1,
        max_length = 2048,
        pattern = r"^https?://[^\t\n\v\f\r ]+$"
    )]
    pub url: String,
    /// Optional title (at most 256 bytes of UTF-8).
    #[serde(default)]
    #[schema(max_length = 256)]
    pub title: Option<String>,
    /// Optional description (at most 4096 bytes of UTF-8).
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// Tags: at most 32, each 1 to 64 bytes of UTF-8.
    #[serde(default)]
    #[schema(max_items = 32, value_type = Option<Vec<Tag>>)]
    pub tags: Option<Vec<String>>,
    /// Run the similarity search; the facade's configured default when absent.
    #[serde(default)]
    pub similarity_search: Option<bool>,
    /// Priority of the job's workflow: 1 (first) to 5 (last); 3 when absent. A JSON number
    /// with no fraction (`5` or `5.0`, as JSON Schema counts integers).
    #[serde(default)]
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 5)]
    pub priority: Option<serde_json::Number>,
    /// Where to POST the job's completion notification (a CloudEvent), beside the operator's
    /// sink: an http(s) URL of at most 2048 bytes, delivered only when its host is on the
    /// operator's allow-list (otherwise the job's status says it was refused).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = r"^https?://[^\t\n\v\f\r ]+$"
    )]
    pub notify_sink: Option<String>,
    /// Labels of the job, for `label_selector` in the list and the bulk actions: at most 16,
    /// keys and values Kubernetes label names (1 to 63 characters, alphanumerics with `-_.`
    /// inside; keys without a prefix), values may be empty.
    #[serde(default)]
    #[schema(schema_with = user_labels_schema)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// A priority as the request gave it: an integer from 1 to 5, written with or without `.0`.
fn priority_of(number: &serde_json::Number) -> Result<u8, ApiError> {
    let value = number.as_f64().unwrap_or(f64::NAN);
    if value.fract() == 0.0 && (1.0..=5.0).contains(&value) {
        Ok(value as u8)
    } else {
        Err(ApiError::field_error(
            "priority",
            format!("priority must be an integer from 1 (first) to 5 (last), not {number}"),
        ))
    }
}

/// The schema of `ProcessRequest::labels`.
fn user_labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type, schema::SchemaType};
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(LABEL_NAME_PATTERN));
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(LABEL_VALUE_PATTERN));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(key))
        .additional_properties(Some(value))
        .max_properties(Some(MAX_USER_LABELS))
        .build()
}

/// One tag (documentation type of `ProcessRequest::tags` items).
#[derive(ToSchema)]
#[schema(pattern = r"^[\s\S]{1,64}$")]
#[allow(dead_code)]
pub struct Tag(String);

impl ProcessRequest {
    /// The ImageJob spec for this request, checked against the CRD's limits (in bytes, see
    /// [`ImageJobSpec::validate`]): an error names the first field outside them.
    pub fn into_spec(self, similarity_default: bool) -> Result<ImageJobSpec, ApiError> {
        if let Some(labels) = &self.labels {
            check_user_labels(labels)?;
        }
        let spec = ImageJobSpec {
            url: self.url,
            title: self.title,
            description: self.description,
            tags: self.tags.unwrap_or_default(),
            similarity_search: self.similarity_search.unwrap_or(similarity_default),
            ttl_seconds_after_finished: None,
            status: None,
            priority: self.priority.as_ref().map(priority_of).transpose()?,
            retry: None,
            notify: (self.notify_sink).map(|sink| Box::new(NotifySpec { sink })),
        };
        spec.validate().map_err(|e| {
            // The request's name of the field.
            let field = if e.field == "notify.sink" {
                "notify_sink".to_owned()
            } else {
                e.field
            };
            ApiError::field_error(field, e.message.replace("notify.sink", "notify_sink"))
        })?;
        Ok(spec)
    }
}

/// `202 Accepted` answer of `POST /images/process`.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct ProcessResponse {
    /// Id of the workflow that processes the image.
    #[schema(example = "image-processing-550e8400-e29b-41d4-a716-446655440000")]
    pub workflow_id: String,
    /// Always `processing`.
    pub status: ProcessingStatus,
    /// Human-readable confirmation.
    pub message: String,
}

/// The seed's workflow state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct StateView {
    /// Id of the stored image metadata document.
    pub image_id: Option<String>,
    /// `processing`, `completed`, `failed` or `cancelled`.
    pub status: ProcessingStatus,
    /// Whether the metadata was stored.
    pub metadata_stored: bool,
    /// Whether the similarity search ran to completion.
    pub similarity_search_completed: bool,
    /// What went wrong or was skipped.
    pub error: Option<String>,
}

impl StateView {
    /// The state as Temporal tells it, for a workflow whose ImageJob is gone.
    pub fn of_snapshot(snapshot: &WorkflowSnapshot) -> Self {
        let state = snapshot.state.clone().unwrap_or_default();
        Self {
            image_id: state.image_id,
            status: snapshot.execution.processing_status(),
            metadata_stored: state.metadata_stored,
            similarity_search_completed: state.similarity_search_completed,
            error: state.error.or_else(|| snapshot.failure.clone()),
        }
    }

    /// The state as the ImageJob's status shows it.
    pub fn of(job: &ImageJob) -> Self {
        let status = job.status.clone().unwrap_or_default();
        Self {
            image_id: status.image_id,
            status: status.phase.processing_status(),
            metadata_stored: status.metadata_stored,
            similarity_search_completed: status.similarity_search_completed,
            error: status.error,
        }
    }
}

/// One attempt of a job: its first run, then one per retry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct AttemptView {
    /// 1 for the first run, 2 for the first retry, and so on.
    pub attempt: u32,
    /// `processing` for the current attempt until it ends, then how it ended.
    pub status: ProcessingStatus,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Why it failed or was cancelled, in words.
    pub error: Option<String>,
}

impl AttemptView {
    /// Every attempt of `job`, the first first; the last is the current one.
    pub fn all_of(job: &ImageJob) -> Vec<Self> {
        let status = job.status.clone().unwrap_or_default();
        let rfc3339 = |t: &Option<Time>| t.as_ref().map(|t| t.0.to_string());
        let earlier = status.earlier_attempts().iter().map(|a| AttemptView {
            attempt: a.attempt,
            status: a.phase.processing_status(),
            started_at: rfc3339(&a.start_time),
            finished_at: rfc3339(&a.completion_time),
            error: a.error.clone(),
        });
        let current = AttemptView {
            attempt: status.attempt(),
            status: status.phase.processing_status(),
            started_at: rfc3339(&status.start_time),
            finished_at: rfc3339(&status.completion_time),
            error: status.error.clone(),
        };
        earlier.chain(std::iter::once(current)).collect()
    }
}

/// `GET /images/workflow/{workflow_id}/status` answer.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct StatusResponse {
    /// The workflow id.
    pub workflow_id: String,
    /// Its state.
    pub state: StateView,
    /// Its attempts, the first first; the last is the current one. Empty when the job is gone
    /// (`job_deleted`).
    pub attempts: Vec<AttemptView>,
    /// True when no ImageJob exists for the workflow any more (deleted, or its TTL ran out):
    /// the state comes from Temporal, for as long as Temporal retains the workflow.
    pub job_deleted: bool,
}

/// `GET /images/workflow/{workflow_id}/result` answer.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct ResultResponse {
    /// The workflow id.
    pub workflow_id: String,
    /// Whether the workflow has finished; false when the wait timed out (HTTP 202).
    pub done: bool,
    /// The state (final when `done`).
    pub state: StateView,
    /// All similarity results, best first, when the search ran.
    #[schema(value_type = Option<Object>)]
    pub similarity: Option<SimilarityResults>,
    /// Why the requested similarity search did not run (e.g. no Lykdat API key configured);
    /// the job still succeeded.
    pub similarity_skipped: Option<String>,
    /// True when no ImageJob exists for the workflow any more; the answer comes from Temporal.
    pub job_deleted: bool,
}

/// `?timeout=` of the result endpoint.
#[derive(Deserialize, Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// Seconds to wait for the workflow to finish (0 to 300, default 30).
    #[param(minimum = 0, maximum = 300)]
    pub timeout: Option<u16>,
}

/// `GET /images/workflows` query: a page of the jobs the filters take. The bulk actions take
/// the same query and act on the same page.
#[derive(Deserialize, Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size (1 to 500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Continue token from the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    pub continue_token: Option<String>,
    /// Only workflows in this status.
    pub status: Option<ProcessingStatus>,
    /// `oldest` first (the default) or `newest` first.
    pub order: Option<ListOrder>,
    /// Only jobs with this tag (exact).
    pub tag: Option<String>,
    /// Only jobs whose title contains this text, in any case.
    pub text: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs created before this time (RFC 3339).
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// A Kubernetes label selector, equality-based: `key=value`, `key!=value`, `key`, `!key`,
    /// comma-separated (the labels set with `POST /images/process`).
    #[param(
        pattern = r"^(!?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?(==?|!=)([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)(,(!?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?(==?|!=)([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?))*$"
    )]
    pub label_selector: Option<String>,
}

impl ListQuery {
    /// Its filters.
    pub fn filters(&self) -> FilterQuery<'_> {
        FilterQuery {
            status: self.status,
            tag: self.tag.as_deref(),
            text: self.text.as_deref(),
            created_after: self.created_after,
            created_before: self.created_before,
            label_selector: self.label_selector.as_deref(),
        }
    }
}

/// The order of a list.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListOrder {
    /// Oldest first.
    #[default]
    Oldest,
    /// Newest first.
    Newest,
}

/// One item of the list.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct WorkflowSummary {
    /// The workflow id.
    pub workflow_id: String,
    /// The ImageJob's name.
    pub name: String,
    /// The image URL.
    pub url: String,
    /// The image's title.
    #[serde(default)]
    pub title: Option<String>,
    /// The image's description.
    #[serde(default)]
    pub description: Option<String>,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether a similarity search was asked for.
    #[serde(default)]
    pub similarity_search: bool,
    /// One line on the similarity search: match count and best score, or `skipped`.
    #[serde(default)]
    pub similarity_summary: Option<String>,
    /// When the job was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When its workflow started (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Whether cancellation was asked for and the job has not ended yet.
    #[serde(default)]
    pub cancelling: bool,
    /// Its state.
    /// The labels set with `POST /images/process` (the operator's own are left out).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub state: StateView,
}

impl WorkflowSummary {
    /// The summary of a job; `None` for an object without a uid (not from the apiserver).
    pub fn of(job: &ImageJob) -> Option<Self> {
        let status = job.status.clone().unwrap_or_default();
        let time = |t: Option<&Time>| t.map(|t| t.0.to_string());
        Some(Self {
            workflow_id: job.workflow_id()?,
            name: job.name_any(),
            url: job.spec.url.clone(),
            title: job.spec.title.clone(),
            description: job.spec.description.clone(),
            tags: job.spec.tags.clone(),
            similarity_search: job.spec.similarity_search,
            similarity_summary: status.similarity.as_ref().map(|s| s.summary.clone()),
            created_at: time(job.metadata.creation_timestamp.as_ref()),
            started_at: time(status.start_time.as_ref()),
            finished_at: time(status.completion_time.as_ref()),
            cancelling: job.spec.cancel_requested() && !job.phase().is_terminal(),
            labels: user_labels(job),
            state: StateView::of(job),
        })
    }
}

/// A job's labels but the operator's own.
fn user_labels(job: &ImageJob) -> std::collections::BTreeMap<String, String> {
    job.labels()
        .iter()
        .filter(|(k, _)| !is_operators_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `GET /images/workflows` answer.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct ListResponse {
    /// This page.
    pub items: Vec<WorkflowSummary>,
    /// Token of the next page, when there is one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// `DELETE /images/workflow/{workflow_id}` answer.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct CancelResponse {
    /// The workflow id.
    pub workflow_id: String,
    /// `cancelling`.
    pub status: String,
    /// Human-readable confirmation.
    pub message: String,
}

/// `202 Accepted` answer of `POST /images/workflow/{workflow_id}/retry`.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct RetryResponse {
    /// The workflow id (a retry resumes the same workflow).
    pub workflow_id: String,
    /// The number of the attempt the retry starts.
    pub attempt: u32,
    /// `retrying`.
    pub status: String,
    /// Human-readable confirmation.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priority_is_an_integer_from_1_to_5_with_or_without_a_fraction_of_zero() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        assert_eq!(priority_of(&number("1")).ok(), Some(1));
        assert_eq!(priority_of(&number("5.0")).ok(), Some(5));
        for bad in ["0", "6", "2.5", "-1", "1e3"] {
            assert!(priority_of(&number(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_openapi_document_says_the_patterns_the_facade_checks() {
        use crate::facade::filter::LABEL_SELECTOR_PATTERN;
        let document = serde_json::to_value(super::super::docs::openapi()).expect("JSON");
        let list = &document["paths"]["/images/workflows"]["get"]["parameters"];
        let selector = list
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "label_selector"))
            .expect("the label_selector parameter");
        assert_eq!(selector["schema"]["pattern"], LABEL_SELECTOR_PATTERN);
        let labels = &document["components"]["schemas"]["ProcessRequest"]["properties"]["labels"];
        assert_eq!(labels["propertyNames"]["pattern"], LABEL_NAME_PATTERN);
        assert_eq!(
            labels["additionalProperties"]["pattern"],
            LABEL_VALUE_PATTERN
        );
        assert_eq!(labels["maxProperties"], MAX_USER_LABELS);
    }

    fn request(url: &str) -> ProcessRequest {
        ProcessRequest {
            url: url.into(),
            title: None,
            description: None,
            tags: None,
            similarity_search: None,
            labels: None,
            priority: None,
            notify_sink: None,
        }
    }

    fn field_of(request: ProcessRequest) -> String {
        match request.into_spec(false) {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn limits_name_the_field() {
        assert!(
            request("https://example.com/a.jpg")
                .into_spec(false)
                .is_ok()
        );
        assert_eq!(field_of(request("ftp://example.com/a")), "url");
        assert_eq!(field_of(request("not a url")), "url");
        assert_eq!(
            field_of(request(&format!("https://e.com/{}", "a".repeat(2040)))),
            "url"
        );
        let mut r = request("https://e.com/a");
        r.title = Some("t".repeat(257));
        assert_eq!(field_of(r), "title");
        let mut r = request("https://e.com/a");
        r.description = Some("d".repeat(4097));
        assert_eq!(field_of(r), "description");
        let mut r = request("https://e.com/a");
        r.tags = Some(vec!["x".into(); 33]);
        assert_eq!(field_of(r), "tags");
        let mut r = request("https://e.com/a");
        r.tags = Some(vec!["ok".into(), "y".repeat(65)]);
        assert_eq!(field_of(r), "tags[1]");
        let mut r = request("https://e.com/a");
        r.notify_sink = Some("ftp://hooks.example/x".into());
        assert_eq!(field_of(r), "notify_sink");
    }

    #[test]
    fn limits_count_bytes_not_characters() {
        // 64 four-byte characters: 64 characters, 256 bytes.
        let emoji = "\u{1F455}";
        let mut r = request("https://e.com/a");
        r.title = Some(emoji.repeat(64));
        assert!(r.into_spec(false).is_ok(), "256 bytes is the limit");
        let mut r = request("https://e.com/a");
        r.title = Some(emoji.repeat(65));
        assert_eq!(field_of(r), "title", "65 characters, 260 bytes");
        let mut r = request("https://e.com/a");
        r.tags = Some(vec![emoji.repeat(17)]);
        assert_eq!(field_of(r), "tags[0]", "17 characters, 68 bytes");
        let mut r = request("https://e.com/a");
        r.description = Some("\u{e9}".repeat(2049));
        assert_eq!(field_of(r), "description", "2049 characters, 4098 bytes");
    }
}

/// One step of a workflow on the jobs page's timeline.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct TimelineStep {
    /// `created` (the ImageJob), `started`, `metadata_stored`, `similarity_search_started`,
    /// `similarity_search_completed`, `metadata_store_failed`, `similarity_search_failed`, or
    /// how it ended: `completed`, `failed`, `cancelled`, `terminated`, `timed_out`.
    pub step: String,
    /// When (RFC 3339): from the apiserver for `created`, from Temporal's history otherwise.
    pub at: String,
}

/// `GET /images/workflow/{workflow_id}/timeline` answer.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct TimelineResponse {
    /// The workflow id.
    pub workflow_id: String,
    /// Its steps, in order.
    pub steps: Vec<TimelineStep>,
}
