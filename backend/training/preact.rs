//! PreAct-ResNet-18 for 32x32 inputs, the network of the mixup papers (Manifold Mixup,
//! PuzzleMix, Co-Mixup, GuidedMixup, Catch-up Mix), with a width multiplier for CPU runs.
//!
//! Layout (widths for `width = 1`):
//! - stem: conv 3x3, 3 -> 64, stride 1, padding 1, no bias;
//! - four stages of two pre-activation basic blocks, widths 64 / 128 / 256 / 512, the first
//!   block of a stage with stride 1 / 2 / 2 / 2. A block computes
//!   `a = relu(bn1(x)); y = conv2(relu(bn2(conv1(a)))) + s`, where the shortcut `s` is `x`
//!   when shape is kept and `conv1x1(a)` (no batch norm, no bias) when stride or width
//!   changes: the shortcut sees the pre-activated input, as in He et al.'s pre-activation
//!   code and the mixup papers' copies of it;
//! - head: batch norm, ReLU, global average pooling, linear layer with bias.
//!
//! The net is exposed as six [`Classifier`] blocks: 1 = stem, 2..=5 = stages, 6 = head, so
//! hidden state 0 is the input, 1 the stem output, 2..=5 the stage outputs, 6 the logits.
//!
//! Initialisation (one seeded generator, see [`Params`]): convolutions Kaiming normal with
//! fan-out and ReLU gain, `std = sqrt(2 / (out_channels * k * k))` (torchvision's ResNet
//! choice); batch norm weight 1, bias 0, running mean 0, running variance 1; the linear
//! layer PyTorch's default, weight and bias uniform in `+-1 / sqrt(in_features)`.
//! Batch norm: eps 1e-5, momentum 0.1; its running statistics are registered in the
//! [`VarMap`] under `<layer>.running_mean` / `<layer>.running_var`.
//!
//! Parameter names follow the PyTorch module tree: `conv1.weight`,
//! `layer{1..4}.{0,1}.{bn1,conv1,bn2,conv2,shortcut.0}.*`, `bn.*`, `linear.*`.

use candle_core::{D, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, Linear, VarMap};

use super::{Classifier, Params, Result, TrainingError, count_parameters};

/// Base widths of the stem and the four stages at `width = 1`.
const BASE_WIDTHS: [usize; 4] = [64, 128, 256, 512];
/// Stride of the first block of each stage.
const STRIDES: [usize; 4] = [1, 2, 2, 2];
/// Blocks per stage.
const BLOCKS_PER_STAGE: usize = 2;
/// Number of [`Classifier`] blocks: stem, four stages, head.
const STAGES: usize = 6;
const BN_EPS: f64 = 1e-5;

/// Kaiming-normal (fan-out, ReLU gain) convolution weight without bias.
fn conv(
    p: &mut Params,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
) -> Result<Conv2d> {
    let std = (2.0 / (cout * k * k) as f32).sqrt();
    let w = p.normal(&format!("{name}.weight"), &[cout, cin, k, k], 0.0, std)?;
    Ok(Conv2d {
        weight: w,
        padding: k / 2,
        stride,
    })
}

/// A bias-free convolution through [`crate::nn::conv2d`] (im2col + gemm as one op),
/// whose backward pass is several times faster on the CPU than candle's own.
struct Conv2d {
    weight: Tensor,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::nn::conv2d(x, &self.weight, self.padding, self.stride)
    }
}

/// Batch norm with weight 1, bias 0 and fresh running statistics, all in the var map.
fn batch_norm(p: &mut Params, name: &str, n: usize) -> Result<BatchNorm> {
    let weight = p.constant(&format!("{name}.weight"), &[n], 1.0)?;
    let bias = p.constant(&format!("{name}.bias"), &[n], 0.0)?;
    let mean = p.constant(&format!("{name}.running_mean"), &[n], 0.0)?;
    let var = p.constant(&format!("{name}.running_var"), &[n], 1.0)?;
    Ok(BatchNorm::new(n, mean, var, weight, bias, BN_EPS)?)
}

