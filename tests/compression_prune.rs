//! Pruning on tiny random networks: hand-computed shapes and counts, forward passes,
//! equivalence with zeroed channels, and the exact Neuron Merging identity.

use candle_core::{D, Device, Tensor};
use elite::compression::model::Layer;
use elite::compression::*;

fn exact() -> NeuronMergingOptions {
    NeuronMergingOptions {
        variant: MergeVariant::Exact,
        ..Default::default()
    }
}

fn input(batch: usize, seed: u64) -> Tensor {
    let values: Vec<f32> = (0..batch * 3 * 32 * 32)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed);
            ((x >> 33) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, (batch, 3, 32, 32), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// conv 3->8, bn, relu, pool, conv 8->16, bn, relu, pool, flatten (16*8*8), linear 10.
fn two_conv_net(batch_norm: bool, seed: u64) -> Network {
    let config = VggConfig {
        items: vec![
            VggItem::Conv(8),
            VggItem::MaxPool,
            VggItem::Conv(16),
            VggItem::MaxPool,
        ],
        batch_norm,
        classifier_hidden: vec![],
        global_pool: false,
        conv_bias: false,
        classifier_batch_norm: false,
    };
    Network::vgg_cifar(&config, 1.0, 10, seed).unwrap()
}

/// Gives every batch norm non-trivial statistics so that folding matters.
fn randomise_batch_norms(net: &mut Network) {
    let mut k = 0u32;
    let mut vals = |n: usize, lo: f32, hi: f32| -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| {
                k = k.wrapping_mul(1103515245).wrapping_add(12345 + i as u32);
                lo + (hi - lo) * ((k >> 8) % 1000) as f32 / 1000.0
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    };
    for layer in &mut net.layers {
        let bns: Vec<&mut BatchNorm> = match layer {
            Layer::BatchNorm(bn) => vec![bn],
            Layer::BasicBlock(b) => {
                let b = &mut **b;
                vec![&mut b.bn1, &mut b.bn2]
            }
            _ => vec![],
        };
        for bn in bns {
            let c = bn.channels();
            bn.weight = vals(c, 0.5, 1.5);
            bn.bias = vals(c, -0.2, 0.2);
            bn.running_mean = vals(c, -0.3, 0.3);
            bn.running_var = vals(c, 0.5, 2.0);
        }
    }
}

#[test]
fn every_method_gives_hand_computed_shapes_and_counts() {
    let net = two_conv_net(true, 3);
    let before = count_cost(&net, 32, 32).unwrap();
    // conv1 8*27 + bn 16 + conv2 16*8*9 + bn 32 + fc 1024*10 + 10
    assert_eq!(before.params, 216 + 16 + 1152 + 32 + 10240 + 10);
    assert_eq!(before.macs, 216 * 1024 + 1152 * 256 + 10240);
    for method in PruneMethod::all_defaults() {
        let pruned = prune(&net, &PruneOptions::new(method.clone(), 0.5)).unwrap();
        // conv1 keeps 4, conv2 keeps 8; the classifier sees 8*8*8 = 512 features.
        let widths = pruned.layer_widths();
        assert_eq!(
            widths,
            vec![
                ("features.0".to_string(), 4),
                ("features.4".to_string(), 8),
                ("classifier".to_string(), 10)
            ],
            "{}",
            method.name()
        );
        let after = count_cost(&pruned, 32, 32).unwrap();
        assert_eq!(
            after.params,
            108 + 8 + 288 + 16 + 5120 + 10,
            "{}",
            method.name()
        );
        assert_eq!(
            after.macs,
            108 * 1024 + 288 * 256 + 5120,
            "{}",
            method.name()
        );
        let y = pruned.forward(&input(2, 1)).unwrap();
        assert_eq!(y.dims(), &[2, 10]);
    }
}

#[test]
fn ratio_30_and_70_round_as_documented() {
    let net = two_conv_net(true, 4);
    let p30 = prune(&net, &PruneOptions::new(PruneMethod::L1, 0.3)).unwrap();
    // Kept: floor(8 * 0.7) = floor(5.6) = 5; floor(16 * 0.7) = floor(11.2) = 11.
    assert_eq!(p30.layer_widths()[0].1, 5);
    assert_eq!(p30.layer_widths()[1].1, 11);
    let p70 = prune(&net, &PruneOptions::new(PruneMethod::L1, 0.7)).unwrap();
    // Kept: floor(8 * 0.3) = floor(2.4) = 2; floor(16 * 0.3) = floor(4.8) = 4.
    assert_eq!(p70.layer_widths()[0].1, 2);
    assert_eq!(p70.layer_widths()[1].1, 4);
}

#[test]
fn residual_networks_prune_only_inner_convs_and_run() {
    let nets = [
        Network::resnet_cifar(20, 0.5, 10, 5).unwrap(),
        Network::resnet18(10, 1.0 / 16.0, ResNetStem::Cifar, 5).unwrap(),
    ];
    for net in nets {
        let before = net.layer_widths();
        for method in PruneMethod::all_defaults() {
            let pruned = prune(&net, &PruneOptions::new(method.clone(), 0.5)).unwrap();
            for ((name, w0), (_, w1)) in before.iter().zip(pruned.layer_widths()) {
                let inner = name.ends_with(".conv1");
                let expected = if inner { w0 / 2 } else { *w0 };
                assert_eq!(w1, expected, "{} {name}", method.name());
            }
            assert_eq!(pruned.forward(&input(2, 2)).unwrap().dims(), &[2, 10]);
        }
    }
}

#[test]
fn resnet20_hand_count_after_pruning() {
    // Width 0.25: stages of 4, 8, 16 channels, 3 blocks each. Inner convs halve.
    let net = Network::resnet_cifar(20, 0.25, 10, 0).unwrap();
    let pruned = prune(&net, &PruneOptions::new(PruneMethod::L1, 0.5)).unwrap();
    let cost = count_cost(&pruned, 32, 32).unwrap();
    // stem: conv 4*3*9 = 108, bn 8
    let mut params = 108 + 8;
    let mut macs = 108 * 1024;
    let mut c_in = 4;
    for (stage, (width, hw)) in [(4usize, 32usize), (8, 16), (16, 8)].iter().enumerate() {
        for block in 0..3 {
            let _ = stage;
            let half = width / 2;
            let conv1 = half * c_in * 9;
            let conv2 = width * half * 9;
            params += conv1 + 2 * half + conv2 + 2 * width;
            macs += (conv1 + conv2) * hw * hw;
            let _ = block;
            c_in = *width;
        }
    }
    params += 16 * 10 + 10;
    macs += 160;
    assert_eq!(cost.params, params as u64);
    assert_eq!(cost.macs, macs as u64);
}

/// A pruned network equals the original whose removed channels have their outgoing
/// (consumer) weights zeroed: pruning removes exactly those channels and nothing else.
#[test]
fn pruning_equals_zeroing_outgoing_weights() {
    let mut net = two_conv_net(true, 9);
    randomise_batch_norms(&mut net);
    let x = input(3, 5);
    for method in [
        PruneMethod::L1,
        PruneMethod::Random { seed: 3 },
        PruneMethod::RepruneFilter(Default::default()),
        PruneMethod::RepruneKernel(Default::default()),
    ] {
        let options = PruneOptions {
            method: method.clone(),
            ratio: 0.0,
            layer_ratios: LayerRatios::KeepCounts(vec![5, 16]),
        };
        let pruned = prune(&net, &options).unwrap();
        // Which channels of conv1 survived? Match rows of the pruned weight.
        let Layer::Conv2d(orig) = &net.layers[0] else {
            panic!()
        };
        let Layer::Conv2d(kept) = &pruned.layers[0] else {
            panic!()
        };
        let orig_rows = orig
            .weight
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let kept_rows = kept
            .weight
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let survivors: Vec<usize> = kept_rows
            .iter()
            .map(|r| orig_rows.iter().position(|o| o == r).unwrap())
            .collect();
        let mut zeroed = net.clone();
        // features.4 is the second conv (index 4 in `layers`: conv, bn, relu, pool, conv).
        let Layer::Conv2d(consumer) = &mut zeroed.layers[4] else {
            panic!()
        };
        let mask: Vec<f32> = (0..8)
            .map(|c| if survivors.contains(&c) { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 8, 1, 1), &Device::Cpu).unwrap();
        consumer.weight = consumer.weight.broadcast_mul(&mask).unwrap();
        let a = pruned.forward(&x).unwrap();
        let b = zeroed.forward(&x).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-4, "{}", method.name());
    }
}

