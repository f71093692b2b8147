//! Qwen3-VL on candle's `models::qwen3_vl`.
//!
//! Preprocessing follows Qwen's image processor: smart resize to multiples of
//! `patch_size × merge_size` within `[min_pixels, max_pixels]` (from
//! `preprocessor_config.json`), normalisation with mean/std 0.5, each frame
//! repeated `temporal_patch_size` times and flattened into merge-ordered
//! patches. The chat template is Qwen's ChatML with
//! `<|vision_start|><|image_pad|>…<|vision_end|>` per image, one pad token per
//! merged patch.
//!
//! Candle limitations (see the module doc of [`crate::inference`]): 1-D RoPE
//! instead of M-RoPE, no causal mask during prefill, a KV cache without a
//! reset (the adapter rebuilds the model from shared tensors for each batch)
//! and preallocated to `max_position_embeddings` (the adapter caps the context
//! at [`CONTEXT_CAP`] to keep that allocation bounded).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3_vl::{Config, Qwen3VLModel};
use tokenizers::Tokenizer;

use super::preprocess::{self, HALF};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, ContentPart, InferenceError, Role};

/// Largest context the adapter allocates a KV cache for.
pub const CONTEXT_CAP: usize = 8192;

/// Inputs of one request.
pub struct Input {
    ids: Vec<u32>,
    /// `(patches, C*T*P*P)` values per image, flattened.
    pixels: Vec<f32>,
    patch_rows: usize,
    grids: Vec<[u32; 3]>,
    spans: Vec<(usize, usize)>,
}

/// A loaded Qwen3-VL model.
pub struct Qwen3Vl {
    cfg: Config,
    tensors: HashMap<String, Tensor>,
    common: Common,
    model: Option<Qwen3VLModel>,
    patch: usize,
    merge: usize,
    temporal: usize,
    min_pixels: u64,
    max_pixels: u64,
    mean: [f32; 3],
    std: [f32; 3],
    context: usize,
}

fn patch_config(mut v: serde_json::Value) -> serde_json::Value {
    let top_tie = v.get("tie_word_embeddings").cloned();
    if let Some(t) = v.get_mut("text_config").and_then(|t| t.as_object_mut()) {
        if !t.contains_key("tie_word_embeddings") {
            t.insert(
                "tie_word_embeddings".into(),
                top_tie.unwrap_or(serde_json::Value::Bool(false)),
            );
        }
        if let Some(m) = t.get("max_position_embeddings").and_then(|m| m.as_u64())
            && m as usize > CONTEXT_CAP
        {
            t.insert("max_position_embeddings".into(), CONTEXT_CAP.into());
        }
    }
    v
}

impl Qwen3Vl {
    /// Loads a model directory.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let raw = super::read_model_config(dir)?;
        let cfg: Config = super::parse_config(patch_config(raw.clone()), "Qwen3-VL config.json")?;
        if !cfg
            .text_config
            .num_attention_heads
            .is_multiple_of(cfg.text_config.num_key_value_heads.max(1))
        {
            return Err(InferenceError::UnsupportedConfig(
                "num_attention_heads must be a multiple of num_key_value_heads".into(),
            ));
        }
        let common =
            super::load_common(dir, device, dtype, &raw, &["<|im_end|>", "<|endoftext|>"])?;
        for t in ["<|im_start|>", "<|im_end|>"] {
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
        let mut me = Self {
            context: cfg.text_config.max_position_embeddings,
            patch: cfg.vision_config.patch_size,
            merge: cfg.vision_config.spatial_merge_size,
            temporal: cfg.vision_config.temporal_patch_size,
            cfg,
            tensors,
            common: common.clone(),
            model: None,
            min_pixels,
            max_pixels: max_pixels.max(min_pixels),
            mean,
            std,
        };
        if me.patch == 0 || me.merge == 0 || me.temporal == 0 {
            return Err(InferenceError::UnsupportedConfig(
                "patch_size, spatial_merge_size and temporal_patch_size must be positive".into(),
            ));
        }
        // Build once to validate that every weight is present.
        me.model = Some(
            me.build()
                .map_err(|e| InferenceError::Load(e.to_string()))?,
        );
        Ok((me, common))
    }

    fn build(&self) -> candle_core::Result<Qwen3VLModel> {
        let vb =
            VarBuilder::from_tensors(self.tensors.clone(), self.common.dtype, &self.common.device);
        Qwen3VLModel::new(&self.cfg, vb)
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.common.tokenizer
    }
}

/// Creates every weight of the model described by `config.json` in `vb`.
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg: Config = super::parse_config(patch_config(raw.clone()), "Qwen3-VL config.json")?;
    Qwen3VLModel::new(&cfg, vb)
        .map(|_| ())
        .map_err(|e| InferenceError::Load(e.to_string()))
}

