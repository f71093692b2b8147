//! Convolution for training on the CPU.
//!
//! [`conv2d`] is one custom op with its own backward pass: per image, unfold the input into
//! columns (im2col) and multiply by the kernel matrix with the `gemm` crate; backward
//! multiplies the output gradient by the columns (kernel gradient) and by the transposed
//! kernel, folding the result back onto the input (input gradient). Images are spread over
//! rayon's threads. candle's own convolution builds its backward pass from a transposed
//! convolution and many small tensors, and was about 20 times slower than PyTorch on a
//! ResNet-56 training step here; this op keeps no intermediate tensor in the graph.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu::{f32_slice, with_values};
use gemm::Parallelism;
use rayon::prelude::*;

/// `conv2d(x, weight)` with zero padding and a stride (no groups, no dilation) over f32
/// `N x C x H x W` input and `O x C x KH x KW` kernels, on the CPU, differentiable in both.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let op = Conv2d::new(x.dims(), weight.dims(), padding, stride)?;
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Conv2d {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    out: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    fn new(x: &[usize], weight: &[usize], padding: usize, stride: usize) -> Result<Self> {
        let (&[batch, channels, h, w], &[out, ci, kh, kw]) = (x, weight) else {
            candle_core::bail!(
                "convolution expects N x C x H x W input and O x C x KH x KW kernels"
            );
        };
        if ci != channels {
            candle_core::bail!("convolution expects {ci} input channels, got {channels}");
        }
        if channels == 0 || out == 0 {
            candle_core::bail!("convolution with no input or output channels");
        }
        let (hp, wp) = (h + 2 * padding, w + 2 * padding);
        if hp < kh || wp < kw || stride == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("kernel {kh}x{kw} (stride {stride}) does not fit input {hp}x{wp}");
        }
        Ok(Conv2d {
            batch,
            channels,
            h,
            w,
            out,
            kh,
            kw,
            ho: (hp - kh) / stride + 1,
            wo: (wp - kw) / stride + 1,
            padding,
            stride,
        })
    }

    /// The input and kernel values are the sizes this op was built for (what keeps the
    /// raw `gemm` calls in bounds).
    fn check_sizes(&self, x: &[f32], weight: &[f32]) -> Result<()> {
        if x.len() != self.batch * self.in_image() || weight.len() != self.out * self.rows() {
            candle_core::bail!("convolution inputs do not match the shapes it was built for");
        }
        Ok(())
    }

    /// Rows of the column matrix (`C * KH * KW`).
    fn rows(&self) -> usize {
        self.channels * self.kh * self.kw
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    fn in_image(&self) -> usize {
        self.channels * self.h * self.w
    }

    /// A 1x1 kernel at stride 1 without padding: the image is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// The output positions `lo..hi` whose input position `o * stride + k - padding` lies
    /// inside `0..size` (out of `out` positions).
    fn inside(&self, k: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
        let last = size + p - 1;
        let hi = if k > last {
            0
        } else {
            ((last - k) / s + 1).min(out)
        };
        (lo.min(hi), hi)
    }

    /// Calls `f(row, input_offset, lo, hi)` for every (channel, kernel offset, output row)
    /// whose input row is inside the image: output columns `lo..hi` read the input at
    /// `input_offset + (ox - lo) * stride`; `row` is the column-matrix row.
    fn for_each_line(&self, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        for c in 0..self.channels {
            for ky in 0..self.kh {
                let (ylo, yhi) = self.inside(ky, self.h, self.ho);
                for kx in 0..self.kw {
                    let (xlo, xhi) = self.inside(kx, self.w, self.wo);
                    let row = (c * self.kh + ky) * self.kw + kx;
                    for oy in ylo..yhi {
                        let y = oy * self.stride + ky - self.padding;
                        let x = xlo * self.stride + kx - self.padding;
                        f(row, oy, (c * self.h + y) * self.w + x, xlo, xhi);
                    }
                }
            }
        }
    }

    /// Values the column buffer needs (none for a pointwise convolution).
    fn column_buffer(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.rows() * self.out_plane()
        }
    }

    /// The column matrix of one image: the image itself for a pointwise convolution,
    /// else its unfolding into `buffer`.
    fn columns<'a>(&self, image: &'a [f32], buffer: &'a mut [f32]) -> &'a [f32] {
        if self.pointwise() {
            image
        } else {
            self.im2col(image, buffer);
            buffer
        }
    }

    /// Unfolds one image (`C x H x W`) into `cols` (`C*KH*KW x HO*WO`).
    fn im2col(&self, image: &[f32], cols: &mut [f32]) {
        let (plane, s) = (self.out_plane(), self.stride);
        if self.padding > 0 {
            cols.fill(0.0);
        }
        self.for_each_line(|row, oy, at, lo, hi| {
            let dst = &mut cols[row * plane + oy * self.wo..][lo..hi];
            if s == 1 {
                dst.copy_from_slice(&image[at..at + (hi - lo)]);
            } else {
                for (i, v) in dst.iter_mut().enumerate() {
                    *v = image[at + i * s];
                }
            }
        });
    }

    /// Adds the column matrix `cols` back onto one image's positions (the transpose of
    /// [`Self::im2col`]).
    fn col2im(&self, cols: &[f32], image: &mut [f32]) {
        let (plane, s) = (self.out_plane(), self.stride);
        self.for_each_line(|row, oy, at, lo, hi| {
            let src = &cols[row * plane + oy * self.wo..][lo..hi];
            for (i, v) in src.iter().enumerate() {
                image[at + i * s] += v;
            }
        });
    }
}

