//! InternVL 2.5 / 3 / 3.5 in the transformers layout (`model_type: internvl`, the
//! OpenGVLab `*-hf` checkpoints): an InternViT vision tower, pixel-shuffle downsampling,
//! an MLP projector and the shared decoder of [`super::llama`] (Qwen2, Qwen3 or Llama).
//!
//! Vision tower (transformers' `InternVLVisionModel`): a strided convolution cuts a tile
//! into patches, a class token goes first and a learned absolute position table is added;
//! each layer is pre-norm attention (no mask; optional RMSNorm of the whole query and key
//! projections) and a two-layer MLP, both scaled per channel (`lambda_1`, `lambda_2`)
//! before their residual additions. Norms are LayerNorm or RMSNorm (`norm_type`). The
//! class token is dropped, the patch grid is pixel-shuffled by `downsample_ratio` (2×2
//! neighbours become one token of four times the width) and projected by LayerNorm →
//! linear → activation → linear.
//!
//! Preprocessing (transformers' `GotOcr2ImageProcessor` as `InternVLProcessor` drives it,
//! which always crops): the tile grid whose aspect ratio is closest to the image's among
//! all grids of `min_patches..=max_patches` tiles (ties go to the larger grid while the
//! image covers more than half of it); the image is resized (Pillow bicubic) to the grid,
//! cut into tiles row by row, and a thumbnail of the whole image follows when there is
//! more than one tile. Each image placeholder of the chat template becomes
//! `<img>` + `<IMG_CONTEXT>` × (tokens per tile × tiles) + `</img>`, and the image's tile
//! features fill the context tokens in order.
//!
//! Known limits: the tile size must equal the vision tower's `image_size` (transformers
//! would interpolate the position table otherwise; no released checkpoint does), only
//! `vision_feature_layer: -1` and the `default` feature strategy are accepted, and videos
//! are not taken. Contexts are capped at [`MAX_CONTEXT`] positions (the rotary table's size).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Activation, Conv2d, LayerNorm, Linear, RmsNorm, VarBuilder};
use serde::Deserialize;

use super::chat_template::{ChatTemplate, ContentStyle};
use super::llama::{KvCache, Llama, LlamaConfig};
use super::llava::{TextConfig, projector_act};
use super::preprocess::{self, Resample};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, ContentPart, InferenceError};

/// ImageNet mean and standard deviation (what InternVL checkpoints normalise with).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The prompt format for model directories without a chat template: ChatML with each
/// image as an `<IMG_CONTEXT>` line before the text (the layout of the `-hf` templates).
pub const FALLBACK_TEMPLATE: &str = concat!(
    "{%- for message in messages %}",
    "{{- '<|im_start|>' + message['role'] + '\\n' }}",
    "{%- if message['content'] is string %}{{- message['content'] }}",
    "{%- else %}{%- for part in message['content'] %}",
    "{%- if part['type'] == 'image' %}{{- '<IMG_CONTEXT>\\n' }}",
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}",
    "{%- endfor %}{%- endif %}",
    "{{- '<|im_end|>\\n' }}",
    "{%- endfor %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
);

/// Longest context served: the rotary table is built for at most this many positions (a
/// config declaring more reports this as its context length).
pub const MAX_CONTEXT: usize = 131_072;

/// Most tiles one vision forward pass takes (an image with more runs in several passes).
const VISION_TILES_PER_PASS: usize = 4;

/// Most tiles one image may be cut into (`max_patches` above this is refused: every tile
/// costs a vision pass and `tokens per tile` prompt positions).
pub const MAX_TILES: usize = 64;

/// A side length given as one number or as `[height, width]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Side {
    One(usize),
    Two([usize; 2]),
}

impl Side {
    /// The square side, or `None` for a rectangle.
    fn square(self) -> Option<usize> {
        match self {
            Self::One(s) => Some(s),
            Self::Two([h, w]) => (h == w).then_some(h),
        }
    }
}

