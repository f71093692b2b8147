//! Weight-level network representation: a CNN as a sequence of conv / batch-norm / ReLU /
//! pool / flatten / linear layers and residual basic blocks, each holding plain candle
//! tensors, so pruning is a pure function from one [`Network`] to another.
//!
//! Parameter names follow PyTorch state dicts (`features.0.weight`, `features.1.running_mean`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `fc.weight`), so checkpoints move
//! between this crate and PyTorch. [`Network::save_safetensors`] also stores the topology as
//! JSON metadata, which lets [`Network::load_safetensors`] rebuild a (possibly pruned)
//! network without knowing its widths; [`Network::with_weights_from`] loads a plain PyTorch
//! checkpoint into the topology of a constructed network, taking the widths from the file.
//!
//! The constructors of the architectures (VGG, CIFAR ResNets, ResNet-18/50, LeNet-300-100)
//! and their seeded initialisation live in `architectures.rs`; the topology metadata and
//! safetensors reading and writing in `checkpoint.rs`.
//!
//! Everything runs on the CPU in `f32`. Tensors are immutable values: cloning a network is
//! cheap and never aliases mutable state, except inside [`crate::compression::train()`], which
//! updates its own private copy in place.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{CompressionError, Result};

mod architectures;
mod checkpoint;

pub use architectures::{VggConfig, VggItem};
pub use checkpoint::{ConvSpec, LayerSpec, ShortcutSpec, Topology};

/// Metadata key under which [`Network::save_safetensors`] stores the topology.
pub const TOPOLOGY_METADATA_KEY: &str = "elite.compression.topology";

/// Default batch-norm epsilon and running-average momentum (PyTorch defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// A 2-D convolution (groups = 1, dilation = 1). Weight shape `out x in x kh x kw`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

/// Batch normalisation over the channel dimension of `N x C x H x W` or `N x C` inputs.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub name: String,
    /// Scale (gamma), length C.
    pub weight: Tensor,
    /// Shift (beta), length C.
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

/// A fully connected layer. Weight shape `out x in`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// The identity path of a residual block.
#[derive(Debug, Clone)]
pub enum Shortcut {
    /// `x` itself (same shape).
    Identity,
    /// CIFAR ResNet "option A": subsample by `stride` and zero-pad the missing channels
    /// (half in front, half behind). No parameters.
    ZeroPad { stride: usize },
    /// ResNet-18 "option B": a 1x1 strided convolution followed by batch norm
    /// (PyTorch names `downsample.0` / `downsample.1`).
    Projection { conv: Conv2d, bn: BatchNorm },
}

/// A residual block. Basic: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
/// Bottleneck (when `conv3` / `bn3` are set, ResNet-50 style, stride on the 3x3 `conv2`):
/// `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    /// Prefix of the block, e.g. `layer1.0`.
    pub name: String,
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    /// The third (1x1, expanding) convolution of a bottleneck block.
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    pub shortcut: Shortcut,
}

impl BasicBlock {
    /// The last convolution and batch norm of the residual branch.
    pub fn last(&self) -> (&Conv2d, &BatchNorm) {
        match (&self.conv3, &self.bn3) {
            (Some(c), Some(b)) => (c, b),
            _ => (&self.conv2, &self.bn2),
        }
    }
}

/// One element of a network.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Relu,
    MaxPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    /// Average over all spatial positions, keeping `N x C x 1 x 1`.
    GlobalAvgPool,
    /// `N x C x H x W` to `N x (C*H*W)`, channel-major like `torch.flatten`.
    Flatten,
    Linear(Linear),
    BasicBlock(Box<BasicBlock>),
}

/// A feed-forward CNN classifier: `input_size` images in, one logit per class out.
#[derive(Debug, Clone)]
pub struct Network {
    /// Human-readable architecture tag, e.g. `vgg16_bn_cifar` or `resnet56_cifar`.
    pub architecture: String,
    /// Input shape `[channels, height, width]` used for validation and counting.
    pub input_size: [usize; 3],
    pub layers: Vec<Layer>,
}

/// The shortcut of a CIFAR ResNet block whose shape changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CifarShortcut {
    /// Option A: subsample and zero-pad (no parameters).
    #[default]
    ZeroPad,
    /// Option B: 1x1 strided convolution + batch norm.
    Projection,
}

