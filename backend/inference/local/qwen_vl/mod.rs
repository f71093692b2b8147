//! Qwen2-VL, Qwen2.5-VL and Qwen3-VL on candle-nn: the vision towers ([`vision`]),
//! multimodal RoPE and DeepStack written here, the language model on the shared decoder of
//! [`super::llama`].
//!
//! Replaces candle-transformers' `models::qwen3_vl` (its text model rotates every token
//! with 1-D positions where the model was trained with multimodal RoPE, runs the prefill
//! without a causal mask, and has a KV cache that can be neither reset nor padded) and
//! `models::qwen2_vl`-style ports. This module computes what transformers'
//! `Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration` and
//! `Qwen3VLForConditionalGeneration` compute (checked by `tests/vlm_parity.rs` against
//! fixtures from transformers):
//!
//! - **Image processing**: Qwen's `smart_resize` (both sides multiples of `patch × merge`,
//!   area in `[min_pixels, max_pixels]`), Pillow's bicubic resampling, rescale and
//!   normalise, the frame repeated `temporal_patch_size` times, patches ordered by
//!   `merge × merge` blocks and flattened as `(C, T, P, P)`.
//! - **Prompt**: the model's own chat template; each image placeholder becomes one
//!   `<|image_pad|>` per merged patch. Text tokens take positions `p, p, p` (time, height,
//!   width); an image's tokens take `(s, s + row, s + col)` from the position `s` after the
//!   text before it, and the text after the image continues at `s + max(rows, cols)`.
//! - **Decoder**: Qwen2 layers (biased q/k/v projections) for Qwen2/2.5-VL, Qwen3 layers
//!   (per-head q/k RMSNorm) for Qwen3-VL. Of the `head_dim / 2` rotary frequencies, Qwen2-VL
//!   and Qwen2.5-VL give the first `section[0]` to time, the next `section[1]` to height and
//!   the rest to width; Qwen3-VL interleaves them (index `j` follows height when
//!   `j % 3 == 1` and `j < 3 · section[1]`, width when `j % 3 == 2` and `j < 3 · section[2]`,
//!   time otherwise). Qwen3-VL's DeepStack features are added to the image positions of the
//!   hidden states after the first layers. Decode steps continue each row at its own next
//!   position (the largest prompt position plus one).
//!
//! Batches are left-padded with an attention mask (positions restart at 0 on each row's
//! first real token), and finished rows leave the running batch. Weights load from the
//! transformers-5 layout (`model.language_model.*`, `model.visual.*`) or the classic one of
//! the published checkpoints (`model.*`, `visual.*`).

pub mod vision;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use self::vision::{Generation, Vision, VisionConfig};
use super::chat_template::{ChatTemplate, ContentStyle};
use super::llama::{KvCache, Llama, LlamaConfig};
use super::preprocess::{self, HALF};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, ContentPart, InferenceError, Role};

/// Longest context the adapter accepts (Qwen-VL configs allow up to 256k positions; a local
/// safety run never needs that many, and the RoPE table stays small).
pub const CONTEXT_CAP: usize = 32_768;

/// The language model's sizes, from `text_config` (or the top level of Qwen2-VL's classic
/// configs).
#[derive(Debug, Clone)]
struct TextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    max_position_embeddings: usize,
    mrope_section: [usize; 3],
    tie_word_embeddings: bool,
}

/// What the adapter reads of `config.json`.
#[derive(Debug, Clone)]
struct Config {
    text: TextConfig,
    vision: VisionConfig,
    image_token_id: u32,
}

fn bad(m: impl std::fmt::Display) -> InferenceError {
    InferenceError::UnsupportedConfig(format!("Qwen-VL config.json: {m}"))
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn int(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

fn need(v: &Value, key: &str) -> Result<usize, InferenceError> {
    int(v, key).ok_or_else(|| bad(format!("{key} is missing")))
}

fn list(v: &Value, key: &str) -> Vec<usize> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as usize)
                .collect()
        })
        .unwrap_or_default()
}

