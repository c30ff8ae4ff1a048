//! The jobs page at `/ui/`: plain HTML, CSS and JavaScript built into the binary (no CDN, no
//! network at run time), served with a strict Content-Security-Policy and ETag revalidation.
//! The page reads the same API as any client (with the user's bearer token when auth is on) and
//! is kept live by `GET /images/events`.

use crate::digest::sha256_hex;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Serialize;
use std::sync::{Arc, LazyLock};

/// Images come from wherever the jobs' URLs point (http or https); everything else only from
/// the facade itself; no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src http: https:; \
    connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// What the page needs to know of this deployment, at `/ui/config.json`.
#[derive(Clone, Debug, Serialize)]
pub struct UiConfig {
    /// Whether the API wants a bearer token (the page then asks for one).
    pub auth_required: bool,
    /// Base URL of the Temporal UI, for links to each workflow; none when unset.
    pub temporal_ui_url: Option<String>,
    /// The Temporal namespace, for those links.
    pub temporal_namespace: String,
}

/// One built-in file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let etag = format!("\"{}\"", &sha256_hex(body.as_bytes())[..20]);
        Self {
            body,
            content_type,
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
        }
    }

    /// The file, or `304` when the browser's copy is current.
    fn serve(&self, request: &HeaderMap) -> Response {
        let current = request
            .get(header::IF_NONE_MATCH)
            .is_some_and(|tag| tag == self.etag);
        let mut response = if current {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            ([(header::CONTENT_TYPE, self.content_type)], self.body).into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        secure(headers);
        response
    }
}

/// Headers every page response carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("index.html"), "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("app.js"), "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("app.css"), "text/css; charset=utf-8"));

async fn serve_config(State(config): State<Arc<UiConfig>>) -> Response {
    let mut response = Json(config.as_ref().clone()).into_response();
    secure(response.headers_mut());
    response
}

/// The page's routes: `/` and `/ui` lead to `/ui/`.
pub fn routes<S>(config: UiConfig) -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route(
            "/ui/",
            get(|headers: HeaderMap| async move { INDEX.serve(&headers) }),
        )
        .route(
            "/ui/app.js",
            get(|headers: HeaderMap| async move { SCRIPT.serve(&headers) }),
        )
        .route(
            "/ui/app.css",
            get(|headers: HeaderMap| async move { STYLE.serve(&headers) }),
        )
        .route("/ui/config.json", get(serve_config))
        .with_state(Arc::new(config))
}
