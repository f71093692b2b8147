//! Qwen3 text-only LLM (candle `models::qwen3`, or `models::quantized_qwen3`
//! for a `.gguf` file), meant as a local judge.
//!
//! Template: ChatML (`<|im_start|>role\n…<|im_end|>\n`), generation prompt
//! `<|im_start|>assistant\n` followed by an empty `<think>\n\n</think>\n\n`
//! block, which is how Qwen3's template disables thinking. Images are
//! rejected. Candle's CPU path uses its fused causal flash-attention kernel.
//! The GGUF model's CPU KV cache handles one sequence, so GGUF batches run
//! one request at a time on CPU.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{quantized_qwen3, qwen3};

use super::chat_template::{ChatTemplate, ContentStyle};
use super::llama::{KvCache, Llama, LlamaConfig};
use super::{Common, Family, Prepared};
use crate::inference::{ChatRequest, InferenceError, Role};

enum Backend {
    /// Our decoder (`super::llama` with q/k norms): batches prompts of different lengths.
    Padded {
        model: Llama,
        cache: Option<KvCache>,
        layers: usize,
    },
    /// candle-transformers' Qwen3, for configs with attention biases.
    Full(qwen3::ModelForCausalLM),
    Gguf(quantized_qwen3::ModelWeights),
}

/// Inputs of one request.
pub struct Input {
    ids: Vec<u32>,
}

impl Input {
    /// Token ids of the prompt.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// A loaded Qwen3 model.
pub struct Qwen3 {
    backend: Backend,
    common: Common,
    context: usize,
    template: Option<ChatTemplate>,
}

impl Qwen3 {
    /// Loads a model directory, or a `.gguf` file with `tokenizer.json`
    /// (and optionally `config.json` for end-of-sequence ids) beside it.
    pub fn load(
        path: &Path,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<(Self, Common), InferenceError> {
        let names = ["<|im_end|>", "<|endoftext|>"];
        if path.extension().is_some_and(|e| e == "gguf") {
            let dir = path.parent().unwrap_or(Path::new("."));
            let cfg = super::read_json_opt(&dir.join("config.json"))?.unwrap_or_default();
            let common = super::load_common(dir, device, dtype, &cfg, &names)?;
            let mut file = std::fs::File::open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    InferenceError::MissingFile {
                        path: path.display().to_string(),
                        hint: "put the GGUF file there (with tokenizer.json beside it)".into(),
                    }
                } else {
                    InferenceError::Load(format!("cannot open {}: {e}", path.display()))
                }
            })?;
            let content = gguf_file::Content::read(&mut file).map_err(|e| {
                InferenceError::Load(format!("{} is not a GGUF file: {e}", path.display()))
            })?;
            let arch = content
                .metadata
                .get("general.architecture")
                .and_then(|v| v.to_string().ok().cloned())
                .unwrap_or_default();
            if arch != "qwen3" {
                return Err(InferenceError::UnsupportedConfig(format!(
                    "GGUF architecture {arch:?} is not qwen3"
                )));
            }
            let context = content
                .metadata
                .get("qwen3.context_length")
                .and_then(|v| v.to_u32().ok())
                .unwrap_or(4096) as usize;
            let model = quantized_qwen3::ModelWeights::from_gguf(content, &mut file, device)
                .map_err(|e| InferenceError::Load(e.to_string()))?;
            return Ok((
                Self {
                    backend: Backend::Gguf(model),
                    common: common.clone(),
                    context,
                    template: ChatTemplate::load(dir)?,
                },
                common,
            ));
        }
        let raw = super::read_model_config(path)?;
        let cfg: qwen3::Config = super::parse_config(raw.clone(), "Qwen3 config.json")?;
        if cfg.num_key_value_heads == 0
            || !cfg
                .num_attention_heads
                .is_multiple_of(cfg.num_key_value_heads)
        {
            return Err(InferenceError::UnsupportedConfig(
                "num_attention_heads must be a multiple of num_key_value_heads".into(),
            ));
        }
        let common = super::load_common(path, device, dtype, &raw, &names)?;
        super::special_id(&common.tokenizer, "<|im_start|>")?;
        let tensors = super::load_tensors(path, common.dtype, device)?;
        let vb = VarBuilder::from_tensors(tensors, common.dtype, device);
        let load = |e: candle_core::Error| InferenceError::Load(e.to_string());
        let backend = if cfg.attention_bias {
            Backend::Full(qwen3::ModelForCausalLM::new(&cfg, vb).map_err(load)?)
        } else {
            let dec = LlamaConfig {
                hidden_size: cfg.hidden_size,
                intermediate_size: cfg.intermediate_size,
                num_hidden_layers: cfg.num_hidden_layers,
                num_attention_heads: cfg.num_attention_heads,
                num_key_value_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
                rms_norm_eps: cfg.rms_norm_eps,
                rope_theta: cfg.rope_theta,
                vocab_size: cfg.vocab_size,
                max_position_embeddings: cfg.max_position_embeddings,
                tie_word_embeddings: cfg.tie_word_embeddings,
                qk_norm: true,
                qkv_bias: false,
                gemma: false,
                bidirectional_prompt: false,
            };
            Backend::Padded {
                model: Llama::load(&dec, vb).map_err(load)?,
                cache: None,
                layers: cfg.num_hidden_layers,
            }
        };
        Ok((
            Self {
                backend,
                common: common.clone(),
                context: cfg.max_position_embeddings,
                template: ChatTemplate::load(path)?,
            },
            common,
        ))
    }

    fn forward(&mut self, ids: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        match &mut self.backend {
            Backend::Padded { model, cache, .. } => {
                let Some(cache) = cache.as_mut() else {
                    candle_core::bail!("decode step before prefill")
                };
                let valid = Tensor::ones(ids.dims2()?, DType::F32, ids.device())?;
                model.forward(&model.embed(ids)?, &valid, cache)
            }
            Backend::Full(m) => m.forward(ids, offset),
            Backend::Gguf(m) => m.forward(ids, offset),
        }
    }
}