/// The stem of a ResNet-18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResNetStem {
    /// 3x3 stride-1 convolution, no max pool (the usual CIFAR adaptation).
    Cifar,
    /// 7x7 stride-2 convolution followed by a 3x3 stride-2 max pool (torchvision).
    ImageNet,
}

/// Batch statistics of one batch-norm layer seen in a training forward pass.
#[derive(Debug, Clone)]
pub(crate) struct BatchStats {
    pub mean: Tensor,
    pub unbiased_var: Tensor,
}

/// Forward-pass mode: inference with running statistics, or training with batch statistics
/// (collected in traversal order so the caller can update the running averages).
pub(crate) enum Mode<'a> {
    Eval,
    Train(&'a mut Vec<BatchStats>),
    /// Inference with running statistics that records the input of every batch norm in
    /// traversal order, graph kept (what model inversion matches against the running
    /// statistics).
    Probe(&'a mut Vec<Tensor>),
}

/// What a probed forward pass ([`Network::probe`]) saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `N x classes`.
    pub logits: Tensor,
    /// The input of every batch norm, in the order of [`Network::batch_norms`].
    pub bn_inputs: Vec<Tensor>,
    /// Stage outputs, highest resolution first: for every run of consecutive layers whose
    /// outputs share one spatial size, the output of the run's last layer (for a CIFAR
    /// ResNet: the outputs of its stages; for a VGG: the feature map before each pool).
    /// Global average pooling ends the stages.
    pub stages: Vec<Tensor>,
}

impl Conv2d {
    pub fn out_channels(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }
    pub fn in_channels(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }
    /// `(kh, kw)`.
    pub fn kernel_size(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (
            d.get(2).copied().unwrap_or(0),
            d.get(3).copied().unwrap_or(0),
        )
    }

    fn forward(&self, x: &Tensor, mode: &Mode<'_>) -> Result<Tensor> {
        let y = match mode {
            Mode::Eval => x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?,
            Mode::Train(_) | Mode::Probe(_) => {
                crate::nn::conv2d(x, &self.weight, self.padding, self.stride)?
            }
        };
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?),
            None => Ok(y),
        }
    }
}

impl BatchNorm {
    pub fn channels(&self) -> usize {
        self.weight.elem_count()
    }

    /// A fresh batch norm (gamma 1, beta 0, mean 0, var 1).
    pub fn identity(name: impl Into<String>, channels: usize) -> Result<Self> {
        let dev = Device::Cpu;
        Ok(BatchNorm {
            name: name.into(),
            weight: Tensor::ones(channels, DType::F32, &dev)?,
            bias: Tensor::zeros(channels, DType::F32, &dev)?,
            running_mean: Tensor::zeros(channels, DType::F32, &dev)?,
            running_var: Tensor::ones(channels, DType::F32, &dev)?,
            eps: BN_EPS,
        })
    }

    /// Per-channel `(scale, shift)` of the inference-time affine map `y = scale * x + shift`.
    pub fn folded_scale_shift(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let gamma = self.weight.to_vec1::<f32>()?;
        let beta = self.bias.to_vec1::<f32>()?;
        let mean = self.running_mean.to_vec1::<f32>()?;
        let var = self.running_var.to_vec1::<f32>()?;
        let mut scale = Vec::with_capacity(gamma.len());
        let mut shift = Vec::with_capacity(gamma.len());
        for c in 0..gamma.len() {
            let s = gamma[c] / (var[c] + self.eps as f32).sqrt();
            scale.push(s);
            shift.push(beta[c] - mean[c] * s);
        }
        Ok((scale, shift))
    }

    fn broadcast_shape(&self, x: &Tensor) -> Vec<usize> {
        let mut shape = vec![1usize; x.rank()];
        if shape.len() >= 2 {
            shape[1] = self.channels();
        }
        shape
    }

