//! Image preprocessing shared by the vision families: RGB conversion,
//! resizing exactly as Pillow does it ([`pil_resize`]: the resampling that
//! transformers' PIL image processors run), centre crop, padding, rescale +
//! normalisation into CHW tensors, Qwen's "smart resize" and patch
//! flattening, and LLaVA-NeXT's any-resolution tiling.

use candle_core::{Device, Tensor};
use image::{DynamicImage, Rgb, RgbImage};

use crate::inference::InferenceError;

/// CLIP / OpenAI mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP / OpenAI standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// SigLIP / Qwen mean and standard deviation.
pub const HALF: [f32; 3] = [0.5, 0.5, 0.5];

/// Mean/std from a `preprocessor_config.json`, or the given defaults.
pub fn mean_std(
    pre: Option<&serde_json::Value>,
    mean: [f32; 3],
    std: [f32; 3],
) -> ([f32; 3], [f32; 3]) {
    let read = |key: &str, d: [f32; 3]| -> [f32; 3] {
        pre.and_then(|p| p.get(key))
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 3)
            .and_then(|a| {
                let v: Vec<f32> = a
                    .iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect();
                (v.len() == 3).then(|| [v[0], v[1], v[2]])
            })
            .unwrap_or(d)
    };
    (read("image_mean", mean), read("image_std", std))
}

/// RGB copy of any image.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    img.to_rgb8()
}

/// Pillow's resampling filters (the `resample` codes of image processor configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `resample: 2`.
    Bilinear,
    /// `resample: 3`, the default of the CLIP, SigLIP and Qwen-VL processors.
    Bicubic,
}

