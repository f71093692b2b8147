//! One batch of images synthesised from a trained teacher: DeepInversion (the pixels are
//! optimised) or NaturalInversion (a fresh generator, Feature Transfer Pyramid and channel
//! scaling are optimised), both keeping the batch of the lowest total loss seen.
//!
//! Per iteration, DeepInversion: jitter `x` (a random roll of up to `jitter` pixels along
//! each axis, wrapping around as `torch.roll` does, and a horizontal flip with probability
//! 1/2 when the data allow flips), run the teacher in inference mode, and take one Adam
//! step on `CE + a_tv TV + a_l2 ||x||_2 + a_bn BN (+ a_c competition)`. NaturalInversion:
//! `x1 = jitter(G(z, y))`, the teacher's stage outputs of `x1` without gradient, `x2 =
//! FTP(x1, f)`, `x3 = alpha * x2`, then the same loss (no competition term) on `jitter(x3)`
//! and one step of each of three Adam optimisers (generator, pyramid, scaling). The images
//! kept are the un-jittered `x` (DeepInversion) or `x3` (NaturalInversion) of the best
//! iteration, in the teacher's normalised input space.
//!
//! Labels: the classes in turn (`0, 1, .., K-1, 0, ..`) for the largest multiple of `K`
//! that fits the batch, the remaining images' labels drawn at random (the authors' rule,
//! with `K` taken from the teacher instead of a fixed 10).
//!
//! Knowing deviations: Adam keeps candle's default betas (0.9, 0.999) and the learning rates
//! stay constant (the spec names neither a schedule nor betas).

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var, backprop::GradStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::generator::{ChannelScaling, FeaturePyramid, Generator, StageShape};
use super::loss::{bn_statistics, competition, l2_norm, total_variation};
use crate::compression::Network;
use crate::nn::{Optimizer, OptimizerConfig};
use crate::training::{Result, TrainingError};

/// Which inversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// DeepInversion (Yin et al., CVPR 2020).
    Deep,
    /// NaturalInversion (Kim et al., AAAI 2022).
    Natural,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Deep => "deep",
            Method::Natural => "natural",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Method::Deep => "DeepInversion",
            Method::Natural => "NaturalInversion",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = TrainingError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "deep" | "deepinversion" | "di" => Ok(Method::Deep),
            "natural" | "naturalinversion" | "ni" => Ok(Method::Natural),
            other => Err(TrainingError::Config(format!(
                "unknown inversion method {other:?} (expected natural or deep)"
            ))),
        }
    }
}

/// Most images per batch, iterations per batch and latent dimensions a user may ask for.
pub const MAX_BATCH: usize = 256;
pub const MAX_ITERATIONS: usize = 10_000;
pub const MAX_LATENT: usize = 4096;
/// Largest image side a teacher may take: NaturalInversion's first layer maps the latent to
/// `128 x (side / 4)^2` values, so its size grows with the square of the side (the papers
/// invert 32 x 32 CIFAR networks).
pub const MAX_SIDE: usize = 64;

/// Hyper-parameters of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InversionSettings {
    pub method: Method,
    pub batch_size: usize,
    pub iterations: usize,
    /// `a_bn`.
    pub bn_weight: f64,
    /// `a_tv`.
    pub tv_weight: f64,
    /// `a_l2`.
    pub l2_weight: f64,
    /// DeepInversion: the pixels' learning rate.
    pub pixel_lr: f64,
    /// NaturalInversion: the generator's, pyramid's and scaling's learning rates.
    pub generator_lr: f64,
    pub pyramid_lr: f64,
    pub scaling_lr: f64,
    /// Largest roll in pixels.
    pub jitter: usize,
    /// Random horizontal flips (only when the teacher's data allow them).
    pub flips: bool,
    /// Adaptive DeepInversion's `a_c` (0 = plain DeepInversion); needs a student.
    pub competition_weight: f64,
    /// NaturalInversion: dimensions of `z`.
    pub latent_dim: usize,
}

