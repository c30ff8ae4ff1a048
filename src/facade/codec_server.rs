//! The remote codec endpoint of the Temporal UI and CLI (`POST /codec/encode`,
//! `POST /codec/decode`), so operators still read encrypted payloads in the Temporal UI. Behind
//! the API's bearer auth; CORS admits the Temporal UI's origin (`FACADE_TEMPORAL_UI_URL`).
//! Served only when payload encryption is on.

use super::{
    auth::{self, Auth},
    body::{self, BodyLimits},
    error::ApiError,
    routes::parse_json,
};
use crate::temporal::codec::{CodecError, PayloadCipher};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware,
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use temporalio_common::protos::temporal::api::common::v1::Payload;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Largest codec request: the UI sends a page of history's payloads at once.
pub const CODEC_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Payloads in the protobuf JSON form the UI sends: metadata values and data in base64.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct CodecPayloads {
    /// The payloads, in order.
    pub payloads: Vec<CodecPayload>,
}

/// One payload.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct CodecPayload {
    /// Metadata, values in base64.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Data in base64.
    #[serde(default)]
    pub data: String,
}

fn from_json(index: usize, payload: CodecPayload) -> Result<Payload, ApiError> {
    let invalid = |field: String| ApiError::InvalidField {
        field,
        message: "not base64".into(),
    };
    let metadata = payload
        .metadata
        .into_iter()
        .map(|(key, value)| {
            STANDARD
                .decode(&value)
                .map(|bytes| (key.clone(), bytes))
                .map_err(|_| invalid(format!("payloads[{index}].metadata.{key}")))
        })
        .collect::<Result<_, _>>()?;
    let data = STANDARD
        .decode(&payload.data)
        .map_err(|_| invalid(format!("payloads[{index}].data")))?;
    Ok(Payload {
        metadata,
        data,
        ..Default::default()
    })
}

fn to_json(payload: Payload) -> CodecPayload {
    CodecPayload {
        metadata: payload
            .metadata
            .into_iter()
            .map(|(key, value)| (key, STANDARD.encode(value)))
            .collect(),
        data: STANDARD.encode(payload.data),
    }
}

fn convert(
    cipher: &PayloadCipher,
    headers: &HeaderMap,
    body: &Bytes,
    step: impl Fn(&PayloadCipher, Payload) -> Result<Payload, CodecError>,
) -> Result<Json<CodecPayloads>, ApiError> {
    let request: CodecPayloads = parse_json(headers, body)?;
    let payloads = request
        .payloads
        .into_iter()
        .enumerate()
        .map(|(index, payload)| {
            let payload = from_json(index, payload)?;
            step(cipher, payload)
                .map(to_json)
                .map_err(|e| ApiError::InvalidField {
                    field: format!("payloads[{index}]"),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(CodecPayloads { payloads }))
}

async fn encode(
    State(cipher): State<PayloadCipher>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CodecPayloads>, ApiError> {
    convert(&cipher, &headers, &body, |c, p| c.encrypt(&p))
}

async fn decode(
    State(cipher): State<PayloadCipher>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CodecPayloads>, ApiError> {
    convert(&cipher, &headers, &body, PayloadCipher::decrypt)
}

/// What the CORS layer leaves to the route for an OPTIONS request: nothing.
async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The codec routes behind `auth`, with CORS for `ui_origin` answered before auth (a browser's
/// preflight carries no token).
pub fn routes<S: Clone + Send + Sync + 'static>(
    cipher: PayloadCipher,
    ui_origin: Option<HeaderValue>,
    auth: Auth,
) -> Router<S> {
    let cors = CorsLayer::new()
        .allow_origin(ui_origin.map_or_else(AllowOrigin::default, |o| AllowOrigin::list([o])))
        .allow_methods([Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-namespace"),
        ])
        .allow_credentials(true);
    Router::new()
        // OPTIONS has a route of its own: the facade's method-not-allowed fallback would
        // otherwise answer a preflight before the CORS layer sees it.
        .route("/codec/encode", post(encode).options(preflight))
        .route("/codec/decode", post(decode).options(preflight))
        .route_layer(middleware::from_fn_with_state(
            BodyLimits::new(CODEC_BODY_LIMIT),
            body::read_within,
        ))
        .route_layer(middleware::from_fn_with_state(auth, auth::require_token))
        .layer(DefaultBodyLimit::max(CODEC_BODY_LIMIT))
        .with_state(cipher)
        .layer(cors)
}
