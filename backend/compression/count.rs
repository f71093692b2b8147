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
                let mut a = counter.bn(&block.bn2, a)?;
                match (&block.conv3, &block.bn3) {
                    (Some(conv3), Some(bn3)) => {
                        let h = counter.conv(conv3, a)?;
                        a = counter.bn(bn3, h)?;
                    }
                    (None, None) => {}
                    _ => {
                        return Err(CompressionError::Shape(format!(
                            "block {}: conv3 and bn3 must be present together",
                            block.name
                        )));
                    }
                }
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
    use crate::compression::model::{CifarShortcut, VggConfig, VggItem};

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
            conv_bias: false,
            classifier_batch_norm: false,
        };
        let net = Network::vgg_cifar(&config, 1.0, 10, 1).unwrap();
        let cost = count_cost(&net, 32, 32).unwrap();
        let conv1 = 4 * 3 * 9;
        let conv2 = 8 * 4 * 9;
        let fc = 512 * 10;
        assert_eq!(cost.params, (conv1 + 8 + conv2 + 16 + fc + 10) as u64);
        assert_eq!(cost.macs, (conv1 * 32 * 32 + conv2 * 16 * 16 + fc) as u64);
    }

    // Exact counts below were computed by hand (layer by layer, in an independent script)
    // and agree with the published figures: VGG-16 1.5e7 / 3.13e8 and pruned-A 5.4e6 /
    // 2.06e8 (Li et al. 2017; Neuron Merging), ResNet-56 8.5e5 / 1.25e8, ResNet-110 1.7e6 /
    // 2.53e8 (He et al. 2016), ResNet-18 11,689,512 / 1.814G and ResNet-50 25,557,032 /
    // 4.09G (torchvision).

    fn cost(net: &Network) -> (u64, u64) {
        let [_, h, w] = net.input_size;
        let c = count_cost(net, h, w).unwrap();
        (c.params, c.macs)
    }

    #[test]
    fn vgg16_of_the_neuron_merging_authors_and_pruned_a() {
        use crate::compression::prune::{LayerRatios, PruneMethod, PruneOptions, prune};
        let net = Network::vgg16_nm_cifar(1.0, 10, 0).unwrap();
        assert_eq!(cost(&net), (14_991_946, 313_463_808));
        let mut options = PruneOptions::new(PruneMethod::L1, 0.5);
        options.layer_ratios = LayerRatios::PaperDefault;
        let pruned_a = prune(&net, &options).unwrap();
        let widths: Vec<usize> = pruned_a.layer_widths().iter().map(|w| w.1).collect();
        assert_eq!(
            widths,
            vec![
                32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256, 512, 10
            ]
        );
        assert_eq!(cost(&pruned_a), (5_399_690, 206_279_680));
    }

    #[test]
    fn vgg16_as_in_the_authors_code_has_bias_free_convs() {
        use crate::compression::prune::{LayerRatios, PruneMethod, PruneOptions, prune};
        let net = Network::vgg_cifar(&VggConfig::vgg16_nm_code(), 1.0, 10, 0).unwrap();
        // 4,224 conv biases fewer (64*2 + 128*2 + 256*3 + 512*6); the same MACs.
        assert_eq!(cost(&net), (14_991_946 - 4_224, 313_463_808));
        let mut options = PruneOptions::new(PruneMethod::L1, 0.5);
        options.layer_ratios = LayerRatios::PaperDefault;
        let pruned_a = prune(&net, &options).unwrap();
        // Pruned-A keeps 32 + 64 + 128 * 2 + 256 * 9 = 2,656 conv biases.
        assert_eq!(cost(&pruned_a), (5_399_690 - 2_656, 206_279_680));
    }

    #[test]
    fn cifar_resnets_pin_exact_counts() {
        let r56 = Network::resnet_cifar(56, 1.0, 10, 0).unwrap();
        assert_eq!(cost(&r56), (853_018, 125_485_696));
        let r110 = Network::resnet_cifar(110, 1.0, 10, 0).unwrap();
        assert_eq!(cost(&r110), (1_727_962, 252_887_680));
        // Option B adds two 1x1 conv + BN shortcuts: 16*32 + 64 and 32*64 + 128 parameters.
        let r56b = Network::resnet_cifar_with(56, 1.0, 10, CifarShortcut::Projection, 0).unwrap();
        assert_eq!(cost(&r56b), (855_770, 125_747_840));
        assert_eq!(r56b.architecture, "resnet56b_cifar");
    }

    #[test]
    fn imagenet_resnets_pin_exact_counts() {
        let r18 =
            Network::resnet18(1000, 1.0, crate::compression::ResNetStem::ImageNet, 0).unwrap();
        assert_eq!(cost(&r18), (11_689_512, 1_814_073_344));
        let r50 = Network::resnet50(1000, 1.0, 0).unwrap();
        assert_eq!(cost(&r50), (25_557_032, 4_089_184_256));
    }

    #[test]
    fn resnet50_prunes_conv1_and_conv2_of_each_bottleneck() {
        use crate::compression::prune::{PruneMethod, PruneOptions, prune, prune_sites};
        let r50 = Network::resnet50(1000, 1.0, 0).unwrap();
        let sites = prune_sites(&r50);
        assert_eq!(sites.len(), 32); // 16 bottlenecks x (conv1, conv2)
        assert!(
            sites
                .iter()
                .all(|s| s.producer.ends_with("conv1") || s.producer.ends_with("conv2"))
        );
        // Kept floor(w / 2) in conv1 and conv2 of every block; conv3 and shortcuts intact.
        let pruned = prune(&r50, &PruneOptions::new(PruneMethod::L1, 0.5)).unwrap();
        assert_eq!(cost(&pruned), (12_381_864, 1_822_031_872));
    }

    #[test]
    fn lenet_300_100_hand_count() {
        let net = Network::lenet_300_100([1, 8, 8], 10, 0).unwrap();
        // 64*300 + 300 + 300*100 + 100 + 100*10 + 10
        assert_eq!(cost(&net), (50_610, 50_200));
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
