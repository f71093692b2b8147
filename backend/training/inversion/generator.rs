//! NaturalInversion's three learned parts, all fresh for every batch ("one-to-one"):
//!
//! - [`Generator`]: a fixed latent `z ~ N(0, I_latent)` per image, concatenated with the
//!   image's one-hot label (as many classes as the teacher has), then `Linear -> 128 x s x s`
//!   (`s` = side / 4), batch norm, LeakyReLU(0.2), upsample x2, conv 3x3 128 -> 128, batch
//!   norm, LeakyReLU, upsample x2, conv 3x3 128 -> 64, batch norm, LeakyReLU, conv 3x3
//!   64 -> image channels, no output activation. Its batch norms always use the batch's
//!   statistics (the generator trains).
//! - [`FeaturePyramid`] (Feature Transfer Pyramid): over the teacher's stage outputs
//!   `f_1 .. f_K` of the generated batch (highest resolution first, taken without gradient),
//!   `m = f_K`, then for `k = K .. 2`: `m = conv3x3(conv1x1(up(m)) + f_(k-1))` with the 1x1
//!   convolution mapping to `f_(k-1)`'s channels; `r = conv1x1(m)` to the image channels
//!   (upsampled to the image side if `f_1` is smaller), and the output is
//!   `tanh(conv1x1(x1 + r))`. For ResNet-34 (`K = 4`) this is the spec's pyramid; other
//!   teachers use however many stages they have.
//! - [`ChannelScaling`] (Adaptive Channel Scaling): `alpha * x`, `alpha` one learnable factor
//!   per image and channel, initialised from N(5, 1).
//!
//! Initialisation (spec): the generator's batch-norm weights N(1, 0.02), biases 0; its
//! convolutions Kaiming normal (fan-in, ReLU gain: `std = sqrt(2 / fan_in)`). Platform
//! choices where the spec is silent: the generator's convolution biases start at 0, its
//! linear layer and all the pyramid's convolutions take PyTorch's default initialisation
//! (uniform in `+-1 / sqrt(fan_in)`, weights and biases; with Kaiming normal weights the
//! pyramid's seven stacked convolutions amplify the teacher's features until the `tanh`
//! saturates and the images turn flat), and upsampling is nearest-neighbour (PyTorch's
//! `nn.Upsample` default).

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::nn::conv2d;

const BN_EPS: f64 = 1e-5;
const LEAKY_SLOPE: f64 = 0.2;
/// Channels of the generator's first feature map.
const GEN_WIDTH: usize = 128;

fn normal_var(rng: &mut StdRng, shape: &[usize], mean: f32, std: f32) -> Result<Var> {
    let dist = Normal::new(mean, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| dist.sample(rng)).collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn zeros_var(n: usize) -> Result<Var> {
    Var::zeros(n, DType::F32, &Device::Cpu)
}

/// `x` repeated `factor` times along height and width (nearest-neighbour upsampling).
pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    if factor == 1 {
        return Ok(x.clone());
    }
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, factor, w, factor))?
        .reshape((b, c, h * factor, w * factor))
}

fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    x.maximum(&x.affine(LEAKY_SLOPE, 0.0)?)
}

/// A convolution with bias, Kaiming-normal weights.
struct Conv {
    weight: Var,
    bias: Var,
    padding: usize,
}

impl Conv {
    fn new(rng: &mut StdRng, cin: usize, cout: usize, k: usize) -> Result<Self> {
        let std = (2.0 / (cin * k * k) as f32).sqrt();
        Ok(Conv {
            weight: normal_var(rng, &[cout, cin, k, k], 0.0, std)?,
            bias: zeros_var(cout)?,
            padding: k / 2,
        })
    }

    /// PyTorch's default initialisation of `nn.Conv2d`: weight and bias uniform in
    /// `+-1 / sqrt(fan_in)`.
    fn pytorch_default(rng: &mut StdRng, cin: usize, cout: usize, k: usize) -> Result<Self> {
        let fan_in = cin * k * k;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut uniform = |shape: &[usize]| -> Result<Var> {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
            Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu)?)
        };
        Ok(Conv {
            weight: uniform(&[cout, cin, k, k])?,
            bias: uniform(&[cout])?,
            padding: k / 2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d(x, self.weight.as_tensor(), self.padding, 1)?;
        let c = self.bias.as_tensor().elem_count();
        y.broadcast_add(&self.bias.as_tensor().reshape((1, c, 1, 1))?)
    }

    fn vars(&self) -> [Var; 2] {
        [self.weight.clone(), self.bias.clone()]
    }
}

/// Batch norm on batch statistics (the generator is always training).
struct TrainBn {
    gamma: Var,
    beta: Var,
}

