//! Qwen3-VL on candle-nn: the vision tower, multimodal RoPE and DeepStack written here, the
//! language model on the shared decoder of [`super::llama`].
//!
//! Replaces candle-transformers' `models::qwen3_vl`, whose text model rotates every token
//! with 1-D positions (the model was trained with interleaved multimodal RoPE), runs the
//! prefill without a causal mask, and has a KV cache that can be neither reset nor padded.
//! This module computes what transformers' `Qwen3VLForConditionalGeneration` computes
//! (checked by `tests/vlm_parity.rs` against fixtures from transformers):
//!
//! - **Image processing**: Qwen's `smart_resize` (both sides multiples of `patch × merge`,
//!   area in `[min_pixels, max_pixels]`), Pillow's bicubic resampling, rescale and
//!   normalise, the frame repeated `temporal_patch_size` times, patches ordered by
//!   `merge × merge` blocks and flattened as `(C, T, P, P)`.
//! - **Vision tower**: the patch embedding (a 3-D convolution whose kernel equals its stride,
//!   i.e. one linear map per patch), a learned square grid of position embeddings resampled
//!   bilinearly (corners aligned) to the image's grid, 2-D rotary attention (rows rotate the
//!   first quarter of each head's frequencies, columns the second) over the patches of one
//!   image, pre-norm blocks, and the patch merger (`merge²` neighbours concatenated, then a
//!   GELU MLP). The DeepStack mergers turn the outputs of chosen blocks into extra features.
//! - **Prompt**: the model's own chat template; each image placeholder becomes one
//!   `<|image_pad|>` per merged patch. Text tokens take positions `p, p, p` (time, height,
//!   width); an image's tokens take `(s, s + row, s + col)` from the position `s` after the
//!   text before it, and the text after the image continues at `s + max(rows, cols)`.
//! - **Decoder**: Qwen3 layers (per-head q/k RMSNorm) with interleaved multimodal RoPE: of
//!   the `head_dim / 2` frequencies, index `j` uses the height position when `j % 3 == 1`
//!   and `j < 3 · section[1]`, the width position when `j % 3 == 2` and `j < 3 · section[2]`,
//!   and the time position otherwise. DeepStack features are added to the image positions
//!   of the hidden states after the first layers. Decode steps continue each row at its own
//!   next position (the largest prompt position plus one).
//!
//! Batches are left-padded with an attention mask (positions restart at 0 on each row's
//! first real token), and finished rows leave the running batch.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::chat_template::{ChatTemplate, ContentStyle};
use super::llama::{KvCache, Llama, LlamaConfig};
use super::preprocess::{self, HALF};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, ContentPart, InferenceError, Role};

/// Longest context the adapter accepts (Qwen3-VL configs allow 256k positions; a local
/// safety run never needs that many, and the RoPE table stays small).
pub const CONTEXT_CAP: usize = 32_768;

fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    5_000_000.0
}
fn d_silu() -> String {
    "silu".into()
}
fn d_vision_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_channels() -> usize {
    3
}
fn d_two() -> usize {
    2
}

/// `text_config` of `config.json`.
#[derive(Debug, Clone, Deserialize)]
struct TextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "d_eps")]
    rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    rope_theta: f64,
    max_position_embeddings: usize,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default = "d_silu")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
}

/// `vision_config` of `config.json`.
#[derive(Debug, Clone, Deserialize)]
struct VisionConfig {
    depth: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_heads: usize,
    #[serde(default = "d_channels")]
    in_channels: usize,
    patch_size: usize,
    #[serde(default = "d_two")]
    spatial_merge_size: usize,
    #[serde(default = "d_two")]
    temporal_patch_size: usize,
    out_hidden_size: usize,
    num_position_embeddings: usize,
    #[serde(default)]
    deepstack_visual_indexes: Vec<usize>,
    #[serde(default = "d_vision_act")]
    hidden_act: String,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
}