impl InversionSettings {
    /// The spec's CIFAR-10 settings of each method.
    pub fn paper(method: Method) -> Self {
        let common = InversionSettings {
            method,
            batch_size: 256,
            iterations: 2000,
            bn_weight: 10.0,
            tv_weight: 2.5e-5,
            l2_weight: 0.0,
            pixel_lr: 0.05,
            generator_lr: 1e-3,
            pyramid_lr: 5e-4,
            scaling_lr: 5e-2,
            jitter: 2,
            flips: true,
            competition_weight: 0.0,
            latent_dim: 1024,
        };
        match method {
            Method::Deep => common,
            Method::Natural => InversionSettings {
                tv_weight: 6e-3,
                l2_weight: 1.5e-5,
                ..common
            },
        }
    }

    /// A message naming the first value out of range.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(format!("batch size must be 1..={MAX_BATCH}"));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!("iterations must be 1..={MAX_ITERATIONS}"));
        }
        if !(1..=MAX_LATENT).contains(&self.latent_dim) {
            return Err(format!("latent dimensions must be 1..={MAX_LATENT}"));
        }
        if self.jitter > 8 {
            return Err("jitter must be at most 8 pixels".into());
        }
        let weights = [
            ("bn_weight", self.bn_weight),
            ("tv_weight", self.tv_weight),
            ("l2_weight", self.l2_weight),
            ("competition_weight", self.competition_weight),
        ];
        for (name, w) in weights {
            if !(w.is_finite() && (0.0..=1e4).contains(&w)) {
                return Err(format!("{name} must be a number in [0, 10000]"));
            }
        }
        let rates = [
            ("pixel_lr", self.pixel_lr),
            ("generator_lr", self.generator_lr),
            ("pyramid_lr", self.pyramid_lr),
            ("scaling_lr", self.scaling_lr),
        ];
        for (name, r) in rates {
            if !(r.is_finite() && r > 0.0 && r <= 10.0) {
                return Err(format!("{name} must lie in (0, 10]"));
            }
        }
        if self.competition_weight > 0.0 && self.method == Method::Natural {
            return Err("the competition term belongs to (Adaptive) DeepInversion".into());
        }
        Ok(())
    }
}

/// The loss terms of one iteration (unweighted, except `total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LossTerms {
    pub total: f64,
    pub cross_entropy: f64,
    pub bn: f64,
    pub tv: f64,
    pub l2: f64,
    pub competition: f64,
}

/// A progress report; the callback returns `false` to stop (cancel).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub iteration: usize,
    pub iterations: usize,
    pub terms: LossTerms,
}

/// One synthesised batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// `[channels, height, width]` of every image.
    pub shape: [usize; 3],
    /// The kept images in the teacher's normalised input space, `B x C x H x W` row-major.
    #[serde(skip)]
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// The teacher's class and softmax probability of the label, per image.
    pub predicted: Vec<u32>,
    pub label_probability: Vec<f32>,
    /// Share of images the teacher assigns to their labels.
    pub teacher_accuracy: f64,
    pub best_iteration: usize,
    pub best: LossTerms,
    /// Terms every `iterations / 50` iterations (and the last), for the loss curve.
    pub history: Vec<(usize, LossTerms)>,
    pub iterations: usize,
    pub seconds: f64,
}

/// Labels of a batch: the classes in turn, the remainder drawn at random.
pub fn batch_labels(batch: usize, classes: usize, rng: &mut StdRng) -> Vec<u32> {
    let classes = classes.max(1);
    let cycled = batch / classes * classes;
    (0..batch)
        .map(|i| {
            if i < cycled {
                (i % classes) as u32
            } else {
                rng.random_range(0..classes) as u32
            }
        })
        .collect()
}

