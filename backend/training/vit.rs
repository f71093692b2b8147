//! A small Vision Transformer with the position-embedding (PE) variants compared in the MPVG
//! paper (Lee, Ham & Kim, AAAI 2025, arXiv 2502.02919).
//!
//! The network: the image is cut into `patch x patch` squares, each projected linearly to
//! `dim` (a convolution with kernel = stride = patch, written as unfold + linear), followed by
//! `depth` pre-LN blocks `x += MSA(LN1(x)); x += MLP(LN2(x))` (GELU, MLP width
//! `mlp_ratio * dim`, no dropout), a final layer norm ("Last LN") and a linear head.
//! `pos_0` is a learnable `tokens x dim` table. The variants differ only in where position
//! information enters:
//!
//! - [`PeVariant::ClassToken`]: `x_0 = [cls; patches] + pos_0` (`pos_0` has a row for the
//!   class token too); plain blocks; Last LN; head on the class token.
//! - [`PeVariant::Gap`]: no class token; `x_0 = patches + pos_0`; plain blocks; Last LN; head
//!   on the mean over tokens (global average pooling, GAP).
//! - [`PeVariant::LapeGap`] (layer-wise PE of LaPE, with GAP): `x_0 = patches` (no position
//!   added); for every layer `l = 1..=depth`: `pos_l = LN'_l(pos_{l-1})` with an own layer
//!   norm per layer (hierarchical), `x += MSA(LN1_l(x) + pos_l); x += MLP(LN2_l(x))`;
//!   Last LN; GAP.
//! - [`PeVariant::Pvg`]: `x_0 = patches + pos_0`; layer 1 is a plain block; layers `l >= 2`
//!   use `pos_l = LN'_l(pos_{l-1})` (hierarchical from `pos_0`, i.e. `pos_1 = pos_0`)
//!   added to `LN1_l(x)` before MSA; Last LN; GAP.
//! - [`PeVariant::Mpvg`]: PVG plus PE at the Last LN: per token
//!   `y = LN_last(x_L) + LN''(pos_0)`, then GAP, then the head.
//! - [`PeVariant::MpvgInside`] (ablation of where the PE meets the Last LN): PVG with
//!   `y = LN_last(x_L + pos_0)`, then GAP, then the head.
//!
//! Each added layer norm costs `2 * dim` parameters, so relative to GAP: PVG and MPVG-inside
//! add `2 * dim * (depth - 1)`, LaPE + GAP adds `2 * dim * depth`, MPVG adds
//! `2 * dim * depth`; the class-token variant adds `dim` (the token) plus `dim` (its row of
//! `pos_0`).
//!
//! Provenance: there is no public MPVG code. The LaPE and PVG/MPVG details above are read from
//! the papers' text (MPVG equations partly from a secondary transcription); the project spec
//! (`specs/training.md`, section 3) marks as unverified which of the two Last-LN forms the
//! paper means, hence both [`PeVariant::Mpvg`] and [`PeVariant::MpvgInside`] exist. The paper
//! numbers layers from 0 ("layer 0 is a plain block"); this module numbers them from 1.
//!
//! Initialisation: linear weights and `pos_0` / the class token are drawn from a plain
//! normal with std 0.02 (the reference implementations use a normal truncated at two standard
//! deviations; the truncation is left out here); the patch projection is uniform in
//! `±1/sqrt(fan_in)` (PyTorch's convolution default, which timm keeps); all biases are zero;
//! layer norms start at scale one, shift zero (eps 1e-5). Every draw comes from one seeded
//! generator ([`Params`]), so a seed fixes the initial network.
//!
//! [`Vit::counterbalance`] measures the paper's "counterbalancing" signature: per layer, the
//! Pearson correlation between the normalised tokens `LN1_l(x_{l-1})` and the position term
//! added to them; after training it turns negative in deeper layers.
//!
//! Layer norms and softmax are composed from differentiable tensor operations: candle-nn's
//! fused layer-norm and softmax kernels have no backward pass.