/// Sets filters `n` of a site to `scale * filter p` (with biases / BN maps scaled alike).
fn make_copies_conv(
    net: &mut Network,
    conv_index: usize,
    bn_index: Option<usize>,
    pairs: &[(usize, usize, f32)],
) {
    let Layer::Conv2d(conv) = &mut net.layers[conv_index] else {
        panic!()
    };
    let mut rows = conv
        .weight
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut bias = conv.bias.as_ref().map(|b| b.to_vec1::<f32>().unwrap());
    for &(n, p, s) in pairs {
        rows[n] = rows[p].iter().map(|v| v * s).collect();
        if let Some(b) = bias.as_mut() {
            b[n] = b[p] * s;
        }
    }
    let dims = conv.weight.dims().to_vec();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    conv.weight = Tensor::from_vec(flat, dims.as_slice(), &Device::Cpu).unwrap();
    if let Some(b) = bias {
        let len = b.len();
        conv.bias = Some(Tensor::from_vec(b, len, &Device::Cpu).unwrap());
    }
    if let Some(i) = bn_index {
        let Layer::BatchNorm(bn) = &mut net.layers[i] else {
            panic!()
        };
        let mut gamma = bn.weight.to_vec1::<f32>().unwrap();
        let mut beta = bn.bias.to_vec1::<f32>().unwrap();
        let mut mean = bn.running_mean.to_vec1::<f32>().unwrap();
        let mut var = bn.running_var.to_vec1::<f32>().unwrap();
        for &(n, p, s) in pairs {
            // Same gamma and variance keep the BN scale; scaled mean and beta scale the shift.
            gamma[n] = gamma[p];
            var[n] = var[p];
            mean[n] = mean[p] * s;
            beta[n] = beta[p] * s;
        }
        let t = |v: Vec<f32>| {
            let n = v.len();
            Tensor::from_vec(v, n, &Device::Cpu).unwrap()
        };
        bn.weight = t(gamma);
        bn.bias = t(beta);
        bn.running_mean = t(mean);
        bn.running_var = t(var);
    }
}

