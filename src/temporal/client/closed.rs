//! What a closed workflow left, read either from `get_result` or from the close event a history
//! long poll already saw (decoded as `get_result` decodes it: codec, then payload or failure
//! converter), so following a workflow to its end costs no second history read.

use super::snapshot::{ExecutionStatus, WorkflowSnapshot};
use crate::temporal::error::{TemporalError, from_not_found, from_status};
use crate::{
    similarity::SimilarityResults,
    temporal::contract::{ImageProcessingResult, ProcessingStatus, WorkflowState},
};
use std::time::SystemTime;
use temporalio_client::errors::WorkflowGetResultError;
use temporalio_common::{
    data_converters::{DataConverter, SerializationContextData, WorkflowSerializationContext},
    error::IncomingError,
    payload_visitor::decode_payloads,
    protos::{
        proto_ts_to_system_time,
        temporal::api::history::v1::{HistoryEvent, history_event::Attributes},
    },
};

/// The reason the operator gives Temporal when it terminates a workflow asked to stop before it
/// ran a single task (nothing to clean up, and its task may be queued behind thousands): read
/// back from the close event as a cancellation.
pub const UNRUN_TERMINATION: &str =
    "imagejob-operator: cancelled before its first workflow task; nothing had run";

/// How a workflow ended: its state, similarity results and failure text.
pub(super) struct Closed {
    execution: ExecutionStatus,
    state: Option<WorkflowState>,
    similarity: Option<SimilarityResults>,
    similarity_skipped: Option<String>,
    failure: Option<String>,
}

impl Closed {
    fn new(
        execution: ExecutionStatus,
        state: Option<WorkflowState>,
        failure: Option<&str>,
    ) -> Self {
        Self {
            execution,
            state,
            similarity: None,
            similarity_skipped: None,
            failure: failure.map(str::to_owned),
        }
    }

    /// A running workflow, with the state its query answered.
    pub(super) fn running(state: Option<WorkflowState>) -> Self {
        Self::new(ExecutionStatus::Running, state, None)
    }

    fn completed(result: ImageProcessingResult) -> Self {
        Self {
            similarity: result.similarity,
            similarity_skipped: result.similarity_skipped,
            ..Self::new(ExecutionStatus::Completed, Some(result.state), None)
        }
    }

    /// A failed workflow: its state travels in the details of its application failure.
    fn failed(error: &IncomingError) -> Self {
        let state = match error {
            IncomingError::Application(app) => app.details::<WorkflowState>().ok().flatten(),
            _ => None,
        };
        Self::new(
            ExecutionStatus::Failed,
            state,
            Some(&error.failure().message),
        )
    }

    fn cancelled(state: Option<WorkflowState>) -> Self {
        Self::new(ExecutionStatus::Cancelled, state, None)
    }

    /// A workflow the operator terminated before it ran a task (see
    /// [`UNRUN_TERMINATION`]): cancelled, with the state the seed's workflow ends a cancellation
    /// before its first step with, but for the image id it had not drawn yet.
    fn terminated_unrun() -> Self {
        let state = WorkflowState {
            status: ProcessingStatus::Cancelled,
            error: Some("workflow cancelled".into()),
            ..WorkflowState::default()
        };
        Self::new(ExecutionStatus::Cancelled, Some(state), None)
    }

    fn terminated() -> Self {
        Self::new(
            ExecutionStatus::Terminated,
            None,
            Some("workflow terminated outside the operator"),
        )
    }

    fn timed_out() -> Self {
        Self::new(ExecutionStatus::TimedOut, None, Some("workflow timed out"))
    }

    /// The snapshot of this end, with what else is known of the run.
    pub(super) fn into_snapshot(
        self,
        run_id: Option<String>,
        start_time: Option<SystemTime>,
        close_time: Option<SystemTime>,
    ) -> WorkflowSnapshot {
        WorkflowSnapshot {
            run_id,
            execution: self.execution,
            start_time,
            close_time,
            state: self.state,
            similarity: self.similarity,
            similarity_skipped: self.similarity_skipped,
            failure: self.failure,
        }
    }
}

/// How the workflow ended, from `get_result`.
pub(super) fn from_result(
    result: Result<ImageProcessingResult, WorkflowGetResultError>,
) -> Result<Closed, TemporalError> {
    match result {
        Ok(result) => Ok(Closed::completed(result)),
        Err(WorkflowGetResultError::Failed(error)) => Ok(Closed::failed(&error)),
        Err(WorkflowGetResultError::Cancelled { details }) => {
            Ok(Closed::cancelled(details.deserialize().ok()))
        }
        Err(WorkflowGetResultError::Terminated { .. }) => Ok(Closed::terminated()),
        Err(WorkflowGetResultError::TimedOut) => Ok(Closed::timed_out()),
        Err(WorkflowGetResultError::NotFound(status)) => Err(from_not_found(&status)),
        Err(WorkflowGetResultError::Rpc(status)) => Err(from_status(&status)),
        Err(other) => Err(TemporalError::Rpc(other.to_string())),
    }
}