fn d_v_hidden() -> usize {
    1024
}
fn d_v_inter() -> usize {
    4096
}
fn d_v_layers() -> usize {
    24
}
fn d_v_heads() -> usize {
    16
}
fn d_v_image() -> Side {
    Side::One(448)
}
fn d_v_patch() -> Side {
    Side::One(14)
}
fn d_v_act() -> String {
    "gelu".into()
}
fn d_v_norm() -> String {
    "layer_norm".into()
}
fn d_v_eps() -> f64 {
    1e-6
}
fn d_true() -> bool {
    true
}
fn d_image_token() -> u32 {
    151_667
}
fn d_ratio() -> f64 {
    0.5
}
fn d_proj_act() -> String {
    "gelu".into()
}
fn d_feature_layer() -> i64 {
    -1
}
fn d_strategy() -> String {
    "default".into()
}

/// `vision_config` (InternViT-300M defaults, as transformers').
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_v_hidden")]
    hidden_size: usize,
    #[serde(default = "d_v_inter")]
    intermediate_size: usize,
    #[serde(default = "d_v_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_v_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_v_image")]
    image_size: Side,
    #[serde(default = "d_v_patch")]
    patch_size: Side,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_qk_norm: bool,
    #[serde(default = "d_v_act")]
    hidden_act: String,
    #[serde(default = "d_v_norm")]
    norm_type: String,
    #[serde(default = "d_v_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_true")]
    use_absolute_position_embeddings: bool,
    #[serde(default = "d_true")]
    use_mean_pooling: bool,
}

/// HF `InternVLConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct InternVlConfig {
    text_config: TextConfig,
    vision_config: VisionConfig,
    #[serde(default = "d_image_token")]
    image_token_id: u32,
    #[serde(default = "d_ratio")]
    downsample_ratio: f64,
    #[serde(default = "d_proj_act")]
    projector_hidden_act: String,
    #[serde(default = "d_feature_layer")]
    vision_feature_layer: i64,
    #[serde(default = "d_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "d_true")]
    tie_word_embeddings: bool,
}

/// Sizes derived from the config once it is checked.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Tile side in pixels.
    tile: usize,
    /// Patch side in pixels.
    patch: usize,
    /// Patches per tile side.
    grid: usize,
    /// Pixel-shuffle factor (2 for `downsample_ratio` 0.5).
    shuffle: usize,
    /// Tokens per tile.
    tokens: usize,
}

impl InternVlConfig {
    fn check(&self) -> Result<Geometry, InferenceError> {
        let bad = |m: String| Err(InferenceError::UnsupportedConfig(m));
        let v = &self.vision_config;
        let t = &self.text_config;
        let (Some(tile), Some(patch)) = (v.image_size.square(), v.patch_size.square()) else {
            return bad("InternVL vision image_size and patch_size must be square".into());
        };
        if patch == 0 || tile == 0 || !tile.is_multiple_of(patch) || tile > 4096 {
            return bad(format!(
                "InternVL image_size {tile} is not a multiple of patch_size {patch}"
            ));
        }
        let grid = tile / patch;
        let inverse = 1.0 / self.downsample_ratio;
        let shuffle = inverse.round() as usize;
        if !(1..=8).contains(&shuffle) || (inverse - shuffle as f64).abs() > 1e-9 {
            return bad(format!(
                "downsample_ratio {} is not 1/n for a small whole n",
                self.downsample_ratio
            ));
        }
        if !grid.is_multiple_of(shuffle) || !v.hidden_size.is_multiple_of(shuffle) {
            return bad(
                "the patch grid or vision width does not divide by the pixel shuffle".into(),
            );
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad("vision attention heads do not divide the vision width".into());
        }
        if !matches!(v.norm_type.as_str(), "layer_norm" | "rms_norm") {
            return bad(format!("vision norm_type {:?}", v.norm_type));
        }
        if !v.use_absolute_position_embeddings {
            return bad("InternVL vision towers without position embeddings".into());
        }
        if self.vision_feature_layer != -1 {
            return bad(format!(
                "vision_feature_layer {} (only -1, the last layer, is supported)",
                self.vision_feature_layer
            ));
        }
        if self.vision_feature_select_strategy != "default" {
            return bad(format!(
                "vision_feature_select_strategy {:?} (only \"default\")",
                self.vision_feature_select_strategy
            ));
        }
        if !matches!(t.model_type.as_str(), "qwen2" | "qwen3" | "llama") {
            return bad(format!(
                "InternVL text model {:?} is not supported (qwen2, qwen3 and llama are)",
                t.model_type
            ));
        }
        if t.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("rope_scaling in the InternVL text model is not supported".into());
        }
        let heads = t.num_attention_heads;
        let kv = t.num_key_value_heads.unwrap_or(heads);
        if heads == 0
            || kv == 0
            || !heads.is_multiple_of(kv)
            || !t.hidden_size.is_multiple_of(heads)
        {
            return bad("text attention heads do not divide the hidden size".into());
        }
        let side = grid / shuffle;
        Ok(Geometry {
            tile,
            patch,
            grid,
            shuffle,
            tokens: side * side,
        })
    }
}