#[test]
fn neuron_merging_is_exact_for_scaled_copies_with_batch_norm() {
    let mut net = two_conv_net(true, 11);
    randomise_batch_norms(&mut net);
    // Filters 4..8 are 0.25..0.4 times filters 0..4: L1 prunes them, merging restores them.
    let pairs = [(4, 2, 0.3), (5, 0, 0.35), (6, 3, 0.4), (7, 1, 0.25)];
    make_copies_conv(&mut net, 0, Some(1), &pairs);
    let options = PruneOptions {
        method: PruneMethod::NeuronMerging(exact()),
        ratio: 0.0,
        layer_ratios: LayerRatios::KeepCounts(vec![4, 16]),
    };
    let merged = prune(&net, &options).unwrap();
    assert_eq!(merged.layer_widths()[0].1, 4);
    let x = input(4, 3);
    let original = net.forward(&x).unwrap();
    let out = merged.forward(&x).unwrap();
    let scale = max_abs(&original).max(1.0);
    assert!(
        max_abs_diff(&original, &out) / scale < 1e-5,
        "merged output differs"
    );
    // Plain L1 pruning of the same channels does change the output.
    let l1 = prune(
        &net,
        &PruneOptions {
            method: PruneMethod::L1,
            ..options.clone()
        },
    )
    .unwrap();
    assert!(max_abs_diff(&original, &l1.forward(&x).unwrap()) / scale > 1e-3);
}

