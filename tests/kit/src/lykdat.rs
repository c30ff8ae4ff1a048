//! A local HTTP server speaking Lykdat's documented global search shapes, answering from a
//! script of replies, and recording what it received.

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// One scripted answer: an HTTP status and body, after a delay, with a `Retry-After` header
/// when given.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    body: String,
    delay: Duration,
    retry_after: Option<String>,
}

impl Reply {
    /// 200 with the documented response shape and these (name, score) products.
    pub fn ok(products: &[(&str, f64)]) -> Self {
        let products = products
            .iter()
            .enumerate()
            .map(|(i, (name, score))| {
                serde_json::json!({"id": i.to_string(), "name": name, "brand_name": null, "vendor": "shop",
                    "url": format!("https://shop.example/{i}"), "matching_image": "https://shop.example/i.jpg",
                    "images": [], "price": "19.99", "reduced_price": null, "currency": "USD",
                    "category": "tops", "sub_category": null, "gender": null, "score": score})
            })
            .collect();
        Self::products(products)
    }

    /// 200 with the documented response shape and these products (Lykdat's product objects).
    pub fn products(products: Vec<serde_json::Value>) -> Self {
        let body = serde_json::json!({"data": {"query_image": "https://example.com/q.jpg", "result_groups": [
            {"average_score": 0.8, "max_score": 0.9, "rank_score": 0.85,
             "detected_item": {"name": "shirt", "category": "tops", "area": 0.4, "detection_confidence": 0.97,
                "bounding_box": {"top": 0.1, "left": 0.2, "right": 0.8, "bottom": 0.9}},
             "similar_products": products}]}});
        Self::raw(200, &body.to_string())
    }

    /// This status and body as they are.
    pub fn raw(status: u16, body: &str) -> Self {
        Reply {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    }

    /// An error status with a JSON message.
    pub fn error(status: u16, message: &str) -> Self {
        Self::raw(status, &serde_json::json!({"message": message}).to_string())
    }

    /// This reply, after a delay.
    pub fn after(self, delay: Duration) -> Self {
        Reply { delay, ..self }
    }

    /// This reply with `Retry-After: <value>`.
    pub fn retry_after(self, value: &str) -> Self {
        Reply {
            retry_after: Some(value.to_owned()),
            ..self
        }
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    last: Option<Reply>,
    forms: Vec<Vec<(String, String)>>,
    /// When each request arrived.
    times: Vec<Instant>,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeLykdat {
    /// Its base URL.
    pub base_url: String,
    script: Arc<Mutex<Script>>,
}

impl FakeLykdat {
    /// Serves `replies` in order; the last one repeats.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let script = Arc::new(Mutex::new(Script {
            replies: replies.into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/global/search", post(search))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, script }
    }

    /// The form fields of every request received so far.
    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.script.lock().expect("lock").forms.clone()
    }

    /// When each request arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.script.lock().expect("lock").times.clone()
    }
}

async fn search(State(script): State<Arc<Mutex<Script>>>, body: String) -> Response {
    let reply = {
        let mut s = script.lock().expect("lock");
        s.times.push(Instant::now());
        s.forms.push(
            url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect(),
        );
        let next = s.replies.pop_front().or_else(|| s.last.clone());
        s.last = next.clone();
        next
    };
    let Some(reply) = reply else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no scripted reply").into_response();
    };
    tokio::time::sleep(reply.delay).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, reply.body).into_response();
    if let Some(value) = reply
        .retry_after
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
