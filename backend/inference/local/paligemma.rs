//! PaliGemma (1) from candle's SigLIP vision model, a linear projector and the Gemma
//! decoder of [`super::llama`].
//!
//! Preprocessing: resize to the SigLIP input size (no crop), rescale,
//! normalise with mean/std 0.5. The prompt is the PaliGemma format
//! `<image>×N <bos> text \n`: image features (scaled by `1/sqrt(hidden)` as
//! in HF, before Gemma's embedding normaliser) followed by the text
//! embeddings. PaliGemma is not a chat model: the text of all messages is
//! joined with newlines. The whole prompt is the prefix and attends to itself in
//! both directions (PaliGemma's prefix-LM attention); generated tokens attend causally.
//!
//! candle-transformers' Gemma is replaced by the shared decoder because it takes no
//! padding mask: here prompts of different lengths (with and without an image) share one
//! left-padded forward pass, and finished rows leave the batch.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Activation, Linear, VarBuilder};
use candle_transformers::models::siglip;
use serde::Deserialize;

use super::llama::{KvCache, Llama, LlamaConfig};
use super::preprocess::{self, HALF};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, ContentPart, InferenceError};

fn d_t_hidden() -> usize {
    2048
}
fn d_t_inter() -> usize {
    16384
}
fn d_t_layers() -> usize {
    18
}
fn d_t_heads() -> usize {
    8
}
fn d_t_kv() -> usize {
    1
}
fn d_head_dim() -> usize {
    256
}
fn d_vocab() -> usize {
    257_216
}
fn d_maxpos() -> usize {
    8192
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    10000.0
}
fn d_gemma() -> String {
    "gemma".into()
}
fn d_v_hidden() -> usize {
    1152
}
fn d_v_inter() -> usize {
    4304
}
fn d_v_layers() -> usize {
    27
}
fn d_v_heads() -> usize {
    16
}
fn d_v_image() -> usize {
    224
}
fn d_v_patch() -> usize {
    14
}
fn d_v_eps() -> f64 {
    1e-6
}

/// Gemma text config with HF PaliGemma defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "d_gemma")]
    model_type: String,
    #[serde(default = "d_t_hidden")]
    hidden_size: usize,
    #[serde(default = "d_t_inter")]
    intermediate_size: usize,
    #[serde(default = "d_t_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_t_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_t_kv")]
    num_key_value_heads: usize,
    #[serde(default = "d_head_dim")]
    head_dim: usize,
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_maxpos")]
    max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    rope_theta: f64,
    #[serde(default)]
    hidden_act: Option<Activation>,
    #[serde(default)]
    hidden_activation: Option<Activation>,
}

/// SigLIP vision config with HF PaliGemma defaults.
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
    #[serde(default = "d_v_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<Activation>,
}

/// HF `PaliGemmaConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct PaliGemmaConfig {
    text_config: TextConfig,
    vision_config: VisionConfig,
    #[serde(default)]
    projection_dim: Option<usize>,
    #[serde(default = "d_image_token", alias = "image_token_id")]
    image_token_index: u32,
}

fn d_image_token() -> u32 {
    257_152
}

/// Inputs of one request.
pub struct Input {
    text_ids: Vec<u32>,
    pixels: Option<Tensor>,
    expanded: Vec<u32>,
}

impl Input {
    /// The prompt's token ids as transformers' processor writes them: the
    /// image tokens (one per image feature), BOS, the text and a newline.
    pub fn ids(&self) -> &[u32] {
        &self.expanded
    }

    /// Pixel values `(3, S, S)` of the image, if any.
    pub fn pixel_values(&self) -> Vec<&Tensor> {
        self.pixels.iter().collect()
    }
}

/// A loaded PaliGemma model.
pub struct PaliGemma {
    cfg: PaliGemmaConfig,
    vision: siglip::VisionModel,
    projector: Linear,
    lm: Llama,
    cache: Option<KvCache>,
    common: Common,
    bos: u32,
    image_tokens: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

impl PaliGemma {
    /// Loads a model directory.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let raw = super::read_model_config(dir)?;
        let cfg: PaliGemmaConfig = super::parse_config(raw.clone(), "PaliGemma config.json")?;
        let t = &cfg.text_config;
        if t.model_type != "gemma" {
            return Err(InferenceError::UnsupportedConfig(format!(
                "PaliGemma text model {:?} is not supported (only gemma, i.e. PaliGemma 1)",
                t.model_type
            )));
        }
        let v = &cfg.vision_config;
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(InferenceError::UnsupportedConfig(
                "image_size must be a multiple of patch_size".into(),
            ));
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return Err(InferenceError::UnsupportedConfig(
                "num_attention_heads must be a multiple of num_key_value_heads".into(),
            ));
        }
        let common = super::load_common(dir, device, dtype, &raw, &["<eos>"])?;
        let bos = super::special_id(&common.tokenizer, "<bos>")?;
        let tensors = super::to_classic_vlm_layout(super::load_tensors(dir, common.dtype, device)?);
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        let (vision, projector, lm) = modules(&cfg, vb)?;
        let pre = super::image_processor_config(dir)?;
        let (mean, std) = preprocess::mean_std(pre.as_ref(), HALF, HALF);
        let n = v.image_size / v.patch_size;
        Ok((
            Self {
                image_tokens: n * n,
                cfg,
                vision,
                projector,
                lm,
                cache: None,
                common: common.clone(),
                bos,
                mean,
                std,
            },
            common,
        ))
    }
}