impl TrainBn {
    fn new(rng: &mut StdRng, channels: usize) -> Result<Self> {
        Ok(TrainBn {
            gamma: normal_var(rng, &[channels], 1.0, 0.02)?,
            beta: zeros_var(channels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let flat = x.reshape((n, c, h * w))?;
        let count = (n * h * w) as f64;
        let mean = flat
            .sum_keepdim(2)?
            .sum_keepdim(0)?
            .affine(1.0 / count, 0.0)?;
        let centered = flat.broadcast_sub(&mean)?;
        let var = centered
            .sqr()?
            .sum_keepdim(2)?
            .sum_keepdim(0)?
            .affine(1.0 / count, 0.0)?;
        let scale = var
            .affine(1.0, BN_EPS)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.gamma.as_tensor().reshape((1, c, 1))?)?;
        centered
            .broadcast_mul(&scale)?
            .broadcast_add(&self.beta.as_tensor().reshape((1, c, 1))?)?
            .reshape((n, c, h, w))
    }

    fn vars(&self) -> [Var; 2] {
        [self.gamma.clone(), self.beta.clone()]
    }
}

/// NaturalInversion's per-batch generator.
pub struct Generator {
    /// `B x (latent + classes)`: the fixed latent codes and one-hot labels.
    input: Tensor,
    linear_weight: Var,
    linear_bias: Var,
    bn0: TrainBn,
    conv1: Conv,
    bn1: TrainBn,
    conv2: Conv,
    bn2: TrainBn,
    conv3: Conv,
    side: usize,
}

impl Generator {
    /// A fresh generator for `labels` (one image each) over `classes` classes, drawing
    /// images of `channels x side x side`; `side` must be a multiple of 4.
    pub fn new(
        rng: &mut StdRng,
        labels: &[u32],
        classes: usize,
        latent: usize,
        channels: usize,
        side: usize,
    ) -> Result<Self> {
        if side < 4 || !side.is_multiple_of(4) {
            candle_core::bail!(
                "the generator draws images whose side is a multiple of 4, not {side}"
            );
        }
        let b = labels.len();
        let z = normal_var(rng, &[b, latent], 0.0, 1.0)?
            .as_tensor()
            .detach();
        let one_hot = crate::nn::loss::one_hot(labels, classes)?;
        let input = Tensor::cat(&[&z, &one_hot], 1)?;
        let fan_in = latent + classes;
        let s = side / 4;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut uniform = |n: usize| -> Result<Var> {
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
            Var::from_tensor(&Tensor::from_vec(values, n, &Device::Cpu)?)
        };
        let out = GEN_WIDTH * s * s;
        let linear_weight =
            Var::from_tensor(&uniform(out * fan_in)?.as_tensor().reshape((out, fan_in))?)?;
        let linear_bias = uniform(out)?;
        Ok(Generator {
            input,
            linear_weight,
            linear_bias,
            bn0: TrainBn::new(rng, GEN_WIDTH)?,
            conv1: Conv::new(rng, GEN_WIDTH, GEN_WIDTH, 3)?,
            bn1: TrainBn::new(rng, GEN_WIDTH)?,
            conv2: Conv::new(rng, GEN_WIDTH, 64, 3)?,
            bn2: TrainBn::new(rng, 64)?,
            conv3: Conv::new(rng, 64, channels, 3)?,
            side,
        })
    }

    /// The batch `x1 = G(z, y)`.
    pub fn forward(&self) -> Result<Tensor> {
        let b = self.input.dim(0)?;
        let s = self.side / 4;
        let h = self
            .input
            .matmul(&self.linear_weight.as_tensor().t()?)?
            .broadcast_add(self.linear_bias.as_tensor())?
            .reshape((b, GEN_WIDTH, s, s))?;
        let h = leaky_relu(&self.bn0.forward(&h)?)?;
        let h = self.conv1.forward(&upsample_nearest(&h, 2)?)?;
        let h = leaky_relu(&self.bn1.forward(&h)?)?;
        let h = self.conv2.forward(&upsample_nearest(&h, 2)?)?;
        let h = leaky_relu(&self.bn2.forward(&h)?)?;
        self.conv3.forward(&h)
    }

    pub fn vars(&self) -> Vec<Var> {
        let mut v = vec![self.linear_weight.clone(), self.linear_bias.clone()];
        v.extend(self.bn0.vars());
        v.extend(self.conv1.vars());
        v.extend(self.bn1.vars());
        v.extend(self.conv2.vars());
        v.extend(self.bn2.vars());
        v.extend(self.conv3.vars());
        v
    }
}

/// Shape of one teacher stage output: channels and spatial side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageShape {
    pub channels: usize,
    pub side: usize,
}

/// The Feature Transfer Pyramid.
pub struct FeaturePyramid {
    /// For `k = K .. 2` (in that order): the 1x1 convolution to stage `k - 1`'s channels,
    /// the 3x3 convolution after the sum, and the upsampling factor from stage `k`.
    levels: Vec<(Conv, Conv, usize)>,
    to_image: Conv,
    image_factor: usize,
    mix: Conv,
}

impl FeaturePyramid {
    /// A pyramid over stages of these shapes (highest resolution first) for images of
    /// `channels x side x side`.
    pub fn new(
        rng: &mut StdRng,
        stages: &[StageShape],
        channels: usize,
        side: usize,
    ) -> Result<Self> {
        let Some(first) = stages.first() else {
            candle_core::bail!("the teacher has no convolutional stages");
        };
        let factor = |big: usize, small: usize| -> Result<usize> {
            if small == 0 || !big.is_multiple_of(small) || big < small {
                candle_core::bail!("stage sides {big} and {small} are not an integer ratio apart");
            }
            Ok(big / small)
        };
        let mut levels = Vec::new();
        for k in (1..stages.len()).rev() {
            let (from, to) = (stages[k], stages[k - 1]);
            levels.push((
                Conv::pytorch_default(rng, from.channels, to.channels, 1)?,
                Conv::pytorch_default(rng, to.channels, to.channels, 3)?,
                factor(to.side, from.side)?,
            ));
        }
        Ok(FeaturePyramid {
            levels,
            to_image: Conv::pytorch_default(rng, first.channels, channels, 1)?,
            image_factor: factor(side, first.side)?,
            mix: Conv::pytorch_default(rng, channels, channels, 1)?,
        })
    }

