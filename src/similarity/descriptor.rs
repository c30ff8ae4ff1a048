//! The classical image descriptor: a colour histogram and a small grey-level layout, as one
//! unit vector compared by cosine, and a 64-bit difference hash (dHash) that marks exact
//! duplicates. Cheap, needs no model, robust to scale and JPEG re-encoding; weaker than a
//! learned embedding on crops and backgrounds.

use image::{RgbImage, imageops::FilterType};

/// Name of this descriptor in search results.
pub const CLASSICAL: &str = "colour-histogram+layout+dhash";
/// Side of the grey-level layout thumbnail (16 x 16 = 256 values).
const LAYOUT: u32 = 16;
/// Weight of the colour part against the layout part (each is a unit vector before).
const COLOUR_WEIGHT: f32 = 0.6;

/// One image's descriptor.
#[derive(Clone, Debug, PartialEq)]
pub struct Descriptor {
    /// A unit vector: cosine similarity is the dot product.
    pub vector: Vec<f32>,
    /// The difference hash: equal hashes mark exact (perceptual) duplicates.
    pub hash: u64,
}

/// Computes the classical descriptor of `image`.
pub fn classical(image: &RgbImage) -> Descriptor {
    let mut vector = colour_histogram(image);
    scale(&mut vector, COLOUR_WEIGHT);
    let mut layout = grey_layout(image);
    scale(&mut layout, 1.0 - COLOUR_WEIGHT);
    vector.extend(layout);
    normalize(&mut vector);
    Descriptor {
        vector,
        hash: dhash(image),
    }
}

/// `embedding` (a unit vector) joined with `image`'s colour histogram into one unit vector,
/// weighted so that the cosine of two such vectors is `share` times their embeddings' cosine
/// plus `1 - share` times their histograms'.
pub fn with_colour(mut embedding: Vec<f32>, image: &RgbImage, share: f32) -> Vec<f32> {
    scale(&mut embedding, share.sqrt());
    let mut colour = colour_histogram(image);
    scale(&mut colour, (1.0 - share).sqrt());
    embedding.extend(colour);
    embedding
}

/// The colour histogram of the image's foreground: the pixels that differ from the colour of
/// its border (a product photographed on a plain background keeps the product's colours only;
/// without such a border every pixel counts), in hue and saturation bins for colours and
/// lightness bins for greys, so a brighter or darker copy keeps its bins. The square roots of
/// the normalized counts (the Hellinger kernel: cosine between them compares distributions),
/// as a unit vector.
fn colour_histogram(image: &RgbImage) -> Vec<f32> {
    let small = image::imageops::resize(image, 64, 64, FilterType::Triangle);
    let border = border_colour(&small);
    let differs = |p: &image::Rgb<u8>| -> bool {
        p.0.iter()
            .zip(border)
            .map(|(a, b)| u32::from(a.abs_diff(b)))
            .sum::<u32>()
            > BACKGROUND_DISTANCE
    };
    let foreground = small.pixels().filter(|p| differs(p)).count();
    let all = foreground * 20 < small.pixels().len();
    let mut counts = vec![0f32; HUES * SATURATIONS + GREYS];
    for p in small.pixels().filter(|p| all || differs(p)) {
        counts[colour_bin(p.0)] += 1.0;
    }
    let mut histogram: Vec<f32> = counts.into_iter().map(f32::sqrt).collect();
    normalize(&mut histogram);
    histogram
}

/// Hue bins of the colour histogram.
const HUES: usize = 12;
/// Saturation bins of each hue.
const SATURATIONS: usize = 2;
/// Lightness bins of the greys (saturation below [`GREY_SATURATION`]).
const GREYS: usize = 4;
/// Below this saturation (0 to 1) a pixel counts as a grey.
const GREY_SATURATION: f32 = 0.2;
/// A pixel this far (summed over R, G, B) from the border's colour is foreground.
const BACKGROUND_DISTANCE: u32 = 60;

/// The bin of an RGB colour: hue and saturation for a colour, lightness for a grey.
fn colour_bin([r, g, b]: [u8; 3]) -> usize {
    let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let saturation = if max > 0.0 { (max - min) / max } else { 0.0 };
    if saturation < GREY_SATURATION || max < 40.0 {
        return HUES * SATURATIONS + ((max / 256.0) * GREYS as f32) as usize;
    }
    let delta = max - min;
    let hue = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    } / 6.0;
    let hue_bin = ((hue * HUES as f32) as usize).min(HUES - 1);
    let saturation_bin =
        (((saturation - GREY_SATURATION) / (1.0 - GREY_SATURATION)) * SATURATIONS as f32) as usize;
    hue_bin * SATURATIONS + saturation_bin.min(SATURATIONS - 1)
}

/// The mean colour of the outermost two pixels of every side.
fn border_colour(image: &RgbImage) -> [u8; 3] {
    let (w, h) = image.dimensions();
    let mut sum = [0u64; 3];
    let mut n = 0u64;
    for (x, y, p) in image.enumerate_pixels() {
        if x < 2 || y < 2 || x + 2 >= w || y + 2 >= h {
            for (s, c) in sum.iter_mut().zip(p.0) {
                *s += u64::from(c);
            }
            n += 1;
        }
    }
    sum.map(|s| (s / n.max(1)) as u8)
}