/// How the workflow ended and when, from its close event; `None` when that event hands over
/// to a new run (continue-as-new, a retry, a cron run), whose end `get_result` follows.
pub(super) async fn from_close_event(
    event: HistoryEvent,
    converter: &DataConverter,
) -> Option<Result<(Closed, Option<SystemTime>), TemporalError>> {
    let at = event.event_time.as_ref().and_then(proto_ts_to_system_time);
    let context = SerializationContextData::Workflow(WorkflowSerializationContext::new());
    let closed = match event.attributes? {
        Attributes::WorkflowExecutionCompletedEventAttributes(a)
            if a.new_execution_run_id.is_empty() =>
        {
            let payload = a.result.and_then(|p| p.payloads.into_iter().next());
            converter
                .from_payload(&context, payload.unwrap_or_default())
                .await
                .map(Closed::completed)
        }
        Attributes::WorkflowExecutionFailedEventAttributes(a)
            if a.new_execution_run_id.is_empty() =>
        {
            let mut failure = a.failure.unwrap_or_default();
            decode_payloads(&mut failure, converter.codec(), &context)
                .await
                .and_then(|()| {
                    let payloads = converter.payload_converter();
                    converter
                        .failure_converter()
                        .to_error(failure, payloads, &context)
                })
                .map(|error| Closed::failed(&error))
        }
        Attributes::WorkflowExecutionCanceledEventAttributes(a) => {
            let details = a.details.map(|d| d.payloads).unwrap_or_default();
            let state = converter.from_payloads(&context, details).await.ok();
            Ok(Closed::cancelled(state))
        }
        Attributes::WorkflowExecutionTerminatedEventAttributes(a)
            if a.reason == UNRUN_TERMINATION =>
        {
            Ok(Closed::terminated_unrun())
        }
        Attributes::WorkflowExecutionTerminatedEventAttributes(_) => Ok(Closed::terminated()),
        Attributes::WorkflowExecutionTimedOutEventAttributes(a)
            if a.new_execution_run_id.is_empty() =>
        {
            Ok(Closed::timed_out())
        }
        _ => return None,
    };
    Some(
        closed
            .map(|closed| (closed, at))
            .map_err(|e| TemporalError::Rpc(format!("decoding the workflow's close event: {e}"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::contract::ProcessingStatus;
    use temporalio_common::data_converters::TemporalSerializable;
    use temporalio_common::protos::temporal::api::{
        common::v1::Payloads,
        history::v1::{
            WorkflowExecutionCanceledEventAttributes, WorkflowExecutionCompletedEventAttributes,
            WorkflowExecutionContinuedAsNewEventAttributes,
        },
    };

    fn state(status: ProcessingStatus) -> WorkflowState {
        WorkflowState {
            image_id: Some("img-1".into()),
            status,
            metadata_stored: true,
            ..WorkflowState::default()
        }
    }

    async fn payloads<T: TemporalSerializable + 'static>(value: &T) -> Payloads {
        let context = SerializationContextData::Workflow(WorkflowSerializationContext::new());
        let payload = DataConverter::default()
            .to_payload(&context, value)
            .await
            .expect("encodes");
        Payloads {
            payloads: vec![payload],
        }
    }

    fn event(attributes: Attributes) -> HistoryEvent {
        HistoryEvent {
            attributes: Some(attributes),
            ..HistoryEvent::default()
        }
    }

    async fn decoded(event: HistoryEvent) -> Option<Closed> {
        let outcome = from_close_event(event, &DataConverter::default()).await;
        outcome.map(|r| r.expect("decodes").0)
    }

    #[tokio::test]
    async fn a_completed_event_gives_the_result() {
        let result = ImageProcessingResult {
            state: state(ProcessingStatus::Completed),
            similarity: None,
            similarity_skipped: Some("no Lykdat API key configured".into()),
        };
        let attributes = WorkflowExecutionCompletedEventAttributes {
            result: Some(payloads(&result).await),
            ..Default::default()
        };
        let closed = decoded(event(
            Attributes::WorkflowExecutionCompletedEventAttributes(attributes),
        ))
        .await
        .expect("a final event");
        assert_eq!(closed.execution, ExecutionStatus::Completed);
        assert_eq!(closed.state, Some(result.state));
        assert_eq!(closed.similarity_skipped, result.similarity_skipped);
        assert_eq!(closed.failure, None);
    }

    #[tokio::test]
    async fn a_cancelled_event_gives_the_state_in_its_details() {
        let cancelled = state(ProcessingStatus::Cancelled);
        let attributes = WorkflowExecutionCanceledEventAttributes {
            details: Some(payloads(&cancelled).await),
            ..Default::default()
        };
        let closed = decoded(event(Attributes::WorkflowExecutionCanceledEventAttributes(
            attributes,
        )))
        .await
        .expect("a final event");
        assert_eq!(closed.execution, ExecutionStatus::Cancelled);
        assert_eq!(closed.state, Some(cancelled));
    }

    #[tokio::test]
    async fn an_event_handing_over_to_a_new_run_is_left_to_get_result() {
        let retried = WorkflowExecutionCompletedEventAttributes {
            new_execution_run_id: "next-run".into(),
            ..Default::default()
        };
        let handed_over = [
            Attributes::WorkflowExecutionCompletedEventAttributes(retried),
            Attributes::WorkflowExecutionContinuedAsNewEventAttributes(
                WorkflowExecutionContinuedAsNewEventAttributes::default(),
            ),
        ];
        for attributes in handed_over {
            assert!(decoded(event(attributes)).await.is_none());
        }
        assert!(decoded(HistoryEvent::default()).await.is_none());
    }
}