/// `config.json`.
#[derive(Debug, Clone, Deserialize)]
struct Config {
    text_config: TextConfig,
    vision_config: VisionConfig,
    image_token_id: u32,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

impl Config {
    fn parse(raw: &serde_json::Value) -> Result<Self, InferenceError> {
        let cfg: Config = super::parse_config(raw.clone(), "Qwen3-VL config.json")?;
        let t = &cfg.text_config;
        let v = &cfg.vision_config;
        let bad = |m: &str| Err(InferenceError::UnsupportedConfig(format!("Qwen3-VL: {m}")));
        if t.num_attention_heads == 0
            || t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return bad("num_attention_heads must be a positive multiple of num_key_value_heads");
        }
        if t.attention_bias {
            return bad("attention biases are not supported");
        }
        if t.hidden_act != "silu" {
            return bad("the text model's hidden_act must be silu");
        }
        if !cfg.head_dim().is_multiple_of(2) || cfg.head_dim() == 0 {
            return bad("head_dim must be even");
        }
        if v.patch_size == 0 || v.spatial_merge_size == 0 || v.temporal_patch_size == 0 {
            return bad("patch_size, spatial_merge_size and temporal_patch_size must be positive");
        }
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !(v.hidden_size / v.num_heads).is_multiple_of(4)
        {
            return bad("the vision head width must be a multiple of 4");
        }
        let side = (v.num_position_embeddings as f64).sqrt().round() as usize;
        if side == 0 || side * side != v.num_position_embeddings {
            return bad("num_position_embeddings must be a square");
        }
        if v.deepstack_visual_indexes.iter().any(|&i| i >= v.depth)
            || v.deepstack_visual_indexes.len() > t.num_hidden_layers
        {
            return bad("deepstack_visual_indexes must name vision blocks");
        }
        let s = cfg.mrope_section();
        if s.iter().sum::<usize>() != cfg.head_dim() / 2 {
            return bad("mrope_section must sum to head_dim / 2");
        }
        activation(&v.hidden_act).map_err(InferenceError::UnsupportedConfig)?;
        Ok(cfg)
    }

    fn head_dim(&self) -> usize {
        let t = &self.text_config;
        t.head_dim
            .unwrap_or(t.hidden_size / t.num_attention_heads.max(1))
    }

    /// How many of the `head_dim / 2` frequencies follow time, height and width.
    fn mrope_section(&self) -> [usize; 3] {
        let s = self
            .text_config
            .rope_scaling
            .as_ref()
            .and_then(|r| r.get("mrope_section"))
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect::<Vec<_>>())
            .unwrap_or_else(|| vec![24, 20, 20]);
        match s.as_slice() {
            [t, h, w] => [*t as usize, *h as usize, *w as usize],
            _ => [0, 0, 0],
        }
    }

    fn tied(&self) -> bool {
        self.text_config
            .tie_word_embeddings
            .or(self.tie_word_embeddings)
            .unwrap_or(false)
    }

    fn vision_rope_theta(&self) -> f32 {
        self.vision_config
            .rope_parameters
            .as_ref()
            .and_then(|r| r.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .unwrap_or(10_000.0) as f32
    }

    fn context(&self) -> usize {
        self.text_config.max_position_embeddings.min(CONTEXT_CAP)
    }
}

/// transformers' activation by name.
fn activation(name: &str) -> Result<fn(&Tensor) -> candle_core::Result<Tensor>, String> {
    Ok(match name {
        "gelu" => |x: &Tensor| x.gelu_erf(),
        "gelu_pytorch_tanh" | "gelu_new" => |x: &Tensor| x.gelu(),
        "quick_gelu" => |x: &Tensor| x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        "silu" => |x: &Tensor| candle_nn::ops::silu(x),
        other => {
            return Err(format!(
                "Qwen3-VL: vision hidden_act {other:?} is not supported"
            ));
        }
    })
}

// ---------------------------------------------------------------------------
// Vision tower

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

/// The patch merger: `merge²` neighbouring patches concatenated, LayerNorm (before the
/// concatenation for the main merger, after it for the DeepStack ones), Linear, GELU, Linear.
struct Merger {
    norm: LayerNorm,
    norm_after: bool,
    fc1: Linear,
    fc2: Linear,
    width: usize,
}

