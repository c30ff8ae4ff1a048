//! The workflows' activities: thin wrappers over the metadata store and the similarity backend
//! (Lykdat or the catalog) that classify errors as retryable or not. Two sets, one per task queue:
//! [`StoreActivities`] beside the workflows, [`SearchActivities`] on the similarity queue, which
//! only the workers able to search poll (with the catalog backend, the catalog's owner alone).

use crate::temporal::contract::{
    SimilaritySearchInput, SimilaritySearchOutcome, StoreImageMetadataInput,
};
use crate::{
    similarity::{ImageAbout, LykdatError, SimilarityBackend, SimilarityResults},
    store::{ImageDocument, MetadataStore, StoreError},
};
use std::{sync::Arc, time::Duration};
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::{info, warn};

/// What a worker serves: the workflows and their store step (with a metadata store), the
/// similarity queue (with a similarity backend), or both.
#[derive(Clone)]
pub struct ImageActivities {
    store: Option<Arc<dyn MetadataStore>>,
    similarity: Option<SimilarityBackend>,
}

impl ImageActivities {
    /// Both queues: the workflows writing to `store`, and searches with `similarity`.
    pub fn new(store: Arc<dyn MetadataStore>, similarity: SimilarityBackend) -> Self {
        Self {
            store: Some(store),
            similarity: Some(similarity),
        }
    }

    /// The workflows and their store step only: searches run on another worker.
    pub fn workflows_only(store: Arc<dyn MetadataStore>) -> Self {
        Self {
            store: Some(store),
            similarity: None,
        }
    }

    /// The similarity queue only: this worker owns the catalog (or calls Lykdat) for others.
    pub fn similarity_only(similarity: SimilarityBackend) -> Self {
        Self {
            store: None,
            similarity: Some(similarity),
        }
    }

    /// The store step, when this worker runs workflows.
    pub(super) fn store(&self) -> Option<StoreActivities> {
        self.store.clone().map(|store| StoreActivities { store })
    }

    /// The similarity queue's activities, when this worker searches.
    pub(super) fn search(&self) -> Option<SearchActivities> {
        self.similarity.clone().map(|similarity| SearchActivities {
            similarity,
            store: self.store.clone(),
        })
    }
}

/// `store_image_metadata`, on the workflows' task queue.
pub struct StoreActivities {
    store: Arc<dyn MetadataStore>,
}

/// `run_similarity_search` and `forget_catalog_image`, on the similarity task queue.
pub struct SearchActivities {
    similarity: SimilarityBackend,
    /// The metadata store, when this worker has one: the title of an image searched by a
    /// workflow started before the `similarity-task-queue` patch is read from its document.
    store: Option<Arc<dyn MetadataStore>>,
}

/// How often a long activity heartbeats (and so notices cancellation).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

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
impl StoreActivities {
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
}

#[activities]
impl SearchActivities {
    /// Searches for similar products with the configured backend (Lykdat, or the catalog of
    /// images searched before), heartbeating so cancellation is noticed.
    #[activity(name = "run_similarity_search")]
    pub async fn run_similarity_search(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: SimilaritySearchInput,
    ) -> Result<SimilaritySearchOutcome, ActivityError> {
        let attempt = ctx.info().attempt;
        let result: Result<SimilarityResults, (String, bool, Option<Duration>)> =
            match &self.similarity {
                SimilarityBackend::Lykdat(lykdat) => {
                    if !lykdat.is_configured() {
                        return Ok(SimilaritySearchOutcome::Skipped {
                            reason: LykdatError::NotConfigured.to_string(),
                        });
                    }
                    with_heartbeats(&ctx, lykdat.global_search(&input.image_url))
                        .await?
                        .map_err(|e| (e.to_string(), e.is_retryable(), e.retry_after()))
                }
                SimilarityBackend::Catalog(catalog) => {
                    let about = self.about(&input).await?;
                    with_heartbeats(
                        &ctx,
                        catalog.search(&input.image_id, &input.image_url, about),
                    )
                    .await?
                    .map_err(|e| (e.to_string(), e.is_retryable(), None))
                }
            };
        let backend = self.similarity.name();
        match result {
            Ok(results) => {
                info!(image_id = %input.image_id, backend, matches = results.products.len(),
                    "similarity search done");
                Ok(SimilaritySearchOutcome::Completed { results })
            }
            Err((message, retryable, wait)) => {
                warn!(image_id = %input.image_id, backend, attempt, error = %message, retry_after = ?wait,
                    "similarity search failed");
                match wait {
                    // The service said when: the next attempt waits that long instead of the
                    // policy's interval (the policy still bounds the attempts).
                    Some(wait) if retryable => Err(ActivityError::application(
                        ApplicationFailure::builder(message)
                            .next_retry_delay(wait)
                            .build(),
                    )),
                    _ => Err(application_error(message, retryable)),
                }
            }
        }
    }

    /// Removes the images of the (deleted) job run by the given workflow from the catalog, and
    /// returns how many went; with Lykdat there is nothing to remove.
    #[activity(name = "forget_catalog_image")]
    pub async fn forget_catalog_image(
        self: Arc<Self>,
        _ctx: ActivityContext,
        workflow_id: String,
    ) -> Result<usize, ActivityError> {
        let SimilarityBackend::Catalog(search) = &self.similarity else {
            return Ok(0);
        };
        let catalog = search.catalog().clone();
        let id = workflow_id.clone();
        let removed = tokio::task::spawn_blocking(move || catalog.remove_workflow(&id))
            .await
            .map_err(|e| application_error(format!("catalog task stopped: {e}"), true))?
            .map_err(|e| application_error(e.to_string(), true))?;
        info!(%workflow_id, removed, "deleted job's images removed from the catalog");
        Ok(removed)
    }
}

impl SearchActivities {
    /// What the catalog records with the image: the title and workflow the input carries, else
    /// (a workflow started before the patch) those of its stored document, when readable here.
    async fn about(&self, input: &SimilaritySearchInput) -> Result<ImageAbout, ActivityError> {
        if input.workflow_id.is_some() {
            return Ok(ImageAbout {
                workflow_id: input.workflow_id.clone().unwrap_or_default(),
                title: input.title.clone(),
            });
        }
        let document = match &self.store {
            Some(store) => store.get(&input.image_id).await.map_err(store_error)?,
            None => None,
        };
        Ok(document.map_or_else(ImageAbout::default, |d| ImageAbout {
            workflow_id: d.workflow_id,
            title: d.title,
        }))
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
