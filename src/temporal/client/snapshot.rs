//! What the gateway tells of a workflow: what a start did, how the execution stands, and
//! everything known of it at one moment.

use crate::{
    similarity::SimilarityResults,
    temporal::contract::{ProcessingStatus, WorkflowState},
};
use std::time::SystemTime;

/// What starting a workflow did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOutcome {
    /// Run id of the (new or existing) execution, when the server told it.
    pub run_id: Option<String>,
    /// The workflow id was already in use: nothing new was started.
    pub already_started: bool,
}

/// How Temporal dispatches a workflow's tasks (workflow and activity tasks alike): a priority
/// (1 first, 5 last; the server's default 3 when unset), and a fairness key with its weight, so
/// a key with a backlog does not make the others wait behind it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dispatch {
    /// Priority, 1 (first) to 5 (last).
    pub priority: Option<u32>,
    /// Fairness key: tasks of different keys are dispatched in turn, by weight.
    pub fairness_key: Option<String>,
    /// The key's weight (1 when unset).
    pub fairness_weight: Option<f32>,
}

impl Dispatch {
    /// As the client sends it.
    pub fn priority(&self) -> temporalio_common::Priority {
        temporalio_common::Priority::builder()
            .maybe_priority_key(self.priority)
            .maybe_fairness_key(self.fairness_key.clone())
            .maybe_fairness_weight(self.fairness_weight)
            .build()
    }
}

/// How a workflow execution stands, in Temporal's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// Still running.
    Running,
    /// Completed with a result.
    Completed,
    /// Failed (after its activities' retries, or by a workflow error).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Terminated by someone outside our control.
    Terminated,
    /// Hit its execution timeout.
    TimedOut,
}

impl ExecutionStatus {
    /// The execution in the workflow's words: terminated and timed out are `failed`.
    pub fn processing_status(self) -> ProcessingStatus {
        match self {
            ExecutionStatus::Running => ProcessingStatus::Processing,
            ExecutionStatus::Completed => ProcessingStatus::Completed,
            ExecutionStatus::Failed | ExecutionStatus::Terminated | ExecutionStatus::TimedOut => {
                ProcessingStatus::Failed
            }
            ExecutionStatus::Cancelled => ProcessingStatus::Cancelled,
        }
    }
}

/// What asking a workflow to stop before it ran found (see
/// [`super::WorkflowGateway::stop_unrun`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrun {
    /// It had not run a single workflow task: terminated, read back as cancelled.
    Terminated,
    /// It had run (or had ended): left as it stands, for the seed's cancellation.
    Ran(ExecutionStatus),
}

/// A closed run, as Temporal's visibility lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedRun {
    /// Its workflow id.
    pub workflow_id: String,
    /// Its run id.
    pub run_id: String,
    /// When it started.
    pub start_time: Option<SystemTime>,
    /// When it closed.
    pub close_time: Option<SystemTime>,
}

/// A running run in its similarity search step (its metadata document stored), as Temporal's
/// visibility lists it by [`crate::temporal::contract::IMAGE_ID_ATTRIBUTE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchingRun {
    /// Its workflow id.
    pub workflow_id: String,
    /// Its run id.
    pub run_id: String,
    /// When it started.
    pub start_time: Option<SystemTime>,
    /// The id of the metadata document it stored.
    pub image_id: String,
}

impl SearchingRun {
    /// What the run shows: running, its document stored, its search under way.
    pub fn snapshot(&self) -> WorkflowSnapshot {
        let state = WorkflowState {
            image_id: Some(self.image_id.clone()),
            status: ProcessingStatus::Processing,
            metadata_stored: true,
            ..WorkflowState::default()
        };
        WorkflowSnapshot {
            run_id: Some(self.run_id.clone()),
            execution: ExecutionStatus::Running,
            start_time: self.start_time,
            close_time: None,
            state: Some(state),
            similarity: None,
            similarity_skipped: None,
            failure: None,
        }
    }
}

/// Everything we know of a workflow at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSnapshot {
    /// Run id of the execution, when known.
    pub run_id: Option<String>,
    /// Temporal's status.
    pub execution: ExecutionStatus,
    /// When the execution started.
    pub start_time: Option<SystemTime>,
    /// When it closed.
    pub close_time: Option<SystemTime>,
    /// The workflow's own state (query while running, result or failure details once closed);
    /// `None` when no worker answered the query.
    pub state: Option<WorkflowState>,
    /// Similarity results of a completed workflow.
    pub similarity: Option<SimilarityResults>,
    /// Why a requested similarity search was skipped.
    pub similarity_skipped: Option<String>,
    /// Temporal's reason for a failure, termination or timeout.
    pub failure: Option<String>,
}

impl WorkflowSnapshot {
    /// Run `run_id`, started at `at`, of which nothing more is known.
    pub fn started(run_id: String, at: SystemTime) -> Self {
        Self {
            run_id: Some(run_id),
            execution: ExecutionStatus::Running,
            start_time: Some(at),
            close_time: None,
            state: None,
            similarity: None,
            similarity_skipped: None,
            failure: None,
        }
    }
}
