//! A local image server on loopback: product pictures made here (garments of several shapes,
//! colours and patterns), a near-duplicate, and every kind of bad answer an image URL can give
//! (too large, not an image, a decompression bomb, a redirect elsewhere, no answer at all). It
//! counts the requests of each path.

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use image::{Rgb, RgbImage};
use std::{
    collections::BTreeMap,
    io::Cursor,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

/// A garment drawn on a light background: `shape` 0 shirt, 1 trousers, 2 dress; `pattern` 0
/// plain, 1 stripes, 2 dots.
pub fn garment(colour: [u8; 3], shape: u8, pattern: u8, size: u32) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let (u, v) = (x * 100 / size, y * 100 / size);
        let inside = match shape {
            0 => {
                ((30..70).contains(&u) && (25..90).contains(&v))
                    || ((10..90).contains(&u) && (25..45).contains(&v))
            }
            1 => {
                (25..75).contains(&v.max(10)) && ((30..48).contains(&u) || (52..70).contains(&u))
                    || ((30..70).contains(&u) && (10..25).contains(&v))
            }
            _ => (15..92).contains(&v) && u + 5 >= 50 - v / 2 && u <= 50 + v / 2,
        };
        let marked = match pattern {
            1 => (v / 6) % 2 == 0,
            2 => (u % 12 < 4) && (v % 12 < 4),
            _ => false,
        };
        match (inside, marked) {
            (true, false) => Rgb(colour),
            (true, true) => Rgb([250, 250, 250]),
            _ => Rgb([235, 235, 228]),
        }
    })
}

/// `image` encoded as PNG.
pub fn png(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

/// `image` encoded as JPEG at `quality`.
pub fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .expect("jpeg");
    out
}

/// A valid PNG whose header claims `side` x `side` pixels (its data is one pixel's): what a
/// decompression bomb looks like before it is decoded.
pub fn bomb(side: u32) -> Vec<u8> {
    let mut bytes = png(&RgbImage::new(1, 1));
    // IHDR: length (8..12), type (12..16), width (16..20), height (20..24), ..., CRC (29..33).
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[derive(Default)]
struct Served {
    files: BTreeMap<String, (Vec<u8>, &'static str)>,
    hits: BTreeMap<String, usize>,
}

/// The running server.
pub struct ImageServer {
    /// Its address (on 127.0.0.1).
    pub addr: SocketAddr,
    served: Arc<Mutex<Served>>,
}

impl ImageServer {
    /// Serves nothing yet but the fixed bad answers: `/big` (25 MiB, chunked, PNG-signed),
    /// `/page.html`, `/bomb.png`, `/hang` (never answers), `/redirect-to/{host}` (302 to
    /// `http://{host}:{port}/red.png`).
    pub async fn start() -> Self {
        let served = Arc::new(Mutex::new(Served::default()));
        let app = Router::new()
            .route(
                "/hang",
                get(|State(s): State<Arc<Mutex<Served>>>| async move {
                    count(&s, "hang");
                    std::future::pending::<()>().await;
                }),
            )
            .route(
                "/big",
                get(|State(s): State<Arc<Mutex<Served>>>| async move {
                    count(&s, "big");
                    let mut first = vec![0u8; 1 << 20];
                    first[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
                    let chunks = std::iter::once(first).chain((0..24).map(|_| vec![0u8; 1 << 20]));
                    let stream = futures::stream::iter(chunks.map(Ok::<_, std::io::Error>));
                    Response::builder()
                        .header(header::CONTENT_TYPE, "image/png")
                        .body(Body::from_stream(stream))
                        .unwrap()
                }),
            )
            .route("/redirect-to/{host}", get(redirect))
            .route("/{name}", get(file))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let server = Self { addr, served };
        server.put(
            "page.html",
            b"<!doctype html><title>shop</title>".to_vec(),
            "image/jpeg",
        );
        server.put("bomb.png", bomb(100_000), "image/png");
        server
    }

    /// Serves `bytes` at `/{name}` with `content_type` (which the worker must not trust).
    pub fn put(&self, name: &str, bytes: Vec<u8>, content_type: &'static str) {
        self.served
            .lock()
            .unwrap()
            .files
            .insert(name.into(), (bytes, content_type));
    }

    /// `http://127.0.0.1:{port}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// How many requests `/{path}` received (the first segment names it).
    pub fn hits(&self, path: &str) -> usize {
        self.served
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn count(served: &Mutex<Served>, path: &str) {
    *served.lock().unwrap().hits.entry(path.into()).or_default() += 1;
}

async fn file(State(s): State<Arc<Mutex<Served>>>, Path(name): Path<String>) -> Response {
    count(&s, &name);
    match s.lock().unwrap().files.get(&name) {
        Some((bytes, content_type)) => {
            ([(header::CONTENT_TYPE, *content_type)], bytes.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn redirect(
    State(s): State<Arc<Mutex<Served>>>,
    Path(host): Path<String>,
    request: axum::extract::Request,
) -> Response {
    count(&s, "redirect-to");
    let port = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':'))
        .map_or("80".to_owned(), |(_, p)| p.to_owned());
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://{host}:{port}/red.png"))],
    )
        .into_response()
}
