//! Synthesised images leaving the teacher's input space: PNGs for viewing (de-normalised with
//! the teacher's mean and standard deviation, then clamped to [0, 1]; the authors' code
//! min-max scales each image instead, which hides how far an image strays from the data's
//! range) and embeddings for PP&PR.
//!
//! Encoders: `pixels` averages each channel over blocks down to at most 8 x 8 after
//! de-normalising (for the built-in digits this returns the original 8 x 8 digit exactly, so
//! real and synthesised images meet in the data's own space); `teacher` takes the teacher's
//! penultimate features (the input of its last linear layer), the usual choice when no
//! independent encoder exists, but biased towards what the teacher itself attends to.

use std::io::Cursor;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::compression::{Network, Normalization};
use crate::genmetrics::Embeddings;
use crate::training::{Result, TrainingError};

/// How images become vectors for PP&PR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoder {
    Pixels,
    Teacher,
}

impl Encoder {
    pub fn name(self) -> &'static str {
        match self {
            Encoder::Pixels => "pixels",
            Encoder::Teacher => "teacher",
        }
    }
}

impl std::str::FromStr for Encoder {
    type Err = TrainingError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "pixels" => Ok(Encoder::Pixels),
            "teacher" => Ok(Encoder::Teacher),
            other => Err(TrainingError::Config(format!(
                "unknown encoder {other:?} (expected pixels or teacher)"
            ))),
        }
    }
}

fn denormalize(value: f32, channel: usize, norm: &Normalization) -> f32 {
    let c = channel.min(2);
    (value * norm.std[c] + norm.mean[c]).clamp(0.0, 1.0)
}

/// One image (`C x H x W`, normalised) as a PNG: grey for one channel, RGB for three.
pub fn to_png(image: &[f32], shape: [usize; 3], norm: &Normalization) -> Result<Vec<u8>> {
    let [c, h, w] = shape;
    if image.len() != c * h * w || !(c == 1 || c == 3) {
        return Err(TrainingError::Config(format!(
            "cannot draw a {c} x {h} x {w} image from {} values",
            image.len()
        )));
    }
    let byte = |v: f32| (v * 255.0).round() as u8;
    let mut out = Vec::new();
    let encode = |img: image::DynamicImage, out: &mut Vec<u8>| {
        img.write_to(&mut Cursor::new(out), image::ImageFormat::Png)
            .map_err(|e| TrainingError::Config(format!("PNG encoding: {e}")))
    };
    if c == 1 {
        let pixels: Vec<u8> = image
            .iter()
            .map(|&v| byte(denormalize(v, 0, norm)))
            .collect();
        let img = image::GrayImage::from_raw(w as u32, h as u32, pixels)
            .ok_or_else(|| TrainingError::Config("image buffer".into()))?;
        encode(image::DynamicImage::ImageLuma8(img), &mut out)?;
    } else {
        let plane = h * w;
        let mut pixels = Vec::with_capacity(3 * plane);
        for i in 0..plane {
            for ch in 0..3 {
                pixels.push(byte(denormalize(image[ch * plane + i], ch, norm)));
            }
        }
        let img = image::RgbImage::from_raw(w as u32, h as u32, pixels)
            .ok_or_else(|| TrainingError::Config("image buffer".into()))?;
        encode(image::DynamicImage::ImageRgb8(img), &mut out)?;
    }
    Ok(out)
}

/// Side of the `pixels` encoder's grid.
const PIXEL_GRID: usize = 8;

/// Embeds `images` (`n` images of `shape`, normalised, row-major).
pub fn embed(
    encoder: Encoder,
    teacher: &Network,
    images: &[f32],
    shape: [usize; 3],
    norm: &Normalization,
) -> Result<Embeddings> {
    let [c, h, w] = shape;
    let len = c * h * w;
    if len == 0 || !images.len().is_multiple_of(len) || images.is_empty() {
        return Err(TrainingError::Config("no images to embed".into()));
    }
    let n = images.len() / len;
    let bad = |e: crate::genmetrics::GenMetricsError| TrainingError::Config(e.to_string());
    match encoder {
        Encoder::Pixels => {
            let (gh, gw) = (h.min(PIXEL_GRID), w.min(PIXEL_GRID));
            let (bh, bw) = (h / gh, w / gw);
            let mut data = Vec::with_capacity(n * c * gh * gw);
            for img in images.chunks(len) {
                for ch in 0..c {
                    for gy in 0..gh {
                        for gx in 0..gw {
                            let mut sum = 0f32;
                            for y in gy * bh..(gy + 1) * bh {
                                for x in gx * bw..(gx + 1) * bw {
                                    sum += denormalize(img[ch * h * w + y * w + x], ch, norm);
                                }
                            }
                            data.push(sum / (bh * bw) as f32);
                        }
                    }
                }
            }
            Embeddings::new(n, c * gh * gw, data).map_err(bad)
        }
        Encoder::Teacher => {
            let mut data = Vec::new();
            let mut dim = 0;
            for chunk in images.chunks(len * 128) {
                let m = chunk.len() / len;
                let x = Tensor::from_slice(chunk, (m, c, h, w), &Device::Cpu)?;
                let f = teacher.features(&x)?;
                dim = f.dim(1)?;
                data.extend(f.flatten_all()?.to_vec1::<f32>()?);
            }
            Embeddings::new(n, dim, data).map_err(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::{DigitsForm, load_digits};

    #[test]
    fn pixel_encoder_returns_the_original_digits() {
        let (_, test) = load_digits(DigitsForm::Image32).unwrap();
        let (_, small) = load_digits(DigitsForm::Vector64).unwrap();
        let teacher = Network::vgg16_bn_cifar(0.125, 10, 0).unwrap();
        let n = 5;
        let images: Vec<f32> = (0..n)
            .flat_map(|i| test.image(i).unwrap().to_vec())
            .collect();
        let e = embed(
            Encoder::Pixels,
            &teacher,
            &images,
            test.shape(),
            &test.normalization(),
        )
        .unwrap();
        assert_eq!((e.rows, e.dim), (n, 3 * 64));
        let norm = small.normalization();
        for i in 0..n {
            let original: Vec<f32> = small
                .image(i)
                .unwrap()
                .iter()
                .map(|&v| v * norm.std[0] + norm.mean[0])
                .collect();
            for ch in 0..3 {
                for (k, o) in original.iter().enumerate() {
                    assert!((e.row(i)[ch * 64 + k] - o).abs() < 1e-5);
                }
            }
        }
        let png = to_png(test.image(0).unwrap(), test.shape(), &test.normalization()).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (32, 32));
    }
}
