//! The catalog: every image searched with the catalog backend, its descriptor kept in a redb
//! file (beside the embedded store's documents, so a worker restart keeps it) and in memory for
//! the search: exact cosine over every vector, best 10, the image itself left out, perceptual
//! duplicates marked.

use super::{SimilarProduct, descriptor::cosine};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::{
    cmp::Ordering,
    collections::HashMap,
    path::Path,
    sync::{Arc, RwLock},
};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
/// Matches returned by a search.
pub const TOP_K: usize = 10;
/// Least cosine of a duplicate besides an equal hash: the hash sees grey levels only, so a red
/// and a blue shirt of one cut share it, while their colours keep them below this.
const DUPLICATE_MIN_SCORE: f32 = 0.9;

/// Why the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file could not be opened, read or written.
    #[error("catalog storage: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Storage(e.to_string())
}

/// One catalogued image. On disk: a 4-byte little-endian length, this entry but its vector as
/// JSON, then the vector as little-endian `f32`s.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CatalogEntry {
    /// The image's id (its metadata document's key).
    pub image_id: String,
    /// The workflow that processed it.
    pub workflow_id: String,
    /// Its job's title.
    pub title: Option<String>,
    /// Its URL.
    pub url: String,
    /// Its perceptual hash.
    pub hash: u64,
    /// Its descriptor, a unit vector.
    #[serde(skip)]
    pub vector: Vec<f32>,
}

