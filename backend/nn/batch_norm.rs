//! Training-mode batch norm as one op with its own backward pass (the CPU's hot path after
//! the convolution: built from candle's small ops it took as long as the convolutions).
//!
//! Normalises with the batch's mean and biased variance over every dimension but the
//! channel (dimension 1), then scales by gamma and shifts by beta, as PyTorch's
//! `batch_norm(training=True)`. The backward pass is the closed form
//! `dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy xhat))` over the values of a
//! channel. Statistics are accumulated in f64.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::{f32_slice, with_values};
use rayon::prelude::*;

/// A training-mode batch norm's output and the batch statistics it used.
pub struct BatchNormOutput {
    pub y: Tensor,
    /// Per-channel mean of the batch.
    pub mean: Vec<f32>,
    /// Per-channel biased variance of the batch.
    pub var: Vec<f32>,
    /// Values per channel (`N * H * W`).
    pub count: usize,
}

/// Batch norm of `x` (`N x C` or `N x C x ...`, f32, CPU) with the batch's statistics,
/// differentiable in `x`, `gamma` and `beta`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormOutput> {
    let dims = x.dims();
    if dims.len() < 2
        || dims[1] == 0
        || gamma.elem_count() != dims[1]
        || beta.elem_count() != dims[1]
    {
        candle_core::bail!(
            "batch norm over {dims:?} needs {} gammas and betas",
            dims.get(1).unwrap_or(&0)
        );
    }
    let x = x.contiguous()?;
    let geometry = Geometry {
        batch: dims[0],
        channels: dims[1],
        spatial: dims[2..].iter().product(),
    };
    let (mean, var) = with_values(&x, |xs| Ok(geometry.statistics(xs)))?;
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let op = BatchNorm {
        geometry,
        mean: Arc::new(mean.clone()),
        inv_std: Arc::new(inv_std),
    };
    let y = x.apply_op3(
        &gamma.flatten_all()?.contiguous()?,
        &beta.flatten_all()?.contiguous()?,
        op,
    )?;
    Ok(BatchNormOutput {
        y,
        mean,
        var,
        count: geometry.batch * geometry.spatial,
    })
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    spatial: usize,
}

impl Geometry {
    /// The planes (`spatial` values each) of channel `c`, one per image.
    fn planes<'a>(&self, values: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (s, stride) = (self.spatial, self.channels * self.spatial);
        (0..self.batch).map(move |n| &values[n * stride + c * s..n * stride + (c + 1) * s])
    }

    /// Per-channel mean and biased variance (two passes, f64 sums).
    fn statistics(&self, xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let count = (self.batch * self.spatial).max(1) as f64;
        (0..self.channels)
            .into_par_iter()
            .map(|c| {
                let sum: f64 = self
                    .planes(xs, c)
                    .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                    .sum();
                let mean = sum / count;
                let sq: f64 = self
                    .planes(xs, c)
                    .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
                    .sum();
                (mean as f32, (sq / count) as f32)
            })
            .unzip()
    }

    /// Per-channel `(sum dy, sum dy * xhat)`.
    fn gradient_sums(&self, xs: &[f32], gs: &[f32], op: &BatchNorm) -> Vec<(f64, f64)> {
        (0..self.channels)
            .into_par_iter()
            .map(|c| {
                let (m, inv) = (op.mean[c], op.inv_std[c]);
                self.planes(xs, c).zip(self.planes(gs, c)).fold(
                    (0f64, 0f64),
                    |(sg, sgx), (xp, gp)| {
                        let (a, b) = xp.iter().zip(gp).fold((0f64, 0f64), |(a, b), (&x, &g)| {
                            (a + g as f64, b + (g * (x - m) * inv) as f64)
                        });
                        (sg + a, sgx + b)
                    },
                )
            })
            .collect()
    }
}

struct BatchNorm {
    geometry: Geometry,
    mean: Arc<Vec<f32>>,
    inv_std: Arc<Vec<f32>>,
}

