//! The catalog: every image searched with the catalog backend, its descriptor kept in a redb
//! file (beside the embedded store's documents, so a worker restart keeps it) and in memory,
//! quantized to 8 bits, for the search: every vector scanned (split over the cores), the best
//! candidates re-ranked by exact cosine over their stored vectors, best 10, the image itself
//! left out, perceptual duplicates marked.

use super::{descriptor::cosine, results::SimilarProduct};
use redb::{Builder, Database, ReadableDatabase, ReadableTable, TableDefinition};
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
/// Candidates of the 8-bit scan re-ranked by exact cosine: enough that quantization error (about
/// 0.002 in cosine) cannot push a true top-10 match out.
const CANDIDATES: usize = 4 * TOP_K;
/// Catalogs at least this large are scanned on every core.
const PARALLEL_FROM: usize = 20_000;
/// redb's page cache: the search reads memory, the file is read for re-ranking and written once
/// per image (redb's default is 1 GiB).
const FILE_CACHE_BYTES: usize = 32 * 1024 * 1024;
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

/// A vector quantized to 8 bits: `vector[i] ≈ code[i] * scale`.
struct Quantized {
    code: Box<[i8]>,
    scale: f32,
}

impl Quantized {
    fn of(vector: &[f32]) -> Self {
        let max = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        let code = vector
            .iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Self { code, scale }
    }

    /// The dot product of the two vectors, approximately.
    fn dot(&self, other: &Quantized) -> f32 {
        dot_i8(&self.code, &other.code) as f32 * self.scale * other.scale
    }
}

/// Exact dot product of two 8-bit vectors: compiled for AVX2 where the CPU has it (detected
/// at run time, so the binary still runs on any x86-64), else for the baseline.
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, as checked just above.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_lanes(a, b)
}

/// The dot product in 32 lanes of 16-bit products, which the compiler vectorizes.
#[inline(always)]
fn dot_i8_lanes(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 32];
    let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: i32 = a32
        .remainder()
        .iter()
        .zip(b32.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in a32.zip(b32) {
        for i in 0..32 {
            lanes[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    lanes.iter().sum::<i32>() + tail
}

/// One image as the search holds it: what a match shows (no vector) and its quantized vector.
struct Indexed {
    entry: CatalogEntry,
    vector: Quantized,
}

/// The entries in memory, with where each image's is.
#[derive(Default)]
struct Entries {
    list: Vec<Indexed>,
    by_image: HashMap<String, usize>,
}

impl Entries {
    /// Removes the entry at `index`, moving the last one into its place.
    fn remove_at(&mut self, index: usize) {
        let gone = self.list.swap_remove(index);
        self.by_image.remove(&gone.entry.image_id);
        if let Some(moved) = self.list.get(index) {
            self.by_image.insert(moved.entry.image_id.clone(), index);
        }
    }

    fn put(&mut self, mut entry: CatalogEntry) {
        let vector = Quantized::of(&entry.vector);
        entry.vector = Vec::new();
        let indexed = Indexed { entry, vector };
        match self.by_image.get(&indexed.entry.image_id) {
            Some(i) => self.list[*i] = indexed,
            None => {
                self.by_image
                    .insert(indexed.entry.image_id.clone(), self.list.len());
                self.list.push(indexed);
            }
        }
    }

    /// The [`CANDIDATES`] best of `list[range]` by approximate cosine with `query`, as (score,
    /// index), `image_id` and vectors of another size left out.
    fn candidates(
        &self,
        range: std::ops::Range<usize>,
        query: &Quantized,
        image_id: &str,
    ) -> Vec<(f32, usize)> {
        let start = range.start;
        let mut scored: Vec<(f32, usize)> = self.list[range]
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.vector.code.len() == query.code.len() && e.entry.image_id != image_id
            })
            .map(|(i, e)| (query.dot(&e.vector), start + i))
            .collect();
        keep_best(&mut scored, CANDIDATES);
        scored
    }

    /// [`Entries::candidates`] over the whole list, split over the cores when it is large.
    fn scan(&self, query: &Quantized, image_id: &str) -> Vec<(f32, usize)> {
        let n = self.list.len();
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        if n < PARALLEL_FROM || cores < 2 {
            return self.candidates(0..n, query, image_id);
        }
        let chunk = n.div_ceil(cores);
        let mut all: Vec<(f32, usize)> = std::thread::scope(|scope| {
            let parts: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    let range = start..(start + chunk).min(n);
                    scope.spawn(move || self.candidates(range, query, image_id))
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|part| part.join().unwrap_or_default())
                .collect()
        });
        keep_best(&mut all, CANDIDATES);
        all
    }
}