#[test]
fn neuron_merging_is_exact_for_scaled_copies_without_batch_norm() {
    // Plain convs with bias; pruned filters (and biases) are scaled copies.
    let mut net = two_conv_net(false, 12);
    let Layer::Conv2d(conv) = &mut net.layers[0] else {
        panic!()
    };
    conv.bias = Some(
        Tensor::from_vec(
            (0..8).map(|i| 0.05 * i as f32 - 0.1).collect::<Vec<_>>(),
            8,
            &Device::Cpu,
        )
        .unwrap(),
    );
    let pairs = [(1, 0, 0.2), (3, 2, 0.35), (5, 4, 0.25), (7, 6, 0.4)];
    make_copies_conv(&mut net, 0, None, &pairs);
    let options = PruneOptions {
        method: PruneMethod::NeuronMerging(NeuronMergingOptions {
            threshold: Some(0.99),
            ..Default::default()
        }),
        ratio: 0.0,
        layer_ratios: LayerRatios::KeepCounts(vec![4, 16]),
    };
    let merged = prune(&net, &options).unwrap();
    let x = input(4, 8);
    let original = net.forward(&x).unwrap();
    let scale = max_abs(&original).max(1.0);
    assert!(max_abs_diff(&original, &merged.forward(&x).unwrap()) / scale < 1e-5);
}

#[test]
fn neuron_merging_is_exact_inside_a_residual_block() {
    let mut net = Network::resnet_cifar(8, 0.5, 10, 13).unwrap();
    randomise_batch_norms(&mut net);
    // Block layer1.0 has 8 inner channels; make 4 of them scaled copies.
    let Layer::BasicBlock(block) = &mut net.layers[3] else {
        panic!()
    };
    let pairs = [
        (4usize, 0usize, 0.3f32),
        (5, 1, 0.4),
        (6, 2, 0.5),
        (7, 3, 0.2),
    ];
    let mut rows = block
        .conv1
        .weight
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut gamma = block.bn1.weight.to_vec1::<f32>().unwrap();
    let mut beta = block.bn1.bias.to_vec1::<f32>().unwrap();
    let mut mean = block.bn1.running_mean.to_vec1::<f32>().unwrap();
    let mut var = block.bn1.running_var.to_vec1::<f32>().unwrap();
    for &(n, p, s) in &pairs {
        rows[n] = rows[p].iter().map(|v| v * s).collect();
        gamma[n] = gamma[p];
        var[n] = var[p];
        mean[n] = mean[p] * s;
        beta[n] = beta[p] * s;
    }
    let dims = block.conv1.weight.dims().to_vec();
    block.conv1.weight = Tensor::from_vec(
        rows.into_iter().flatten().collect::<Vec<_>>(),
        dims.as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    block.bn1.weight = Tensor::from_vec(gamma, 8, &Device::Cpu).unwrap();
    block.bn1.bias = Tensor::from_vec(beta, 8, &Device::Cpu).unwrap();
    block.bn1.running_mean = Tensor::from_vec(mean, 8, &Device::Cpu).unwrap();
    block.bn1.running_var = Tensor::from_vec(var, 8, &Device::Cpu).unwrap();
    let sites = prune_sites(&net);
    let mut counts: Vec<usize> = sites.iter().map(|s| s.width).collect();
    counts[0] = 4;
    let options = PruneOptions {
        method: PruneMethod::NeuronMerging(exact()),
        ratio: 0.0,
        layer_ratios: LayerRatios::KeepCounts(counts),
    };
    let merged = prune(&net, &options).unwrap();
    let x = input(2, 4);
    let original = net.forward(&x).unwrap();
    let scale = max_abs(&original).max(1.0);
    assert!(max_abs_diff(&original, &merged.forward(&x).unwrap()) / scale < 1e-5);
}

#[test]
fn hidden_linear_layers_are_pruned_and_merged() {
    let config = VggConfig {
        items: vec![VggItem::Conv(4), VggItem::MaxPool],
        batch_norm: true,
        classifier_hidden: vec![12],
        global_pool: true,
        conv_bias: false,
        classifier_batch_norm: false,
    };
    let net = Network::vgg_cifar(&config, 1.0, 10, 1).unwrap();
    let sites = prune_sites(&net);
    assert_eq!(sites.len(), 2);
    assert!(!sites[1].is_conv);
    for method in PruneMethod::all_defaults() {
        let pruned = prune(&net, &PruneOptions::new(method, 0.5)).unwrap();
        assert_eq!(
            pruned
                .layer_widths()
                .iter()
                .map(|w| w.1)
                .collect::<Vec<_>>(),
            vec![2, 6, 10]
        );
        assert_eq!(pruned.forward(&input(1, 0)).unwrap().dims(), &[1, 10]);
    }
}

#[test]
fn zero_ratio_keeps_the_network_unchanged() {
    let net = two_conv_net(true, 2);
    let x = input(2, 9);
    for method in PruneMethod::all_defaults() {
        let pruned = prune(&net, &PruneOptions::new(method, 0.0)).unwrap();
        assert!(max_abs_diff(&net.forward(&x).unwrap(), &pruned.forward(&x).unwrap()) == 0.0);
    }
}

#[test]
fn bad_options_are_errors_not_panics() {
    let net = two_conv_net(true, 2);
    let wrong_len = PruneOptions {
        method: PruneMethod::L1,
        ratio: 0.5,
        layer_ratios: LayerRatios::PerSite(vec![0.5]),
    };
    assert!(matches!(
        prune(&net, &wrong_len),
        Err(CompressionError::Config(_))
    ));
    let too_many = PruneOptions {
        method: PruneMethod::L1,
        ratio: 0.5,
        layer_ratios: LayerRatios::KeepCounts(vec![9, 16]),
    };
    assert!(prune(&net, &too_many).is_err());
    let bad_nm = PruneOptions::new(
        PruneMethod::NeuronMerging(NeuronMergingOptions {
            threshold: Some(2.0),
            ..Default::default()
        }),
        0.5,
    );
    assert!(prune(&net, &bad_nm).is_err());
}

#[test]
fn options_serialise_to_json() {
    let options = PruneOptions {
        method: PruneMethod::NeuronMerging(NeuronMergingOptions::default()),
        ratio: 0.5,
        layer_ratios: LayerRatios::PaperDefault,
    };
    let json = serde_json::to_string(&options).unwrap();
    let back: PruneOptions = serde_json::from_str(&json).unwrap();
    assert_eq!(back, options);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Any method at any valid ratio gives the documented widths and a working network.
        #[test]
        fn widths_follow_the_ratio(ratio in 0.0f64..0.95, method_index in 0usize..8, seed in 0u64..4) {
            let net = two_conv_net(true, seed);
            let method = PruneMethod::all_defaults()[method_index].clone();
            let pruned = prune(&net, &PruneOptions::new(method, ratio)).unwrap();
            let widths: Vec<usize> = pruned.layer_widths().iter().map(|w| w.1).collect();
            prop_assert_eq!(
                widths,
                vec![
                    elite::compression::prune::kept_width(8, ratio),
                    elite::compression::prune::kept_width(16, ratio),
                    10
                ]
            );
            let logits = pruned.forward(&input(1, seed)).unwrap();
            prop_assert_eq!(logits.dims(), &[1, 10]);
        }
    }
}

