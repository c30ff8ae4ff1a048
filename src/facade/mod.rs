//! The REST facade: the seed's endpoints over ImageJobs, served from a watch cache, with bearer
//! auth, JSON errors, `/openapi.json`, an interactive explorer at `/docs` and the jobs page at
//! `/ui/`.

mod auth;
mod body;
mod cache;
mod codec_server;
mod docs;
mod drain;
mod error;
mod events;
mod idempotency;
mod in_flight;
mod limits;
mod list_index;
mod model;
mod quota;
mod routes;
mod serve;
mod ui;

pub use auth::{Auth, TokenFile};
pub use cache::JobCache;
pub use drain::{DrainStart, Draining};
pub use error::ApiError;
pub use limits::{DEFAULT_EVENT_STREAMS, DEFAULT_RESULT_WAITERS, Limits};
pub use model::{ProcessResponse, ResultResponse, StatusResponse};
pub use quota::{CLIENT_LABEL, CreateQuota, QuotaSettings};
pub use serve::{HEADER_READ_TIMEOUT, serve};
pub use ui::UiConfig;

use crate::{
    crd::ImageJob,
    metrics::SharedMetrics,
    temporal::{PayloadCipher, WorkflowGateway},
};
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use body::BodyLimits;
use kube::Api;
use std::sync::Arc;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the handlers share.
pub struct FacadeState {
    /// ImageJobs in the facade's namespace.
    pub api: Api<ImageJob>,
    /// That namespace.
    pub namespace: String,
    /// The watch cache.
    pub cache: JobCache,
    /// Temporal, for the full results.
    pub gateway: Arc<dyn WorkflowGateway>,
    /// Default of `similarity_search`.
    pub similarity_default: bool,
    /// `ttlSecondsAfterFinished` of the jobs the facade creates (none when `None`).
    pub job_ttl: Option<u32>,
    /// Metrics.
    pub metrics: SharedMetrics,
    /// Base URL of the Temporal UI, for the jobs page's links.
    pub temporal_ui_url: Option<String>,
    /// The Temporal namespace.
    pub temporal_namespace: String,
    /// Payload encryption, when on: served to the Temporal UI as a remote codec.
    pub codec: Option<PayloadCipher>,
    /// Set once the facade is shutting down (see [`Draining`]).
    pub draining: Draining,
    /// Caps on waiting `/result` requests and event streams.
    pub limits: Limits,
    /// Per-client limits on creating jobs.
    pub quota: CreateQuota,
}

/// The public router: API routes behind auth; probes, docs and the jobs page open. Metrics are
/// on the [`admin_router`].
pub fn router(state: Arc<FacadeState>, auth: Auth) -> Router {
    let page = ui::routes(UiConfig {
        auth_required: matches!(auth, Auth::Tokens(_)),
        temporal_ui_url: state.temporal_ui_url.clone(),
        temporal_namespace: state.temporal_namespace.clone(),
    });
    let api = Router::new()
        .route("/images/process", post(routes::process))
        .route("/images/workflow/{workflow_id}/status", get(routes::status))
        .route("/images/workflow/{workflow_id}/result", get(routes::result))
        .route(
            "/images/workflow/{workflow_id}/cancel",
            post(routes::cancel),
        )
        .route(
            "/images/workflow/{workflow_id}/timeline",
            get(routes::timeline),
        )
        .route(
            "/images/workflow/{workflow_id}",
            get(routes::summary).delete(routes::delete),
        )
        .route("/images/workflows", get(routes::list))
        .route("/images/events", get(events::events))
        .route_layer(middleware::from_fn_with_state(
            BodyLimits::new(BODY_LIMIT),
            body::read_within,
        ))
        .route_layer(middleware::from_fn_with_state(
            auth.clone(),
            auth::require_token,
        ));
    let codec = state.codec.clone().map(|cipher| {
        let ui_origin = state
            .temporal_ui_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| HeaderValue::from_str(&u.origin().ascii_serialization()).ok());
        codec_server::routes(cipher, ui_origin, auth)
    });
    Router::new()
        .merge(api)
        .merge(codec.unwrap_or_default())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(docs::explorer())
        .merge(page)
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// The admin router, for the admin port only (neither the Service nor the Ingress publishes
/// it): probes and `/metrics`.
pub fn admin_router(state: Arc<FacadeState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<FacadeState>>) -> Response {
    if state.draining.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if state.cache.is_ready() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watch cache not filled yet",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<FacadeState>>) -> String {
    state.metrics.exposition().await
}

/// Counts responses by class. While the facade drains, each response closes its connection,
/// so a client's next request opens a new one, to a replica that stays, instead of reusing one
/// this replica is about to close.
async fn count(State(state): State<Arc<FacadeState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    state.metrics.http_response(response.status().as_u16());
    if state.draining.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
