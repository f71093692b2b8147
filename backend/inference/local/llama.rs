//! The Llama / Mistral decoder (LLaVA's language model) and the Qwen3 decoder, on candle-nn,
//! with left-padded batches.
//!
//! Replaces candle-transformers' `llama::Llama` for LLaVA: that model takes no attention
//! mask, so prompts of different lengths could not share a forward pass. Here a batch is
//! left-padded to its longest prompt, padding keys are masked out of every attention row
//! (prefill and decode), and all rows use positions `0..L` of the padded sequence: rotary
//! attention depends only on position differences, so a row shifted right by its padding
//! computes what it computes alone (transformers' forward does the same). Rows can leave the
//! batch ([`KvCache::retain`]) when they finish.
//!
//! The layer is transformers' `LlamaDecoderLayer`: RMSNorm, attention with grouped
//! key/value heads and rotate-half RoPE, RMSNorm, SiLU-gated MLP; a final RMSNorm and the LM
//! head. With `qk_norm` it is `Qwen3DecoderLayer`: queries and keys get a per-head RMSNorm
//! before RoPE. With `qkv_bias` it is `Qwen2DecoderLayer`: the query, key and value
//! projections carry biases. With `gemma` it is `GemmaDecoderLayer` (scaled embeddings,
//! `1 + weight` RMSNorm, tanh-GELU MLP), and `bidirectional_prompt` gives PaliGemma's
//! prefix-LM attention (the prompt sees itself whole). Mistral's sliding window is not applied (prompts here are far shorter than
//! it).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};

/// The decoder's sizes.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (RoPE table size).
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub qk_norm: bool,
    /// Biases on the query, key and value projections (Qwen2).
    pub qkv_bias: bool,
    /// Gemma layers: embeddings scaled by `sqrt(hidden)`, RMSNorm weights applied as
    /// `1 + weight`, a tanh-GELU gated MLP (PaliGemma's language model).
    pub gemma: bool,
    /// The prompt attends to itself in both directions (PaliGemma's prefix-LM attention);
    /// generated tokens attend causally.
    pub bidirectional_prompt: bool,
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    ln1: RmsNorm,
    ln2: RmsNorm,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

/// A loaded decoder.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of every layer, and which key positions are real (not padding).
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// `(batch, positions)`, 1.0 for real tokens, 0.0 for padding.
    valid: Option<Tensor>,
}

impl KvCache {
    /// An empty cache for a model with `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            kv: vec![None; layers],
            valid: None,
        }
    }

    /// Positions stored so far (the padded length plus decoded steps).
    pub fn len(&self) -> usize {
        self.valid.as_ref().and_then(|v| v.dim(1).ok()).unwrap_or(0)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the given batch rows (in this order), dropping the others.
    pub fn retain(&mut self, rows: &[usize]) -> candle_core::Result<()> {
        let Some(valid) = &self.valid else {
            return Ok(());
        };
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            valid.device(),
        )?;
        self.valid = Some(valid.index_select(&idx, 0)?);
        for entry in self.kv.iter_mut().flatten() {
            *entry = (
                entry.0.index_select(&idx, 0)?,
                entry.1.index_select(&idx, 0)?,
            );
        }
        Ok(())
    }
}

/// RMSNorm of width `n`; Gemma stores `weight - 1`.
fn norm(cfg: &LlamaConfig, n: usize, vb: VarBuilder) -> candle_core::Result<RmsNorm> {
    if cfg.gemma {
        let w = vb.get(n, "weight")?;
        Ok(RmsNorm::new((w + 1.0)?, cfg.rms_norm_eps))
    } else {
        candle_nn::rms_norm(n, cfg.rms_norm_eps, vb)
    }
}