/// LayerNorm or RMSNorm, as `norm_type` says.
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(kind: &str, n: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(if kind == "rms_norm" {
            Self::Rms(candle_nn::rms_norm(n, eps, vb)?)
        } else {
            Self::Layer(candle_nn::layer_norm(n, eps, vb)?)
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Layer(n) => n.forward(x),
            Self::Rms(n) => n.forward(x),
        }
    }
}

struct VisionLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    lambda1: Tensor,
    lambda2: Tensor,
    norm_before: Norm,
    norm_after: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// transformers' `InternVLVisionModel` (without the masked-patch token, unused at inference).
struct Vision {
    patch_embed: Conv2d,
    cls: Tensor,
    positions: Tensor,
    layers: Vec<VisionLayer>,
    final_norm: Option<Norm>,
    heads: usize,
    act: Activation,
}

impl Vision {
    fn new(v: &VisionConfig, geo: Geometry, vb: VarBuilder) -> candle_core::Result<Self> {
        let c = v.hidden_size;
        let emb = vb.pp("embeddings");
        let conv = candle_nn::Conv2dConfig {
            stride: geo.patch,
            ..Default::default()
        };
        let patch_embed = candle_nn::conv2d(
            3,
            c,
            geo.patch,
            conv,
            emb.pp("patch_embeddings").pp("projection"),
        )?;
        let cls = emb.get((1, 1, c), "cls_token")?;
        let positions = emb.get((1, geo.grid * geo.grid + 1, c), "position_embeddings")?;
        let norm = |vb: VarBuilder| Norm::new(&v.norm_type, c, v.layer_norm_eps, vb);
        let mut layers = Vec::with_capacity(v.num_hidden_layers);
        for i in 0..v.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let qk_norm = |name: &str| -> candle_core::Result<Option<RmsNorm>> {
                if v.use_qk_norm {
                    Some(candle_nn::rms_norm(c, 1e-6, a.pp(name))).transpose()
                } else {
                    Ok(None)
                }
            };
            layers.push(VisionLayer {
                q: candle_nn::linear_b(c, c, v.attention_bias, a.pp("q_proj"))?,
                k: candle_nn::linear_b(c, c, v.attention_bias, a.pp("k_proj"))?,
                v: candle_nn::linear_b(c, c, v.attention_bias, a.pp("v_proj"))?,
                out: candle_nn::linear(c, c, a.pp("projection_layer"))?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                lambda1: l.get(c, "lambda_1")?,
                lambda2: l.get(c, "lambda_2")?,
                norm_before: norm(l.pp("layernorm_before"))?,
                norm_after: norm(l.pp("layernorm_after"))?,
                fc1: candle_nn::linear(c, v.intermediate_size, l.pp("mlp").pp("fc1"))?,
                fc2: candle_nn::linear(v.intermediate_size, c, l.pp("mlp").pp("fc2"))?,
            });
        }
        let final_norm = if v.use_mean_pooling {
            None
        } else {
            Some(Norm::Layer(candle_nn::layer_norm(
                c,
                v.layer_norm_eps,
                vb.pp("layernorm"),
            )?))
        };
        let act = vision_act(&v.hidden_act).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            patch_embed,
            cls,
            positions,
            layers,
            final_norm,
            heads: v.num_attention_heads,
            act,
        })
    }

    /// Last hidden states `(tiles, 1 + patches, C)` of `(tiles, 3, S, S)` pixels.
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.patch_embed.forward(pixels)?; // (B, C, g, g)
        let (b, c, _, _) = x.dims4()?;
        let x = x.flatten_from(2)?.transpose(1, 2)?; // (B, N, C)
        let cls = self.cls.broadcast_as((b, 1, c))?.to_dtype(x.dtype())?;
        let mut h = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positions)?;
        for l in &self.layers {
            let a = self.attention(l, &l.norm_before.forward(&h)?)?;
            h = (h + a.broadcast_mul(&l.lambda1)?)?;
            let m = l.fc2.forward(
                &self
                    .act
                    .forward(&l.fc1.forward(&l.norm_after.forward(&h)?)?)?,
            )?;
            h = (h + m.broadcast_mul(&l.lambda2)?)?;
        }
        match &self.final_norm {
            Some(n) => n.forward(&h),
            None => Ok(h),
        }
    }

    fn attention(&self, l: &VisionLayer, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let mut q = l.q.forward(x)?;
        let mut k = l.k.forward(x)?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(l.v.forward(x)?)?);
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        l.out.forward(&o)
    }
}

