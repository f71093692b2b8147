//! Saliency maps for the saliency-guided mixing recipes (GuidedMixup, SaliencyMix).
//!
//! This module owns the spectral-residual saliency of a grey image, the Gaussian blur applied
//! to every map, the normalisation of a map to a probability distribution, and the two map
//! variants of GuidedMixup: Guided-SR (no network) and Guided-AP (from input gradients that the
//! caller computes). Everything works on plain row-major `f32` slices: an image is `C x H x W`,
//! a map is `H x W`. No tensors, no IO.
//!
//! Following the spec (`specs/training.md`, section 1) and the paper:
//! - spectral residual: `F = FFT2(g)`, `A = |F| + eps`, `R = exp(ln A - box3x3(ln A))` with
//!   replicate padding, `S = |IFFT2(F * R / A)|` (the magnitude, not its square);
//! - Gaussian blur 7x7 with sigma 3, applied twice for Guided-SR (once inside the saliency
//!   step, once more before normalisation) and once for Guided-AP;
//! - Guided-AP map `sqrt(mean_c grad^2)`; every map is normalised to sum 1.
//!
//! The platform's choices:
//! - [`SR_EPS`] = 1e-8 is added to the magnitude before the logarithm and the division; the
//!   FFTs (rustfft, rows then columns) and the residual run in `f64`, the inverse FFT is
//!   normalised by `1 / (H W)` as NumPy's `ifft2` is;
//! - the blur kernel is torchvision's (`exp(-x^2 / (2 sigma^2))` on `x = -3..3`, normalised
//!   to sum 1), applied separably with reflect padding (the edge pixel is not repeated), as
//!   torchvision's `gaussian_blur` pads; maps smaller than the kernel's half width, which
//!   torchvision refuses, are reflected repeatedly;
//! - an image with a side over [`SR_MAX_SIDE`] has that side downsized to 128 (bilinear, half
//!   pixel centres, no antialiasing) before the spectral residual; both blurs run at the
//!   reduced size, and the map is resized back (bilinear) before normalisation;
//! - a map whose sum is zero (or not finite) normalises to the uniform map.

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

/// Added to the Fourier magnitude before `ln` and before dividing by it.
pub const SR_EPS: f64 = 1e-8;
/// Side of the default Gaussian blur kernel.
pub const BLUR_SIZE: usize = 7;
/// Standard deviation of the default Gaussian blur kernel, in pixels.
pub const BLUR_SIGMA: f32 = 3.0;
/// Sides longer than this are downsized to it before the spectral residual.
pub const SR_MAX_SIDE: usize = 128;

/// In-place 2-D FFT of a row-major `h x w` buffer: rows first, then columns.
/// `inverse` applies the unnormalised inverse transform.
fn fft2(data: &mut [Complex<f64>], h: usize, w: usize, inverse: bool) {
    let mut planner = FftPlanner::<f64>::new();
    let (row_fft, col_fft) = if inverse {
        (planner.plan_fft_inverse(w), planner.plan_fft_inverse(h))
    } else {
        (planner.plan_fft_forward(w), planner.plan_fft_forward(h))
    };
    row_fft.process(data);
    let mut cols = vec![Complex::new(0.0, 0.0); h * w];
    for y in 0..h {
        for x in 0..w {
            cols[x * h + y] = data[y * w + x];
        }
    }
    col_fft.process(&mut cols);
    for x in 0..w {
        for y in 0..h {
            data[y * w + x] = cols[x * h + y];
        }
    }
}

/// 3x3 mean filter with replicate (edge) padding.
fn box3x3_replicate(map: &[f64], h: usize, w: usize) -> Vec<f64> {
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0.0;
            for dy in -1i64..=1 {
                let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                for dx in -1i64..=1 {
                    let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                    sum += map[yy * w + xx];
                }
            }
            out[y * w + x] = sum / 9.0;
        }
    }
    out
}

/// Spectral-residual saliency of a grey `h x w` image (row-major): see the module doc.
pub fn spectral_residual(grey: &[f32], h: usize, w: usize) -> Vec<f32> {
    assert_eq!(
        grey.len(),
        h * w,
        "spectral_residual: {} values for {h}x{w}",
        grey.len()
    );
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let mut f: Vec<Complex<f64>> = grey.iter().map(|&v| Complex::new(v as f64, 0.0)).collect();
    fft2(&mut f, h, w, false);
    let amp: Vec<f64> = f.iter().map(|z| z.norm() + SR_EPS).collect();
    let log_amp: Vec<f64> = amp.iter().map(|a| a.ln()).collect();
    let smooth = box3x3_replicate(&log_amp, h, w);
    let mut g: Vec<Complex<f64>> = f
        .iter()
        .zip(&amp)
        .zip(log_amp.iter().zip(&smooth))
        .map(|((z, a), (l, s))| z * ((l - s).exp() / a))
        .collect();
    fft2(&mut g, h, w, true);
    let scale = 1.0 / (h * w) as f64;
    g.iter().map(|z| (z.norm() * scale) as f32).collect()
}

