//! The real Lykdat client against a local HTTP server speaking Lykdat's documented shapes.

use imagejob_testkit as support;

use imagejob_operator::similarity::LykdatError;
use std::time::Duration;
use support::lykdat::{FakeLykdat, Reply};

#[tokio::test]
async fn success_sends_the_form_and_flattens_results_best_first() {
    let fake = FakeLykdat::start(vec![Reply::ok(&[("b", 0.5), ("a", 0.9)])]).await;
    let client = support::lykdat_client(&fake.base_url, Some("key-1"), Duration::from_secs(5));
    let results = client
        .global_search("https://example.com/shirt.jpg")
        .await
        .unwrap();
    let names: Vec<_> = results.products.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(results.products[0].price.as_deref(), Some("19.99"));
    let form = &fake.requests()[0];
    assert!(form.contains(&("api_key".into(), "key-1".into())));
    assert!(form.contains(&("image_url".into(), "https://example.com/shirt.jpg".into())));
}

#[tokio::test]
async fn unauthorized_is_not_retryable_and_keeps_the_message() {
    let fake = FakeLykdat::start(vec![Reply::error(401, "invalid api key")]).await;
    let client = support::lykdat_client(&fake.base_url, Some("bad"), Duration::from_secs(5));
    let err = client
        .global_search("https://example.com/a.jpg")
        .await
        .unwrap_err();
    assert!(
        matches!(err, LykdatError::Rejected { status: 401, ref message } if message == "invalid api key"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn rate_limit_and_server_errors_are_retryable() {
    let fake = FakeLykdat::start(vec![
        Reply::error(429, "slow down"),
        Reply::error(503, "maintenance"),
    ])
    .await;
    let client = support::lykdat_client(&fake.base_url, Some("k"), Duration::from_secs(5));
    for expected in [429, 503] {
        let err = client
            .global_search("https://example.com/a.jpg")
            .await
            .unwrap_err();
        assert!(
            matches!(err, LykdatError::Unavailable { status, .. } if status == expected),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn malformed_json_is_an_error() {
    let fake = FakeLykdat::start(vec![Reply::raw(200, "<html>oops</html>")]).await;
    let client = support::lykdat_client(&fake.base_url, Some("k"), Duration::from_secs(5));
    let err = client
        .global_search("https://example.com/a.jpg")
        .await
        .unwrap_err();
    assert!(matches!(err, LykdatError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let fake =
        FakeLykdat::start(vec![Reply::ok(&[("a", 0.9)]).after(Duration::from_secs(5))]).await;
    let client = support::lykdat_client(&fake.base_url, Some("k"), Duration::from_millis(300));
    let err = client
        .global_search("https://example.com/a.jpg")
        .await
        .unwrap_err();
    assert!(matches!(err, LykdatError::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn without_a_key_nothing_is_sent() {
    let fake = FakeLykdat::start(vec![Reply::ok(&[])]).await;
    let client = support::lykdat_client(&fake.base_url, None, Duration::from_secs(5));
    let err = client
        .global_search("https://example.com/a.jpg")
        .await
        .unwrap_err();
    assert!(matches!(err, LykdatError::NotConfigured));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn an_error_echoing_the_key_does_not_pass_it_on() {
    let fake = FakeLykdat::start(vec![Reply::error(
        401,
        "invalid api_key=secret-key-7f2c in request",
    )])
    .await;
    let client = support::lykdat_client(
        &fake.base_url,
        Some("secret-key-7f2c"),
        Duration::from_secs(5),
    );
    let error = client
        .global_search("http://127.0.0.1:9/a.jpg")
        .await
        .unwrap_err()
        .to_string();
    assert!(!error.contains("secret-key-7f2c"), "{error}");
    assert!(error.contains("invalid api_key=<redacted>"), "{error}");
}
