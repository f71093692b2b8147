//! Pixtral (HF `llava` layout with a `pixtral` vision tower and a Mistral text model, e.g.
//! `mistral-community/pixtral-12b`).
//!
//! The vision tower is written here on candle-nn instead of using candle-transformers'
//! `models::pixtral::vision_model::Model` (0.11), whose computation for the last layer is
//! the same but which differs from transformers' `PixtralVisionModel` around it: it returns
//! only the last layer (a `vision_feature_layer` other than -1 cannot be honoured), its
//! config requires a top-level `rope_theta` (transformers 5 writes `rope_parameters`, so
//! those configs do not parse), defaults `hidden_act` to SiLU where transformers defaults to
//! GELU, and takes `head_dim` from the config where transformers always uses
//! `hidden / heads`. What transformers computes, and this module repeats:
//!
//! - Preprocessing (`PixtralImageProcessor`): an image larger than `size.longest_edge`
//!   shrinks by `max(h / longest, w / longest)` with both sides floored; then each side is
//!   rounded *up* to a multiple of the patch size, and the image is resized (Pillow bicubic)
//!   to exactly that size, rescaled and normalised (CLIP mean/std by default). There is no
//!   fixed input size and no tiling: every image keeps its own patch grid.
//! - Tokens (`PixtralProcessor`): each `[IMG]` of the rendered prompt becomes, per patch
//!   row, one `[IMG]` per patch column followed by `[IMG_BREAK]`; the last `[IMG_BREAK]` is
//!   `[IMG_END]`. Only the `[IMG]` positions take image features; the break and end tokens
//!   are ordinary text embeddings.
//! - Vision tower: patch convolution (no bias), flattened row-major to `(h·w, hidden)`,
//!   `ln_pre` RMSNorm (eps 1e-5), then pre-norm layers (RMSNorm, attention without biases,
//!   RMSNorm, gated MLP). Attention covers one image's patches only (transformers packs the
//!   images of a batch into one sequence with a block-diagonal mask; running each image
//!   alone is the same computation). Positions are 2-D rotary: with the usual RoPE
//!   frequencies `f_i = θ^(-2i/d)`, `i < d/2`, the first quarter of the rotated half takes
//!   the row index times the even-indexed frequencies and the second quarter the column
//!   index times the odd-indexed ones, applied rotate-half style. The head width is
//!   `hidden / heads` (transformers ignores a configured `head_dim` here too).
//! - Features: hidden state `vision_feature_layer` (0 = after `ln_pre`, -1 = the last layer;
//!   strategy "full"), the two-layer projector, and the result fills the `[IMG]` positions
//!   in order.
//!
//! The text model is the shared [`Llama`] decoder (Mistral is the same layer), so batches of
//! different prompt lengths share a forward pass with left padding, and finished rows leave
//! the KV cache. Pixtral-12B declares a 1M-position context; the rotary table is built for
//! at most [`MAX_CONTEXT`] positions, which is then the context length reported.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Activation, Conv2d, Linear, RmsNorm, VarBuilder};
use serde::Deserialize;

use super::chat_template::{ChatTemplate, ContentStyle};
use super::llama::{KvCache, Llama, LlamaConfig};
use super::llava::{TextConfig, projector_act};
use super::preprocess::{self, CLIP_MEAN, CLIP_STD, Resample};
use super::{Common, Family, Prepared};
use crate::inference::{ChatMessage, ChatRequest, ContentPart, InferenceError, Role};

/// Longest context the rotary table is built for.
pub const MAX_CONTEXT: usize = 131_072;

/// RMSNorm epsilon of the vision tower (fixed in transformers, not in the config).
const VISION_EPS: f64 = 1e-5;

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
fn d_v_channels() -> usize {
    3
}
fn d_v_image() -> usize {
    1024
}
fn d_v_patch() -> usize {
    16
}
fn d_v_act() -> String {
    "gelu".into()
}
fn d_image_token() -> u32 {
    10
}
fn d_proj_act() -> String {
    "gelu".into()
}
fn d_feature_layer() -> isize {
    -1
}
fn d_strategy() -> String {
    "full".into()
}
fn d_true() -> bool {
    true
}