impl CatalogEntry {
    fn encode(&self) -> Result<Vec<u8>, CatalogError> {
        let meta = serde_json::to_vec(self).map_err(storage)?;
        let len = u32::try_from(meta.len()).map_err(storage)?;
        let mut out = Vec::with_capacity(4 + meta.len() + 4 * self.vector.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&meta);
        for x in &self.vector {
            out.extend_from_slice(&x.to_le_bytes());
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, CatalogError> {
        let corrupt = || CatalogError::Storage("a catalog entry is corrupt".into());
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_le_bytes(*len) as usize;
        let meta = rest.get(..len).ok_or_else(corrupt)?;
        let floats = &rest[len..];
        if floats.len() % 4 != 0 {
            return Err(corrupt());
        }
        let mut entry: CatalogEntry = serde_json::from_slice(meta).map_err(storage)?;
        entry.vector = floats
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(entry)
    }

    /// This entry as a match of `score`, in the shape Lykdat's results have.
    fn as_match(&self, score: f32, duplicate: bool) -> SimilarProduct {
        SimilarProduct {
            name: self.title.clone().unwrap_or_default(),
            url: Some(self.url.clone()),
            matching_image: Some(self.url.clone()),
            score: f64::from(score),
            workflow_id: Some(self.workflow_id.clone()),
            image_id: Some(self.image_id.clone()),
            duplicate,
            ..Default::default()
        }
    }
}

/// The entries in memory, with where each image's is.
#[derive(Default)]
struct Entries {
    list: Vec<CatalogEntry>,
    by_image: HashMap<String, usize>,
}

impl Entries {
    fn put(&mut self, entry: CatalogEntry) {
        match self.by_image.get(&entry.image_id) {
            Some(i) => self.list[*i] = entry,
            None => {
                self.by_image
                    .insert(entry.image_id.clone(), self.list.len());
                self.list.push(entry);
            }
        }
    }
}

/// The catalog, shared by every search of a worker.
#[derive(Clone)]
pub struct Catalog {
    db: Arc<Database>,
    entries: Arc<RwLock<Entries>>,
}

impl Catalog {
    /// Opens (or creates) the catalog file at `path` and loads every entry.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(storage)?;
        }
        let db = Database::create(path).map_err(storage)?;
        let mut entries = Entries::default();
        let tx = db.begin_read().map_err(storage)?;
        match tx.open_table(ENTRIES) {
            Ok(table) => {
                for row in table.iter().map_err(storage)? {
                    let (_, value) = row.map_err(storage)?;
                    entries.put(CatalogEntry::decode(value.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage(e)),
        }
        drop(tx);
        Ok(Self {
            db: Arc::new(db),
            entries: Arc::new(RwLock::new(entries)),
        })
    }

    /// How many images are catalogued.
    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.list.len())
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `entry` (or replaces the one of the same image), on disk first.
    pub fn insert(&self, entry: CatalogEntry) -> Result<(), CatalogError> {
        self.insert_all(vec![entry])
    }

    /// Adds `entries` in one transaction (replacing those of the same images), on disk first.
    pub fn insert_all(&self, entries: Vec<CatalogEntry>) -> Result<(), CatalogError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(ENTRIES).map_err(storage)?;
            for entry in &entries {
                table
                    .insert(entry.image_id.as_str(), entry.encode()?.as_slice())
                    .map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        let mut held = self.entries.write().map_err(storage)?;
        for entry in entries {
            held.put(entry);
        }
        Ok(())
    }

    /// The [`TOP_K`] entries nearest `vector` by cosine, best first, `image_id` left out; those
    /// whose hash equals `hash` and whose cosine is at least [`DUPLICATE_MIN_SCORE`] are marked
    /// duplicates.
    pub fn search(
        &self,
        vector: &[f32],
        hash: u64,
        image_id: &str,
    ) -> Result<Vec<SimilarProduct>, CatalogError> {
        let entries = self.entries.read().map_err(storage)?;
        let mut scored: Vec<(f32, &CatalogEntry)> = entries
            .list
            .iter()
            .filter(|e| e.image_id != image_id && e.vector.len() == vector.len())
            .map(|e| (cosine(vector, &e.vector), e))
            .collect();
        let best_first = |a: &(f32, &CatalogEntry), b: &(f32, &CatalogEntry)| {
            b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal)
        };
        if scored.len() > TOP_K {
            scored.select_nth_unstable_by(TOP_K - 1, best_first);
            scored.truncate(TOP_K);
        }
        scored.sort_by(best_first);
        Ok(scored
            .into_iter()
            .map(|(score, e)| e.as_match(score, e.hash == hash && score >= DUPLICATE_MIN_SCORE))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::descriptor::normalize;

    fn entry(id: &str, vector: [f32; 3], hash: u64) -> CatalogEntry {
        let mut vector = vector.to_vec();
        normalize(&mut vector);
        CatalogEntry {
            image_id: id.into(),
            workflow_id: format!("image-processing-{id}"),
            title: Some(format!("Title {id}")),
            url: format!("http://127.0.0.1/{id}.png"),
            hash,
            vector,
        }
    }

    #[test]
    fn the_nearest_come_first_without_the_image_itself_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        let catalog = Catalog::open(&path).unwrap();
        catalog.insert(entry("a", [1.0, 0.0, 0.0], 1)).unwrap();
        catalog.insert(entry("b", [0.9, 0.1, 0.0], 7)).unwrap();
        catalog.insert(entry("c", [0.0, 1.0, 0.0], 7)).unwrap();
        catalog.insert(entry("b", [0.8, 0.2, 0.0], 7)).unwrap();
        assert_eq!(catalog.len(), 3, "a replaced entry is not counted twice");
        let query = entry("a", [1.0, 0.0, 0.0], 7);
        let found = catalog.search(&query.vector, 7, "a").unwrap();
        let ids: Vec<_> = found.iter().map(|m| m.image_id.clone().unwrap()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(found[0].duplicate, "same hash, close");
        assert!(!found[1].duplicate, "same hash, far: another picture");
        assert_eq!(found[0].name, "Title b");
        assert_eq!(found[0].workflow_id.as_deref(), Some("image-processing-b"));
        assert!(found[0].score > found[1].score);
        drop(catalog);
        let reopened = Catalog::open(&path).unwrap();
        assert_eq!(reopened.len(), 3);
        assert_eq!(reopened.search(&query.vector, 7, "a").unwrap(), found);
    }

    #[test]
    fn at_most_ten_matches_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.redb")).unwrap();
        for i in 0..25 {
            catalog
                .insert(entry(&i.to_string(), [1.0, i as f32 / 10.0, 0.0], i))
                .unwrap();
        }
        let query = entry("q", [1.0, 0.0, 0.0], 99);
        let found = catalog.search(&query.vector, 99, "q").unwrap();
        assert_eq!(found.len(), TOP_K);
        assert_eq!(found[0].image_id.as_deref(), Some("0"));
        assert!(found.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
