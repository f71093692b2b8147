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

/// One entry of a VGG feature configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VggItem {
    /// 3x3 convolution with this many output channels (before the width multiplier).
    Conv(usize),
    /// 2x2 max pooling with stride 2.
    MaxPool,
    /// 2x2 average pooling with stride 2.
    AvgPool,
}

/// A VGG-style network description (CIFAR layout: 3x3 convs, 2x2 pools, small classifier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggConfig {
    pub items: Vec<VggItem>,
    pub batch_norm: bool,
    /// Hidden widths of the classifier (`classifier.0`, `classifier.2`, ...); empty means a
    /// single linear layer named `classifier`.
    pub classifier_hidden: Vec<usize>,
    /// Insert a global average pool before the classifier (otherwise the flattened feature
    /// map feeds it directly).
    pub global_pool: bool,
    /// Convolutions carry a bias even with batch norm (the Neuron Merging authors' VGG).
    #[serde(default)]
    pub conv_bias: bool,
    /// Hidden classifier layers are followed by a batch norm (`BatchNorm1d`).
    #[serde(default)]
    pub classifier_batch_norm: bool,
}

impl VggConfig {
    /// VGG-16 for 32x32 inputs (13 convs, 5 pools, one linear classifier).
    pub fn vgg16() -> Self {
        use VggItem::{Conv, MaxPool};
        let items = vec![
            Conv(64),
            Conv(64),
            MaxPool,
            Conv(128),
            Conv(128),
            MaxPool,
            Conv(256),
            Conv(256),
            Conv(256),
            MaxPool,
            Conv(512),
            Conv(512),
            Conv(512),
            MaxPool,
            Conv(512),
            Conv(512),
            Conv(512),
            MaxPool,
        ];
        VggConfig {
            items,
            batch_norm: true,
            classifier_hidden: Vec::new(),
            global_pool: false,
            conv_bias: false,
            classifier_batch_norm: false,
        }
    }

    /// VGG-16 of the Neuron Merging authors for 32x32 inputs: 13 convs with bias and batch
    /// norm, 4 max pools, a 2x2 average pool, then `Linear(512, 512) -> BatchNorm1d -> ReLU
    /// -> Linear(512, classes)`.
    pub fn vgg16_nm() -> Self {
        let mut items = VggConfig::vgg16().items;
        items.pop();
        items.push(VggItem::AvgPool);
        VggConfig {
            items,
            batch_norm: true,
            classifier_hidden: vec![512],
            global_pool: false,
            conv_bias: true,
            classifier_batch_norm: true,
        }
    }

    /// The same VGG-16 with bias-free convolutions, as in the authors' public code
    /// (`models/VGG.py`): what their checkpoints hold. The specification's pinned counts
    /// (14,991,946 parameters) include conv biases; this variant has 4,224 fewer.
    pub fn vgg16_nm_code() -> Self {
        VggConfig {
            conv_bias: false,
            ..VggConfig::vgg16_nm()
        }
    }

    /// A three-conv VGG (64, 128, 256 channels before the width multiplier, each followed by
    /// a max pool, linear classifier on the flattened 4x4 map) for tests and quick demos.
    pub fn tiny() -> Self {
        use VggItem::{Conv, MaxPool};
        VggConfig {
            items: vec![Conv(64), MaxPool, Conv(128), MaxPool, Conv(256), MaxPool],
            batch_norm: true,
            classifier_hidden: Vec::new(),
            global_pool: false,
            conv_bias: false,
            classifier_batch_norm: false,
        }
    }