use candle_core::{D, IndexOp, Module, Tensor};
use candle_nn::{Linear, VarMap};
use serde::{Deserialize, Serialize};

use super::{Classifier, Params, Result, TrainingError, count_parameters};

/// Layer-norm epsilon (PyTorch's default).
const LN_EPS: f32 = 1e-5;
/// Standard deviation of the normal initialisation of linear weights, `pos_0` and the class
/// token.
const INIT_STD: f32 = 0.02;

/// Where position information enters the ViT; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeVariant {
    ClassToken,
    Gap,
    LapeGap,
    Pvg,
    Mpvg,
    MpvgInside,
}

impl PeVariant {
    /// Every variant, in the order of the paper's comparison (plus the Last-LN ablation).
    pub fn all() -> [PeVariant; 6] {
        [
            PeVariant::ClassToken,
            PeVariant::Gap,
            PeVariant::LapeGap,
            PeVariant::Pvg,
            PeVariant::Mpvg,
            PeVariant::MpvgInside,
        ]
    }

    /// The machine name, identical to the serde form (`class_token`, `lape_gap`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PeVariant::ClassToken => "class_token",
            PeVariant::Gap => "gap",
            PeVariant::LapeGap => "lape_gap",
            PeVariant::Pvg => "pvg",
            PeVariant::Mpvg => "mpvg",
            PeVariant::MpvgInside => "mpvg_inside",
        }
    }

    /// A short human-readable name.
    pub fn label(self) -> &'static str {
        match self {
            PeVariant::ClassToken => "class token",
            PeVariant::Gap => "GAP",
            PeVariant::LapeGap => "LaPE + GAP",
            PeVariant::Pvg => "PVG",
            PeVariant::Mpvg => "MPVG",
            PeVariant::MpvgInside => "MPVG, PE inside Last LN",
        }
    }

    fn has_class_token(self) -> bool {
        self == PeVariant::ClassToken
    }

    /// Whether `pos_0` is added to the patch tokens before the first block.
    fn adds_pos_to_input(self) -> bool {
        self != PeVariant::LapeGap
    }

    /// Whether layer `l` (1-based) adds a layer-wise position term `LN'_l(pos_{l-1})`.
    fn layer_wise_at(self, l: usize) -> bool {
        match self {
            PeVariant::ClassToken | PeVariant::Gap => false,
            PeVariant::LapeGap => true,
            PeVariant::Pvg | PeVariant::Mpvg | PeVariant::MpvgInside => l >= 2,
        }
    }
}

/// Sizes of the ViT. The defaults of [`VitConfig::new`] are the spec's CPU check: a 4-layer,
/// dim-64, 4-head ViT with patch 4 on 32x32 RGB input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct VitConfig {
    pub image_side: usize,
    pub channels: usize,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub num_classes: usize,
    pub variant: PeVariant,
}

impl VitConfig {
    /// The default sizes (32x32x3 input, patch 4, dim 64, depth 4, 4 heads, MLP ratio 2).
    pub fn new(num_classes: usize, variant: PeVariant) -> Self {
        VitConfig {
            image_side: 32,
            channels: 3,
            patch: 4,
            dim: 64,
            depth: 4,
            heads: 4,
            mlp_ratio: 2,
            num_classes,
            variant,
        }
    }

    /// Number of patch tokens, `(image_side / patch)^2`.
    pub fn num_patches(&self) -> usize {
        let g = self.image_side / self.patch.max(1);
        g * g
    }

