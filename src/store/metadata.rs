//! What every store keeps and promises: the image document, the store trait, its errors.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The document stored for each image (the seed's metadata plus where it came from).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageDocument {
    /// Image id (a UUID string), also the document key.
    pub image_id: String,
    /// Image URL.
    pub url: String,
    /// Optional title.
    pub title: Option<String>,
    /// Optional description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Id of the workflow that stored the document.
    pub workflow_id: String,
    /// When the workflow created the document (RFC 3339), fixed by the workflow so a retried
    /// write stores the very same document.
    pub created_at: String,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with a transient error; retrying may help.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The store refused our credentials; retrying will not help.
    #[error("metadata store rejected the credentials: {0}")]
    Unauthorized(String),
    /// The store is misconfigured (unknown bucket, scope or collection); retrying will not help.
    #[error("metadata store misconfigured: {0}")]
    Misconfigured(String),
    /// A document could not be encoded or decoded.
    #[error("metadata document encoding: {0}")]
    Encoding(String),
    /// The operation took longer than the configured timeout.
    #[error("metadata store operation timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl StoreError {
    /// Whether retrying the same operation can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// A place to keep image metadata documents.
#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Writes the document under its image id, replacing any earlier version (idempotent).
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError>;
    /// Reads the document of an image, if there is one.
    async fn get(&self, image_id: &str) -> Result<Option<ImageDocument>, StoreError>;
}