/// `vision_config` (`PixtralVisionConfig`, defaults as in transformers).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default)]
    model_type: String,
    #[serde(default = "d_v_hidden")]
    hidden_size: usize,
    #[serde(default = "d_v_inter")]
    intermediate_size: usize,
    #[serde(default = "d_v_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_v_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_v_channels")]
    num_channels: usize,
    #[serde(default = "d_v_image")]
    image_size: usize,
    #[serde(default = "d_v_patch")]
    patch_size: usize,
    #[serde(default = "d_v_act")]
    hidden_act: String,
    /// Classic configs; transformers 5 writes `rope_parameters.rope_theta`.
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
}

impl VisionConfig {
    fn theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(|t| t.as_f64())
            })
            .unwrap_or(10_000.0)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
}

/// HF `LlavaConfig` of a Pixtral checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct PixtralConfig {
    text_config: TextConfig,
    vision_config: VisionConfig,
    #[serde(default = "d_image_token", alias = "image_token_id")]
    image_token_index: u32,
    #[serde(default = "d_proj_act")]
    projector_hidden_act: String,
    #[serde(default = "d_feature_layer")]
    vision_feature_layer: isize,
    #[serde(default = "d_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "d_true")]
    multimodal_projector_bias: bool,
}

/// Reads a Pixtral `config.json` value: for a Mistral text model, Mistral's defaults (not
/// Llama's) fill what the text config leaves out (without a `model_type`, transformers
/// builds a Llama, and so does this).
fn parse(raw: &serde_json::Value) -> Result<PixtralConfig, InferenceError> {
    let mut raw = raw.clone();
    if let Some(t) = raw.get_mut("text_config").and_then(|t| t.as_object_mut())
        && t.get("model_type").and_then(|m| m.as_str()) == Some("mistral")
    {
        for (k, v) in [
            ("hidden_size", serde_json::json!(4096)),
            ("intermediate_size", serde_json::json!(14336)),
            ("num_key_value_heads", serde_json::json!(8)),
            ("rms_norm_eps", serde_json::json!(1e-6)),
            ("max_position_embeddings", serde_json::json!(4096 * 32)),
        ] {
            // Absent only: an explicit null key/value head count means "as many as heads".
            t.entry(k).or_insert(v);
        }
    }
    super::parse_config(raw, "Pixtral config.json")
}

/// Whether a `config.json` value describes a Pixtral model.
pub fn is_pixtral(config: &serde_json::Value) -> bool {
    config
        .get("vision_config")
        .and_then(|v| v.get("model_type"))
        .and_then(|m| m.as_str())
        == Some("pixtral")
}

/// The processor settings that decide an image's size and tokens.
#[derive(Debug, Clone)]
struct ImageSettings {
    /// `size.longest_edge` (or height / width) of the image processor.
    max_h: u32,
    max_w: u32,
    /// Patch size the processor aligns to (the vision tower's patch).
    patch: u32,
    resample: Resample,
    mean: [f32; 3],
    std: [f32; 3],
    image_token: String,
    break_token: String,
    end_token: String,
}

