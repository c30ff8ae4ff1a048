//! What a similarity search answers, whichever backend ran it, and the backends' names.

use serde::{Deserialize, Serialize};

/// The Lykdat backend's name in results and configuration.
pub const LYKDAT: &str = "lykdat";
/// The catalog backend's name in results and configuration.
pub const CATALOG: &str = "catalog";

/// One similar product, flattened out of Lykdat's result groups.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SimilarProduct {
    /// Lykdat's product id.
    #[serde(default)]
    pub id: Option<String>,
    /// Product name.
    #[serde(default)]
    pub name: String,
    /// Brand name, when known.
    #[serde(default)]
    pub brand_name: Option<String>,
    /// Shop selling it.
    #[serde(default)]
    pub vendor: Option<String>,
    /// Product page.
    #[serde(default)]
    pub url: Option<String>,
    /// The product image that matched.
    #[serde(default)]
    pub matching_image: Option<String>,
    /// Price as Lykdat sends it (a string).
    #[serde(default)]
    pub price: Option<String>,
    /// Reduced price, when on sale.
    #[serde(default)]
    pub reduced_price: Option<String>,
    /// Currency code.
    #[serde(default)]
    pub currency: Option<String>,
    /// Category.
    #[serde(default)]
    pub category: Option<String>,
    /// Similarity score, 0 to 1.
    #[serde(default)]
    pub score: f64,
    /// The matched job's workflow (catalog matches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The matched image's id (catalog matches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The same picture by its perceptual hash (catalog matches only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The results of one search: all similar products, best first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SimilarityResults {
    /// The image Lykdat searched with.
    pub query_image: Option<String>,
    /// Similar products of every detected item, sorted by score, best first.
    pub products: Vec<SimilarProduct>,
    /// Which backend searched: `lykdat` or `catalog` (absent in results from before the
    /// catalog existed: Lykdat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Which image descriptor the catalog compared (catalog results only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<String>,
}