    /// Checks every size against its bounds.
    pub fn validate(&self) -> Result<()> {
        fn check(ok: bool, message: String) -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(TrainingError::Config(message))
            }
        }
        check(
            (1..=512).contains(&self.image_side),
            format!("ViT image_side {} not in 1..=512", self.image_side),
        )?;
        check(
            (1..=16).contains(&self.channels),
            format!("ViT channels {} not in 1..=16", self.channels),
        )?;
        check(
            self.patch >= 1
                && self.patch <= self.image_side
                && self.image_side.is_multiple_of(self.patch),
            format!(
                "ViT patch {} must be at least 1 and divide image_side {}",
                self.patch, self.image_side
            ),
        )?;
        check(
            self.num_patches() <= 4096,
            format!(
                "ViT has {} patches (image_side {} / patch {}, squared); at most 4096 allowed",
                self.num_patches(),
                self.image_side,
                self.patch
            ),
        )?;
        check(
            (1..=1024).contains(&self.dim),
            format!("ViT dim {} not in 1..=1024", self.dim),
        )?;
        check(
            (1..=24).contains(&self.depth),
            format!("ViT depth {} not in 1..=24", self.depth),
        )?;
        check(
            (1..=64).contains(&self.heads) && self.dim.is_multiple_of(self.heads.max(1)),
            format!(
                "ViT heads {} must be in 1..=64 and divide dim {}",
                self.heads, self.dim
            ),
        )?;
        check(
            (1..=8).contains(&self.mlp_ratio),
            format!("ViT mlp_ratio {} not in 1..=8", self.mlp_ratio),
        )?;
        check(
            (2..=1000).contains(&self.num_classes),
            format!("ViT num_classes {} not in 2..=1000", self.num_classes),
        )
    }
}

/// A layer norm over the last dimension, built from differentiable operations.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(p: &mut Params, name: &str, dim: usize) -> Result<Norm> {
        Ok(Norm {
            weight: p.constant(&format!("{name}.weight"), &[dim], 1.0)?,
            bias: p.constant(&format!("{name}.bias"), &[dim], 0.0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm_slow(
            x,
            &self.weight,
            &self.bias,
            LN_EPS,
        )?)
    }
}

/// A linear layer `out x inp` with normal(0, 0.02) weights and a zero bias.
fn linear(p: &mut Params, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let w = p.normal(&format!("{name}.weight"), &[out, inp], 0.0, INIT_STD)?;
    let b = p.constant(&format!("{name}.bias"), &[out], 0.0)?;
    Ok(Linear::new(w, Some(b)))
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute([2, 0, 3, 1, 4])?;
        let q = qkv.i(0)?.contiguous()?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, d))?;
        Ok(self.proj.forward(&out)?)
    }
}

struct Block {
    norm1: Norm,
    attn: Attention,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    /// `LN'_l`, present where the layer adds a layer-wise position term.
    pe_norm: Option<Norm>,
}

impl Block {
    fn new(p: &mut Params, c: &VitConfig, l: usize) -> Result<Block> {
        let name = format!("blocks.{}", l - 1);
        let d = c.dim;
        let hidden = d * c.mlp_ratio;
        Ok(Block {
            norm1: Norm::new(p, &format!("{name}.norm1"), d)?,
            attn: Attention {
                qkv: linear(p, &format!("{name}.attn.qkv"), d, 3 * d)?,
                proj: linear(p, &format!("{name}.attn.proj"), d, d)?,
                heads: c.heads,
            },
            norm2: Norm::new(p, &format!("{name}.norm2"), d)?,
            fc1: linear(p, &format!("{name}.mlp.fc1"), d, hidden)?,
            fc2: linear(p, &format!("{name}.mlp.fc2"), hidden, d)?,
            pe_norm: if c.variant.layer_wise_at(l) {
                Some(Norm::new(p, &format!("{name}.pe_norm"), d)?)
            } else {
                None
            },
        })
    }
}

/// One layer's inputs to the counterbalancing measure: `LN1_l(x_{l-1})` (B x T x D) and the
/// position term added to it (T x D).
type LayerTrace = (Tensor, Tensor);

/// A small ViT with one of the [`PeVariant`]s; see the module documentation.
pub struct Vit {
    config: VitConfig,
    varmap: VarMap,
    patch_embed: Linear,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    /// `LN''` of MPVG.
    pe_norm_last: Option<Norm>,
    head: Linear,
}