/// The normalised 1-D Gaussian kernel torchvision uses: `exp(-x^2 / (2 sigma^2))` at
/// `x = -(size-1)/2 ..= (size-1)/2` in steps of 1, divided by its sum.
pub fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    if size == 0 {
        return Vec::new();
    }
    let half = (size as f64 - 1.0) / 2.0;
    let sigma = sigma as f64;
    let pdf: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - half;
            (-0.5 * (x / sigma) * (x / sigma)).exp()
        })
        .collect();
    let total: f64 = pdf.iter().sum();
    pdf.iter().map(|p| (p / total) as f32).collect()
}

/// Reflect-padding index (`dcb|abcd|cba`), mirrored again while out of range.
fn reflect(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let n = n as i64;
    let mut i = i;
    while i < 0 || i >= n {
        if i < 0 {
            i = -i;
        }
        if i >= n {
            i = 2 * (n - 1) - i;
        }
    }
    i as usize
}

/// Gaussian blur of an `h x w` map with a `size x size` kernel of standard deviation `sigma`
/// (see [`gaussian_kernel`]), separable, reflect padding. Use [`BLUR_SIZE`] and
/// [`BLUR_SIGMA`] for the recipes' 7x7, sigma-3 blur.
pub fn gaussian_blur(map: &[f32], h: usize, w: usize, size: usize, sigma: f32) -> Vec<f32> {
    assert_eq!(
        map.len(),
        h * w,
        "gaussian_blur: {} values for {h}x{w}",
        map.len()
    );
    if h == 0 || w == 0 || size == 0 {
        return map.to_vec();
    }
    separable_filter(map, h, w, &gaussian_kernel(size, sigma), Border::Reflect)
}

/// How a filter reads values past the border of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Mirror without repeating the edge (`dcb|abcd|cba`), as `numpy.pad(mode="reflect")`.
    Reflect,
    /// Repeat the edge value (`aaa|abcd|ddd`).
    Replicate,
}

/// Separable filtering of one `h x w` map: `kernel` along rows, then along columns, centred
/// at `kernel.len() / 2` (even sizes put the extra tap on the left/top; the recipes use odd
/// sizes). Accumulates in f64.
pub fn separable_filter(
    map: &[f32],
    h: usize,
    w: usize,
    kernel: &[f32],
    border: Border,
) -> Vec<f32> {
    let half = (kernel.len() / 2) as i64;
    let at = |i: i64, n: usize| match border {
        Border::Reflect => reflect(i, n),
        Border::Replicate => i.clamp(0, n as i64 - 1) as usize,
    };
    let mut rows = vec![0.0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0f64;
            for (k, &kv) in kernel.iter().enumerate() {
                let xx = at(x as i64 + k as i64 - half, w);
                acc += kv as f64 * map[y * w + xx] as f64;
            }
            rows[y * w + x] = acc as f32;
        }
    }
    let mut out = vec![0.0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0f64;
            for (k, &kv) in kernel.iter().enumerate() {
                let yy = at(y as i64 + k as i64 - half, h);
                acc += kv as f64 * rows[yy * w + x] as f64;
            }
            out[y * w + x] = acc as f32;
        }
    }
    out
}

/// The map divided by its sum; a map whose sum is zero or not finite becomes uniform.
pub fn normalize_sum(map: &[f32]) -> Vec<f32> {
    if map.is_empty() {
        return Vec::new();
    }
    let total: f64 = map.iter().map(|&v| v as f64).sum();
    if total == 0.0 || !total.is_finite() {
        return vec![1.0 / map.len() as f32; map.len()];
    }
    map.iter().map(|&v| (v as f64 / total) as f32).collect()
}

/// Bilinear resize of an `h x w` map to `oh x ow` (half-pixel centres, no antialiasing; the
/// convention of PyTorch's `interpolate(mode="bilinear", align_corners=False)`).
pub fn resize_bilinear(map: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(
        map.len(),
        h * w,
        "resize_bilinear: {} values for {h}x{w}",
        map.len()
    );
    if h == oh && w == ow {
        return map.to_vec();
    }
    if h == 0 || w == 0 {
        return vec![0.0; oh * ow];
    }
    let taps = |out: usize, inp: usize| -> Vec<(usize, usize, f64)> {
        let scale = inp as f64 / out as f64;
        (0..out)
            .map(|d| {
                let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, src - i0 as f64)
            })
            .collect()
    };
    let ys = taps(oh, h);
    let xs = taps(ow, w);
    let mut out = vec![0.0f32; oh * ow];
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            let v = |y: usize, x: usize| map[y * w + x] as f64;
            let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
            let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
            out[oy * ow + ox] = (top * (1.0 - fy) + bottom * fy) as f32;
        }
    }
    out
}