/// The vision MLP's activation (`hidden_act`).
fn vision_act(name: &str) -> Result<Activation, InferenceError> {
    Ok(match name {
        "gelu" => Activation::Gelu,
        "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluPytorchTanh,
        "silu" => Activation::Silu,
        "relu" => Activation::Relu,
        other => {
            return Err(InferenceError::UnsupportedConfig(format!(
                "vision hidden_act {other:?} is not supported"
            )));
        }
    })
}

/// transformers' `pixel_shuffle` on `(B, W, H, C)` with factor `1/s`, flattened to
/// `(B, W·H/s², C·s²)`.
fn pixel_shuffle(x: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, w, h, c) = x.dims4()?;
    let x = x
        .reshape((b, w, h / s, c * s))?
        .permute((0, 2, 1, 3))?
        .contiguous()?;
    let x = x
        .reshape((b, h / s, w / s, c * s * s))?
        .permute((0, 2, 1, 3))?
        .contiguous()?;
    x.reshape((b, (w / s) * (h / s), c * s * s))
}

/// The tile grid `(columns, rows)` for an image of `w`×`h` pixels: transformers'
/// `get_optimal_tiled_canvas` (grids ordered by tile count, width-major within a count; the
/// closest aspect ratio wins, a tie goes to the later grid while the image area exceeds
/// half the grid's).
pub fn tile_grid(w: u32, h: u32, tile: usize, min: usize, max: usize) -> (usize, usize) {
    let mut grids = Vec::new();
    for cols in 1..=max {
        for rows in 1..=max {
            let n = cols * rows;
            if n >= min && n <= max {
                grids.push((cols, rows));
            }
        }
    }
    grids.sort_by_key(|&(c, r)| c * r); // stable, as Python's `sorted`
    let aspect = f64::from(w) / f64::from(h);
    let area = f64::from(w) * f64::from(h);
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for (c, r) in grids {
        let diff = (aspect - c as f64 / r as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (c, r);
        } else if diff == best_diff && area > 0.5 * (tile * tile * c * r) as f64 {
            best = (c, r);
        }
    }
    best
}