impl Vit {
    /// Validates `config` and creates the parameters from `seed`.
    pub fn new(config: VitConfig, seed: u64) -> Result<Vit> {
        config.validate()?;
        let c = &config;
        let mut p = Params::new(seed);
        let d = c.dim;
        let fan_in = c.channels * c.patch * c.patch;
        // Stored with the shape of a PyTorch convolution weight; flattened in (C, ph, pw)
        // order, which is the order `embed` lays the patch pixels out in.
        let bound = 1.0 / (fan_in as f32).sqrt();
        let pw = p.uniform(
            "patch_embed.proj.weight",
            &[d, c.channels, c.patch, c.patch],
            bound,
        )?;
        let pb = p.constant("patch_embed.proj.bias", &[d], 0.0)?;
        let patch_embed = Linear::new(pw.reshape((d, fan_in))?, Some(pb));
        let cls_token = if c.variant.has_class_token() {
            Some(p.normal("cls_token", &[1, 1, d], 0.0, INIT_STD)?)
        } else {
            None
        };
        let tokens = c.num_patches() + usize::from(c.variant.has_class_token());
        let pos_embed = p.normal("pos_embed", &[tokens, d], 0.0, INIT_STD)?;
        let blocks = (1..=c.depth)
            .map(|l| Block::new(&mut p, c, l))
            .collect::<Result<Vec<_>>>()?;
        let norm = Norm::new(&mut p, "norm", d)?;
        let pe_norm_last = if c.variant == PeVariant::Mpvg {
            Some(Norm::new(&mut p, "pe_norm_last", d)?)
        } else {
            None
        };
        let head = linear(&mut p, "head", d, c.num_classes)?;
        Ok(Vit {
            config,
            varmap: p.into_varmap(),
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            pe_norm_last,
            head,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        count_parameters(&self.varmap)
    }

    /// Per layer `l = 1..=depth`, the Pearson correlation between `LN1_l(x_{l-1})` and the
    /// position term added to it at that layer (`pos_l = LN'_l(pos_{l-1})`), both flattened
    /// over batch x tokens x dims (the position term repeated over the batch); `None` where
    /// the layer adds no position term. Errors if either side is constant (the correlation is
    /// undefined).
    pub fn counterbalance(&self, x: &Tensor) -> Result<Vec<Option<f64>>> {
        let mut trace = Vec::with_capacity(self.config.depth);
        self.run(x, Some(&mut trace))?;
        trace
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let Some((normed, pos)) = entry else {
                    return Ok(None);
                };
                let a = normed.detach().flatten_all()?.to_vec1::<f32>()?;
                let b = pos.detach().flatten_all()?.to_vec1::<f32>()?;
                pearson_repeated(&a, &b).map(Some).ok_or_else(|| {
                    TrainingError::Config(format!(
                        "counterbalance: layer {} has a constant input or position term",
                        i + 1
                    ))
                })
            })
            .collect()
    }