/// Guided-SR saliency of a `c x h x w` image: grey = channel mean, spectral residual, blur,
/// blur again, normalise to sum 1. Sides over [`SR_MAX_SIDE`] are handled as the module doc
/// says. Returns an `h x w` map.
pub fn guided_sr_saliency(image: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(
        image.len(),
        c * h * w,
        "guided_sr_saliency: {} values for {c}x{h}x{w}",
        image.len()
    );
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let grey = channel_mean(image, c, h * w, |v| v);
    let (sh, sw) = (h.min(SR_MAX_SIDE), w.min(SR_MAX_SIDE));
    let small = resize_bilinear(&grey, h, w, sh, sw);
    let sr = spectral_residual(&small, sh, sw);
    let once = gaussian_blur(&sr, sh, sw, BLUR_SIZE, BLUR_SIGMA);
    let twice = gaussian_blur(&once, sh, sw, BLUR_SIZE, BLUR_SIGMA);
    normalize_sum(&resize_bilinear(&twice, sh, sw, h, w))
}

/// Guided-AP saliency from the input gradient `grad` (`c x h x w`): `sqrt(mean_c grad^2)`,
/// blurred once, normalised to sum 1. Returns an `h x w` map.
pub fn gradient_saliency(grad: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(
        grad.len(),
        c * h * w,
        "gradient_saliency: {} values for {c}x{h}x{w}",
        grad.len()
    );
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let energy: Vec<f32> = channel_mean(grad, c, h * w, |v| v * v)
        .into_iter()
        .map(f32::sqrt)
        .collect();
    normalize_sum(&gaussian_blur(&energy, h, w, BLUR_SIZE, BLUR_SIGMA))
}

