//! A status decided from a copy the cache had not yet refreshed, carried onto the job as the
//! apiserver holds it now: a three-way merge. Each field (each condition, by type) this decision
//! changed takes the decided value; each one it left as it found it takes the fresh value. So a
//! write of ours the cache had not shown yet (the `CancelRequested` of a terminated workflow,
//! say) is not undone by the next step's write.

use crate::crd::ImageJobStatus;
use serde_json::{Map, Value};

/// `desired`, decided from `current`, carried onto `fresh` (the status the apiserver holds now).
pub(super) fn rebase(
    current: &ImageJobStatus,
    desired: &ImageJobStatus,
    fresh: Option<&ImageJobStatus>,
) -> ImageJobStatus {
    let Some(fresh) = fresh else {
        return desired.clone();
    };
    let (Ok(Value::Object(current)), Ok(Value::Object(desired_json)), Ok(Value::Object(fresh))) = (
        serde_json::to_value(current),
        serde_json::to_value(desired),
        serde_json::to_value(fresh),
    ) else {
        return desired.clone();
    };
    let merged = merge_fields(&current, &desired_json, &fresh);
    serde_json::from_value(Value::Object(merged)).unwrap_or_else(|_| desired.clone())
}

/// The three-way merge of the status's top-level fields; conditions merge by type.
fn merge_fields(
    current: &Map<String, Value>,
    desired: &Map<String, Value>,
    fresh: &Map<String, Value>,
) -> Map<String, Value> {
    let mut merged = Map::new();
    let keys = desired
        .keys()
        .chain(fresh.keys().filter(|k| !desired.contains_key(*k)));
    for key in keys {
        let value = if key == "conditions" {
            Some(Value::Array(merge_conditions(
                current.get(key),
                desired.get(key),
                fresh.get(key),
            )))
        } else {
            pick(current.get(key), desired.get(key), fresh.get(key)).cloned()
        };
        if let Some(value) = value {
            merged.insert(key.clone(), value);
        }
    }
    merged
}

/// The decided value where the decision changed it, else the fresh one.
fn pick<'a, T: PartialEq>(
    current: Option<&'a T>,
    desired: Option<&'a T>,
    fresh: Option<&'a T>,
) -> Option<&'a T> {
    if desired == current { fresh } else { desired }
}

/// Conditions by type: the decided order first, then the types only the fresh status has.
fn merge_conditions(
    current: Option<&Value>,
    desired: Option<&Value>,
    fresh: Option<&Value>,
) -> Vec<Value> {
    let (current, desired, fresh) = (by_type(current), by_type(desired), by_type(fresh));
    let types = desired
        .iter()
        .chain(fresh.iter().filter(|(t, _)| find(&desired, t).is_none()));
    types
        .filter_map(|(t, _)| pick(find(&current, t), find(&desired, t), find(&fresh, t)).cloned())
        .collect()
}

/// The condition of type `t` in `list`.
fn find<'a>(list: &'a [(String, Value)], t: &str) -> Option<&'a Value> {
    list.iter().find(|(ty, _)| ty == t).map(|(_, c)| c)
}

/// A conditions list as (type, condition) pairs.
fn by_type(list: Option<&Value>) -> Vec<(String, Value)> {
    let items = list.and_then(Value::as_array).cloned().unwrap_or_default();
    items
        .into_iter()
        .map(|c| (c["type"].as_str().unwrap_or_default().to_owned(), c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{Condition, Time},
        jiff::Timestamp,
    };

    fn condition(type_: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    fn status(phase: Phase, conditions: &[Condition]) -> ImageJobStatus {
        ImageJobStatus {
            phase,
            conditions: conditions.to_vec(),
            ..Default::default()
        }
    }

    fn reasons(status: &ImageJobStatus) -> Vec<(&str, &str)> {
        (status.conditions.iter())
            .map(|c| (c.type_.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_condition_written_since_the_stale_copy_is_kept() {
        let current = status(Phase::Processing, &[]);
        let fresh = status(
            Phase::Processing,
            &[condition("CancelRequested", "TerminatedBeforeRun")],
        );
        let desired = status(Phase::Cancelled, &[condition("Succeeded", "Cancelled")]);

        let rebased = rebase(&current, &desired, Some(&fresh));

        assert_eq!(rebased.phase, Phase::Cancelled);
        assert_eq!(
            reasons(&rebased),
            [
                ("Succeeded", "Cancelled"),
                ("CancelRequested", "TerminatedBeforeRun")
            ]
        );
    }

    #[test]
    fn what_the_decision_changed_wins_and_what_it_left_takes_the_fresh_value() {
        let current = ImageJobStatus {
            image_id: Some("img-1".into()),
            ..status(Phase::Processing, &[condition("Succeeded", "Running")])
        };
        let fresh = ImageJobStatus {
            image_id: Some("img-2".into()),
            ..status(Phase::Processing, &[condition("Succeeded", "Running")])
        };
        let desired = ImageJobStatus {
            image_id: Some("img-1".into()),
            ..status(Phase::Failed, &[condition("Succeeded", "Failed")])
        };

        let rebased = rebase(&current, &desired, Some(&fresh));

        assert_eq!(rebased.phase, Phase::Failed);
        assert_eq!(rebased.image_id.as_deref(), Some("img-2"));
        assert_eq!(reasons(&rebased), [("Succeeded", "Failed")]);
    }

    #[test]
    fn a_condition_the_decision_removed_stays_removed() {
        let requested = condition("CancelRequested", "Signalled");
        let current = status(Phase::Failed, std::slice::from_ref(&requested));
        let fresh = status(Phase::Failed, &[requested]);
        let desired = status(Phase::Processing, &[]);

        let rebased = rebase(&current, &desired, Some(&fresh));

        assert!(rebased.conditions.is_empty(), "{:?}", reasons(&rebased));
    }
}
