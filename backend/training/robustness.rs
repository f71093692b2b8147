//! Robustness and filter-use measurements of a trained [`Classifier`] (always in eval mode):
//! clean accuracy, accuracy on corrupted copies of a test set, FGSM accuracy, input
//! gradients (for gradient saliency), and how evenly the channels of each stage are used.
//!
//! Corruptions work in pixel units: every image is mapped back to `[0, 1]` with its data
//! set's [`Normalization`], corrupted, clamped to `[0, 1]` and normalised again. The severity
//! tables (index = severity - 1) follow CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich):
//! - Gaussian noise, per-value std: 0.04, 0.06, 0.08, 0.09, 0.10 (CIFAR-10-C's table);
//! - Gaussian blur, sigma in pixels: 0.4, 0.6, 0.7, 0.8, 1.0 (CIFAR-10-C's table), kernel
//!   radius `ceil(3 sigma)`, borders replicated, each channel on its own;
//! - contrast, `x' = (x - m) * c + m` with `m` the image's per-channel mean and
//!   c = 0.4, 0.3, 0.2, 0.1, 0.05 (ImageNet-C's factors, stronger than CIFAR-10-C's
//!   0.75 .. 0.15, so that the small digits set is visibly affected).

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

use super::saliency::{self, Border};
use super::{Classifier, Result, TrainingError};
use crate::compression::data::{Dataset, Normalization};

/// Per-channel entry of a normalisation for channel `c` (one-channel sets use entry 0).
fn channel_stats(norm: &Normalization, c: usize) -> (f32, f32) {
    let i = c.min(2);
    (norm.mean[i], norm.std[i])
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(TrainingError::Config("batch size must be positive".into()));
    }
    Ok(())
}

fn check_not_empty(data: &Dataset) -> Result<()> {
    if data.is_empty() {
        return Err(TrainingError::Config(
            "cannot measure on an empty data set".into(),
        ));
    }
    Ok(())
}

/// Index batches `[0, b), [b, 2b), ...` over `n` images.
fn batches(n: usize, batch_size: usize) -> impl Iterator<Item = Vec<usize>> {
    (0..n)
        .step_by(batch_size)
        .map(move |s| (s..(s + batch_size).min(n)).collect())
}

/// Number of rows whose argmax equals the label.
fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(1)?;
    let hits = pred
        .eq(&labels.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(hits.round() as usize)
}

/// Top-1 accuracy (fraction in `[0, 1]`) of `model` in eval mode on `data`.
pub fn accuracy(model: &dyn Classifier, data: &Dataset, batch_size: usize) -> Result<f64> {
    check_batch_size(batch_size)?;
    check_not_empty(data)?;
    let mut hits = 0;
    for idx in batches(data.len(), batch_size) {
        let (x, y) = data.batch(&idx)?;
        let logits = model.forward(&x, false)?;
        hits += correct(&logits, &y)?;
    }
    Ok(hits as f64 / data.len() as f64)
}

// ----- corruptions ---------------------------------------------------------------------------

/// A corruption family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// Independent Gaussian noise on every value.
    GaussianNoise,
    /// Gaussian blur of every channel.
    Blur,
    /// Contrast reduction towards each image's per-channel mean.
    Contrast,
}

