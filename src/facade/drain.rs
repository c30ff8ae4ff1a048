//! Leaving the Service without dropping a request. On shutdown the facade first reports itself
//! not ready (Kubernetes takes it out of the Service's endpoints), answers the requests that
//! wait (`GET .../result` with `202` and `Retry-After: 1`, so the client asks again and reaches
//! another replica; the event streams end, and browsers reconnect), and keeps serving new
//! requests for the drain period: those routed to it before every proxy saw it leave. Only then
//! does it stop accepting and finish what is in flight.

use tokio::sync::watch;

/// Whether the facade is draining. Clones watch the same drain.
#[derive(Clone, Debug)]
pub struct Draining(watch::Receiver<bool>);

/// Starts the drain of the [`Draining`] made with it.
#[derive(Debug)]
pub struct DrainStart(watch::Sender<bool>);

impl DrainStart {
    /// Starts draining (again is harmless).
    pub fn start(&self) {
        self.0.send_replace(true);
    }
}

impl Draining {
    /// A drain and what starts it.
    pub fn new() -> (DrainStart, Self) {
        let (start, draining) = watch::channel(false);
        (DrainStart(start), Self(draining))
    }

    /// A facade that never drains (embedded in tests or tools).
    pub fn never() -> Self {
        Self::new().1
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has started; never, if it cannot start any more.
    pub async fn started(&self) {
        let mut draining = self.0.clone();
        if draining.wait_for(|started| *started).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// What `wait` gives, or `None` once the drain starts first (a wait cut short).
    pub async fn or_drain<F: Future>(&self, wait: F) -> Option<F::Output> {
        tokio::select! {
            output = wait => Some(output),
            () = self.started() => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_drain_is_seen_by_every_clone_and_a_facade_that_never_drains_waits_forever() {
        let (start, draining) = Draining::new();
        let other = draining.clone();
        assert!(!draining.is_draining());
        assert!(draining.started().now_or_never().is_none());
        assert_eq!(draining.or_drain(async { 7 }).await, Some(7));
        start.start();
        assert!(other.is_draining());
        assert!(other.started().now_or_never().is_some());
        assert_eq!(other.or_drain(std::future::pending::<u8>()).await, None);

        let never = Draining::never();
        assert!(!never.is_draining());
        assert!(never.started().now_or_never().is_none());
    }
}
