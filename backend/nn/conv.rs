//! Convolution for training on the CPU.
//!
//! [`conv2d`] is one custom op with its own backward pass: per image, unfold the input into
//! columns (im2col) and multiply by the kernel matrix with the `gemm` crate; backward
//! multiplies the output gradient by the columns (kernel gradient) and by the transposed
//! kernel, folding the result back onto the input (input gradient). Images are spread over
//! rayon's threads. Where the output plane is small (the deep layers of a VGG at 32x32 have
//! 2x2 and 4x4 outputs), several images share one product, their columns side by side, so
//! that the kernel matrix is packed once per group instead of once per image. candle's own
//! convolution builds its backward pass from a transposed convolution and many small
//! tensors, and was about 20 times slower than PyTorch on a ResNet-56 training step here;
//! this op keeps no intermediate tensor in the graph.

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
    /// Images per matrix product (see [`Conv2d::group_size`]).
    group: usize,
}

/// Columns a product should have before images are grouped: below this the packing of the
/// kernel matrix, repeated per product, costs more than the product itself.
const MIN_COLUMNS: usize = 256;

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
        let mut op = Conv2d {
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
            group: 1,
        };
        op.group = op.group_size(rayon::current_num_threads());
        Ok(op)
    }

    /// Images per product: enough for [`MIN_COLUMNS`] columns, but no fewer groups than
    /// `threads`, so that every thread has work.
    fn group_size(&self, threads: usize) -> usize {
        let wanted = MIN_COLUMNS.div_ceil(self.out_plane().max(1));
        let per_thread = self.batch.div_ceil(threads.max(1));
        wanted.min(per_thread).max(1)
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

    /// Values the column buffer needs (none for a pointwise convolution of single images).
    fn column_buffer(&self) -> usize {
        if self.pointwise() && self.group == 1 {
            0
        } else {
            self.rows() * self.group * self.out_plane()
        }
    }

    /// The column matrix (`C*KH*KW x n*HO*WO`) of `n` images side by side: a single image
    /// itself for a pointwise convolution, else their unfolding into `buffer`.
    fn columns<'a>(&self, images: &'a [f32], n: usize, buffer: &'a mut [f32]) -> &'a [f32] {
        if self.pointwise() && n == 1 {
            return images;
        }
        let (plane, ld) = (self.out_plane(), n * self.out_plane());
        let cols = &mut buffer[..self.rows() * ld];
        if self.padding > 0 {
            cols.fill(0.0);
        }
        for (i, image) in images.chunks(self.in_image()).enumerate() {
            self.im2col(image, &mut cols[i * plane..], ld);
        }
        cols
    }

    /// Unfolds one image (`C x H x W`) into the rows of `cols`, `ld` values apart; positions
    /// in the padding are left as they are (zero).
    fn im2col(&self, image: &[f32], cols: &mut [f32], ld: usize) {
        let s = self.stride;
        self.for_each_line(|row, oy, at, lo, hi| {
            let dst = &mut cols[row * ld + oy * self.wo..][lo..hi];
            if s == 1 {
                dst.copy_from_slice(&image[at..at + (hi - lo)]);
            } else {
                for (i, v) in dst.iter_mut().enumerate() {
                    *v = image[at + i * s];
                }
            }
        });
    }

    /// Adds the column matrix `cols` (rows `ld` values apart) back onto one image's
    /// positions (the transpose of [`Self::im2col`]).
    fn col2im(&self, cols: &[f32], ld: usize, image: &mut [f32]) {
        let s = self.stride;
        self.for_each_line(|row, oy, at, lo, hi| {
            let src = &cols[row * ld + oy * self.wo..][lo..hi];
            for (i, v) in src.iter().enumerate() {
                image[at + i * s] += v;
            }
        });
    }

    /// Copies `n` images' output planes from the op's layout (`n x O x P`) into a
    /// product's (`O x n*P`).
    fn side_by_side(&self, per_image: &[f32], product: &mut [f32], n: usize) {
        let plane = self.out_plane();
        for (i, image) in per_image.chunks(self.out * plane).take(n).enumerate() {
            for (o, src) in image.chunks(plane).enumerate() {
                product[(o * n + i) * plane..][..plane].copy_from_slice(src);
            }
        }
    }

    /// The inverse of [`Self::side_by_side`].
    fn per_image(&self, product: &[f32], per_image: &mut [f32], n: usize) {
        let plane = self.out_plane();
        for (i, image) in per_image.chunks_mut(self.out * plane).take(n).enumerate() {
            for (o, dst) in image.chunks_mut(plane).enumerate() {
                dst.copy_from_slice(&product[(o * n + i) * plane..][..plane]);
            }
        }
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
        let (rows, plane, group) = (self.rows(), self.out_plane(), self.group);
        let mut y = vec![0f32; self.batch * self.out * plane];
        y.par_chunks_mut(group * self.out * plane)
            .zip(x.par_chunks(group * self.in_image()))
            .for_each_init(
                || {
                    let product = if group > 1 {
                        self.out * group * plane
                    } else {
                        0
                    };
                    (vec![0f32; self.column_buffer()], vec![0f32; product])
                },
                |(cols, product), (y_group, x_group)| {
                    let n = x_group.len() / self.in_image();
                    let cols = self.columns(x_group, n, cols);
                    let dst = if n == 1 {
                        &mut *y_group
                    } else {
                        &mut product[..self.out * n * plane]
                    };
                    let weights = Mat::rows(weight, rows);
                    matmul(
                        dst,
                        self.out,
                        n * plane,
                        rows,
                        weights,
                        Mat::rows(cols, n * plane),
                        false,
                    );
                    if n > 1 {
                        self.per_image(product, y_group, n);
                    }
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
        let (rows, plane, group) = (self.rows(), self.out_plane(), self.group);
        let mut grad_x = vec![0f32; xs.len()];
        let grad_w = grad_x
            .par_chunks_mut(group * self.in_image())
            .enumerate()
            .fold(
                || Scratch {
                    grad_w: vec![0f32; self.out * rows],
                    cols: vec![0f32; self.column_buffer()],
                    grad_cols: vec![0f32; self.column_buffer()],
                    grad_out: vec![
                        0f32;
                        if group > 1 {
                            self.out * group * plane
                        } else {
                            0
                        }
                    ],
                },
                |mut s, (g, gx)| {
                    let n = gx.len() / self.in_image();
                    let first = g * group;
                    let x_group = &xs[first * self.in_image()..][..n * self.in_image()];
                    let g_group = &gs[first * self.out * plane..][..n * self.out * plane];
                    let ld = n * plane;
                    // The output gradient as an O x n*P matrix.
                    let g_mat = if n == 1 {
                        g_group
                    } else {
                        self.side_by_side(g_group, &mut s.grad_out, n);
                        &s.grad_out[..self.out * ld]
                    };
                    // Kernel gradient: g (O x nP) * cols^T (nP x R).
                    let cols = self.columns(x_group, n, &mut s.cols);
                    let (g_rows, cols_t) = (Mat::rows(g_mat, ld), Mat::transposed(cols, ld));
                    matmul(&mut s.grad_w, self.out, rows, ld, g_rows, cols_t, true);
                    // Input gradient: W^T (R x O) * g (O x nP), folded back onto the images
                    // (a single pointwise image is its own column matrix).
                    let w_t = Mat::transposed(ws, rows);
                    if self.pointwise() && n == 1 {
                        matmul(gx, rows, plane, self.out, w_t, g_rows, false);
                    } else {
                        let grad_cols = &mut s.grad_cols[..rows * ld];
                        matmul(grad_cols, rows, ld, self.out, w_t, g_rows, false);
                        for (i, image) in gx.chunks_mut(self.in_image()).enumerate() {
                            self.col2im(&grad_cols[i * plane..], ld, image);
                        }
                    }
                    s
                },
            )
            .map(|s| s.grad_w)
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

/// One thread's buffers in [`Conv2d::backward`].
struct Scratch {
    /// The kernel gradient summed over this thread's images.
    grad_w: Vec<f32>,
    /// The column matrix of a group of images.
    cols: Vec<f32>,
    /// The columns' gradient, before it is folded back onto the images.
    grad_cols: Vec<f32>,
    /// A group's output gradient side by side (unused for single images).
    grad_out: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// Output and both gradients against candle's own convolution and its backward pass,
    /// with single images per product and with groups of 2 and 3 (the last group of a batch
    /// of 5 is short). candle's transposed convolution has no output padding, so the sizes
    /// are ones where `(H + 2P - K)` is a multiple of the stride.
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
            ((5, 3, 5, 5), (4, 3, 3, 3), 1, 2),
            ((5, 4, 2, 2), (3, 4, 1, 1), 0, 1),
        ];
        for (xd, wd, padding, stride) in cases {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, xd, &Device::Cpu).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, wd, &Device::Cpu).unwrap()).unwrap();
            let theirs = x
                .as_tensor()
                .conv2d(w.as_tensor(), padding, stride, 1, 1)
                .unwrap();
            let gb = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for group in [1, 2, 3] {
                let mut op = Conv2d::new(x.dims(), w.dims(), padding, stride).unwrap();
                op.group = group;
                let ours = x.as_tensor().apply_op2(w.as_tensor(), op).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                assert!(
                    max_diff(&ours, &theirs) < 1e-4,
                    "{xd:?} {wd:?} group {group}"
                );
                let ga = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                for v in [x.as_tensor(), w.as_tensor()] {
                    let (a, b) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                    assert!(
                        max_diff(a, b) < 1e-4 * max_abs(b).max(1.0),
                        "{xd:?} {wd:?} group {group} gradient"
                    );
                }
            }
        }
        // Groups as the op picks them: enough columns, every thread busy.
        let op = Conv2d::new(&[32, 512, 2, 2], &[512, 512, 3, 3], 1, 1).unwrap();
        assert_eq!(
            (op.group_size(2), op.group_size(4), op.group_size(64)),
            (16, 8, 1)
        );
        let op = Conv2d::new(&[32, 16, 32, 32], &[16, 16, 3, 3], 1, 1).unwrap();
        assert_eq!(op.group_size(2), 1);
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(conv2d(&x, &w, 0, 1).is_err());
        let w = Tensor::zeros((2, 3, 7, 7), DType::F32, &Device::Cpu).unwrap();
        assert!(conv2d(&x, &w, 0, 1).is_err());
        assert!(conv2d(&x, &w, 1, 0).is_err());
    }
}