impl ImageSettings {
    fn load(dir: &Path, vision: &VisionConfig) -> Result<Self, InferenceError> {
        let processor = super::read_json_opt(&dir.join("processor_config.json"))?;
        let pre = super::image_processor_config(dir)?;
        let num = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_u64()).map(|x| x as u32);
        let size = pre.as_ref().and_then(|p| p.get("size"));
        let longest = num(size.and_then(|s| s.get("longest_edge")));
        let (max_h, max_w) = match longest {
            Some(l) => (l, l),
            None => (
                num(size.and_then(|s| s.get("height"))).unwrap_or(vision.image_size as u32),
                num(size.and_then(|s| s.get("width"))).unwrap_or(vision.image_size as u32),
            ),
        };
        // The processor passes its own `patch_size * spatial_merge_size` to the image
        // processor; without a processor config the image processor's patch applies.
        let proc_patch = processor.as_ref().and_then(|p| {
            let merge = num(p.get("spatial_merge_size")).unwrap_or(1);
            num(p.get("patch_size")).map(|x| x * merge)
        });
        let pre_patch = pre.as_ref().and_then(|p| {
            let ps = p.get("patch_size")?;
            num(Some(ps)).or_else(|| {
                let (h, w) = (num(ps.get("height"))?, num(ps.get("width"))?);
                (h == w).then_some(h)
            })
        });
        let patch = proc_patch.or(pre_patch).unwrap_or(vision.patch_size as u32);
        if patch as usize != vision.patch_size {
            return Err(InferenceError::UnsupportedConfig(format!(
                "the processor's patch size {patch} differs from the vision tower's {} \
                 (spatial merging is Mistral-3, not Pixtral)",
                vision.patch_size
            )));
        }
        if max_h < patch || max_w < patch {
            return Err(InferenceError::UnsupportedConfig(
                "the image processor's size is smaller than one patch".into(),
            ));
        }
        let (mean, std) = preprocess::mean_std(pre.as_ref(), CLIP_MEAN, CLIP_STD);
        let resample = Resample::from_code(pre.as_ref().and_then(|p| p.get("resample")?.as_u64()));
        let text = |key: &str, default: &str| {
            processor
                .as_ref()
                .and_then(|p| p.get(key)?.as_str().map(str::to_string))
                .unwrap_or_else(|| default.to_string())
        };
        Ok(Self {
            max_h,
            max_w,
            patch,
            resample,
            mean,
            std,
            image_token: text("image_token", "[IMG]"),
            break_token: text("image_break_token", "[IMG_BREAK]"),
            end_token: text("image_end_token", "[IMG_END]"),
        })
    }

    /// The resized (width, height) of a `w`×`h` image: shrunk to fit the processor's size
    /// (sides floored), then each side rounded up to whole patches.
    fn target_size(&self, w: u32, h: u32) -> (u32, u32) {
        let ratio =
            (f64::from(h) / f64::from(self.max_h)).max(f64::from(w) / f64::from(self.max_w));
        let (mut w, mut h) = (w, h);
        if ratio > 1.0 {
            h = (f64::from(h) / ratio).floor() as u32;
            w = (f64::from(w) / ratio).floor() as u32;
        }
        let p = self.patch;
        let up = |x: u32| x.max(1).div_ceil(p) * p;
        (up(w), up(h))
    }
}

/// One image, preprocessed.
pub struct ImageIn {
    /// `(3, H, W)` pixel values, `H` and `W` whole patches.
    pixels: Tensor,
    /// Patch grid (rows, columns).
    grid: (usize, usize),
}

/// Inputs of one request.
pub struct Input {
    ids: Vec<u32>,
    images: Vec<ImageIn>,
}

impl Input {
    /// Token ids of the prompt with every image expanded to its `[IMG]` / `[IMG_BREAK]` /
    /// `[IMG_END]` grid (what transformers' processor returns as `input_ids`).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Pixel values per image, `(3, H, W)` at the image's own size.
    pub fn pixel_values(&self) -> Vec<&Tensor> {
        self.images.iter().map(|i| &i.pixels).collect()
    }
}