    /// VGG-11 for 32x32 inputs.
    pub fn vgg11() -> Self {
        use VggItem::{Conv, MaxPool};
        let items = vec![
            Conv(64),
            MaxPool,
            Conv(128),
            MaxPool,
            Conv(256),
            Conv(256),
            MaxPool,
            Conv(512),
            Conv(512),
            MaxPool,
            Conv(512),
            Conv(512),
            MaxPool,
        ];
        VggConfig {
            items,
            batch_norm: true,
            classifier_hidden: Vec::new(),
            global_pool: false,
            conv_bias: false,
            classifier_batch_norm: false,
        }
    }
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
                crate::nn::conv2d_gather(x, &self.weight, self.padding, self.stride)?
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
                // Statistics over every dimension but the channel one; reducing a
                // contiguous `N x C x HW` view dimension by dimension is much faster on the
                // CPU than candle's multi-dimension reduction.
                let dims = x.dims().to_vec();
                let (n, c) = (dims[0], self.channels());
                let spatial: usize = dims[2..].iter().product();
                let count = n * spatial;
                let flat = x.reshape((n, c, spatial))?;
                let mean = flat
                    .sum_keepdim(2)?
                    .sum_keepdim(0)?
                    .affine(1.0 / count as f64, 0.0)?;
                let centered = flat.broadcast_sub(&mean)?;
                let var = centered
                    .sqr()?
                    .sum_keepdim(2)?
                    .sum_keepdim(0)?
                    .affine(1.0 / count as f64, 0.0)?;
                let inv_std = var.affine(1.0, self.eps)?.sqrt()?.recip()?;
                let scale = inv_std.broadcast_mul(&self.weight.reshape((1, c, 1))?)?;
                let y = centered
                    .broadcast_mul(&scale)?
                    .broadcast_add(&self.bias.reshape((1, c, 1))?)?
                    .reshape(dims.as_slice())?;
                let correction = if count > 1 {
                    count as f64 / (count - 1) as f64
                } else {
                    1.0
                };
                stats.push(BatchStats {
                    mean: mean.flatten_all()?.detach(),
                    unbiased_var: var.flatten_all()?.affine(correction, 0.0)?.detach(),
                });
                Ok(y)
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
            } => max_pool_padded(x, *kernel, *stride, *padding),
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

    // ----- constructors -------------------------------------------------------------------

    /// A VGG network from `config`, channel counts multiplied by `width_multiplier`
    /// (rounded, at least 1), for 32x32 RGB input, with seeded Kaiming initialisation.
    pub fn vgg_cifar(
        config: &VggConfig,
        width_multiplier: f64,
        num_classes: usize,
        seed: u64,
    ) -> Result<Network> {
        check_width(width_multiplier)?;
        check_classes(num_classes)?;
        if !config.items.iter().any(|i| matches!(i, VggItem::Conv(_))) {
            return Err(CompressionError::Config(
                "a VGG configuration needs at least one convolution".into(),
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layers = Vec::new();
        let mut index = 0usize;
        let mut channels = 3usize;
        let mut spatial = 32usize;
        for item in &config.items {
            match *item {
                VggItem::Conv(c) => {
                    let out = scaled(c, width_multiplier);
                    layers.push(Layer::Conv2d(init_conv(
                        &mut rng,
                        format!("features.{index}"),
                        channels,
                        out,
                        3,
                        1,
                        1,
                        !config.batch_norm || config.conv_bias,
                    )?));
                    index += 1;
                    if config.batch_norm {
                        layers.push(Layer::BatchNorm(BatchNorm::identity(
                            format!("features.{index}"),
                            out,
                        )?));
                        index += 1;
                    }
                    layers.push(Layer::Relu);
                    index += 1;
                    channels = out;
                }
                VggItem::MaxPool | VggItem::AvgPool => {
                    if spatial < 2 {
                        return Err(CompressionError::Config(
                            "too many pools for a 32x32 input".into(),
                        ));
                    }
                    layers.push(if *item == VggItem::MaxPool {
                        Layer::MaxPool2d {
                            kernel: 2,
                            stride: 2,
                            padding: 0,
                        }
                    } else {
                        Layer::AvgPool2d {
                            kernel: 2,
                            stride: 2,
                        }
                    });
                    index += 1;
                    spatial /= 2;
                }
            }
        }
        if config.global_pool {
            layers.push(Layer::GlobalAvgPool);
            spatial = 1;
        }
        layers.push(Layer::Flatten);
        let mut features = channels * spatial * spatial;
        if config.classifier_hidden.is_empty() {
            layers.push(Layer::Linear(init_linear(
                &mut rng,
                "classifier".into(),
                features,
                num_classes,
            )?));
        } else {
            let mut idx = 0usize;
            for &h in &config.classifier_hidden {
                let out = scaled(h, width_multiplier);
                layers.push(Layer::Linear(init_linear(
                    &mut rng,
                    format!("classifier.{idx}"),
                    features,
                    out,
                )?));
                idx += 1;
                if config.classifier_batch_norm {
                    layers.push(Layer::BatchNorm(BatchNorm::identity(
                        format!("classifier.{idx}"),
                        out,
                    )?));
                    idx += 1;
                }
                layers.push(Layer::Relu);
                idx += 1;
                features = out;
            }
            layers.push(Layer::Linear(init_linear(
                &mut rng,
                format!("classifier.{idx}"),
                features,
                num_classes,
            )?));
        }
        let convs = config
            .items
            .iter()
            .filter(|i| matches!(i, VggItem::Conv(_)))
            .count();
        let architecture = if *config == VggConfig::vgg16() {
            "vgg16_bn_cifar".to_string()
        } else if *config == VggConfig::vgg16_nm() {
            "vgg16_nm_cifar".to_string()
        } else if *config == VggConfig::vgg16_nm_code() {
            "vgg16_nm_code_cifar".to_string()
        } else if *config == VggConfig::vgg11() {
            "vgg11_bn_cifar".to_string()
        } else {
            format!("vgg{convs}_custom_cifar")
        };
        Ok(Network {
            architecture,
            input_size: [3, 32, 32],
            layers,
        })
    }

    /// Names accepted by [`Network::by_name`].
    pub const ARCHITECTURES: &'static str = "vgg16, vgg16_nm, vgg16_nm_code, resnet20, resnet56, resnet110, \
         resnet20b, resnet56b, resnet110b, resnet18, resnet50 or lenet300_100";

    /// A freshly initialised network by name (see [`Network::ARCHITECTURES`]; a `b` suffix
    /// on a CIFAR ResNet means option-B shortcuts). `input` is the image shape, used by
    /// LeNet-300-100 (the CNNs take 3 x 32 x 32, ResNet-50 3 x 224 x 224).
    pub fn by_name(
        name: &str,
        width_multiplier: f64,
        num_classes: usize,
        input: [usize; 3],
        seed: u64,
    ) -> Result<Network> {
        let name = name.trim().to_ascii_lowercase().replace('-', "_");
        let cifar = |depth: usize, shortcut: CifarShortcut| {
            Network::resnet_cifar_with(depth, width_multiplier, num_classes, shortcut, seed)
        };
        match name.as_str() {
            "vgg16" | "vgg16_bn" => Network::vgg16_bn_cifar(width_multiplier, num_classes, seed),
            "vgg16_nm" => Network::vgg16_nm_cifar(width_multiplier, num_classes, seed),
            "vgg16_nm_code" => Network::vgg_cifar(
                &VggConfig::vgg16_nm_code(),
                width_multiplier,
                num_classes,
                seed,
            ),
            "resnet20" => cifar(20, CifarShortcut::ZeroPad),
            "resnet56" => cifar(56, CifarShortcut::ZeroPad),
            "resnet110" => cifar(110, CifarShortcut::ZeroPad),
            "resnet20b" => cifar(20, CifarShortcut::Projection),
            "resnet56b" => cifar(56, CifarShortcut::Projection),
            "resnet110b" => cifar(110, CifarShortcut::Projection),
            "resnet18" => Network::resnet18(num_classes, width_multiplier, ResNetStem::Cifar, seed),
            "resnet50" => Network::resnet50(num_classes, width_multiplier, seed),
            "lenet300_100" | "lenet" => Network::lenet_300_100(input, num_classes, seed),
            other => Err(CompressionError::Config(format!(
                "unknown architecture {other:?}: expected {}",
                Network::ARCHITECTURES
            ))),
        }
    }

    /// VGG-16 with batch norm for 32x32 inputs (13 convs, 5 max pools, linear classifier on
    /// the 1x1 feature map), as commonly used for CIFAR.
    pub fn vgg16_bn_cifar(width_multiplier: f64, num_classes: usize, seed: u64) -> Result<Network> {
        Network::vgg_cifar(&VggConfig::vgg16(), width_multiplier, num_classes, seed)
    }

    /// VGG-16 of the Neuron Merging authors (see [`VggConfig::vgg16_nm`]), architecture
    /// tag `vgg16_nm_cifar`.
    pub fn vgg16_nm_cifar(width_multiplier: f64, num_classes: usize, seed: u64) -> Result<Network> {
        Network::vgg_cifar(&VggConfig::vgg16_nm(), width_multiplier, num_classes, seed)
    }

    /// CIFAR ResNet of depth `6n + 2` (20, 32, 44, 56, 110, ...) with option-A (zero-pad)
    /// shortcuts, base widths 16/32/64 times `width_multiplier`.
    pub fn resnet_cifar(
        depth: usize,
        width_multiplier: f64,
        num_classes: usize,
        seed: u64,
    ) -> Result<Network> {
        Network::resnet_cifar_with(
            depth,
            width_multiplier,
            num_classes,
            CifarShortcut::ZeroPad,
            seed,
        )
    }

    /// CIFAR ResNet with the chosen shortcut where the shape changes: option A (zero
    /// padding, tag `resnetD_cifar`) or option B (1x1 conv + batch norm named
    /// `layerK.i.downsample.0/1`, tag `resnetDb_cifar`, as in the Neuron Merging code).
    pub fn resnet_cifar_with(
        depth: usize,
        width_multiplier: f64,
        num_classes: usize,
        shortcut_kind: CifarShortcut,
        seed: u64,
    ) -> Result<Network> {
        check_width(width_multiplier)?;
        check_classes(num_classes)?;
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            return Err(CompressionError::Config(format!(
                "CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 56, 110, ...), got {depth}"
            )));
        }
        let blocks = (depth - 2) / 6;
        let mut rng = StdRng::seed_from_u64(seed);
        let base = scaled(16, width_multiplier);
        let mut layers = vec![
            Layer::Conv2d(init_conv(
                &mut rng,
                "conv1".into(),
                3,
                base,
                3,
                1,
                1,
                false,
            )?),
            Layer::BatchNorm(BatchNorm::identity("bn1", base)?),
            Layer::Relu,
        ];
        let mut channels = base;
        for stage in 0..3 {
            let width = scaled(16 << stage, width_multiplier);
            for i in 0..blocks {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let shortcut = if stride == 1 && channels == width {
                    Shortcut::Identity
                } else {
                    match shortcut_kind {
                        CifarShortcut::ZeroPad => Shortcut::ZeroPad { stride },
                        CifarShortcut::Projection => {
                            projection(&mut rng, &name, channels, width, stride)?
                        }
                    }
                };
                layers.push(Layer::BasicBlock(Box::new(init_block(
                    &mut rng, name, channels, width, stride, shortcut,
                )?)));
                channels = width;
            }
        }
        layers.push(Layer::GlobalAvgPool);
        layers.push(Layer::Flatten);
        layers.push(Layer::Linear(init_linear(
            &mut rng,
            "fc".into(),
            channels,
            num_classes,
        )?));
        let suffix = match shortcut_kind {
            CifarShortcut::ZeroPad => "",
            CifarShortcut::Projection => "b",
        };
        Ok(Network {
            architecture: format!("resnet{depth}{suffix}_cifar"),
            input_size: [3, 32, 32],
            layers,
        })
    }

    /// ResNet-18 (torchvision names: `conv1`, `bn1`, `layerK.i.convJ`, `downsample`, `fc`)
    /// with base widths 64/128/256/512 times `width_multiplier` (use e.g. 1/16 in tests).
    /// The input is 32x32 for the CIFAR stem and 224x224 for the ImageNet stem.
    pub fn resnet18(
        num_classes: usize,
        width_multiplier: f64,
        stem: ResNetStem,
        seed: u64,
    ) -> Result<Network> {
        check_width(width_multiplier)?;
        check_classes(num_classes)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let base = scaled(64, width_multiplier);
        let mut layers = Vec::new();
        let input = match stem {
            ResNetStem::Cifar => {
                layers.push(Layer::Conv2d(init_conv(
                    &mut rng,
                    "conv1".into(),
                    3,
                    base,
                    3,
                    1,
                    1,
                    false,
                )?));
                32
            }
            ResNetStem::ImageNet => {
                layers.push(Layer::Conv2d(init_conv(
                    &mut rng,
                    "conv1".into(),
                    3,
                    base,
                    7,
                    2,
                    3,
                    false,
                )?));
                224
            }
        };
        layers.push(Layer::BatchNorm(BatchNorm::identity("bn1", base)?));
        layers.push(Layer::Relu);
        if stem == ResNetStem::ImageNet {
            layers.push(Layer::MaxPool2d {
                kernel: 3,
                stride: 2,
                padding: 1,
            });
        }
        let mut channels = base;
        for stage in 0..4 {
            let width = scaled(64 << stage, width_multiplier);
            for i in 0..2 {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let shortcut = if stride != 1 || channels != width {
                    projection(&mut rng, &name, channels, width, stride)?
                } else {
                    Shortcut::Identity
                };
                layers.push(Layer::BasicBlock(Box::new(init_block(
                    &mut rng, name, channels, width, stride, shortcut,
                )?)));
                channels = width;
            }
        }
        layers.push(Layer::GlobalAvgPool);
        layers.push(Layer::Flatten);
        layers.push(Layer::Linear(init_linear(
            &mut rng,
            "fc".into(),
            channels,
            num_classes,
        )?));
        Ok(Network {
            architecture: "resnet18".into(),
            input_size: [3, input, input],
            layers,
        })
    }

    /// ResNet-50 for 224x224 ImageNet inputs (torchvision layout and names: bottleneck
    /// blocks 3/4/6/3 with widths 64/128/256/512 times `width_multiplier`, expansion 4,
    /// stride on the 3x3 conv, projection shortcuts where the shape changes).
    pub fn resnet50(num_classes: usize, width_multiplier: f64, seed: u64) -> Result<Network> {
        check_width(width_multiplier)?;
        check_classes(num_classes)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let base = scaled(64, width_multiplier);
        let mut layers = vec![
            Layer::Conv2d(init_conv(
                &mut rng,
                "conv1".into(),
                3,
                base,
                7,
                2,
                3,
                false,
            )?),
            Layer::BatchNorm(BatchNorm::identity("bn1", base)?),
            Layer::Relu,
            Layer::MaxPool2d {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        ];
        let mut channels = base;
        for (stage, blocks) in [3usize, 4, 6, 3].into_iter().enumerate() {
            let width = scaled(64 << stage, width_multiplier);
            for i in 0..blocks {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let shortcut = if stride != 1 || channels != width * 4 {
                    projection(&mut rng, &name, channels, width * 4, stride)?
                } else {
                    Shortcut::Identity
                };
                layers.push(Layer::BasicBlock(Box::new(init_bottleneck(
                    &mut rng, name, channels, width, stride, shortcut,
                )?)));
                channels = width * 4;
            }
        }
        layers.push(Layer::GlobalAvgPool);
        layers.push(Layer::Flatten);
        layers.push(Layer::Linear(init_linear(
            &mut rng,
            "fc".into(),
            channels,
            num_classes,
        )?));
        Ok(Network {
            architecture: "resnet50".into(),
            input_size: [3, 224, 224],
            layers,
        })
    }

    /// LeNet-300-100 (LeCun et al. 1998), the MLP of the Neuron Merging paper: flatten,
    /// `fc1` (300), ReLU, `fc2` (100), ReLU, `fc3` (classes), for inputs of `input_size`
    /// (`[1, 8, 8]` for the 64-d digits, `[1, 28, 28]` for MNIST-sized images).
    pub fn lenet_300_100(input_size: [usize; 3], num_classes: usize, seed: u64) -> Result<Network> {
        check_classes(num_classes)?;
        let features: usize = input_size.iter().product();
        if features == 0 || features > 1 << 20 {
            return Err(CompressionError::Config(format!(
                "LeNet-300-100 input {input_size:?} must have between 1 and 2^20 values"
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let layers = vec![
            Layer::Flatten,
            Layer::Linear(init_linear(&mut rng, "fc1".into(), features, 300)?),
            Layer::Relu,
            Layer::Linear(init_linear(&mut rng, "fc2".into(), 300, 100)?),
            Layer::Relu,
            Layer::Linear(init_linear(&mut rng, "fc3".into(), 100, num_classes)?),
        ];
        Ok(Network {
            architecture: "lenet300_100".into(),
            input_size,
            layers,
        })
    }

    // ----- safetensors --------------------------------------------------------------------

    /// The topology (layer kinds, names, strides, paddings) without widths or weights.
    pub fn topology(&self) -> Topology {
        Topology {
            architecture: self.architecture.clone(),
            input_size: self.input_size,
            layers: self.layers.iter().map(LayerSpec::of).collect(),
        }
    }

    /// Writes all tensors with PyTorch names (plus `num_batches_tracked` for each batch
    /// norm, as PyTorch expects) and the topology as metadata.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        std::fs::write(path, bytes).map_err(|e| CompressionError::io(path, e))
    }

    /// The bytes [`Network::save_safetensors`] writes (for storing a network in a database).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut buffers: BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
            BTreeMap::new();
        for (name, tensor) in self.named_tensors() {
            let values = tensor.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            buffers.insert(
                name,
                (safetensors::Dtype::F32, tensor.dims().to_vec(), bytes),
            );
        }
        for unit in self.units() {
            if let UnitRef::Bn(b) = unit {
                buffers.insert(
                    format!("{}.num_batches_tracked", b.name),
                    (
                        safetensors::Dtype::I64,
                        Vec::new(),
                        0i64.to_le_bytes().to_vec(),
                    ),
                );
            }
        }
        let mut views = Vec::with_capacity(buffers.len());
        for (name, (dtype, shape, bytes)) in &buffers {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| CompressionError::Checkpoint(format!("{name}: {e}")))?;
            views.push((name.clone(), view));
        }
        let topology = serde_json::to_string(&self.topology())
            .map_err(|e| CompressionError::Checkpoint(e.to_string()))?;
        let metadata = HashMap::from([
            (TOPOLOGY_METADATA_KEY.to_string(), topology),
            ("format".to_string(), "pt".to_string()),
        ]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| CompressionError::Checkpoint(e.to_string()))
    }

    /// Loads a network saved by [`Network::save_safetensors`] (topology from metadata,
    /// widths from the tensors, so pruned networks load as they are).
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Network> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| CompressionError::io(path, e))?;
        Network::from_safetensors_bytes(&bytes, path)
    }

    /// [`Network::load_safetensors`] from bytes; `origin` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], origin: &Path) -> Result<Network> {
        let path = origin;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| CompressionError::Checkpoint(format!("{}: {e}", path.display())))?;
        let topology = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(TOPOLOGY_METADATA_KEY))
            .ok_or_else(|| {
                CompressionError::Checkpoint(format!(
                    "{} has no '{TOPOLOGY_METADATA_KEY}' metadata; load it into a constructed \
                     network with Network::with_weights_from (CLI and form: --model ARCH=PATH)",
                    path.display()
                ))
            })?;
        let topology: Topology = serde_json::from_str(topology).map_err(|e| {
            CompressionError::Checkpoint(format!("{}: bad topology metadata: {e}", path.display()))
        })?;
        let tensors = read_tensors(path, bytes)?;
        Network::from_topology(&topology, &tensors)
    }

    /// Loads a PyTorch-named safetensors checkpoint into this network's topology. Widths
    /// come from the file (a pruned checkpoint loads into an unpruned skeleton); every
    /// parameter must be present, unknown names are an error, `num_batches_tracked` is
    /// ignored, and f16/bf16/f64 tensors are converted to f32.
    pub fn with_weights_from(&self, path: impl AsRef<Path>) -> Result<Network> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| CompressionError::io(path, e))?;
        let tensors = read_tensors(path, &bytes)?;
        Network::from_topology(&self.topology(), &tensors)
    }

    /// Builds a network from a topology and named tensors, then validates all shapes.
    pub fn from_topology(
        topology: &Topology,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Network> {
        let mut used = std::collections::HashSet::new();
        let mut take = |name: String| -> Result<Tensor> {
            match tensors.get(&name) {
                Some(t) => {
                    used.insert(name);
                    Ok(t.to_dtype(DType::F32)?.contiguous()?)
                }
                None => Err(CompressionError::Checkpoint(format!(
                    "missing tensor '{name}'"
                ))),
            }
        };
        let mut layers = Vec::with_capacity(topology.layers.len());
        for spec in &topology.layers {
            layers.push(spec.build(&mut take)?);
        }
        let mut unexpected: Vec<&String> = tensors
            .keys()
            .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            let shown: Vec<&str> = unexpected.iter().take(5).map(|s| s.as_str()).collect();
            return Err(CompressionError::Checkpoint(format!(
                "{} unexpected tensor(s) for architecture {}: {}",
                unexpected.len(),
                topology.architecture,
                shown.join(", ")
            )));
        }
        let network = Network {
            architecture: topology.architecture.clone(),
            input_size: topology.input_size,
            layers,
        };
        network.validate()?;
        Ok(network)
    }
}