    /// Patch tokens, B x N x D.
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = x.dims4()?;
        if ch != c.channels || h != c.image_side || w != c.image_side {
            return Err(TrainingError::Config(format!(
                "ViT expects B x {} x {} x {} input, got {:?}",
                c.channels,
                c.image_side,
                c.image_side,
                x.dims()
            )));
        }
        let p = c.patch;
        let g = c.image_side / p;
        let patches = x
            .reshape((b, ch, g, p, g, p))?
            .permute([0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((b, g * g, ch * p * p))?;
        Ok(self.patch_embed.forward(&patches)?)
    }

    /// The whole network; with `trace`, records per layer what [`Vit::counterbalance`] needs.
    fn run(&self, x: &Tensor, mut trace: Option<&mut Vec<Option<LayerTrace>>>) -> Result<Tensor> {
        let variant = self.config.variant;
        let mut h = self.embed(x)?;
        let b = h.dim(0)?;
        if let Some(cls) = &self.cls_token {
            let cls = cls.broadcast_as((b, 1, self.config.dim))?;
            h = Tensor::cat(&[&cls, &h], 1)?;
        }
        if variant.adds_pos_to_input() {
            h = h.broadcast_add(&self.pos_embed)?;
        }
        let mut pos = self.pos_embed.clone();
        for block in &self.blocks {
            let normed = block.norm1.forward(&h)?;
            let attn_in = match &block.pe_norm {
                Some(pe_norm) => {
                    pos = pe_norm.forward(&pos)?;
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(Some((normed.clone(), pos.clone())));
                    }
                    normed.broadcast_add(&pos)?
                }
                None => {
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(None);
                    }
                    normed
                }
            };
            h = (h + block.attn.forward(&attn_in)?)?;
            let mlp = block
                .fc2
                .forward(&block.fc1.forward(&block.norm2.forward(&h)?)?.gelu_erf()?)?;
            h = (h + mlp)?;
        }
        let pooled = match variant {
            PeVariant::ClassToken => self.norm.forward(&h)?.i((.., 0))?,
            PeVariant::Gap | PeVariant::LapeGap | PeVariant::Pvg => {
                self.norm.forward(&h)?.mean(1)?
            }
            PeVariant::Mpvg => {
                let pe_norm_last = self.pe_norm_last.as_ref().ok_or_else(|| {
                    TrainingError::Config("MPVG ViT lacks its last PE norm".to_string())
                })?;
                let pe = pe_norm_last.forward(&self.pos_embed)?;
                self.norm.forward(&h)?.broadcast_add(&pe)?.mean(1)?
            }
            PeVariant::MpvgInside => self
                .norm
                .forward(&h.broadcast_add(&self.pos_embed)?)?
                .mean(1)?,
        };
        Ok(self.head.forward(&pooled)?)
    }
}

impl Classifier for Vit {
    /// The ViT is one stage: it offers no hidden state to mix in.
    fn stages(&self) -> usize {
        1
    }