/// Row-major matrix view for [`matmul`]: `rows x cols` at `ptr` with the given strides.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

impl Mat {
    fn rows(data: &[f32], cols: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `rows x cols` matrix.
    fn transposed(data: &[f32], cols: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            row_stride: 1,
            col_stride: cols as isize,
        }
    }
}

/// `dst (m x n, row-major) (+)= lhs (m x k) * rhs (k x n)`, single-threaded.
fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, accumulate: bool) {
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` holds `m * n` values and is exclusively borrowed; `lhs` and `rhs` point
    // into live slices that the callers size as `m x k` and `k x n` with these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let weight = f32_slice(s2, l2)?;
        self.check_sizes(x, weight)?;
        let (rows, plane) = (self.rows(), self.out_plane());
        let mut y = vec![0f32; self.batch * self.out * plane];
        y.par_chunks_mut(self.out * plane)
            .zip(x.par_chunks(self.in_image()))
            .for_each_init(
                || vec![0f32; self.column_buffer()],
                |cols, (y_img, x_img)| {
                    let cols = self.columns(x_img, cols);
                    matmul(
                        y_img,
                        self.out,
                        plane,
                        rows,
                        Mat::rows(weight, rows),
                        Mat::rows(cols, plane),
                        false,
                    );
                },
            );
        Ok((
            CpuStorage::F32(y),
            Shape::from((self.batch, self.out, self.ho, self.wo)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w) = with_values(x, |xs| {
            with_values(weight, |ws| {
                with_values(grad, |gs| {
                    self.check_sizes(xs, ws)?;
                    if gs.len() != self.batch * self.out * self.out_plane() {
                        candle_core::bail!("convolution gradient of the wrong size");
                    }
                    Ok(self.backward(xs, ws, gs))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(grad_x, x.shape(), x.device())?),
            Some(Tensor::from_vec(grad_w, weight.shape(), weight.device())?),
        ))
    }
}

impl Conv2d {
    /// `(input gradient, kernel gradient)` from the input, kernels and output gradient.
    fn backward(&self, xs: &[f32], ws: &[f32], gs: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (rows, plane) = (self.rows(), self.out_plane());
        let mut grad_x = vec![0f32; xs.len()];
        let grad_w = grad_x
            .par_chunks_mut(self.in_image())
            .enumerate()
            .fold(
                || {
                    let cols = self.column_buffer();
                    (
                        vec![0f32; self.out * rows],
                        vec![0f32; cols],
                        vec![0f32; cols],
                    )
                },
                |(mut gw, mut cols, mut gcols), (i, gx)| {
                    let x_img = &xs[i * self.in_image()..(i + 1) * self.in_image()];
                    let g_img = &gs[i * self.out * plane..(i + 1) * self.out * plane];
                    // Kernel gradient: g (O x P) * cols^T (P x R).
                    let cols_ref = self.columns(x_img, &mut cols);
                    matmul(
                        &mut gw,
                        self.out,
                        rows,
                        plane,
                        Mat::rows(g_img, plane),
                        Mat::transposed(cols_ref, plane),
                        true,
                    );
                    // Input gradient: W^T (R x O) * g (O x P), folded back onto the image.
                    let w_t = Mat::transposed(ws, rows);
                    if self.pointwise() {
                        matmul(
                            gx,
                            rows,
                            plane,
                            self.out,
                            w_t,
                            Mat::rows(g_img, plane),
                            false,
                        );
                    } else {
                        matmul(
                            &mut gcols,
                            rows,
                            plane,
                            self.out,
                            w_t,
                            Mat::rows(g_img, plane),
                            false,
                        );
                        self.col2im(&gcols, gx);
                    }
                    (gw, cols, gcols)
                },
            )
            .map(|(gw, _, _)| gw)
            .reduce(
                || vec![0f32; self.out * rows],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        (grad_x, grad_w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Output and both gradients against candle's own convolution and its backward pass.
    /// candle's transposed convolution has no output padding, so the sizes are ones where
    /// `(H + 2P - K)` is a multiple of the stride.
    #[test]
    fn convolution_equals_candle_and_its_gradients_too() {
        let cases = [
            // (x dims, w dims, padding, stride)
            ((2, 3, 7, 7), (4, 3, 3, 3), 0, 1),
            ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1),
            ((2, 3, 7, 7), (4, 3, 3, 3), 1, 2),
            ((3, 5, 6, 6), (2, 5, 1, 1), 0, 1),
            ((3, 5, 7, 7), (2, 5, 1, 1), 0, 2),
            ((1, 2, 9, 5), (3, 2, 3, 1), 2, 1),
        ];
        for (xd, wd, padding, stride) in cases {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, xd, &Device::Cpu).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, wd, &Device::Cpu).unwrap()).unwrap();
            let ours = conv2d(x.as_tensor(), w.as_tensor(), padding, stride).unwrap();
            let theirs = x
                .as_tensor()
                .conv2d(w.as_tensor(), padding, stride, 1, 1)
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-4, "{xd:?} {wd:?}");
            let ga = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gb = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for v in [x.as_tensor(), w.as_tensor()] {
                let (a, b) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    max_diff(a, b) < 1e-4 * scale.max(1.0),
                    "{xd:?} {wd:?} gradient"
                );
            }
        }
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(conv2d(&x, &w, 0, 1).is_err());
        let w = Tensor::zeros((2, 3, 7, 7), DType::F32, &Device::Cpu).unwrap();
        assert!(conv2d(&x, &w, 0, 1).is_err());
        assert!(conv2d(&x, &w, 1, 0).is_err());
    }
}