/// The tile images of one picture: the grid's tiles row by row, then the thumbnail when
/// there is more than one tile.
pub fn tiles(
    img: &image::RgbImage,
    tile: u32,
    min: usize,
    max: usize,
    resample: Resample,
) -> Vec<image::RgbImage> {
    if max <= 1 {
        return vec![preprocess::pil_resize(img, tile, tile, resample)];
    }
    let (cols, rows) = tile_grid(img.width(), img.height(), tile as usize, min, max);
    let canvas = preprocess::pil_resize(img, tile * cols as u32, tile * rows as u32, resample);
    let mut out = Vec::with_capacity(cols * rows + 1);
    for r in 0..rows as u32 {
        for c in 0..cols as u32 {
            out.push(image::imageops::crop_imm(&canvas, c * tile, r * tile, tile, tile).to_image());
        }
    }
    if out.len() != 1 {
        out.push(preprocess::pil_resize(img, tile, tile, resample));
    }
    out
}

/// How images are cut (from the processor config).
#[derive(Debug, Clone, Copy)]
struct Tiling {
    min: usize,
    max: usize,
    resample: Resample,
    mean: [f32; 3],
    std: [f32; 3],
}

/// Inputs of one request.
pub struct Input {
    ids: Vec<u32>,
    /// `(tiles, 3, S, S)` per image.
    images: Vec<Tensor>,
}

impl Input {
    /// Token ids of the prompt, image placeholders expanded (transformers' `input_ids`).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Every image's tiles in one `(tiles, 3, S, S)` tensor, as transformers' processor
    /// stacks them (`None` without images).
    pub fn pixel_values(&self) -> candle_core::Result<Option<Tensor>> {
        if self.images.is_empty() {
            return Ok(None);
        }
        Tensor::cat(&self.images, 0).map(Some)
    }
}

/// A loaded InternVL model.
pub struct InternVl {
    cfg: InternVlConfig,
    geo: Geometry,
    tiling: Tiling,
    vision: Vision,
    proj_norm: LayerNorm,
    proj1: Linear,
    proj2: Linear,
    proj_act: Activation,
    lm: Llama,
    cache: Option<KvCache>,
    common: Common,
    template: ChatTemplate,
    start_id: u32,
    end_id: u32,
}

/// The candle modules of an InternVL model.
struct Modules {
    vision: Vision,
    proj_norm: LayerNorm,
    proj1: Linear,
    proj2: Linear,
    lm: Llama,
}

impl Modules {
    fn new(cfg: &InternVlConfig, geo: Geometry, vb: VarBuilder) -> Result<Self, InferenceError> {
        let t = &cfg.text_config;
        let v = &cfg.vision_config;
        let load = |e: candle_core::Error| InferenceError::Load(e.to_string());
        let heads = t.num_attention_heads;
        let qwen2 = t.model_type == "qwen2";
        let head = "language_model.lm_head.weight";
        // transformers ties the head to the embeddings when the config asks for it and the
        // checkpoint has no head of its own.
        let tie = !vb.contains_tensor(head) && (cfg.tie_word_embeddings || t.tie_word_embeddings);
        let lm_cfg = LlamaConfig {
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: t.num_key_value_heads.unwrap_or(heads),
            head_dim: t.head_dim.unwrap_or(t.hidden_size / heads),
            rms_norm_eps: t.rms_norm_eps,
            rope_theta: f64::from(t.rope_theta),
            vocab_size: t.vocab_size,
            max_position_embeddings: t.max_position_embeddings.min(MAX_CONTEXT),
            tie_word_embeddings: tie,
            qk_norm: t.model_type == "qwen3",
            qkv_bias: qwen2 || t.attention_bias,
            gemma: false,
            bidirectional_prompt: false,
        };
        let vision = Vision::new(v, geo, vb.pp("vision_tower")).map_err(load)?;
        let width = v.hidden_size * geo.shuffle * geo.shuffle;
        let pb = vb.pp("multi_modal_projector");
        let proj_norm = candle_nn::layer_norm(width, 1e-5, pb.pp("layer_norm")).map_err(load)?;
        let proj1 = candle_nn::linear(width, t.hidden_size, pb.pp("linear_1")).map_err(load)?;
        let proj2 =
            candle_nn::linear(t.hidden_size, t.hidden_size, pb.pp("linear_2")).map_err(load)?;
        let lm = Llama::load(&lm_cfg, vb.pp("language_model")).map_err(load)?;
        Ok(Self {
            vision,
            proj_norm,
            proj1,
            proj2,
            lm,
        })
    }
}