/// Shapes of the teacher's stage outputs (highest resolution first).
pub fn stage_shapes(teacher: &Network) -> Result<Vec<StageShape>> {
    let [c, h, w] = teacher.input_size;
    let x = Tensor::zeros((2, c, h, w), DType::F32, &Device::Cpu)?;
    let probe = teacher.probe(&x)?;
    probe
        .stages
        .iter()
        .map(|s| {
            let (_, ch, sh, sw) = s.dims4()?;
            if sh != sw {
                return Err(TrainingError::Config(format!(
                    "stage outputs must be square, got {sh} x {sw}"
                )));
            }
            Ok(StageShape {
                channels: ch,
                side: sh,
            })
        })
        .collect()
}

/// Checks that a network can be inverted: square image input and at least one batch norm.
pub fn check_teacher(teacher: &Network) -> Result<()> {
    let [c, h, w] = teacher.input_size;
    if h != w || !(4..=MAX_SIDE).contains(&h) || !h.is_multiple_of(4) || c == 0 {
        return Err(TrainingError::Config(format!(
            "inversion needs square images whose side is a multiple of 4, at most {MAX_SIDE}; {} takes {c} x {h} x {w}",
            teacher.architecture
        )));
    }
    if teacher.batch_norms().is_empty() {
        return Err(TrainingError::Config(format!(
            "{} has no batch norm: inversion matches batch-norm statistics",
            teacher.architecture
        )));
    }
    Ok(())
}

/// A random roll (and flip) drawn once and applied to a batch.
#[derive(Debug, Clone, Copy)]
struct Jitter {
    dy: isize,
    dx: isize,
    flip: bool,
}

impl Jitter {
    fn draw(rng: &mut StdRng, limit: usize, flips: bool) -> Self {
        let limit = limit as i64;
        Jitter {
            dy: rng.random_range(-limit..=limit) as isize,
            dx: rng.random_range(-limit..=limit) as isize,
            flip: flips && rng.random_bool(0.5),
        }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = roll(x, self.dy, 2)?;
        y = roll(&y, self.dx, 3)?;
        if self.flip {
            let w = y.dim(3)?;
            let index: Vec<u32> = (0..w as u32).rev().collect();
            y = y.index_select(&Tensor::from_vec(index, w, y.device())?, 3)?;
        }
        Ok(y)
    }
}

/// `torch.roll(x, shift, dim)`: elements leaving one end come back at the other.
fn roll(x: &Tensor, shift: isize, dim: usize) -> candle_core::Result<Tensor> {
    let n = x.dim(dim)?;
    let s = shift.rem_euclid(n as isize) as usize;
    if s == 0 {
        return Ok(x.clone());
    }
    Tensor::cat(&[x.narrow(dim, n - s, s)?, x.narrow(dim, 0, n - s)?], dim)
}