struct VisionLayer {
    attention_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// transformers' `PixtralVisionModel`.
struct VisionTower {
    patch_conv: Conv2d,
    ln_pre: RmsNorm,
    layers: Vec<VisionLayer>,
    act: Activation,
    heads: usize,
    head_dim: usize,
    /// `θ^(-2i/d)` for `i < d/2`.
    inv_freq: Vec<f32>,
}

impl VisionTower {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let conv = candle_nn::Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_conv = candle_nn::conv2d_no_bias(
            cfg.num_channels,
            h,
            cfg.patch_size,
            conv,
            vb.pp("patch_conv"),
        )?;
        let ln_pre = candle_nn::rms_norm(h, VISION_EPS, vb.pp("ln_pre"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("transformer.layers.{i}"));
            let a = l.pp("attention");
            let f = l.pp("feed_forward");
            let i_size = cfg.intermediate_size;
            layers.push(VisionLayer {
                attention_norm: candle_nn::rms_norm(h, VISION_EPS, l.pp("attention_norm"))?,
                q: candle_nn::linear_no_bias(h, h, a.pp("q_proj"))?,
                k: candle_nn::linear_no_bias(h, h, a.pp("k_proj"))?,
                v: candle_nn::linear_no_bias(h, h, a.pp("v_proj"))?,
                o: candle_nn::linear_no_bias(h, h, a.pp("o_proj"))?,
                ffn_norm: candle_nn::rms_norm(h, VISION_EPS, l.pp("ffn_norm"))?,
                gate: candle_nn::linear_no_bias(h, i_size, f.pp("gate_proj"))?,
                up: candle_nn::linear_no_bias(h, i_size, f.pp("up_proj"))?,
                down: candle_nn::linear_no_bias(i_size, h, f.pp("down_proj"))?,
            });
        }
        let d = cfg.head_dim();
        let theta = cfg.theta() as f32;
        // As transformers computes them: the exponent and the power in f32.
        let inv_freq = (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect();
        let act =
            vision_act(&cfg.hidden_act).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            patch_conv,
            ln_pre,
            layers,
            act,
            heads: cfg.num_attention_heads,
            head_dim: d,
            inv_freq,
        })
    }

    /// `(cos, sin)`, each `(rows·cols, head_dim/2)`, of the 2-D rotary positions of a
    /// `rows`×`cols` patch grid in row-major order.
    fn rotary(
        &self,
        rows: usize,
        cols: usize,
        dev: &Device,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let quarter = self.head_dim / 4;
        let mut angles = Vec::with_capacity(rows * cols * 2 * quarter);
        for r in 0..rows {
            for c in 0..cols {
                angles.extend((0..quarter).map(|j| r as f32 * self.inv_freq[2 * j]));
                angles.extend((0..quarter).map(|j| c as f32 * self.inv_freq[2 * j + 1]));
            }
        }
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let shape = (rows * cols, 2 * quarter);
        Ok((
            Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
        ))
    }

    /// Hidden state `index` (0 = after `ln_pre`, `i` = after layer `i`) of one image,
    /// `(rows·cols, hidden)`.
    fn hidden_state(&self, img: &ImageIn, index: usize) -> candle_core::Result<Tensor> {
        let (rows, cols) = img.grid;
        let x = self.patch_conv.forward(&img.pixels.unsqueeze(0)?)?;
        let (_, hidden, gh, gw) = x.dims4()?;
        if (gh, gw) != (rows, cols) {
            candle_core::bail!("patch grid {gh}x{gw} differs from the expected {rows}x{cols}");
        }
        let x = x.reshape((hidden, rows * cols))?.t()?.unsqueeze(0)?;
        let mut x = self.ln_pre.forward(&x.contiguous()?)?;
        let (cos, sin) = self.rotary(rows, cols, x.device(), x.dtype())?;
        for layer in &self.layers[..index] {
            let a = self.attention(layer, &layer.attention_norm.forward(&x)?, &cos, &sin)?;
            x = (x + a)?;
            let m = layer.ffn_norm.forward(&x)?;
            let m = layer
                .down
                .forward(&(self.act.forward(&layer.gate.forward(&m)?)? * layer.up.forward(&m)?)?)?;
            x = (x + m)?;
        }
        x.squeeze(0)
    }

    fn attention(
        &self,
        layer: &VisionLayer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (nh, hd) = (self.heads, self.head_dim);
        let heads = |t: Tensor| t.reshape((b, n, nh, hd))?.transpose(1, 2)?.contiguous();
        let q = heads(layer.q.forward(x)?)?;
        let k = heads(layer.k.forward(x)?)?;
        let v = heads(layer.v.forward(x)?)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? / (hd as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, n, nh * hd))?;
        layer.o.forward(&out)
    }
}

fn vision_act(name: &str) -> Result<Activation, InferenceError> {
    Ok(match name {
        "gelu" => Activation::Gelu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluPytorchTanh,
        "silu" | "swish" => Activation::Silu,
        "relu" => Activation::Relu,
        other => {
            return Err(InferenceError::UnsupportedConfig(format!(
                "Pixtral vision hidden_act {other:?} is not supported"
            )));
        }
    })
}

/// The candle modules of a Pixtral model.
struct Modules {
    vision: VisionTower,
    proj1: Linear,
    proj2: Linear,
    llama: Llama,
}

