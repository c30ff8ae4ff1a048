//! The OpenAPI document (generated from the handlers' annotations) and a self-contained,
//! browsable docs page rendered from it (no external assets).

use super::{error, model, routes};
use axum::response::Html;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "imagejob-operator facade", description = "The image-processing REST API over ImageJobs."),
    paths(routes::process, routes::status, routes::result, routes::cancel, routes::list),
    components(schemas(model::ProcessRequest, model::Tag, model::ProcessResponse, model::StatusResponse, model::StateView,
        model::ResultResponse, model::ListResponse, model::WorkflowSummary, model::CancelResponse,
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `GET /docs`: every operation with its summary, and the full document.
pub async fn page() -> Html<String> {
    let doc = openapi();
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>imagejob-operator API</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code,pre{background:#f4f4f4}\
         h3{margin-bottom:0.2em}</style></head><body><h1>imagejob-operator API</h1>\
         <p>Authenticate with <code>Authorization: Bearer &lt;token&gt;</code>. Errors are \
         <code>{\"error\": {\"code\", \"message\", \"field\"?}}</code>. Machine-readable: \
         <a href=\"/openapi.json\">/openapi.json</a>.</p>",
    );
    for (path, item) in &doc.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("DELETE", &item.delete),
        ];
        for (method, operation) in operations {
            let Some(op) = operation else { continue };
            let text = op
                .description
                .clone()
                .or_else(|| op.summary.clone())
                .unwrap_or_default();
            html.push_str(&format!(
                "<h3><code>{method} {}</code></h3><p>{}</p>",
                escape(path),
                escape(&text)
            ));
        }
    }
    let json = serde_json::to_string_pretty(&doc).unwrap_or_default();
    html.push_str(&format!(
        "<h2>OpenAPI document</h2><pre>{}</pre></body></html>",
        escape(&json)
    ));
    Html(html)
}