fn read_tensors(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| CompressionError::Checkpoint(format!("{}: {e}", path.display())))
}

/// Serialisable topology of a network: everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub architecture: String,
    pub input_size: [usize; 3],
    pub layers: Vec<LayerSpec>,
}

/// Serialisable description of one layer (no widths: those come from the tensors).
// A residual block's description is larger than the others; topologies are small, read
// once per checkpoint, so boxing would only complicate the serialised form's code.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerSpec {
    Conv2d(ConvSpec),
    BatchNorm {
        name: String,
        eps: f64,
    },
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
    GlobalAvgPool,
    Flatten,
    Linear {
        name: String,
        bias: bool,
    },
    BasicBlock {
        name: String,
        conv1: ConvSpec,
        bn1: String,
        conv2: ConvSpec,
        bn2: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv3: Option<ConvSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bn3: Option<String>,
        shortcut: ShortcutSpec,
    },
}

/// Serialisable convolution hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    pub name: String,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

/// Serialisable shortcut description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShortcutSpec {
    Identity,
    ZeroPad { stride: usize },
    Projection { conv: ConvSpec, bn: String },
}

impl ConvSpec {
    fn of(c: &Conv2d) -> Self {
        ConvSpec {
            name: c.name.clone(),
            stride: c.stride,
            padding: c.padding,
            bias: c.bias.is_some(),
        }
    }
    fn build(&self, take: &mut dyn FnMut(String) -> Result<Tensor>) -> Result<Conv2d> {
        let weight = take(format!("{}.weight", self.name))?;
        if weight.rank() != 4 {
            return Err(CompressionError::Checkpoint(format!(
                "'{}.weight' must have 4 dimensions, has shape {:?}",
                self.name,
                weight.dims()
            )));
        }
        let bias = if self.bias {
            Some(take(format!("{}.bias", self.name))?)
        } else {
            None
        };
        if self.stride == 0 {
            return Err(CompressionError::Checkpoint(format!(
                "convolution {} has stride 0",
                self.name
            )));
        }
        Ok(Conv2d {
            name: self.name.clone(),
            weight,
            bias,
            stride: self.stride,
            padding: self.padding,
        })
    }
}