impl Corruption {
    /// The five-level table of this family (see the module documentation).
    pub fn table(self) -> [f32; 5] {
        match self {
            Corruption::GaussianNoise => [0.04, 0.06, 0.08, 0.09, 0.10],
            Corruption::Blur => [0.4, 0.6, 0.7, 0.8, 1.0],
            Corruption::Contrast => [0.4, 0.3, 0.2, 0.1, 0.05],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::Blur => "blur",
            Corruption::Contrast => "contrast",
        }
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A corruption family at a severity `1..=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CorruptionSpec {
    pub kind: Corruption,
    pub severity: u8,
}

/// Written `<family>-<severity>`, e.g. `gaussian_noise-3`.
impl std::fmt::Display for CorruptionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.kind.name(), self.severity)
    }
}

impl CorruptionSpec {
    /// A checked spec.
    pub fn new(kind: Corruption, severity: u8) -> Result<Self> {
        let spec = CorruptionSpec { kind, severity };
        spec.parameter()?;
        Ok(spec)
    }

    /// The table value of this severity: noise std, blur sigma or contrast factor.
    pub fn parameter(&self) -> Result<f32> {
        if !(1..=5).contains(&self.severity) {
            return Err(TrainingError::Config(format!(
                "corruption severity must be 1 to 5, got {}",
                self.severity
            )));
        }
        Ok(self.kind.table()[self.severity as usize - 1])
    }
}

/// A normalised Gaussian kernel reaching `ceil(3 sigma)` pixels each side (at least one).
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as usize;
    saliency::gaussian_kernel(2 * radius + 1, sigma)
}

/// A corrupted copy of `data` (same shape, labels, classes and normalisation). `seed` drives
/// the noise; blur and contrast are deterministic.
pub fn corrupt(data: &Dataset, spec: CorruptionSpec, seed: u64) -> Result<Dataset> {
    let p = spec.parameter()?;
    let norm = data.normalization();
    let [c, h, w] = data.shape();
    let plane = h * w;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let noise = rand_distr::Normal::new(0.0f32, p)
        .map_err(|e| TrainingError::Config(format!("noise std {p}: {e}")))?;
    let kernel = gaussian_kernel(p);
    let mut out = Vec::with_capacity(data.len() * data.image_len());
    let mut pixels = vec![0.0f32; data.image_len()];
    for i in 0..data.len() {
        let img = data
            .image(i)
            .ok_or_else(|| TrainingError::Config(format!("image {i} missing")))?;
        for ch in 0..c {
            let (m, s) = channel_stats(&norm, ch);
            for j in 0..plane {
                pixels[ch * plane + j] = img[ch * plane + j] * s + m;
            }
        }
        match spec.kind {
            Corruption::GaussianNoise => {
                for v in pixels.iter_mut() {
                    *v += noise.sample(&mut rng);
                }
            }
            Corruption::Blur => {
                for ch in 0..c {
                    {
                        let channel = &mut pixels[ch * plane..(ch + 1) * plane];
                        let blurred =
                            saliency::separable_filter(channel, h, w, &kernel, Border::Replicate);
                        channel.copy_from_slice(&blurred);
                    }
                }
            }
            Corruption::Contrast => {
                for ch in 0..c {
                    let values = &mut pixels[ch * plane..(ch + 1) * plane];
                    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / plane as f64;
                    let mean = mean as f32;
                    for v in values.iter_mut() {
                        *v = (*v - mean) * p + mean;
                    }
                }
            }
        }
        for ch in 0..c {
            let (m, s) = channel_stats(&norm, ch);
            out.extend(
                pixels[ch * plane..(ch + 1) * plane]
                    .iter()
                    .map(|&v| (v.clamp(0.0, 1.0) - m) / s),
            );
        }
    }
    Ok(Dataset::from_normalized(
        out,
        data.shape(),
        data.labels().to_vec(),
        data.class_names().to_vec(),
        norm,
        data.flip_invariant(),
    )?)
}

/// The fixed corrupted test copies used by the experiments: the three families at
/// severity 3 (noise seeded with `seed`).
pub fn corrupted_suite(data: &Dataset, seed: u64) -> Result<Vec<(CorruptionSpec, Dataset)>> {
    [
        Corruption::GaussianNoise,
        Corruption::Blur,
        Corruption::Contrast,
    ]
    .into_iter()
    .map(|kind| {
        let spec = CorruptionSpec { kind, severity: 3 };
        Ok((spec, corrupt(data, spec, seed)?))
    })
    .collect()
}

// ----- gradients and FGSM ---------------------------------------------------------------------

/// Mean cross-entropy of `logits` (`B x K`) against `targets`: class indices (rank 1) or
/// soft targets (`B x K`, rows summing to 1).
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    match targets.rank() {
        1 => Ok(candle_nn::loss::cross_entropy(
            logits,
            &targets.to_dtype(DType::U32)?,
        )?),
        2 => {
            let logp = candle_nn::ops::log_softmax(logits, 1)?;
            let b = logits.dim(0)? as f64;
            Ok(((logp * targets.to_dtype(logits.dtype())?)?.sum_all()? * (-1.0 / b))?)
        }
        r => Err(TrainingError::Config(format!(
            "targets must be labels (rank 1) or soft targets (rank 2), got rank {r}"
        ))),
    }
}

/// `dLoss/dx` of the mean cross-entropy of `model` on `images` against `labels` (class
/// indices, or `B x K` soft targets), same shape as `images`. `train = true` runs batch norm
/// on batch statistics and so also updates its running averages. Gradients of the weights
/// are computed and dropped.
pub fn input_gradients(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let x = Var::from_tensor(&images.detach())?;
    let logits = model.forward(x.as_tensor(), train)?;
    let loss = cross_entropy(&logits, labels)?;
    let grads = loss.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.detach()),
        // The loss does not depend on the input at all.
        None => Ok(images.zeros_like()?),
    }
}

/// Per-channel tensor `1 x C x 1 x 1` from `f(mean, std)`.
fn channel_tensor(
    norm: &Normalization,
    channels: usize,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Tensor> {
    let v: Vec<f32> = (0..channels)
        .map(|c| {
            let (m, s) = channel_stats(norm, c);
            f(m, s)
        })
        .collect();
    Ok(Tensor::from_vec(v, (1, channels, 1, 1), &Device::Cpu)?)
}

/// One FGSM step on a normalised batch (`N x C x H x W`): `x + eps_c * sign(dLoss/dx)`
/// with `eps_c = epsilon_pixels / std_c`, then clamped to the normalised image of `[0, 1]`.
/// The model runs in eval mode; the loss is the mean cross-entropy on `labels`.
pub fn fgsm_perturb(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    epsilon_pixels: f32,
    normalization: &Normalization,
) -> Result<Tensor> {
    if !(epsilon_pixels.is_finite() && epsilon_pixels >= 0.0) {
        return Err(TrainingError::Config(format!(
            "FGSM epsilon must be a non-negative number, got {epsilon_pixels}"
        )));
    }
    if images.rank() != 4 {
        return Err(TrainingError::Config(format!(
            "FGSM needs N x C x H x W images, got {:?}",
            images.dims()
        )));
    }
    let c = images.dim(1)?;
    let grad = input_gradients(model, images, labels, false)?;
    let eps = channel_tensor(normalization, c, |_, s| epsilon_pixels / s)?;
    let lo = channel_tensor(normalization, c, |m, s| -m / s)?;
    let hi = channel_tensor(normalization, c, |m, s| (1.0 - m) / s)?;
    let step = grad.sign()?.broadcast_mul(&eps)?;
    let x = (images.detach() + step)?;
    Ok(x.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?)
}

/// Accuracy on FGSM-perturbed copies of `data` (one step of `epsilon_pixels` in `[0, 1]`
/// pixel units, against the true labels, model in eval mode).
pub fn fgsm_accuracy(
    model: &dyn Classifier,
    data: &Dataset,
    epsilon_pixels: f32,
    batch_size: usize,
) -> Result<f64> {
    check_batch_size(batch_size)?;
    check_not_empty(data)?;
    let norm = data.normalization();
    let mut hits = 0;
    for idx in batches(data.len(), batch_size) {
        let (x, y) = data.batch(&idx)?;
        let adv = fgsm_perturb(model, &x, &y, epsilon_pixels, &norm)?;
        let logits = model.forward(&adv, false)?.detach();
        hits += correct(&logits, &y)?;
    }
    Ok(hits as f64 / data.len() as f64)
}

// ----- filter use ----------------------------------------------------------------------------

/// How evenly the channels of one hidden state are used over a data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerUse {
    /// Hidden state `k` (the output of block `k`).
    pub stage: usize,
    pub channels: usize,
    /// Shannon entropy of the channels' shares of the mean L2 norm, divided by `ln C`:
    /// 1 = perfectly even, 0 = a single channel carries everything.
    pub entropy: f64,
    /// Gini coefficient of the mean norms: 0 = perfectly even, `(C - 1) / C` = one channel.
    pub gini: f64,
}

/// Normalised Shannon entropy of non-negative values taken as shares of their sum. A single
/// value, or values all zero, count as perfectly even (1).
pub fn normalized_entropy(values: &[f64]) -> f64 {
    let total: f64 = values.iter().sum();
    if values.len() < 2 || total <= 0.0 {
        return 1.0;
    }
    let h: f64 = values
        .iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| {
            let p = v / total;
            -p * p.ln()
        })
        .sum();
    (h / (values.len() as f64).ln()).clamp(0.0, 1.0)
}

/// Gini coefficient of non-negative values (0 when all are equal or all zero).
pub fn gini(values: &[f64]) -> f64 {
    let n = values.len();
    let total: f64 = values.iter().sum();
    if n < 2 || total <= 0.0 {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (i + 1) as f64 * v)
        .sum();
    let nf = n as f64;
    (2.0 * weighted / (nf * total) - (nf + 1.0) / nf).max(0.0)
}

/// Per-sample, per-channel L2 norms (`B x C`) of a hidden state: over space for
/// `B x C x H x W`, over tokens for `B x T x D` (channels = D), absolute values for `B x D`.
fn channel_norms(h: &Tensor) -> Result<Tensor> {
    let h = h.to_dtype(DType::F32)?;
    Ok(match h.rank() {
        4 => h.flatten_from(2)?.sqr()?.sum(2)?.sqrt()?,
        3 => h.sqr()?.sum(1)?.sqrt()?,
        2 => h.abs()?,
        r => {
            return Err(TrainingError::Config(format!(
                "cannot measure channel use of a rank-{r} hidden state"
            )));
        }
    })
}

/// Filter-use evenness of every stage output (hidden states `1 ..= stages() - 1`): for each,
/// the mean over `data` of the per-channel L2 norms, summarised by [`normalized_entropy`] and
/// [`gini`]. Model in eval mode.
pub fn filter_use(
    model: &dyn Classifier,
    data: &Dataset,
    batch_size: usize,
) -> Result<Vec<LayerUse>> {
    check_batch_size(batch_size)?;
    check_not_empty(data)?;
    let hidden = model.stages().saturating_sub(1);
    let mut sums: Vec<Vec<f64>> = vec![Vec::new(); hidden];
    for idx in batches(data.len(), batch_size) {
        let (x, _) = data.batch(&idx)?;
        let mut h = x;
        for k in 1..=hidden {
            h = model.forward_range(&h, k - 1, k, false)?.detach();
            let norms = channel_norms(&h)?.sum(0)?.to_vec1::<f32>()?;
            let acc = &mut sums[k - 1];
            if acc.is_empty() {
                acc.resize(norms.len(), 0.0);
            }
            for (a, v) in acc.iter_mut().zip(norms) {
                *a += v as f64;
            }
        }
    }
    let n = data.len() as f64;
    Ok(sums
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
            LayerUse {
                stage: i + 1,
                channels: mean.len(),
                entropy: normalized_entropy(&mean),
                gini: gini(&mean),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::data::{DigitsForm, load_digits};
    use crate::training::preact::PreActResNet18;
    use candle_nn::VarMap;

    const NORM: Normalization = Normalization {
        mean: [0.5, 0.4, 0.3],
        std: [0.25, 0.2, 0.1],
    };

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| i.to_string()).collect()
    }

    /// A data set from pixel values in `[0, 1]` (CHW per image).
    fn from_pixels(pixels: &[f32], shape: [usize; 3], labels: Vec<u32>, k: usize) -> Dataset {
        let plane = shape[1] * shape[2];
        let len = shape[0] * plane;
        let values = pixels
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i % len) / plane;
                (v - NORM.mean[c]) / NORM.std[c]
            })
            .collect();
        Dataset::from_normalized(values, shape, labels, names(k), NORM, true).unwrap()
    }

    fn pixels_of(data: &Dataset, i: usize) -> Vec<f32> {
        let [_, h, w] = data.shape();
        let norm = data.normalization();
        data.image(i)
            .unwrap()
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                let c = j / (h * w);
                v * norm.std[c] + norm.mean[c]
            })
            .collect()
    }

    fn digits(n: usize) -> Dataset {
        let (_, test) = load_digits(DigitsForm::Image32).unwrap();
        test.take(n).unwrap()
    }

    #[test]
    fn corrupt_keeps_shape_labels_and_is_seeded() {
        let data = digits(6);
        for (spec, c) in corrupted_suite(&data, 3).unwrap() {
            assert_eq!(spec.severity, 3);
            assert_eq!(c.shape(), data.shape());
            assert_eq!(c.labels(), data.labels());
            assert_eq!(c.class_names(), data.class_names());
            assert_eq!(c.normalization(), data.normalization());
            assert_eq!(c.flip_invariant(), data.flip_invariant());
            let again = corrupt(&data, spec, 3).unwrap();
            assert_eq!(again.image(5).unwrap(), c.image(5).unwrap());
            assert_ne!(c.image(0).unwrap(), data.image(0).unwrap(), "{spec:?}");
        }
        let spec = CorruptionSpec::new(Corruption::GaussianNoise, 2).unwrap();
        let a = corrupt(&data, spec, 1).unwrap();
        let b = corrupt(&data, spec, 2).unwrap();
        assert_ne!(a.image(0).unwrap(), b.image(0).unwrap());
        assert_eq!(spec.to_string(), "gaussian_noise-2");
        assert!(CorruptionSpec::new(Corruption::Blur, 0).is_err());
        assert!(CorruptionSpec::new(Corruption::Blur, 6).is_err());
        let bad = CorruptionSpec {
            kind: Corruption::Contrast,
            severity: 9,
        };
        assert!(corrupt(&data, bad, 0).is_err());
    }

    #[test]
    fn contrast_matches_hand_computed_pixels() {
        // One 3 x 1 x 2 image; channel 0 holds 0.2 and 0.8 (mean 0.5).
        let data = from_pixels(&[0.2, 0.8, 0.4, 0.4, 0.0, 1.0], [3, 1, 2], vec![1], 2);
        let spec = CorruptionSpec::new(Corruption::Contrast, 3).unwrap(); // factor 0.2
        let out = corrupt(&data, spec, 0).unwrap();
        let px = pixels_of(&out, 0);
        let want = [0.44, 0.56, 0.4, 0.4, 0.4, 0.6];
        for (g, w) in px.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{px:?}");
        }
        // Normalised value of the first pixel: (0.44 - 0.5) / 0.25.
        assert!((out.image(0).unwrap()[0] + 0.24).abs() < 1e-5);
    }

    #[test]
    fn noise_has_the_table_std_and_clamps() {
        let pixels = vec![0.5f32; 4 * 3 * 32 * 32];
        let data = from_pixels(&pixels, [3, 32, 32], vec![0, 1, 0, 1], 2);
        for severity in [1u8, 3, 5] {
            let spec = CorruptionSpec::new(Corruption::GaussianNoise, severity).unwrap();
            let target = spec.parameter().unwrap() as f64;
            let out = corrupt(&data, spec, 11).unwrap();
            let d: Vec<f64> = (0..4)
                .flat_map(|i| pixels_of(&out, i))
                .map(|v| v as f64 - 0.5)
                .collect();
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            let std = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
            assert!(mean.abs() < 0.005, "mean {mean}");
            assert!((std / target - 1.0).abs() < 0.03, "std {std} vs {target}");
        }
        // A white image cannot leave [0, 1].
        let white = from_pixels(&[1.0; 3 * 4 * 4], [3, 4, 4], vec![0], 2);
        let spec = CorruptionSpec::new(Corruption::GaussianNoise, 5).unwrap();
        let px = pixels_of(&corrupt(&white, spec, 0).unwrap(), 0);
        assert!(px.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
        assert!(px.iter().any(|&v| v < 0.999));
    }

    #[test]
    fn blur_keeps_constants_and_spreads_a_spike() {
        let constant = from_pixels(&[0.3; 3 * 9 * 9], [3, 9, 9], vec![0], 2);
        let spec = CorruptionSpec::new(Corruption::Blur, 5).unwrap();
        let px = pixels_of(&corrupt(&constant, spec, 0).unwrap(), 0);
        assert!(px.iter().all(|&v| (v - 0.3).abs() < 1e-5));
        let mut spike = vec![0.0f32; 3 * 9 * 9];
        spike[4 * 9 + 4] = 1.0;
        let data = from_pixels(&spike, [3, 9, 9], vec![0], 2);
        let px = pixels_of(&corrupt(&data, spec, 0).unwrap(), 0);
        let centre = px[4 * 9 + 4];
        assert!(centre < 0.5 && centre > 0.1, "centre {centre}");
        assert!(px[4 * 9 + 5] > 0.01 && (px[4 * 9 + 5] - px[3 * 9 + 4]).abs() < 1e-6);
        let mass: f32 = px[..81].iter().sum();
        assert!((mass - 1.0).abs() < 1e-4, "mass {mass}");
    }

    /// Logits = W * flatten(x) + b, with fixed weights; a single block.
    struct Linear {
        w: Tensor,
        b: Tensor,
        map: VarMap,
    }

    impl Classifier for Linear {
        fn stages(&self) -> usize {
            1
        }
        fn forward_range(&self, x: &Tensor, from: usize, to: usize, _: bool) -> Result<Tensor> {
            if from == to {
                return Ok(x.clone());
            }
            let flat = x.flatten_from(1)?;
            Ok(flat.matmul(&self.w.t()?)?.broadcast_add(&self.b)?)
        }
        fn varmap(&self) -> &VarMap {
            &self.map
        }
    }

    #[test]
    fn fgsm_on_a_linear_model_moves_by_eps_over_std_along_the_gradient_sign() {
        // Two images 3 x 1 x 2 (six values each), three classes.
        let d = 6;
        let w: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let b = [0.1f32, -0.2, 0.05];
        let model = Linear {
            w: Tensor::from_vec(w.clone(), (3, d), &Device::Cpu).unwrap(),
            b: Tensor::from_vec(b.to_vec(), 3, &Device::Cpu).unwrap(),
            map: VarMap::new(),
        };
        let pixels = [
            0.3f32, 0.5, 0.45, 0.6, 0.4, 0.35, 0.55, 0.4, 0.5, 0.3, 0.45, 0.5,
        ];
        let labels = [2u32, 0];
        let data = from_pixels(&pixels, [3, 1, 2], labels.to_vec(), 3);
        let (x, y) = data.batch(&[0, 1]).unwrap();
        let eps = 0.03f32;
        let adv = fgsm_perturb(&model, &x, &y, eps, &NORM).unwrap();
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let adv = adv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, &label) in labels.iter().enumerate() {
            let xi = &x[i * d..(i + 1) * d];
            // Softmax of the logits and dLoss/dx = (p - onehot)^T W / B, by hand.
            let logits: Vec<f64> = (0..3)
                .map(|k| {
                    b[k] as f64
                        + (0..d)
                            .map(|j| w[k * d + j] as f64 * xi[j] as f64)
                            .sum::<f64>()
                })
                .collect();
            let zmax = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - zmax).exp()).sum();
            let p: Vec<f64> = logits.iter().map(|l| (l - zmax).exp() / z).collect();
            for j in 0..d {
                let g: f64 = (0..3)
                    .map(|k| {
                        let t = if k == label as usize { 1.0 } else { 0.0 };
                        (p[k] - t) * w[k * d + j] as f64 / 2.0
                    })
                    .sum();
                assert!(g.abs() > 1e-6);
                let c = j / 2;
                let want = xi[j] + g.signum() as f32 * eps / NORM.std[c];
                let got = adv[i * d + j];
                assert!(
                    (got - want).abs() < 1e-5,
                    "image {i} value {j}: {got} vs {want}"
                );
            }
        }
        // A large step is clamped to the normalised image of [0, 1].
        let big = fgsm_perturb(
            &model,
            &data.batch(&[0]).unwrap().0,
            &y.narrow(0, 0, 1).unwrap(),
            0.9,
            &NORM,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        for (j, v) in big.iter().enumerate() {
            let c = j / 2;
            let raw = v * NORM.std[c] + NORM.mean[c];
            assert!(raw.abs() < 1e-5 || (raw - 1.0).abs() < 1e-5, "{raw}");
        }
        assert!(fgsm_perturb(&model, &data.batch(&[0]).unwrap().0, &y, -0.1, &NORM).is_err());
    }

    #[test]
    fn fgsm_with_zero_epsilon_is_plain_accuracy_and_hurts_otherwise() {
        let data = digits(12);
        let net = PreActResNet18::new(0.0625, 10, 1).unwrap();
        let clean = accuracy(&net, &data, 5).unwrap();
        let zero = fgsm_accuracy(&net, &data, 0.0, 5).unwrap();
        assert_eq!(clean, zero);
        let by_one = accuracy(&net, &data, 1).unwrap();
        assert_eq!(clean, by_one);
        assert!(fgsm_accuracy(&net, &data, 0.1, 12).unwrap() <= 1.0);
        assert!(accuracy(&net, &data, 0).is_err());
    }

    #[test]
    fn input_gradients_match_shape_and_accept_soft_targets() {
        let data = digits(4);
        let net = PreActResNet18::new(0.0625, 10, 2).unwrap();
        let (x, y) = data.batch(&[0, 1, 2, 3]).unwrap();
        let g = input_gradients(&net, &x, &y, false).unwrap();
        assert_eq!(g.dims(), x.dims());
        let nonzero = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(nonzero > 0.0);
        // One-hot soft targets give the same gradient as the labels.
        let soft = candle_nn::encoding::one_hot(y.clone(), 10, 1.0f32, 0.0f32).unwrap();
        let gs = input_gradients(&net, &x, &soft, false).unwrap();
        let diff = (&g - &gs)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "diff {diff}");
    }

    #[test]
    fn entropy_and_gini_of_hand_made_vectors() {
        let uniform = [2.0; 8];
        assert!((normalized_entropy(&uniform) - 1.0).abs() < 1e-12);
        assert!(gini(&uniform).abs() < 1e-12);
        let one_hot = [0.0, 0.0, 3.0, 0.0];
        assert!(normalized_entropy(&one_hot).abs() < 1e-12);
        assert!((gini(&one_hot) - 0.75).abs() < 1e-12);
        // Two of four channels used equally: entropy ln 2 / ln 4 = 0.5, Gini 0.5.
        let half = [1.0, 0.0, 1.0, 0.0];
        assert!((normalized_entropy(&half) - 0.5).abs() < 1e-12);
        assert!((gini(&half) - 0.5).abs() < 1e-12);
        // Shares 1/6, 2/6, 3/6.
        let v = [1.0, 2.0, 3.0];
        let h: f64 = [1.0f64, 2.0, 3.0]
            .iter()
            .map(|x| -(x / 6.0) * (x / 6.0).ln())
            .sum::<f64>()
            / 3f64.ln();
        assert!((normalized_entropy(&v) - h).abs() < 1e-12);
        assert!((gini(&v) - 2.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn filter_use_covers_every_stage_output() {
        let data = digits(5);
        let net = PreActResNet18::new(0.0625, 10, 3).unwrap();
        let uses = filter_use(&net, &data, 2).unwrap();
        let channels = net.stage_channels();
        assert_eq!(uses.len(), 5);
        for (i, u) in uses.iter().enumerate() {
            assert_eq!(u.stage, i + 1);
            assert_eq!(u.channels, channels[i + 1]);
            assert!((0.0..=1.0).contains(&u.entropy) && u.entropy > 0.3, "{u:?}");
            assert!((0.0..1.0).contains(&u.gini), "{u:?}");
        }
        // Batch size does not change the result beyond rounding.
        let again = filter_use(&net, &data, 5).unwrap();
        for (a, b) in uses.iter().zip(&again) {
            assert!((a.entropy - b.entropy).abs() < 1e-6);
        }
    }
}
