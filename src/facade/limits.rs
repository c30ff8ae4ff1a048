//! Caps on what one facade replica holds open: requests waiting in `/result` and event streams.
//! Beyond a cap the request is answered at once with 503 and `Retry-After`, so a flood of
//! waiters cannot take the replica's memory and tasks; other requests are not affected.

use super::error::ApiError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default most `/result` requests waiting at once.
pub const DEFAULT_RESULT_WAITERS: usize = 1_000;
/// Default most event streams open at once.
pub const DEFAULT_EVENT_STREAMS: usize = 500;

/// The caps of one replica.
#[derive(Clone)]
pub struct Limits {
    result_waiters: Arc<Semaphore>,
    event_streams: Arc<Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(DEFAULT_RESULT_WAITERS, DEFAULT_EVENT_STREAMS)
    }
}

impl Limits {
    /// At most `result_waiters` waiting `/result` requests and `event_streams` open streams.
    pub fn new(result_waiters: usize, event_streams: usize) -> Self {
        Self {
            result_waiters: Arc::new(Semaphore::new(result_waiters)),
            event_streams: Arc::new(Semaphore::new(event_streams)),
        }
    }

    /// A place for one `/result` waiter, held until dropped; 503 when all are taken.
    pub fn result_waiter(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.result_waiters
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy("result waiters"))
    }

    /// A place for one event stream, held until dropped; 503 when all are taken.
    pub fn event_stream(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.event_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy("event streams"))
    }
}