impl Merger {
    fn new(v: &VisionConfig, norm_after: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let width = v.hidden_size * v.spatial_merge_size * v.spatial_merge_size;
        let norm_width = if norm_after { width } else { v.hidden_size };
        Ok(Self {
            norm: candle_nn::layer_norm(norm_width, 1e-6, vb.pp("norm"))?,
            norm_after,
            fc1: candle_nn::linear(width, width, vb.pp("linear_fc1"))?,
            fc2: candle_nn::linear(width, v.out_hidden_size, vb.pp("linear_fc2"))?,
            width,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.norm_after {
            self.norm.forward(&x.reshape(((), self.width))?)?
        } else {
            self.norm.forward(x)?.reshape(((), self.width))?
        };
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

struct Vision {
    cfg: VisionConfig,
    /// The 3-D convolution as a linear map over a flattened `(C, T, P, P)` patch.
    patch: Linear,
    pos_embed: Tensor,
    side: usize,
    blocks: Vec<Block>,
    merger: Merger,
    /// `(block index, merger)` for every DeepStack output.
    deepstack: Vec<(usize, Merger)>,
    /// Frequencies of the 2-D rotary embedding (`head_dim / 4` of them).
    inv_freq: Vec<f32>,
    act: fn(&Tensor) -> candle_core::Result<Tensor>,
}

/// What the vision tower makes of one image.
struct ImageFeatures {
    /// `(tokens, hidden)` of the language model.
    main: Tensor,
    /// One `(tokens, hidden)` per DeepStack layer.
    deep: Vec<Tensor>,
}

impl Vision {
    fn new(v: &VisionConfig, theta: f32, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = v.hidden_size;
        let k = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        let pe = vb.pp("patch_embed.proj");
        let w = pe.get(
            (
                h,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ),
            "weight",
        )?;
        let patch = Linear::new(w.reshape((h, k))?, Some(pe.get(h, "bias")?));
        let pos_embed = vb.get((v.num_position_embeddings, h), "pos_embed.weight")?;
        let mut blocks = Vec::with_capacity(v.depth);
        for i in 0..v.depth {
            let b = vb.pp(format!("blocks.{i}"));
            blocks.push(Block {
                norm1: candle_nn::layer_norm(h, 1e-6, b.pp("norm1"))?,
                norm2: candle_nn::layer_norm(h, 1e-6, b.pp("norm2"))?,
                qkv: candle_nn::linear(h, 3 * h, b.pp("attn.qkv"))?,
                proj: candle_nn::linear(h, h, b.pp("attn.proj"))?,
                fc1: candle_nn::linear(h, v.intermediate_size, b.pp("mlp.linear_fc1"))?,
                fc2: candle_nn::linear(v.intermediate_size, h, b.pp("mlp.linear_fc2"))?,
            });
        }
        let merger = Merger::new(v, false, vb.pp("merger"))?;
        let deepstack = v
            .deepstack_visual_indexes
            .iter()
            .enumerate()
            .map(|(i, &layer)| {
                Merger::new(v, true, vb.pp(format!("deepstack_merger_list.{i}")))
                    .map(|m| (layer, m))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Half of each head rotates by the row, half by the column: head_dim / 4 frequencies,
        // computed in f32 as transformers does.
        let spatial = (h / v.num_heads) / 2;
        let inv_freq = (0..spatial)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / spatial as f32))
            .collect();
        Ok(Self {
            cfg: v.clone(),
            patch,
            pos_embed,
            side: (v.num_position_embeddings as f64).sqrt().round() as usize,
            blocks,
            merger,
            deepstack,
            inv_freq,
            act: activation(&v.hidden_act).map_err(candle_core::Error::msg)?,
        })
    }

    /// `(row, col)` of every patch of a `gh × gw` grid in merge-block order.
    fn patch_coords(&self, gh: usize, gw: usize) -> Vec<(usize, usize)> {
        let m = self.cfg.spatial_merge_size;
        let mut out = Vec::with_capacity(gh * gw);
        for br in 0..gh / m {
            for bc in 0..gw / m {
                for ir in 0..m {
                    for ic in 0..m {
                        out.push((br * m + ir, bc * m + ic));
                    }
                }
            }
        }
        out
    }

    /// The learned `side × side` position grid resampled bilinearly (corners aligned) to the
    /// patch coordinates.
    fn position_embeddings(
        &self,
        coords: &[(usize, usize)],
        gh: usize,
        gw: usize,
    ) -> candle_core::Result<Tensor> {
        let side = self.side;
        let taps = |index: usize, size: usize| -> ([usize; 2], [f32; 2]) {
            let src = index as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
            let floor = src.floor();
            let f = floor as usize;
            let frac = src - floor;
            ([f.min(side - 1), (f + 1).min(side - 1)], [1.0 - frac, frac])
        };
        let mut idx = Vec::with_capacity(coords.len() * 4);
        let mut wts = Vec::with_capacity(coords.len() * 4);
        for &(r, c) in coords {
            let (ht, hw) = taps(r, gh);
            let (wt, ww) = taps(c, gw);
            for a in 0..2 {
                for b in 0..2 {
                    idx.push((ht[a] * side + wt[b]) as u32);
                    wts.push(hw[a] * ww[b]);
                }
            }
        }
        let n = coords.len();
        let dev = self.pos_embed.device();
        let idx = Tensor::from_vec(idx, n * 4, dev)?;
        let wts = Tensor::from_vec(wts, (n, 4, 1), dev)?.to_dtype(self.pos_embed.dtype())?;
        self.pos_embed
            .index_select(&idx, 0)?
            .reshape((n, 4, self.cfg.hidden_size))?
            .broadcast_mul(&wts)?
            .sum(1)
    }

    /// `(cos, sin)` `(patches, head_dim / 2)` of the 2-D rotary embedding.
    fn rotary(&self, coords: &[(usize, usize)]) -> candle_core::Result<(Tensor, Tensor)> {
        let q = self.inv_freq.len();
        let mut cos = Vec::with_capacity(coords.len() * 2 * q);
        let mut sin = Vec::with_capacity(coords.len() * 2 * q);
        for &(r, c) in coords {
            for pos in [r, c] {
                for &f in &self.inv_freq {
                    let a = pos as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let dev = self.pos_embed.device();
        Ok((
            Tensor::from_vec(cos, (coords.len(), 2 * q), dev)?,
            Tensor::from_vec(sin, (coords.len(), 2 * q), dev)?,
        ))
    }

    /// Runs one image: `pixels` `(patches, C*T*P*P)`, its grid in patches.
    fn forward(&self, pixels: &Tensor, gh: usize, gw: usize) -> candle_core::Result<ImageFeatures> {
        let dtype = self.pos_embed.dtype();
        let coords = self.patch_coords(gh, gw);
        let n = coords.len();
        let mut x = self.patch.forward(&pixels.to_dtype(dtype)?)?;
        x = (x + self.position_embeddings(&coords, gh, gw)?)?;
        let (cos, sin) = self.rotary(&coords)?;
        let heads = self.cfg.num_heads;
        let hd = self.cfg.hidden_size / heads;
        let mut deep = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let a = b.norm1.forward(&x)?;
            // (patches, 3, heads, hd) → three (1, heads, patches, hd), rotated in f32.
            let qkv = b.qkv.forward(&a)?.reshape((n, 3, heads, hd))?;
            let part = |k: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, k, 1)?
                    .squeeze(1)?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .to_dtype(DType::F32)?
                    .contiguous()
            };
            let q = candle_nn::rotary_emb::rope(&part(0)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&part(1)?, &cos, &sin)?;
            let v = part(2)?;
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let o = probs
                .matmul(&v)?
                .squeeze(0)?
                .transpose(0, 1)?
                .reshape((n, self.cfg.hidden_size))?
                .to_dtype(dtype)?;
            x = (x + b.proj.forward(&o)?)?;
            let m = b
                .fc2
                .forward(&(self.act)(&b.fc1.forward(&b.norm2.forward(&x)?)?)?)?;
            x = (x + m)?;
            for (layer, merger) in &self.deepstack {
                if *layer == i {
                    deep.push(merger.forward(&x)?);
                }
            }
        }
        Ok(ImageFeatures {
            main: self.merger.forward(&x)?,
            deep,
        })
    }
}

// ---------------------------------------------------------------------------
// The model

/// One preprocessed image.
struct Image {
    /// `(patches, C*T*P*P)`.
    pixels: Tensor,
    /// Grid in patches (height, width).
    grid: (usize, usize),
}

/// Inputs of one request.
pub struct Input {
    ids: Vec<u32>,
    images: Vec<Image>,
    /// (time, height, width) position of every token.
    positions: Vec<[u32; 3]>,
    /// Position of the first generated token.
    next: u32,
}

impl Input {
    /// Token ids of the prompt, image placeholders expanded.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The patches of every image, stacked as the processor's `pixel_values`.
    pub fn pixel_values(&self) -> candle_core::Result<Option<Tensor>> {
        if self.images.is_empty() {
            return Ok(None);
        }
        let all: Vec<&Tensor> = self.images.iter().map(|i| &i.pixels).collect();
        Tensor::cat(&all, 0).map(Some)
    }

    /// The multimodal RoPE positions `(time, height, width)` of every prompt token.
    pub fn positions(&self) -> &[[u32; 3]] {
        &self.positions
    }
}

/// A loaded Qwen3-VL model.
pub struct Qwen3Vl {
    cfg: Config,
    common: Common,
    template: Option<ChatTemplate>,
    vision: Vision,
    text: Llama,
    /// Frequencies of the text RoPE (`head_dim / 2`), in f32 as transformers computes them.
    inv_freq: Vec<f32>,
    /// Which of time (0), height (1), width (2) each frequency follows.
    axis: Vec<usize>,
    min_pixels: u64,
    max_pixels: u64,
    mean: [f32; 3],
    std: [f32; 3],
    cache: Option<KvCache>,
    /// Next position of every row of the running batch.
    next: Vec<u32>,
}

/// The candle modules of a Qwen3-VL checkpoint.
fn modules(cfg: &Config, vb: VarBuilder) -> candle_core::Result<(Vision, Llama)> {
    let t = &cfg.text_config;
    let vision = Vision::new(
        &cfg.vision_config,
        cfg.vision_rope_theta(),
        vb.pp("model.visual"),
    )?;
    let llama_cfg = LlamaConfig {
        hidden_size: t.hidden_size,
        intermediate_size: t.intermediate_size,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: t.num_attention_heads,
        num_key_value_heads: t.num_key_value_heads,
        head_dim: cfg.head_dim(),
        rms_norm_eps: t.rms_norm_eps,
        rope_theta: t.rope_theta,
        vocab_size: t.vocab_size,
        max_position_embeddings: cfg.context(),
        tie_word_embeddings: cfg.tied(),
        qk_norm: true,
    };
    let text = Llama::load_parts(&llama_cfg, vb.pp("model.language_model"), vb.pp("lm_head"))?;
    Ok((vision, text))
}

/// Creates every weight of the model described by `config.json` in `vb`.
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg = Config::parse(raw)?;
    modules(&cfg, vb)
        .map(|_| ())
        .map_err(|e| InferenceError::Load(e.to_string()))
}

/// For each of the `half` rotary frequencies, the axis it follows in Qwen3-VL's interleaved
/// layout.
fn interleaved_axes(half: usize, section: [usize; 3]) -> Vec<usize> {
    (0..half)
        .map(|j| {
            if j % 3 == 1 && j < 3 * section[1] {
                1
            } else if j % 3 == 2 && j < 3 * section[2] {
                2
            } else {
                0
            }
        })
        .collect()
}

impl Qwen3Vl {
    /// Loads a model directory.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let raw = super::read_model_config(dir)?;
        let cfg = Config::parse(&raw)?;
        let common =
            super::load_common(dir, device, dtype, &raw, &["<|im_end|>", "<|endoftext|>"])?;
        for t in [
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
        ] {
            super::special_id(&common.tokenizer, t)?;
        }
        let pre = super::image_processor_config(dir)?;
        let get = |k: &str| pre.as_ref().and_then(|p| p.get(k)).and_then(|v| v.as_u64());
        let size = |k: &str| {
            pre.as_ref()
                .and_then(|p| p.get("size"))
                .and_then(|s| s.get(k))
                .and_then(|v| v.as_u64())
        };
        let min_pixels = get("min_pixels")
            .or_else(|| size("shortest_edge"))
            .unwrap_or(65_536);
        let max_pixels = get("max_pixels")
            .or_else(|| size("longest_edge"))
            .unwrap_or(16_777_216);
        let (mean, std) = preprocess::mean_std(pre.as_ref(), HALF, HALF);
        let tensors = super::load_tensors(dir, common.dtype, device)?;
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        let (vision, text) = modules(&cfg, vb).map_err(|e| InferenceError::Load(e.to_string()))?;
        let hd = cfg.head_dim();
        let theta = cfg.text_config.rope_theta as f32;
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / hd as f32))
            .collect();
        let axis = interleaved_axes(hd / 2, cfg.mrope_section());
        let me = Self {
            template: ChatTemplate::load(dir)?,
            common: common.clone(),
            vision,
            text,
            inv_freq,
            axis,
            min_pixels,
            max_pixels: max_pixels.max(min_pixels),
            mean,
            std,
            cache: None,
            next: Vec::new(),
            cfg,
        };
        Ok((me, common))
    }