/// Creates every weight of the model described by `config.json` in `vb`.
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg: InternVlConfig = super::parse_config(raw.clone(), "InternVL config.json")?;
    let geo = cfg.check()?;
    // A new model always has its own head unless the config ties it.
    if !(cfg.tie_word_embeddings || cfg.text_config.tie_word_embeddings) {
        let t = &cfg.text_config;
        vb.pp("language_model.lm_head")
            .get((t.vocab_size, t.hidden_size), "weight")
            .map_err(|e| InferenceError::Load(e.to_string()))?;
    }
    Modules::new(&cfg, geo, vb).map(|_| ())
}

/// A token named in `tokenizer_config.json` (top level, or its `extra_special_tokens`
/// map), or `default`.
fn named_token(config: Option<&serde_json::Value>, key: &str, default: &str) -> String {
    config
        .and_then(|c| {
            c.get(key)
                .or_else(|| c.get("extra_special_tokens").and_then(|e| e.get(key)))
        })
        .and_then(|v| {
            v.as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))
        })
        .unwrap_or(default)
        .to_string()
}

impl InternVl {
    /// Loads a model directory.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let raw = super::read_model_config(dir)?;
        let cfg: InternVlConfig = super::parse_config(raw.clone(), "InternVL config.json")?;
        let geo = cfg.check()?;
        let proj_act = projector_act(&cfg.projector_hidden_act)?;
        let common = super::load_common(dir, device, dtype, &raw, &["<|im_end|>"])?;
        let tok_cfg = super::read_json_opt(&dir.join("tokenizer_config.json"))?;
        let tok = &common.tokenizer;
        let id_of = |key: &str, default: &str| {
            super::special_id(tok, &named_token(tok_cfg.as_ref(), key, default))
        };
        let start_id = id_of("start_image_token", "<img>")?;
        let end_id = id_of("end_image_token", "</img>")?;
        let context_id = id_of("context_image_token", "<IMG_CONTEXT>")?;
        if context_id != cfg.image_token_id {
            return Err(InferenceError::UnsupportedConfig(format!(
                "image_token_id {} is not the tokenizer's image context token ({context_id})",
                cfg.image_token_id
            )));
        }
        let processor = super::read_json_opt(&dir.join("processor_config.json"))?;
        if let Some(n) = processor
            .as_ref()
            .and_then(|p| p.get("image_seq_length"))
            .and_then(|v| v.as_u64())
            && n as usize != geo.tokens
        {
            return Err(InferenceError::UnsupportedConfig(format!(
                "processor image_seq_length {n} differs from the {} tokens a tile yields",
                geo.tokens
            )));
        }
        let tiling = Self::tiling(super::image_processor_config(dir)?.as_ref(), geo)?;
        let template = match ChatTemplate::load(dir)? {
            Some(t) => t,
            None => ChatTemplate::new(FALLBACK_TEMPLATE, tok_cfg.as_ref())?,
        };
        let mut tensors = super::load_tensors(dir, common.dtype, device)?;
        if tensors
            .keys()
            .any(|k| k.starts_with("model.language_model."))
        {
            tensors = super::renamed_from_v5(tensors);
        }
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        // The decoder's layer constructors would name a missing layer only vaguely.
        for i in 0..cfg.text_config.num_hidden_layers {
            let name = format!("language_model.model.layers.{i}.self_attn.q_proj.weight");
            if !vb.contains_tensor(&name) {
                return Err(InferenceError::Load(format!("weight {name} is missing")));
            }
        }
        let m = Modules::new(&cfg, geo, vb)?;
        Ok((
            Self {
                cfg,
                geo,
                tiling,
                vision: m.vision,
                proj_norm: m.proj_norm,
                proj1: m.proj1,
                proj2: m.proj2,
                proj_act,
                lm: m.lm,
                cache: None,
                common: common.clone(),
                template,
                start_id,
                end_id,
            },
            common,
        ))
    }

    /// The image processor's settings; its `size` must be the vision tower's tile.
    fn tiling(pre: Option<&serde_json::Value>, geo: Geometry) -> Result<Tiling, InferenceError> {
        let get = |k: &str| pre.and_then(|p| p.get(k));
        let num = |k: &str, d: usize| get(k).and_then(|v| v.as_u64()).map_or(d, |v| v as usize);
        let (min, max) = (num("min_patches", 1), num("max_patches", 12));
        if min == 0 || min > max || max > MAX_TILES {
            return Err(InferenceError::UnsupportedConfig(format!(
                "min_patches {min} / max_patches {max} (1 ≤ min ≤ max ≤ {MAX_TILES})"
            )));
        }
        if let Some(size) = get("size") {
            let side = |k: &str| size.get(k).and_then(|v| v.as_u64());
            if side("height") != Some(geo.tile as u64) || side("width") != Some(geo.tile as u64) {
                return Err(InferenceError::UnsupportedConfig(format!(
                    "image processor size {size} differs from the vision tile of {} pixels",
                    geo.tile
                )));
            }
        }
        let (mean, std) = preprocess::mean_std(pre, IMAGENET_MEAN, IMAGENET_STD);
        Ok(Tiling {
            min,
            max,
            resample: Resample::from_code(get("resample").and_then(|v| v.as_u64())),
            mean,
            std,
        })
    }

    /// `(tiles, 3, S, S)` pixel values of one picture.
    fn preprocess(&self, img: &image::RgbImage) -> candle_core::Result<Tensor> {
        let t = &self.tiling;
        let tiles = tiles(img, self.geo.tile as u32, t.min, t.max, t.resample);
        let ts = tiles
            .iter()
            .map(|c| preprocess::image_tensor(c, t.mean, t.std, &self.common.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&ts, 0)?.to_dtype(self.common.dtype)
    }

    /// Projected features `(tiles · tokens, hidden)` of one picture's tiles.
    fn image_features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        // Tiles are independent; a bounded number per vision pass keeps the attention
        // scores (tiles × heads × patches²) small.
        let n = pixels.dim(0)?;
        if n > VISION_TILES_PER_PASS {
            let parts = (0..n)
                .step_by(VISION_TILES_PER_PASS)
                .map(|start| {
                    let len = VISION_TILES_PER_PASS.min(n - start);
                    self.image_features(&pixels.narrow(0, start, len)?)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Tensor::cat(&parts, 0);
        }
        let h = self.vision.forward(pixels)?;
        let h = h.i((.., 1.., ..))?;
        let (b, _, c) = h.dims3()?;
        let g = self.geo.grid;
        let x = pixel_shuffle(&h.reshape((b, g, g, c))?, self.geo.shuffle)?;
        let x = self.proj_norm.forward(&x)?;
        let x = self
            .proj2
            .forward(&self.proj_act.forward(&self.proj1.forward(&x)?)?)?;
        x.reshape((b * self.geo.tokens, self.cfg.text_config.hidden_size))
    }

    /// Embeddings `(positions, hidden)` of one request; context tokens take the image
    /// features in order (transformers' masked scatter).
    fn embed(&self, input: &Input) -> candle_core::Result<Tensor> {
        let image_id = self.cfg.image_token_id;
        let dev = &self.common.device;
        let feats = input
            .images
            .iter()
            .map(|px| self.image_features(px))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut pieces = Vec::new();
        let mut next = feats.iter();
        let mut i = 0;
        while i < input.ids.len() {
            let is_image = input.ids[i] == image_id;
            let end = input.ids[i..]
                .iter()
                .position(|&t| (t == image_id) != is_image)
                .map_or(input.ids.len(), |n| i + n);
            if is_image {
                let Some(f) = next.next() else {
                    candle_core::bail!("image tokens without an image")
                };
                if f.dim(0)? != end - i {
                    candle_core::bail!("{} image tokens for {} features", end - i, f.dim(0)?);
                }
                pieces.push(f.to_dtype(self.common.dtype)?);
            } else {
                let t = Tensor::new(&input.ids[i..end], dev)?;
                pieces.push(self.lm.embed(&t)?);
            }
            i = end;
        }
        if next.next().is_some() {
            candle_core::bail!("more images than image placeholders");
        }
        Tensor::cat(&pieces, 0)
    }
}

impl Family for InternVl {
    type Input = Input;

    fn prepare(&self, request: &ChatRequest) -> Result<Prepared<Input>, InferenceError> {
        let msgs = super::messages_with_schema(request);
        let mut images = Vec::new();
        for m in &msgs {
            for p in &m.content {
                if let ContentPart::Image(img) = p {
                    let rgb = preprocess::to_rgb(img.decode()?.as_ref());
                    images.push(self.preprocess(&rgb)?);
                }
            }
        }
        let text = self.template.render(&msgs, ContentStyle::Parts, &[])?;
        let add = self.template.add_special_tokens(&text);
        let raw = super::encode_prompt(&self.common.tokenizer, &text, add)?;
        let image_id = self.cfg.image_token_id;
        let placeholders = raw.iter().filter(|&&t| t == image_id).count();
        if placeholders != images.len() {
            return Err(InferenceError::InvalidRequest(format!(
                "the prompt has {placeholders} image placeholders for {} images",
                images.len()
            )));
        }
        let mut ids = Vec::with_capacity(raw.len());
        let mut next = images.iter();
        for id in raw {
            if id == image_id {
                let tiles = next.next().expect("counted above").dim(0)?;
                ids.push(self.start_id);
                ids.extend(std::iter::repeat_n(image_id, tiles * self.geo.tokens));
                ids.push(self.end_id);
            } else {
                ids.push(id);
            }
        }
        let positions = ids.len();
        Ok(Prepared {
            input: Input { ids, images },
            prompt_tokens: positions,
            group_key: vec![positions],
        })
    }

    fn prefill(&mut self, inputs: &[&Input]) -> candle_core::Result<Tensor> {
        let rows = inputs
            .iter()
            .map(|i| self.embed(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (logits, cache) = self.lm.prefill_rows(&rows)?;
        self.cache = Some(cache);
        Ok(logits)
    }

    fn step(&mut self, tokens: &[u32], _offset: usize) -> candle_core::Result<Tensor> {
        self.lm.decode_step(tokens, self.cache.as_mut())
    }

    fn pads_batches(&self) -> bool {
        true
    }

    fn retain_rows(&mut self, keep: &[usize]) -> candle_core::Result<bool> {
        if let Some(cache) = self.cache.as_mut() {
            cache.retain(keep)?;
        }
        Ok(true)
    }

    fn context_length(&self) -> usize {
        self.cfg
            .text_config
            .max_position_embeddings
            .min(MAX_CONTEXT)
    }

    fn accepts_images(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grids transformers picks (hand-checked against `get_optimal_tiled_canvas`'s rule).
    #[test]
    fn tile_grid_follows_the_reference_rule() {
        // 40×24 (5:3): 2×1 is closest.
        assert_eq!(tile_grid(40, 24, 16, 1, 4), (2, 1));
        // 83×61: 1×1 and 2×2 tie on the ratio; the image covers more than half of 2×2.
        assert_eq!(tile_grid(83, 61, 16, 1, 4), (2, 2));
        // A small image keeps the first of the tied grids.
        assert_eq!(tile_grid(11, 8, 16, 1, 4), (1, 1));
        // 21×37: 1×2.
        assert_eq!(tile_grid(21, 37, 16, 1, 4), (1, 2));
        // min_patches excludes the single tile.
        assert_eq!(tile_grid(30, 30, 16, 2, 4), (2, 2));
    }

    #[test]
    fn pixel_shuffle_moves_neighbours_into_channels() {
        // (1, W=2, H=2, C=1) with values 0..4 at [w][h]: one token of four channels.
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 1))
            .unwrap();
        let y = pixel_shuffle(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4]);
        // view(1,2,1,2) → [[0,1]],[[2,3]]; permute → (1,1,2,2); view(1,1,1,4) → 0,1,2,3.
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 1., 2., 3.]
        );
    }
}