fn total_values(inputs: &[&Input]) -> usize {
    inputs.iter().map(|i| i.pixels.len()).sum()
}

impl Family for Qwen3Vl {
    type Input = Input;

    fn prepare(&self, request: &ChatRequest) -> Result<Prepared<Input>, InferenceError> {
        let factor = (self.patch * self.merge) as u32;
        let mut text = String::new();
        let mut pixels = Vec::new();
        let mut patch_rows = 0;
        let mut grids = Vec::new();
        for msg in super::messages_with_schema(request) {
            let role = match msg.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            text.push_str("<|im_start|>");
            text.push_str(role);
            text.push('\n');
            for part in &msg.content {
                match part {
                    ContentPart::Text(t) => text.push_str(t),
                    ContentPart::Image(img) => {
                        let img = preprocess::to_rgb(img.decode()?.as_ref());
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
                            self.patch,
                            self.temporal,
                            self.merge,
                            self.mean,
                            self.std,
                        );
                        let tokens = n / (self.merge * self.merge);
                        if tokens >= self.context {
                            return Err(InferenceError::ContextLength {
                                prompt_tokens: tokens,
                                limit: self.context,
                            });
                        }
                        pixels.extend(vals);
                        patch_rows += n;
                        grids.push(grid);
                        text.push_str("<|vision_start|>");
                        for _ in 0..tokens {
                            text.push_str("<|image_pad|>");
                        }
                        text.push_str("<|vision_end|>");
                    }
                }
            }
            text.push_str("<|im_end|>\n");
        }
        text.push_str("<|im_start|>assistant\n");
        let ids = super::encode(self.tokenizer(), &text)?;
        let pad = self.cfg.image_token_id;
        let mut spans = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            if ids[i] == pad {
                let s = i;
                while i < ids.len() && ids[i] == pad {
                    i += 1;
                }
                spans.push((s, i));
            } else {
                i += 1;
            }
        }
        let expected: usize = grids
            .iter()
            .map(|g| (g[1] * g[2]) as usize / (self.merge * self.merge))
            .sum();
        let found: usize = spans.iter().map(|(s, e)| e - s).sum();
        if found != expected {
            return Err(InferenceError::InvalidRequest(format!(
                "the prompt text contains image placeholder tokens ({found} found, {expected} expected)"
            )));
        }
        let len = ids.len();
        Ok(Prepared {
            input: Input {
                ids,
                pixels,
                patch_rows,
                grids,
                spans,
            },
            prompt_tokens: len,
            group_key: vec![len],
        })
    }

    fn prefill(&mut self, inputs: &[&Input]) -> candle_core::Result<Tensor> {
        let dev = self.common.device.clone();
        // The candle model's KV cache has no reset: rebuild it (weights are shared).
        self.model = None;
        let model = self.build()?;
        let b = inputs.len();
        let len = inputs.first().map(|i| i.ids.len()).unwrap_or(0);
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.ids.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (b, len), &dev)?;
        let rows: usize = inputs.iter().map(|i| i.patch_rows).sum();
        let (pixels, grid) = if let Some(width) = total_values(inputs).checked_div(rows) {
            let vals: Vec<f32> = inputs
                .iter()
                .flat_map(|i| i.pixels.iter().copied())
                .collect();
            let px = Tensor::from_vec(vals, (rows, width), &dev)?.to_dtype(self.common.dtype)?;
            let g: Vec<u32> = inputs
                .iter()
                .flat_map(|i| i.grids.iter().flatten().copied())
                .collect();
            let n = g.len() / 3;
            (Some(px), Some(Tensor::from_vec(g, (n, 3), &dev)?))
        } else {
            (None, None)
        };
        let spans: Vec<Vec<(usize, usize)>> = inputs.iter().map(|i| i.spans.clone()).collect();
        let logits = model.forward(
            &ids,
            pixels,
            None,
            grid,
            None,
            vec![len; b],
            spans,
            vec![Vec::new(); b],
            &vec![0; b],
        )?;
        self.model = Some(model);
        Ok(logits)
    }

    fn step(&mut self, tokens: &[u32], offset: usize) -> candle_core::Result<Tensor> {
        let Some(model) = &self.model else {
            candle_core::bail!("decode step before prefill");
        };
        let b = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (b, 1), &self.common.device)?;
        model.forward(
            &ids,
            None,
            None,
            None,
            None,
            vec![1; b],
            vec![Vec::new(); b],
            vec![Vec::new(); b],
            &vec![offset; b],
        )
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn accepts_images(&self) -> bool {
        true
    }
}