impl Modules {
    fn new(cfg: &PixtralConfig, vb: VarBuilder) -> Result<Self, InferenceError> {
        let t = &cfg.text_config;
        let v = &cfg.vision_config;
        let load = |e: candle_core::Error| InferenceError::Load(e.to_string());
        // `to_classic_vlm_layout` puts every tower under `vision_tower.vision_model.`.
        let vision = VisionTower::new(v, vb.pp("vision_tower.vision_model")).map_err(load)?;
        let pb = vb.pp("multi_modal_projector");
        let bias = cfg.multimodal_projector_bias;
        let proj1 = candle_nn::linear_b(v.hidden_size, t.hidden_size, bias, pb.pp("linear_1"))
            .map_err(load)?;
        let proj2 = candle_nn::linear_b(t.hidden_size, t.hidden_size, bias, pb.pp("linear_2"))
            .map_err(load)?;
        let llama = Llama::load(&decoder_config(t), vb.pp("language_model")).map_err(load)?;
        Ok(Self {
            vision,
            proj1,
            proj2,
            llama,
        })
    }
}

fn decoder_config(t: &TextConfig) -> LlamaConfig {
    let heads = t.num_attention_heads;
    LlamaConfig {
        hidden_size: t.hidden_size,
        intermediate_size: t.intermediate_size,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: t.num_key_value_heads.unwrap_or(heads),
        head_dim: t.head_dim.unwrap_or(t.hidden_size / heads.max(1)),
        rms_norm_eps: t.rms_norm_eps,
        rope_theta: f64::from(t.rope_theta),
        vocab_size: t.vocab_size,
        max_position_embeddings: t.max_position_embeddings.min(MAX_CONTEXT),
        tie_word_embeddings: t.tie_word_embeddings,
        qk_norm: false,
        qkv_bias: t.attention_bias,
        gemma: false,
        bidirectional_prompt: false,
    }
}

fn check(cfg: &PixtralConfig) -> Result<(), InferenceError> {
    let t = &cfg.text_config;
    let v = &cfg.vision_config;
    let unsupported = |m: String| Err(InferenceError::UnsupportedConfig(m));
    if v.model_type != "pixtral" {
        return unsupported(format!("vision model {:?} is not pixtral", v.model_type));
    }
    if !matches!(t.model_type.as_str(), "mistral" | "llama") {
        return unsupported(format!(
            "Pixtral text model {:?} is not supported (mistral and llama are)",
            t.model_type
        ));
    }
    if t.rope_scaling.as_ref().is_some_and(|r| !r.is_null()) {
        return unsupported("rope_scaling in the Pixtral text model is not supported".into());
    }
    if t.sliding_window
        .is_some_and(|w| w < t.max_position_embeddings.min(MAX_CONTEXT))
    {
        tracing::warn!("sliding_window ignored: prompts longer than the window will differ");
    }
    let heads = t.num_attention_heads;
    let kv = t.num_key_value_heads.unwrap_or(heads);
    if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
        return unsupported("text attention heads are not a multiple of key/value heads".into());
    }
    if t.head_dim.is_none() && !t.hidden_size.is_multiple_of(heads) {
        return unsupported("text attention heads do not divide the hidden size".into());
    }
    if v.num_attention_heads == 0
        || !v.hidden_size.is_multiple_of(v.num_attention_heads)
        || !v.head_dim().is_multiple_of(4)
    {
        return unsupported(
            "the vision head width (hidden / heads) must be a multiple of 4 for 2-D RoPE".into(),
        );
    }
    if v.patch_size == 0 {
        return unsupported("vision patch_size is 0".into());
    }
    vision_act(&v.hidden_act)?;
    if cfg.vision_feature_select_strategy != "full" {
        return unsupported(format!(
            "vision_feature_select_strategy {:?} (Pixtral has no class token; \"full\" is \
             supported)",
            cfg.vision_feature_select_strategy
        ));
    }
    let layers = v.num_hidden_layers as isize;
    if !(-(layers + 1)..=layers).contains(&cfg.vision_feature_layer) {
        return unsupported(format!(
            "vision_feature_layer {} is out of range",
            cfg.vision_feature_layer
        ));
    }
    Ok(())
}

