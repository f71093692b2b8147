//! Training and evaluation on the CPU with candle.
//!
//! [`train`] runs mini-batch SGD with momentum and (coupled, PyTorch-style) weight decay on
//! every parameter, a constant, cosine (per step) or step (per epoch) learning-rate
//! schedule, and the standard CIFAR augmentation (random 32x32 crop of the image padded by
//! 4 black pixels, random horizontal flip unless the data set says flips change the class,
//! as for digits; images of other shapes are not augmented). Batch norm uses batch statistics and updates its
//! running averages (momentum 0.1, unbiased variance) as PyTorch does. Shuffling and
//! augmentation draw from one generator seeded by [`TrainConfig::seed`], so a run is
//! reproducible. Progress is reported through a callback so that a CLI can draw a bar;
//! nothing is printed here.

use candle_core::{D, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::{Dataset, IMAGE_SIDE};
use super::model::{BN_MOMENTUM, Mode, Network};
use super::{CompressionError, Result};

/// Learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    /// Cosine annealing from the base rate to 0 over all steps.
    Cosine,
    /// Multiply by `gamma` at each milestone epoch (0-based epoch index where it applies).
    Step {
        milestones: Vec<usize>,
        gamma: f64,
    },
}

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    /// Random crop (4 px padding) and horizontal flip.
    pub augment: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The usual CIFAR recipe: lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            learning_rate: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine,
            augment: true,
            seed: 0,
        }
    }
}

/// Progress of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TrainEvent {
    EpochStarted {
        epoch: usize,
        epochs: usize,
        batches: usize,
    },
    BatchFinished {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
        learning_rate: f64,
    },
    EpochFinished {
        epoch: usize,
        epochs: usize,
        mean_loss: f64,
        train_accuracy: f64,
    },
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(CompressionError::Config(what.to_string()));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning rate must be a positive number");
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad("momentum must lie in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be a non-negative number");
        }
        if let LrSchedule::Step { gamma, .. } = &self.schedule
            && !(gamma.is_finite() && *gamma > 0.0)
        {
            return bad("step schedule gamma must be a positive number");
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based) of `total_steps`, in epoch `epoch`.
    pub fn learning_rate_at(&self, epoch: usize, step: usize, total_steps: usize) -> f64 {
        match &self.schedule {
            LrSchedule::Constant => self.learning_rate,
            LrSchedule::Cosine => {
                let t = step as f64 / total_steps.max(1) as f64;
                self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= epoch).count();
                self.learning_rate * gamma.powi(passed as i32)
            }
        }
    }
}

fn check_compatible(network: &Network, data: &Dataset) -> Result<()> {
    let classes = network.num_classes()?;
    if data.num_classes() > classes {
        return Err(CompressionError::Config(format!(
            "data set has {} classes but the network outputs {classes}",
            data.num_classes()
        )));
    }
    if network.input_size != data.shape() {
        return Err(CompressionError::Config(format!(
            "network expects input {:?}, the data set holds images of {:?}",
            network.input_size,
            data.shape()
        )));
    }
    Ok(())
}

/// Trains a copy of `network` on `data` and returns it; `network` itself is untouched.
pub fn train(
    network: &Network,
    data: &Dataset,
    config: &TrainConfig,
    progress: &dyn Fn(TrainEvent),
) -> Result<Network> {
    train_epochs(network, data, config, 0..config.epochs, progress)
}

