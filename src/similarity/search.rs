//! The catalog backend's search: fetch the job's image (untrusted URL), decode it within its
//! limits, describe it, find its nearest catalogued images, then catalogue it.

use super::{
    CATALOG, Catalog, CatalogEntry, CatalogError, SimilarityResults,
    descriptor::{self, CLASSICAL},
};
use crate::fetch::{FetchError, ImageFetcher, decode_rgb};
use crate::store::ImageDocument;

/// Why a catalog search failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogSearchError {
    /// The image could not be fetched, or was refused.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The image's header was fine but its data did not decode.
    #[error("image could not be decoded: {0}")]
    Decode(String),
    /// The catalog could not be read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl CatalogSearchError {
    /// Whether the same search may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogSearchError::Fetch(e) => e.is_retryable(),
            CatalogSearchError::Decode(_) => false,
            CatalogSearchError::Catalog(_) => true,
        }
    }
}

/// Searches the catalog with a job's image and adds the image to it.
#[derive(Clone)]
pub struct CatalogSearch {
    fetcher: ImageFetcher,
    catalog: Catalog,
}

impl CatalogSearch {
    /// A search fetching with `fetcher` over `catalog`.
    pub fn new(fetcher: ImageFetcher, catalog: Catalog) -> Self {
        Self { fetcher, catalog }
    }

    /// The catalog searched.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The nearest catalogued images to the one at `url`, then the image catalogued as
    /// `image_id` (with its stored document's title and workflow, when there is one).
    pub async fn search(
        &self,
        image_id: &str,
        url: &str,
        document: Option<ImageDocument>,
    ) -> Result<SimilarityResults, CatalogSearchError> {
        let fetched = self.fetcher.fetch(url).await?;
        let max_pixels = self.fetcher.limits().max_pixels;
        let catalog = self.catalog.clone();
        let entry_of = |vector, hash| CatalogEntry {
            image_id: image_id.to_owned(),
            workflow_id: document
                .as_ref()
                .map(|d| d.workflow_id.clone())
                .unwrap_or_default(),
            title: document.as_ref().and_then(|d| d.title.clone()),
            url: url.to_owned(),
            hash,
            vector,
        };
        let described = tokio::task::spawn_blocking(move || {
            decode_rgb(&fetched.bytes, fetched.format, max_pixels)
                .map(|rgb| descriptor::classical(&rgb))
                .map_err(|e| CatalogSearchError::Decode(e.to_string()))
        })
        .await
        .map_err(|e| CatalogSearchError::Decode(format!("decoder stopped: {e}")))??;
        let entry = entry_of(described.vector, described.hash);
        let products = tokio::task::spawn_blocking(move || {
            let found = catalog.search(&entry.vector, entry.hash, &entry.image_id)?;
            catalog.insert(entry)?;
            Ok::<_, CatalogError>(found)
        })
        .await
        .map_err(|e| CatalogError::Storage(format!("catalog task stopped: {e}")))??;
        Ok(SimilarityResults {
            query_image: Some(url.to_owned()),
            products,
            backend: Some(CATALOG.into()),
            descriptor: Some(CLASSICAL.into()),
        })
    }
}
