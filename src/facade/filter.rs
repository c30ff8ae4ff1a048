//! Which jobs a list or a bulk action takes: by status, tag, text in the title, creation time
//! and label selector, parsed once from the query and applied to cached jobs. The labels a
//! user may set on the jobs the facade creates are checked here too.

use super::error::ApiError;
use crate::{crd::ImageJob, temporal::contract::ProcessingStatus};
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use regex::Regex;
use std::{collections::BTreeMap, sync::LazyLock};

/// Prefixes of the labels the operator sets itself: a user may not set them.
const OPERATOR_LABEL_PREFIXES: [&str; 2] = ["imagejob.dev/", "app.kubernetes.io/"];
/// Most labels a user may set on a job.
pub const MAX_USER_LABELS: usize = 16;

/// One requirement of an equality-based label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key=value` (or `key==value`).
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value.
    NotEquals(String, String),
    /// `key`: the label is present.
    Exists(String),
    /// `!key`: the label is absent.
    Absent(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        }
    }
}

/// The filters of a list or bulk action, as the query gave them.
#[derive(Clone, Debug, Default)]
pub struct FilterQuery<'a> {
    /// Only jobs in this status.
    pub status: Option<ProcessingStatus>,
    /// Only jobs with this tag.
    pub tag: Option<&'a str>,
    /// Only jobs whose title contains this text, in any case.
    pub text: Option<&'a str>,
    /// Only jobs created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// A Kubernetes label selector, equality-based.
    pub label_selector: Option<&'a str>,
}

/// A compiled filter.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    status: Option<ProcessingStatus>,
    tag: Option<String>,
    text: Option<String>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    selector: Vec<Requirement>,
}

impl JobFilter {
    /// Checks and compiles `query`; an error names the parameter at fault.
    pub fn new(query: &FilterQuery) -> Result<Self, ApiError> {
        let invalid = |field: &str, message: String| ApiError::InvalidQuery {
            field: field.into(),
            message,
        };
        let selector = match query.label_selector {
            Some(text) => parse_selector(text).map_err(|e| invalid("label_selector", e))?,
            None => Vec::new(),
        };
        Ok(Self {
            status: query.status,
            tag: query.tag.map(str::to_owned),
            text: query.text.map(str::to_lowercase),
            created_after: query.created_after.map(|t| t.timestamp()),
            created_before: query.created_before.map(|t| t.timestamp()),
            selector,
        })
    }

    /// The status it takes, if it takes one only.
    pub fn status(&self) -> Option<ProcessingStatus> {
        self.status
    }

    /// Whether deciding needs more than the job's status: its tags, title, time or labels.
    pub fn needs_job(&self) -> bool {
        self.tag.is_some()
            || self.text.is_some()
            || self.created_after.is_some()
            || self.created_before.is_some()
            || !self.selector.is_empty()
    }

    /// Whether `job` passes (its status aside: the list index sorts by it).
    pub fn matches(&self, job: &ImageJob) -> bool {
        let created = job.created_second();
        self.tag
            .as_ref()
            .is_none_or(|tag| job.spec.tags.iter().any(|t| t == tag))
            && self.text.as_ref().is_none_or(|text| {
                job.spec
                    .title
                    .as_ref()
                    .is_some_and(|title| title.to_lowercase().contains(text))
            })
            && self.created_after.is_none_or(|after| created >= after)
            && self.created_before.is_none_or(|before| created < before)
            && self.selector.iter().all(|r| r.matches(job.labels()))
    }
}

/// A label name: a key (without a prefix) or a non-empty value.
pub const LABEL_NAME_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or a name.
pub const LABEL_VALUE_PATTERN: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
/// An equality-based label selector on names: `key=value`, `key==value`, `key!=value`,
/// `key`, `!key`, comma-separated, no spaces. The OpenAPI document says the same pattern.
pub const LABEL_SELECTOR_PATTERN: &str = r"^(!?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?(==?|!=)([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)(,(!?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?(==?|!=)([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?))*$";

/// The compiled form of one of the patterns above.
fn pattern(source: &'static str) -> &'static Regex {
    static COMPILED: LazyLock<[(&str, Regex); 3]> = LazyLock::new(|| {
        [
            LABEL_NAME_PATTERN,
            LABEL_VALUE_PATTERN,
            LABEL_SELECTOR_PATTERN,
        ]
        .map(|p| (p, Regex::new(p).expect("a valid pattern")))
    });
    COMPILED
        .iter()
        .find(|(p, _)| *p == source)
        .map(|(_, regex)| regex)
        .unwrap_or(&COMPILED[0].1)
}

/// Parses a label selector that matches [`LABEL_SELECTOR_PATTERN`].
fn parse_selector(text: &str) -> Result<Vec<Requirement>, String> {
    if !pattern(LABEL_SELECTOR_PATTERN).is_match(text) {
        return Err(format!(
            "{text:?} is not a selector of key=value, key!=value, key or !key, comma-separated (keys and values label names, without prefixes or spaces)"
        ));
    }
    Ok(text
        .split(',')
        .map(|part| {
            if let Some(key) = part.strip_prefix('!') {
                Requirement::Absent(key.into())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.into(), v.into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.into(), v.into())
            } else {
                Requirement::Exists(part.into())
            }
        })
        .collect())
}