    fn forward(&self, x: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        let shape = self.broadcast_shape(x);
        if let Mode::Probe(inputs) = mode {
            inputs.push(x.clone());
        }
        match mode {
            Mode::Eval | Mode::Probe(_) => {
                let inv_std = (self.running_var.affine(1.0, self.eps)?).sqrt()?.recip()?;
                let scale = (&self.weight * &inv_std)?;
                let shift = (&self.bias - (&self.running_mean * &scale)?)?;
                Ok(x.broadcast_mul(&scale.reshape(shape.as_slice())?)?
                    .broadcast_add(&shift.reshape(shape.as_slice())?)?)
            }
            Mode::Train(stats) => {
                let out = crate::nn::batch_norm_train(x, &self.weight, &self.bias, self.eps)?;
                let correction = if out.count > 1 {
                    out.count as f32 / (out.count - 1) as f32
                } else {
                    1.0
                };
                let unbiased: Vec<f32> = out.var.iter().map(|v| v * correction).collect();
                let dev = x.device();
                stats.push(BatchStats {
                    mean: Tensor::from_vec(out.mean, self.channels(), dev)?,
                    unbiased_var: Tensor::from_vec(unbiased, self.channels(), dev)?,
                });
                Ok(out.y)
            }
        }
    }
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }
}

impl BasicBlock {
    fn forward(&self, x: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        let out = self.conv1.forward(x, mode)?;
        let out = self.bn1.forward(&out, mode)?.relu()?;
        let out = self.conv2.forward(&out, mode)?;
        let mut out = self.bn2.forward(&out, mode)?;
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            let h = conv3.forward(&out.relu()?, mode)?;
            out = bn3.forward(&h, mode)?;
        }
        let identity = match &self.shortcut {
            Shortcut::Identity => x.clone(),
            Shortcut::ZeroPad { stride } => {
                zero_pad_shortcut(x, *stride, self.last().0.out_channels())?
            }
            Shortcut::Projection { conv, bn } => {
                let projected = conv.forward(x, mode)?;
                bn.forward(&projected, mode)?
            }
        };
        Ok((out + identity)?.relu()?)
    }
}

/// Option-A shortcut: `x[:, :, ::stride, ::stride]`, then zero channels to `out_channels`.
fn zero_pad_shortcut(x: &Tensor, stride: usize, out_channels: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if stride == 0 {
        return Err(CompressionError::Shape(
            "zero-pad shortcut with stride 0".into(),
        ));
    }
    let mut y = x.clone();
    if stride > 1 {
        let rows: Vec<u32> = (0..h).step_by(stride).map(|i| i as u32).collect();
        let cols: Vec<u32> = (0..w).step_by(stride).map(|i| i as u32).collect();
        let rows = Tensor::from_vec(rows.clone(), rows.len(), x.device())?;
        let cols = Tensor::from_vec(cols.clone(), cols.len(), x.device())?;
        y = y.index_select(&rows, 2)?.index_select(&cols, 3)?;
    }
    if out_channels < c {
        return Err(CompressionError::Shape(format!(
            "zero-pad shortcut cannot shrink {c} channels to {out_channels}"
        )));
    }
    let extra = out_channels - c;
    if extra > 0 {
        y = y.pad_with_zeros(1, extra / 2, extra - extra / 2)?;
    }
    Ok(y)
}

fn max_pool_padded(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if padding == 0 {
        return Ok(x.max_pool2d_with_stride(kernel, stride)?);
    }
    let (n, c, h, w) = x.dims4()?;
    let low = f32::MIN;
    let side = Tensor::full(low, (n, c, h, padding), x.device())?;
    let x = Tensor::cat(&[&side, x, &side], 3)?;
    let top = Tensor::full(low, (n, c, padding, w + 2 * padding), x.device())?;
    let x = Tensor::cat(&[&top, &x, &top], 2)?;
    Ok(x.max_pool2d_with_stride(kernel, stride)?)
}

impl Layer {
    fn forward(&self, x: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        match self {
            Layer::Conv2d(c) => c.forward(x, mode),
            Layer::BatchNorm(bn) => bn.forward(x, mode),
            Layer::Relu => Ok(x.relu()?),
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => match mode {
                Mode::Eval => max_pool_padded(x, *kernel, *stride, *padding),
                // candle's own max pool has a wrong backward pass (see `nn::pool`).
                Mode::Train(_) | Mode::Probe(_) => {
                    Ok(crate::nn::max_pool2d(x, *kernel, *stride, *padding)?)
                }
            },
            Layer::AvgPool2d { kernel, stride } => Ok(x.avg_pool2d_with_stride(*kernel, *stride)?),
            Layer::GlobalAvgPool => Ok(x.mean_keepdim(2)?.mean_keepdim(3)?),
            Layer::Flatten => Ok(x.flatten_from(1)?),
            Layer::Linear(l) => l.forward(x),
            Layer::BasicBlock(b) => b.forward(x, mode),
        }
    }

