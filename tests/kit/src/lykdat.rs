//! A local HTTP server speaking Lykdat's documented global search shapes, answering from a
//! script of replies, and recording what it received.

use axum::{Router, extract::State, http::StatusCode, routing::post};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// HTTP status and body, after an optional delay.
    Status(u16, String, Duration),
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
        Reply::Status(200, body.to_string(), Duration::ZERO)
    }

    /// An error status with a JSON message.
    pub fn error(status: u16, message: &str) -> Self {
        Reply::Status(
            status,
            serde_json::json!({"message": message}).to_string(),
            Duration::ZERO,
        )
    }

    /// This reply, after a delay.
    pub fn after(self, delay: Duration) -> Self {
        let Reply::Status(s, b, _) = self;
        Reply::Status(s, b, delay)
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    last: Option<Reply>,
    forms: Vec<Vec<(String, String)>>,
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
}

async fn search(State(script): State<Arc<Mutex<Script>>>, body: String) -> (StatusCode, String) {
    let reply = {
        let mut s = script.lock().expect("lock");
        s.forms.push(
            url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect(),
        );
        let next = s.replies.pop_front().or_else(|| s.last.clone());
        s.last = next.clone();
        next
    };
    let Some(Reply::Status(status, body, delay)) = reply else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no scripted reply".into(),
        );
    };
    tokio::time::sleep(delay).await;
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}
