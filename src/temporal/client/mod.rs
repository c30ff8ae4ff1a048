//! The client side of Temporal, all the controller and the facade use: the gateway that starts,
//! reads, cancels and resumes workflows (by their contract's names), and history reading.

mod closed;
mod gateway;
mod history;
mod resume;
mod snapshot;
mod visibility;

pub use closed::UNRUN_TERMINATION;
pub use gateway::{TemporalGateway, WorkflowGateway};
pub use history::TimelineEntry;
pub use snapshot::{
    ClosedRun, Dispatch, ExecutionStatus, SearchingRun, StartOutcome, Unrun, WorkflowSnapshot,
};
