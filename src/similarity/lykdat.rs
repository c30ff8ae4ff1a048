//! Client for Lykdat's global visual search (`POST /v1/global/search`, form fields `api_key` and
//! `image_url`). The public record of the response is partial, so parsing is tolerant: every
//! field but the product list's shape is optional, prices are kept as strings.

use super::results::{LYKDAT, SimilarProduct, SimilarityResults};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

/// Path of the global search endpoint under the base URL.
const GLOBAL_SEARCH_PATH: &str = "v1/global/search";

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum LykdatError {
    /// No API key is configured (`LYKDAT_API_KEY`).
    #[error("similarity search skipped: LYKDAT_API_KEY is not configured")]
    NotConfigured,
    /// Lykdat refused the request (bad key, bad image...): retrying will not help.
    #[error("Lykdat rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status code.
        status: u16,
        /// Lykdat's message, as sent.
        message: String,
    },
    /// Lykdat is overloaded (429) or failing (5xx): retrying may help.
    #[error("Lykdat is unavailable (HTTP {status}): {message}")]
    Unavailable {
        /// HTTP status code.
        status: u16,
        /// Lykdat's message, as sent.
        message: String,
        /// How long Lykdat asked us to wait (`Retry-After`), when it said.
        retry_after: Option<Duration>,
    },
    /// No answer within the configured timeout.
    #[error("Lykdat did not answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be sent or the answer not read.
    #[error("Lykdat request failed: {0}")]
    Transport(String),
    /// The answer was not the JSON we know.
    #[error("Lykdat answered with malformed JSON: {0}")]
    Malformed(String),
}

/// The longest `Retry-After` honoured: a longer one is taken as this (the activity's own retry
/// policy still bounds the attempts).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A `Retry-After` value: delta-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

impl LykdatError {
    /// How long to wait before the next attempt, when Lykdat said (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LykdatError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            LykdatError::NotConfigured | LykdatError::Rejected { .. }
        )
    }
}

#[derive(Deserialize)]
struct SearchResponse {
    data: SearchData,
}

#[derive(Deserialize)]
struct SearchData {
    #[serde(default)]
    query_image: Option<String>,
    #[serde(default)]
    result_groups: Vec<ResultGroup>,
}

#[derive(Deserialize)]
struct ResultGroup {
    #[serde(default)]
    similar_products: Vec<SimilarProduct>,
}

/// Parses a global search answer and flattens it, best match first.
pub fn parse_search_response(body: &[u8]) -> Result<SimilarityResults, LykdatError> {
    let response: SearchResponse =
        serde_json::from_slice(body).map_err(|e| LykdatError::Malformed(e.to_string()))?;
    let mut products: Vec<SimilarProduct> = response
        .data
        .result_groups
        .into_iter()
        .flat_map(|g| g.similar_products)
        .collect();
    products.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(SimilarityResults {
        query_image: response.data.query_image,
        products,
        backend: Some(LYKDAT.into()),
        descriptor: None,
    })
}

/// Lykdat's message out of an error body, or the body itself when it is not JSON.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error", "detail"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str().map(str::to_owned)))
        })
        .unwrap_or_else(|| text.chars().take(500).collect())
}

/// A Lykdat client. The API key never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct LykdatClient {
    http: reqwest::Client,
    search_url: Url,
    api_key: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for LykdatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LykdatClient")
            .field("search_url", &self.search_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl LykdatClient {
    /// A client for the API under `base_url` (e.g. `https://cloudapi.lykdat.com`).
    pub fn new(
        base_url: &Url,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, LykdatError> {
        let mut base = base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let search_url = base
            .join(GLOBAL_SEARCH_PATH)
            .map_err(|e| LykdatError::Transport(format!("bad base URL: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| LykdatError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            search_url,
            api_key: api_key.filter(|k| !k.is_empty()),
            timeout,
        })
    }

    /// Whether an API key is configured.
    pub fn is_configured(&self) -> bool {
        self.api_key.is_some()
    }

    /// Searches Lykdat's whole product index for items like the image at `image_url`.
    pub async fn global_search(&self, image_url: &str) -> Result<SimilarityResults, LykdatError> {
        let api_key = self.api_key.as_deref().ok_or(LykdatError::NotConfigured)?;
        let form = [("api_key", api_key), ("image_url", image_url)];
        let response = self
            .http
            .post(self.search_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, chrono::Utc::now()));
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            return parse_search_response(&body);
        }
        // An upstream that echoes the request (the key travels in its form) leaks nothing:
        // this message reaches the job's status and the API.
        let message = error_message(&body).replace(api_key, "<redacted>");
        let status = status.as_u16();
        if status == 429 || status >= 500 {
            Err(LykdatError::Unavailable {
                status,
                message,
                retry_after: wait,
            })
        } else {
            Err(LykdatError::Rejected { status, message })
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> LykdatError {
        if e.is_timeout() {
            LykdatError::Timeout(self.timeout)
        } else {
            // Without the URL: it is ours, and the key travels in the body anyway.
            LykdatError::Transport(e.without_url().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .expect("a time")
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Fri, 04 Dec 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Fri, 04 Dec 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn parses_the_documented_shape_and_sorts_by_score() {
        let body = br#"{"data":{"query_image":"https://x/q.jpg","result_groups":[
            {"average_score":0.8,"detected_item":{"name":"shirt","category":null},
             "similar_products":[{"id":"1","name":"A","price":"5.99","reduced_price":null,
               "currency":"USD","score":0.5,"images":["i"],"gender":null},
               {"id":"2","name":"B","score":0.9}]},
            {"similar_products":[{"id":"3","name":"C","brand_name":"Z","score":0.7}]}]}}"#;
        let results = parse_search_response(body).unwrap();
        assert_eq!(results.query_image.as_deref(), Some("https://x/q.jpg"));
        let names: Vec<_> = results.products.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["B", "C", "A"]);
        assert_eq!(results.products[2].price.as_deref(), Some("5.99"));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_search_response(b"<html>"),
            Err(LykdatError::Malformed(_))
        ));
        assert!(matches!(
            parse_search_response(b"{}"),
            Err(LykdatError::Malformed(_))
        ));
    }

    #[test]
    fn error_messages_are_kept() {
        assert_eq!(
            error_message(br#"{"message":"invalid api key"}"#),
            "invalid api key"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
    }

    #[test]
    fn debug_hides_the_key() {
        let base = Url::parse("http://127.0.0.1:1").unwrap();
        let c = LykdatClient::new(&base, Some("k3y".into()), Duration::from_secs(1)).unwrap();
        assert!(!format!("{c:?}").contains("k3y"));
        assert_eq!(c.search_url.as_str(), "http://127.0.0.1:1/v1/global/search");
    }
}
