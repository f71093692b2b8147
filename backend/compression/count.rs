//! Exact parameter and FLOP counts.
//!
//! Parameters: every learnable scalar (conv and linear weights and biases, batch-norm gamma
//! and beta); running statistics are buffers, not parameters (as in PyTorch's
//! `parameters()`). FLOPs are counted as multiply-accumulates (MACs) of conv and linear
//! layers only: a conv producing `C_out x H_out x W_out` from `C_in` channels with a
//! `kh x kw` kernel costs `C_out * H_out * W_out * C_in * kh * kw`; a linear layer costs
//! `in * out`. Bias additions, batch norm, activations, pooling and residual additions are
//! not counted (the convention of the pruning papers). The walk also checks every shape,
//! which makes it the network validator.

use serde::{Deserialize, Serialize};

use super::model::{BatchNorm, Conv2d, Layer, Network, Shortcut};
use super::{CompressionError, Result};

/// Cost of one parametric layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCost {
    pub name: String,
    pub params: u64,
    pub macs: u64,
}

/// Cost of a whole network for one input image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCost {
    pub params: u64,
    pub macs: u64,
    pub layers: Vec<LayerCost>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Map { c: usize, h: usize, w: usize },
    Flat(usize),
}

struct Counter {
    layers: Vec<LayerCost>,
}

impl Counter {
    fn conv(&mut self, conv: &Conv2d, input: Activation) -> Result<Activation> {
        let Activation::Map { c, h, w } = input else {
            return Err(CompressionError::Shape(format!(
                "conv {} needs a feature map input",
                conv.name
            )));
        };
        let dims = conv.weight.dims();
        if dims.len() != 4 {
            return Err(CompressionError::Shape(format!(
                "conv {} weight must be 4-D, is {:?}",
                conv.name, dims
            )));
        }
        let (out, inp, kh, kw) = (dims[0], dims[1], dims[2], dims[3]);
        if inp != c {
            return Err(CompressionError::Shape(format!(
                "conv {} expects {inp} input channels, receives {c}",
                conv.name
            )));
        }
        if let Some(b) = &conv.bias
            && b.dims() != [out]
        {
            return Err(CompressionError::Shape(format!(
                "conv {} bias has shape {:?}, expected [{out}]",
                conv.name,
                b.dims()
            )));
        }
        let ho = out_size(h, kh, conv.stride, conv.padding, &conv.name)?;
        let wo = out_size(w, kw, conv.stride, conv.padding, &conv.name)?;
        let weights = (out * inp * kh * kw) as u64;
        let bias = conv.bias.as_ref().map_or(0, |_| out as u64);
        self.layers.push(LayerCost {
            name: conv.name.clone(),
            params: weights + bias,
            macs: weights * (ho * wo) as u64,
        });
        Ok(Activation::Map {
            c: out,
            h: ho,
            w: wo,
        })
    }

    fn bn(&mut self, bn: &BatchNorm, input: Activation) -> Result<Activation> {
        let c = match input {
            Activation::Map { c, .. } => c,
            Activation::Flat(n) => n,
        };
        for (what, t) in [
            ("weight", &bn.weight),
            ("bias", &bn.bias),
            ("running_mean", &bn.running_mean),
            ("running_var", &bn.running_var),
        ] {
            if t.dims() != [c] {
                return Err(CompressionError::Shape(format!(
                    "batch norm {} {what} has shape {:?}, expected [{c}]",
                    bn.name,
                    t.dims()
                )));
            }
        }
        self.layers.push(LayerCost {
            name: bn.name.clone(),
            params: 2 * c as u64,
            macs: 0,
        });
        Ok(input)
    }
}

fn out_size(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    name: &str,
) -> Result<usize> {
    if stride == 0 || kernel == 0 || size + 2 * padding < kernel {
        return Err(CompressionError::Shape(format!(
            "{name}: kernel {kernel} (stride {stride}, padding {padding}) does not fit input size {size}"
        )));
    }
    Ok((size + 2 * padding - kernel) / stride + 1)
}

