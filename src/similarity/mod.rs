//! Visual similarity search, by one of two backends: Lykdat's hosted global search (with an API
//! key), or the catalog of images this worker searched before, compared by an image descriptor
//! computed in the worker (no outside service).

mod backend;
mod catalog;
pub mod descriptor;
mod lykdat;
pub mod model;
mod results;
mod search;

pub use backend::SimilarityBackend;
pub use catalog::{Catalog, CatalogEntry, CatalogError, TOP_K};
pub use lykdat::{LykdatClient, LykdatError};
pub use results::{CATALOG, LYKDAT, SimilarProduct, SimilarityResults};
pub use search::{
    CatalogSearch, CatalogSearchError, Describer, ImageAbout, MODEL_DESCRIPTOR, MODEL_SHARE,
};