/// Whether a label key is one the operator sets.
pub fn is_operators_label(key: &str) -> bool {
    OPERATOR_LABEL_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Checks the labels a user asks the facade to set on a new job: at most
/// [`MAX_USER_LABELS`], keys and values as [`LABEL_NAME_PATTERN`] and [`LABEL_VALUE_PATTERN`].
pub fn check_user_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError::field_error("labels", message);
    if labels.len() > MAX_USER_LABELS {
        return Err(invalid(format!("at most {MAX_USER_LABELS} labels")));
    }
    for (key, value) in labels {
        if !pattern(LABEL_NAME_PATTERN).is_match(key) {
            return Err(invalid(format!(
                "key {key:?} is not a label name: 1 to 63 characters, alphanumerics with -_. inside, no prefix"
            )));
        }
        if !pattern(LABEL_VALUE_PATTERN).is_match(value) {
            return Err(invalid(format!(
                "value {value:?} of {key:?} is not a label value: at most 63 characters, alphanumerics with -_. inside"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(title: &str, tags: &[&str], labels: &[(&str, &str)], created: i64) -> ImageJob {
        let mut job = ImageJob::new(
            "j",
            crate::crd::ImageJobSpec {
                title: Some(title.into()),
                tags: tags.iter().map(|t| (*t).into()).collect(),
                ..Default::default()
            },
        );
        job.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        job.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("a time"),
        ));
        job
    }

    fn filter(query: FilterQuery) -> JobFilter {
        JobFilter::new(&query).expect("a valid filter")
    }

    #[test]
    fn each_filter_takes_what_it_says() {
        let shirt = job("Blue Shirt", &["shirt", "blue"], &[("team", "a")], 100);
        let by_tag = filter(FilterQuery {
            tag: Some("blue"),
            ..Default::default()
        });
        assert!(by_tag.matches(&shirt));
        assert!(
            !filter(FilterQuery {
                tag: Some("blu"),
                ..Default::default()
            })
            .matches(&shirt)
        );
        assert!(
            filter(FilterQuery {
                text: Some("SHIRT"),
                ..Default::default()
            })
            .matches(&shirt)
        );
        let at = |s| DateTime::<Utc>::from_timestamp(s, 0);
        let window = |after, before| FilterQuery {
            created_after: at(after),
            created_before: at(before),
            ..Default::default()
        };
        assert!(
            filter(window(100, 101)).matches(&shirt),
            "after is inclusive"
        );
        assert!(
            !filter(window(99, 100)).matches(&shirt),
            "before is exclusive"
        );
        for (selector, expected) in [
            ("team=a", true),
            ("team==a", true),
            ("team!=a", false),
            ("team", true),
            ("!team", false),
            ("team=b", false),
            ("env!=prod", true),
            ("team=a,!canary", true),
        ] {
            let f = filter(FilterQuery {
                label_selector: Some(selector),
                ..Default::default()
            });
            assert_eq!(f.matches(&shirt), expected, "{selector}");
        }
    }

    #[test]
    fn a_bad_filter_names_its_parameter() {
        for (query, field) in [
            (
                FilterQuery {
                    label_selector: Some("tier in (a,b)"),
                    ..Default::default()
                },
                "label_selector",
            ),
            (
                FilterQuery {
                    label_selector: Some("bad key=x"),
                    ..Default::default()
                },
                "label_selector",
            ),
            (
                FilterQuery {
                    label_selector: Some("team=a,"),
                    ..Default::default()
                },
                "label_selector",
            ),
            (
                FilterQuery {
                    label_selector: Some(""),
                    ..Default::default()
                },
                "label_selector",
            ),
        ] {
            match JobFilter::new(&query) {
                Err(ApiError::InvalidQuery { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{query:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn user_labels_are_plain_kubernetes_names_and_never_ours() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        assert!(check_user_labels(&labels(&[("team", "a"), ("tier", "")])).is_ok());
        for bad in [
            labels(&[("imagejob.dev/client", "x")]),
            labels(&[("shop.example.com/tier", "x")]),
            labels(&[("", "x")]),
            labels(&[("team", "not ok")]),
            labels(&[("-team", "a")]),
            labels(&[("Shop/tier", "a")]),
        ] {
            assert!(check_user_labels(&bad).is_err(), "{bad:?}");
        }
    }
}