fn modules(
    cfg: &PaliGemmaConfig,
    vb: VarBuilder,
) -> Result<(siglip::VisionModel, Linear, Llama), InferenceError> {
    let t = &cfg.text_config;
    let v = &cfg.vision_config;
    let vision_cfg = siglip::VisionConfig {
        hidden_size: v.hidden_size,
        intermediate_size: v.intermediate_size,
        num_hidden_layers: v.num_hidden_layers,
        num_attention_heads: v.num_attention_heads,
        num_channels: 3,
        image_size: v.image_size,
        patch_size: v.patch_size,
        hidden_act: v.hidden_act.unwrap_or(Activation::GeluPytorchTanh),
        layer_norm_eps: v.layer_norm_eps,
    };
    let act = t.hidden_act.or(t.hidden_activation);
    if act.is_some_and(|a| a != Activation::GeluPytorchTanh) {
        return Err(InferenceError::UnsupportedConfig(
            "PaliGemma's text model must use gelu_pytorch_tanh".into(),
        ));
    }
    let text_cfg = LlamaConfig {
        hidden_size: t.hidden_size,
        intermediate_size: t.intermediate_size,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: t.num_attention_heads,
        num_key_value_heads: t.num_key_value_heads,
        head_dim: t.head_dim,
        rms_norm_eps: t.rms_norm_eps,
        rope_theta: t.rope_theta,
        vocab_size: t.vocab_size,
        max_position_embeddings: t.max_position_embeddings,
        tie_word_embeddings: true,
        qk_norm: false,
        qkv_bias: false,
        gemma: true,
        bidirectional_prompt: true,
    };
    let load = |e: candle_core::Error| InferenceError::Load(e.to_string());
    let vision = siglip::VisionModel::new(&vision_cfg, false, vb.pp("vision_tower.vision_model"))
        .map_err(load)?;
    let proj_dim = cfg.projection_dim.unwrap_or(t.hidden_size);
    if proj_dim != t.hidden_size {
        return Err(InferenceError::UnsupportedConfig(format!(
            "projection_dim {proj_dim} differs from the text hidden size {}",
            t.hidden_size
        )));
    }
    let projector = candle_nn::linear(
        v.hidden_size,
        proj_dim,
        vb.pp("multi_modal_projector.linear"),
    )
    .map_err(load)?;
    let lm = Llama::load(&text_cfg, vb.pp("language_model")).map_err(load)?;
    Ok((vision, projector, lm))
}

/// Creates every weight of the model described by `config.json` in `vb`.
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg: PaliGemmaConfig = super::parse_config(raw.clone(), "PaliGemma config.json")?;
    modules(&cfg, vb).map(|_| ())
}

impl Family for PaliGemma {
    type Input = Input;

    fn prepare(&self, request: &ChatRequest) -> Result<Prepared<Input>, InferenceError> {
        let msgs = super::messages_with_schema(request);
        let mut texts = Vec::new();
        let mut image = None;
        for m in &msgs {
            for p in &m.content {
                match p {
                    ContentPart::Text(t) => texts.push(t.clone()),
                    ContentPart::Image(img) => {
                        if image.is_some() {
                            return Err(InferenceError::InvalidRequest(
                                "PaliGemma takes at most one image per request".into(),
                            ));
                        }
                        image = Some(img.decode()?);
                    }
                }
            }
        }
        let pixels = match image {
            Some(img) => {
                let s = self.cfg.vision_config.image_size as u32;
                let rgb = preprocess::resize_exact(&preprocess::to_rgb(&img), s, s);
                Some(preprocess::image_tensor(
                    &rgb,
                    self.mean,
                    self.std,
                    &self.common.device,
                )?)
            }
            None => None,
        };
        let mut ids = vec![self.bos];
        ids.extend(super::encode(
            &self.common.tokenizer,
            &format!("{}\n", texts.join("\n")),
        )?);
        let positions = ids.len()
            + if pixels.is_some() {
                self.image_tokens
            } else {
                0
            };
        let mut expanded = Vec::with_capacity(positions);
        if pixels.is_some() {
            expanded.extend(std::iter::repeat_n(
                self.cfg.image_token_index,
                self.image_tokens,
            ));
        }
        expanded.extend_from_slice(&ids);
        Ok(Prepared {
            input: Input {
                text_ids: ids,
                pixels: pixels.clone(),
                expanded,
            },
            prompt_tokens: positions,
            group_key: vec![positions, usize::from(pixels.is_some())],
        })
    }

    fn prefill(&mut self, inputs: &[&Input]) -> candle_core::Result<Tensor> {
        let dev = self.common.device.clone();
        let hidden = self.cfg.text_config.hidden_size;
        // Image features of the rows that have an image, in one vision pass.
        let px: Vec<Tensor> = inputs.iter().filter_map(|i| i.pixels.clone()).collect();
        let feats = if px.is_empty() {
            None
        } else {
            let px = Tensor::stack(&px, 0)?.to_dtype(self.common.dtype)?;
            let f = self.vision.forward(&px)?.apply(&self.projector)?;
            Some((f / (hidden as f64).sqrt())?)
        };
        let mut next_image = 0;
        let mut rows = Vec::with_capacity(inputs.len());
        for input in inputs {
            let ids = Tensor::new(input.text_ids.as_slice(), &dev)?;
            let text = self.lm.embed(&ids)?;
            rows.push(match (&input.pixels, &feats) {
                (Some(_), Some(f)) => {
                    let img = f.get(next_image)?.to_dtype(text.dtype())?;
                    next_image += 1;
                    Tensor::cat(&[&img, &text], 0)?
                }
                _ => text,
            });
        }
        // Left padding to the longest prompt; the mask keeps padding out of attention.
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
        self.cfg.text_config.max_position_embeddings
    }

    fn accepts_images(&self) -> bool {
        true
    }
}