/// Creates every weight of the model described by `config.json` in `vb`.
pub fn init_weights(raw: &serde_json::Value, vb: VarBuilder) -> Result<(), InferenceError> {
    let cfg: qwen3::Config = super::parse_config(raw.clone(), "Qwen3 config.json")?;
    qwen3::ModelForCausalLM::new(&cfg, vb)
        .map(|_| ())
        .map_err(|e| InferenceError::Load(e.to_string()))
}

/// Renders ChatML with thinking disabled.
pub fn chatml(request: &ChatRequest, no_think: bool) -> String {
    let mut text = String::new();
    for m in super::messages_with_schema(request) {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        text.push_str(&format!(
            "<|im_start|>{role}\n{}<|im_end|>\n",
            m.text_content()
        ));
    }
    text.push_str("<|im_start|>assistant\n");
    if no_think {
        text.push_str("<think>\n\n</think>\n\n");
    }
    text
}

impl Family for Qwen3 {
    type Input = Input;

    fn prepare(&self, request: &ChatRequest) -> Result<Prepared<Input>, InferenceError> {
        // The model's own template with thinking switched off (answers are graded, not
        // reasoning traces); without one, the same ChatML by hand.
        let ids = match &self.template {
            Some(t) => {
                let msgs = super::messages_with_schema(request);
                let off = [("enable_thinking", serde_json::Value::Bool(false))];
                let text = t.render(&msgs, ContentStyle::Text, &off)?;
                super::encode_prompt(&self.common.tokenizer, &text, t.add_special_tokens(&text))?
            }
            None => super::encode(&self.common.tokenizer, &chatml(request, true))?,
        };
        let len = ids.len();
        Ok(Prepared {
            input: Input { ids },
            prompt_tokens: len,
            group_key: vec![len],
        })
    }

    fn prefill(&mut self, inputs: &[&Input]) -> candle_core::Result<Tensor> {
        if let Backend::Padded {
            model,
            cache,
            layers,
        } = &mut self.backend
        {
            // Left padding to the longest prompt (the padding id is never attended to).
            let longest = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(inputs.len() * longest);
            let mut valid = Vec::with_capacity(inputs.len() * longest);
            for i in inputs {
                let pad = longest - i.ids.len();
                ids.extend(std::iter::repeat_n(0u32, pad));
                ids.extend_from_slice(&i.ids);
                valid.extend(std::iter::repeat_n(0f32, pad));
                valid.extend(std::iter::repeat_n(1f32, i.ids.len()));
            }
            let dev = &self.common.device;
            let ids = Tensor::from_vec(ids, (inputs.len(), longest), dev)?;
            let valid = Tensor::from_vec(valid, (inputs.len(), longest), dev)?;
            let mut fresh = KvCache::new(*layers);
            let logits = model.forward(&model.embed(&ids)?, &valid, &mut fresh)?;
            *cache = Some(fresh);
            return Ok(logits);
        }
        match &mut self.backend {
            Backend::Full(m) => m.clear_kv_cache(),
            Backend::Gguf(m) => m.clear_kv_cache(),
            Backend::Padded { .. } => {}
        }
        let len = inputs.first().map(|i| i.ids.len()).unwrap_or(0);
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.ids.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (inputs.len(), len), &self.common.device)?;
        self.forward(&ids, 0)
    }

    fn step(&mut self, tokens: &[u32], offset: usize) -> candle_core::Result<Tensor> {
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), &self.common.device)?;
        self.forward(&ids, offset)
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn accepts_images(&self) -> bool {
        false
    }

    fn pads_batches(&self) -> bool {
        matches!(self.backend, Backend::Padded { .. })
    }

    fn retain_rows(&mut self, keep: &[usize]) -> candle_core::Result<bool> {
        match &mut self.backend {
            Backend::Padded { cache, .. } => {
                if let Some(cache) = cache.as_mut() {
                    cache.retain(keep)?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn max_batch(&self) -> usize {
        match (&self.backend, self.common.device.is_cpu()) {
            // candle's quantized Qwen3 keeps its CPU KV cache for batch size 1 only.
            (Backend::Gguf(_), true) => 1,
            _ => super::MAX_BATCH,
        }
    }
}