/// Sets BN entries of channel `i` of the batch norm at `layers[index]`.
fn set_bn_entry(
    net: &mut Network,
    index: usize,
    i: usize,
    gamma: f32,
    beta: f32,
    mean: f32,
    var: f32,
) {
    let Layer::BatchNorm(bn) = &mut net.layers[index] else {
        panic!()
    };
    let set = |t: &mut Tensor, v: f32| {
        let mut values = t.to_vec1::<f32>().unwrap();
        values[i] = v;
        let n = values.len();
        *t = Tensor::from_vec(values, n, &Device::Cpu).unwrap();
    };
    set(&mut bn.weight, gamma);
    set(&mut bn.bias, beta);
    set(&mut bn.running_mean, mean);
    set(&mut bn.running_var, var);
}

/// Filter 7 of conv 1 is 0.05 x filter 0 with a *different* gamma and variance; its BN
/// entries make the folded neuron exactly z times neuron 0's. The exact variant reproduces
/// the output; the official one uses the authors' scale `s * (g_p / g_n) * (v_n / v_p)`
/// (hand computed: 0.05 * (1.2 / 0.6) * (2.0 / 0.5) = 0.4) and changes it.
#[test]
fn official_neuron_merging_differs_from_exact_when_gamma_and_variance_differ() {
    let mut net = two_conv_net(true, 21);
    randomise_batch_norms(&mut net);
    make_copies_conv(&mut net, 0, None, &[(7, 0, 0.05)]);
    let eps = 1e-5f32;
    let (g_p, b_p, m_p, v_p) = (1.2f32, 0.1f32, 0.2f32, 0.5f32);
    let (g_n, v_n) = (0.6f32, 2.0f32);
    let sigma_p = (v_p + eps).sqrt();
    let sigma_n = (v_n + eps).sqrt();
    // Folded: w^ = (g / sigma) w, b^ = beta - mean * g / sigma.
    let z_exact = 0.05 * (g_n / sigma_n) / (g_p / sigma_p);
    let folded_bias_p = b_p - m_p * g_p / sigma_p;
    set_bn_entry(&mut net, 1, 0, g_p, b_p, m_p, v_p);
    set_bn_entry(&mut net, 1, 7, g_n, z_exact * folded_bias_p, 0.0, v_n);
    let counts = LayerRatios::KeepCounts(vec![7, 16]);
    let run = |variant: MergeVariant| {
        prune(
            &net,
            &PruneOptions {
                method: PruneMethod::NeuronMerging(NeuronMergingOptions {
                    variant,
                    ..Default::default()
                }),
                ratio: 0.0,
                layer_ratios: counts.clone(),
            },
        )
        .unwrap()
    };
    let exact_net = run(MergeVariant::Exact);
    let official_net = run(MergeVariant::Official);
    // Filter 7 (0.05 x filter 0) has the smallest L1 norm, so it is the one pruned.
    let x = input(4, 6);
    let original = net.forward(&x).unwrap();
    let scale = max_abs(&original).max(1.0);
    assert!(max_abs_diff(&original, &exact_net.forward(&x).unwrap()) / scale < 1e-5);
    assert!(max_abs_diff(&original, &official_net.forward(&x).unwrap()) / scale > 1e-3);
    // The consumer's input channel 0 received filter 7's weights times the official scale.
    let consumer = |n: &Network| {
        let Layer::Conv2d(c) = &n.layers[4] else {
            panic!()
        };
        c.weight.flatten_from(2).unwrap().to_vec3::<f32>().unwrap()
    };
    let before = consumer(&net);
    let after = consumer(&official_net);
    for o in 0..16 {
        for k in 0..9 {
            let expected = before[o][0][k] + 0.4 * before[o][7][k];
            assert!((after[o][0][k] - expected).abs() < 1e-5, "{o} {k}");
        }
    }
}

