//! The Couchbase backend against a real server, when one is configured through
//! `COUCHBASE_CONNSTR`, `COUCHBASE_USERNAME`, `COUCHBASE_PASSWORD` and `COUCHBASE_BUCKET`.
//! No Couchbase Server can be installed where this project's CI runs: there it prints why it
//! skipped.

use imagejob_operator::store::{CouchbaseSettings, CouchbaseStore, ImageDocument, MetadataStore};
use std::time::Duration;

#[tokio::test]
async fn documents_round_trip_through_a_live_couchbase() {
    let Ok(connection_string) = std::env::var("COUCHBASE_CONNSTR") else {
        eprintln!(
            "SKIPPED documents_round_trip_through_a_live_couchbase: COUCHBASE_CONNSTR is not set (no Couchbase Server can run here)"
        );
        return;
    };
    imagejob_operator::tls::install_crypto_provider();
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    let settings = CouchbaseSettings {
        connection_string,
        username: env("COUCHBASE_USERNAME", "Administrator"),
        password: env("COUCHBASE_PASSWORD", ""),
        bucket: env("COUCHBASE_BUCKET", "images"),
        scope: env("COUCHBASE_SCOPE", "_default"),
        collection: env("COUCHBASE_COLLECTION", "_default"),
        timeout: Duration::from_secs(10),
    };
    let store = CouchbaseStore::connect(&settings)
        .await
        .expect("connect to Couchbase");
    let doc = ImageDocument {
        image_id: uuid::Uuid::new_v4().to_string(),
        url: "https://example.com/image.jpg".into(),
        title: Some("Product Image".into()),
        description: Some("Blue shirt".into()),
        tags: vec!["clothing".into(), "shirt".into()],
        workflow_id: "image-processing-live-test".into(),
        created_at: "2026-01-01T00:00:00+00:00".into(),
    };
    store.upsert(&doc).await.expect("upsert");
    store.upsert(&doc).await.expect("upsert is idempotent");
    assert_eq!(store.get(&doc.image_id).await.expect("get"), Some(doc));
    assert_eq!(store.get("no-such-image").await.expect("get missing"), None);
}
