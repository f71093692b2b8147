//! Max pooling whose backward pass matches PyTorch's.
//!
//! candle's own `max_pool2d` multiplies the incoming gradient by the fraction of the window
//! that holds the maximum (1/4 for a unique maximum in a 2x2 window) instead of passing it
//! through, and has no backward pass when the kernel and the stride differ. Every VGG
//! trained through it saw its gradients shrink by 4 at each pool. This op sends the whole
//! gradient of an output to the first maximum of its window in row-major order (PyTorch's
//! CPU kernel: a NaN counts as the maximum), with implicit `-inf` padding and floor-mode
//! output sizes, like `torch.nn.functional.max_pool2d`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::cpu::{f32_slice, with_values};

/// `max_pool2d(x, kernel, stride, padding)` over an `N x C x H x W` f32 tensor on the CPU.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1(MaxPool2d::new(kernel, stride, padding)?)
}

#[derive(Debug, Clone, Copy)]
struct MaxPool2d {
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// Output sizes and the window geometry of one pooling.
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl MaxPool2d {
    fn new(kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            candle_core::bail!("max pool needs a kernel and a stride of at least 1");
        }
        if 2 * padding > kernel {
            candle_core::bail!("max pool padding {padding} exceeds half the kernel {kernel}");
        }
        Ok(MaxPool2d {
            kernel,
            stride,
            padding,
        })
    }

    fn geometry(&self, dims: &[usize]) -> Result<Geometry> {
        let &[n, c, h, w] = dims else {
            candle_core::bail!("max pool expects N x C x H x W, got {dims:?}");
        };
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        if hp < self.kernel || wp < self.kernel {
            candle_core::bail!("max pool kernel {} does not fit {hp}x{wp}", self.kernel);
        }
        Ok(Geometry {
            planes: n * c,
            h,
            w,
            ho: (hp - self.kernel) / self.stride + 1,
            wo: (wp - self.kernel) / self.stride + 1,
        })
    }

    /// For every output element, the flat index (within its plane) of the window's first
    /// maximum, and that maximum.
    fn scan(&self, x: &[f32], g: &Geometry, mut visit: impl FnMut(usize, usize, usize, f32)) {
        let plane = g.h * g.w;
        for p in 0..g.planes {
            let src = &x[p * plane..(p + 1) * plane];
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = usize::MAX;
                    for ky in 0..self.kernel {
                        let Some(y) = (oy * self.stride + ky).checked_sub(self.padding) else {
                            continue;
                        };
                        if y >= g.h {
                            continue;
                        }
                        for kx in 0..self.kernel {
                            let Some(x) = (ox * self.stride + kx).checked_sub(self.padding) else {
                                continue;
                            };
                            if x >= g.w {
                                continue;
                            }
                            let v = src[y * g.w + x];
                            if at == usize::MAX || v > best || v.is_nan() {
                                best = v;
                                at = y * g.w + x;
                                if v.is_nan() {
                                    break;
                                }
                            }
                        }
                        if best.is_nan() {
                            break;
                        }
                    }
                    visit(p, oy * g.wo + ox, at, best);
                }
            }
        }
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d-first-argmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout)?;
        let dims = layout.shape().dims();
        let g = self.geometry(dims)?;
        let per_plane = g.ho * g.wo;
        let mut out = vec![0f32; g.planes * per_plane];
        self.scan(x, &g, |p, o, _, v| out[p * per_plane + o] = v);
        Ok((
            CpuStorage::F32(out),
            Shape::from((dims[0], dims[1], g.ho, g.wo)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = self.geometry(arg.dims())?;
        let (plane, per_plane) = (g.h * g.w, g.ho * g.wo);
        let out = with_values(arg, |x| {
            with_values(grad_res, |grad| {
                let mut out = vec![0f32; x.len()];
                self.scan(x, &g, |p, o, at, _| {
                    out[p * plane + at] += grad[p * per_plane + o];
                });
                Ok(out)
            })
        })?;
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn grad_of(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        k: usize,
        s: usize,
        p: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let v = Var::from_vec(x.to_vec(), dims, &Device::Cpu).unwrap();
        let y = max_pool2d(v.as_tensor(), k, s, p).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        (
            y.flatten_all().unwrap().to_vec1().unwrap(),
            grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
        )
    }

    /// Hand-computed: each output's gradient (1) lands, whole, on its window's first maximum.
    #[test]
    fn gradient_goes_whole_to_the_first_maximum() {
        #[rustfmt::skip]
        let x = [
            1.0, 5.0, 2.0, 2.0,
            3.0, 0.0, 2.0, 2.0,
            -1.0, -2.0, 7.0, 9.0,
            -3.0, -1.0, 9.0, 1.0,
        ];
        let (y, g) = grad_of(&x, (1, 1, 4, 4), 2, 2, 0);
        assert_eq!(y, [5.0, 2.0, -1.0, 9.0]);
        #[rustfmt::skip]
        let expected = [
            0.0, 1.0, 1.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
            1.0, 0.0, 0.0, 1.0,
            0.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(g, expected);
    }

    /// Overlapping 3x3 windows, stride 2, padding 1 (ResNet's ImageNet stem): gradients of
    /// windows sharing a maximum add up; padding is never chosen.
    #[test]
    fn overlapping_padded_windows_accumulate() {
        #[rustfmt::skip]
        let x = [
            -5.0, -5.0, -5.0,
            -5.0, -1.0, -5.0,
            -5.0, -5.0, -5.0,
        ];
        let (y, g) = grad_of(&x, (1, 1, 3, 3), 3, 2, 1);
        // Output 2x2; every window holds the centre.
        assert_eq!(y, [-1.0; 4]);
        assert_eq!(g[4], 4.0);
        assert_eq!(g.iter().sum::<f32>(), 4.0);
    }

    #[test]
    fn agrees_with_candle_forward() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
        let ours = max_pool2d(&x, 2, 2, 0).unwrap();
        let theirs = x.max_pool2d_with_stride(2, 2).unwrap();
        let d = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        assert!(max_pool2d(&x, 0, 1, 0).is_err());
        assert!(max_pool2d(&x, 2, 2, 2).is_err());
    }
}
