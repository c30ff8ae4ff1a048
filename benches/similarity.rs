//! Quality and speed of the catalog's similarity search, printed as a table and written as JSON
//! (`cargo bench --bench similarity -- [--distractors N] [--vectors N] [--json PATH]`).
//!
//! The evaluation set is made here: base products (scikit-image's photographs, installed by
//! `scripts/install-deps.sh`, and synthetic garments of several cuts, colours and patterns),
//! each with seven variants (centre crop, half scale, mirror, JPEG quality 40, brighter, rotated
//! 8 degrees, another background), hidden among random garments as distractors. For each
//! descriptor (the model, the classical one) every base and distractor is catalogued, then each
//! variant searches: recall@1 and recall@5 are the share whose original is the first or among
//! the first five matches. A distractor is never another picture of a base product: one of a
//! base garment's cut and pattern differs from its colour by at least 120 (summed over R, G, B;
//! the brightness variant alone moves it by 120). Also: embedding time per image, and search
//! time and memory with 10,000 and 100,000 catalogued vectors of the model's size.

// The worker's allocator, so the memory figures are the worker's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use image::{Rgb, RgbImage, imageops::FilterType};
use imagejob_operator::similarity::{
    Catalog, CatalogEntry, MODEL_DESCRIPTOR, MODEL_SHARE, descriptor,
    model::{EMBEDDING_DIMS, EfficientNetLite0},
};
use serde_json::{Value, json};
use std::{
    cell::RefCell,
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    path::PathBuf,
    time::Instant,
};

struct Args {
    distractors: usize,
    vectors: Vec<usize>,
    model_shares: Vec<f32>,
    json: Option<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        distractors: 10_000,
        vectors: vec![10_000, 100_000],
        model_shares: vec![MODEL_SHARE],
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--distractors" => {
                args.distractors = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--distractors N")
            }
            "--vectors" => {
                args.vectors = it
                    .next()
                    .expect("--vectors N,N")
                    .split(',')
                    .map(|v| v.parse().expect("a count"))
                    .collect()
            }
            "--model-shares" => {
                args.model_shares = it
                    .next()
                    .expect("--model-shares S,S")
                    .split(',')
                    .map(|v| v.parse().expect("a share between 0 and 1"))
                    .collect()
            }
            "--json" => args.json = it.next().map(PathBuf::from),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// A deterministic pseudo-random sequence (64-bit LCG), so every run draws the same set.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

const BACKGROUND: [u8; 3] = [235, 235, 228];

fn garment(colour: [u8; 3], cut: u32, pattern: u32, size: u32, background: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let (u, v) = (x * 100 / size, y * 100 / size);
        let inside = match cut {
            0 => {
                ((30..70).contains(&u) && (25..90).contains(&v))
                    || ((10..90).contains(&u) && (25..45).contains(&v))
            }
            1 => {
                ((10..75).contains(&v) && ((30..48).contains(&u) || (52..70).contains(&u)))
                    || ((30..70).contains(&u) && (10..25).contains(&v))
            }
            2 => (15..92).contains(&v) && u + 5 >= 50 - v / 2 && u <= 50 + v / 2,
            _ => (20..80).contains(&u) && (30..70).contains(&v),
        };
        let marked = match pattern {
            1 => (v / 6) % 2 == 0,
            2 => u % 12 < 4 && v % 12 < 4,
            3 => (u / 10 + v / 10) % 2 == 0,
            _ => false,
        };
        match (inside, marked) {
            (true, false) => Rgb(colour),
            (true, true) => Rgb([250, 250, 250]),
            _ => Rgb(background),
        }
    })
}

fn photo(name: &str) -> RgbImage {
    let cache = std::env::var_os("IJ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/imagejob-operator")
        });
    let path = cache.join("photos").join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-deps.sh)", path.display()))
        .to_rgb8()
}

fn rotate(image: &RgbImage, degrees: f32, fill: [u8; 3]) -> RgbImage {
    let (w, h) = image.dimensions();
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let (sx, sy) = (c * dx + s * dy + cx, -s * dx + c * dy + cy);
        if sx >= 0.0 && sy >= 0.0 && (sx as u32) < w && (sy as u32) < h {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb(fill)
        }
    })
}

fn on_background(image: &RgbImage, colour: [u8; 3]) -> RgbImage {
    let (w, h) = image.dimensions();
    let margin = w.max(h) / 6;
    let mut canvas = RgbImage::from_pixel(w + 2 * margin, h + 2 * margin, Rgb(colour));
    image::imageops::overlay(&mut canvas, image, i64::from(margin), i64::from(margin));
    // A garment's own background becomes the new colour too.
    for p in canvas.pixels_mut() {
        if p.0 == BACKGROUND {
            *p = Rgb(colour);
        }
    }
    canvas
}