impl BatchNorm {
    /// The input gradient and the per-channel `(sum dy, sum dy * xhat)`.
    fn backward(&self, xs: &[f32], gs: &[f32], gammas: &[f32]) -> (Vec<f32>, Vec<(f64, f64)>) {
        let g = self.geometry;
        let sums = g.gradient_sums(xs, gs, self);
        let count = (g.batch * g.spatial).max(1) as f64;
        let s = g.spatial.max(1);
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(s)
            .zip(xs.par_chunks(s).zip(gs.par_chunks(s)))
            .enumerate()
            .for_each(|(i, (dp, (xp, gp)))| {
                let c = i % g.channels;
                let (m, inv) = (self.mean[c], self.inv_std[c]);
                let mean_dy = (sums[c].0 / count) as f32;
                let mean_dy_xhat = (sums[c].1 / count) as f32;
                let k = gammas[c] * inv;
                for ((d, &x), &dy) in dp.iter_mut().zip(xp).zip(gp) {
                    *d = k * (dy - mean_dy - (x - m) * inv * mean_dy_xhat);
                }
            });
        (dx, sums)
    }
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let gamma = f32_slice(s2, l2)?;
        let beta = f32_slice(s3, l3)?;
        let (c_count, s) = (self.geometry.channels, self.geometry.spatial.max(1));
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let c = i % c_count;
                let scale = gamma[c] * self.inv_std[c];
                let shift = beta[c] - self.mean[c] * scale;
                for (y, &x) in yp.iter_mut().zip(xp) {
                    *y = x * scale + shift;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, sums) = with_values(x, |xs| {
            with_values(grad, |gs| {
                with_values(gamma, |gammas| Ok(self.backward(xs, gs, gammas)))
            })
        })?;
        let dgamma: Vec<f32> = sums.iter().map(|&(_, sgx)| sgx as f32).collect();
        let dbeta: Vec<f32> = sums.iter().map(|&(sg, _)| sg as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), gamma.device())?),
            Some(Tensor::from_vec(dbeta, beta.shape(), beta.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The same batch norm from candle's elementary ops (autograd through them).
    fn reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Tensor {
        let c = x.dim(1).unwrap();
        let mut shape = vec![1usize; x.rank()];
        shape[1] = c;
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        let mut mean = x.clone();
        let mut count = 1usize;
        for &d in dims.iter().rev() {
            count *= x.dim(d).unwrap();
            mean = mean.sum_keepdim(d).unwrap();
        }
        let mean = (mean / count as f64).unwrap();
        let centered = x.broadcast_sub(&mean).unwrap();
        let mut var = centered.sqr().unwrap();
        for &d in dims.iter().rev() {
            var = var.sum_keepdim(d).unwrap();
        }
        let var = (var / count as f64).unwrap();
        let inv = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
        centered
            .broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(&gamma.reshape(shape.as_slice()).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape(shape.as_slice()).unwrap())
            .unwrap()
    }

    #[test]
    fn output_statistics_and_gradients_equal_the_composed_ops() {
        for dims in [vec![4usize, 3, 5, 2], vec![6, 4], vec![2, 2, 7]] {
            let dev = &Device::Cpu;
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2.0, dims.as_slice(), dev).unwrap() + 1.5).unwrap(),
            )
            .unwrap();
            let c = dims[1];
            let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, dev).unwrap()).unwrap();
            let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, dev).unwrap()).unwrap();
            let out =
                batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
            let want = reference(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5);
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(diff(&out.y, &want) < 1e-4, "{dims:?} output");
            assert_eq!(out.count, dims.iter().product::<usize>() / c);
            // A loss that weights every output differently, so that no gradient vanishes.
            let weights = Tensor::randn(0f32, 1.0, dims.as_slice(), dev).unwrap();
            let ga = (&out.y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gb = (&want * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
                assert!(
                    diff(ga.get(v).unwrap(), gb.get(v).unwrap()) < 1e-4,
                    "{dims:?} gradient"
                );
            }
        }
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(batch_norm_train(&x, &g, &g, 1e-5).is_err());
    }
}