/// Keeps the `k` highest scores of `scored` (in no order).
fn keep_best<T>(scored: &mut Vec<(f32, T)>, k: usize) {
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, best_first);
        scored.truncate(k);
    }
}

fn best_first<T>(a: &(f32, T), b: &(f32, T)) -> Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal)
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
        let db = Builder::new()
            .set_cache_size(FILE_CACHE_BYTES)
            .create(path)
            .map_err(storage)?;
        let mut entries = Entries::default();
        let tx = db.begin_read().map_err(storage)?;
        match tx.open_table(ENTRIES) {
            Ok(table) => {
                let mut unreadable = 0usize;
                for row in table.iter().map_err(storage)? {
                    let (_, value) = row.map_err(storage)?;
                    // An entry that does not decode (written by an older build, or damaged)
                    // is left out rather than keeping the worker from starting.
                    match CatalogEntry::decode(value.value()) {
                        Ok(entry) => entries.put(entry),
                        Err(_) => unreadable += 1,
                    }
                }
                if unreadable > 0 {
                    tracing::warn!(path = %path.display(), unreadable,
                        "catalog entries that could not be read are left out of searches");
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

    /// Removes every image the workflow `workflow_id` processed (a deleted job's), on disk
    /// first, and returns how many went.
    pub fn remove_workflow(&self, workflow_id: &str) -> Result<usize, CatalogError> {
        let image_ids: Vec<String> = self
            .entries
            .read()
            .map_err(storage)?
            .list
            .iter()
            .filter(|e| e.entry.workflow_id == workflow_id)
            .map(|e| e.entry.image_id.clone())
            .collect();
        if image_ids.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(ENTRIES).map_err(storage)?;
            for id in &image_ids {
                table.remove(id.as_str()).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        let mut held = self.entries.write().map_err(storage)?;
        for id in &image_ids {
            if let Some(index) = held.by_image.get(id).copied() {
                held.remove_at(index);
            }
        }
        Ok(image_ids.len())
    }

    /// The [`TOP_K`] entries nearest `vector` by cosine, best first, `image_id` left out; those
    /// whose hash equals `hash` and whose cosine is at least [`DUPLICATE_MIN_SCORE`] are marked
    /// duplicates. The 8-bit scan picks [`CANDIDATES`]; their stored vectors give the scores.
    pub fn search(
        &self,
        vector: &[f32],
        hash: u64,
        image_id: &str,
    ) -> Result<Vec<SimilarProduct>, CatalogError> {
        let entries = self.entries.read().map_err(storage)?;
        let candidates = entries.scan(&Quantized::of(vector), image_id);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(storage)?;
        let table = tx.open_table(ENTRIES).map_err(storage)?;
        let mut scored = Vec::with_capacity(candidates.len());
        for (_, index) in candidates {
            let entry = &entries.list[index].entry;
            let stored = table
                .get(entry.image_id.as_str())
                .map_err(storage)?
                .ok_or_else(|| storage(format!("{} is not in the catalog file", entry.image_id)))?;
            let exact = CatalogEntry::decode(stored.value())?;
            scored.push((cosine(vector, &exact.vector), entry));
        }
        keep_best(&mut scored, TOP_K);
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
    fn an_unreadable_entry_is_left_out_and_the_catalog_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let catalog = Catalog::open(&path).unwrap();
        catalog.insert(entry("a", [1.0, 0.0, 0.0], 1)).unwrap();
        let tx = catalog.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(ENTRIES).unwrap();
            table.insert("damaged", [1u8, 2, 3].as_slice()).unwrap();
            table
                .insert("old-layout", b"{not json}".as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        drop(catalog);
        let reopened = Catalog::open(&path).unwrap();
        assert_eq!(reopened.len(), 1);
        let query = entry("q", [1.0, 0.0, 0.0], 1);
        assert_eq!(reopened.search(&query.vector, 1, "q").unwrap().len(), 1);
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

    /// A pseudo-random unit vector of `dims` (64-bit LCG).
    fn random_unit(seed: &mut u64, dims: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        normalize(&mut v);
        v
    }

    #[test]
    fn the_quantized_scan_finds_the_exact_top_ten_with_exact_scores_on_every_core() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("c.redb")).unwrap();
        let mut seed = 7;
        let dims = 64;
        let n = PARALLEL_FROM + 5_000;
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| random_unit(&mut seed, dims)).collect();
        let entries = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| CatalogEntry {
                image_id: i.to_string(),
                workflow_id: format!("w-{i}"),
                title: None,
                url: String::new(),
                hash: 0,
                vector: v.clone(),
            })
            .collect();
        catalog.insert_all(entries).unwrap();
        for _ in 0..5 {
            let query = random_unit(&mut seed, dims);
            let mut exact: Vec<(f32, usize)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (cosine(&query, v), i))
                .collect();
            exact.sort_by(best_first);
            let found = catalog.search(&query, 1, "none").unwrap();
            let found: Vec<(String, f64)> = found
                .into_iter()
                .map(|m| (m.image_id.unwrap(), m.score))
                .collect();
            let expected: Vec<(String, f64)> = exact[..TOP_K]
                .iter()
                .map(|(score, i)| (i.to_string(), f64::from(*score)))
                .collect();
            assert_eq!(found, expected);
        }
    }

    #[test]
    fn the_8_bit_dot_product_is_exact_on_every_code_path() {
        let a: Vec<i8> = (0..1283).map(|i| ((i * 37) % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..1283).map(|i| ((i * 91) % 255 - 127) as i8).collect();
        let expected: i32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| i32::from(*x) * i32::from(*y))
            .sum();
        assert_eq!(dot_i8(&a, &b), expected);
        assert_eq!(dot_i8_lanes(&a, &b), expected);
        let extremes = [-127i8; 64];
        assert_eq!(dot_i8(&extremes, &extremes), 64 * 127 * 127);
    }

    #[test]
    fn a_removed_workflows_images_are_never_found_again_even_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let catalog = Catalog::open(&path).unwrap();
        for (id, x) in [("a", 1.0), ("b", 0.9), ("c", 0.5), ("d", 0.1)] {
            catalog.insert(entry(id, [1.0, x, 0.0], 0)).unwrap();
        }
        assert_eq!(catalog.remove_workflow("image-processing-b").unwrap(), 1);
        assert_eq!(catalog.remove_workflow("image-processing-b").unwrap(), 0);
        assert_eq!(catalog.remove_workflow("image-processing-a").unwrap(), 1);
        let query = entry("q", [1.0, 1.0, 0.0], 0);
        let ids = |c: &Catalog| -> Vec<String> {
            c.search(&query.vector, 0, "q")
                .unwrap()
                .into_iter()
                .filter_map(|m| m.image_id)
                .collect()
        };
        assert_eq!(ids(&catalog), ["c", "d"]);
        catalog.insert(entry("e", [1.0, 0.95, 0.0], 0)).unwrap();
        assert_eq!(
            ids(&catalog),
            ["e", "c", "d"],
            "the index stays right after removals"
        );
        drop(catalog);
        assert_eq!(ids(&Catalog::open(&path).unwrap()), ["e", "c", "d"]);
    }
}