/// Trains for the epochs `epochs` (a sub-range of `0..config.epochs`) with the learning
/// rates those epochs have in the full schedule. Momentum starts from zero. Used by
/// progressive pruning, which changes the network between epochs.
pub fn train_epochs(
    network: &Network,
    data: &Dataset,
    config: &TrainConfig,
    epochs: std::ops::Range<usize>,
    progress: &dyn Fn(TrainEvent),
) -> Result<Network> {
    config.validate()?;
    if epochs.end > config.epochs {
        return Err(CompressionError::Config(format!(
            "epoch range {epochs:?} exceeds the {} configured epochs",
            config.epochs
        )));
    }
    check_compatible(network, data)?;
    if data.is_empty() {
        return Err(CompressionError::Dataset(
            "cannot train on an empty data set".into(),
        ));
    }
    let mut net = network.clone();
    let mut vars = Vec::new();
    for t in net.trainable_tensors_mut() {
        // `detach` makes sure `from_tensor` copies: the caller's network is never mutated.
        let var = Var::from_tensor(&t.detach())?;
        *t = var.as_tensor().clone();
        vars.push(var);
    }
    let mut velocity: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut rng = StdRng::seed_from_u64(
        config
            .seed
            .wrapping_add((epochs.start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let batches = data.len().div_ceil(config.batch_size);
    let total_steps = batches * config.epochs;
    let pad_value = padding_values(data);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut step = batches * epochs.start;
    for epoch in epochs {
        progress(TrainEvent::EpochStarted {
            epoch,
            epochs: config.epochs,
            batches,
        });
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for (batch, indices) in order.chunks(config.batch_size).enumerate() {
            let lr = config.learning_rate_at(epoch, step, total_steps);
            let (images, labels) = if config.augment {
                augmented_batch(data, indices, &pad_value, &mut rng)?
            } else {
                data.batch(indices)?
            };
            let mut stats = Vec::new();
            let logits = net.forward_mode(&images, &mut Mode::Train(&mut stats))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            let grads = loss.backward()?;
            for (var, vel) in vars.iter().zip(velocity.iter_mut()) {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let weight = var.as_tensor().detach();
                let grad = if config.weight_decay > 0.0 {
                    (grad + weight.affine(config.weight_decay, 0.0)?)?
                } else {
                    grad.clone()
                };
                let update = match vel.take() {
                    Some(v) if config.momentum > 0.0 => (v.affine(config.momentum, 0.0)? + grad)?,
                    _ => grad,
                };
                var.set(&(weight - update.affine(lr, 0.0)?)?)?;
                *vel = Some(update);
            }
            net.apply_batch_stats(&stats, BN_MOMENTUM)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                return Err(CompressionError::Config(format!(
                    "training diverged (loss {loss_value}) at epoch {epoch}, batch {batch}; \
                     lower the learning rate"
                )));
            }
            loss_sum += loss_value * indices.len() as f64;
            correct += count_correct(&logits, &labels)?;
            step += 1;
            progress(TrainEvent::BatchFinished {
                epoch,
                batch,
                batches,
                loss: loss_value,
                learning_rate: lr,
            });
        }
        progress(TrainEvent::EpochFinished {
            epoch,
            epochs: config.epochs,
            mean_loss: loss_sum / data.len() as f64,
            train_accuracy: correct as f64 / data.len() as f64,
        });
    }
    drop(vars);
    for t in net.trainable_tensors_mut() {
        *t = t.detach();
    }
    Ok(net)
}

fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(D::Minus1)?;
    Ok(predicted
        .eq(labels)?
        .to_dtype(candle_core::DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}

/// Top-1 accuracy of `network` on `data`, in `[0, 1]`, evaluated in batches.
pub fn evaluate(network: &Network, data: &Dataset, batch_size: usize) -> Result<f64> {
    check_compatible(network, data)?;
    if batch_size == 0 {
        return Err(CompressionError::Config(
            "batch size must be at least 1".into(),
        ));
    }
    if data.is_empty() {
        return Err(CompressionError::Dataset(
            "cannot evaluate on an empty data set".into(),
        ));
    }
    let indices: Vec<usize> = (0..data.len()).collect();
    let mut correct = 0usize;
    for chunk in indices.chunks(batch_size) {
        let (images, labels) = data.batch(chunk)?;
        let logits = network.forward(&images)?;
        correct += count_correct(&logits, &labels)?;
    }
    Ok(correct as f64 / data.len() as f64)
}

/// Normalised value of a black pixel per channel (what PyTorch's zero padding becomes).
fn padding_values(data: &Dataset) -> [f32; 3] {
    let n = data.normalization();
    [
        -n.mean[0] / n.std[0],
        -n.mean[1] / n.std[1],
        -n.mean[2] / n.std[2],
    ]
}

const CROP_PADDING: usize = 4;

fn augmented_batch(
    data: &Dataset,
    indices: &[usize],
    pad_value: &[f32; 3],
    rng: &mut StdRng,
) -> Result<(Tensor, Tensor)> {
    if data.shape() != [3, IMAGE_SIDE, IMAGE_SIDE] {
        // Crops are defined for the 32x32 images only; other shapes train unaugmented.
        return data.batch(indices);
    }
    let side = IMAGE_SIDE;
    let plane = side * side;
    let image_len = data.image_len();
    let mut images = vec![0f32; indices.len() * image_len];
    let mut labels = Vec::with_capacity(indices.len());
    for (b, &i) in indices.iter().enumerate() {
        let src = data.image_checked(i)?;
        let dst = &mut images[b * image_len..(b + 1) * image_len];
        let oy = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
        let ox = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
        let flip = rng.random_bool(0.5) && data.flip_invariant();
        for c in 0..3 {
            for y in 0..side {
                let sy = y as isize + oy;
                for x in 0..side {
                    let xx = if flip { side - 1 - x } else { x };
                    let sx = xx as isize + ox;
                    let inside = sy >= 0 && sy < side as isize && sx >= 0 && sx < side as isize;
                    dst[c * plane + y * side + x] = if inside {
                        src[c * plane + sy as usize * side + sx as usize]
                    } else {
                        pad_value[c]
                    };
                }
            }
        }
        labels.push(data.labels()[i]);
    }
    Ok((
        Tensor::from_vec(
            images,
            (indices.len(), 3, side, side),
            &candle_core::Device::Cpu,
        )?,
        Tensor::from_vec(labels, indices.len(), &candle_core::Device::Cpu)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let mut c = TrainConfig {
            learning_rate: 1.0,
            ..Default::default()
        };
        assert!((c.learning_rate_at(0, 0, 100) - 1.0).abs() < 1e-12);
        assert!((c.learning_rate_at(0, 50, 100) - 0.5).abs() < 1e-12);
        c.schedule = LrSchedule::Step {
            milestones: vec![2, 4],
            gamma: 0.1,
        };
        assert!((c.learning_rate_at(3, 0, 1) - 0.1).abs() < 1e-12);
        assert!((c.learning_rate_at(4, 0, 1) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn invalid_config_is_an_error() {
        let net = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        let data = crate::compression::data::synthetic_dataset(&Default::default()).unwrap();
        let cfg = TrainConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(train(&net, &data, &cfg, &|_| {}).is_err());
    }
}