fn rope_tables(
    cfg: &LlamaConfig,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), dev)?;
    let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((cfg.max_position_embeddings, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

impl Llama {
    /// Loads the decoder from `vb`, which holds `model.*` and `lm_head` (the root of a
    /// Qwen3 checkpoint, the `language_model` prefix of a LLaVA one).
    pub fn load(cfg: &LlamaConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::load_parts(cfg, vb.pp("model"), vb.pp("lm_head"))
    }

    /// Loads the decoder from `m` (which holds `embed_tokens`, `layers.*` and `norm`) and the
    /// LM head from `head` (unused when the embeddings are tied).
    pub fn load_parts(
        cfg: &LlamaConfig,
        m: VarBuilder,
        head: VarBuilder,
    ) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim;
        let embed = candle_nn::embedding(cfg.vocab_size, h, m.pp("embed_tokens"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let mlp = l.pp("mlp");
            layers.push(Layer {
                q: candle_nn::linear_b(
                    h,
                    cfg.num_attention_heads * hd,
                    cfg.qkv_bias,
                    a.pp("q_proj"),
                )?,
                k: candle_nn::linear_b(
                    h,
                    cfg.num_key_value_heads * hd,
                    cfg.qkv_bias,
                    a.pp("k_proj"),
                )?,
                v: candle_nn::linear_b(
                    h,
                    cfg.num_key_value_heads * hd,
                    cfg.qkv_bias,
                    a.pp("v_proj"),
                )?,
                o: candle_nn::linear_no_bias(cfg.num_attention_heads * hd, h, a.pp("o_proj"))?,
                gate: candle_nn::linear_no_bias(h, cfg.intermediate_size, mlp.pp("gate_proj"))?,
                up: candle_nn::linear_no_bias(h, cfg.intermediate_size, mlp.pp("up_proj"))?,
                down: candle_nn::linear_no_bias(cfg.intermediate_size, h, mlp.pp("down_proj"))?,
                ln1: norm(cfg, h, l.pp("input_layernorm"))?,
                ln2: norm(cfg, h, l.pp("post_attention_layernorm"))?,
                q_norm: if cfg.qk_norm {
                    Some(candle_nn::rms_norm(hd, cfg.rms_norm_eps, a.pp("q_norm"))?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(candle_nn::rms_norm(hd, cfg.rms_norm_eps, a.pp("k_norm"))?)
                } else {
                    None
                },
            });
        }
        let norm = norm(cfg, h, m.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(h, cfg.vocab_size, head)?
        };
        let (cos, sin) = rope_tables(cfg, m.dtype(), m.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    fn act(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.cfg.gemma {
            x.gelu()
        } else {
            candle_nn::ops::silu(x)
        }
    }

    /// Token embeddings `(.., hidden)`.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.embed.forward(ids)
    }

    /// The prefill of a batch: per-row prompt embeddings `(len_i, hidden)`, left-padded to
    /// the longest, run through a fresh cache. Returns the last position's logits
    /// `(rows, vocab)` and the cache the decode steps continue from.
    pub fn prefill_rows(&self, rows: &[Tensor]) -> candle_core::Result<(Tensor, KvCache)> {
        let (x, valid) = left_pad(rows)?;
        let mut cache = KvCache::new(self.layers.len());
        let logits = self.forward(&x, &valid, &mut cache)?;
        Ok((logits, cache))
    }

    /// One decode step with 1-D positions: `tokens[r]` is row `r`'s next token. Returns
    /// `(rows, vocab)`; fails before a prefill (`cache` is `None`).
    pub fn decode_step(
        &self,
        tokens: &[u32],
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let Some(cache) = cache else {
            candle_core::bail!("decode step before prefill")
        };
        let dev = self.embed.embeddings().device();
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), dev)?;
        let x = self.embed(&ids)?;
        let valid = Tensor::ones((tokens.len(), 1), DType::F32, dev)?;
        self.forward(&x, &valid, cache)
    }

    /// Runs `x` `(batch, len, hidden)` after what `cache` holds. `valid` `(batch, len)`
    /// marks real tokens (1) and left padding (0). Returns the logits of the last position,
    /// `(batch, vocab)`.
    pub fn forward(
        &self,
        x: &Tensor,
        valid: &Tensor,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        self.forward_with(x, valid, cache, None, &[])
    }

    /// [`Self::forward`] with explicit rotary angles and additions to the hidden states.
    ///
    /// `rope`: `(cos, sin)` of shape `(batch, len, head_dim / 2)`, per row and position
    /// (multimodal RoPE); `None` uses positions `cache.len()..` of the model's table for every
    /// row. `inject[i]` `(batch, len, hidden)` is added to the output of layer `i` (Qwen3-VL's
    /// DeepStack visual features).
    pub fn forward_with(
        &self,
        x: &Tensor,
        valid: &Tensor,
        cache: &mut KvCache,
        rope: Option<(&Tensor, &Tensor)>,
        inject: &[Tensor],
    ) -> candle_core::Result<Tensor> {
        let (b, len, _) = x.dims3()?;
        let start = cache.len();
        let total = start + len;
        if total > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "{total} positions exceed the model's {}",
                self.cfg.max_position_embeddings
            );
        }
        let valid = valid.to_dtype(DType::F32)?;
        let all_valid = match &cache.valid {
            Some(v) => Tensor::cat(&[v, &valid], 1)?,
            None => valid,
        };
        cache.valid = Some(all_valid.clone());
        let bidirectional = self.cfg.bidirectional_prompt && start == 0;
        let bias = attention_bias(&all_valid, start, len, bidirectional)?;
        let (cos, sin) = match rope {
            Some((c, s)) => (c.to_dtype(x.dtype())?, s.to_dtype(x.dtype())?),
            None => (
                self.cos.narrow(0, start, len)?,
                self.sin.narrow(0, start, len)?,
            ),
        };
        let mut h = if self.cfg.gemma {
            let scale = Tensor::new((self.cfg.hidden_size as f32).sqrt(), x.device())?;
            x.broadcast_mul(&scale.to_dtype(x.dtype())?)?
        } else {
            x.clone()
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = h.clone();
            let a = layer.ln1.forward(&h)?;
            let a = self.attention(layer, &a, &cos, &sin, &bias, &mut cache.kv[i], b, len)?;
            h = (residual + a)?;
            let residual = h.clone();
            let m = layer.ln2.forward(&h)?;
            let m = layer
                .down
                .forward(&(self.act(&layer.gate.forward(&m)?)? * layer.up.forward(&m)?)?)?;
            h = (residual + m)?;
            if let Some(add) = inject.get(i) {
                h = (h + add.to_dtype(x.dtype())?)?;
            }
        }
        let last = h.narrow(1, len - 1, 1)?.squeeze(1)?;
        let last = self.norm.forward(&last)?;
        self.lm_head.forward(&last)?.to_dtype(DType::F32)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
        kv: &mut Option<(Tensor, Tensor)>,
        b: usize,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let shape =
            |t: Tensor, heads: usize, norm: Option<&RmsNorm>| -> candle_core::Result<Tensor> {
                let t = t.reshape((b, len, heads, hd))?;
                let t = match norm {
                    Some(n) => n.forward(&t)?,
                    None => t,
                };
                t.transpose(1, 2)?.contiguous()
            };
        let q = shape(layer.q.forward(x)?, nh, layer.q_norm.as_ref())?;
        let k = shape(layer.k.forward(x)?, nkv, layer.k_norm.as_ref())?;
        let v = shape(layer.v.forward(x)?, nkv, None)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let rep = nh / nkv;
        let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
            if rep == 1 {
                return Ok(t.clone());
            }
            let (b, n, s, d) = t.dims4()?;
            t.unsqueeze(2)?
                .expand((b, n, rep, s, d))?
                .reshape((b, n * rep, s, d))
        };
        let k = repeat(&k)?;
        let v = repeat(&v)?;
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? / (hd as f64).sqrt())?;
        let scores = scores.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v.contiguous()?)?;
        let out = out.transpose(1, 2)?.reshape((b, len, nh * hd))?;
        layer.o.forward(&out)
    }
}