fn variants(base: &RgbImage) -> Vec<(&'static str, RgbImage)> {
    let (w, h) = base.dimensions();
    let jpeg = {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 40)
            .encode_image(base)
            .expect("jpeg");
        image::load_from_memory(&bytes).expect("decode").to_rgb8()
    };
    vec![
        (
            "crop",
            image::imageops::crop_imm(base, w / 10, h / 10, w * 8 / 10, h * 8 / 10).to_image(),
        ),
        (
            "scale",
            image::imageops::resize(base, w / 2, h / 2, FilterType::Triangle),
        ),
        ("flip", image::imageops::flip_horizontal(base)),
        ("jpeg", jpeg),
        ("brightness", image::imageops::brighten(base, 40)),
        ("rotation", rotate(base, 8.0, BACKGROUND)),
        ("background", on_background(base, [90, 120, 160])),
    ]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms_stats(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    json!({"p50_ms": percentile(&samples, 0.5), "p99_ms": percentile(&samples, 0.99), "n": samples.len()})
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

type Describe<'a> = Box<dyn Fn(&RgbImage) -> (Vec<f32>, u64) + 'a>;

fn entry(id: String, (vector, hash): (Vec<f32>, u64)) -> CatalogEntry {
    CatalogEntry {
        image_id: id.clone(),
        workflow_id: id,
        title: None,
        url: String::new(),
        hash,
        vector,
    }
}

/// Catalogues bases and distractors with `describe`, then searches with every variant.
fn evaluate(
    name: &str,
    describe: &Describe,
    bases: &[(String, RgbImage)],
    distractors: &[RgbImage],
) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Catalog::open(&dir.path().join("catalog.redb")).expect("catalog");
    let mut embed_ms = Vec::new();
    let mut timed = |image: &RgbImage| {
        let start = Instant::now();
        let described = describe(image);
        embed_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        described
    };
    let mut entries: Vec<CatalogEntry> = bases
        .iter()
        .map(|(id, image)| entry(id.clone(), timed(image)))
        .collect();
    for (i, image) in distractors.iter().enumerate() {
        entries.push(entry(format!("distractor-{i}"), timed(image)));
        if entries.len() >= 1_000 {
            catalog
                .insert_all(std::mem::take(&mut entries))
                .expect("insert");
        }
    }
    catalog.insert_all(entries).expect("insert");
    let mut by_kind: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for (id, base) in bases {
        for (kind, variant) in variants(base) {
            let (vector, hash) = timed(&variant);
            let found = catalog.search(&vector, hash, "query").expect("search");
            let rank = found
                .iter()
                .position(|m| m.image_id.as_deref() == Some(id.as_str()));
            let counts = by_kind.entry(kind).or_default();
            counts.0 += 1;
            counts.1 += usize::from(rank == Some(0));
            counts.2 += usize::from(rank.is_some_and(|r| r < 5));
        }
    }
    let (n, r1, r5) = by_kind
        .values()
        .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let per_kind: serde_json::Map<String, Value> = by_kind
        .iter()
        .map(|(k, (n, r1, r5))| ((*k).to_owned(), json!({"recall_at_1": *r1 as f64 / *n as f64, "recall_at_5": *r5 as f64 / *n as f64})))
        .collect();
    json!({"descriptor": name, "queries": n, "catalogued": catalog.len(),
        "recall_at_1": r1 as f64 / n as f64, "recall_at_5": r5 as f64 / n as f64,
        "by_variant": per_kind, "embedding": ms_stats(embed_ms)})
}

/// Search time and memory with `n` random unit vectors of the model's size.
fn search_scale(n: usize) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Catalog::open(&dir.path().join("catalog.redb")).expect("catalog");
    let before = rss_mib();
    let mut rng = Lcg(n as u64);
    let mut random = || {
        let mut v: Vec<f32> = (0..EMBEDDING_DIMS)
            .map(|_| rng.next() as f32 / u32::MAX as f32 - 0.5)
            .collect();
        descriptor::normalize(&mut v);
        v
    };
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(entry(format!("v-{i}"), (random(), i as u64)));
        if batch.len() == 5_000 {
            catalog
                .insert_all(std::mem::take(&mut batch))
                .expect("insert");
        }
    }
    catalog.insert_all(batch).expect("insert");
    let after = rss_mib();
    let mut times = Vec::new();
    for _ in 0..200 {
        let query = random();
        let start = Instant::now();
        let found = catalog.search(&query, 0, "q").expect("search");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found.len(), 10);
    }
    json!({"vectors": n, "search": ms_stats(times), "rss_mib": after, "rss_added_mib": after - before})
}

