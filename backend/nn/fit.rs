//! The epoch loop every trainer shares: shuffle with a seeded generator, cut batches,
//! augment, ask the caller's step function to do one update at the scheduled learning rate,
//! stop on a non-finite loss, and report progress through a callback.

use std::ops::Range;

use candle_core::{D, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::augment::{augmented_batch, padding_values};
use super::schedule::LrSchedule;
use crate::compression::data::Dataset;

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

/// What one step reports: its loss and how many of the batch's (unmixed) labels the
/// network's training-mode logits got right (0 when the step cannot tell).
pub struct StepOutput {
    pub loss: f64,
    pub correct: usize,
}

/// The loop's settings; the step function holds the network and the optimizer.
pub struct EpochLoop<'a> {
    pub data: &'a Dataset,
    pub batch_size: usize,
    /// Epochs of the whole schedule (a run may train a sub-range of them).
    pub epochs: usize,
    pub base_lr: f64,
    pub schedule: &'a LrSchedule,
    pub augment: bool,
}

impl EpochLoop<'_> {
    /// Trains the epochs `epochs` (a sub-range of `0..self.epochs`) with the learning rates
    /// those epochs have in the full schedule. `step(images, labels, lr, rng)` does one
    /// update; `diverged(loss, epoch, batch)` builds the error for a non-finite loss.
    pub fn run<E: From<candle_core::Error>>(
        &self,
        epochs: Range<usize>,
        rng: &mut StdRng,
        progress: &dyn Fn(TrainEvent),
        mut step: impl FnMut(&Tensor, &Tensor, f64, &mut StdRng) -> Result<StepOutput, E>,
        diverged: impl Fn(f64, usize, usize) -> E,
    ) -> Result<(), E> {
        let batch_size = self.batch_size.max(1);
        let batches = self.data.len().div_ceil(batch_size);
        let total_steps = batches * self.epochs;
        let pad_value = padding_values(self.data);
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let mut global_step = batches * epochs.start;
        for epoch in epochs {
            progress(TrainEvent::EpochStarted {
                epoch,
                epochs: self.epochs,
                batches,
            });
            order.shuffle(rng);
            let (mut loss_sum, mut correct) = (0f64, 0usize);
            for (batch, indices) in order.chunks(batch_size).enumerate() {
                let lr = self
                    .schedule
                    .rate(self.base_lr, epoch, global_step, total_steps, batches);
                let (images, labels) = if self.augment {
                    augmented_batch(self.data, indices, &pad_value, rng)?
                } else {
                    self.data
                        .batch(indices)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                };
                let out = step(&images, &labels, lr, rng)?;
                if !out.loss.is_finite() {
                    return Err(diverged(out.loss, epoch, batch));
                }
                loss_sum += out.loss * indices.len() as f64;
                correct += out.correct;
                global_step += 1;
                progress(TrainEvent::BatchFinished {
                    epoch,
                    batch,
                    batches,
                    loss: out.loss,
                    learning_rate: lr,
                });
            }
            progress(TrainEvent::EpochFinished {
                epoch,
                epochs: self.epochs,
                mean_loss: loss_sum / self.data.len().max(1) as f64,
                train_accuracy: correct as f64 / self.data.len().max(1) as f64,
            });
        }
        Ok(())
    }
}

/// How many rows of `logits` have their argmax at `labels`.
pub fn count_correct(logits: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
    let predicted = logits.argmax(D::Minus1)?;
    Ok(predicted
        .eq(labels)?
        .to_dtype(candle_core::DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}