impl Resample {
    /// From a processor config's `resample` code (bicubic when absent or unknown).
    pub fn from_code(code: Option<u64>) -> Self {
        if code == Some(2) {
            Self::Bilinear
        } else {
            Self::Bicubic
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => (1.0 - x).max(0.0),
            Self::Bicubic => {
                // Keys' cubic with a = -0.5, Pillow's BICUBIC.
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One output sample's window into the input: first index and integer weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.
fn taps(in_size: usize, out_size: usize, filter: Resample) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if scaled < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples along one axis: `horizontal` maps columns, otherwise rows.
fn resample_axis(img: &RgbImage, out_len: usize, horizontal: bool, filter: Resample) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let taps = taps(if horizontal { w } else { h }, out_len, filter);
    let src = img.as_raw();
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let t = &taps[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (k, &wk) in t.weights.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (t.start + k, y)
                    } else {
                        (x, t.start + k)
                    };
                    acc += i64::from(src[(sy * w + sx) * 3 + c]) * i64::from(wk);
                }
                out[(y * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    RgbImage::from_raw(ow as u32, oh as u32, out).expect("buffer has the image's size")
}

/// Resizes to `w`×`h` with Pillow's algorithm (`Image.resize` without a box or
/// `reducing_gap`): separable convolution with the filter widened by the
/// downscale factor, integer weights with 22 fractional bits, horizontal pass
/// first, each pass rounded to 8 bits. The output equals Pillow's byte for byte.
pub fn pil_resize(img: &RgbImage, w: u32, h: u32, filter: Resample) -> RgbImage {
    let (w, h) = (w.max(1), h.max(1));
    let mut cur = std::borrow::Cow::Borrowed(img);
    if cur.width() != w {
        cur = std::borrow::Cow::Owned(resample_axis(&cur, w as usize, true, filter));
    }
    if cur.height() != h {
        cur = std::borrow::Cow::Owned(resample_axis(&cur, h as usize, false, filter));
    }
    cur.into_owned()
}

/// Resizes to exactly `w`×`h` (Pillow's bicubic).
pub fn resize_exact(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    pil_resize(img, w, h, Resample::Bicubic)
}

/// transformers' `get_resize_output_image_size` for a `shortest_edge` size:
/// the shorter side becomes `size`, the longer `int(size * long / short)`.
/// Returns (width, height).
pub fn shortest_edge_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short.max(1))) as u32;
    if w <= h {
        (size, new_long.max(1))
    } else {
        (new_long.max(1), size)
    }
}

/// Resizes so that the shorter side equals `size`, keeping the aspect ratio
/// as transformers' image processors do.
pub fn resize_shortest_edge(img: &RgbImage, size: u32) -> RgbImage {
    let (nw, nh) = shortest_edge_size(img.width(), img.height(), size);
    resize_exact(img, nw, nh)
}

/// Crops the centre `w`×`h` region (pads with black when smaller).
pub fn center_crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let mut out = RgbImage::from_pixel(w, h, Rgb([0, 0, 0]));
    let left = (img.width() as i64 - w as i64) / 2;
    let top = (img.height() as i64 - h as i64) / 2;
    for y in 0..h {
        for x in 0..w {
            let sx = x as i64 + left;
            let sy = y as i64 + top;
            if sx >= 0 && sy >= 0 && (sx as u32) < img.width() && (sy as u32) < img.height() {
                out.put_pixel(x, y, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// Places `img` in the centre of a `w`×`h` canvas of colour `fill`.
pub fn pad_center(img: &RgbImage, w: u32, h: u32, fill: [u8; 3]) -> RgbImage {
    let mut out = RgbImage::from_pixel(w, h, Rgb(fill));
    let left = (w.saturating_sub(img.width())) / 2;
    let top = (h.saturating_sub(img.height())) / 2;
    image::imageops::overlay(&mut out, img, left as i64, top as i64);
    out
}

/// Rescales to [0, 1] and normalises into a CHW `Vec`.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[c * w * h + y as usize * w + x as usize] =
                (f32::from(p.0[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

/// A normalised `(3, H, W)` tensor.
pub fn image_tensor(
    img: &RgbImage,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::from_vec(normalize_chw(img, mean, std), (3, h, w), device)
}

/// Qwen2/2.5/3-VL `smart_resize`: both sides multiples of `factor`, area in
/// `[min_pixels, max_pixels]`, aspect ratio kept as far as possible.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), InferenceError> {
    let (h, w) = (f64::from(height), f64::from(width));
    if h.max(w) / h.min(w) > 200.0 {
        return Err(InferenceError::Image(format!(
            "aspect ratio of {width}x{height} is above 200, which the model cannot take"
        )));
    }
    let f = f64::from(factor);
    let round_f = |x: f64| ((x / f).round() * f).max(f);
    let floor_f = |x: f64| ((x / f).floor() * f).max(f);
    let ceil_f = |x: f64| ((x / f).ceil() * f).max(f);
    let (mut hb, mut wb) = (round_f(h), round_f(w));
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = floor_f(h / beta);
        wb = floor_f(w / beta);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = ceil_f(h * beta);
        wb = ceil_f(w * beta);
    }
    Ok((hb as u32, wb as u32))
}

/// Qwen-VL patches: the image (resized to a multiple of `patch × merge`)
/// repeated `temporal` times, cut into `patch×patch` patches ordered by
/// `merge×merge` blocks, each flattened as `(C, T, P, P)`. Returns the flat
/// values, the number of patches and the grid `(t, h, w)` in patches.
pub fn qwen_patches(
    img: &RgbImage,
    patch: usize,
    temporal: usize,
    merge: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> (Vec<f32>, usize, [u32; 3]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let chw = normalize_chw(img, mean, std);
    let (gh, gw) = (h / patch, w / patch);
    let row = 3 * temporal * patch * patch;
    let mut out = Vec::with_capacity(gh * gw * row);
    for bh in 0..gh / merge {
        for bw in 0..gw / merge {
            for ih in 0..merge {
                for iw in 0..merge {
                    let py = (bh * merge + ih) * patch;
                    let px = (bw * merge + iw) * patch;
                    for c in 0..3 {
                        for _t in 0..temporal {
                            for y in 0..patch {
                                let base = c * w * h + (py + y) * w + px;
                                out.extend_from_slice(&chw[base..base + patch]);
                            }
                        }
                    }
                }
            }
        }
    }
    (out, gh * gw, [1, gh as u32, gw as u32])
}

/// LLaVA-NeXT: the candidate resolution (height, width) that keeps the most
/// image detail with the least waste.
pub fn select_best_resolution(orig_w: u32, orig_h: u32, candidates: &[(u32, u32)]) -> (u32, u32) {
    let mut best = candidates.first().copied().unwrap_or((orig_h, orig_w));
    let mut best_eff = 0u64;
    let mut best_waste = u64::MAX;
    for &(ch, cw) in candidates {
        let scale = (f64::from(cw) / f64::from(orig_w)).min(f64::from(ch) / f64::from(orig_h));
        let dw = (f64::from(orig_w) * scale) as u64;
        let dh = (f64::from(orig_h) * scale) as u64;
        let eff = (dw * dh).min(u64::from(orig_w) * u64::from(orig_h));
        let waste = u64::from(cw) * u64::from(ch) - eff;
        if eff > best_eff || (eff == best_eff && waste < best_waste) {
            best = (ch, cw);
            best_eff = eff;
            best_waste = waste;
        }
    }
    best
}

/// LLaVA-NeXT: resizes into `(height, width)` keeping the aspect ratio and
/// pads the rest with black, centred.
pub fn resize_and_pad(img: &RgbImage, target_h: u32, target_w: u32) -> RgbImage {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let sw = f64::from(target_w) / w;
    let sh = f64::from(target_h) / h;
    let (nw, nh) = if sw < sh {
        (target_w, ((h * sw).ceil() as u32).min(target_h))
    } else {
        (((w * sh).ceil() as u32).min(target_w), target_h)
    };
    let resized = resize_exact(img, nw.max(1), nh.max(1));
    pad_center(&resized, target_w, target_h, [0, 0, 0])
}

/// Cuts an image into `size`×`size` tiles, row by row.
pub fn tiles(img: &RgbImage, size: u32) -> Vec<RgbImage> {
    let mut out = Vec::new();
    let mut y = 0;
    while y < img.height() {
        let mut x = 0;
        while x < img.width() {
            let tile = image::imageops::crop_imm(img, x, y, size, size).to_image();
            out.push(if tile.width() == size && tile.height() == size {
                tile
            } else {
                pad_center(&tile, size, size, [0, 0, 0])
            });
            x += size;
        }
        y += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_reference_values() {
        // Values of the reference implementation (factor 28, Qwen2.5-VL bounds).
        assert_eq!(
            smart_resize(480, 640, 28, 3136, 12_845_056).unwrap(),
            (476, 644)
        );
        let (h, w) = smart_resize(4000, 3000, 32, 65_536, 1_048_576).unwrap();
        assert!(u64::from(h) * u64::from(w) <= 1_048_576 && h % 32 == 0 && w % 32 == 0);
        assert!(smart_resize(1, 500, 32, 1, 1_000_000).is_err());
    }

    #[test]
    fn best_resolution_prefers_matching_aspect() {
        let c = [(336, 672), (672, 336), (672, 672)];
        assert_eq!(select_best_resolution(800, 400, &c), (336, 672));
        assert_eq!(select_best_resolution(400, 800, &c), (672, 336));
    }

    #[test]
    fn patches_layout() {
        let img = RgbImage::from_fn(8, 8, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 0]));
        let (v, n, grid) = qwen_patches(&img, 2, 2, 2, [0.0; 3], [1.0; 3]);
        assert_eq!(n, 16);
        assert_eq!(grid, [1, 4, 4]);
        assert_eq!(v.len(), 16 * 3 * 2 * 2 * 2);
        // Second patch of the first 2x2 block starts at x=2, y=0 (red channel).
        let second = &v[24..];
        assert!((second[0] - 20.0 / 255.0).abs() < 1e-6);
    }
}
