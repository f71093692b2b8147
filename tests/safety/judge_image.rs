//! Tests of the judge image preparation and image validation.

use std::io::Cursor;

use base64::Engine as _;
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};

use crate::safety::SafetyError;
use crate::safety::image::{
    ImageLimits, JUDGE_MAX_SIDE, judge_image_data_url, prepare_judge_image, validate_image,
};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A PNG of the given size with a gradient.
pub fn png_bytes(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    encode(DynamicImage::ImageRgb8(image), ImageFormat::Png)
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

#[test]
fn wide_image_is_shrunk_to_256_keeping_aspect() {
    // 1000x400: 400 * 256 / 1000 = 102.4, rounded to the nearest pixel: 102.
    let prepared = prepare_judge_image(
        &png_bytes(1000, 400),
        ImageLimits::default(),
        JUDGE_MAX_SIDE,
    )
    .unwrap();
    assert_eq!((prepared.width, prepared.height), (256, 102));
    assert_eq!(
        (prepared.original.width, prepared.original.height),
        (1000, 400)
    );
    assert!(prepared.png.starts_with(PNG_SIGNATURE));
    let decoded = image::load_from_memory(&prepared.png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (256, 102));
}

#[test]
fn tall_jpeg_is_shrunk_and_sent_as_png_data_url() {
    let jpeg = encode(
        DynamicImage::ImageRgb8(RgbImage::new(300, 600)),
        ImageFormat::Jpeg,
    );
    let url = judge_image_data_url(&jpeg).unwrap();
    let payload = url.strip_prefix("data:image/png;base64,").unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    assert!(png.starts_with(PNG_SIGNATURE));
    let decoded = image::load_from_memory(&png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (128, 256));
}

#[test]
fn small_images_keep_their_size_and_alpha() {
    let rgba = encode(
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(100, 50, image::Rgba([1, 2, 3, 4]))),
        ImageFormat::Png,
    );
    let prepared = prepare_judge_image(&rgba, ImageLimits::default(), JUDGE_MAX_SIDE).unwrap();
    assert_eq!((prepared.width, prepared.height), (100, 50));
    let decoded = image::load_from_memory(&prepared.png).unwrap();
    assert!(decoded.color().has_alpha());
    let exact = prepare_judge_image(&png_bytes(256, 256), ImageLimits::default(), 256).unwrap();
    assert_eq!((exact.width, exact.height), (256, 256));
}

/// CRC-32 (IEEE) for patching a PNG chunk.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    // A 1x1 PNG whose header claims 10000x10000 (100 megapixels): refused from the header alone.
    let mut png = png_bytes(1, 1);
    png[16..20].copy_from_slice(&10_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&10_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let error = prepare_judge_image(&png, ImageLimits::default(), JUDGE_MAX_SIDE).unwrap_err();
    assert_eq!(
        error,
        SafetyError::ImageTooManyPixels {
            width: 10_000,
            height: 10_000,
            pixels: 100_000_000,
            limit: 50_000_000
        }
    );
    assert_eq!(
        error.to_string(),
        "image is 10000x10000 (100000000 pixels), above the limit of 50000000 pixels"
    );

    let small = png_bytes(100, 50);
    assert!(matches!(
        validate_image(&small, 10, u64::MAX),
        Err(SafetyError::ImageTooLarge { limit: 10, .. })
    ));
    assert!(matches!(
        validate_image(&small, u64::MAX, 4_999),
        Err(SafetyError::ImageTooManyPixels { pixels: 5_000, .. })
    ));
}

#[test]
fn validation_reports_format_and_corruption() {
    let info = validate_image(&png_bytes(7, 3), u64::MAX, u64::MAX).unwrap();
    assert_eq!(
        (info.width, info.height, info.format.as_str()),
        (7, 3, "png")
    );
    let jpeg = encode(
        DynamicImage::ImageRgb8(RgbImage::new(8, 8)),
        ImageFormat::Jpeg,
    );
    assert_eq!(
        validate_image(&jpeg, u64::MAX, u64::MAX).unwrap().format,
        "jpeg"
    );
    let full = png_bytes(64, 64);
    let truncated = &full[..full.len() / 2];
    assert!(matches!(
        validate_image(truncated, u64::MAX, u64::MAX),
        Err(SafetyError::ImageDecode(_))
    ));
    assert!(validate_image(b"GIF89a-not-really", u64::MAX, u64::MAX).is_err());
}