/// A loaded Pixtral model.
pub struct Pixtral {
    cfg: PixtralConfig,
    m: Modules,
    proj_act: Activation,
    cache: Option<KvCache>,
    common: Common,
    images: ImageSettings,
    /// Ids of `[IMG]`, `[IMG_BREAK]`, `[IMG_END]`.
    image_id: u32,
    break_id: u32,
    end_id: u32,
    template: Option<ChatTemplate>,
}

impl Pixtral {
    /// Loads a model directory.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let raw = super::read_model_config(dir)?;
        if raw.get("model_type").and_then(|m| m.as_str()) != Some("llava") || !is_pixtral(&raw) {
            return Err(InferenceError::UnsupportedConfig(
                "not a Pixtral model (model_type llava with a pixtral vision_config)".into(),
            ));
        }
        let cfg = parse(&raw)?;
        check(&cfg)?;
        let images = ImageSettings::load(dir, &cfg.vision_config)?;
        let common = super::load_common(dir, device, dtype, &raw, &["</s>"])?;
        let tok = &common.tokenizer;
        let image_id = super::special_id(tok, &images.image_token)?;
        if image_id != cfg.image_token_index {
            return Err(InferenceError::UnsupportedConfig(format!(
                "the tokenizer's {} is id {image_id}, the config's image_token_index {}",
                images.image_token, cfg.image_token_index
            )));
        }
        let break_id = super::special_id(tok, &images.break_token)?;
        let end_id = super::special_id(tok, &images.end_token)?;
        let tensors = super::to_classic_vlm_layout(super::load_tensors(dir, common.dtype, device)?);
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        let m = Modules::new(&cfg, vb)?;
        let proj_act = projector_act(&cfg.projector_hidden_act)?;
        let template = ChatTemplate::load(dir)?;
        Ok((
            Self {
                cfg,
                m,
                proj_act,
                cache: None,
                common: common.clone(),
                images,
                image_id,
                break_id,
                end_id,
                template,
            },
            common,
        ))
    }

    fn preprocess(&self, img: &image::RgbImage) -> candle_core::Result<ImageIn> {
        let s = &self.images;
        let (w, h) = s.target_size(img.width(), img.height());
        let resized = preprocess::pil_resize(img, w, h, s.resample);
        let pixels = preprocess::image_tensor(&resized, s.mean, s.std, &self.common.device)?
            .to_dtype(self.common.dtype)?;
        let p = s.patch;
        Ok(ImageIn {
            pixels,
            grid: ((h / p) as usize, (w / p) as usize),
        })
    }

    /// Projected features `(rows·cols, text hidden)` of one image.
    fn image_features(&self, img: &ImageIn) -> candle_core::Result<Tensor> {
        let layers = self.cfg.vision_config.num_hidden_layers as isize;
        let l = self.cfg.vision_feature_layer;
        let index = if l < 0 { layers + 1 + l } else { l } as usize;
        let feats = self.m.vision.hidden_state(img, index)?;
        let feats = self.proj_act.forward(&self.m.proj1.forward(&feats)?)?;
        self.m.proj2.forward(&feats)
    }

    /// Embeddings `(positions, hidden)` of one request: `[IMG]` positions take the image
    /// features in order, every other token its embedding.
    fn embed(&self, input: &Input) -> candle_core::Result<Tensor> {
        let dev = &self.common.device;
        let text = self
            .m
            .llama
            .embed(&Tensor::new(input.ids.as_slice(), dev)?)?;
        if input.images.is_empty() {
            return Ok(text);
        }
        let feats = input
            .images
            .iter()
            .map(|i| self.image_features(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let feats = Tensor::cat(&feats, 0)?.to_dtype(text.dtype())?;
        // Row i of the result: text row i, or for the k-th `[IMG]` feature row k (stored
        // after the text rows), as transformers' masked scatter places them.
        let n = input.ids.len();
        let mut k = 0;
        let rows: Vec<u32> = (0..n)
            .map(|i| {
                if input.ids[i] == self.image_id {
                    k += 1;
                    (n + k - 1) as u32
                } else {
                    i as u32
                }
            })
            .collect();
        if k != feats.dim(0)? {
            candle_core::bail!("{k} image tokens for {} image features", feats.dim(0)?);
        }
        let all = Tensor::cat(&[&text, &feats], 0)?;
        all.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)
    }

    /// The prompt text and whether the tokenizer's special tokens are to be added.
    fn prompt_text(&self, msgs: &[ChatMessage]) -> Result<(String, bool), InferenceError> {
        if let Some(t) = &self.template {
            let text = t.render(msgs, ContentStyle::Parts, &[])?;
            let add = t.add_special_tokens(&text);
            return Ok((text, add));
        }
        Ok((self.fallback_prompt(msgs), false))
    }

    /// The documented fallback for directories without a chat template: Mistral's
    /// `<s>[INST]…[/INST]` turns, `[IMG]` where an image is, the system text before the
    /// first user turn.
    fn fallback_prompt(&self, msgs: &[ChatMessage]) -> String {
        let mut text = String::from("<s>");
        let mut system = String::new();
        for m in msgs {
            match m.role {
                Role::System => {
                    system.push_str(&m.text_content());
                    system.push_str("\n\n");
                }
                Role::User => {
                    text.push_str("[INST]");
                    text.push_str(&std::mem::take(&mut system));
                    for p in &m.content {
                        match p {
                            ContentPart::Image(_) => text.push_str(&self.images.image_token),
                            ContentPart::Text(t) => text.push_str(t),
                        }
                    }
                    text.push_str("[/INST]");
                }
                Role::Assistant => {
                    text.push_str(&m.text_content());
                    text.push_str("</s>");
                }
            }
        }
        text
    }
}

