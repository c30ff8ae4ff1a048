//! Where a failed or cancelled workflow resumes from on a retry: the workflow task to reset it
//! to, read from its history.
//!
//! Temporal's reset to a `WorkflowTaskCompleted` event keeps the history up to that task's
//! start and runs the task again: the steps that completed before it keep their results (a
//! stored document is not written again), the commands the task gave (scheduling the next step)
//! are given again. The point is the latest completed workflow task that both scheduled the
//! step which did not finish (or came before it) and started before the first cancellation
//! reached the workflow (the seed's `cancel` signal or Temporal's request-cancel): events kept
//! in the history are replayed, so a cancellation kept would cancel the retry too.

use temporalio_common::protos::temporal::api::history::v1::{
    HistoryEvent, history_event::Attributes,
};

/// The id of the `WorkflowTaskCompleted` event to reset the workflow to, `None` when its
/// history has no completed workflow task before the bounds (nothing ever ran: there is
/// nothing to resume).
pub(super) fn resume_point(events: &[HistoryEvent]) -> Option<i64> {
    // Scheduled steps not completed, with the workflow task that scheduled each.
    let mut unfinished: Vec<(i64, i64)> = Vec::new();
    let mut first_cancel: Option<i64> = None;
    for event in events {
        match &event.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => {
                unfinished.push((event.event_id, a.workflow_task_completed_event_id));
            }
            Some(Attributes::ActivityTaskCompletedEventAttributes(a)) => {
                unfinished.retain(|(scheduled, _)| *scheduled != a.scheduled_event_id);
            }
            Some(
                Attributes::WorkflowExecutionSignaledEventAttributes(_)
                | Attributes::WorkflowExecutionCancelRequestedEventAttributes(_),
            ) => {
                first_cancel.get_or_insert(event.event_id);
            }
            _ => {}
        }
    }
    let scheduled_by = unfinished.iter().map(|(_, task)| *task).min();
    events
        .iter()
        .filter_map(|event| match &event.attributes {
            Some(Attributes::WorkflowTaskCompletedEventAttributes(task)) => {
                Some((event.event_id, task.started_event_id))
            }
            _ => None,
        })
        .filter(|(completed, _)| scheduled_by.is_none_or(|by| *completed <= by))
        .filter(|(_, started)| first_cancel.is_none_or(|cancel| *started < cancel))
        .map(|(completed, _)| completed)
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_common::protos::temporal::api::history::v1::{
        ActivityTaskCompletedEventAttributes, ActivityTaskFailedEventAttributes,
        ActivityTaskScheduledEventAttributes, WorkflowExecutionCancelRequestedEventAttributes,
        WorkflowExecutionSignaledEventAttributes, WorkflowTaskCompletedEventAttributes,
        WorkflowTaskScheduledEventAttributes, WorkflowTaskStartedEventAttributes,
    };

    /// A history built event by event, ids counted from 1.
    #[derive(Default)]
    struct History(Vec<HistoryEvent>);

    impl History {
        fn push(&mut self, attributes: Attributes) -> i64 {
            let event_id = i64::try_from(self.0.len()).unwrap_or_default() + 1;
            self.0.push(HistoryEvent {
                event_id,
                attributes: Some(attributes),
                ..Default::default()
            });
            event_id
        }

        /// A workflow task: scheduled, started, completed; the completed event's id.
        fn task(&mut self) -> i64 {
            self.push(Attributes::WorkflowTaskScheduledEventAttributes(
                WorkflowTaskScheduledEventAttributes::default(),
            ));
            let started = self.push(Attributes::WorkflowTaskStartedEventAttributes(
                WorkflowTaskStartedEventAttributes::default(),
            ));
            self.push(Attributes::WorkflowTaskCompletedEventAttributes(
                WorkflowTaskCompletedEventAttributes {
                    started_event_id: started,
                    ..Default::default()
                },
            ))
        }

        /// A step scheduled by the task completed as `task`; its scheduled event's id.
        fn step(&mut self, task: i64) -> i64 {
            self.push(Attributes::ActivityTaskScheduledEventAttributes(
                ActivityTaskScheduledEventAttributes {
                    workflow_task_completed_event_id: task,
                    ..Default::default()
                },
            ))
        }

        fn completed(&mut self, scheduled: i64) {
            self.push(Attributes::ActivityTaskCompletedEventAttributes(
                ActivityTaskCompletedEventAttributes {
                    scheduled_event_id: scheduled,
                    ..Default::default()
                },
            ));
        }

        fn failed(&mut self, scheduled: i64) {
            self.push(Attributes::ActivityTaskFailedEventAttributes(
                ActivityTaskFailedEventAttributes {
                    scheduled_event_id: scheduled,
                    ..Default::default()
                },
            ));
        }

        fn signalled(&mut self) {
            self.push(Attributes::WorkflowExecutionSignaledEventAttributes(
                WorkflowExecutionSignaledEventAttributes::default(),
            ));
        }

        fn cancel_requested(&mut self) {
            self.push(Attributes::WorkflowExecutionCancelRequestedEventAttributes(
                WorkflowExecutionCancelRequestedEventAttributes::default(),
            ));
        }
    }

    #[test]
    fn a_failed_search_resumes_at_the_task_that_scheduled_it_keeping_the_stored_document() {
        let mut h = History::default();
        let first = h.task();
        let store = h.step(first);
        h.completed(store);
        let second = h.task();
        let search = h.step(second);
        h.failed(search);
        h.task();
        assert_eq!(resume_point(&h.0), Some(second));
    }

    #[test]
    fn a_failed_store_resumes_at_the_first_task() {
        let mut h = History::default();
        let first = h.task();
        let store = h.step(first);
        h.failed(store);
        h.task();
        assert_eq!(resume_point(&h.0), Some(first));
    }

    #[test]
    fn a_search_cancelled_by_signal_resumes_before_the_signal() {
        let mut h = History::default();
        let first = h.task();
        let store = h.step(first);
        h.completed(store);
        let second = h.task();
        h.step(second);
        h.signalled();
        h.task();
        h.cancel_requested();
        h.task();
        assert_eq!(resume_point(&h.0), Some(second));
    }

    #[test]
    fn a_cancel_between_the_steps_resumes_at_the_last_task_before_it() {
        // The signal arrived while the store ran; the task after the store saw it and ended the
        // workflow without scheduling the search.
        let mut h = History::default();
        let first = h.task();
        let store = h.step(first);
        h.signalled();
        h.completed(store);
        h.task();
        assert_eq!(resume_point(&h.0), Some(first));
        // Arrived after the store completed: the task that saw the store's result is kept.
        let mut h = History::default();
        let first = h.task();
        let store = h.step(first);
        h.completed(store);
        let second = h.task();
        h.signalled();
        h.task();
        assert_eq!(resume_point(&h.0), Some(second));
    }

    #[test]
    fn a_history_without_a_completed_task_has_nothing_to_resume() {
        let mut h = History::default();
        h.signalled();
        h.task();
        assert_eq!(resume_point(&h.0), None);
        assert_eq!(resume_point(&[]), None);
    }
}
