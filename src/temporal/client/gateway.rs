//! Our view of the Temporal client: start one workflow per id, read its state, cancel it, wait
//! for it to close. The controller and the facade hold an `Arc<dyn WorkflowGateway>`.

use super::{
    closed::{self, Closed, UNRUN_TERMINATION},
    history::{HistoryStep, TimelineEntry, history_step, report_time, timeline},
    resume::resume_point,
    snapshot::{
        ClosedRun, Dispatch, ExecutionStatus, SearchingRun, StartOutcome, Unrun, WorkflowSnapshot,
    },
    visibility::{self, REGISTRATION_RECHECK},
};
use crate::temporal::{
    connection::{CREDENTIALS_RECHECK, CredentialsFingerprint, TemporalSettings, connect},
    contract::{
        Cancel, ForgetImages, GetStatus, IMAGE_ID_ATTRIBUTE, ImageProcessing, ImageProcessingInput,
        WorkflowState, forget_workflow_id, similarity_task_queue,
    },
    error::{TemporalError, from_not_found, from_status},
    sdk_metrics::SdkMetrics,
};
use async_trait::async_trait;
use futures::StreamExt;
use std::time::{Duration, SystemTime};
use temporalio_client::{
    Client, HistoryEventFilterType, NamespacedClient, RpcOptions, WorkflowCancelOptions,
    WorkflowDescribeOptions, WorkflowExecutionDescription, WorkflowExecutionStatus,
    WorkflowFetchHistoryOptions, WorkflowGetResultOptions, WorkflowHandle, WorkflowIdReusePolicy,
    WorkflowListOptions, WorkflowQueryOptions, WorkflowSignalOptions, WorkflowStartOptions,
    WorkflowTerminateOptions,
    errors::{WorkflowInteractionError, WorkflowQueryError, WorkflowStartError},
    tonic::{Code, IntoRequest},
};
use temporalio_common::{
    data_converters::{SerializationContextData, WorkflowSerializationContext},
    protos::temporal::api::{
        common::v1::WorkflowExecution,
        enums::v1::{PendingWorkflowTaskState, ResetReapplyExcludeType},
        history::v1::{HistoryEvent, history_event::Attributes},
        workflowservice::v1::ResetWorkflowExecutionRequest,
    },
    search_attributes::SearchAttributes,
    telemetry::metrics::TemporalMeter,
};
use tokio::{sync::Mutex, time::Instant};

/// Deadline of a state query: a workflow with no live worker would otherwise hang ~30 s.
const QUERY_DEADLINE: Duration = Duration::from_secs(5);

fn from_interaction(e: WorkflowInteractionError) -> TemporalError {
    match e {
        WorkflowInteractionError::NotFound(status) => from_not_found(&status),
        WorkflowInteractionError::Rpc(status) => from_status(&status),
        other => TemporalError::Rpc(other.to_string()),
    }
}

/// Most history events a timeline (or a resume) reads: an `ImageProcessingWorkflow` has about twenty, so a
/// history this long is not one to read to its end.
const TIMELINE_EVENTS: usize = 500;

