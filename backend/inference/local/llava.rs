//! LLaVA-1.5 and LLaVA-NeXT (HF `llava` / `llava_next` layouts) from candle's
//! CLIP vision transformer, a two-layer GELU projector and candle's Llama.
//!
//! The adapter assembles the model from candle's public pieces instead of
//! `models::llava::LLaVA`, which handles one request at a time, requires an
//! `image_newline` weight (absent in 1.5) and picks the CLIP layer one off
//! from HF's `vision_feature_layer`.
//!
//! Preprocessing: LLaVA-1.5 resizes the shorter side to the CLIP input size
//! and centre-crops; LLaVA-NeXT selects the best `image_grid_pinpoints`
//! resolution, resizes and pads to it, cuts tiles and prepends the whole
//! image resized to the input size; tile features are unpadded and followed
//! by `image_newline` per row, as in HF. Each `<image>` token of the prompt
//! is replaced by the image's features. Templates: Vicuna
//! (`USER: <image>\n… ASSISTANT:`), or Mistral `[INST] … [/INST]` when the
//! text model is a Mistral.

use std::path::Path;

use super::llama::{KvCache, Llama, LlamaConfig};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Activation, Linear, VarBuilder};
use candle_transformers::models::clip::text_model::Activation as ClipActivation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use serde::Deserialize;

use super::chat_template::{ChatTemplate, ContentStyle};
use super::preprocess::{self, CLIP_MEAN, CLIP_STD};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, ContentPart, InferenceError, Role};

const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

fn d_hidden() -> usize {
    4096
}
fn d_inter() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_theta() -> f32 {
    10000.0
}
fn d_maxpos() -> usize {
    4096
}
fn d_vocab() -> usize {
    32000
}
fn d_model_type() -> String {
    "llama".into()
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
fn d_v_image() -> usize {
    336
}
fn d_v_patch() -> usize {
    14
}
fn d_v_proj() -> usize {
    768
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_feature_layer() -> isize {
    -2
}
fn d_strategy() -> String {
    "default".into()
}
fn d_proj_act() -> String {
    "gelu".into()
}
fn d_image_token() -> u32 {
    32000
}
fn d_true() -> bool {
    true
}

/// `text_config` (Llama defaults as in transformers).
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "d_model_type")]
    pub(super) model_type: String,
    #[serde(default = "d_hidden")]
    pub(super) hidden_size: usize,
    #[serde(default = "d_inter")]
    pub(super) intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub(super) num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub(super) num_attention_heads: usize,
    #[serde(default)]
    pub(super) num_key_value_heads: Option<usize>,
    #[serde(default = "d_eps")]
    pub(super) rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub(super) rope_theta: f32,
    #[serde(default = "d_maxpos")]
    pub(super) max_position_embeddings: usize,
    #[serde(default = "d_vocab")]
    pub(super) vocab_size: usize,
    #[serde(default)]
    pub(super) tie_word_embeddings: bool,
    #[serde(default)]
    pub(super) head_dim: Option<usize>,
    #[serde(default)]
    pub(super) sliding_window: Option<usize>,
    #[serde(default)]
    pub(super) rope_scaling: Option<serde_json::Value>,
    /// Biases on the query, key and value projections (Llama's `attention_bias`).
    #[serde(default)]
    pub(super) attention_bias: bool,
}

/// `vision_config` (CLIP ViT-L/14-336 defaults).
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
    image_size: usize,
    #[serde(default = "d_v_patch")]
    patch_size: usize,
    #[serde(default = "d_v_proj")]
    projection_dim: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
}

/// HF `LlavaConfig` / `LlavaNextConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    model_type: String,
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
    #[serde(default)]
    image_grid_pinpoints: Vec<(u32, u32)>,
    #[serde(default = "d_true")]
    multimodal_projector_bias: bool,
}

/// One image, preprocessed.
pub struct ImageIn {
    /// `(crops, 3, S, S)` pixel values.
    pixels: Tensor,
    /// Original (width, height).
    size: (u32, u32),
}