    /// `x2 = tanh(conv1x1(x1 + r))` with `r` read off the stage outputs `features`.
    pub fn forward(&self, x1: &Tensor, features: &[Tensor]) -> Result<Tensor> {
        if features.len() != self.levels.len() + 1 {
            candle_core::bail!(
                "the pyramid was built for {} stages, got {}",
                self.levels.len() + 1,
                features.len()
            );
        }
        let mut m = features[features.len() - 1].clone();
        for (i, (lateral, smooth, factor)) in self.levels.iter().enumerate() {
            let below = &features[features.len() - 2 - i];
            m = lateral.forward(&upsample_nearest(&m, *factor)?)?;
            m = smooth.forward(&(m + below)?)?;
        }
        let r = upsample_nearest(&self.to_image.forward(&m)?, self.image_factor)?;
        self.mix.forward(&(x1 + r)?)?.tanh()
    }

    pub fn vars(&self) -> Vec<Var> {
        let mut v = Vec::new();
        for (a, b, _) in &self.levels {
            v.extend(a.vars());
            v.extend(b.vars());
        }
        v.extend(self.to_image.vars());
        v.extend(self.mix.vars());
        v
    }
}

/// Adaptive Channel Scaling: one learnable factor per image and channel.
pub struct ChannelScaling {
    alpha: Var,
}

impl ChannelScaling {
    pub fn new(rng: &mut StdRng, batch: usize, channels: usize) -> Result<Self> {
        Ok(ChannelScaling {
            alpha: normal_var(rng, &[batch, channels], 5.0, 1.0)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        x.broadcast_mul(&self.alpha.as_tensor().reshape((b, c, 1, 1))?)
    }

    pub fn vars(&self) -> Vec<Var> {
        vec![self.alpha.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shapes_follow_the_teacher() {
        let mut rng = StdRng::seed_from_u64(1);
        let labels: Vec<u32> = (0..6).map(|i| i % 13).collect();
        let g = Generator::new(&mut rng, &labels, 13, 16, 3, 16).unwrap();
        let x1 = g.forward().unwrap();
        assert_eq!(x1.dims(), &[6, 3, 16, 16]);
        // The one-hot part has as many columns as the teacher has classes.
        assert_eq!(g.input.dims(), &[6, 16 + 13]);
        let stages = [
            StageShape {
                channels: 8,
                side: 16,
            },
            StageShape {
                channels: 16,
                side: 8,
            },
            StageShape {
                channels: 32,
                side: 4,
            },
        ];
        let ftp = FeaturePyramid::new(&mut rng, &stages, 3, 16).unwrap();
        assert_eq!(ftp.levels.len(), 2);
        let features: Vec<Tensor> = stages
            .iter()
            .map(|s| {
                Tensor::zeros((6, s.channels, s.side, s.side), DType::F32, &Device::Cpu).unwrap()
            })
            .collect();
        let x2 = ftp.forward(&x1, &features).unwrap();
        assert_eq!(x2.dims(), &[6, 3, 16, 16]);
        let max = x2
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= 1.0);
        let acs = ChannelScaling::new(&mut rng, 6, 3).unwrap();
        assert_eq!(acs.forward(&x2).unwrap().dims(), &[6, 3, 16, 16]);
        assert!(Generator::new(&mut rng, &labels, 13, 16, 3, 18).is_err());
    }

    #[test]
    fn upsampling_repeats_pixels() {
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = upsample_nearest(&x, 2).unwrap();
        let rows = y
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(rows[0], vec![1., 1., 2., 2.]);
        assert_eq!(rows[3], vec![3., 3., 4., 4.]);
    }
}