/// Start, read and cancel `ImageProcessingWorkflow`s.
#[async_trait]
pub trait WorkflowGateway: Send + Sync {
    /// Starts the workflow unless one with this id exists (running or closed): never a second.
    async fn start(
        &self,
        workflow_id: &str,
        input: ImageProcessingInput,
    ) -> Result<StartOutcome, TemporalError> {
        self.start_dispatched(workflow_id, input, Dispatch::default())
            .await
    }
    /// [`WorkflowGateway::start`], its tasks dispatched by `dispatch`: a priority, and a
    /// fairness key with its weight.
    async fn start_dispatched(
        &self,
        workflow_id: &str,
        input: ImageProcessingInput,
        dispatch: Dispatch,
    ) -> Result<StartOutcome, TemporalError>;
    /// Starts the removal of the images the workflow catalogued (its job was deleted): a
    /// `ForgetCatalogImage` workflow on the similarity queue, one per job (a repeat is a no-op).
    async fn forget_catalog_image(&self, workflow_id: &str) -> Result<(), TemporalError>;
    /// Reads the workflow's status and state.
    async fn snapshot(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError>;
    /// What a closed workflow left, from its close event (one history read, no wait), with
    /// that event's time as the close time; its run id and start time are not known there.
    async fn close_of(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError>;
    /// The runs on our task queue that closed at or after `since`, as Temporal's visibility
    /// lists them (one call per page of a thousand): how the close of thousands of queued
    /// workflows is noticed without a call per workflow.
    async fn closed_since(&self, since: SystemTime) -> Result<Vec<ClosedRun>, TemporalError>;
    /// The runs on our task queue in their similarity search step (their metadata stored), as
    /// Temporal's visibility lists them (see [`super::visibility`]): how a step of thousands of
    /// workflows is shown without reading their histories. Empty where the namespace lacks the
    /// search attribute.
    async fn searching(&self) -> Result<Vec<SearchingRun>, TemporalError>;
    /// For a workflow asked to stop: when it has not run a single workflow task (its history is
    /// its start and its first task, which no worker has taken), it is terminated at once, as
    /// nothing of it ran to clean up and its task may wait behind thousands of others; otherwise
    /// it is left as it stands (one describe) for the seed's cancellation.
    async fn stop_unrun(&self, workflow_id: &str) -> Result<Unrun, TemporalError>;
    /// Sends the seed's `cancel` signal.
    async fn signal_cancel(&self, workflow_id: &str) -> Result<(), TemporalError>;
    /// Asks Temporal to cancel the workflow (request-cancel).
    async fn request_cancel(&self, workflow_id: &str) -> Result<(), TemporalError>;
    /// Returns once the workflow has closed (a long poll on its history), with what it left;
    /// its run id and start time are not known there, its close time is the time of return.
    async fn wait_closed(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError>;
    /// Follows the workflow's history with long polls (no polling) until it closes, and returns
    /// what it left, as [`WorkflowGateway::wait_closed`], decoded from the close event the poll
    /// saw (no further call), with that event's time as the close time. The first poll waits
    /// for the close event alone, for `window`; only a workflow still running then has every
    /// event of its history read, one poll per batch. On the way, `progressed` is called
    /// when a step was scheduled or ended and `window` passed without the workflow closing:
    /// steps that land within the window give one call, and a workflow that closes within it
    /// gives none.
    async fn follow(
        &self,
        workflow_id: &str,
        window: Duration,
        progressed: &(dyn Fn() + Send + Sync),
    ) -> Result<WorkflowSnapshot, TemporalError>;
    /// The steps of the workflow so far, with the times Temporal recorded them.
    async fn timeline(&self, workflow_id: &str) -> Result<Vec<TimelineEntry>, TemporalError>;
    /// The input the workflow was started with, from the first event of its history.
    async fn started_input(&self, workflow_id: &str)
    -> Result<ImageProcessingInput, TemporalError>;
    /// Resumes the failed or cancelled run `run_id` from the step that did not finish (see
    /// [`super::resume`]): Temporal resets it to the workflow task that scheduled that step,
    /// signals after it not reapplied, and a new run of the same workflow id goes on from
    /// there; its id is returned. `request_id` makes a repeat of the same request a no-op, and a
    /// run that is no longer the workflow's current one (it was resumed already) is not reset
    /// again: the current run's id is returned.
    async fn resume(
        &self,
        workflow_id: &str,
        run_id: &str,
        request_id: &str,
    ) -> Result<String, TemporalError>;
}

/// The gateway over a real Temporal server. It connects on first use, again after a failed
/// connection (so a process can start before Temporal does), and again when its credential
/// files were rotated.
pub struct TemporalGateway {
    settings: TemporalSettings,
    meter: Option<TemporalMeter>,
    connected: Mutex<Option<Connected>>,
    /// Whether the namespace has the step's search attribute, and when that was asked.
    image_id_attribute: Mutex<Option<(bool, Instant)>>,
}

/// A client and the credentials it was made with.
struct Connected {
    client: Client,
    credentials: CredentialsFingerprint,
    checked: Instant,
}

impl TemporalGateway {
    /// A gateway for the configured server; nothing is dialled yet.
    pub fn new(settings: TemporalSettings) -> Self {
        Self {
            settings,
            meter: None,
            connected: Mutex::new(None),
            image_id_attribute: Mutex::new(None),
        }
    }

    /// A gateway whose connections record their requests and long polls in `metrics`.
    pub fn metered(settings: TemporalSettings, metrics: &SdkMetrics) -> Self {
        Self {
            meter: metrics.client_meter(),
            ..Self::new(settings)
        }
    }

    async fn client(&self) -> Result<Client, TemporalError> {
        let mut connected = self.connected.lock().await;
        if let Some(current) = connected.as_mut() {
            if current.checked.elapsed() < CREDENTIALS_RECHECK {
                return Ok(current.client.clone());
            }
            let credentials = self.settings.credentials();
            if credentials == current.credentials {
                current.checked = Instant::now();
                return Ok(current.client.clone());
            }
            tracing::info!("Temporal credentials changed: reconnecting with the new ones");
        }
        let credentials = self.settings.credentials();
        let client = connect(&self.settings, self.meter.clone()).await?;
        *connected = Some(Connected {
            client: client.clone(),
            credentials,
            checked: Instant::now(),
        });
        Ok(client)
    }

    /// Whether workflows are started with the step's search attribute (asked of the server at
    /// most every [`REGISTRATION_RECHECK`]).
    async fn shows_steps(&self, client: &Client) -> bool {
        let mut known = self.image_id_attribute.lock().await;
        if let Some((registered, at)) = *known
            && at.elapsed() < REGISTRATION_RECHECK
        {
            return registered;
        }
        let registered = visibility::registered(client).await;
        *known = Some((registered, Instant::now()));
        registered
    }

    async fn handle(
        &self,
        workflow_id: &str,
    ) -> Result<WorkflowHandle<Client, ImageProcessing>, TemporalError> {
        Ok(self
            .client()
            .await?
            .get_workflow_handle::<ImageProcessing>(workflow_id))
    }

    /// Checks that the server answers: describing a workflow id nobody uses must come back
    /// as "not found".
    pub async fn health(&self) -> Result<(), TemporalError> {
        match self.snapshot("imagejob-operator-health-probe").await {
            Ok(_) | Err(TemporalError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn query_state(
        &self,
        handle: &WorkflowHandle<Client, ImageProcessing>,
    ) -> Option<WorkflowState> {
        let options = WorkflowQueryOptions::builder()
            .rpc_options(RpcOptions::builder().timeout(QUERY_DEADLINE).build())
            .build();
        match handle.query(GetStatus, (), options).await {
            Ok(state) => Some(state),
            Err(WorkflowQueryError::Rpc(status)) if status.code() == Code::DeadlineExceeded => None,
            Err(e) => {
                tracing::debug!(error = %e, "get_status query failed");
                None
            }
        }
    }
}

impl TemporalGateway {
    /// How the execution stands (one describe).
    pub async fn execution(&self, workflow_id: &str) -> Result<ExecutionStatus, TemporalError> {
        let description = self
            .handle(workflow_id)
            .await?
            .describe(WorkflowDescribeOptions::default())
            .await
            .map_err(from_interaction)?;
        execution_status(description.status())
    }

    /// What the workflow left, decoded from its close `event`; a close that hands over to a new
    /// run (or none read) is followed by `get_result`.
    async fn decode_close(
        &self,
        client: &Client,
        event: Option<HistoryEvent>,
        workflow_id: &str,
    ) -> Result<WorkflowSnapshot, TemporalError> {
        let decoded = match event {
            Some(event) => closed::from_close_event(event, client.data_converter()).await,
            None => None,
        };
        match decoded {
            Some(closed) => {
                let (closed, at) = closed?;
                Ok(closed.into_snapshot(None, None, at.or_else(|| Some(SystemTime::now()))))
            }
            None => self.wait_closed(workflow_id).await,
        }
    }
}

fn execution_status(status: WorkflowExecutionStatus) -> Result<ExecutionStatus, TemporalError> {
    Ok(match status {
        WorkflowExecutionStatus::Running => ExecutionStatus::Running,
        WorkflowExecutionStatus::Completed => ExecutionStatus::Completed,
        WorkflowExecutionStatus::Failed => ExecutionStatus::Failed,
        WorkflowExecutionStatus::Canceled => ExecutionStatus::Cancelled,
        WorkflowExecutionStatus::Terminated => ExecutionStatus::Terminated,
        WorkflowExecutionStatus::TimedOut => ExecutionStatus::TimedOut,
        other => {
            return Err(TemporalError::Rpc(format!(
                "unexpected workflow status {other:?}"
            )));
        }
    })
}

/// Whether the described run has not run a single workflow task: its history holds its start
/// and its first task's scheduling only, and no worker has taken that task.
fn never_ran(description: &WorkflowExecutionDescription) -> bool {
    let raw = description.raw();
    let events = raw
        .workflow_execution_info
        .as_ref()
        .map_or(i64::MAX, |info| info.history_length);
    let waiting = raw
        .pending_workflow_task
        .as_ref()
        .is_some_and(|task| task.state() == PendingWorkflowTaskState::Scheduled);
    events <= 2 && waiting
}

/// The current run's history as it is now, at most [`TIMELINE_EVENTS`] events.
async fn read_history(
    handle: &WorkflowHandle<Client, ImageProcessing>,
) -> Result<Vec<HistoryEvent>, TemporalError> {
    let options = WorkflowFetchHistoryOptions::builder()
        .skip_archival(true)
        .build();
    let events: Vec<_> = handle
        .fetch_history(options)
        .take(TIMELINE_EVENTS)
        .collect()
        .await;
    events
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(from_interaction)
}

/// Follows every event of the workflow's history with long polls until its close event, which
/// it returns (`None` if the history ended without one). `progressed` is called `window` after
/// a step was recorded, unless the workflow closed first; steps within that window share a call.
async fn follow_steps(
    handle: &WorkflowHandle<Client, ImageProcessing>,
    window: Duration,
    progressed: &(dyn Fn() + Send + Sync),
) -> Result<Option<HistoryEvent>, TemporalError> {
    let options = WorkflowFetchHistoryOptions::builder()
        .skip_archival(true)
        .wait_new_event(true)
        .build();
    let mut events = handle.fetch_history(options);
    // When the progress seen so far is reported, unless the workflow closes first.
    let mut report_at: Option<Instant> = None;
    loop {
        let next = match report_at {
            // Dropping `next()` on timeout leaves the stream's long poll running.
            Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    report_at = None;
                    progressed();
                    continue;
                }
            },
            None => events.next().await,
        };
        match next.transpose().map_err(from_interaction)? {
            None => return Ok(None),
            Some(event) => match history_step(&event) {
                HistoryStep::Closed => return Ok(Some(event)),
                HistoryStep::Progress => {
                    report_at.get_or_insert_with(|| report_time(&event, window));
                }
                HistoryStep::Other => {}
            },
        }
    }
}

#[async_trait]
impl WorkflowGateway for TemporalGateway {
    async fn start_dispatched(
        &self,
        workflow_id: &str,
        input: ImageProcessingInput,
        dispatch: Dispatch,
    ) -> Result<StartOutcome, TemporalError> {
        let client = self.client().await?;
        let step_attribute = self
            .shows_steps(&client)
            .await
            .then(|| SearchAttributes::new([IMAGE_ID_ATTRIBUTE.value_set(String::new())]));
        let options = WorkflowStartOptions::new(self.settings.task_queue.clone(), workflow_id)
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .priority(dispatch.priority())
            .maybe_search_attributes(step_attribute)
            .build();
        match client.start_workflow(ImageProcessing, input, options).await {
            Ok(handle) => Ok(StartOutcome {
                run_id: handle.info().run_id.clone(),
                already_started: false,
            }),
            Err(WorkflowStartError::AlreadyStarted { run_id, .. }) => Ok(StartOutcome {
                run_id,
                already_started: true,
            }),
            Err(WorkflowStartError::Rpc(status)) => Err(from_status(&status)),
            Err(e) => Err(TemporalError::Rpc(e.to_string())),
        }
    }

    async fn forget_catalog_image(&self, workflow_id: &str) -> Result<(), TemporalError> {
        let options = WorkflowStartOptions::new(
            similarity_task_queue(&self.settings.task_queue),
            forget_workflow_id(workflow_id),
        )
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .build();
        match self
            .client()
            .await?
            .start_workflow(ForgetImages, workflow_id.to_owned(), options)
            .await
        {
            Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(WorkflowStartError::Rpc(status)) => Err(from_status(&status)),
            Err(e) => Err(TemporalError::Rpc(e.to_string())),
        }
    }

    async fn snapshot(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        let handle = self.handle(workflow_id).await?;
        let description = handle
            .describe(WorkflowDescribeOptions::default())
            .await
            .map_err(from_interaction)?;
        let execution = execution_status(description.status())?;
        let run_id = Some(description.run_id().to_owned());
        if execution != ExecutionStatus::Running {
            let mut closed = self.close_of(workflow_id).await?;
            closed.run_id = run_id;
            closed.start_time = description.start_time();
            closed.close_time = description.close_time().or(closed.close_time);
            return Ok(closed);
        }
        // A workflow no worker has taken yet has no state to query (Temporal refuses the query).
        let state = if never_ran(&description) {
            None
        } else {
            self.query_state(&handle).await
        };
        Ok(Closed::running(state).into_snapshot(run_id, description.start_time(), None))
    }

    async fn close_of(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        let client = self.client().await?;
        let handle = client.get_workflow_handle::<ImageProcessing>(workflow_id);
        let close_only = WorkflowFetchHistoryOptions::builder()
            .skip_archival(true)
            .event_filter_type(HistoryEventFilterType::CloseEvent)
            .build();
        let event = handle.fetch_history(close_only).next().await;
        let event = event.transpose().map_err(from_interaction)?;
        self.decode_close(&client, event, workflow_id).await
    }

    async fn closed_since(&self, since: SystemTime) -> Result<Vec<ClosedRun>, TemporalError> {
        let client = self.client().await?;
        let query = visibility::closed_query(&self.settings.task_queue, since);
        let mut runs = client.list_workflows(query, WorkflowListOptions::default());
        let mut closed = Vec::new();
        while let Some(run) = runs.next().await {
            let run = run.map_err(visibility::list_error)?;
            closed.push(ClosedRun {
                workflow_id: run.id().to_owned(),
                run_id: run.run_id().to_owned(),
                start_time: run.start_time(),
                close_time: run.close_time(),
            });
        }
        Ok(closed)
    }

    async fn searching(&self) -> Result<Vec<SearchingRun>, TemporalError> {
        let client = self.client().await?;
        if !self.shows_steps(&client).await {
            return Ok(Vec::new());
        }
        let query = visibility::searching_query(&self.settings.task_queue);
        let mut runs = client.list_workflows(query, WorkflowListOptions::default());
        let mut searching = Vec::new();
        while let Some(run) = runs.next().await {
            searching.extend(visibility::searching_run(
                &run.map_err(visibility::list_error)?,
            ));
        }
        Ok(searching)
    }

    async fn stop_unrun(&self, workflow_id: &str) -> Result<Unrun, TemporalError> {
        let handle = self.handle(workflow_id).await?;
        let description = handle
            .describe(WorkflowDescribeOptions::default())
            .await
            .map_err(from_interaction)?;
        let execution = execution_status(description.status())?;
        if execution != ExecutionStatus::Running || !never_ran(&description) {
            return Ok(Unrun::Ran(execution));
        }
        let options = WorkflowTerminateOptions::builder()
            .reason(UNRUN_TERMINATION)
            .build();
        match handle.terminate(options).await {
            Ok(()) => Ok(Unrun::Terminated),
            // It closed between the two calls, so it ran: as it stands now.
            Err(WorkflowInteractionError::NotFound(_)) => {
                Ok(Unrun::Ran(self.execution(workflow_id).await?))
            }
            Err(e) => Err(from_interaction(e)),
        }
    }

    async fn signal_cancel(&self, workflow_id: &str) -> Result<(), TemporalError> {
        self.handle(workflow_id)
            .await?
            .signal(Cancel, (), WorkflowSignalOptions::default())
            .await
            .map_err(from_interaction)
    }

    async fn request_cancel(&self, workflow_id: &str) -> Result<(), TemporalError> {
        self.handle(workflow_id)
            .await?
            .cancel(WorkflowCancelOptions::default())
            .await
            .map_err(from_interaction)
    }

    async fn follow(
        &self,
        workflow_id: &str,
        window: Duration,
        progressed: &(dyn Fn() + Send + Sync),
    ) -> Result<WorkflowSnapshot, TemporalError> {
        let client = self.client().await?;
        let handle = client.get_workflow_handle::<ImageProcessing>(workflow_id);
        // Most workflows close within `window` of their start: their close event alone is
        // awaited first (one history read, as get_result makes); every event is followed, one
        // read per batch, only once the window passed without it.
        let close_only = WorkflowFetchHistoryOptions::builder()
            .skip_archival(true)
            .wait_new_event(true)
            .event_filter_type(HistoryEventFilterType::CloseEvent)
            .build();
        let mut close = handle.fetch_history(close_only);
        let close_event = match tokio::time::timeout(window, close.next()).await {
            Ok(next) => next.transpose().map_err(from_interaction)?,
            Err(_) => {
                // Dropping the stream cancels its long poll.
                drop(close);
                follow_steps(&handle, window, progressed).await?
            }
        };
        self.decode_close(&client, close_event, workflow_id).await
    }

    async fn timeline(&self, workflow_id: &str) -> Result<Vec<TimelineEntry>, TemporalError> {
        let events = read_history(&self.handle(workflow_id).await?).await?;
        Ok(timeline(&events))
    }

    async fn started_input(
        &self,
        workflow_id: &str,
    ) -> Result<ImageProcessingInput, TemporalError> {
        let client = self.client().await?;
        let handle = client.get_workflow_handle::<ImageProcessing>(workflow_id);
        let options = WorkflowFetchHistoryOptions::builder()
            .skip_archival(true)
            .build();
        let first = handle.fetch_history(options).next().await;
        let first = first.transpose().map_err(from_interaction)?;
        let Some(Attributes::WorkflowExecutionStartedEventAttributes(started)) =
            first.and_then(|event| event.attributes)
        else {
            return Err(TemporalError::Rpc(format!(
                "the history of {workflow_id} does not begin with its start"
            )));
        };
        let payload = started.input.and_then(|p| p.payloads.into_iter().next());
        let context = SerializationContextData::Workflow(WorkflowSerializationContext::new());
        client
            .data_converter()
            .from_payload(&context, payload.unwrap_or_default())
            .await
            .map_err(|e| TemporalError::Rpc(format!("decoding the workflow's input: {e}")))
    }

    async fn resume(
        &self,
        workflow_id: &str,
        run_id: &str,
        request_id: &str,
    ) -> Result<String, TemporalError> {
        let client = self.client().await?;
        let handle = client.get_workflow_handle::<ImageProcessing>(workflow_id);
        let current = handle
            .describe(WorkflowDescribeOptions::default())
            .await
            .map_err(from_interaction)?;
        if current.run_id() != run_id {
            return Ok(current.run_id().to_owned());
        }
        let events = read_history(&handle).await?;
        let point = resume_point(&events).ok_or_else(|| {
            TemporalError::Rpc(format!(
                "{workflow_id} has no completed step to resume from"
            ))
        })?;
        let request = ResetWorkflowExecutionRequest {
            namespace: client.namespace(),
            workflow_execution: Some(WorkflowExecution {
                workflow_id: workflow_id.to_owned(),
                run_id: run_id.to_owned(),
            }),
            reason: "retry from the step that did not finish".into(),
            workflow_task_finish_event_id: point,
            request_id: request_id.to_owned(),
            reset_reapply_exclude_types: [
                ResetReapplyExcludeType::Signal,
                ResetReapplyExcludeType::Update,
                ResetReapplyExcludeType::Nexus,
            ]
            .map(i32::from)
            .to_vec(),
            ..Default::default()
        };
        let reset = client
            .connection()
            .workflow_service()
            .reset_workflow_execution(request.into_request())
            .await
            .map_err(|status| from_status(&status))?;
        Ok(reset.into_inner().run_id)
    }

    async fn wait_closed(&self, workflow_id: &str) -> Result<WorkflowSnapshot, TemporalError> {
        let handle = self.handle(workflow_id).await?;
        let closed =
            closed::from_result(handle.get_result(WorkflowGetResultOptions::default()).await)?;
        Ok(closed.into_snapshot(None, None, Some(SystemTime::now())))
    }
}
