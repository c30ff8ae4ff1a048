//! The public router (auth, body limits, response counting, drain) and what the facade answers
//! on its admin port.

use super::{
    auth::{self, Auth},
    body::{self, BodyLimits},
    bulk, codec_server, docs,
    error::ApiError,
    events, routes,
    state::FacadeState,
    ui::{self, UiConfig},
};
use crate::admin::AdminRole;
use async_trait::async_trait;
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use std::sync::Arc;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The public router: API routes behind auth; probes, docs and the jobs page open. Metrics are
/// on the admin port ([`crate::admin`]).
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
        .route("/images/workflow/{workflow_id}/retry", post(routes::retry))
        .route("/images/workflows", get(routes::list))
        .route("/images/workflows/cancel", post(bulk::cancel))
        .route("/images/workflows/delete", post(bulk::delete))
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

/// The facade on its admin port: ready once its cache is filled and until it drains.
#[async_trait]
impl AdminRole for FacadeState {
    fn name(&self) -> &'static str {
        "facade"
    }

    fn readiness(&self) -> Result<String, String> {
        if self.draining.is_draining() {
            Err("shutting down".into())
        } else if self.cache.is_ready() {
            Ok("ready".into())
        } else {
            Err("watch cache not filled yet".into())
        }
    }

    async fn metrics(&self) -> String {
        self.metrics.exposition.text().await
    }
}

/// The public port answers the readiness probe too (load balancers that probe the API port).
async fn readyz(State(state): State<Arc<FacadeState>>) -> Response {
    match state.readiness() {
        Ok(ready) => ready.into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
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
