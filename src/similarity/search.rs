//! The catalog backend's search: fetch the job's image (untrusted URL), decode it within its
//! limits, describe it, find its nearest catalogued images, then catalogue it.

use super::{
    catalog::{Catalog, CatalogEntry, CatalogError},
    descriptor::{self, CLASSICAL, Descriptor},
    model::{self, EfficientNetLite0},
    results::{CATALOG, SimilarityResults},
};
use crate::fetch::{FetchError, ImageFetcher, decode_rgb};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Why a catalog search failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogSearchError {
    /// The image could not be fetched, or was refused.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The image's header was fine but its data did not decode.
    #[error("image could not be decoded: {0}")]
    Decode(String),
    /// The image model failed on the image.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// The catalog could not be read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl CatalogSearchError {
    /// Whether the same search may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogSearchError::Fetch(e) => e.is_retryable(),
            CatalogSearchError::Decode(_) | CatalogSearchError::Model(_) => false,
            CatalogSearchError::Catalog(_) => true,
        }
    }
}

/// The model's share of the cosine the catalog compares, the colour histogram's being the rest:
/// the network, trained to name objects, sees a red and a blue shirt as one thing; shoppers do
/// not. 0.7 ranked best of 0.3, 0.5 and 0.7 (`cargo bench --bench similarity`: README,
/// Performance).
pub const MODEL_SHARE: f32 = 0.7;

/// How an image is turned into the vector the catalog compares.
#[derive(Clone)]
pub enum Describer {
    /// The classical descriptor (colour histogram and grey layout): no model installed.
    Classical,
    /// The pretrained network's embedding.
    Model(Arc<EfficientNetLite0>),
}

impl Describer {
    /// The descriptor's name, as results give it.
    pub fn name(&self) -> &'static str {
        match self {
            Describer::Classical => CLASSICAL,
            Describer::Model(_) => MODEL_DESCRIPTOR,
        }
    }

    /// The image's vector, and its perceptual hash (always the classical one).
    fn describe(&self, image: &image::RgbImage) -> Result<Descriptor, CatalogSearchError> {
        let classical = descriptor::classical(image);
        match self {
            Describer::Classical => Ok(classical),
            Describer::Model(network) => Ok(Descriptor {
                vector: descriptor::with_colour(
                    network.infer(image)?.embedding,
                    image,
                    MODEL_SHARE,
                ),
                hash: classical.hash,
            }),
        }
    }
}

/// The model describer's name in results: the embedding joined with the colour histogram.
pub const MODEL_DESCRIPTOR: &str = "efficientnet-lite0+colour-histogram";

/// What the catalog records about an image besides its picture.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageAbout {
    /// The workflow that processed it (matches name it; a deleted job's images go by it).
    pub workflow_id: String,
    /// Its job's title (a match's name).
    pub title: Option<String>,
}

/// Searches the catalog with a job's image and adds the image to it.
#[derive(Clone)]
pub struct CatalogSearch {
    fetcher: ImageFetcher,
    catalog: Catalog,
    describer: Describer,
    /// Images decoded and described at once: one per core. A burst of jobs then waits here
    /// instead of holding a decoded image and the network's activations each.
    describing: Arc<Semaphore>,
}

impl CatalogSearch {
    /// A search fetching with `fetcher`, describing with `describer`, over `catalog`.
    pub fn new(fetcher: ImageFetcher, catalog: Catalog, describer: Describer) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            fetcher,
            catalog,
            describer,
            describing: Arc::new(Semaphore::new(cores)),
        }
    }

    /// How images are described.
    pub fn describer(&self) -> &Describer {
        &self.describer
    }

    /// The catalog searched.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The nearest catalogued images to the one at `url`, then the image catalogued as
    /// `image_id`, with what is known `about` it.
    pub async fn search(
        &self,
        image_id: &str,
        url: &str,
        about: ImageAbout,
    ) -> Result<SimilarityResults, CatalogSearchError> {
        let fetched = self.fetcher.fetch(url).await?;
        let max_pixels = self.fetcher.limits().max_pixels;
        let catalog = self.catalog.clone();
        let entry_of = |vector, hash| CatalogEntry {
            image_id: image_id.to_owned(),
            workflow_id: about.workflow_id.clone(),
            title: about.title.clone(),
            url: url.to_owned(),
            hash,
            vector,
        };
        let describer = self.describer.clone();
        let _turn = self
            .describing
            .acquire()
            .await
            .map_err(|e| CatalogSearchError::Decode(format!("describer closed: {e}")))?;
        let described = tokio::task::spawn_blocking(move || {
            let rgb = decode_rgb(&fetched.bytes, fetched.format, max_pixels)
                .map_err(|e| CatalogSearchError::Decode(e.to_string()))?;
            describer.describe(&rgb)
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
            descriptor: Some(self.describer.name().into()),
        })
    }
}