/// The grey levels of a 16 x 16 thumbnail, centred on their mean, as a unit vector.
fn grey_layout(image: &RgbImage) -> Vec<f32> {
    let grey = image::imageops::grayscale(image);
    let small = image::imageops::resize(&grey, LAYOUT, LAYOUT, FilterType::Triangle);
    let values: Vec<f32> = small.pixels().map(|p| f32::from(p[0])).collect();
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let mut centred: Vec<f32> = values.into_iter().map(|v| v - mean).collect();
    normalize(&mut centred);
    centred
}

/// dHash: a 9 x 8 grey thumbnail, one bit per pair of horizontal neighbours (left brighter).
fn dhash(image: &RgbImage) -> u64 {
    let grey = image::imageops::grayscale(image);
    let small = image::imageops::resize(&grey, 9, 8, FilterType::Triangle);
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let brighter = small.get_pixel(x, y)[0] > small.get_pixel(x + 1, y)[0];
            hash = (hash << 1) | u64::from(brighter);
        }
    }
    hash
}

fn scale(v: &mut [f32], by: f32) {
    v.iter_mut().for_each(|x| *x *= by);
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        scale(v, 1.0 / norm);
    }
}

/// Cosine similarity of two unit vectors (their dot product). Eight running sums, so the
/// compiler can keep them in one SIMD register: a single sum must add in order and cannot.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A shirt-like shape of `colour` on a light background.
    fn garment(colour: [u8; 3], size: u32) -> RgbImage {
        RgbImage::from_fn(size, size, |x, y| {
            let (u, v) = (x * 100 / size, y * 100 / size);
            let body = (30..70).contains(&u) && (25..90).contains(&v);
            let sleeves = (10..90).contains(&u) && (25..45).contains(&v);
            if body || sleeves {
                Rgb(colour)
            } else {
                Rgb([235, 235, 230])
            }
        })
    }

    #[test]
    fn a_rescaled_copy_is_closer_than_another_colour_or_shape() {
        let red = classical(&garment([200, 30, 30], 256));
        let red_small = classical(&garment([200, 30, 30], 100));
        let blue = classical(&garment([30, 40, 200], 256));
        let stripes = classical(&RgbImage::from_fn(256, 256, |_, y| {
            if (y / 16) % 2 == 0 {
                Rgb([200, 30, 30])
            } else {
                Rgb([235, 235, 230])
            }
        }));
        let same = cosine(&red.vector, &red_small.vector);
        assert!(same > 0.95, "{same}");
        assert!(cosine(&red.vector, &blue.vector) < same);
        assert!(cosine(&red.vector, &stripes.vector) < same);
        let norm: f32 = red.vector.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }

    #[test]
    fn the_colour_histogram_sees_the_product_not_its_background_or_its_lighting() {
        let red = garment([200, 30, 30], 64);
        let histogram = colour_histogram(&red);
        let on_blue = RgbImage::from_fn(64, 64, |x, y| {
            let p = *red.get_pixel(x, y);
            if p.0 == [200, 30, 30] {
                p
            } else {
                Rgb([90, 120, 160])
            }
        });
        let brighter = image::imageops::brighten(&red, 40);
        let blue = garment([30, 50, 200], 64);
        assert!(cosine(&histogram, &colour_histogram(&on_blue)) > 0.95);
        assert!(cosine(&histogram, &colour_histogram(&brighter)) > 0.9);
        assert!(cosine(&histogram, &colour_histogram(&blue)) < 0.3);
    }

    #[test]
    fn a_joined_vectors_cosine_weighs_its_two_parts() {
        let red = garment([200, 30, 30], 64);
        let blue = garment([30, 50, 200], 64);
        let (a, b) = (vec![1.0, 0.0], vec![0.0, 1.0]);
        let colours = cosine(&colour_histogram(&red), &colour_histogram(&blue));
        let joined_a = with_colour(a, &red, 0.7);
        let joined_b = with_colour(b, &blue, 0.7);
        let norm = cosine(&joined_a, &joined_a);
        assert!((norm - 1.0).abs() < 1e-5, "a unit vector: {norm}");
        let expected = 0.7 * 0.0 + 0.3 * colours;
        assert!((cosine(&joined_a, &joined_b) - expected).abs() < 1e-5);
    }

    #[test]
    fn the_dot_product_counts_every_element() {
        let a: Vec<f32> = (0..21).map(|i| i as f32).collect();
        let b = vec![1f32; 21];
        assert_eq!(cosine(&a, &b), (0..21).sum::<i32>() as f32);
    }

    #[test]
    fn the_hash_marks_duplicates_and_tells_other_images_apart() {
        let a = garment([200, 30, 30], 256);
        assert_eq!(classical(&a).hash, classical(&a.clone()).hash);
        let flipped = image::imageops::flip_vertical(&a);
        assert_ne!(classical(&a).hash, classical(&flipped).hash);
    }
}