/// One pre-activation basic block.
struct PreActBlock {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl PreActBlock {
    fn new(p: &mut Params, name: &str, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let bn1 = batch_norm(p, &format!("{name}.bn1"), cin)?;
        let conv1 = conv(p, &format!("{name}.conv1"), cin, cout, 3, stride)?;
        let bn2 = batch_norm(p, &format!("{name}.bn2"), cout)?;
        let conv2 = conv(p, &format!("{name}.conv2"), cout, cout, 3, 1)?;
        let shortcut = if stride != 1 || cin != cout {
            Some(conv(
                p,
                &format!("{name}.shortcut.0"),
                cin,
                cout,
                1,
                stride,
            )?)
        } else {
            None
        };
        Ok(PreActBlock {
            bn1,
            conv1,
            bn2,
            conv2,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let a = self.bn1.forward_t(x, train)?.relu()?;
        let skip = match &self.shortcut {
            Some(sc) => sc.forward(&a)?,
            None => x.clone(),
        };
        let y = self.conv1.forward(&a)?;
        let y = self.bn2.forward_t(&y, train)?.relu()?;
        let y = self.conv2.forward(&y)?;
        Ok((y + skip)?)
    }
}

/// PreAct-ResNet-18 with a width multiplier; see the module documentation.
pub struct PreActResNet18 {
    stem: Conv2d,
    stages: Vec<Vec<PreActBlock>>,
    bn: BatchNorm,
    linear: Linear,
    widths: [usize; 4],
    num_classes: usize,
    varmap: VarMap,
}

impl PreActResNet18 {
    /// A freshly initialised net. `width` in `(0, 2]` scales the widths 64/128/256/512
    /// (rounded, at least one channel each); `num_classes` in `2..=1000`; `seed` fixes every
    /// initial value.
    pub fn new(width: f64, num_classes: usize, seed: u64) -> Result<Self> {
        if !(width.is_finite() && width > 0.0 && width <= 2.0) {
            return Err(TrainingError::Config(format!(
                "PreAct-ResNet-18 width multiplier must be in (0, 2], got {width}"
            )));
        }
        if !(2..=1000).contains(&num_classes) {
            return Err(TrainingError::Config(format!(
                "PreAct-ResNet-18 needs 2 to 1000 classes, got {num_classes}"
            )));
        }
        let widths = BASE_WIDTHS.map(|w| ((w as f64 * width).round() as usize).max(1));
        let mut p = Params::new(seed);
        let stem = conv(&mut p, "conv1", 3, widths[0], 3, 1)?;
        let mut stages = Vec::with_capacity(4);
        let mut cin = widths[0];
        for (s, (&cout, &stride)) in widths.iter().zip(STRIDES.iter()).enumerate() {
            let mut blocks = Vec::with_capacity(BLOCKS_PER_STAGE);
            for b in 0..BLOCKS_PER_STAGE {
                let name = format!("layer{}.{b}", s + 1);
                let stride = if b == 0 { stride } else { 1 };
                blocks.push(PreActBlock::new(&mut p, &name, cin, cout, stride)?);
                cin = cout;
            }
            stages.push(blocks);
        }
        let bn = batch_norm(&mut p, "bn", cin)?;
        let bound = 1.0 / (cin as f32).sqrt();
        let w = p.uniform("linear.weight", &[num_classes, cin], bound)?;
        let b = p.uniform("linear.bias", &[num_classes], bound)?;
        let linear = Linear::new(w, Some(b));
        Ok(PreActResNet18 {
            stem,
            stages,
            bn,
            linear,
            widths,
            num_classes,
            varmap: p.into_varmap(),
        })
    }

    /// Channels of hidden states 0..=5: the input (3), the stem, and the four stages.
    pub fn stage_channels(&self) -> [usize; 6] {
        let w = self.widths;
        [3, w[0], w[0], w[1], w[2], w[3]]
    }

    /// Number of classes of the head.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Trainable scalars (batch-norm running statistics excluded).
    pub fn num_parameters(&self) -> usize {
        count_parameters(&self.varmap)
    }

    /// Applies block `k` (1-based) to hidden state `k - 1`.
    fn block(&self, k: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        match k {
            1 => Ok(self.stem.forward(x)?),
            2..=5 => {
                let mut h = x.clone();
                for block in &self.stages[k - 2] {
                    h = block.forward_t(&h, train)?;
                }
                Ok(h)
            }
            6 => {
                let h = self.bn.forward_t(x, train)?.relu()?;
                let pooled = h.flatten_from(2)?.mean(D::Minus1)?;
                Ok(self.linear.forward(&pooled)?)
            }
            _ => Err(TrainingError::Config(format!(
                "PreAct-ResNet-18 has blocks 1..=6, asked for block {k}"
            ))),
        }
    }
}

impl Classifier for PreActResNet18 {
    fn stages(&self) -> usize {
        STAGES
    }

    fn forward_range(&self, x: &Tensor, from: usize, to: usize, train: bool) -> Result<Tensor> {
        if from > to || to > STAGES {
            return Err(TrainingError::Config(format!(
                "forward range {from}..{to} is not within 0 <= from <= to <= {STAGES}"
            )));
        }
        if from < STAGES {
            let want = self.stage_channels()[from];
            if x.rank() != 4 || x.dim(1)? != want {
                return Err(TrainingError::Config(format!(
                    "hidden state {from} must be N x {want} x H x W, got {:?}",
                    x.dims()
                )));
            }
        }
        let mut h = x.clone();
        for k in from + 1..=to {
            h = self.block(k, &h, train)?;
        }
        Ok(h)
    }

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn images(n: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * 3 * 32 * 32)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        Tensor::from_vec(v, (n, 3, 32, 32), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Hand count: stem conv, per block two BNs (2 scalars per channel), two 3x3 convs and an
    /// optional 1x1 shortcut, head BN and linear layer with bias.
    fn hand_count(w: [usize; 4], classes: usize) -> usize {
        let block = |cin: usize, cout: usize, shortcut: bool| {
            2 * cin
                + 9 * cin * cout
                + 2 * cout
                + 9 * cout * cout
                + usize::from(shortcut) * cin * cout
        };
        let stem = 3 * w[0] * 9;
        let mut body = 0;
        let mut cin = w[0];
        for (s, &cout) in w.iter().enumerate() {
            let shortcut = s > 0 || cin != cout;
            body += block(cin, cout, shortcut) + block(cout, cout, false);
            cin = cout;
        }
        let head = 2 * cin + cin * classes + classes;
        stem + body + head
    }

    #[test]
    fn parameter_count_matches_hand_formula() {
        let net = PreActResNet18::new(1.0, 10, 0).unwrap();
        assert_eq!(hand_count([64, 128, 256, 512], 10), 11_172_170);
        // 11,171,146 (the often quoted figure) is the same net without the head batch norm.
        assert_eq!(net.num_parameters(), 11_172_170);
        assert_eq!(net.num_parameters() - 2 * 512, 11_171_146);
        let small = PreActResNet18::new(0.125, 10, 0).unwrap();
        assert_eq!(small.stage_channels(), [3, 8, 8, 16, 32, 64]);
        assert_eq!(small.num_parameters(), hand_count([8, 16, 32, 64], 10));
        let c100 = PreActResNet18::new(0.125, 100, 0).unwrap();
        assert_eq!(c100.num_parameters(), hand_count([8, 16, 32, 64], 100));
    }

    #[test]
    fn widths_round_and_stay_positive() {
        let net = PreActResNet18::new(0.001, 3, 0).unwrap();
        assert_eq!(net.stage_channels(), [3, 1, 1, 1, 1, 1]);
        let net = PreActResNet18::new(0.0625, 3, 0).unwrap();
        assert_eq!(net.stage_channels(), [3, 4, 4, 8, 16, 32]);
    }

    #[test]
    fn split_forward_equals_full_forward_and_shapes() {
        let net = PreActResNet18::new(0.0625, 10, 7).unwrap();
        let x = images(3, 1);
        let full = net.forward(&x, false).unwrap();
        assert_eq!(full.dims(), &[3, 10]);
        let channels = net.stage_channels();
        let sides = [32, 32, 32, 16, 8, 4];
        for k in 0..=6 {
            let h = net.forward_range(&x, 0, k, false).unwrap();
            if k < 6 {
                assert_eq!(h.dims(), &[3, channels[k], sides[k], sides[k]], "state {k}");
            }
            let out = net.forward_range(&h, k, 6, false).unwrap();
            assert!(max_abs_diff(&out, &full) < 1e-5, "split at {k}");
        }
        // Training mode runs and gives the same shape.
        assert_eq!(net.forward(&x, true).unwrap().dims(), &[3, 10]);
    }

    #[test]
    fn same_seed_same_logits() {
        let x = images(2, 3);
        let a = PreActResNet18::new(0.0625, 10, 42).unwrap();
        let b = PreActResNet18::new(0.0625, 10, 42).unwrap();
        let c = PreActResNet18::new(0.0625, 10, 43).unwrap();
        let la = a.forward(&x, false).unwrap();
        let lb = b.forward(&x, false).unwrap();
        let lc = c.forward(&x, false).unwrap();
        assert_eq!(max_abs_diff(&la, &lb), 0.0);
        assert!(max_abs_diff(&la, &lc) > 0.0);
    }

    #[test]
    fn training_mode_updates_running_statistics_in_the_varmap() {
        let net = PreActResNet18::new(0.0625, 10, 5).unwrap();
        let x = images(4, 2);
        let read = |name: &str| {
            let data = net.varmap().data().lock().unwrap();
            data[name].as_tensor().to_vec1::<f32>().unwrap()
        };
        assert!(read("layer1.0.bn1.running_mean").iter().all(|&v| v == 0.0));
        net.forward(&x, false).unwrap();
        assert!(read("layer1.0.bn1.running_mean").iter().all(|&v| v == 0.0));
        net.forward(&x, true).unwrap();
        assert!(read("layer1.0.bn1.running_mean").iter().any(|&v| v != 0.0));
        assert!(read("bn.running_var").iter().any(|&v| v != 1.0));
    }

    #[test]
    fn rejects_bad_configuration_and_ranges() {
        assert!(PreActResNet18::new(0.0, 10, 0).is_err());
        assert!(PreActResNet18::new(2.5, 10, 0).is_err());
        assert!(PreActResNet18::new(f64::NAN, 10, 0).is_err());
        assert!(PreActResNet18::new(1.0, 1, 0).is_err());
        assert!(PreActResNet18::new(1.0, 1001, 0).is_err());
        let net = PreActResNet18::new(0.0625, 10, 0).unwrap();
        let x = images(1, 0);
        assert!(net.forward_range(&x, 2, 1, false).is_err());
        assert!(net.forward_range(&x, 0, 7, false).is_err());
        // Wrong channel count for hidden state 2.
        assert!(net.forward_range(&x, 2, 6, false).is_err());
        let same = net.forward_range(&x, 0, 0, false).unwrap();
        assert_eq!(max_abs_diff(&same, &x), 0.0);
    }
}
