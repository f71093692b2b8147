//! The vision towers of Qwen2-VL, Qwen2.5-VL and Qwen3-VL.
//!
//! All three cut the image into `(C, T, P, P)` patches in `merge × merge` block order, embed
//! each patch with one linear map (transformers' 3-D convolution whose kernel equals its
//! stride), rotate queries and keys by the patch's row (first half of each head's rotary
//! frequencies) and column (second half), run pre-norm attention blocks over the patches of
//! one image, and merge every `merge²` neighbouring patches into one language-model token
//! (LayerNorm or RMSNorm, Linear, GELU, Linear). They differ in:
//!
//! - **Qwen2-VL**: LayerNorm blocks, a plain MLP (QuickGELU by default).
//! - **Qwen2.5-VL**: RMSNorm blocks, a gated MLP with biases, and windowed attention: the
//!   merged tokens are regrouped into windows of `window_size` pixels, and every block not
//!   listed in `fullatt_block_indexes` attends only inside its window; the merger's output is
//!   put back in image order.
//! - **Qwen3-VL**: a bias on the patch embedding, a learned square grid of position
//!   embeddings resampled bilinearly (corners aligned) to the image's grid, and the DeepStack
//!   mergers, which turn the outputs of chosen blocks into features added to the language
//!   model's first layers.

use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, RmsNorm, VarBuilder};

/// Which model generation a tower belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Qwen2-VL.
    V2,
    /// Qwen2.5-VL.
    V25,
    /// Qwen3-VL.
    V3,
}

/// The tower's sizes, read from `vision_config` (whose field names differ between
/// generations).
#[derive(Debug, Clone)]
pub struct VisionConfig {
    /// Model generation.
    pub generation: Generation,
    /// Blocks.
    pub depth: usize,
    /// Width of the blocks.
    pub width: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// Input channels.
    pub channels: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Patches merged per side into one token.
    pub merge: usize,
    /// Frames per patch.
    pub temporal: usize,
    /// Width of the merged tokens (the language model's).
    pub out: usize,
    /// Activation of the block MLP.
    pub act: String,
    /// Rotary base.
    pub rope_theta: f32,
    /// Qwen3-VL: learned position embeddings (a square number).
    pub position_embeddings: usize,
    /// Qwen3-VL: blocks whose outputs feed the DeepStack mergers.
    pub deepstack: Vec<usize>,
    /// Qwen2.5-VL: window side in pixels.
    pub window_size: usize,
    /// Qwen2.5-VL: blocks that attend over the whole image.
    pub full_attention: Vec<usize>,
}

/// transformers' activation by name.
pub fn activation(name: &str) -> Result<fn(&Tensor) -> candle_core::Result<Tensor>, String> {
    Ok(match name {
        "gelu" => |x: &Tensor| x.gelu_erf(),
        "gelu_pytorch_tanh" | "gelu_new" => |x: &Tensor| x.gelu(),
        "quick_gelu" => |x: &Tensor| x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        "silu" => |x: &Tensor| candle_nn::ops::silu(x),
        other => return Err(format!("vision hidden_act {other:?} is not supported")),
    })
}

enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(rms: bool, width: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(if rms {
            Norm::Rms(candle_nn::rms_norm(width, 1e-6, vb)?)
        } else {
            Norm::Layer(candle_nn::layer_norm(width, 1e-6, vb)?)
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

enum Mlp {
    Plain(Linear, Linear),
    Gated(Linear, Linear, Linear),
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Linear,
    proj: Linear,
    mlp: Mlp,
}

/// `merge²` neighbouring patches concatenated into one token: norm (before the concatenation
/// for the main merger, after it for the DeepStack ones), Linear, GELU, Linear.
struct Merger {
    norm: Norm,
    norm_after: bool,
    fc1: Linear,
    fc2: Linear,
    width: usize,
}

impl Merger {
    fn new(c: &VisionConfig, norm_after: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let width = c.width * c.merge * c.merge;
        let norm_width = if norm_after { width } else { c.width };
        let (norm_name, fc1, fc2) = match c.generation {
            Generation::V3 => ("norm", "linear_fc1", "linear_fc2"),
            _ => ("ln_q", "mlp.0", "mlp.2"),
        };
        Ok(Self {
            norm: Norm::new(
                c.generation == Generation::V25,
                norm_width,
                vb.pp(norm_name),
            )?,
            norm_after,
            fc1: candle_nn::linear(width, width, vb.pp(fc1))?,
            fc2: candle_nn::linear(width, c.out, vb.pp(fc2))?,
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

/// A loaded vision tower.
pub struct Vision {
    cfg: VisionConfig,
    patch: Linear,
    /// Qwen3-VL's learned grid and its side.
    pos_embed: Option<(Tensor, usize)>,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<(usize, Merger)>,
    /// `head_dim / 4` rotary frequencies, in f32 as transformers computes them.
    inv_freq: Vec<f32>,
    act: fn(&Tensor) -> candle_core::Result<Tensor>,
}

/// What the tower makes of one image.
pub struct ImageFeatures {
    /// `(tokens, out)`.
    pub main: Tensor,
    /// One `(tokens, out)` per DeepStack merger.
    pub deep: Vec<Tensor>,
}

impl Vision {
    /// Loads the tower from `vb` (the `model.visual` prefix).
    pub fn new(c: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = c.width;
        let k = c.channels * c.temporal * c.patch * c.patch;
        let pe = vb.pp("patch_embed.proj");
        let weight = pe
            .get((w, c.channels, c.temporal, c.patch, c.patch), "weight")?
            .reshape((w, k))?;
        let bias = match c.generation {
            Generation::V3 => Some(pe.get(w, "bias")?),
            _ => None,
        };
        let patch = Linear::new(weight, bias);
        let pos_embed = match c.generation {
            Generation::V3 => {
                let side = (c.position_embeddings as f64).sqrt().round() as usize;
                Some((
                    vb.get((c.position_embeddings, w), "pos_embed.weight")?,
                    side,
                ))
            }
            _ => None,
        };
        let rms = c.generation == Generation::V25;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = vb.pp(format!("blocks.{i}"));
            let m = b.pp("mlp");
            let mlp = match c.generation {
                Generation::V2 => Mlp::Plain(
                    candle_nn::linear(w, c.intermediate, m.pp("fc1"))?,
                    candle_nn::linear(c.intermediate, w, m.pp("fc2"))?,
                ),
                Generation::V25 => Mlp::Gated(
                    candle_nn::linear(w, c.intermediate, m.pp("gate_proj"))?,
                    candle_nn::linear(w, c.intermediate, m.pp("up_proj"))?,
                    candle_nn::linear(c.intermediate, w, m.pp("down_proj"))?,
                ),
                Generation::V3 => Mlp::Plain(
                    candle_nn::linear(w, c.intermediate, m.pp("linear_fc1"))?,
                    candle_nn::linear(c.intermediate, w, m.pp("linear_fc2"))?,
                ),
            };
            blocks.push(Block {
                norm1: Norm::new(rms, w, b.pp("norm1"))?,
                norm2: Norm::new(rms, w, b.pp("norm2"))?,
                qkv: candle_nn::linear(w, 3 * w, b.pp("attn.qkv"))?,
                proj: candle_nn::linear(w, w, b.pp("attn.proj"))?,
                mlp,
            });
        }
        let merger = Merger::new(c, false, vb.pp("merger"))?;
        let deepstack = c
            .deepstack
            .iter()
            .enumerate()
            .map(|(i, &layer)| {
                Merger::new(c, true, vb.pp(format!("deepstack_merger_list.{i}")))
                    .map(|m| (layer, m))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let spatial = (w / c.heads) / 2;
        let inv_freq = (0..spatial)
            .step_by(2)
            .map(|i| 1.0 / c.rope_theta.powf(i as f32 / spatial as f32))
            .collect();
        Ok(Self {
            cfg: c.clone(),
            patch,
            pos_embed,
            blocks,
            merger,
            deepstack,
            inv_freq,
            act: activation(&c.act).map_err(candle_core::Error::msg)?,
        })
    }

    /// Number of DeepStack outputs.
    pub fn deepstack_layers(&self) -> usize {
        self.deepstack.len()
    }

    /// `(row, col)` of every patch of a `gh × gw` grid in merge-block order.
    fn patch_coords(&self, gh: usize, gw: usize) -> Vec<(usize, usize)> {
        let m = self.cfg.merge;
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

    /// Qwen3-VL: the learned grid resampled bilinearly (corners aligned) to the patches.
    fn position_embeddings(
        &self,
        table: &Tensor,
        side: usize,
        coords: &[(usize, usize)],
        gh: usize,
        gw: usize,
    ) -> candle_core::Result<Tensor> {
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
        let dev = table.device();
        let idx = Tensor::from_vec(idx, n * 4, dev)?;
        let wts = Tensor::from_vec(wts, (n, 4, 1), dev)?.to_dtype(table.dtype())?;
        table
            .index_select(&idx, 0)?
            .reshape((n, 4, self.cfg.width))?
            .broadcast_mul(&wts)?
            .sum(1)
    }

    /// `(cos, sin)` `(patches, head_dim / 2)` of the 2-D rotary embedding.
    fn rotary(
        &self,
        coords: &[(usize, usize)],
        dev: &candle_core::Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
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
        Ok((
            Tensor::from_vec(cos, (coords.len(), 2 * q), dev)?,
            Tensor::from_vec(sin, (coords.len(), 2 * q), dev)?,
        ))
    }

    /// Qwen2.5-VL: the merged tokens (row-major over the `lh × lw` merged grid) in window
    /// order, and the number of merged tokens in each non-empty window.
    fn windows(&self, lh: usize, lw: usize) -> (Vec<usize>, Vec<usize>) {
        let ws = (self.cfg.window_size / self.cfg.merge / self.cfg.patch).max(1);
        let mut order = Vec::with_capacity(lh * lw);
        let mut sizes = Vec::new();
        for wr in 0..lh.div_ceil(ws) {
            for wc in 0..lw.div_ceil(ws) {
                let before = order.len();
                for r in wr * ws..((wr + 1) * ws).min(lh) {
                    for c in wc * ws..((wc + 1) * ws).min(lw) {
                        order.push(r * lw + c);
                    }
                }
                sizes.push(order.len() - before);
            }
        }
        (order, sizes)
    }

    /// Runs one image: `pixels` `(patches, C*T*P*P)`, its grid in patches.
    pub fn forward(
        &self,
        pixels: &Tensor,
        gh: usize,
        gw: usize,
    ) -> candle_core::Result<ImageFeatures> {
        let c = &self.cfg;
        let dtype = self.patch.weight().dtype();
        let dev = pixels.device();
        let unit = c.merge * c.merge;
        let mut coords = self.patch_coords(gh, gw);
        let n = coords.len();
        let mut x = self.patch.forward(&pixels.to_dtype(dtype)?)?;
        if let Some((table, side)) = &self.pos_embed {
            x = (x + self.position_embeddings(table, *side, &coords, gh, gw)?)?;
        }
        // Window order (Qwen2.5-VL): whole merged tokens move, so the merger still sees its
        // `merge²` patches side by side.
        let windows =
            (c.generation == Generation::V25).then(|| self.windows(gh / c.merge, gw / c.merge));
        if let Some((order, _)) = &windows {
            let idx: Vec<u32> = order
                .iter()
                .flat_map(|&t| (t * unit..(t + 1) * unit).map(|p| p as u32))
                .collect();
            x = x.index_select(&Tensor::from_vec(idx, n, dev)?, 0)?;
            coords = order
                .iter()
                .flat_map(|&t| coords[t * unit..(t + 1) * unit].to_vec())
                .collect();
        }
        let (cos, sin) = self.rotary(&coords, dev)?;
        let window_segments: Vec<usize> = windows
            .as_ref()
            .map(|(_, sizes)| sizes.iter().filter(|&&s| s > 0).map(|s| s * unit).collect())
            .unwrap_or_default();
        let mut deep = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let segments = if windows.is_some() && !c.full_attention.contains(&i) {
                window_segments.clone()
            } else {
                vec![n]
            };
            let a = self.attention(b, &b.norm1.forward(&x)?, &cos, &sin, &segments)?;
            x = (x + a)?;
            let h = b.norm2.forward(&x)?;
            let m = match &b.mlp {
                Mlp::Plain(fc1, fc2) => fc2.forward(&(self.act)(&fc1.forward(&h)?)?)?,
                Mlp::Gated(gate, up, down) => {
                    down.forward(&((self.act)(&gate.forward(&h)?)? * up.forward(&h)?)?)?
                }
            };
            x = (x + m)?;
            for (layer, merger) in &self.deepstack {
                if *layer == i {
                    deep.push(merger.forward(&x)?);
                }
            }
        }
        let mut main = self.merger.forward(&x)?;
        if let Some((order, _)) = &windows {
            // Back to image order: token `order[j]` is row `j` of the merger's output.
            let mut back = vec![0u32; order.len()];
            for (j, &t) in order.iter().enumerate() {
                back[t] = j as u32;
            }
            let len = back.len();
            main = main.index_select(&Tensor::from_vec(back, len, dev)?, 0)?;
        }
        Ok(ImageFeatures { main, deep })
    }

    /// Multi-head attention of `x` `(patches, width)` inside each segment (consecutive runs of
    /// patches), with the 2-D rotary embedding applied in f32.
    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[usize],
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let n = x.dim(0)?;
        let hd = c.width / c.heads;
        let dtype = x.dtype();
        let qkv = b.qkv.forward(x)?.reshape((n, 3, c.heads, hd))?;
        let part = |k: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, k, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .to_dtype(DType::F32)?
                .contiguous()
        };
        let q = candle_nn::rotary_emb::rope(&part(0)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&part(1)?, cos, sin)?;
        let v = part(2)?;
        let mut outs = Vec::with_capacity(segments.len());
        let mut start = 0;
        for &len in segments {
            let (qs, ks, vs) = (
                q.narrow(2, start, len)?,
                k.narrow(2, start, len)?,
                v.narrow(2, start, len)?,
            );
            let scores = (qs.matmul(&ks.t()?)? / (hd as f64).sqrt())?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(probs.matmul(&vs)?);
            start += len;
        }
        let o = Tensor::cat(&outs, 2)?
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((n, c.width))?
            .to_dtype(dtype)?;
        b.proj.forward(&o)
    }
}