/// Left-pads per-row embeddings `(len_i, hidden)` to the longest row: returns the batch
/// `(rows, longest, hidden)` (zeros in the padding) and its `valid` mask `(rows, longest)`
/// for [`Llama::forward`].
pub fn left_pad(rows: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
    let Some(first) = rows.first() else {
        candle_core::bail!("no rows to pad")
    };
    let (dev, dtype, hidden) = (first.device(), first.dtype(), first.dim(1)?);
    let lens = rows
        .iter()
        .map(|r| r.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut padded = Vec::with_capacity(rows.len());
    let mut valid = Vec::with_capacity(rows.len() * longest);
    for (r, &len) in rows.iter().zip(&lens) {
        let pad = longest - len;
        valid.extend(std::iter::repeat_n(0f32, pad));
        valid.extend(std::iter::repeat_n(1f32, len));
        padded.push(if pad > 0 {
            Tensor::cat(&[&Tensor::zeros((pad, hidden), dtype, dev)?, r], 0)?
        } else {
            r.clone()
        });
    }
    let valid = Tensor::from_vec(valid, (rows.len(), longest), dev)?;
    Ok((Tensor::stack(&padded, 0)?, valid))
}

/// `(batch, 1, len, total)` in f32: 0 where a query may look, a large negative number where the
/// key is in its future or is padding. The number is finite so that the rows of padding
/// queries (which see only padding) stay finite; their outputs are never used.
fn attention_bias(
    valid: &Tensor,
    start: usize,
    len: usize,
    bidirectional: bool,
) -> candle_core::Result<Tensor> {
    let (b, total) = valid.dims2()?;
    let dev = valid.device();
    let causal: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if bidirectional || j <= start + i {
                    1.0
                } else {
                    0.0
                }
            })
        })
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, len, total), dev)?;
    let keys = valid.reshape((b, 1, 1, total))?;
    let allowed = causal.broadcast_mul(&keys)?;
    // allowed 1 -> 0, allowed 0 -> -1e9 (added to f32 scores).
    (allowed - 1.0)? * 1e9
}
