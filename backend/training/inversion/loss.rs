//! The loss terms of model inversion (DeepInversion, CVPR 2020; NaturalInversion, AAAI 2022),
//! as differentiable candle expressions of the image batch.
//!
//! - [`total_variation`]: the sum, over four neighbour directions (right, down and the two
//!   diagonals), of the L2 norm of the whole difference tensor;
//! - [`l2_norm`]: the L2 norm of the whole batch;
//! - [`bn_statistics`]: for every batch norm of the teacher, `||mu(x) - running_mean||_2 +
//!   ||var(x) - running_var||_2`, where `mu` and the biased `var` of the layer's input are
//!   taken over the batch and every spatial position;
//! - [`competition`]: Adaptive DeepInversion's term `1 - clamp(JS, 0, 1)` between teacher and
//!   student at temperature 3, with the Jensen-Shannon divergence taken as the authors' code
//!   does: `0.5 KL(M || P) + 0.5 KL(M || Q)` over probabilities clamped to `[0.01, 0.99]`,
//!   averaged over the batch.
//!
//! Norms are `sqrt(sum of squares + 1e-12)`: the square root of exactly zero would make the
//! gradient infinite, where PyTorch's `norm` gives 0; the offset changes no value by more
//! than 1e-6.

use candle_core::{D, Result, Tensor};

use crate::compression::BatchNorm;

const NORM_OFFSET: f64 = 1e-12;

fn norm(t: &Tensor) -> Result<Tensor> {
    t.sqr()?.sum_all()?.affine(1.0, NORM_OFFSET)?.sqrt()
}

/// L2 norm of the whole tensor.
pub fn l2_norm(x: &Tensor) -> Result<Tensor> {
    norm(x)
}

/// Total variation of an `N x C x H x W` batch: the L2 norms of the differences to the right,
/// downward and along both diagonals, summed.
pub fn total_variation(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("total variation needs images of at least 2 x 2, got {h} x {w}");
    }
    let rows = |t: &Tensor, from: usize| t.narrow(2, from, h - 1);
    let cols = |t: &Tensor, from: usize| t.narrow(3, from, w - 1);
    // x[:, :, :, :-1] - x[:, :, :, 1:]
    let right = (cols(x, 0)? - cols(x, 1)?)?;
    // x[:, :, :-1, :] - x[:, :, 1:, :]
    let down = (rows(x, 0)? - rows(x, 1)?)?;
    // x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    let anti = (cols(&rows(x, 1)?, 0)? - cols(&rows(x, 0)?, 1)?)?;
    // x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    let diagonal = (cols(&rows(x, 0)?, 0)? - cols(&rows(x, 1)?, 1)?)?;
    (norm(&right)? + norm(&down)?)? + (norm(&anti)? + norm(&diagonal)?)?
}

/// Per-channel mean and biased variance of a batch-norm input (`N x C x ...`) over every
/// dimension but the channel one.
pub fn channel_statistics(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = x.dims();
    if dims.len() < 2 {
        candle_core::bail!("batch-norm input must be N x C x ..., got {dims:?}");
    }
    let (n, c) = (dims[0], dims[1]);
    let spatial: usize = dims[2..].iter().product();
    let count = (n * spatial).max(1) as f64;
    let flat = x.reshape((n, c, spatial))?;
    let mean = flat
        .sum_keepdim(2)?
        .sum_keepdim(0)?
        .affine(1.0 / count, 0.0)?;
    let var = flat
        .broadcast_sub(&mean)?
        .sqr()?
        .sum_keepdim(2)?
        .sum_keepdim(0)?
        .affine(1.0 / count, 0.0)?;
    Ok((mean.flatten_all()?, var.flatten_all()?))
}

/// One batch norm's distance between the batch statistics of its input and its running
/// statistics: `||mu - running_mean||_2 + ||var - running_var||_2`.
pub fn bn_layer_distance(input: &Tensor, bn: &BatchNorm) -> Result<Tensor> {
    let (mean, var) = channel_statistics(input)?;
    norm(&(mean - &bn.running_mean)?)? + norm(&(var - &bn.running_var)?)?
}

