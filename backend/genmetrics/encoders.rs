//! Image encoders that turn image folders into embedding matrices for PP&PR: VGG-16 (the
//! field's convention: the 4096-d output of the second fully connected layer), DINOv2 (the
//! normalised class token) and CLIP (the pooled, projected image embedding), all with candle.
//!
//! Architectures are read off the weight file (channel widths, depth, patch size), so the same
//! loader serves the released checkpoints and the tiny random-weight encoders of the tests.
//! Weights use the usual names: torchvision `features.N` / `classifier.N` for VGG-16, the
//! official `cls_token` / `blocks.N` for DINOv2, Hugging Face `vision_model.*` (+
//! `visual_projection`) for CLIP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use candle_transformers::models::dinov2::DinoVisionTransformer;

use super::{Embeddings, GenMetricsError, Result};

/// Which encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    Vgg16,
    Dinov2,
    Clip,
}

impl std::str::FromStr for EncoderKind {
    type Err = GenMetricsError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vgg16" | "vgg" => Ok(EncoderKind::Vgg16),
            "dinov2" | "dino" => Ok(EncoderKind::Dinov2),
            "clip" => Ok(EncoderKind::Clip),
            other => Err(encoder_error(format!(
                "unknown encoder {other:?}: expected vgg16, dinov2 or clip"
            ))),
        }
    }
}

fn encoder_error(message: impl Into<String>) -> GenMetricsError {
    GenMetricsError::Encoder(message.into())
}

fn candle_error(context: &str) -> impl Fn(candle_core::Error) -> GenMetricsError + '_ {
    move |e| encoder_error(format!("{context}: {e}"))
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// VGG-16 convolution indices in torchvision's `features` and the pools after blocks.
const VGG16_CONVS: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
const VGG16_POOL_AFTER: [usize; 5] = [2, 7, 14, 21, 28];

/// A loaded encoder.
pub struct Encoder {
    kind: EncoderKind,
    net: Network,
    image_size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: Device,
    dim: usize,
}

enum Network {
    Vgg16 {
        convs: Vec<candle_nn::Conv2d>,
        fc1: candle_nn::Linear,
        fc2: candle_nn::Linear,
    },
    /// `cls_from_head`: the classification head was replaced by an identity so the forward
    /// pass returns the normalised class token (possible when 2 x dim <= 1000 classes);
    /// otherwise the embedding is the mean of the normalised patch tokens.
    Dinov2 {
        vit: DinoVisionTransformer,
        depth: usize,
        cls_from_head: bool,
    },
    Clip {
        vit: ClipVisionTransformer,
        projection: Option<candle_nn::Linear>,
    },
}

