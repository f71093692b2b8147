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
//!
//! Three steps from the same weights and batch give PyTorch's losses, weights, running
//! statistics and eval logits (`tests/compression_train.rs`, fixture written by
//! `scripts/compression/train_parity.py`). What differs from a PyTorch run of the same
//! recipe is the random stream (initialisation, shuffling, crops draw from our seeded
//! generator), so two runs agree in distribution, not value by value.

use candle_core::Var;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::data::Dataset;
use super::model::{BN_MOMENTUM, Mode, Network};
use super::{CompressionError, Result};
use crate::nn::count_correct;
pub use crate::nn::fit::TrainEvent;
use crate::nn::fit::{EpochLoop, StepOutput};
use crate::nn::optim::Sgd;
pub use crate::nn::schedule::LrSchedule;

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
        self.schedule.check().map_err(CompressionError::Config)
    }

    /// Learning rate at `step` (0-based) of `total_steps`, in epoch `epoch`.
    pub fn learning_rate_at(&self, epoch: usize, step: usize, total_steps: usize) -> f64 {
        let per_epoch = total_steps / self.epochs.max(1);
        self.schedule
            .rate(self.learning_rate, epoch, step, total_steps, per_epoch)
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
    let mut optimizer = Sgd::new(vars, config.momentum, config.weight_decay);
    let mut rng = StdRng::seed_from_u64(
        config
            .seed
            .wrapping_add((epochs.start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let epoch_loop = EpochLoop {
        data,
        batch_size: config.batch_size,
        epochs: config.epochs,
        base_lr: config.learning_rate,
        schedule: &config.schedule,
        augment: config.augment,
    };
    epoch_loop.run(
        epochs,
        &mut rng,
        progress,
        |images, labels, lr, _rng| -> Result<StepOutput> {
            let mut stats = Vec::new();
            let logits = net.forward_mode(images, &mut Mode::Train(&mut stats))?;
            let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
            optimizer.step(&loss.backward()?, lr)?;
            net.apply_batch_stats(&stats, BN_MOMENTUM)?;
            Ok(StepOutput {
                loss: loss.to_scalar::<f32>()? as f64,
                correct: count_correct(&logits, labels)?,
            })
        },
        |loss, epoch, batch| {
            CompressionError::Config(format!(
                "training diverged (loss {loss}) at epoch {epoch}, batch {batch}; \
                 lower the learning rate"
            ))
        },
    )?;
    drop(optimizer);
    for t in net.trainable_tensors_mut() {
        *t = t.detach();
    }
    Ok(net)
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

    /// The module's promise: the same seed trains the same weights, bit for bit.
    #[test]
    fn same_seed_repeats_bit_for_bit() {
        let net = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        let data = crate::compression::data::synthetic_dataset(
            &crate::compression::data::SyntheticConfig {
                images_per_class: 24,
                ..Default::default()
            },
        )
        .unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 16,
            seed: 3,
            ..Default::default()
        };
        let first = train(&net, &data, &cfg, &|_| {}).unwrap();
        let second = train(&net, &data, &cfg, &|_| {}).unwrap();
        let (a, b) = (first.tensor_bits(), second.tensor_bits());
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x == y, "two runs with seed 3 trained different {name}");
        }
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
