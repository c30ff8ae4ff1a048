//! Everything Temporal, in layers (docs/architecture.md): the workflows' [`contract`] at the
//! bottom; [`error`], [`codec`], [`connection`] and [`sdk_metrics`] above it; [`client`] (what
//! the controller and the facade use) and [`worker`] (the workflows, their activities, the
//! worker loop) on top, beside each other: neither imports the other.

pub mod client;
pub mod codec;
pub mod connection;
pub mod contract;
pub mod error;
pub mod sdk_metrics;
pub mod worker;
