//! What a body is, from its first bytes (never from the server's `Content-Type`), and its size
//! in pixels from its header alone, before anything decodes it.

use std::io::Cursor;

/// The image formats accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 'PNG' 0D 0A 1A 0A`).
    Png,
    /// WebP (`'RIFF' size 'WEBP'`).
    WebP,
    /// GIF (`'GIF87a'` or `'GIF89a'`).
    Gif,
}

impl ImageFormat {
    fn decoder_format(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::WebP => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
        }
    }
}

/// The format `bytes` start as, or `None` when they are not an accepted image.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xff, 0xd8, 0xff, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Some(ImageFormat::Png),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageFormat::Gif),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Width and height read from the header of an image of `format`; `None` when the header is
/// not readable.
pub fn dimensions(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    image::ImageReader::with_format(Cursor::new(bytes), format.decoder_format())
        .into_dimensions()
        .ok()
}

/// Decodes an image whose header was checked, within `max_pixels`, as 8-bit RGB.
pub fn decode_rgb(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<image::RgbImage, image::ImageError> {
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format.decoder_format());
    let mut limits = image::Limits::default();
    // Room for the decoded pixels (4 bytes each at most) and the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    Ok(reader.decode()?.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn the_content_decides_not_the_name_or_header() {
        assert_eq!(sniff(&png(2, 2)), Some(ImageFormat::Png));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0rest"), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"GIF89a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::WebP));
        assert_eq!(sniff(b"<!doctype html><html>"), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn the_size_is_read_from_the_header_alone() {
        let image = png(300, 200);
        assert_eq!(dimensions(&image, ImageFormat::Png), Some((300, 200)));
        assert_eq!(dimensions(b"\x89PNG\r\n\x1a\n", ImageFormat::Png), None);
        let rgb = decode_rgb(&image, ImageFormat::Png, 1_000_000).unwrap();
        assert_eq!(rgb.dimensions(), (300, 200));
    }
}
