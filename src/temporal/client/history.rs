//! Reading a workflow's history: which events move its state (for the progress long poll) and
//! when each step happened (the jobs page's timeline).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};
use temporalio_common::protos::{
    proto_ts_to_system_time,
    temporal::api::history::v1::{HistoryEvent, history_event::Attributes},
};
use tokio::time::Instant;

/// The activities' registered names.
const STORE: &str = "store_image_metadata";
const SEARCH: &str = "run_similarity_search";

/// What a history event means to someone following the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HistoryStep {
    /// A step was scheduled or ended: the workflow's state moved.
    Progress,
    /// The workflow closed.
    Closed,
    /// Bookkeeping (workflow tasks, signals, markers).
    Other,
}

/// How `event` moves the workflow.
pub(super) fn history_step(event: &HistoryEvent) -> HistoryStep {
    match &event.attributes {
        Some(
            Attributes::ActivityTaskScheduledEventAttributes(_)
            | Attributes::ActivityTaskCompletedEventAttributes(_)
            | Attributes::ActivityTaskFailedEventAttributes(_)
            | Attributes::ActivityTaskTimedOutEventAttributes(_)
            | Attributes::ActivityTaskCanceledEventAttributes(_),
        ) => HistoryStep::Progress,
        Some(
            Attributes::WorkflowExecutionCompletedEventAttributes(_)
            | Attributes::WorkflowExecutionFailedEventAttributes(_)
            | Attributes::WorkflowExecutionCanceledEventAttributes(_)
            | Attributes::WorkflowExecutionTerminatedEventAttributes(_)
            | Attributes::WorkflowExecutionTimedOutEventAttributes(_)
            | Attributes::WorkflowExecutionContinuedAsNewEventAttributes(_),
        ) => HistoryStep::Closed,
        _ => HistoryStep::Other,
    }
}

/// When the step `event` records is reported to someone following the workflow: `window`
/// after Temporal recorded it, so a step read late (after the close-only wait) is not held a
/// full window more; `window` from now for an event without a time or from a clock ahead.
pub(super) fn report_time(event: &HistoryEvent, window: Duration) -> Instant {
    let age = event
        .event_time
        .as_ref()
        .and_then(proto_ts_to_system_time)
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or_default();
    Instant::now() + window.saturating_sub(age)
}

/// One step of a workflow, as Temporal recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// `started`, `metadata_stored`, `similarity_search_started`, `similarity_search_completed`,
    /// `metadata_store_failed`, `similarity_search_failed`, or how the workflow ended:
    /// `completed`, `failed`, `cancelled`, `terminated`, `timed_out`.
    pub step: &'static str,
    /// When Temporal recorded it.
    pub at: SystemTime,
}

/// The step of an activity that failed past its retries.
fn failed(activity: &str) -> &'static str {
    match activity {
        STORE => "metadata_store_failed",
        _ => "similarity_search_failed",
    }
}

/// The steps in `events`, in order.
pub(super) fn timeline(events: &[HistoryEvent]) -> Vec<TimelineEntry> {
    let mut activities: HashMap<i64, &str> = HashMap::new();
    let mut steps = Vec::new();
    for event in events {
        let Some(at) = event.event_time.as_ref().and_then(proto_ts_to_system_time) else {
            continue;
        };
        let activity = |id: i64| activities.get(&id).copied().unwrap_or_default();
        let step = match &event.attributes {
            Some(Attributes::WorkflowExecutionStartedEventAttributes(_)) => Some("started"),
            Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => {
                let name = a.activity_type.as_ref().map(|t| t.name.as_str());
                let name = name.unwrap_or_default();
                activities.insert(event.event_id, if name == STORE { STORE } else { SEARCH });
                (name == SEARCH).then_some("similarity_search_started")
            }
            Some(Attributes::ActivityTaskCompletedEventAttributes(a)) => {
                Some(match activity(a.scheduled_event_id) {
                    STORE => "metadata_stored",
                    _ => "similarity_search_completed",
                })
            }
            Some(Attributes::ActivityTaskFailedEventAttributes(a)) => {
                Some(failed(activity(a.scheduled_event_id)))
            }
            Some(Attributes::ActivityTaskTimedOutEventAttributes(a)) => {
                Some(failed(activity(a.scheduled_event_id)))
            }
            Some(Attributes::WorkflowExecutionCompletedEventAttributes(_)) => Some("completed"),
            Some(Attributes::WorkflowExecutionFailedEventAttributes(_)) => Some("failed"),
            Some(Attributes::WorkflowExecutionCanceledEventAttributes(_)) => Some("cancelled"),
            Some(Attributes::WorkflowExecutionTerminatedEventAttributes(_)) => Some("terminated"),
            Some(Attributes::WorkflowExecutionTimedOutEventAttributes(_)) => Some("timed_out"),
            _ => None,
        };
        if let Some(step) = step {
            steps.push(TimelineEntry { step, at });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(400);

    fn recorded(at: Option<SystemTime>) -> HistoryEvent {
        HistoryEvent {
            event_time: at.map(Into::into),
            ..HistoryEvent::default()
        }
    }

    #[test]
    fn a_step_is_reported_a_window_after_temporal_recorded_it() {
        let before = Instant::now();
        let fresh = report_time(&recorded(Some(SystemTime::now())), WINDOW);
        assert!(
            fresh >= before + WINDOW - Duration::from_millis(50),
            "{fresh:?}"
        );
        let ago = SystemTime::now() - Duration::from_millis(300);
        let late = report_time(&recorded(Some(ago)), WINDOW);
        assert!(
            late <= Instant::now() + Duration::from_millis(100),
            "{late:?}"
        );
        let older = report_time(&recorded(Some(ago - WINDOW)), WINDOW);
        assert!(
            older <= Instant::now(),
            "a step older than the window is due at once"
        );
    }

    #[test]
    fn a_step_without_a_time_or_from_the_future_waits_a_whole_window() {
        let future = SystemTime::now() + Duration::from_secs(5);
        for event in [recorded(None), recorded(Some(future))] {
            let before = Instant::now();
            assert!(report_time(&event, WINDOW) >= before + WINDOW);
        }
    }
}
