//! Visual similarity search. Lykdat's global search is the only provider.

mod lykdat;

pub use lykdat::{LykdatClient, LykdatError, SimilarProduct, SimilarityResults};