/// Inputs of one request.
pub struct Input {
    ids: Vec<u32>,
    images: Vec<ImageIn>,
    positions: usize,
}

impl Input {
    /// Token ids of the prompt, image tokens expanded (what transformers'
    /// processor returns as `input_ids`).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Pixel values per image, `(crops, 3, S, S)`.
    pub fn pixel_values(&self) -> Vec<&Tensor> {
        self.images.iter().map(|i| &i.pixels).collect()
    }

    /// Original `(height, width)` of every image (transformers' `image_sizes`).
    pub fn image_sizes(&self) -> Vec<(u32, u32)> {
        self.images.iter().map(|i| (i.size.1, i.size.0)).collect()
    }
}

/// A loaded LLaVA model.
pub struct Llava {
    cfg: LlavaConfig,
    vision: ClipVisionTransformer,
    proj1: Linear,
    proj2: Linear,
    proj_act: Activation,
    newline: Option<Tensor>,
    llama: Llama,
    cache: Option<KvCache>,
    common: Common,
    next: bool,
    mean: [f32; 3],
    std: [f32; 3],
    template: Option<ChatTemplate>,
}

pub(super) fn projector_act(name: &str) -> Result<Activation, InferenceError> {
    Ok(match name {
        "gelu" => Activation::Gelu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluPytorchTanh,
        "relu" => Activation::Relu,
        "silu" => Activation::Silu,
        other => {
            return Err(InferenceError::UnsupportedConfig(format!(
                "projector_hidden_act {other:?} is not supported"
            )));
        }
    })
}