    /// Short name of the layer kind, for error messages and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d(_) => "conv2d",
            Layer::BatchNorm(_) => "batch_norm",
            Layer::Relu => "relu",
            Layer::MaxPool2d { .. } => "max_pool2d",
            Layer::AvgPool2d { .. } => "avg_pool2d",
            Layer::GlobalAvgPool => "global_avg_pool",
            Layer::Flatten => "flatten",
            Layer::Linear(_) => "linear",
            Layer::BasicBlock(_) => "basic_block",
        }
    }
}

/// A parametric unit seen while walking a network in traversal order.
pub(crate) enum UnitRef<'a> {
    Conv(&'a Conv2d),
    Bn(&'a BatchNorm),
    Linear(&'a Linear),
}

pub(crate) enum UnitMut<'a> {
    Conv(&'a mut Conv2d),
    Bn(&'a mut BatchNorm),
    Linear(&'a mut Linear),
}

impl Network {
    /// Runs the network in inference mode (batch norm with running statistics).
    /// `x` is `N x C x H x W`; the result is `N x classes` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, &mut Mode::Eval)
    }

    pub(crate) fn forward_mode(&self, x: &Tensor, mode: &mut Mode<'_>) -> Result<Tensor> {
        // A cheap walk over the layer shapes: malformed hand-built networks become errors
        // here instead of panics deeper down.
        self.validate()?;
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != self.input_size[..] {
            return Err(CompressionError::Shape(format!(
                "network {} expects input N x {} x {} x {}, got {:?}",
                self.architecture, self.input_size[0], self.input_size[1], self.input_size[2], dims
            )));
        }
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward(&h, mode)?;
        }
        Ok(h)
    }

    /// Runs the network in inference mode, keeping the gradient graph, and records every
    /// batch norm's input and the stage outputs (see [`Probe`]).
    pub fn probe(&self, x: &Tensor) -> Result<Probe> {
        self.validate()?;
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != self.input_size[..] {
            return Err(CompressionError::Shape(format!(
                "network {} expects input N x {} x {} x {}, got {:?}",
                self.architecture, self.input_size[0], self.input_size[1], self.input_size[2], dims
            )));
        }
        let mut bn_inputs = Vec::new();
        let mut stages = Vec::new();
        let mut current: Option<Tensor> = None;
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward(&h, &mut Mode::Probe(&mut bn_inputs))?;
            let spatial = |t: &Tensor| (t.rank() == 4).then(|| (t.dims()[2], t.dims()[3]));
            // Global pooling ends the stages: its 1 x 1 output is a summary, not a stage.
            let size = match layer {
                Layer::GlobalAvgPool => None,
                _ => spatial(&h),
            };
            match (&current, size) {
                (Some(prev), Some(size)) if spatial(prev) != Some(size) => {
                    stages.push(prev.clone());
                    current = Some(h.clone());
                }
                (_, Some(_)) => current = Some(h.clone()),
                (Some(prev), None) => {
                    stages.push(prev.clone());
                    current = None;
                }
                (None, None) => {}
            }
        }
        if let Some(prev) = current {
            stages.push(prev);
        }
        Ok(Probe {
            logits: h,
            bn_inputs,
            stages,
        })
    }

    /// The input of the last linear layer (the penultimate features), `N x D`, in inference
    /// mode: what an image encoder built from a classifier returns.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let last = self
            .layers
            .iter()
            .rposition(|l| matches!(l, Layer::Linear(_)))
            .ok_or_else(|| {
                CompressionError::Shape(format!(
                    "network {} has no linear classifier",
                    self.architecture
                ))
            })?;
        let mut h = x.clone();
        for layer in &self.layers[..last] {
            h = layer.forward(&h, &mut Mode::Eval)?;
        }
        Ok(h.flatten_from(1)?)
    }

    /// Every batch norm in traversal order (the order of [`Probe::bn_inputs`]).
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        self.units()
            .into_iter()
            .filter_map(|u| match u {
                UnitRef::Bn(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    /// Number of output classes (out features of the last linear layer).
    pub fn num_classes(&self) -> Result<usize> {
        match self.layers.iter().rev().find_map(|l| match l {
            Layer::Linear(lin) => Some(lin.out_features()),
            _ => None,
        }) {
            Some(n) => Ok(n),
            None => Err(CompressionError::Shape(format!(
                "network {} has no linear classifier",
                self.architecture
            ))),
        }
    }

    pub(crate) fn units(&self) -> Vec<UnitRef<'_>> {
        let mut out = Vec::new();
        for layer in &self.layers {
            match layer {
                Layer::Conv2d(c) => out.push(UnitRef::Conv(c)),
                Layer::BatchNorm(b) => out.push(UnitRef::Bn(b)),
                Layer::Linear(l) => out.push(UnitRef::Linear(l)),
                Layer::BasicBlock(b) => {
                    out.push(UnitRef::Conv(&b.conv1));
                    out.push(UnitRef::Bn(&b.bn1));
                    out.push(UnitRef::Conv(&b.conv2));
                    out.push(UnitRef::Bn(&b.bn2));
                    if let (Some(c), Some(n)) = (&b.conv3, &b.bn3) {
                        out.push(UnitRef::Conv(c));
                        out.push(UnitRef::Bn(n));
                    }
                    if let Shortcut::Projection { conv, bn } = &b.shortcut {
                        out.push(UnitRef::Conv(conv));
                        out.push(UnitRef::Bn(bn));
                    }
                }
                _ => {}
            }
        }
        out
    }

    pub(crate) fn units_mut(&mut self) -> Vec<UnitMut<'_>> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            match layer {
                Layer::Conv2d(c) => out.push(UnitMut::Conv(c)),
                Layer::BatchNorm(b) => out.push(UnitMut::Bn(b)),
                Layer::Linear(l) => out.push(UnitMut::Linear(l)),
                Layer::BasicBlock(b) => {
                    let b = &mut **b;
                    out.push(UnitMut::Conv(&mut b.conv1));
                    out.push(UnitMut::Bn(&mut b.bn1));
                    out.push(UnitMut::Conv(&mut b.conv2));
                    out.push(UnitMut::Bn(&mut b.bn2));
                    if let (Some(c), Some(n)) = (&mut b.conv3, &mut b.bn3) {
                        out.push(UnitMut::Conv(c));
                        out.push(UnitMut::Bn(n));
                    }
                    if let Shortcut::Projection { conv, bn } = &mut b.shortcut {
                        out.push(UnitMut::Conv(conv));
                        out.push(UnitMut::Bn(bn));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Mutable references to every trainable tensor (weights, biases, BN gamma/beta),
    /// in a fixed traversal order.
    pub(crate) fn trainable_tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = Vec::new();
        for unit in self.units_mut() {
            match unit {
                UnitMut::Conv(c) => {
                    out.push(&mut c.weight);
                    if let Some(b) = c.bias.as_mut() {
                        out.push(b);
                    }
                }
                UnitMut::Bn(b) => {
                    out.push(&mut b.weight);
                    out.push(&mut b.bias);
                }
                UnitMut::Linear(l) => {
                    out.push(&mut l.weight);
                    if let Some(b) = l.bias.as_mut() {
                        out.push(b);
                    }
                }
            }
        }
        out
    }

    /// Updates running BN statistics from a training forward pass (PyTorch rule:
    /// `running = (1 - momentum) * running + momentum * batch`, unbiased batch variance).
    pub(crate) fn apply_batch_stats(&mut self, stats: &[BatchStats], momentum: f64) -> Result<()> {
        let mut iter = stats.iter();
        for unit in self.units_mut() {
            if let UnitMut::Bn(bn) = unit {
                let Some(s) = iter.next() else {
                    return Err(CompressionError::Shape(
                        "fewer batch statistics than batch-norm layers".into(),
                    ));
                };
                bn.running_mean = ((bn.running_mean.affine(1.0 - momentum, 0.0)?)
                    + s.mean.affine(momentum, 0.0)?)?;
                bn.running_var = ((bn.running_var.affine(1.0 - momentum, 0.0)?)
                    + s.unbiased_var.affine(momentum, 0.0)?)?;
            }
        }
        Ok(())
    }

    /// Every tensor's values as bit patterns, sorted by name: what tests compare when they
    /// claim two networks are the same bit for bit.
    #[cfg(test)]
    pub(crate) fn tensor_bits(&self) -> Vec<(String, Vec<u32>)> {
        let mut named = self.named_tensors();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
            .into_iter()
            .map(|(name, t)| {
                let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (name, values.iter().map(|v| v.to_bits()).collect())
            })
            .collect()
    }

    /// All tensors with their PyTorch state-dict names (weights, biases, running stats).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for unit in self.units() {
            match unit {
                UnitRef::Conv(c) => {
                    out.push((format!("{}.weight", c.name), c.weight.clone()));
                    if let Some(b) = &c.bias {
                        out.push((format!("{}.bias", c.name), b.clone()));
                    }
                }
                UnitRef::Bn(b) => {
                    out.push((format!("{}.weight", b.name), b.weight.clone()));
                    out.push((format!("{}.bias", b.name), b.bias.clone()));
                    out.push((format!("{}.running_mean", b.name), b.running_mean.clone()));
                    out.push((format!("{}.running_var", b.name), b.running_var.clone()));
                }
                UnitRef::Linear(l) => {
                    out.push((format!("{}.weight", l.name), l.weight.clone()));
                    if let Some(b) = &l.bias {
                        out.push((format!("{}.bias", l.name), b.clone()));
                    }
                }
            }
        }
        out
    }

    /// Output widths of every conv and linear layer, by name, in traversal order.
    pub fn layer_widths(&self) -> Vec<(String, usize)> {
        self.units()
            .into_iter()
            .filter_map(|u| match u {
                UnitRef::Conv(c) => Some((c.name.clone(), c.out_channels())),
                UnitRef::Linear(l) => Some((l.name.clone(), l.out_features())),
                UnitRef::Bn(_) => None,
            })
            .collect()
    }

    /// Checks that all shapes agree for the declared input size.
    pub fn validate(&self) -> Result<()> {
        super::count::count_cost(self, self.input_size[1], self.input_size[2]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_run_forward() {
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let vgg = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        assert_eq!(vgg.forward(&x).unwrap().dims(), &[2, 10]);
        let res = Network::resnet_cifar(20, 0.25, 10, 0).unwrap();
        assert_eq!(res.forward(&x).unwrap().dims(), &[2, 10]);
        let r18 = Network::resnet18(7, 1.0 / 16.0, ResNetStem::Cifar, 0).unwrap();
        assert_eq!(r18.forward(&x).unwrap().dims(), &[2, 7]);
    }

    #[test]
    fn pytorch_names() {
        let vgg = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        let names: Vec<String> = vgg.named_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"features.0.weight".to_string()));
        assert!(names.contains(&"features.1.running_mean".to_string()));
        assert!(names.contains(&"features.3.weight".to_string()));
        assert!(names.contains(&"classifier.weight".to_string()));
        let r18 = Network::resnet18(10, 1.0 / 16.0, ResNetStem::ImageNet, 0).unwrap();
        let names: Vec<String> = r18.named_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"layer1.0.conv1.weight".to_string()));
        assert!(names.contains(&"layer2.0.downsample.0.weight".to_string()));
        assert!(names.contains(&"layer2.0.downsample.1.running_var".to_string()));
        assert!(names.contains(&"fc.bias".to_string()));
    }

    #[test]
    fn bad_constructor_arguments_are_errors() {
        assert!(Network::resnet_cifar(21, 1.0, 10, 0).is_err());
        assert!(Network::vgg16_bn_cifar(0.0, 10, 0).is_err());
        assert!(Network::vgg16_bn_cifar(1.0, 1, 0).is_err());
    }

    #[test]
    fn wrong_input_shape_is_an_error() {
        let vgg = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        let x = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(vgg.forward(&x), Err(CompressionError::Shape(_))));
    }
}