impl Encoder {
    /// Load an encoder's weights (safetensors) onto `device`.
    pub fn load(kind: EncoderKind, weights: &Path, device: &Device) -> Result<Self> {
        if !weights.is_file() {
            return Err(encoder_error(format!(
                "weights file {} not found; download the {kind:?} checkpoint as safetensors and pass its path",
                weights.display()
            )));
        }
        let mut tensors = candle_core::safetensors::load(weights, device)
            .map_err(candle_error(&format!("reading {}", weights.display())))?;
        let dinov2_cls_from_head =
            kind == EncoderKind::Dinov2 && identity_head(&mut tensors, device)?;
        let shapes: HashMap<String, Vec<usize>> = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let shape = |name: &str| -> Result<&Vec<usize>> {
            shapes.get(name).ok_or_else(|| {
                encoder_error(format!(
                    "{} has no tensor {name:?}: not a {kind:?} checkpoint",
                    weights.display()
                ))
            })
        };
        let (net, image_size, mean, std, dim) = match kind {
            EncoderKind::Vgg16 => {
                let mut convs = Vec::new();
                for index in VGG16_CONVS {
                    let w = shape(&format!("features.{index}.weight"))?;
                    let (out_c, in_c) = (w[0], w[1]);
                    let config = candle_nn::Conv2dConfig {
                        padding: 1,
                        ..Default::default()
                    };
                    convs.push(
                        candle_nn::conv2d(
                            in_c,
                            out_c,
                            3,
                            config,
                            vb.pp(format!("features.{index}")),
                        )
                        .map_err(candle_error("VGG-16 convolution"))?,
                    );
                }
                let fc1_shape = shape("classifier.0.weight")?;
                let fc2_shape = shape("classifier.3.weight")?;
                let fc1 = candle_nn::linear(fc1_shape[1], fc1_shape[0], vb.pp("classifier.0"))
                    .map_err(candle_error("VGG-16 classifier.0"))?;
                let fc2 = candle_nn::linear(fc2_shape[1], fc2_shape[0], vb.pp("classifier.3"))
                    .map_err(candle_error("VGG-16 classifier.3"))?;
                let dim = fc2_shape[0];
                (
                    Network::Vgg16 { convs, fc1, fc2 },
                    224,
                    IMAGENET_MEAN,
                    IMAGENET_STD,
                    dim,
                )
            }
            EncoderKind::Dinov2 => {
                let embed_dim = *shape("cls_token")?.last().unwrap_or(&0);
                let depth = (0..)
                    .take_while(|i| shapes.contains_key(&format!("blocks.{i}.norm1.weight")))
                    .count();
                if embed_dim == 0 || depth == 0 {
                    return Err(encoder_error(
                        "DINOv2 checkpoint without blocks or class token",
                    ));
                }
                let heads = (embed_dim / 64).max(1);
                let vit = DinoVisionTransformer::new(vb, depth, embed_dim, heads)
                    .map_err(candle_error("DINOv2"))?;
                let net = Network::Dinov2 {
                    vit,
                    depth,
                    cls_from_head: dinov2_cls_from_head,
                };
                (net, 224, IMAGENET_MEAN, IMAGENET_STD, embed_dim)
            }
            EncoderKind::Clip => {
                let prefix = "vision_model";
                let embed_dim = shape(&format!("{prefix}.embeddings.class_embedding"))?[0];
                let patch = shape(&format!("{prefix}.embeddings.patch_embedding.weight"))?;
                let patch_size = patch[2];
                let positions =
                    shape(&format!("{prefix}.embeddings.position_embedding.weight"))?[0];
                let side = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
                let layers = (0..)
                    .take_while(|i| {
                        shapes.contains_key(&format!(
                            "{prefix}.encoder.layers.{i}.layer_norm1.weight"
                        ))
                    })
                    .count();
                let intermediate = shape(&format!("{prefix}.encoder.layers.0.mlp.fc1.weight"))?[0];
                let projection_dim = shapes
                    .get("visual_projection.weight")
                    .map(|s| s[0])
                    .unwrap_or(embed_dim);
                let config = ClipVisionConfig {
                    embed_dim,
                    activation: Activation::QuickGelu,
                    intermediate_size: intermediate,
                    num_hidden_layers: layers,
                    num_attention_heads: (embed_dim / 64).max(1),
                    projection_dim,
                    num_channels: 3,
                    image_size: side * patch_size,
                    patch_size,
                };
                let vit = ClipVisionTransformer::new(vb.pp(prefix), &config)
                    .map_err(candle_error("CLIP"))?;
                let projection = if shapes.contains_key("visual_projection.weight") {
                    Some(
                        candle_nn::linear_no_bias(
                            embed_dim,
                            projection_dim,
                            vb.pp("visual_projection"),
                        )
                        .map_err(candle_error("CLIP projection"))?,
                    )
                } else {
                    None
                };
                (
                    Network::Clip { vit, projection },
                    config.image_size,
                    CLIP_MEAN,
                    CLIP_STD,
                    projection_dim,
                )
            }
        };
        Ok(Encoder {
            kind,
            net,
            image_size,
            mean,
            std,
            device: device.clone(),
            dim,
        })
    }

    pub fn kind(&self) -> EncoderKind {
        self.kind
    }