/// Per-pixel mean over channels of `f(value)`; zero channels give a zero map.
fn channel_mean(data: &[f32], c: usize, hw: usize, f: impl Fn(f64) -> f64) -> Vec<f32> {
    let mut acc = vec![0.0f64; hw];
    for ch in 0..c {
        for (a, &v) in acc.iter_mut().zip(&data[ch * hw..(ch + 1) * hw]) {
            *a += f(v as f64);
        }
    }
    let denom = c.max(1) as f64;
    acc.iter().map(|a| (a / denom) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURE: &str = include_str!("../../tests/data/training/saliency.json");

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    }

    /// Pixels are stored as integers; the value is `int * scale + shift`.
    fn decode(case: &Value, key: &str) -> Vec<f32> {
        let scale = case["scale"].as_f64().unwrap();
        let shift = case["shift"].as_f64().unwrap();
        case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x.as_i64().unwrap() as f64 * scale + shift) as f32)
            .collect()
    }

    fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f32) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        let peak = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (k, (g, e)) in got.iter().zip(want).enumerate() {
            let tol = rel * e.abs().max(1e-2 * peak);
            assert!(
                (g - e).abs() <= tol,
                "{name}[{k}]: got {g}, NumPy {e} (tol {tol})"
            );
        }
    }

    fn cases(kind: &str) -> Vec<Value> {
        let root: Value = serde_json::from_str(FIXTURE).expect("fixture parses");
        let list: Vec<Value> = root[kind].as_array().expect("case list").clone();
        assert!(!list.is_empty(), "fixture has {kind} cases");
        list
    }

    fn dims(case: &Value) -> (usize, usize, usize) {
        let d = |k: &str| case[k].as_u64().unwrap() as usize;
        (d("c"), d("h"), d("w"))
    }

    #[test]
    fn spectral_residual_matches_numpy() {
        // The wide case stores only the full map.
        for case in cases("sr_cases").iter().filter(|c| c.get("sr").is_some()) {
            let (c, h, w) = dims(case);
            let image = decode(case, "pixels");
            let grey = channel_mean(&image, c, h * w, |v| v);
            assert_close("grey", &grey, &floats(&case["grey"]), 1e-5);
            let sr = spectral_residual(&grey, h, w);
            assert_close(
                case["name"].as_str().unwrap(),
                &sr,
                &floats(&case["sr"]),
                1e-4,
            );
        }
    }

    #[test]
    fn gaussian_blur_matches_numpy() {
        for case in cases("sr_cases").iter().filter(|c| c.get("sr").is_some()) {
            let (_, h, w) = dims(case);
            // Blur NumPy's own SR map so that this checks the blur alone.
            let blurred = gaussian_blur(&floats(&case["sr"]), h, w, BLUR_SIZE, BLUR_SIGMA);
            assert_close("blur", &blurred, &floats(&case["sr_blur"]), 1e-4);
        }
    }

    #[test]
    fn guided_sr_saliency_matches_numpy() {
        for case in cases("sr_cases") {
            let (c, h, w) = dims(&case);
            let map = guided_sr_saliency(&decode(&case, "pixels"), c, h, w);
            assert_close(
                case["name"].as_str().unwrap(),
                &map,
                &floats(&case["saliency"]),
                1e-4,
            );
            let total: f32 = map.iter().sum();
            assert!((total - 1.0).abs() < 1e-4, "sums to {total}");
        }
    }

    #[test]
    fn gradient_saliency_matches_numpy() {
        for case in cases("grad_cases") {
            let (c, h, w) = dims(&case);
            let map = gradient_saliency(&decode(&case, "grad"), c, h, w);
            assert_close("grad", &map, &floats(&case["saliency"]), 1e-4);
        }
    }

    #[test]
    fn blur_kernel_is_torchvision_gaussian() {
        let k = gaussian_kernel(7, 3.0);
        // Hand values: exp(-x^2/18) for x = 0..3 is 1, 0.945959, 0.800737, 0.606531.
        let raw = [
            0.606531f32,
            0.800737,
            0.945959,
            1.0,
            0.945959,
            0.800737,
            0.606531,
        ];
        let total: f32 = raw.iter().sum();
        for (a, b) in k.iter().zip(raw) {
            assert!((a - b / total).abs() < 1e-6);
        }
    }

    #[test]
    fn blur_keeps_constant_maps_and_reflects_edges() {
        let flat = vec![2.5f32; 5 * 9];
        for v in gaussian_blur(&flat, 5, 9, 7, 3.0) {
            assert!((v - 2.5).abs() < 1e-6);
        }
        // An impulse at the left edge of a 1 x 4 map; reflect padding mirrors without
        // repeating the edge pixel ("dcb|abcd|cba").
        let k = gaussian_kernel(7, 3.0);
        let out = gaussian_blur(&[1.0, 0.0, 0.0, 0.0], 1, 4, 7, 3.0);
        // Taps of output[0] read indices -3..3 -> 3,2,1,0,1,2,3 (reflect): index 0 once.
        assert!((out[0] - k[3]).abs() < 1e-6);
        // output[3] reads 0..6 -> 0,1,2,3,2,1,0: index 0 at taps 0 and 6.
        assert!((out[3] - (k[0] + k[6])).abs() < 1e-6);
    }

    #[test]
    fn spectral_residual_of_a_constant_image_is_a_constant_map() {
        // Only the DC bin (0, 0) is non-zero: A0 = 8 + eps, every other A = eps. With
        // replicate padding the 3x3 box at the corner reads (0,0) four times, (0,1) and (1,0)
        // twice, (1,1) once: box = (4 ln A0 + 5 ln eps) / 9. The inverse FFT of the DC term
        // alone is F0 R0 / A0 / 16 everywhere.
        let sr = spectral_residual(&[0.5f32; 16], 4, 4);
        let a0 = 8.0f64 + SR_EPS;
        let r0 = (a0.ln() - (4.0 * a0.ln() + 5.0 * SR_EPS.ln()) / 9.0).exp();
        let expected = (8.0 * r0 / a0 / 16.0) as f32;
        for v in sr {
            assert!((v - expected).abs() <= 1e-5 * expected, "{v} vs {expected}");
        }
    }

    #[test]
    fn normalize_sum_handles_zero_maps() {
        assert_eq!(normalize_sum(&[0.0; 4]), vec![0.25; 4]);
        assert_eq!(normalize_sum(&[1.0, 3.0]), vec![0.25, 0.75]);
    }

    #[test]
    fn large_images_are_reduced_and_resized_back() {
        let (h, w) = (20, 300);
        let image: Vec<f32> = (0..h * w)
            .map(|i| ((i * 37 % 101) as f32) / 101.0)
            .collect();
        let map = guided_sr_saliency(&image, 1, h, w);
        assert_eq!(map.len(), h * w);
        let total: f32 = map.iter().sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert!(map.iter().all(|v| v.is_finite() && *v >= 0.0));
    }

    #[test]
    fn bilinear_resize_by_hand() {
        // 1 x 2 -> 1 x 4: sources at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (edge).
        let out = resize_bilinear(&[0.0, 4.0], 1, 2, 1, 4);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
    }
}
