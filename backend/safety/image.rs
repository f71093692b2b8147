//! Images as the judge sees them, and the checks of imported images.
//!
//! As the authors ran the judge, an image is shrunk so that its longer side is at most 256 px
//! (aspect ratio kept; smaller images keep their size), encoded as PNG and sent as a
//! `data:image/png;base64,...` URL. Decoding is bounded: inputs above a byte limit or a pixel
//! limit (by default 30 MiB and 50 megapixels) are refused with a clear error before any pixel
//! buffer is allocated. [`content_hash`] gives the SHA-256 used in cache keys and for
//! de-duplication; [`validate_image`] is the importer's check.

use std::io::Cursor;

use ::image::imageops::FilterType;
use ::image::{DynamicImage, ImageFormat, ImageReader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::template::hex_lower;
use super::{Result, SafetyError};

/// Longest side, in pixels, of the image sent to the judge.
pub const JUDGE_MAX_SIDE: u32 = 256;
/// Default limit on the size of an image file: 30 MiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 30 * 1024 * 1024;
/// Default limit on the pixel count of an image: 50 megapixels.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 50_000_000;

/// Limits applied before decoding an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLimits {
    /// Largest accepted input, in bytes.
    pub max_bytes: u64,
    /// Largest accepted width x height.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

/// What validation learnt about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Format name: `png`, `jpeg`, `webp`, `gif` or `bmp`.
    pub format: String,
}

/// An image prepared for the judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeImage {
    /// PNG bytes of the (possibly shrunk) image.
    pub png: Vec<u8>,
    /// Width of the PNG.
    pub width: u32,
    /// Height of the PNG.
    pub height: u32,
    /// Width and height of the input image.
    pub original: ImageInfo,
}

impl JudgeImage {
    /// The `data:image/png;base64,...` URL of the PNG.
    pub fn data_url(&self) -> String {
        png_data_url(&self.png)
    }
}

/// SHA-256 of `bytes`, lower-case hex (64 characters).
pub fn content_hash(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

/// The `data:image/png;base64,...` URL of PNG bytes.
pub fn png_data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", BASE64.encode(png))
}

/// Lower-case name of an image format.
fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Png => "png".to_string(),
        ImageFormat::Jpeg => "jpeg".to_string(),
        ImageFormat::WebP => "webp".to_string(),
        ImageFormat::Gif => "gif".to_string(),
        ImageFormat::Bmp => "bmp".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Checks the byte limit, sniffs the format and reads the dimensions (checking the pixel limit)
/// without decoding pixels.
fn inspect(bytes: &[u8], max_bytes: u64, max_pixels: u64) -> Result<(ImageFormat, u32, u32)> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > max_bytes {
        return Err(SafetyError::ImageTooLarge {
            bytes: size,
            limit: max_bytes,
        });
    }
    let format = ::image::guess_format(bytes).map_err(|_| SafetyError::UnknownImageFormat)?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| SafetyError::ImageDecode(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(SafetyError::ImageTooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(SafetyError::ImageDecode(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    Ok((format, width, height))
}

/// Decodes `bytes` within the limits.
fn decode_limited(bytes: &[u8], limits: ImageLimits) -> Result<(DynamicImage, ImageInfo)> {
    let (format, width, height) = inspect(bytes, limits.max_bytes, limits.max_pixels)?;
    let image = ImageReader::with_format(Cursor::new(bytes), format)
        .decode()
        .map_err(|e| SafetyError::ImageDecode(e.to_string()))?;
    let info = ImageInfo {
        width,
        height,
        format: format_name(format),
    };
    Ok((image, info))
}

/// Validates an image for import: within `max_bytes` and `max_pixels`, a supported format, and
/// fully decodable (a truncated or corrupt file is refused).
pub fn validate_image(bytes: &[u8], max_bytes: u64, max_pixels: u64) -> Result<ImageInfo> {
    let limits = ImageLimits {
        max_bytes,
        max_pixels,
    };
    decode_limited(bytes, limits).map(|(_, info)| info)
}

/// Size of an image whose longer side is brought down to `max_side`, keeping the aspect ratio.
/// The shorter side is rounded to the nearest pixel (halves round up) and is at least 1.
/// Images already within `max_side` keep their size. E.g. 1000x400 -> 256x102 (102.4 rounds
/// down), 1000x402 -> 256x103 (102.9 rounds up).
pub fn shrunk_dimensions(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let max_side = max_side.max(1);
    let longer = width.max(height);
    if longer <= max_side {
        return (width, height);
    }
    let scale_side = |side: u32| -> u32 {
        let numerator = u64::from(side) * u64::from(max_side) * 2 + u64::from(longer);
        let rounded = numerator / (2 * u64::from(longer));
        u32::try_from(rounded)
            .unwrap_or(max_side)
            .clamp(1, max_side)
    };
    if width >= height {
        (max_side, scale_side(height))
    } else {
        (scale_side(width), max_side)
    }
}

/// Prepares an image for the judge: decode within `limits`, shrink so the longer side is at
/// most `max_side` ([`JUDGE_MAX_SIDE`] as the authors did), encode as PNG (RGB, or RGBA when the
/// input has transparency). Animated images use their first frame.
pub fn prepare_judge_image(bytes: &[u8], limits: ImageLimits, max_side: u32) -> Result<JudgeImage> {
    let (image, original) = decode_limited(bytes, limits)?;
    let (width, height) = shrunk_dimensions(original.width, original.height, max_side);
    let normalized = if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    };
    let resized = if (width, height) == (original.width, original.height) {
        normalized
    } else {
        normalized.resize_exact(width, height, FilterType::CatmullRom)
    };
    let mut png = Vec::new();
    resized
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| SafetyError::ImageEncode(e.to_string()))?;
    Ok(JudgeImage {
        png,
        width,
        height,
        original,
    })
}

/// The judge's data URL for an image, with default limits and the 256 px side.
pub fn judge_image_data_url(bytes: &[u8]) -> Result<String> {
    prepare_judge_image(bytes, ImageLimits::default(), JUDGE_MAX_SIDE).map(|image| image.data_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_rounding() {
        assert_eq!(shrunk_dimensions(1000, 400, 256), (256, 102));
        assert_eq!(shrunk_dimensions(1000, 402, 256), (256, 103));
        assert_eq!(shrunk_dimensions(400, 1000, 256), (102, 256));
        assert_eq!(shrunk_dimensions(256, 10, 256), (256, 10));
        assert_eq!(shrunk_dimensions(100_000, 1, 256), (256, 1));
        assert_eq!(shrunk_dimensions(300, 300, 256), (256, 256));
        assert_eq!(shrunk_dimensions(5, 5, 0), (1, 1));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            validate_image(b"not an image", 1000, 1000),
            Err(SafetyError::UnknownImageFormat)
        );
        assert!(matches!(
            validate_image(&[0u8; 10], 5, 1000),
            Err(SafetyError::ImageTooLarge {
                bytes: 10,
                limit: 5
            })
        ));
        assert_eq!(content_hash(b"abc").len(), 64);
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
