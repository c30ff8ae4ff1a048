//! The workflow's activities: thin wrappers over the metadata store and the similarity backend
//! (Lykdat or the catalog) that classify errors as retryable or not.

use crate::temporal::types::{
    SimilaritySearchInput, SimilaritySearchOutcome, StoreImageMetadataInput,
};
use crate::{
    similarity::{LykdatError, SimilarityBackend, SimilarityResults},
    store::{ImageDocument, MetadataStore, StoreError},
};
use std::{sync::Arc, time::Duration};
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::{info, warn};

/// How often a long activity heartbeats (and so notices cancellation).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The activities' dependencies.
#[derive(Clone)]
pub struct ImageActivities {
    store: Arc<dyn MetadataStore>,
    similarity: SimilarityBackend,
}

impl ImageActivities {
    /// Activities writing to `store` and searching with `similarity`.
    pub fn new(store: Arc<dyn MetadataStore>, similarity: SimilarityBackend) -> Self {
        Self { store, similarity }
    }
}

/// Runs `work`, heartbeating every [`HEARTBEAT_EVERY`] so a cancellation is noticed; a
/// cancelled activity stops waiting at once.
async fn with_heartbeats<T>(
    ctx: &ActivityContext,
    work: impl Future<Output = T>,
) -> Result<T, ActivityError> {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            result = &mut work => return Ok(result),
            _ = ticker.tick() => {
                if ctx.is_cancelled() {
                    return Err(ActivityError::cancelled());
                }
                ctx.record_heartbeat(()).await.map_err(|e| application_error(e.to_string(), true))?;
            }
        }
    }
}

fn application_error(message: String, retryable: bool) -> ActivityError {
    let failure = if retryable {
        ApplicationFailure::new(message)
    } else {
        ApplicationFailure::non_retryable(message)
    };
    ActivityError::application(failure)
}

fn store_error(e: StoreError) -> ActivityError {
    application_error(e.to_string(), e.is_retryable())
}

/// Rejects what no retry can fix before touching the store.
fn validate(input: &StoreImageMetadataInput) -> Result<(), String> {
    if uuid::Uuid::parse_str(&input.image_id).is_err() {
        return Err(format!("invalid image_id {:?}: not a UUID", input.image_id));
    }
    if !(input.url.starts_with("http://") || input.url.starts_with("https://")) {
        return Err(format!("invalid url {:?}: not http(s)", input.url));
    }
    Ok(())
}

#[activities]
impl ImageActivities {
    /// Stores the image's metadata document and returns its image id.
    #[activity(name = "store_image_metadata")]
    pub async fn store_image_metadata(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: StoreImageMetadataInput,
    ) -> Result<String, ActivityError> {
        validate(&input).map_err(|m| application_error(m, false))?;
        let doc = ImageDocument {
            image_id: input.image_id,
            url: input.url,
            title: input.title,
            description: input.description,
            tags: input.tags,
            workflow_id: input.workflow_id,
            created_at: input.created_at,
        };
        let attempt = ctx.info().attempt;
        if let Err(e) = self.store.upsert(&doc).await {
            warn!(workflow_id = %doc.workflow_id, image_id = %doc.image_id, attempt, error = %e,
                "storing image metadata failed");
            return Err(store_error(e));
        }
        info!(workflow_id = %doc.workflow_id, image_id = %doc.image_id, attempt,
            "image metadata stored");
        Ok(doc.image_id)
    }

    /// Searches for similar products with the configured backend (Lykdat, or the catalog of
    /// images searched before), heartbeating so cancellation is noticed.
    #[activity(name = "run_similarity_search")]
    pub async fn run_similarity_search(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: SimilaritySearchInput,
    ) -> Result<SimilaritySearchOutcome, ActivityError> {
        let attempt = ctx.info().attempt;
        let result: Result<SimilarityResults, (String, bool)> = match &self.similarity {
            SimilarityBackend::Lykdat(lykdat) => {
                if !lykdat.is_configured() {
                    return Ok(SimilaritySearchOutcome::Skipped {
                        reason: LykdatError::NotConfigured.to_string(),
                    });
                }
                with_heartbeats(&ctx, lykdat.global_search(&input.image_url))
                    .await?
                    .map_err(|e| (e.to_string(), e.is_retryable()))
            }
            SimilarityBackend::Catalog(catalog) => {
                let document = self.store.get(&input.image_id).await.map_err(store_error)?;
                with_heartbeats(
                    &ctx,
                    catalog.search(&input.image_id, &input.image_url, document),
                )
                .await?
                .map_err(|e| (e.to_string(), e.is_retryable()))
            }
        };
        let backend = self.similarity.name();
        match result {
            Ok(results) => {
                info!(image_id = %input.image_id, backend, matches = results.products.len(),
                    "similarity search done");
                Ok(SimilaritySearchOutcome::Completed { results })
            }
            Err((message, retryable)) => {
                warn!(image_id = %input.image_id, backend, attempt, error = %message,
                    "similarity search failed");
                Err(application_error(message, retryable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> StoreImageMetadataInput {
        StoreImageMetadataInput {
            image_id: "123e4567-e89b-12d3-a456-426614174000".into(),
            workflow_id: "image-processing-1".into(),
            url: "https://example.com/a.jpg".into(),
            title: None,
            description: None,
            tags: vec![],
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn validation_rejects_what_retries_cannot_fix() {
        assert!(validate(&input()).is_ok());
        let bad_id = StoreImageMetadataInput {
            image_id: "x".into(),
            ..input()
        };
        assert!(validate(&bad_id).unwrap_err().contains("image_id"));
        let bad_url = StoreImageMetadataInput {
            url: "ftp://x".into(),
            ..input()
        };
        assert!(validate(&bad_url).unwrap_err().contains("url"));
    }
}