fn build_bn(
    name: &str,
    eps: f64,
    take: &mut dyn FnMut(String) -> Result<Tensor>,
) -> Result<BatchNorm> {
    Ok(BatchNorm {
        name: name.to_string(),
        weight: take(format!("{name}.weight"))?,
        bias: take(format!("{name}.bias"))?,
        running_mean: take(format!("{name}.running_mean"))?,
        running_var: take(format!("{name}.running_var"))?,
        eps,
    })
}

impl LayerSpec {
    fn of(layer: &Layer) -> Self {
        match layer {
            Layer::Conv2d(c) => LayerSpec::Conv2d(ConvSpec::of(c)),
            Layer::BatchNorm(b) => LayerSpec::BatchNorm {
                name: b.name.clone(),
                eps: b.eps,
            },
            Layer::Relu => LayerSpec::Relu,
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => LayerSpec::MaxPool2d {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            },
            Layer::AvgPool2d { kernel, stride } => LayerSpec::AvgPool2d {
                kernel: *kernel,
                stride: *stride,
            },
            Layer::GlobalAvgPool => LayerSpec::GlobalAvgPool,
            Layer::Flatten => LayerSpec::Flatten,
            Layer::Linear(l) => LayerSpec::Linear {
                name: l.name.clone(),
                bias: l.bias.is_some(),
            },
            Layer::BasicBlock(b) => LayerSpec::BasicBlock {
                name: b.name.clone(),
                conv1: ConvSpec::of(&b.conv1),
                bn1: b.bn1.name.clone(),
                conv2: ConvSpec::of(&b.conv2),
                bn2: b.bn2.name.clone(),
                conv3: b.conv3.as_ref().map(ConvSpec::of),
                bn3: b.bn3.as_ref().map(|b| b.name.clone()),
                shortcut: match &b.shortcut {
                    Shortcut::Identity => ShortcutSpec::Identity,
                    Shortcut::ZeroPad { stride } => ShortcutSpec::ZeroPad { stride: *stride },
                    Shortcut::Projection { conv, bn } => ShortcutSpec::Projection {
                        conv: ConvSpec::of(conv),
                        bn: bn.name.clone(),
                    },
                },
            },
        }
    }

