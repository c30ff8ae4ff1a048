//! The Couchbase backend (the seed's production store), through the official `couchbase` crate.

use super::metadata::{ImageDocument, MetadataStore, StoreError};
use async_trait::async_trait;
use couchbase::{
    authenticator::PasswordAuthenticator,
    cluster::Cluster,
    collection::Collection,
    error::{Error as CbError, ErrorKind},
    options::cluster_options::ClusterOptions,
};
use std::time::Duration;

/// Where and how to reach Couchbase. The password never appears in `Debug` output.
#[derive(Clone)]
pub struct CouchbaseSettings {
    /// Connection string, e.g. `couchbase://db.example.com`.
    pub connection_string: String,
    /// User name.
    pub username: String,
    /// Password (from env or a Kubernetes Secret).
    pub password: String,
    /// Bucket holding the documents.
    pub bucket: String,
    /// Scope in the bucket.
    pub scope: String,
    /// Collection in the scope.
    pub collection: String,
    /// Deadline of each operation, connecting included.
    pub timeout: Duration,
}

impl std::fmt::Debug for CouchbaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchbaseSettings")
            .field("connection_string", &self.connection_string)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("bucket", &self.bucket)
            .field("scope", &self.scope)
            .field("collection", &self.collection)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Image documents in a Couchbase collection, one per image id.
pub struct CouchbaseStore {
    // Kept so the cluster's connections live as long as the store.
    _cluster: Cluster,
    collection: Collection,
    timeout: Duration,
}

impl CouchbaseStore {
    /// Connects to the cluster and opens the configured collection.
    pub async fn connect(settings: &CouchbaseSettings) -> Result<Self, StoreError> {
        let auth = PasswordAuthenticator::new(settings.username.clone(), settings.password.clone());
        let options = ClusterOptions::new(auth.into());
        let cluster = with_timeout(
            settings.timeout,
            Cluster::connect(settings.connection_string.clone(), options),
        )
        .await?;
        let collection = cluster
            .bucket(settings.bucket.clone())
            .scope(settings.scope.clone())
            .collection(settings.collection.clone());
        Ok(Self {
            _cluster: cluster,
            collection,
            timeout: settings.timeout,
        })
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    op: impl Future<Output = Result<T, CbError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(result) => result.map_err(|e| map_error(e.kind(), &e.to_string())),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Maps a Couchbase error to ours: what retrying can fix and what it cannot. The SDK's own
/// words (which can name nodes, the bucket, the user) go to the worker's log only; the error
/// (and so the job's status) says what kind of failure it was.
fn map_error(kind: &ErrorKind, message: &str) -> StoreError {
    tracing::warn!(?kind, %message, "Couchbase request failed");
    let what = match kind {
        ErrorKind::AuthenticationFailure => "Couchbase refused the worker's credentials",
        ErrorKind::BucketNotFound => "the Couchbase bucket does not exist",
        ErrorKind::ScopeNotFound => "the Couchbase scope does not exist",
        ErrorKind::CollectionNotFound => "the Couchbase collection does not exist",
        ErrorKind::InvalidArgument(_) => "Couchbase refused the request as invalid",
        ErrorKind::FeatureNotAvailable(_) | ErrorKind::UnsupportedOperation => {
            "the Couchbase cluster does not support this operation"
        }
        ErrorKind::EncodingFailure(_) | ErrorKind::DecodingFailure(_) => {
            "the document could not be encoded for Couchbase"
        }
        _ => "Couchbase request failed",
    };
    let what = format!("{what} (details in the worker's log)");
    match kind {
        ErrorKind::AuthenticationFailure => StoreError::Unauthorized(what),
        ErrorKind::BucketNotFound
        | ErrorKind::ScopeNotFound
        | ErrorKind::CollectionNotFound
        | ErrorKind::InvalidArgument(_)
        | ErrorKind::FeatureNotAvailable(_)
        | ErrorKind::UnsupportedOperation => StoreError::Misconfigured(what),
        ErrorKind::EncodingFailure(_) | ErrorKind::DecodingFailure(_) => StoreError::Encoding(what),
        _ => StoreError::Unavailable(what),
    }
}

#[async_trait]
impl MetadataStore for CouchbaseStore {
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError> {
        with_timeout(
            self.timeout,
            self.collection.upsert(doc.image_id.clone(), doc, None),
        )
        .await
        .map(|_| ())
    }

    async fn get(&self, image_id: &str) -> Result<Option<ImageDocument>, StoreError> {
        let op = self.collection.get(image_id.to_owned(), None);
        match tokio::time::timeout(self.timeout, op).await {
            Err(_) => Err(StoreError::Timeout(self.timeout)),
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::DocumentNotFound) => Ok(None),
            Ok(Err(e)) => Err(map_error(e.kind(), &e.to_string())),
            Ok(Ok(found)) => found
                .content_as::<ImageDocument>()
                .map(Some)
                .map_err(|e| StoreError::Encoding(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_retryable_or_not() {
        assert!(map_error(&ErrorKind::TemporaryFailure, "busy").is_retryable());
        assert!(map_error(&ErrorKind::ServerTimeout, "slow").is_retryable());
        let auth = map_error(
            &ErrorKind::AuthenticationFailure,
            "user ij-worker at cb-0.internal:11210: bad password",
        );
        assert!(!auth.is_retryable());
        let told = auth.to_string();
        assert!(told.contains("refused the worker's credentials"), "{told}");
        for internal in ["ij-worker", "cb-0.internal", "bad password"] {
            assert!(
                !told.contains(internal),
                "the SDK's words stay in the log: {told}"
            );
        }
        assert!(!map_error(&ErrorKind::BucketNotFound, "no bucket").is_retryable());
    }

    #[test]
    fn document_has_the_seed_shape() {
        let doc = ImageDocument {
            image_id: "123e4567-e89b-12d3-a456-426614174000".into(),
            url: "https://example.com/image.jpg".into(),
            title: Some("Product Image".into()),
            description: Some("Blue shirt".into()),
            tags: vec!["clothing".into(), "shirt".into()],
            workflow_id: "image-processing-1".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        let json = serde_json::to_value(&doc).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "created_at",
                "description",
                "image_id",
                "tags",
                "title",
                "url",
                "workflow_id"
            ]
        );
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let settings = CouchbaseSettings {
            connection_string: "couchbase://db".into(),
            username: "app".into(),
            password: "s3cret".into(),
            bucket: "images".into(),
            scope: "_default".into(),
            collection: "_default".into(),
            timeout: Duration::from_secs(5),
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