impl Llava {
    /// Loads a model directory.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let raw = super::read_model_config(dir)?;
        let cfg: LlavaConfig = super::parse_config(raw.clone(), "LLaVA config.json")?;
        let next = match cfg.model_type.as_str() {
            "llava" => false,
            "llava_next" => true,
            other => {
                return Err(InferenceError::UnsupportedConfig(format!(
                    "model_type {other:?} is not llava or llava_next"
                )));
            }
        };
        let t = &cfg.text_config;
        if !matches!(t.model_type.as_str(), "llama" | "mistral") {
            return Err(InferenceError::UnsupportedConfig(format!(
                "LLaVA text model {:?} is not supported (llama and mistral are)",
                t.model_type
            )));
        }
        if t.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(InferenceError::UnsupportedConfig(
                "rope_scaling in the LLaVA text model is not supported".into(),
            ));
        }
        if t.sliding_window
            .is_some_and(|w| w < t.max_position_embeddings)
        {
            tracing::warn!("sliding_window ignored: prompts longer than the window will differ");
        }
        if cfg.vision_config.hidden_act != "quick_gelu" {
            return Err(InferenceError::UnsupportedConfig(format!(
                "CLIP hidden_act {:?} is not supported (quick_gelu is)",
                cfg.vision_config.hidden_act
            )));
        }
        if cfg.vision_feature_layer == 0
            || cfg.vision_feature_layer.unsigned_abs() > cfg.vision_config.num_hidden_layers
        {
            return Err(InferenceError::UnsupportedConfig(format!(
                "vision_feature_layer {} is out of range",
                cfg.vision_feature_layer
            )));
        }
        if !matches!(
            cfg.vision_feature_select_strategy.as_str(),
            "default" | "full"
        ) {
            return Err(InferenceError::UnsupportedConfig(format!(
                "vision_feature_select_strategy {:?}",
                cfg.vision_feature_select_strategy
            )));
        }
        if next && cfg.vision_feature_select_strategy == "full" {
            return Err(InferenceError::UnsupportedConfig(
                "llava_next with vision_feature_select_strategy \"full\" is not supported".into(),
            ));
        }
        if next && cfg.image_grid_pinpoints.is_empty() {
            return Err(InferenceError::UnsupportedConfig(
                "llava_next config has no image_grid_pinpoints".into(),
            ));
        }
        let heads = t.num_attention_heads;
        let kv = t.num_key_value_heads.unwrap_or(heads);
        if heads == 0
            || kv == 0
            || !heads.is_multiple_of(kv)
            || !t.hidden_size.is_multiple_of(heads)
        {
            return Err(InferenceError::UnsupportedConfig(
                "attention heads do not divide the hidden size".into(),
            ));
        }
        let common = super::load_common(dir, device, dtype, &raw, &["</s>"])?;
        let tensors = super::to_classic_vlm_layout(super::load_tensors(dir, common.dtype, device)?);
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        // candle's Llama::load unwraps per-layer errors: check the layers first.
        for i in 0..t.num_hidden_layers {
            let name = format!("language_model.model.layers.{i}.self_attn.q_proj.weight");
            if !vb.contains_tensor(&name) {
                return Err(InferenceError::Load(format!("weight {name} is missing")));
            }
        }
        let m = Modules::new(&cfg, next, vb)?;
        let pre = super::image_processor_config(dir)?;
        let (mean, std) = preprocess::mean_std(pre.as_ref(), CLIP_MEAN, CLIP_STD);
        let template = super::chat_template::ChatTemplate::load(dir)?;
        let proj_act = projector_act(&cfg.projector_hidden_act)?;
        super::special_id(&common.tokenizer, "<image>")?;
        Ok((
            Self {
                cfg,
                vision: m.vision,
                proj1: m.proj1,
                proj2: m.proj2,
                proj_act,
                newline: m.newline,
                llama: m.llama,
                cache: None,
                common: common.clone(),
                next,
                mean,
                std,
                template,
            },
            common,
        ))
    }

    fn side(&self) -> u32 {
        self.cfg.vision_config.image_size as u32
    }

    fn patches_per_side(&self) -> usize {
        self.cfg.vision_config.image_size / self.cfg.vision_config.patch_size
    }

    /// Number of feature rows an image of this size yields.
    fn feature_count(&self, w: u32, h: u32) -> usize {
        let n = self.patches_per_side();
        let base = n * n + usize::from(self.cfg.vision_feature_select_strategy == "full");
        if !self.next {
            return base;
        }
        let (gh, gw) = self.grid(w, h);
        let (ch, cw) = unpadded(gh * n, gw * n, w, h);
        base + ch * (cw + 1)
    }

    /// Tile grid (rows, cols) for an image.
    fn grid(&self, w: u32, h: u32) -> (usize, usize) {
        let (bh, bw) = preprocess::select_best_resolution(w, h, &self.cfg.image_grid_pinpoints);
        ((bh / self.side()) as usize, (bw / self.side()) as usize)
    }

    fn preprocess(&self, img: &image::RgbImage) -> candle_core::Result<ImageIn> {
        let s = self.side();
        let dev = &self.common.device;
        let mut crops = Vec::new();
        if self.next {
            crops.push(preprocess::resize_exact(img, s, s));
            let (bh, bw) = preprocess::select_best_resolution(
                img.width(),
                img.height(),
                &self.cfg.image_grid_pinpoints,
            );
            let padded = preprocess::resize_and_pad(img, bh, bw);
            crops.extend(preprocess::tiles(&padded, s));
        } else {
            let r = preprocess::resize_shortest_edge(img, s);
            crops.push(preprocess::center_crop(&r, s, s));
        }
        let ts = crops
            .iter()
            .map(|c| preprocess::image_tensor(c, self.mean, self.std, dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ImageIn {
            pixels: Tensor::stack(&ts, 0)?.to_dtype(self.common.dtype)?,
            size: (img.width(), img.height()),
        })
    }

    /// Image features `(rows, hidden)` of one image.
    fn image_features(&self, img: &ImageIn) -> candle_core::Result<Tensor> {
        let states = self.vision.output_hidden_states(&img.pixels)?;
        let layers = states.len() - 1; // last entry is the pooled output
        let l = self.cfg.vision_feature_layer;
        let idx = if l < 0 { layers as isize + l } else { l - 1 };
        let feats = states[idx as usize].clone();
        let feats = if self.cfg.vision_feature_select_strategy == "default" {
            feats.i((.., 1.., ..))?
        } else {
            feats
        };
        let feats = self
            .proj2
            .forward(&self.proj_act.forward(&self.proj1.forward(&feats)?)?)?;
        let hidden = self.cfg.text_config.hidden_size;
        if !self.next {
            return feats.get(0);
        }
        let base = feats.get(0)?;
        let n = self.patches_per_side();
        let (gh, gw) = self.grid(img.size.0, img.size.1);
        let tiles = feats.i(1..)?;
        if tiles.dim(0)? != gh * gw {
            candle_core::bail!("expected {} tiles, got {}", gh * gw, tiles.dim(0)?);
        }
        // (gh, gw, n, n, C) -> (C, gh*n, gw*n)
        let grid = tiles
            .reshape((gh, gw, n, n, hidden))?
            .permute((4, 0, 2, 1, 3))?
            .reshape((hidden, gh * n, gw * n))?;
        let (ch, cw) = unpadded(gh * n, gw * n, img.size.0, img.size.1);
        let top = (gh * n - ch) / 2;
        let left = (gw * n - cw) / 2;
        let grid = grid.narrow(1, top, ch)?.narrow(2, left, cw)?;
        let nl = match &self.newline {
            Some(nl) => nl.reshape((hidden, 1, 1))?.broadcast_as((hidden, ch, 1))?,
            None => candle_core::bail!("image_newline missing"),
        };
        let grid = Tensor::cat(&[&grid, &nl.contiguous()?], 2)?;
        let grid = grid.reshape((hidden, ch * (cw + 1)))?.t()?;
        Tensor::cat(&[&base, &grid], 0)
    }

    /// Embeddings `(positions, hidden)` of one request: the image tokens of
    /// the (expanded) prompt take the image features in order, as
    /// transformers' masked scatter does.
    fn embed(&self, input: &Input) -> candle_core::Result<Tensor> {
        let image_id = self.cfg.image_token_index;
        let dev = &self.common.device;
        let features = input
            .images
            .iter()
            .map(|img| self.image_features(img)?.to_dtype(self.common.dtype))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let features = if features.is_empty() {
            None
        } else {
            Some(Tensor::cat(&features, 0)?)
        };
        let mut pieces = Vec::new();
        let mut used = 0;
        let mut i = 0;
        while i < input.ids.len() {
            let is_image = input.ids[i] == image_id;
            let end = input.ids[i..]
                .iter()
                .position(|&t| (t == image_id) != is_image)
                .map_or(input.ids.len(), |n| i + n);
            if is_image {
                let Some(f) = &features else {
                    candle_core::bail!("image tokens without images")
                };
                if used + (end - i) > f.dim(0)? {
                    candle_core::bail!("more image tokens than image features");
                }
                pieces.push(f.narrow(0, used, end - i)?);
                used += end - i;
            } else {
                let t = Tensor::new(&input.ids[i..end], dev)?;
                pieces.push(self.llama.embed(&t)?);
            }
            i = end;
        }
        if features
            .as_ref()
            .is_some_and(|f| f.dim(0).ok() != Some(used))
        {
            candle_core::bail!("image features and image tokens differ in number");
        }
        Tensor::cat(&pieces, 0)
    }

    /// The prompt text from the model's chat template, or, for a directory
    /// without one, the classic Vicuna / Mistral formats.
    fn prompt_text(
        &self,
        msgs: &[crate::inference::ChatMessage],
    ) -> Result<(String, bool), InferenceError> {
        if let Some(t) = &self.template {
            let text = t.render(msgs, ContentStyle::Parts, &[])?;
            let add = t.add_special_tokens(&text);
            return Ok((text, add));
        }
        Ok((self.fallback_prompt(msgs), true))
    }

    /// The documented fallback for model directories without a chat template.
    fn fallback_prompt(&self, msgs: &[crate::inference::ChatMessage]) -> String {
        let mistral = self.cfg.text_config.model_type == "mistral";
        let mut text = String::new();
        let mut system = None;
        let render = |content: &[ContentPart], out: &mut String| {
            let mut body = String::new();
            for p in content {
                match p {
                    ContentPart::Image(_) => out.push_str("<image>\n"),
                    ContentPart::Text(t) => body.push_str(t),
                }
            }
            out.push_str(&body);
        };
        for m in msgs {
            match m.role {
                Role::System => system = Some(m.text_content()),
                Role::User => {
                    if mistral {
                        text.push_str("[INST] ");
                        if let Some(s) = system.take() {
                            text.push_str(&s);
                            text.push_str("\n\n");
                        }
                        render(&m.content, &mut text);
                        text.push_str(" [/INST]");
                    } else {
                        if text.is_empty() {
                            let s = system.take().unwrap_or_else(|| {
                                if self.next {
                                    VICUNA_SYSTEM.to_string()
                                } else {
                                    String::new()
                                }
                            });
                            if !s.is_empty() {
                                text.push_str(&s);
                                text.push(' ');
                            }
                        }
                        text.push_str("USER: ");
                        render(&m.content, &mut text);
                        text.push_str(" ASSISTANT:");
                    }
                }
                Role::Assistant => {
                    text.push(' ');
                    text.push_str(&m.text_content());
                    text.push_str("</s>");
                }
            }
        }
        text
    }
}