impl Config {
    fn parse(raw: &Value) -> Result<Self, InferenceError> {
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or("");
        let generation = match model_type {
            "qwen2_vl" => Generation::V2,
            "qwen2_5_vl" => Generation::V25,
            "qwen3_vl" => Generation::V3,
            other => return Err(bad(format!("model_type {other:?} is not a Qwen-VL model"))),
        };
        // Classic Qwen2/2.5-VL configs keep the text sizes at the top level.
        let t = raw.get("text_config").unwrap_or(raw);
        let v = raw
            .get("vision_config")
            .ok_or_else(|| bad("vision_config is missing"))?;
        let heads = need(t, "num_attention_heads")?;
        let kv = int(t, "num_key_value_heads").unwrap_or(heads);
        let hidden = need(t, "hidden_size")?;
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(bad(
                "num_attention_heads must be a positive multiple of num_key_value_heads",
            ));
        }
        if t.get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu")
            != "silu"
        {
            return Err(bad("the text model's hidden_act must be silu"));
        }
        if generation == Generation::V3 && t.get("attention_bias") == Some(&Value::Bool(true)) {
            return Err(bad("attention biases are not supported for Qwen3-VL"));
        }
        let head_dim = int(t, "head_dim").unwrap_or(hidden / heads);
        let section = t
            .get("rope_scaling")
            .filter(|r| !r.is_null())
            .map(|r| list(r, "mrope_section"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| match generation {
                Generation::V3 => vec![24, 20, 20],
                _ => vec![16, 24, 24],
            });
        let mrope_section = match section.as_slice() {
            [a, b, c] => [*a, *b, *c],
            _ => return Err(bad("mrope_section must have three entries")),
        };
        if head_dim == 0
            || !head_dim.is_multiple_of(2)
            || mrope_section.iter().sum::<usize>() != head_dim / 2
        {
            return Err(bad("mrope_section must sum to head_dim / 2"));
        }
        let tie = t
            .get("tie_word_embeddings")
            .or_else(|| raw.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let text = TextConfig {
            vocab_size: need(t, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need(t, "intermediate_size")?,
            num_hidden_layers: need(t, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: num(t, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta: num(t, "rope_theta").unwrap_or(match generation {
                Generation::V3 => 5_000_000.0,
                _ => 1_000_000.0,
            }),
            max_position_embeddings: need(t, "max_position_embeddings")?,
            mrope_section,
            tie_word_embeddings: tie,
        };
        let vision = vision_config(generation, v, hidden)?;
        let image_token_id = raw
            .get("image_token_id")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("image_token_id is missing"))? as u32;
        Ok(Self {
            text,
            vision,
            image_token_id,
        })
    }

    fn context(&self) -> usize {
        self.text.max_position_embeddings.min(CONTEXT_CAP)
    }
}

/// `vision_config`, whose field names differ between generations.
fn vision_config(
    g: Generation,
    v: &Value,
    text_hidden: usize,
) -> Result<VisionConfig, InferenceError> {
    let (width, intermediate, out, act) = match g {
        // Qwen2-VL: `embed_dim` is the tower's width, `hidden_size` the merger's output.
        Generation::V2 => {
            let w = int(v, "embed_dim").unwrap_or(1280);
            let ratio = num(v, "mlp_ratio").unwrap_or(4.0);
            (
                w,
                (w as f64 * ratio) as usize,
                int(v, "hidden_size").unwrap_or(text_hidden),
                "quick_gelu",
            )
        }
        Generation::V25 => (
            need(v, "hidden_size")?,
            need(v, "intermediate_size")?,
            int(v, "out_hidden_size").unwrap_or(text_hidden),
            "silu",
        ),
        Generation::V3 => (
            need(v, "hidden_size")?,
            need(v, "intermediate_size")?,
            int(v, "out_hidden_size").unwrap_or(text_hidden),
            "gelu_pytorch_tanh",
        ),
    };
    let c = VisionConfig {
        generation: g,
        depth: need(v, "depth")?,
        width,
        intermediate,
        heads: int(v, "num_heads").unwrap_or(16),
        channels: int(v, "in_channels")
            .or_else(|| int(v, "in_chans"))
            .unwrap_or(3),
        patch: int(v, "patch_size").unwrap_or(14),
        merge: int(v, "spatial_merge_size").unwrap_or(2),
        temporal: int(v, "temporal_patch_size").unwrap_or(2),
        out,
        act: v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or(act)
            .to_string(),
        rope_theta: v
            .get("rope_parameters")
            .and_then(|r| num(r, "rope_theta"))
            .unwrap_or(10_000.0) as f32,
        position_embeddings: int(v, "num_position_embeddings").unwrap_or(0),
        deepstack: list(v, "deepstack_visual_indexes"),
        window_size: int(v, "window_size").unwrap_or(112),
        full_attention: list(v, "fullatt_block_indexes"),
    };
    if c.patch == 0 || c.merge == 0 || c.temporal == 0 {
        return Err(bad(
            "patch_size, spatial_merge_size and temporal_patch_size must be positive",
        ));
    }
    if c.channels != 3 {
        return Err(bad("in_channels must be 3 (RGB)"));
    }
    if c.heads == 0 || !c.width.is_multiple_of(c.heads) || !(c.width / c.heads).is_multiple_of(4) {
        return Err(bad("the vision head width must be a multiple of 4"));
    }
    if g == Generation::V3 {
        let side = (c.position_embeddings as f64).sqrt().round() as usize;
        if side == 0 || side * side != c.position_embeddings {
            return Err(bad("num_position_embeddings must be a square"));
        }
    }
    if c.deepstack.iter().any(|&i| i >= c.depth) {
        return Err(bad("deepstack_visual_indexes must name vision blocks"));
    }
    vision::activation(&c.act).map_err(bad)?;
    Ok(c)
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

    /// `(t, h, w)` patch grid of every image (transformers' `image_grid_thw`).
    pub fn grids(&self) -> Vec<[u32; 3]> {
        self.images
            .iter()
            .map(|i| [1, i.grid.0 as u32, i.grid.1 as u32])
            .collect()
    }

    /// The multimodal RoPE positions `(time, height, width)` of every prompt token.
    pub fn positions(&self) -> &[[u32; 3]] {
        &self.positions
    }
}

/// A loaded Qwen2-VL, Qwen2.5-VL or Qwen3-VL model.
pub struct QwenVl {
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

/// The candle modules of a Qwen-VL checkpoint (transformers-5 weight names).
fn modules(cfg: &Config, vb: VarBuilder) -> candle_core::Result<(Vision, Llama)> {
    let t = &cfg.text;
    let vision = Vision::new(&cfg.vision, vb.pp("model.visual"))?;
    let qwen3 = cfg.vision.generation == Generation::V3;
    let llama_cfg = LlamaConfig {
        hidden_size: t.hidden_size,
        intermediate_size: t.intermediate_size,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: t.num_attention_heads,
        num_key_value_heads: t.num_key_value_heads,
        head_dim: t.head_dim,
        rms_norm_eps: t.rms_norm_eps,
        rope_theta: t.rope_theta,
        vocab_size: t.vocab_size,
        max_position_embeddings: cfg.context(),
        tie_word_embeddings: t.tie_word_embeddings,
        qk_norm: qwen3,
        qkv_bias: !qwen3,
        gemma: false,
        bidirectional_prompt: false,
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

/// Renames the classic layout of published Qwen2/2.5-VL checkpoints (`model.layers.*`,
/// `visual.*`) to the transformers-5 one (`model.language_model.layers.*`, `model.visual.*`).
fn to_v5_layout(map: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if map.keys().any(|k| k.starts_with("model.language_model.")) {
        return map;
    }
    map.into_iter()
        .map(|(k, t)| {
            let k = if let Some(r) = k.strip_prefix("visual.") {
                format!("model.visual.{r}")
            } else if let Some(r) = k.strip_prefix("model.") {
                format!("model.language_model.{r}")
            } else {
                k
            };
            (k, t)
        })
        .collect()
}

/// For each of the `half` rotary frequencies, the axis it follows in Qwen2/2.5-VL's layout:
/// the first `section[0]` follow time, the next `section[1]` height, the rest width.
fn sectioned_axes(half: usize, section: [usize; 3]) -> Vec<usize> {
    (0..half)
        .map(|j| {
            if j < section[0] {
                0
            } else if j < section[0] + section[1] {
                1
            } else {
                2
            }
        })
        .collect()
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

impl QwenVl {
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
        let tensors = to_v5_layout(super::load_tensors(dir, common.dtype, device)?);
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        let (vision, text) = modules(&cfg, vb).map_err(|e| InferenceError::Load(e.to_string()))?;
        let hd = cfg.text.head_dim;
        let theta = cfg.text.rope_theta as f32;
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / hd as f32))
            .collect();
        let axis = match cfg.vision.generation {
            Generation::V3 => interleaved_axes(hd / 2, cfg.text.mrope_section),
            _ => sectioned_axes(hd / 2, cfg.text.mrope_section),
        };
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
        self.cfg.vision.merge
    }

    fn preprocess(&self, img: &image::DynamicImage) -> Result<Image, InferenceError> {
        let v = &self.cfg.vision;
        let img = preprocess::to_rgb(img);
        let factor = (v.patch * v.merge) as u32;
        let (h, w) = preprocess::smart_resize(
            img.height(),
            img.width(),
            factor,
            self.min_pixels,
            self.max_pixels,
        )?;
        let img = preprocess::resize_exact(&img, w, h);
        let (vals, n, grid) =
            preprocess::qwen_patches(&img, v.patch, v.temporal, v.merge, self.mean, self.std);
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
            self.vision.deepstack_layers()
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
        let hidden = self.cfg.text.hidden_size;
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

impl Family for QwenVl {
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
        let hidden = self.cfg.text.hidden_size;
        let layers = self.vision.deepstack_layers();
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
        let mut cache = KvCache::new(self.cfg.text.num_hidden_layers);
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
    use super::{interleaved_axes, rope_positions, sectioned_axes};

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
    fn sectioned_axes_follow_transformers() {
        // Qwen2-VL's [16, 24, 24] over 64 frequencies: T for 0..16, H for 16..40, W after.
        let a = sectioned_axes(64, [16, 24, 24]);
        assert_eq!((a[15], a[16], a[39], a[40], a[63]), (0, 1, 1, 2, 2));
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