/// Standard normal noise from the seeded generator (candle's own `randn` is unseeded).
fn seeded_noise(rng: &mut StdRng, shape: &[usize]) -> Result<Tensor> {
    use rand_distr::{Distribution, StandardNormal};
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The weighted loss of a jittered batch and its terms.
fn loss_of(
    teacher: &Network,
    student: Option<&Network>,
    x: &Tensor,
    targets: &Tensor,
    settings: &InversionSettings,
) -> Result<(Tensor, LossTerms)> {
    let probe = teacher.probe(x)?;
    let bns = teacher.batch_norms();
    let ce = candle_nn::loss::cross_entropy(&probe.logits, targets)?;
    let bn = bn_statistics(&probe.bn_inputs, &bns)?;
    let tv = total_variation(x)?;
    let l2 = l2_norm(x)?;
    let mut total = ((&ce + bn.affine(settings.bn_weight, 0.0)?)?
        + (tv.affine(settings.tv_weight, 0.0)? + l2.affine(settings.l2_weight, 0.0)?)?)?;
    let mut comp_value = 0.0;
    if let Some(student) = student.filter(|_| settings.competition_weight > 0.0) {
        let comp = competition(&probe.logits, &student.forward(x)?, 3.0)?;
        comp_value = scalar(&comp)?;
        total = (total + comp.affine(settings.competition_weight, 0.0)?)?;
    }
    let terms = LossTerms {
        total: scalar(&total)?,
        cross_entropy: scalar(&ce)?,
        bn: scalar(&bn)?,
        tv: scalar(&tv)?,
        l2: scalar(&l2)?,
        competition: comp_value,
    };
    Ok((total, terms))
}

fn adam(vars: Vec<Var>) -> Result<Optimizer> {
    Ok(OptimizerConfig::AdamW { weight_decay: 0.0 }.build(vars)?)
}

/// Synthesises one batch. `seed` and `batch_index` fix every random draw. `student` is the
/// network Adaptive DeepInversion competes against (used only when its weight is set).
/// `progress` is called after every iteration; returning `false` stops with
/// [`TrainingError::Cancelled`].
pub fn invert_batch(
    teacher: &Network,
    student: Option<&Network>,
    settings: &InversionSettings,
    flips_allowed: bool,
    seed: u64,
    batch_index: usize,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<BatchOutcome> {
    settings.check().map_err(TrainingError::Config)?;
    check_teacher(teacher)?;
    if settings.competition_weight > 0.0 && student.is_none() {
        return Err(TrainingError::Config(
            "the competition term needs a student network".into(),
        ));
    }
    let started = Instant::now();
    let mut rng =
        StdRng::seed_from_u64(seed ^ (batch_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let classes = teacher.num_classes()?;
    let [c, h, w] = teacher.input_size;
    let b = settings.batch_size;
    let labels = batch_labels(b, classes, &mut rng);
    let targets = Tensor::from_vec(labels.clone(), b, &Device::Cpu)?;
    let flips = settings.flips && flips_allowed;
    let every = (settings.iterations / 50).max(1);

    let mut best: Option<(f64, usize, LossTerms, Tensor)> = None;
    let mut history = Vec::new();
    // Records iteration `it` (its terms and, if best so far, its images) and reports it;
    // an error when the caller asks to stop.
    let mut record = |it: usize, terms: LossTerms, image: &Tensor| -> Result<()> {
        if it.is_multiple_of(every) || it + 1 == settings.iterations {
            history.push((it, terms));
        }
        if terms.total.is_finite() && best.as_ref().is_none_or(|(v, ..)| terms.total < *v) {
            best = Some((terms.total, it, terms, image.detach()));
        }
        let go_on = progress(Progress {
            iteration: it + 1,
            iterations: settings.iterations,
            terms,
        });
        if go_on {
            Ok(())
        } else {
            Err(TrainingError::Cancelled)
        }
    };
    match settings.method {
        Method::Deep => {
            let x = Var::from_tensor(&seeded_noise(&mut rng, &[b, c, h, w])?)?;
            let mut opt = adam(vec![x.clone()])?;
            for it in 0..settings.iterations {
                let jitter = Jitter::draw(&mut rng, settings.jitter, flips);
                let xj = jitter.apply(x.as_tensor())?;
                let (loss, terms) = loss_of(teacher, student, &xj, &targets, settings)?;
                // A copy: the optimiser writes the variable's storage in place, which a
                // detached view would share.
                let image = x.as_tensor().copy()?;
                let grads: GradStore = loss.backward()?;
                opt.step(&grads, settings.pixel_lr)?;
                record(it, terms, &image)?;
            }
        }
        Method::Natural => {
            let generator = Generator::new(&mut rng, &labels, classes, settings.latent_dim, c, h)?;
            let stages = stage_shapes(teacher)?;
            let pyramid = FeaturePyramid::new(&mut rng, &stages, c, h)?;
            let scaling = ChannelScaling::new(&mut rng, b, c)?;
            let mut opt_g = adam(generator.vars())?;
            let mut opt_f = adam(pyramid.vars())?;
            let mut opt_a = adam(scaling.vars())?;
            for it in 0..settings.iterations {
                let x1 =
                    Jitter::draw(&mut rng, settings.jitter, flips).apply(&generator.forward()?)?;
                let features: Vec<Tensor> = teacher
                    .probe(&x1.detach())?
                    .stages
                    .iter()
                    .map(|t| t.detach())
                    .collect();
                let x2 = pyramid.forward(&x1, &features)?;
                let x3 = scaling.forward(&x2)?;
                let x3j = Jitter::draw(&mut rng, settings.jitter, flips).apply(&x3)?;
                let (loss, terms) = loss_of(teacher, None, &x3j, &targets, settings)?;
                let grads = loss.backward()?;
                opt_g.step(&grads, settings.generator_lr)?;
                opt_f.step(&grads, settings.pyramid_lr)?;
                opt_a.step(&grads, settings.scaling_lr)?;
                record(it, terms, &x3)?;
            }
        }
    }
    let Some((_, best_iteration, best_terms, images)) = best else {
        return Err(TrainingError::Config(
            "every iteration's loss was not finite; lower the learning rates".into(),
        ));
    };
    let logits = teacher.forward(&images)?;
    let predicted: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
    let label_probability = labels
        .iter()
        .zip(&probs)
        .map(|(&l, p)| p[l as usize])
        .collect();
    let hits = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(BatchOutcome {
        shape: [c, h, w],
        images: images.flatten_all()?.to_vec1()?,
        labels,
        predicted,
        label_probability,
        teacher_accuracy: hits as f64 / b as f64,
        best_iteration,
        best: best_terms,
        history,
        iterations: settings.iterations,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::{DigitsForm, TrainConfig, VggConfig, load_digits, train};

    /// The real digits at 16 x 16 (every other pixel of the 32 x 32 form: each digit pixel
    /// becomes a 2 x 2 block), so the tests' inversions cost a quarter.
    fn digits16() -> crate::compression::Dataset {
        let (train_set, _) = load_digits(DigitsForm::Image32).unwrap();
        let mut images = Vec::new();
        for i in 0..train_set.len() {
            let img = train_set.image(i).unwrap();
            for c in 0..3 {
                for y in (0..32).step_by(2) {
                    for x in (0..32).step_by(2) {
                        images.push(img[c * 1024 + y * 32 + x]);
                    }
                }
            }
        }
        crate::compression::Dataset::from_normalized(
            images,
            [3, 16, 16],
            train_set.labels().to_vec(),
            train_set.class_names().to_vec(),
            train_set.normalization(),
            false,
        )
        .unwrap()
    }

    /// The three-conv VGG with batch norm for 16 x 16 inputs: global average pooling before
    /// the classifier lets it take them.
    fn tiny_vgg_16px(width: f64, seed: u64) -> Network {
        let config = VggConfig {
            global_pool: true,
            ..VggConfig::tiny()
        };
        let mut net = Network::vgg_cifar(&config, width, 10, seed).unwrap();
        net.input_size = [3, 16, 16];
        net
    }

    /// A small VGG with batch norm trained for a few epochs on the real digits (16 x 16).
    fn digits_teacher() -> Network {
        let train_set = digits16();
        let net = tiny_vgg_16px(0.25, 7);
        let config = TrainConfig {
            epochs: 8,
            batch_size: 64,
            learning_rate: 0.05,
            augment: false,
            ..TrainConfig::default()
        };
        train(&net, &train_set, &config, &|_| {}).unwrap()
    }

    #[test]
    fn labels_cycle_then_draw() {
        let mut rng = StdRng::seed_from_u64(0);
        let l = batch_labels(23, 10, &mut rng);
        assert_eq!(&l[..20], &(0..20).map(|i| i % 10).collect::<Vec<u32>>()[..]);
        assert!(l[20..].iter().all(|&x| x < 10));
        assert_eq!(batch_labels(5, 100, &mut rng).len(), 5);
    }

    #[test]
    fn roll_wraps_like_torch() {
        let x = Tensor::new(&[[[[1f32, 2., 3.]]]], &Device::Cpu).unwrap();
        let y = roll(&x, 1, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![3., 1., 2.]);
        let y = roll(&x, -1, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![2., 3., 1.]);
    }

    #[test]
    fn both_methods_lower_the_loss_and_beat_noise() {
        let teacher = digits_teacher();
        let stages = stage_shapes(&teacher).unwrap();
        // Three max-pooled convolutions: stages at 32, 16 and 8 pixels (the last one's
        // pooled 4 x 4 map is a stage too), channels from the teacher.
        assert_eq!(
            stages.iter().map(|s| s.side).collect::<Vec<_>>(),
            vec![16, 8, 4, 2]
        );
        assert_eq!(
            stages.iter().map(|s| s.channels).collect::<Vec<_>>(),
            vec![16, 32, 64, 64]
        );
        let b = 10;
        // Noise: what the teacher says about random inputs labelled like the batch.
        let mut rng = StdRng::seed_from_u64(3);
        let noise = seeded_noise(&mut rng, &[b, 3, 16, 16]).unwrap();
        let labels = batch_labels(b, 10, &mut rng);
        let predicted: Vec<u32> = teacher
            .forward(&noise)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let noise_hits = predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        for method in [Method::Deep, Method::Natural] {
            let iterations = match method {
                Method::Deep => 60,
                Method::Natural => 80,
            };
            // a_bn = 1 instead of the CIFAR setting's 10: with 10, the statistics term
            // dominates the first few hundred iterations and the labels come later than a
            // test can afford to wait.
            let settings = InversionSettings {
                batch_size: b,
                iterations,
                bn_weight: 1.0,
                latent_dim: 64,
                flips: false,
                ..InversionSettings::paper(method)
            };
            let mut seen = Vec::new();
            let out = invert_batch(&teacher, None, &settings, false, 1, 0, &mut |p| {
                seen.push(p.terms.total);
                true
            })
            .unwrap();
            assert_eq!(seen.len(), iterations);
            let first = seen[0];
            let last: f64 = seen[iterations - 5..].iter().sum::<f64>() / 5.0;
            assert!(last < 0.7 * first, "{method:?}: loss {first} -> {last}");
            assert!(out.best.total <= last);
            let hits = (out.teacher_accuracy * b as f64).round() as usize;
            assert!(
                hits >= noise_hits + 2,
                "{method:?}: {hits} vs noise {noise_hits}"
            );
            assert_eq!(out.images.len(), b * 3 * 16 * 16);
        }
        // Cancelling stops at once.
        let settings = InversionSettings {
            batch_size: 4,
            iterations: 10,
            ..InversionSettings::paper(Method::Deep)
        };
        let mut calls = 0;
        let r = invert_batch(&teacher, None, &settings, false, 1, 0, &mut |_| {
            calls += 1;
            calls < 3
        });
        assert!(matches!(r, Err(TrainingError::Cancelled)));
        assert_eq!(calls, 3);
    }

    /// DeepInversion keeps the pixels of its best iteration, not the last ones: with a
    /// learning rate that ruins the batch after the first step, the kept images are the
    /// seeded starting noise.
    #[test]
    fn deep_inversion_keeps_the_best_iterations_pixels() {
        let teacher = tiny_vgg_16px(0.125, 1);
        let settings = InversionSettings {
            batch_size: 10,
            iterations: 4,
            pixel_lr: 10.0,
            flips: false,
            ..InversionSettings::paper(Method::Deep)
        };
        let out = invert_batch(&teacher, None, &settings, false, 5, 0, &mut |_| true).unwrap();
        assert_eq!(out.best_iteration, 0);
        // Ten images of ten classes draw no random label: the noise is the first draw.
        let mut rng = StdRng::seed_from_u64(5);
        let noise = seeded_noise(&mut rng, &[10, 3, 16, 16]).unwrap();
        assert_eq!(
            out.images,
            noise.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