    /// Length of each embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Input side in pixels (images are resized and centre-cropped to it).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Resize the shorter side to the input size, centre-crop, normalise: a 3 x S x S tensor.
    pub fn preprocess(&self, image: &image::DynamicImage) -> Result<Tensor> {
        let size = self.image_size as u32;
        let (w, h) = (image.width().max(1), image.height().max(1));
        let scale = size as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(size),
            ((h as f64 * scale).round() as u32).max(size),
        );
        let resized = image.resize_exact(nw, nh, image::imageops::FilterType::Triangle);
        let cropped = resized
            .crop_imm((nw - size) / 2, (nh - size) / 2, size, size)
            .to_rgb8();
        let s = self.image_size;
        let mut data = vec![0f32; 3 * s * s];
        for (x, y, pixel) in cropped.enumerate_pixels() {
            for c in 0..3 {
                data[c * s * s + y as usize * s + x as usize] =
                    (pixel[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Tensor::from_vec(data, (3, s, s), &self.device).map_err(candle_error("image tensor"))
    }

    /// Embed a batch of preprocessed images (B x 3 x S x S) into B x dim.
    pub fn forward(&self, batch: &Tensor) -> Result<Tensor> {
        let run = || -> candle_core::Result<Tensor> {
            match &self.net {
                Network::Vgg16 { convs, fc1, fc2 } => {
                    let mut xs = batch.clone();
                    for (conv, index) in convs.iter().zip(VGG16_CONVS) {
                        xs = conv.forward(&xs)?.relu()?;
                        if VGG16_POOL_AFTER.contains(&index) {
                            xs = xs.max_pool2d(2)?;
                        }
                    }
                    // 224 input: the feature map is already 7 x 7 (torchvision's adaptive pool
                    // is then the identity).
                    let xs = xs.flatten_from(1)?;
                    let xs = fc1.forward(&xs)?.relu()?;
                    fc2.forward(&xs)?.relu()
                }
                Network::Dinov2 {
                    vit,
                    depth,
                    cls_from_head,
                } => {
                    // candle's DINOv2 prepends its class token to a batch of one only.
                    let mut rows = Vec::with_capacity(batch.dim(0)?);
                    for i in 0..batch.dim(0)? {
                        let image = batch.i(i..i + 1)?;
                        let row = if *cls_from_head {
                            // head(cat(cls, mean patches)) with an identity head: the first
                            // `dim` outputs are the normalised class token.
                            vit.forward(&image)?.i((.., ..self.dim))?
                        } else {
                            let patches = vit.get_intermediate_layers(
                                &image,
                                &[depth - 1],
                                false,
                                false,
                                true,
                            )?;
                            patches.i(0)?.mean(1)?
                        };
                        rows.push(row);
                    }
                    Tensor::cat(&rows, 0)
                }
                Network::Clip { vit, projection } => {
                    let pooled = vit.forward(batch)?;
                    match projection {
                        Some(p) => p.forward(&pooled),
                        None => Ok(pooled),
                    }
                }
            }
        };
        run().map_err(candle_error("encoder forward pass"))
    }
}

/// Replace DINOv2's classification head by an identity on its first 2 x dim outputs, so the
/// model's own forward pass exposes the class token (candle's DINOv2 has no accessor for it).
fn identity_head(tensors: &mut HashMap<String, Tensor>, device: &Device) -> Result<bool> {
    let Some(weight) = tensors.get("head.weight") else {
        return Ok(false);
    };
    let (classes, inputs) = weight.dims2().map_err(candle_error("DINOv2 head"))?;
    if inputs > classes {
        return Ok(false);
    }
    let mut eye = vec![0f32; classes * inputs];
    for i in 0..inputs {
        eye[i * inputs + i] = 1.0;
    }
    let eye =
        Tensor::from_vec(eye, (classes, inputs), device).map_err(candle_error("DINOv2 head"))?;
    let zeros = Tensor::zeros(classes, DType::F32, device).map_err(candle_error("DINOv2 head"))?;
    tensors.insert("head.weight".into(), eye);
    tensors.insert("head.bias".into(), zeros);
    Ok(true)
}

/// Image files under `dir` (recursively), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "png" | "jpg" | "jpeg" | "webp" | "bmp" | "gif"
                )
            }) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)
        .map_err(|e| encoder_error(format!("cannot read image folder {}: {e}", dir.display())))?;
    files.sort();
    if files.is_empty() {
        return Err(encoder_error(format!(
            "no images (png, jpg, webp, bmp, gif) under {}",
            dir.display()
        )));
    }
    Ok(files)
}

/// Largest image accepted (pixels), to refuse decompression bombs.
const MAX_PIXELS: u64 = 100_000_000;

fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| encoder_error(format!("cannot open {}: {e}", path.display())))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| encoder_error(format!("{} is not a readable image: {e}", path.display())))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(encoder_error(format!(
            "{} is too large ({w} x {h} pixels)",
            path.display()
        )));
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| encoder_error(format!("cannot open {}: {e}", path.display())))?
        .decode()
        .map_err(|e| encoder_error(format!("{} is not a readable image: {e}", path.display())))
}

