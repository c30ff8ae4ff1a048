//! The client side of Temporal, all the controller and the facade use: the connection (address,
//! TLS, API key, payload codec), the gateway that starts, reads and cancels workflows, and
//! history reading.

mod closed;
mod codec;
mod connection;
mod gateway;
mod history;

pub use codec::{CodecError, PayloadCipher};
pub use connection::{CREDENTIALS_RECHECK, CredentialsFingerprint, TemporalSettings, connect};
pub use gateway::{
    ExecutionStatus, GatewayError, StartOutcome, TemporalGateway, WorkflowGateway, WorkflowSnapshot,
};
pub use history::TimelineEntry;