    /// Only `(0, 1)`, the whole network, is accepted. `train` changes nothing (no dropout,
    /// no batch norm).
    fn forward_range(&self, x: &Tensor, from: usize, to: usize, _train: bool) -> Result<Tensor> {
        if (from, to) != (0, 1) {
            return Err(TrainingError::Config(format!(
                "the ViT has one stage; forward_range({from}, {to}) must be (0, 1)"
            )));
        }
        self.run(x, None)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

/// Pearson correlation of `a` with `b` repeated to the length of `a` (`a.len()` a non-zero
/// multiple of `b.len()`); `None` when the lengths do not fit or either side is constant.
fn pearson_repeated(a: &[f32], b: &[f32]) -> Option<f64> {
    if b.is_empty() || a.is_empty() || !a.len().is_multiple_of(b.len()) {
        return None;
    }
    let reps = (a.len() / b.len()) as f64;
    let n = a.len() as f64;
    let mean_a = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let mean_b = b.iter().map(|&v| f64::from(v)).sum::<f64>() / b.len() as f64;
    let var_b = reps
        * b.iter()
            .map(|&v| (f64::from(v) - mean_b).powi(2))
            .sum::<f64>();
    let (mut cov, mut var_a) = (0.0, 0.0);
    for chunk in a.chunks(b.len()) {
        for (&va, &vb) in chunk.iter().zip(b) {
            let da = f64::from(va) - mean_a;
            cov += da * (f64::from(vb) - mean_b);
            var_a += da * da;
        }
    }
    if var_a <= 0.0 || var_b <= 0.0 {
        return None;
    }
    Some((cov / (var_a * var_b).sqrt()).clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;
    use rand::SeedableRng;
    use rand_distr::Distribution;

    /// dim 16, depth 3, 2 heads, MLP ratio 2, patch 4 on 8x8x3 (4 patches), 5 classes.
    fn tiny(variant: PeVariant) -> VitConfig {
        VitConfig {
            image_side: 8,
            channels: 3,
            patch: 4,
            dim: 16,
            depth: 3,
            heads: 2,
            mlp_ratio: 2,
            num_classes: 5,
            variant,
        }
    }

    fn batch(b: usize, c: &VitConfig, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.0f32, 1.0).unwrap();
        let n = b * c.channels * c.image_side * c.image_side;
        let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        Tensor::from_vec(v, (b, c.channels, c.image_side, c.image_side), &Device::Cpu).unwrap()
    }

    fn labels(b: usize, classes: usize) -> Tensor {
        let v: Vec<u32> = (0..b).map(|i| (i % classes) as u32).collect();
        Tensor::from_vec(v, b, &Device::Cpu).unwrap()
    }

    /// Expected parameter count written out from the architecture, independently of the
    /// constructor.
    fn formula(c: &VitConfig) -> usize {
        let (d, n) = (c.dim, c.num_patches());
        let hidden = c.mlp_ratio * d;
        let patch = d * c.channels * c.patch * c.patch + d;
        let ln = 2 * d;
        let block =
            ln + (3 * d * d + 3 * d) + (d * d + d) + ln + (d * hidden + hidden) + (hidden * d + d);
        let head = d * c.num_classes + c.num_classes;
        let base = patch + n * d + c.depth * block + ln + head;
        base + match c.variant {
            PeVariant::ClassToken => d + d,
            PeVariant::Gap => 0,
            PeVariant::LapeGap => c.depth * ln,
            PeVariant::Pvg | PeVariant::MpvgInside => (c.depth - 1) * ln,
            PeVariant::Mpvg => (c.depth - 1) * ln + ln,
        }
    }

    #[test]
    fn parameter_counts_match_hand_computation() {
        // Tiny config by hand: patch 16*48+16 = 784; pos 4*16 = 64; block = LN 32 +
        // qkv 768+48 + proj 256+16 + LN 32 + fc1 512+32 + fc2 512+16 = 2224, three of them
        // 6672; Last LN 32; head 80+5 = 85. GAP = 784+64+6672+32+85 = 7637.
        let expected = [
            (PeVariant::ClassToken, 7637 + 16 + 16),
            (PeVariant::Gap, 7637),
            (PeVariant::LapeGap, 7637 + 3 * 32),
            (PeVariant::Pvg, 7637 + 2 * 32),
            (PeVariant::Mpvg, 7637 + 3 * 32),
            (PeVariant::MpvgInside, 7637 + 2 * 32),
        ];
        for (variant, count) in expected {
            let vit = Vit::new(tiny(variant), 0).unwrap();
            assert_eq!(vit.num_parameters(), count, "{}", variant.label());
        }
        for variant in PeVariant::all() {
            let c = VitConfig::new(10, variant);
            let vit = Vit::new(c.clone(), 0).unwrap();
            assert_eq!(vit.num_parameters(), formula(&c), "{}", variant.label());
        }
    }

    #[test]
    fn parameter_deltas_are_the_added_norms() {
        let c = VitConfig::new(10, PeVariant::Gap);
        let (d, depth) = (c.dim, c.depth);
        let count = |v| {
            Vit::new(
                VitConfig {
                    variant: v,
                    ..c.clone()
                },
                1,
            )
            .unwrap()
            .num_parameters()
        };
        let gap = count(PeVariant::Gap);
        let pvg = count(PeVariant::Pvg);
        assert_eq!(pvg - gap, 2 * d * (depth - 1));
        assert_eq!(count(PeVariant::LapeGap) - gap, 2 * d * depth);
        assert_eq!(count(PeVariant::Mpvg) - pvg, 2 * d);
        assert_eq!(count(PeVariant::MpvgInside), pvg);
        assert_eq!(count(PeVariant::ClassToken) - gap, d + d);
    }

    #[test]
    fn logits_have_batch_by_classes_shape_and_follow_the_seed() {
        for variant in PeVariant::all() {
            let c = tiny(variant);
            let x = batch(4, &c, 7);
            let a = Vit::new(c.clone(), 3).unwrap().forward(&x, true).unwrap();
            assert_eq!(a.dims(), &[4, 5], "{}", variant.label());
            let b = Vit::new(c.clone(), 3).unwrap().forward(&x, false).unwrap();
            let other = Vit::new(c, 4).unwrap().forward(&x, false).unwrap();
            let diff = |u: &Tensor, v: &Tensor| {
                (u - v)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert_eq!(diff(&a, &b), 0.0, "{}", variant.label());
            assert!(diff(&a, &other) > 1e-6, "{}", variant.label());
        }
    }

    #[test]
    fn forward_range_accepts_only_the_whole_network() {
        let c = tiny(PeVariant::Mpvg);
        let vit = Vit::new(c.clone(), 0).unwrap();
        let x = batch(2, &c, 1);
        assert_eq!(vit.stages(), 1);
        assert!(vit.forward_range(&x, 0, 1, true).is_ok());
        for (from, to) in [(0, 0), (1, 1), (0, 2), (1, 0)] {
            assert!(
                vit.forward_range(&x, from, to, true).is_err(),
                "({from}, {to})"
            );
        }
        let wrong = batch(
            2,
            &VitConfig {
                image_side: 12,
                ..c
            },
            1,
        );
        assert!(vit.forward(&wrong, false).is_err());
    }

    #[test]
    fn validate_rejects_out_of_range_sizes() {
        let ok = tiny(PeVariant::Pvg);
        assert!(ok.validate().is_ok());
        let bad = [
            VitConfig {
                heads: 3,
                ..ok.clone()
            },
            VitConfig {
                patch: 3,
                ..ok.clone()
            },
            VitConfig {
                dim: 2048,
                heads: 2,
                ..ok.clone()
            },
            VitConfig {
                depth: 0,
                ..ok.clone()
            },
            VitConfig {
                depth: 25,
                ..ok.clone()
            },
            VitConfig {
                num_classes: 1,
                ..ok.clone()
            },
            VitConfig {
                num_classes: 1001,
                ..ok.clone()
            },
            VitConfig {
                mlp_ratio: 0,
                ..ok.clone()
            },
        ];
        for c in bad {
            match c.validate() {
                Err(TrainingError::Config(msg)) => assert!(msg.contains("ViT"), "{msg}"),
                other => panic!("{c:?} gave {other:?}"),
            }
            assert!(Vit::new(c, 0).is_err());
        }
    }

    #[test]
    fn config_serde_uses_snake_case() {
        let c = tiny(PeVariant::MpvgInside);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["variant"], "mpvg_inside");
        assert_eq!(json["image_side"], 8);
        let back: VitConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        let lape: PeVariant = serde_json::from_str("\"lape_gap\"").unwrap();
        assert_eq!(lape, PeVariant::LapeGap);
        for v in PeVariant::all() {
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
    }

    #[test]
    fn gradients_reach_pos_and_every_pe_norm() {
        for variant in [PeVariant::Pvg, PeVariant::Mpvg] {
            let c = tiny(variant);
            let vit = Vit::new(c.clone(), 5).unwrap();
            let x = batch(4, &c, 2);
            let loss =
                candle_nn::loss::cross_entropy(&vit.forward(&x, true).unwrap(), &labels(4, 5))
                    .unwrap();
            let grads = loss.backward().unwrap();
            let nonzero = |t: &Tensor, what: &str| {
                let g = grads
                    .get(t)
                    .unwrap_or_else(|| panic!("no gradient for {what}"));
                let s = g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(s > 0.0, "zero gradient for {what} ({})", variant.label());
            };
            nonzero(&vit.pos_embed, "pos_embed");
            let mut norms = 0;
            for (i, block) in vit.blocks.iter().enumerate() {
                if let Some(n) = &block.pe_norm {
                    nonzero(&n.weight, &format!("blocks.{i}.pe_norm.weight"));
                    nonzero(&n.bias, &format!("blocks.{i}.pe_norm.bias"));
                    norms += 1;
                }
            }
            assert_eq!(norms, c.depth - 1);
            if variant == PeVariant::Mpvg {
                let n = vit.pe_norm_last.as_ref().unwrap();
                nonzero(&n.weight, "pe_norm_last.weight");
                nonzero(&n.bias, "pe_norm_last.bias");
            } else {
                assert!(vit.pe_norm_last.is_none());
            }
        }
    }

    #[test]
    fn pearson_helper_matches_hand_values() {
        let r = |a: &[f32], b: &[f32]| pearson_repeated(a, b).unwrap();
        assert!((r(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((r(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Deviations (-1, 0, 1) and (-1, 1, 0): cov 1, variances 2 and 2.
        assert!((r(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 0.5).abs() < 1e-12);
        // b repeated twice: deviations of a (-1, 0, 1, 1, 0, -1), of b (-1, 0, 1, -1, 0, 1).
        assert!(r(&[1.0, 2.0, 3.0, 3.0, 2.0, 1.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        // a mean 3: deviations (-1, 1, 3, -2, -1, 0); cov 6, sums of squares 16 and 4.
        assert!((r(&[2.0, 4.0, 6.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]) - 0.75).abs() < 1e-12);
        assert_eq!(pearson_repeated(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(
            pearson_repeated(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0]),
            None
        );
    }

    #[test]
    fn counterbalance_reports_layers_with_a_position_term() {
        let expect = |v| match v {
            PeVariant::ClassToken | PeVariant::Gap => vec![false, false, false],
            PeVariant::LapeGap => vec![true, true, true],
            PeVariant::Pvg | PeVariant::Mpvg | PeVariant::MpvgInside => vec![false, true, true],
        };
        for variant in PeVariant::all() {
            let c = tiny(variant);
            let vit = Vit::new(c.clone(), 9).unwrap();
            let corr = vit.counterbalance(&batch(4, &c, 3)).unwrap();
            let present: Vec<bool> = corr.iter().map(Option::is_some).collect();
            assert_eq!(present, expect(variant), "{}", variant.label());
            for r in corr.into_iter().flatten() {
                assert!((-1.0..=1.0).contains(&r), "{r}");
            }
        }
    }

    #[test]
    fn counterbalance_of_the_first_lape_layer_matches_a_direct_computation() {
        // Layer 1 of LaPE + GAP: x_0 = patches, so LN1_1(x_0) and LN'_1(pos_0) can be formed
        // from the parts directly.
        let c = tiny(PeVariant::LapeGap);
        let vit = Vit::new(c.clone(), 11).unwrap();
        let x = batch(3, &c, 4);
        let normed = vit.blocks[0]
            .norm1
            .forward(&vit.embed(&x).unwrap())
            .unwrap();
        let pos = vit.blocks[0]
            .pe_norm
            .as_ref()
            .unwrap()
            .forward(&vit.pos_embed)
            .unwrap();
        let pos_b = pos
            .unsqueeze(0)
            .unwrap()
            .broadcast_as(normed.shape())
            .unwrap();
        let centre = |t: &Tensor| t.broadcast_sub(&t.mean_all().unwrap()).unwrap();
        let (a, b) = (centre(&normed), centre(&pos_b));
        let dot = |u: &Tensor, v: &Tensor| {
            (u * v)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let expected = dot(&a, &b) / (dot(&a, &a) * dot(&b, &b)).sqrt();
        let got = vit.counterbalance(&x).unwrap()[0].unwrap();
        assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
    }

    #[test]
    fn adamw_steps_lower_the_loss_of_mpvg() {
        let c = tiny(PeVariant::Mpvg);
        let vit = Vit::new(c.clone(), 21).unwrap();
        let x = batch(4, &c, 8);
        let y = labels(4, 5);
        let loss = |vit: &Vit| {
            candle_nn::loss::cross_entropy(&vit.forward(&x, true).unwrap(), &y).unwrap()
        };
        let params = candle_nn::ParamsAdamW {
            lr: 3e-3,
            ..Default::default()
        };
        let mut opt = candle_nn::AdamW::new(vit.varmap().all_vars(), params).unwrap();
        let before = loss(&vit).to_scalar::<f32>().unwrap();
        for _ in 0..20 {
            opt.backward_step(&loss(&vit)).unwrap();
        }
        let after = loss(&vit).to_scalar::<f32>().unwrap();
        assert!(after < before, "loss {before} -> {after}");
    }
}