fn main() {
    let args = args();
    let model_path = std::env::var_os("IMAGE_MODEL_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/imagejob-operator/models/efficientnet-lite0.safetensors")
        });
    let model =
        EfficientNetLite0::load(&model_path).expect("the image model (scripts/install-deps.sh)");
    let mut bases: Vec<(String, RgbImage)> =
        ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
            .iter()
            .map(|n| ((*n).to_owned(), photo(n)))
            .collect();
    let colours = [[200, 30, 30], [30, 50, 200], [30, 150, 60], [230, 200, 40]];
    let mut base_garments = Vec::new();
    for (c, colour) in colours.iter().enumerate() {
        for cut in 0..3u32 {
            let pattern = (c as u32 + cut) % 4;
            base_garments.push((*colour, cut, pattern));
            bases.push((
                format!("garment-{c}-{cut}"),
                garment(*colour, cut, pattern, 320, BACKGROUND),
            ));
        }
    }
    let another_picture_of_a_base = |colour: [u8; 3], cut: u32, pattern: u32| {
        base_garments.iter().any(|(c, k, p)| {
            let distance: u32 = c
                .iter()
                .zip(colour)
                .map(|(a, b)| u32::from(a.abs_diff(b)))
                .sum();
            *k == cut && *p == pattern && distance < 120
        })
    };
    let mut rng = Lcg(7);
    let mut distractors: Vec<RgbImage> = Vec::with_capacity(args.distractors);
    while distractors.len() < args.distractors {
        let colour = [
            rng.below(256) as u8,
            rng.below(256) as u8,
            rng.below(256) as u8,
        ];
        let (cut, pattern) = (rng.below(4), rng.below(4));
        let tint = 200 + rng.below(56) as u8;
        let size = 160 + rng.below(160);
        let background = [tint, tint, 255 - rng.below(40) as u8];
        if !another_picture_of_a_base(colour, cut, pattern) {
            distractors.push(garment(colour, cut, pattern, size, background));
        }
    }
    eprintln!(
        "{} bases x 7 variants among {} distractors",
        bases.len(),
        distractors.len()
    );
    let classical: Describe = Box::new(|image| {
        let d = descriptor::classical(image);
        (d.vector, d.hash)
    });
    // Each image's embedding, computed once: the joined descriptors reuse the network's output
    // (their embedding times are then the histogram's and the lookup's only).
    let embeddings: RefCell<HashMap<u64, Vec<f32>>> = RefCell::default();
    let embed = |image: &RgbImage| -> Vec<f32> {
        let mut hasher = DefaultHasher::new();
        image.dimensions().hash(&mut hasher);
        image.as_raw().hash(&mut hasher);
        let key = hasher.finish();
        if let Some(found) = embeddings.borrow().get(&key) {
            return found.clone();
        }
        let embedding = model.infer(image).expect("inference").embedding;
        embeddings.borrow_mut().insert(key, embedding.clone());
        embedding
    };
    let network: Describe = Box::new(|image| (embed(image), descriptor::classical(image).hash));
    let mut quality = vec![evaluate(
        imagejob_operator::similarity::model::DESCRIPTOR,
        &network,
        &bases,
        &distractors,
    )];
    for share in &args.model_shares {
        let joined: Describe = Box::new(|image| {
            (
                descriptor::with_colour(embed(image), image, *share),
                descriptor::classical(image).hash,
            )
        });
        let name = if *share == MODEL_SHARE {
            MODEL_DESCRIPTOR.to_owned()
        } else {
            format!("{MODEL_DESCRIPTOR} (model share {share})")
        };
        quality.push(evaluate(&name, &joined, &bases, &distractors));
    }
    quality.push(evaluate(
        descriptor::CLASSICAL,
        &classical,
        &bases,
        &distractors,
    ));
    let scale: Vec<Value> = args.vectors.iter().map(|n| search_scale(*n)).collect();
    println!(
        "| descriptor | queries | catalogued | recall@1 | recall@5 | embed p50 ms | embed p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for q in &quality {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.1} | {:.1} |",
            q["descriptor"].as_str().unwrap_or(""),
            q["queries"],
            q["catalogued"],
            q["recall_at_1"].as_f64().unwrap_or(f64::NAN),
            q["recall_at_5"].as_f64().unwrap_or(f64::NAN),
            q["embedding"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            q["embedding"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!();
    println!(
        "| vectors ({EMBEDDING_DIMS} dims) | search p50 ms | search p99 ms | process RSS MiB | RSS added MiB |"
    );
    println!("|---|---|---|---|---|");
    for s in &scale {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.0} |",
            s["vectors"],
            s["search"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            s["search"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
            s["rss_mib"].as_f64().unwrap_or(f64::NAN),
            s["rss_added_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let report = json!({"quality": quality, "search": scale, "distractors": args.distractors,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)});
    let text = serde_json::to_string_pretty(&report).expect("json");
    println!("\n{text}");
    if let Some(path) = args.json {
        std::fs::write(&path, text).expect("writing the JSON report");
    }
}
