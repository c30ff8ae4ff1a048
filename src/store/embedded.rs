//! The embedded backend: a redb file database, surviving restarts, for local use and small
//! installs.

use super::metadata::{ImageDocument, MetadataStore, StoreError};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};
use std::{path::Path, sync::Arc};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// Image documents in a local redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file, creating its parent folder.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Misconfigured(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| {
            StoreError::Misconfigured(format!("cannot open {}: {e}", path.display()))
        })?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || op(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn upsert(&self, doc: &ImageDocument) -> Result<(), StoreError> {
        let key = doc.image_id.clone();
        let bytes = serde_json::to_vec(doc).map_err(|e| StoreError::Encoding(e.to_string()))?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut table = tx.open_table(IMAGES).map_err(unavailable)?;
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn get(&self, image_id: &str) -> Result<Option<ImageDocument>, StoreError> {
        let key = image_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let table = match tx.open_table(IMAGES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(unavailable(e)),
            };
            let Some(value) = table.get(key.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            serde_json::from_slice(value.value())
                .map(Some)
                .map_err(|e| StoreError::Encoding(e.to_string()))
        })
        .await
    }
}

impl EmbeddedStore {
    /// How many documents the store holds.
    pub async fn count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            match tx.open_table(IMAGES) {
                Ok(table) => table.len().map_err(unavailable),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, title: &str) -> ImageDocument {
        ImageDocument {
            image_id: id.into(),
            url: "https://example.com/a.jpg".into(),
            title: Some(title.into()),
            description: None,
            tags: vec!["shirt".into()],
            workflow_id: "image-processing-x".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn upsert_is_idempotent_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/meta.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.get("a").await.unwrap(), None);
        store.upsert(&doc("a", "one")).await.unwrap();
        store.upsert(&doc("a", "two")).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 1);
        drop(store);
        let reopened = EmbeddedStore::open(&path).unwrap();
        assert_eq!(reopened.get("a").await.unwrap(), Some(doc("a", "two")));
    }
}
