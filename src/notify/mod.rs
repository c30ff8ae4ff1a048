//! Completion notifications: when a job ends, a CloudEvent (structured JSON) is POSTed to the
//! operator's sink and to the job's own, signed with an HMAC of the body. What is built and sent
//! lives here; when, and the record of each delivery (the job's status is the outbox), is the
//! controller's (`controller::notify`).

mod event;
mod sink;

pub use event::{EVENT_TYPE_PREFIX, completion_event};
pub use sink::{DeliveryError, Notifier, NotifySettings, SIGNATURE_HEADER, SinkError};