    fn build(&self, take: &mut dyn FnMut(String) -> Result<Tensor>) -> Result<Layer> {
        Ok(match self {
            LayerSpec::Conv2d(c) => Layer::Conv2d(c.build(take)?),
            LayerSpec::BatchNorm { name, eps } => Layer::BatchNorm(build_bn(name, *eps, take)?),
            LayerSpec::Relu => Layer::Relu,
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
            } => Layer::MaxPool2d {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            },
            LayerSpec::AvgPool2d { kernel, stride } => Layer::AvgPool2d {
                kernel: *kernel,
                stride: *stride,
            },
            LayerSpec::GlobalAvgPool => Layer::GlobalAvgPool,
            LayerSpec::Flatten => Layer::Flatten,
            LayerSpec::Linear { name, bias } => Layer::Linear(Linear {
                name: name.clone(),
                weight: take(format!("{name}.weight"))?,
                bias: if *bias {
                    Some(take(format!("{name}.bias"))?)
                } else {
                    None
                },
            }),
            LayerSpec::BasicBlock {
                name,
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                shortcut,
            } => Layer::BasicBlock(Box::new(BasicBlock {
                name: name.clone(),
                conv1: conv1.build(take)?,
                bn1: build_bn(bn1, BN_EPS, take)?,
                conv2: conv2.build(take)?,
                bn2: build_bn(bn2, BN_EPS, take)?,
                conv3: match conv3 {
                    Some(c) => Some(c.build(take)?),
                    None => None,
                },
                bn3: match bn3 {
                    Some(b) => Some(build_bn(b, BN_EPS, take)?),
                    None => None,
                },
                shortcut: match shortcut {
                    ShortcutSpec::Identity => Shortcut::Identity,
                    ShortcutSpec::ZeroPad { stride } => Shortcut::ZeroPad { stride: *stride },
                    ShortcutSpec::Projection { conv, bn } => Shortcut::Projection {
                        conv: conv.build(take)?,
                        bn: build_bn(bn, BN_EPS, take)?,
                    },
                },
            })),
        })
    }
}