    fn merge(&self) -> usize {
        self.cfg.vision_config.spatial_merge_size
    }

    fn preprocess(&self, img: &image::DynamicImage) -> Result<Image, InferenceError> {
        let v = &self.cfg.vision_config;
        let img = preprocess::to_rgb(img);
        let factor = (v.patch_size * v.spatial_merge_size) as u32;
        let (h, w) = preprocess::smart_resize(
            img.height(),
            img.width(),
            factor,
            self.min_pixels,
            self.max_pixels,
        )?;
        let img = preprocess::resize_exact(&img, w, h);
        let (vals, n, grid) = preprocess::qwen_patches(
            &img,
            v.patch_size,
            v.temporal_patch_size,
            v.spatial_merge_size,
            self.mean,
            self.std,
        );
        let width = vals.len() / n.max(1);
        let pixels = Tensor::from_vec(vals, (n, width), &self.common.device)
            .map_err(|e| InferenceError::Internal(e.to_string()))?;
        Ok(Image {
            pixels,
            grid: (grid[1] as usize, grid[2] as usize),
        })
    }

    /// The prompt from the model's chat template, or the documented ChatML fallback (one
    /// vision block per image, before the text of its message).
    fn prompt_text(
        &self,
        msgs: &[crate::inference::ChatMessage],
    ) -> Result<String, InferenceError> {
        if let Some(t) = &self.template {
            return t.render(msgs, ContentStyle::Parts, &[]);
        }
        let mut text = String::new();
        for m in msgs {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            text.push_str("<|im_start|>");
            text.push_str(role);
            text.push('\n');
            for p in &m.content {
                match p {
                    ContentPart::Image(_) => {
                        text.push_str("<|vision_start|><|image_pad|><|vision_end|>")
                    }
                    ContentPart::Text(t) => text.push_str(t),
                }
            }
            text.push_str("<|im_end|>\n");
        }
        text.push_str("<|im_start|>assistant\n");
        Ok(text)
    }