/// Embed every image under `dir`, `batch_size` at a time; `progress(done, total)` after each batch.
pub fn embed_folder(
    encoder: &Encoder,
    dir: &Path,
    batch_size: usize,
    progress: &dyn Fn(u64, u64),
) -> Result<Embeddings> {
    let files = list_images(dir)?;
    let total = files.len() as u64;
    let mut data = Vec::with_capacity(files.len() * encoder.dim());
    for chunk in files.chunks(batch_size.max(1)) {
        let inputs = chunk
            .iter()
            .map(|path| open_image(path).and_then(|image| encoder.preprocess(&image)))
            .collect::<Result<Vec<_>>>()?;
        let batch = Tensor::stack(&inputs, 0).map_err(candle_error("batching images"))?;
        let out = encoder.forward(&batch)?;
        let rows: Vec<f32> = out
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(candle_error("reading embeddings"))?;
        data.extend(rows);
        progress((data.len() / encoder.dim()) as u64, total);
    }
    Embeddings::new(files.len(), encoder.dim(), data)
}

/// Write a random-weight encoder with a tiny configuration to `path` (safetensors): for tests
/// and for trying the pipeline without downloading a checkpoint.
pub fn write_tiny_encoder(kind: EncoderKind, path: &Path, seed: u64) -> Result<()> {
    let device = Device::Cpu;
    let mut rng_state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut add = |name: String, shape: &[usize], scale: f32| -> Result<()> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                ((rng_state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
            })
            .collect();
        let tensor =
            Tensor::from_vec(values, shape, &device).map_err(candle_error("tiny weights"))?;
        tensors.push((name, tensor));
        Ok(())
    };
    match kind {
        EncoderKind::Vgg16 => {
            let widths = [4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8];
            let mut in_c = 3;
            for (index, out_c) in VGG16_CONVS.iter().zip(widths) {
                add(
                    format!("features.{index}.weight"),
                    &[out_c, in_c, 3, 3],
                    (2.0 / (in_c * 9) as f32).sqrt(),
                )?;
                add(format!("features.{index}.bias"), &[out_c], 0.01)?;
                in_c = out_c;
            }
            add("classifier.0.weight".into(), &[32, 8 * 7 * 7], 0.05)?;
            add("classifier.0.bias".into(), &[32], 0.01)?;
            add("classifier.3.weight".into(), &[16, 32], 0.2)?;
            add("classifier.3.bias".into(), &[16], 0.01)?;
            add("classifier.6.weight".into(), &[10, 16], 0.2)?;
            add("classifier.6.bias".into(), &[10], 0.01)?;
        }
        EncoderKind::Dinov2 => {
            let d = 16;
            let patches = (518 / 14) * (518 / 14);
            add("cls_token".into(), &[1, 1, d], 0.02)?;
            add("pos_embed".into(), &[1, patches + 1, d], 0.02)?;
            add("patch_embed.proj.weight".into(), &[d, 3, 14, 14], 0.02)?;
            add("patch_embed.proj.bias".into(), &[d], 0.01)?;
            for i in 0..2 {
                let b = format!("blocks.{i}");
                for norm in ["norm1", "norm2"] {
                    add(format!("{b}.{norm}.weight"), &[d], 1.0)?;
                    add(format!("{b}.{norm}.bias"), &[d], 0.01)?;
                }
                add(format!("{b}.attn.qkv.weight"), &[3 * d, d], 0.2)?;
                add(format!("{b}.attn.qkv.bias"), &[3 * d], 0.01)?;
                add(format!("{b}.attn.proj.weight"), &[d, d], 0.2)?;
                add(format!("{b}.attn.proj.bias"), &[d], 0.01)?;
                add(format!("{b}.ls1.gamma"), &[d], 1.0)?;
                add(format!("{b}.ls2.gamma"), &[d], 1.0)?;
                add(format!("{b}.mlp.fc1.weight"), &[4 * d, d], 0.2)?;
                add(format!("{b}.mlp.fc1.bias"), &[4 * d], 0.01)?;
                add(format!("{b}.mlp.fc2.weight"), &[d, 4 * d], 0.1)?;
                add(format!("{b}.mlp.fc2.bias"), &[d], 0.01)?;
            }
            add("norm.weight".into(), &[d], 1.0)?;
            add("norm.bias".into(), &[d], 0.01)?;
            add("head.weight".into(), &[1000, 2 * d], 0.02)?;
            add("head.bias".into(), &[1000], 0.0)?;
        }
        EncoderKind::Clip => {
            let (d, patch, image) = (16, 8, 32);
            let positions = (image / patch) * (image / patch) + 1;
            let p = "vision_model";
            add(format!("{p}.embeddings.class_embedding"), &[d], 0.02)?;
            add(
                format!("{p}.embeddings.patch_embedding.weight"),
                &[d, 3, patch, patch],
                0.05,
            )?;
            add(
                format!("{p}.embeddings.position_embedding.weight"),
                &[positions, d],
                0.02,
            )?;
            for norm in ["pre_layrnorm", "post_layernorm"] {
                add(format!("{p}.{norm}.weight"), &[d], 1.0)?;
                add(format!("{p}.{norm}.bias"), &[d], 0.01)?;
            }
            for i in 0..2 {
                let l = format!("{p}.encoder.layers.{i}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{l}.self_attn.{proj}.weight"), &[d, d], 0.2)?;
                    add(format!("{l}.self_attn.{proj}.bias"), &[d], 0.01)?;
                }
                for norm in ["layer_norm1", "layer_norm2"] {
                    add(format!("{l}.{norm}.weight"), &[d], 1.0)?;
                    add(format!("{l}.{norm}.bias"), &[d], 0.01)?;
                }
                add(format!("{l}.mlp.fc1.weight"), &[4 * d, d], 0.2)?;
                add(format!("{l}.mlp.fc1.bias"), &[4 * d], 0.01)?;
                add(format!("{l}.mlp.fc2.weight"), &[d, 4 * d], 0.1)?;
                add(format!("{l}.mlp.fc2.bias"), &[d], 0.01)?;
            }
            add("visual_projection.weight".into(), &[12, d], 0.2)?;
        }
    }
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path)
        .map_err(candle_error(&format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_images(dir: &Path, n: usize) {
        for i in 0..n {
            let img = image::RgbImage::from_fn(40 + i as u32, 30, |x, y| {
                image::Rgb([
                    (x * 7 + i as u32 * 40) as u8,
                    (y * 5) as u8,
                    (x * y + i as u32) as u8,
                ])
            });
            img.save(dir.join(format!("img{i:02}.png"))).unwrap();
        }
    }

    #[test]
    fn every_encoder_embeds_a_folder_deterministically() {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir(&images).unwrap();
        write_images(&images, 3);
        std::fs::write(images.join("notes.txt"), "not an image").unwrap();
        for (kind, dim) in [
            (EncoderKind::Vgg16, 16),
            (EncoderKind::Dinov2, 16),
            (EncoderKind::Clip, 12),
        ] {
            let weights = tmp.path().join(format!("{kind:?}.safetensors"));
            write_tiny_encoder(kind, &weights, 7).unwrap();
            let encoder = Encoder::load(kind, &weights, &Device::Cpu).unwrap();
            assert_eq!(encoder.dim(), dim, "{kind:?}");
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let first = embed_folder(&encoder, &images, 2, &|_, total| {
                assert_eq!(total, 3);
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .unwrap();
            assert_eq!((first.rows, first.dim), (3, dim), "{kind:?}");
            assert_eq!(calls.into_inner(), 2);
            assert!(first.data.iter().all(|v| v.is_finite()));
            // Different images give different embeddings; the same run gives the same ones.
            assert_ne!(first.row(0), first.row(1), "{kind:?}");
            let again = embed_folder(&encoder, &images, 3, &|_, _| {}).unwrap();
            for (a, b) in first.data.iter().zip(&again.data) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{kind:?}: batching changed the result"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = Encoder::load(
            EncoderKind::Vgg16,
            &tmp.path().join("none.safetensors"),
            &Device::Cpu,
        );
        assert!(missing.err().unwrap().to_string().contains("not found"));
        let weights = tmp.path().join("clip.safetensors");
        write_tiny_encoder(EncoderKind::Clip, &weights, 1).unwrap();
        let wrong = Encoder::load(EncoderKind::Vgg16, &weights, &Device::Cpu);
        assert!(
            wrong
                .err()
                .unwrap()
                .to_string()
                .contains("not a Vgg16 checkpoint")
        );
        assert!(
            list_images(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("no images")
        );
        std::fs::write(tmp.path().join("broken.png"), b"\x89PNG not really").unwrap();
        let encoder = Encoder::load(EncoderKind::Clip, &weights, &Device::Cpu).unwrap();
        let err = embed_folder(&encoder, tmp.path(), 4, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.png"), "{err}");
        assert!("resnet".parse::<EncoderKind>().is_err());
    }
}