/// Counts parameters and MACs of `network` for one `3 x height x width` image (the channel
/// count comes from the network's declared input size), checking all shapes on the way.
pub fn count_cost(network: &Network, height: usize, width: usize) -> Result<ModelCost> {
    let mut counter = Counter { layers: Vec::new() };
    let mut act = Activation::Map {
        c: network.input_size[0],
        h: height,
        w: width,
    };
    for layer in &network.layers {
        act = match layer {
            Layer::Conv2d(conv) => counter.conv(conv, act)?,
            Layer::BatchNorm(bn) => counter.bn(bn, act)?,
            Layer::Relu => act,
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => pool(act, *kernel, *stride, *padding)?,
            Layer::AvgPool2d { kernel, stride } => pool(act, *kernel, *stride, 0)?,
            Layer::GlobalAvgPool => match act {
                Activation::Map { c, .. } => Activation::Map { c, h: 1, w: 1 },
                Activation::Flat(_) => {
                    return Err(CompressionError::Shape(
                        "global average pool needs a feature map input".into(),
                    ));
                }
            },
            Layer::Flatten => match act {
                Activation::Map { c, h, w } => Activation::Flat(c * h * w),
                flat => flat,
            },
            Layer::Linear(lin) => {
                let Activation::Flat(n) = act else {
                    return Err(CompressionError::Shape(format!(
                        "linear {} needs a flattened input (add a flatten layer)",
                        lin.name
                    )));
                };
                let dims = lin.weight.dims();
                if dims.len() != 2 || dims[1] != n {
                    return Err(CompressionError::Shape(format!(
                        "linear {} weight {:?} does not accept {n} input features",
                        lin.name, dims
                    )));
                }
                let out = dims[0];
                if let Some(b) = &lin.bias
                    && b.dims() != [out]
                {
                    return Err(CompressionError::Shape(format!(
                        "linear {} bias has shape {:?}, expected [{out}]",
                        lin.name,
                        b.dims()
                    )));
                }
                let weights = (out * n) as u64;
                counter.layers.push(LayerCost {
                    name: lin.name.clone(),
                    params: weights + lin.bias.as_ref().map_or(0, |_| out as u64),
                    macs: weights,
                });
                Activation::Flat(out)
            }
            Layer::BasicBlock(block) => {
                let a = counter.conv(&block.conv1, act)?;
                let a = counter.bn(&block.bn1, a)?;
                let a = counter.conv(&block.conv2, a)?;
                let a = counter.bn(&block.bn2, a)?;
                let shortcut = match &block.shortcut {
                    Shortcut::Identity => act,
                    Shortcut::ZeroPad { stride: 0 } => {
                        return Err(CompressionError::Shape(format!(
                            "block {}: zero-pad shortcut with stride 0",
                            block.name
                        )));
                    }
                    Shortcut::ZeroPad { stride } => match act {
                        Activation::Map { c, h, w } => {
                            let Activation::Map { c: out, .. } = a else {
                                return Err(not_a_feature_map(&block.name));
                            };
                            if out < c {
                                return Err(CompressionError::Shape(format!(
                                    "block {}: zero-pad shortcut cannot map {c} to {out} channels",
                                    block.name
                                )));
                            }
                            Activation::Map {
                                c: out,
                                h: h.div_ceil(*stride),
                                w: w.div_ceil(*stride),
                            }
                        }
                        Activation::Flat(_) => {
                            return Err(not_a_feature_map(&block.name));
                        }
                    },
                    Shortcut::Projection { conv, bn } => {
                        let s = counter.conv(conv, act)?;
                        counter.bn(bn, s)?
                    }
                };
                if shortcut != a {
                    return Err(CompressionError::Shape(format!(
                        "block {}: residual branch gives {a:?} but shortcut gives {shortcut:?}",
                        block.name
                    )));
                }
                a
            }
        };
    }
    let params = counter.layers.iter().map(|l| l.params).sum();
    let macs = counter.layers.iter().map(|l| l.macs).sum();
    Ok(ModelCost {
        params,
        macs,
        layers: counter.layers,
    })
}

fn not_a_feature_map(block: &str) -> CompressionError {
    CompressionError::Shape(format!("residual block {block} needs a feature map input"))
}

fn pool(act: Activation, kernel: usize, stride: usize, padding: usize) -> Result<Activation> {
    match act {
        Activation::Map { c, h, w } => Ok(Activation::Map {
            c,
            h: out_size(h, kernel, stride, padding, "pool")?,
            w: out_size(w, kernel, stride, padding, "pool")?,
        }),
        Activation::Flat(_) => Err(CompressionError::Shape(
            "pooling needs a feature map input".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::model::{VggConfig, VggItem};

    #[test]
    fn hand_counted_small_conv_net() {
        // conv 3->4 (3x3, bias-free, BN) on 32x32, pool, conv 4->8 on 16x16, pool,
        // flatten 8*8*8 = 512 -> linear 10.
        let config = VggConfig {
            items: vec![
                VggItem::Conv(4),
                VggItem::MaxPool,
                VggItem::Conv(8),
                VggItem::MaxPool,
            ],
            batch_norm: true,
            classifier_hidden: vec![],
            global_pool: false,
        };
        let net = Network::vgg_cifar(&config, 1.0, 10, 1).unwrap();
        let cost = count_cost(&net, 32, 32).unwrap();
        let conv1 = 4 * 3 * 9;
        let conv2 = 8 * 4 * 9;
        let fc = 512 * 10;
        assert_eq!(cost.params, (conv1 + 8 + conv2 + 16 + fc + 10) as u64);
        assert_eq!(cost.macs, (conv1 * 32 * 32 + conv2 * 16 * 16 + fc) as u64);
    }

    #[test]
    fn resnet56_matches_published_size() {
        // ResNet-56 (option A) has about 0.85M parameters and 125M MACs on CIFAR.
        let net = Network::resnet_cifar(56, 1.0, 10, 0).unwrap();
        let cost = count_cost(&net, 32, 32).unwrap();
        assert!(
            (850_000..=860_000).contains(&cost.params),
            "{}",
            cost.params
        );
        assert!(
            (125_000_000..=127_000_000).contains(&cost.macs),
            "{}",
            cost.macs
        );
    }

    #[test]
    fn vgg16_matches_published_size() {
        // VGG-16 (CIFAR, BN, single linear classifier): 14.73M parameters, 313M MACs.
        let net = Network::vgg16_bn_cifar(1.0, 10, 0).unwrap();
        let cost = count_cost(&net, 32, 32).unwrap();
        assert!(
            (14_700_000..=14_760_000).contains(&cost.params),
            "{}",
            cost.params
        );
        assert!(
            (313_000_000..=314_000_000).contains(&cost.macs),
            "{}",
            cost.macs
        );
    }
}
