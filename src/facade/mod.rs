//! The REST facade: the seed's endpoints over ImageJobs, served from a watch cache, with bearer
//! auth, JSON errors, `/openapi.json`, an interactive explorer at `/docs` and the jobs page at
//! `/ui/`.

mod actions;
mod auth;
mod body;
mod bulk;
mod cache;
mod codec_server;
mod docs;
mod drain;
mod error;
mod events;
mod filter;
mod idempotency;
mod in_flight;
mod limits;
mod list_index;
mod metrics;
mod model;
mod quota;
mod router;
mod routes;
#[cfg(test)]
mod scenarios;
mod serve;
mod state;
mod ui;

pub use auth::{Auth, TokenFile};
pub use cache::JobCache;
pub use drain::{DrainStart, Draining};
pub use error::ApiError;
pub use limits::{DEFAULT_EVENT_STREAMS, DEFAULT_RESULT_WAITERS, Limits};
pub use metrics::FacadeMetrics;
pub use model::{ProcessResponse, ResultResponse, StatusResponse};
pub use quota::{CLIENT_LABEL, CreateQuota, QuotaSettings};
pub use router::{BODY_LIMIT, router};
pub use serve::{Drain, Ports, serve};
pub use state::FacadeState;
pub use ui::UiConfig;