// ----- initialisation helpers ---------------------------------------------------------------

fn check_width(width_multiplier: f64) -> Result<()> {
    if !(width_multiplier.is_finite() && width_multiplier > 0.0) {
        return Err(CompressionError::Config(format!(
            "width multiplier must be a positive number, got {width_multiplier}"
        )));
    }
    Ok(())
}

fn check_classes(num_classes: usize) -> Result<()> {
    if num_classes < 2 {
        return Err(CompressionError::Config(format!(
            "a classifier needs at least 2 classes, got {num_classes}"
        )));
    }
    Ok(())
}

fn scaled(channels: usize, width_multiplier: f64) -> usize {
    ((channels as f64 * width_multiplier).round() as usize).max(1)
}

/// A standard normal sample (Box-Muller), so initialisation depends only on the seed.
pub(crate) fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[allow(clippy::too_many_arguments)]
fn init_conv(
    rng: &mut StdRng,
    name: String,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
) -> Result<Conv2d> {
    // Kaiming normal, fan_out, ReLU gain (torchvision's choice for ResNets and VGG).
    let fan_out = (out_channels * kernel * kernel) as f32;
    let std = (2.0 / fan_out).sqrt();
    let n = out_channels * in_channels * kernel * kernel;
    let values: Vec<f32> = (0..n).map(|_| standard_normal(rng) * std).collect();
    let weight = Tensor::from_vec(
        values,
        (out_channels, in_channels, kernel, kernel),
        &Device::Cpu,
    )?;
    let bias = if bias {
        Some(Tensor::zeros(out_channels, DType::F32, &Device::Cpu)?)
    } else {
        None
    };
    Ok(Conv2d {
        name,
        weight,
        bias,
        stride,
        padding,
    })
}

