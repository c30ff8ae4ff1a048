//! Image metadata stores: one JSON document per image, keyed by image id, written by the
//! `store_image_metadata` activity. `embedded` (a file database) is the default for local use;
//! `couchbase` is the production backend of the seed.

mod couchbase;
mod embedded;
mod metadata;

pub use couchbase::{CouchbaseSettings, CouchbaseStore};
pub use embedded::EmbeddedStore;
pub use metadata::{ImageDocument, MetadataStore, StoreError};
