//! The networks the platform builds: VGG from a [`VggConfig`] (VGG-16 in the Neuron Merging
//! authors' layout among them), CIFAR ResNets with either shortcut, ResNet-18 and the
//! bottleneck ResNet-50, LeNet-300-100, and their seeded Kaiming initialisation.

use super::*;

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

impl Network {
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