/// The candle modules of a LLaVA model.
struct Modules {
    vision: ClipVisionTransformer,
    proj1: Linear,
    proj2: Linear,
    newline: Option<Tensor>,
    llama: Llama,
}

impl Modules {
    fn new(cfg: &LlavaConfig, next: bool, vb: VarBuilder) -> Result<Self, InferenceError> {
        let t = &cfg.text_config;
        let v = &cfg.vision_config;
        let heads = t.num_attention_heads;
        let clip_cfg = ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: ClipActivation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: v.projection_dim,
            num_channels: 3,
            image_size: v.image_size,
            patch_size: v.patch_size,
        };
        let llama_cfg = LlamaConfig {
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: t.num_key_value_heads.unwrap_or(heads),
            head_dim: t.head_dim.unwrap_or(t.hidden_size / heads),
            rms_norm_eps: t.rms_norm_eps,
            rope_theta: f64::from(t.rope_theta),
            vocab_size: t.vocab_size,
            max_position_embeddings: t.max_position_embeddings,
            tie_word_embeddings: t.tie_word_embeddings,
            qk_norm: false,
            qkv_bias: t.attention_bias,
            gemma: false,
            bidirectional_prompt: false,
        };
        let load = |e: candle_core::Error| InferenceError::Load(e.to_string());
        // candle draws a random class embedding when the weight is absent; a model must
        // carry its own (and `init_weights` creates it), so loads are deterministic.
        let class = "vision_tower.vision_model.embeddings.class_embedding";
        vb.get(v.hidden_size, class)
            .map_err(|_| InferenceError::Load(format!("weight {class} is missing")))?;
        let vision = ClipVisionTransformer::new(vb.pp("vision_tower.vision_model"), &clip_cfg)
            .map_err(load)?;
        let pb = vb.pp("multi_modal_projector");
        let bias = cfg.multimodal_projector_bias;
        let proj1 = candle_nn::linear_b(v.hidden_size, t.hidden_size, bias, pb.pp("linear_1"))
            .map_err(load)?;
        let proj2 = candle_nn::linear_b(t.hidden_size, t.hidden_size, bias, pb.pp("linear_2"))
            .map_err(load)?;
        let newline = if next {
            Some(vb.get(t.hidden_size, "image_newline").map_err(load)?)
        } else {
            None
        };
        let llama = Llama::load(&llama_cfg, vb.pp("language_model")).map_err(load)?;
        Ok(Self {
            vision,
            proj1,
            proj2,
            newline,
            llama,
        })
    }
}