/// Conv with 4 hand-written filters (only the first two weights non-zero):
/// f0 = (2.9, 0), f1 = (1.5, 1.5), f2 = (0, 1), f3 = (0, -1.5).
/// L1: 2.9, 3, 1, 1.5; L2: 2.9, 2.12, 1, 1.5; summed distances to all filters (geometric
/// median criterion): 8.385, 6.987, 7.149, 9.119. Keeping one filter: L1 keeps f1, L2 keeps
/// f0, geometric median keeps f3 (the farthest from the median).
#[test]
fn l2_and_geometric_median_baselines_follow_hand_computation() {
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
    let mut net = Network::vgg_cifar(&config, 1.0, 10, 1).unwrap();
    let filters = [(2.9f32, 0.0f32), (1.5, 1.5), (0.0, 1.0), (0.0, -1.5)];
    let mut values = vec![0f32; 4 * 27];
    for (i, (a, b)) in filters.iter().enumerate() {
        values[i * 27] = *a;
        values[i * 27 + 1] = *b;
    }
    let Layer::Conv2d(conv) = &mut net.layers[0] else {
        panic!()
    };
    conv.weight = Tensor::from_vec(values, (4, 3, 3, 3), &Device::Cpu).unwrap();
    let first_two = |method: PruneMethod, keep: usize| -> Vec<(f32, f32)> {
        let pruned = prune(
            &net,
            &PruneOptions {
                method,
                ratio: 0.0,
                layer_ratios: LayerRatios::KeepCounts(vec![keep, 8]),
            },
        )
        .unwrap();
        let Layer::Conv2d(conv) = &pruned.layers[0] else {
            panic!()
        };
        conv.weight
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| (r[0], r[1]))
            .collect()
    };
    assert_eq!(first_two(PruneMethod::L1, 1), vec![filters[1]]);
    assert_eq!(first_two(PruneMethod::L2, 1), vec![filters[0]]);
    assert_eq!(first_two(PruneMethod::GeometricMedian, 1), vec![filters[3]]);
    assert_eq!(first_two(PruneMethod::L1, 2), vec![filters[0], filters[1]]);
    assert_eq!(
        first_two(PruneMethod::GeometricMedian, 2),
        vec![filters[0], filters[3]]
    );
    // The same criteria choose Neuron Merging's pruned neurons.
    let nm_gm = PruneMethod::NeuronMerging(NeuronMergingOptions {
        criterion: SelectionCriterion::GeometricMedian,
        ..Default::default()
    });
    assert_eq!(first_two(nm_gm, 1), vec![filters[3]]);
}

