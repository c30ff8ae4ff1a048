//! Visual similarity search, by one of two backends: Lykdat's hosted global search (with an API
//! key), or the catalog of images this worker searched before, compared by an image descriptor
//! computed in the worker (no outside service).

mod catalog;
pub mod descriptor;
mod lykdat;
pub mod model;
mod search;

pub use catalog::{Catalog, CatalogEntry, CatalogError, TOP_K};
pub use lykdat::{LykdatClient, LykdatError, SimilarProduct, SimilarityResults};
pub use search::{
    CatalogSearch, CatalogSearchError, Describer, ImageAbout, MODEL_DESCRIPTOR, MODEL_SHARE,
};

/// How the worker answers `run_similarity_search`.
#[derive(Clone)]
pub enum SimilarityBackend {
    /// Lykdat's hosted search (skipped, with a reason, without an API key).
    Lykdat(LykdatClient),
    /// The catalog of images searched before, on this worker.
    Catalog(CatalogSearch),
}

impl SimilarityBackend {
    /// The backend's name, as results and configuration spell it.
    pub fn name(&self) -> &'static str {
        match self {
            SimilarityBackend::Lykdat(_) => LYKDAT,
            SimilarityBackend::Catalog(_) => CATALOG,
        }
    }
}

/// The Lykdat backend's name in results and configuration.
pub const LYKDAT: &str = "lykdat";
/// The catalog backend's name in results and configuration.
pub const CATALOG: &str = "catalog";