/// Creates every weight of the model described by `config.json` in `vb`
/// (used with a `VarMap` to write random-weight models).
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg: LlavaConfig = super::parse_config(raw.clone(), "LLaVA config.json")?;
    let next = cfg.model_type == "llava_next";
    Modules::new(&cfg, next, vb).map(|_| ())
}

/// HF `unpad_image` on a `(height, width)` feature grid for an original
/// image of `w`×`h`: the size of the region without padding.
fn unpadded(cur_h: usize, cur_w: usize, w: u32, h: u32) -> (usize, usize) {
    let (ow, oh) = (f64::from(w), f64::from(h));
    if ow / oh > cur_w as f64 / cur_h as f64 {
        let scale = cur_w as f64 / ow;
        let nh = (oh * scale * 1e7).round() / 1e7;
        let pad = (cur_h - (nh as usize).min(cur_h)) / 2;
        (cur_h - 2 * pad, cur_w)
    } else {
        let scale = cur_h as f64 / oh;
        let nw = (ow * scale * 1e7).round() / 1e7;
        let pad = (cur_w - (nw as usize).min(cur_w)) / 2;
        (cur_h, cur_w - 2 * pad)
    }
}

impl Family for Llava {
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
        let tok = &self.common.tokenizer;
        let raw = if self.template.is_some() {
            super::encode_prompt(tok, &text, add_special)?
        } else {
            let mut ids = vec![super::special_id(tok, "<s>").unwrap_or(1)];
            ids.extend(super::encode(tok, &text)?);
            ids
        };
        let image_id = self.cfg.image_token_index;
        let n_image_tokens = raw.iter().filter(|&&i| i == image_id).count();
        if n_image_tokens != images.len() {
            return Err(InferenceError::InvalidRequest(format!(
                "the prompt text contains {} <image> tokens for {} images",
                n_image_tokens,
                images.len()
            )));
        }
        // Each image token stands for all of its image's features (the
        // processor's expansion).
        let mut ids = Vec::with_capacity(raw.len());
        let mut next_image = images.iter();
        for id in raw {
            if id == image_id {
                let img = next_image.next().expect("counted above");
                let n = self.feature_count(img.size.0, img.size.1);
                ids.extend(std::iter::repeat_n(image_id, n));
            } else {
                ids.push(id);
            }
        }
        let positions = ids.len();
        let key = vec![positions];
        Ok(Prepared {
            input: Input {
                ids,
                images,
                positions,
            },
            prompt_tokens: positions,
            group_key: key,
        })
    }

    fn prefill(&mut self, inputs: &[&Input]) -> candle_core::Result<Tensor> {
        let embeds = inputs
            .iter()
            .map(|i| {
                let e = self.embed(i)?;
                if e.dim(0)? != i.positions {
                    candle_core::bail!(
                        "embedding length {} differs from {}",
                        e.dim(0)?,
                        i.positions
                    );
                }
                Ok(e)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Left padding to the longest prompt; the mask keeps padding out of attention.
        let (logits, cache) = self.llama.prefill_rows(&embeds)?;
        self.cache = Some(cache);
        Ok(logits)
    }

    fn step(&mut self, tokens: &[u32], _offset: usize) -> candle_core::Result<Tensor> {
        self.llama.decode_step(tokens, self.cache.as_mut())
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
        self.cfg.text_config.max_position_embeddings
    }

    fn accepts_images(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::unpadded;

    #[test]
    fn unpad_matches_hf() {
        // 2:1 image in a 1x2 tile grid of 24-patch tiles: nothing to remove.
        assert_eq!(unpadded(24, 48, 800, 400), (24, 48));
        // Wider than the grid: rows are removed.
        assert_eq!(unpadded(24, 24, 800, 400), (12, 24));
        // Taller: columns are removed.
        assert_eq!(unpadded(24, 24, 400, 800), (24, 12));
    }
}
