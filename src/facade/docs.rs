//! The OpenAPI document (generated from the handlers' annotations) and the interactive API
//! explorer (Swagger UI, served from the binary).

use super::{bulk, error, events, model, routes};
use axum::{
    Router,
    http::{HeaderValue, header},
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_swagger_ui::{Config, SwaggerUi};

#[derive(OpenApi)]
#[openapi(
    info(title = "imagejob-operator facade", description = "The image-processing REST API over ImageJobs."),
    paths(routes::process, routes::status, routes::result, routes::cancel, routes::retry, routes::delete, routes::list, routes::timeline, routes::summary, bulk::cancel, bulk::delete, events::events),
    components(schemas(model::ProcessRequest, model::Tag, model::ProcessResponse, model::StatusResponse, model::StateView,
        model::ResultResponse, model::ListResponse, model::WorkflowSummary, model::CancelResponse,
        model::RetryResponse, model::AttemptView,
        model::TimelineResponse, model::TimelineStep, model::ListOrder, bulk::BulkResponse, bulk::Skipped,
        error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI 3 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The interactive explorer at `/docs` (Swagger UI with its assets built into the binary:
/// nothing is fetched from the network), with "Authorize" for the bearer scheme and "Try it
/// out"; it also serves `/openapi.json`. A token given to "Authorize" lives in the page only
/// (not in the browser's storage), and no other site may frame the page (clickjacking).
pub fn explorer<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::from(
        SwaggerUi::new("/docs")
            .url("/openapi.json", openapi())
            .config(Config::default().persist_authorization(false)),
    )
    .layer(axum::middleware::map_response(no_framing))
}

/// Forbids framing the explorer's pages on other sites.
async fn no_framing(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