    /// `(cos, sin)` `(rows, len, head_dim / 2)` for per-token (time, height, width) positions.
    fn rope(&self, rows: &[Vec<[u32; 3]>]) -> candle_core::Result<(Tensor, Tensor)> {
        let len = rows.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(rows.len() * len * half);
        let mut sin = Vec::with_capacity(rows.len() * len * half);
        for row in rows {
            for p in row {
                for (f, &a) in self.inv_freq.iter().zip(&self.axis) {
                    let angle = p[a] as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let dev = &self.common.device;
        Ok((
            Tensor::from_vec(cos, (rows.len(), len, half), dev)?,
            Tensor::from_vec(sin, (rows.len(), len, half), dev)?,
        ))
    }

    /// Token embeddings with the image features in the placeholder positions, and the
    /// DeepStack additions `(len, hidden)` per layer (zero outside image positions).
    fn embed(&self, input: &Input) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let dev = &self.common.device;
        let image_id = self.cfg.image_token_id;
        let features = input
            .images
            .iter()
            .map(|img| self.vision.forward(&img.pixels, img.grid.0, img.grid.1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Without images there is nothing to add after the first layers.
        let layers = if features.is_empty() {
            0
        } else {
            self.vision.deepstack.len()
        };
        let main: Vec<&Tensor> = features.iter().map(|f| &f.main).collect();
        let main = if main.is_empty() {
            None
        } else {
            Some(Tensor::cat(&main, 0)?)
        };
        let deep = (0..layers)
            .map(|l| {
                let parts: Vec<&Tensor> = features.iter().map(|f| &f.deep[l]).collect();
                Tensor::cat(&parts, 0)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let hidden = self.cfg.text_config.hidden_size;
        let dtype = self.common.dtype;
        let mut pieces = Vec::new();
        let mut deep_pieces: Vec<Vec<Tensor>> = vec![Vec::new(); layers];
        let mut used = 0;
        let mut i = 0;
        let ids = &input.ids;
        while i < ids.len() {
            let is_image = ids[i] == image_id;
            let mut end = i;
            while end < ids.len() && (ids[end] == image_id) == is_image {
                end += 1;
            }
            let n = end - i;
            if is_image {
                let Some(f) = &main else {
                    candle_core::bail!("image tokens without an image");
                };
                if used + n > f.dim(0)? {
                    candle_core::bail!("more image tokens than image features");
                }
                pieces.push(f.narrow(0, used, n)?);
                for (l, d) in deep.iter().enumerate() {
                    deep_pieces[l].push(d.narrow(0, used, n)?);
                }
                used += n;
            } else {
                pieces.push(self.text.embed(&Tensor::new(&ids[i..end], dev)?)?);
                for dp in deep_pieces.iter_mut() {
                    dp.push(Tensor::zeros((n, hidden), dtype, dev)?);
                }
            }
            i = end;
        }
        if main.as_ref().is_some_and(|f| f.dim(0).ok() != Some(used)) {
            candle_core::bail!("image features and image tokens differ in number");
        }
        let x = Tensor::cat(&pieces, 0)?;
        let deep = deep_pieces
            .iter()
            .map(|p| Tensor::cat(p, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((x, deep))
    }
}

/// Multimodal RoPE positions of a prompt (transformers' `get_rope_index` for images): text
/// runs count up on all three axes; an image of `gh × gw` merged tokens starting at `s`
/// takes `(s, s + row, s + col)`, and the text after it continues at `s + max(gh, gw)`.
/// Returns the positions and the position of the first generated token.
fn rope_positions(ids: &[u32], image_id: u32, grids: &[(usize, usize)]) -> (Vec<[u32; 3]>, u32) {
    let mut out = Vec::with_capacity(ids.len());
    let mut grids = grids.iter();
    let mut pos = 0u32;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == image_id {
            let mut end = i;
            while end < ids.len() && ids[end] == image_id {
                end += 1;
            }
            // Counted against the images in `prepare`; a mismatch falls back to text positions.
            let (gh, gw) = grids.next().copied().unwrap_or((1, end - i));
            for k in 0..end - i {
                let (r, c) = (k / gw.max(1), k % gw.max(1));
                out.push([pos, pos + r as u32, pos + c as u32]);
            }
            pos += gh.max(gw) as u32;
            i = end;
        } else {
            out.push([pos; 3]);
            pos += 1;
            i += 1;
        }
    }
    let next = out.iter().flatten().copied().max().map_or(0, |m| m + 1);
    (out, next)
}

impl Family for Qwen3Vl {
    type Input = Input;

    fn prepare(&self, request: &ChatRequest) -> Result<Prepared<Input>, InferenceError> {
        let msgs = super::messages_with_schema(request);
        let mut images = Vec::new();
        for m in &msgs {
            for p in &m.content {
                if let ContentPart::Image(img) = p {
                    images.push(self.preprocess(img.decode()?.as_ref())?);
                }
            }
        }
        let text = self.prompt_text(&msgs)?;
        let raw = super::encode(&self.common.tokenizer, &text)?;
        let image_id = self.cfg.image_token_id;
        let placeholders = raw.iter().filter(|&&i| i == image_id).count();
        if placeholders != images.len() {
            return Err(InferenceError::InvalidRequest(format!(
                "the prompt text contains {placeholders} image placeholders for {} images",
                images.len()
            )));
        }
        // Each placeholder stands for one token per merged patch of its image.
        let m = self.merge();
        let grids: Vec<(usize, usize)> = images
            .iter()
            .map(|i| (i.grid.0 / m, i.grid.1 / m))
            .collect();
        let mut ids = Vec::with_capacity(raw.len());
        let mut next_grid = grids.iter();
        for id in raw {
            if id == image_id {
                let (gh, gw) = next_grid.next().copied().unwrap_or((0, 0));
                ids.extend(std::iter::repeat_n(image_id, gh * gw));
            } else {
                ids.push(id);
            }
        }
        let (positions, next) = rope_positions(&ids, image_id, &grids);
        let len = ids.len();
        Ok(Prepared {
            input: Input {
                ids,
                images,
                positions,
                next,
            },
            prompt_tokens: len,
            group_key: vec![len],
        })
    }

    fn prefill(&mut self, inputs: &[&Input]) -> candle_core::Result<Tensor> {
        let embedded = inputs
            .iter()
            .map(|i| self.embed(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let longest = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let hidden = self.cfg.text_config.hidden_size;
        let layers = self.vision.deepstack.len();
        let dev = self.common.device.clone();
        let dtype = self.common.dtype;
        let mut rows = Vec::with_capacity(inputs.len());
        let mut valid = Vec::with_capacity(inputs.len() * longest);
        let mut positions = Vec::with_capacity(inputs.len());
        let left = |t: &Tensor, pad: usize| -> candle_core::Result<Tensor> {
            if pad == 0 {
                return Ok(t.clone());
            }
            Tensor::cat(&[&Tensor::zeros((pad, hidden), dtype, &dev)?, t], 0)
        };
        // DeepStack additions only when some row has an image; the others add zeros.
        let layers = if embedded.iter().any(|(_, d)| !d.is_empty()) {
            layers
        } else {
            0
        };
        let mut deep_rows: Vec<Vec<Tensor>> = vec![Vec::new(); layers];
        for (input, (x, deep)) in inputs.iter().zip(&embedded) {
            let pad = longest - input.ids.len();
            valid.extend(std::iter::repeat_n(0f32, pad));
            valid.extend(std::iter::repeat_n(1f32, input.ids.len()));
            rows.push(left(x, pad)?);
            for (l, rows_l) in deep_rows.iter_mut().enumerate() {
                rows_l.push(match deep.get(l) {
                    Some(d) => left(d, pad)?,
                    None => Tensor::zeros((longest, hidden), dtype, &dev)?,
                });
            }
            let mut p = vec![[0u32; 3]; pad];
            p.extend_from_slice(&input.positions);
            positions.push(p);
        }
        let x = Tensor::stack(&rows, 0)?;
        let inject = deep_rows
            .iter()
            .map(|r| Tensor::stack(r, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let valid = Tensor::from_vec(valid, (inputs.len(), longest), &dev)?;
        let (cos, sin) = self.rope(&positions)?;
        let mut cache = KvCache::new(self.cfg.text_config.num_hidden_layers);
        let logits = self
            .text
            .forward_with(&x, &valid, &mut cache, Some((&cos, &sin)), &inject)?;
        self.cache = Some(cache);
        self.next = inputs.iter().map(|i| i.next).collect();
        Ok(logits)
    }

    fn step(&mut self, tokens: &[u32], _offset: usize) -> candle_core::Result<Tensor> {
        if self.next.len() != tokens.len() {
            candle_core::bail!(
                "decode step for {} rows of {}",
                tokens.len(),
                self.next.len()
            );
        }
        let positions: Vec<Vec<[u32; 3]>> = self.next.iter().map(|&p| vec![[p; 3]]).collect();
        let (cos, sin) = self.rope(&positions)?;
        let Some(cache) = self.cache.as_mut() else {
            candle_core::bail!("decode step before prefill")
        };
        let dev = &self.common.device;
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), dev)?;
        let x = self.text.embed(&ids)?;
        let valid = Tensor::ones((tokens.len(), 1), DType::F32, dev)?;
        let logits = self
            .text
            .forward_with(&x, &valid, cache, Some((&cos, &sin)), &[])?;
        for p in &mut self.next {
            *p += 1;
        }
        Ok(logits)
    }

    fn pads_batches(&self) -> bool {
        true
    }

    fn retain_rows(&mut self, keep: &[usize]) -> candle_core::Result<bool> {
        if let Some(cache) = self.cache.as_mut() {
            cache.retain(keep)?;
        }
        self.next = keep
            .iter()
            .filter_map(|&i| self.next.get(i).copied())
            .collect();
        Ok(true)
    }

    fn context_length(&self) -> usize {
        self.cfg.context()
    }

    fn accepts_images(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{interleaved_axes, rope_positions};

    #[test]
    fn interleaved_sections_follow_transformers() {
        // head_dim 16 → 8 frequencies, section [4, 2, 2]: H at 1 and 4, W at 2 and 5.
        assert_eq!(interleaved_axes(8, [4, 2, 2]), vec![0, 1, 2, 0, 1, 2, 0, 0]);
        // Qwen3-VL's [24, 20, 20] over 64 frequencies: T H W repeating, T from 60 on.
        let a = interleaved_axes(64, [24, 20, 20]);
        assert_eq!(&a[..6], &[0, 1, 2, 0, 1, 2]);
        assert_eq!(&a[57..], &[0, 1, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn positions_of_text_image_text() {
        // 2 text tokens, a 2×3 image, 1 text token (image id 9).
        let ids = [1, 2, 9, 9, 9, 9, 9, 9, 3];
        let (p, next) = rope_positions(&ids, 9, &[(2, 3)]);
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [1, 1, 1]);
        assert_eq!(p[2], [2, 2, 2]);
        assert_eq!(p[4], [2, 2, 4]);
        assert_eq!(p[5], [2, 3, 2]);
        assert_eq!(p[7], [2, 3, 4]);
        // The text after the image starts at 2 + max(2, 3).
        assert_eq!(p[8], [5, 5, 5]);
        assert_eq!(next, 6);
    }
}