#[test]
fn neuron_merging_defaults_are_the_authors_settings() {
    let net = two_conv_net(true, 1);
    let method = PruneMethod::NeuronMerging(NeuronMergingOptions::default());
    let PruneMethod::NeuronMerging(resolved) = method.resolved_for(&net).unwrap() else {
        panic!()
    };
    assert_eq!(resolved.variant, MergeVariant::Official);
    assert_eq!(resolved.threshold, Some(0.1));
    assert_eq!(resolved.lambda, Some(0.85));
    assert_eq!(resolved.criterion, SelectionCriterion::L1Norm);
    let bad_lambda = PruneOptions::new(
        PruneMethod::NeuronMerging(NeuronMergingOptions {
            lambda: Some(1.5),
            ..Default::default()
        }),
        0.5,
    );
    assert!(matches!(
        prune(&net, &bad_lambda),
        Err(CompressionError::Config(_))
    ));
}

/// Writing a pruned network back into the full one changes exactly the kept positions:
/// kept filters (rows of conv 1, its batch norm) and kept input channels of the consumer
/// take the pruned network's values; removed ones keep the full network's.
#[test]
fn scatter_writes_kept_channels_back_and_leaves_removed_ones() {
    use elite::compression::prune::{apply_all, scatter_into, select_all};
    use std::collections::HashMap;
    let mut net = two_conv_net(true, 5);
    randomise_batch_norms(&mut net);
    let options = PruneOptions::new(PruneMethod::L1, 0.5);
    let selections = select_all(&net, &options).unwrap();
    let pruned = apply_all(&net, &selections).unwrap();
    // Unchanged: the round trip gives the same network.
    let same = scatter_into(&net, &pruned, &selections).unwrap();
    let x = input(2, 1);
    assert_eq!(
        max_abs_diff(&net.forward(&x).unwrap(), &same.forward(&x).unwrap()),
        0.0
    );
    // Every pruned tensor + 1.
    let shifted: HashMap<String, Tensor> = pruned
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, (t + 1.0).unwrap()))
        .collect();
    let shifted = Network::from_topology(&pruned.topology(), &shifted).unwrap();
    let back = scatter_into(&net, &shifted, &selections).unwrap();
    let keep0 = &selections[0].keep;
    let conv = |n: &Network, i: usize| {
        let Layer::Conv2d(c) = &n.layers[i] else {
            panic!()
        };
        c.weight.flatten_from(2).unwrap().to_vec3::<f32>().unwrap()
    };
    let (w_before, w_after) = (conv(&net, 0), conv(&back, 0));
    for f in 0..8 {
        let delta = w_after[f][0][0] - w_before[f][0][0];
        let expected = if keep0.contains(&f) { 1.0 } else { 0.0 };
        assert!((delta - expected).abs() < 1e-6, "filter {f}");
    }
    let (c_before, c_after) = (conv(&net, 4), conv(&back, 4));
    let keep1 = &selections[1].keep;
    for o in 0..16 {
        for c in 0..8 {
            let delta = c_after[o][c][0] - c_before[o][c][0];
            let expected = if keep0.contains(&c) && keep1.contains(&o) {
                1.0
            } else {
                0.0
            };
            assert!((delta - expected).abs() < 1e-6, "consumer {o} {c}");
        }
    }
    // Merging selections cannot be written back.
    let nm = PruneOptions::new(PruneMethod::NeuronMerging(exact()), 0.5);
    let merged_sel = select_all(&net, &nm).unwrap();
    if merged_sel.iter().any(|s| !s.merges.is_empty()) {
        let merged = apply_all(&net, &merged_sel).unwrap();
        assert!(scatter_into(&net, &merged, &merged_sel).is_err());
    }
}