/// The sum of [`bn_layer_distance`] over all batch norms (inputs in the same order).
pub fn bn_statistics(inputs: &[Tensor], bns: &[&BatchNorm]) -> Result<Tensor> {
    if inputs.len() != bns.len() || inputs.is_empty() {
        candle_core::bail!(
            "{} batch-norm inputs for {} batch norms (inversion needs at least one)",
            inputs.len(),
            bns.len()
        );
    }
    let mut total = bn_layer_distance(&inputs[0], bns[0])?;
    for (input, bn) in inputs.iter().zip(bns).skip(1) {
        total = (total + bn_layer_distance(input, bn)?)?;
    }
    Ok(total)
}

/// Adaptive DeepInversion's competition term, `1 - clamp(JS(teacher, student), 0, 1)` at
/// `temperature` (the authors use 3).
pub fn competition(teacher: &Tensor, student: &Tensor, temperature: f64) -> Result<Tensor> {
    let soft = |z: &Tensor| candle_nn::ops::softmax(&z.affine(1.0 / temperature, 0.0)?, D::Minus1);
    let p = soft(student)?;
    let q = soft(teacher)?;
    let m = ((&p + &q)? * 0.5)?;
    let (lo, hi) = (0.01f32, 0.99f32);
    let (p, q, m) = (p.clamp(lo, hi)?, q.clamp(lo, hi)?, m.clamp(lo, hi)?);
    let batch = teacher.dim(0)?.max(1) as f64;
    // PyTorch's KLDivLoss(log P, M) with batch mean: sum M (log M - log P) / N.
    let kl = |log_other: &Tensor| -> Result<Tensor> {
        (&m * (m.log()? - log_other)?)?
            .sum_all()?
            .affine(1.0 / batch, 0.0)
    };
    let js = ((kl(&p.log()?)? + kl(&q.log()?)?)? * 0.5)?;
    js.clamp(0f32, 1f32)?.affine(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bn_distance_by_hand() {
        // Two images of one channel, 1 x 2 each: values {1, 3} and {5, 7}.
        let x = Tensor::new(&[[[[1f32, 3.]]], [[[5., 7.]]]], &Device::Cpu).unwrap();
        let mut bn = BatchNorm::identity("bn", 1).unwrap();
        bn.running_mean = Tensor::new(&[2f32], &Device::Cpu).unwrap();
        bn.running_var = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        // mean = 4, biased var = ((9 + 1 + 1 + 9) / 4) = 5: |4 - 2| + |5 - 1| = 6.
        let d = bn_layer_distance(&x, &bn)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((d - 6.0).abs() < 1e-5, "{d}");
    }

    #[test]
    fn total_variation_by_hand() {
        // One 2 x 2 image [[0, 1], [2, 4]]: right diffs (-1, -2) -> sqrt 5; down (-2, -3) ->
        // sqrt 13; anti x[1,0] - x[0,1] = 1 -> 1; diagonal x[0,0] - x[1,1] = -4 -> 4.
        let x = Tensor::new(&[[[[0f32, 1.], [2., 4.]]]], &Device::Cpu).unwrap();
        let tv = total_variation(&x).unwrap().to_scalar::<f32>().unwrap();
        let expected = 5f32.sqrt() + 13f32.sqrt() + 1.0 + 4.0;
        assert!((tv - expected).abs() < 1e-5, "{tv} vs {expected}");
    }

    #[test]
    fn competition_is_one_when_teacher_and_student_agree() {
        let z = Tensor::new(&[[3f32, -1., 0.5], [0., 2., 1.]], &Device::Cpu).unwrap();
        let same = competition(&z, &z, 3.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((same - 1.0).abs() < 1e-6, "{same}");
        let other = Tensor::new(&[[-3f32, 4., 0.], [5., -2., 0.]], &Device::Cpu).unwrap();
        let apart = competition(&z, &other, 3.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(apart < 1.0, "{apart}");
    }

    /// Total variation, L2 and the batch-norm distance against NumPy
    /// (`scripts/training/inversion_fixture.py`).
    #[test]
    fn numpy_reference() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/data/training/inversion.json"))
                .unwrap();
        let scale = fixture["scale"].as_f64().unwrap() as f32;
        let ints = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_i64().unwrap() as f32 * scale)
                .collect()
        };
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        for case in cases {
            let shape: Vec<usize> = case["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let x = Tensor::from_vec(ints(&case["ints"]), shape.as_slice(), &Device::Cpu).unwrap();
            let mut bn = BatchNorm::identity("bn", shape[1]).unwrap();
            bn.running_mean = Tensor::new(ints(&case["running_mean_ints"]), &Device::Cpu).unwrap();
            bn.running_var = Tensor::new(ints(&case["running_var_ints"]), &Device::Cpu).unwrap();
            let close = |ours: f32, key: &str| {
                let want = case[key].as_f64().unwrap();
                let rel = (ours as f64 - want).abs() / want.abs().max(1e-6);
                assert!(rel < 1e-5, "{key} {shape:?}: {ours} vs NumPy {want}");
            };
            close(total_variation(&x).unwrap().to_scalar().unwrap(), "tv");
            close(l2_norm(&x).unwrap().to_scalar().unwrap(), "l2");
            close(
                bn_layer_distance(&x, &bn).unwrap().to_scalar().unwrap(),
                "bn",
            );
        }
    }

    /// The statistics term over a whole tiny network equals the hand computation: a 1x1
    /// convolution that doubles its input feeds the one batch norm.
    #[test]
    fn bn_statistics_of_a_tiny_net_by_hand() {
        use crate::compression::{Conv2d, Layer, Linear, Network};
        let dev = Device::Cpu;
        let mut bn = BatchNorm::identity("bn", 1).unwrap();
        bn.running_mean = Tensor::new(&[1f32], &dev).unwrap();
        bn.running_var = Tensor::new(&[2f32], &dev).unwrap();
        let net = Network {
            architecture: "tiny".into(),
            input_size: [1, 1, 2],
            layers: vec![
                Layer::Conv2d(Conv2d {
                    name: "conv".into(),
                    weight: Tensor::new(&[[[[2f32]]]], &dev).unwrap(),
                    bias: None,
                    stride: 1,
                    padding: 0,
                }),
                Layer::BatchNorm(bn),
                Layer::Relu,
                Layer::GlobalAvgPool,
                Layer::Flatten,
                Layer::Linear(Linear {
                    name: "fc".into(),
                    weight: Tensor::new(&[[1f32], [-1.]], &dev).unwrap(),
                    bias: None,
                }),
            ],
        };
        // Inputs {0, 1} and {2, 3}: the batch norm sees {0, 2, 4, 6}, mean 3, biased variance
        // (9 + 1 + 1 + 9) / 4 = 5: |3 - 1| + |5 - 2| = 5.
        let x = Tensor::new(&[[[[0f32, 1.]]], [[[2., 3.]]]], &dev).unwrap();
        let probe = net.probe(&x).unwrap();
        assert_eq!(probe.logits.dims(), &[2, 2]);
        assert_eq!(
            probe.stages.len(),
            1,
            "one resolution before the global pool"
        );
        let total = bn_statistics(&probe.bn_inputs, &net.batch_norms())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((total - 5.0).abs() < 1e-5, "{total}");
    }

    /// A CIFAR ResNet's stages are its three groups of blocks (the stem joins the first).
    #[test]
    fn resnet_stages_are_its_block_groups() {
        let net = crate::compression::Network::resnet_cifar(20, 0.25, 10, 0).unwrap();
        let x = Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let probe = net.probe(&x).unwrap();
        let shapes: Vec<(usize, usize)> = probe
            .stages
            .iter()
            .map(|s| (s.dims()[1], s.dims()[2]))
            .collect();
        assert_eq!(shapes, vec![(4, 32), (8, 16), (16, 8)]);
        assert_eq!(probe.bn_inputs.len(), net.batch_norms().len());
        assert_eq!(net.batch_norms().len(), 1 + 9 * 2);
    }
}
