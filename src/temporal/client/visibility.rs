//! What the controller asks of Temporal's visibility, so it can follow thousands of workflows
//! without reading their histories: the runs that closed, and the runs in their similarity
//! search step (a workflow started with [`IMAGE_ID_ATTRIBUTE`] sets it to its stored image's id
//! as its search begins; see the worker's workflow).

use super::snapshot::SearchingRun;
use crate::temporal::{contract::IMAGE_ID_ATTRIBUTE, error::TemporalError};
use std::time::{Duration, SystemTime};
use temporalio_client::{Client, NamespacedClient, tonic::IntoRequest};
use temporalio_common::protos::temporal::api::{
    enums::v1::IndexedValueType, operatorservice::v1::ListSearchAttributesRequest,
};

/// How long whether the namespace has the attribute is trusted before it is asked again (an
/// attribute registered while the operator runs is taken up within this).
pub(super) const REGISTRATION_RECHECK: Duration = Duration::from_secs(300);

/// Whether the client's namespace has [`IMAGE_ID_ATTRIBUTE`] registered as a Keyword. A server
/// that does not say (the operator service refused: no permission, Temporal Cloud) counts as
/// not: workflows are then started without the attribute and show their step only to a
/// history read.
pub(super) async fn registered(client: &Client) -> bool {
    let request = ListSearchAttributesRequest {
        namespace: client.namespace().to_owned(),
    };
    let listed = client
        .connection()
        .operator_service()
        .list_search_attributes(request.into_request())
        .await;
    match listed {
        Ok(response) => {
            let registered = response
                .into_inner()
                .custom_attributes
                .get(IMAGE_ID_ATTRIBUTE.name())
                .is_some_and(|kind| *kind == IndexedValueType::Keyword as i32);
            if !registered {
                tracing::info!(
                    attribute = IMAGE_ID_ATTRIBUTE.name(),
                    "the namespace has no such Keyword search attribute: jobs the controller does not watch show their similarity search step only when they end"
                );
            }
            registered
        }
        Err(status) => {
            tracing::info!(
                attribute = IMAGE_ID_ATTRIBUTE.name(),
                error = %status.message(),
                "the namespace's search attributes could not be listed: workflows are started without it"
            );
            false
        }
    }
}

/// A visibility query's string literal.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The visibility query for the runs on `task_queue` that closed at or after `since`.
pub(super) fn closed_query(task_queue: &str, since: SystemTime) -> String {
    let since = chrono::DateTime::<chrono::Utc>::from(since)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        "TaskQueue = {} AND ExecutionStatus != 'Running' AND CloseTime >= {}",
        quoted(task_queue),
        quoted(&since)
    )
}

/// The visibility query for the runs on `task_queue` in their similarity search step.
pub(super) fn searching_query(task_queue: &str) -> String {
    format!(
        "TaskQueue = {} AND ExecutionStatus = 'Running' AND {} != ''",
        quoted(task_queue),
        IMAGE_ID_ATTRIBUTE.name()
    )
}

/// A listed run in its search step, `None` for one that has not reached it.
pub(super) fn searching_run(run: &temporalio_client::WorkflowExecution) -> Option<SearchingRun> {
    let image_id = run.search_attributes().get(&IMAGE_ID_ATTRIBUTE)?;
    (!image_id.is_empty()).then(|| SearchingRun {
        workflow_id: run.id().to_owned(),
        run_id: run.run_id().to_owned(),
        start_time: run.start_time(),
        image_id,
    })
}

/// A listing error in the gateway's terms.
pub(super) fn list_error(e: temporalio_client::errors::ClientError) -> TemporalError {
    match e {
        temporalio_client::errors::ClientError::Rpc(status) => {
            crate::temporal::error::from_status(&status)
        }
        other => TemporalError::Rpc(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_asks_for_running_runs_of_the_queue_with_an_image_id() {
        assert_eq!(
            searching_query("image-processing"),
            "TaskQueue = 'image-processing' AND ExecutionStatus = 'Running' AND ImageJobImageId != ''"
        );
    }

    #[test]
    fn the_closed_runs_query_quotes_the_queue_and_gives_the_time_in_utc() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_900_000_123);
        assert_eq!(
            closed_query("it's", since),
            "TaskQueue = 'it\\'s' AND ExecutionStatus != 'Running' AND CloseTime >= '2025-12-05T02:00:00.123Z'"
        );
    }
}