/// Creates every weight of the model described by `config.json` in `vb`
/// (used with a `VarMap` to write random-weight models).
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg = parse(raw)?;
    check(&cfg)?;
    Modules::new(&cfg, vb).map(|_| ())
}

impl Family for Pixtral {
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
        let (text, add_special) = self.prompt_text(&msgs)?;
        let raw = super::encode_prompt(&self.common.tokenizer, &text, add_special)?;
        let count = raw.iter().filter(|&&i| i == self.image_id).count();
        if count != images.len() {
            return Err(InferenceError::InvalidRequest(format!(
                "the prompt text contains {count} {} tokens for {} images",
                self.images.image_token,
                images.len()
            )));
        }
        let mut ids = Vec::with_capacity(raw.len());
        let mut next_image = images.iter();
        for id in raw {
            if id != self.image_id {
                ids.push(id);
                continue;
            }
            let (rows, cols) = next_image.next().expect("counted above").grid;
            for r in 0..rows {
                ids.extend(std::iter::repeat_n(self.image_id, cols));
                ids.push(if r + 1 == rows {
                    self.end_id
                } else {
                    self.break_id
                });
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
        let embeds = inputs
            .iter()
            .map(|i| self.embed(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (logits, cache) = self.m.llama.prefill_rows(&embeds)?;
        self.cache = Some(cache);
        Ok(logits)
    }

    fn step(&mut self, tokens: &[u32], _offset: usize) -> candle_core::Result<Tensor> {
        self.m.llama.decode_step(tokens, self.cache.as_mut())
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

    fn settings(longest: u32, patch: u32) -> ImageSettings {
        ImageSettings {
            max_h: longest,
            max_w: longest,
            patch,
            resample: Resample::Bicubic,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            image_token: "[IMG]".into(),
            break_token: "[IMG_BREAK]".into(),
            end_token: "[IMG_END]".into(),
        }
    }

    #[test]
    fn target_size_is_transformers() {
        let s = settings(1024, 16);
        // Small images are only rounded up to whole patches.
        assert_eq!(s.target_size(100, 50), (112, 64));
        assert_eq!(s.target_size(64, 64), (64, 64));
        // Large ones shrink by the larger ratio, sides floored, then round up.
        assert_eq!(s.target_size(2048, 1000), (1024, 500_u32.div_ceil(16) * 16));
        let s = settings(32, 4);
        assert_eq!(s.target_size(40, 24), (32, 20));
        assert_eq!(s.target_size(83, 61), (32, 24));
        assert_eq!(s.target_size(21, 37), (20, 32));
    }
}