fn init_linear(
    rng: &mut StdRng,
    name: String,
    in_features: usize,
    out_features: usize,
) -> Result<Linear> {
    // PyTorch default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    let bound = 1.0 / (in_features as f32).sqrt();
    let w: Vec<f32> = (0..in_features * out_features)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let b: Vec<f32> = (0..out_features)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Linear {
        name,
        weight: Tensor::from_vec(w, (out_features, in_features), &Device::Cpu)?,
        bias: Some(Tensor::from_vec(b, out_features, &Device::Cpu)?),
    })
}

fn projection(
    rng: &mut StdRng,
    name: &str,
    channels: usize,
    width: usize,
    stride: usize,
) -> Result<Shortcut> {
    Ok(Shortcut::Projection {
        conv: init_conv(
            rng,
            format!("{name}.downsample.0"),
            channels,
            width,
            1,
            stride,
            0,
            false,
        )?,
        bn: BatchNorm::identity(format!("{name}.downsample.1"), width)?,
    })
}

fn init_bottleneck(
    rng: &mut StdRng,
    name: String,
    in_channels: usize,
    width: usize,
    stride: usize,
    shortcut: Shortcut,
) -> Result<BasicBlock> {
    let out = width * 4;
    Ok(BasicBlock {
        conv1: init_conv(
            rng,
            format!("{name}.conv1"),
            in_channels,
            width,
            1,
            1,
            0,
            false,
        )?,
        bn1: BatchNorm::identity(format!("{name}.bn1"), width)?,
        conv2: init_conv(
            rng,
            format!("{name}.conv2"),
            width,
            width,
            3,
            stride,
            1,
            false,
        )?,
        bn2: BatchNorm::identity(format!("{name}.bn2"), width)?,
        conv3: Some(init_conv(
            rng,
            format!("{name}.conv3"),
            width,
            out,
            1,
            1,
            0,
            false,
        )?),
        bn3: Some(BatchNorm::identity(format!("{name}.bn3"), out)?),
        shortcut,
        name,
    })
}

fn init_block(
    rng: &mut StdRng,
    name: String,
    in_channels: usize,
    width: usize,
    stride: usize,
    shortcut: Shortcut,
) -> Result<BasicBlock> {
    Ok(BasicBlock {
        conv1: init_conv(
            rng,
            format!("{name}.conv1"),
            in_channels,
            width,
            3,
            stride,
            1,
            false,
        )?,
        bn1: BatchNorm::identity(format!("{name}.bn1"), width)?,
        conv2: init_conv(rng, format!("{name}.conv2"), width, width, 3, 1, 1, false)?,
        bn2: BatchNorm::identity(format!("{name}.bn2"), width)?,
        conv3: None,
        bn3: None,
        shortcut,
        name,
    })
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
