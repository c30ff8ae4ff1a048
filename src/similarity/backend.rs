//! The backend a worker searches with.

use super::{
    lykdat::LykdatClient,
    results::{CATALOG, LYKDAT},
    search::CatalogSearch,
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
