//! One pruning experiment: a method at one ratio on a trained model and a data set,
//! measured.
//!
//! [`run_experiment`] reports parameters and MACs before and after (see
//! [`crate::compression::count`]), top-1 test accuracy before pruning, right after pruning
//! (no fine-tuning) and after fine-tuning for the configured epochs, and the wall time of
//! pruning and of fine-tuning. The result is serde-serialisable so callers can store it.
//!
//! Three schedules:
//! - `OneShot`: prune once, then fine-tune (train-prune-finetune).
//! - `Progressive { stages }`: the REPrune (AAAI 2024) style of pruning while training: at
//!   the start of each of the first `stages` fine-tuning epochs, the network is pruned
//!   further, towards the final widths along the cubic schedule of Zhu & Gupta
//!   (`f_s = 1 - (1 - s/S)^3` of the channels to remove), then trained; the remaining
//!   epochs train the final network. Momentum restarts at each stage; the learning rate
//!   follows the full schedule. With `LayerRatios::GammaQuantile` (REPrune) each stage
//!   recomputes the global gamma quantile on the current weights, for the share of the
//!   original channels that the stage must have removed. `accuracy_pruned` is then the
//!   accuracy of the one-shot prune at the final widths, so that column stays comparable
//!   across schedules. Pruned channels are removed for good.
//! - `FromScratch { interval, until }`: REPrune's schedule (AAAI 2024, after CHEX): the
//!   given network (freshly initialised, for the paper's setting) trains for all the
//!   epochs; every `interval` epochs before `until` the kept channels are chosen afresh on
//!   the full network, whose removed channels keep the weights they last had, so a channel
//!   removed at one step can come back at the next (regrowth); the trained pruned network's
//!   weights are written back into the full one after each epoch until `until`. The
//!   target ratio applies at every step (no ramp; the platform's choice, as is regrowth
//!   with the last weights instead of CHEX's re-initialisation). Methods that merge
//!   (Neuron Merging) are refused by this schedule.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::count::count_cost;
use super::data::Dataset;
use super::model::Network;
use super::prune::{
    LayerRatios, PruneMethod, PruneOptions, apply_all, prune, prune_sites, resolve_keep_counts,
    scatter_into, select_all,
};
use super::train::{TrainConfig, TrainEvent, evaluate, train_epochs};
use super::{CompressionError, Result};

/// When pruning happens relative to fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PruneSchedule {
    #[default]
    OneShot,
    Progressive {
        stages: usize,
    },
    /// REPrune's schedule (after CHEX): train the given (usually freshly initialised)
    /// network; at epochs `0, interval, 2 * interval, ...` before `until`, choose the kept
    /// channels afresh on the full network (every removed channel competes again with the
    /// weights it last had: regrowth), train the pruned network, and write its weights back;
    /// from the last step on, the pruned network trains alone to the end.
    FromScratch {
        interval: usize,
        until: usize,
    },
}

/// Most epochs a schedule may name (bounds user input).
pub const MAX_SCHEDULE_EPOCHS: usize = 1000;

impl std::str::FromStr for PruneSchedule {
    type Err = CompressionError;

    /// `one-shot`, `progressive:STAGES` or `from-scratch:INTERVAL:UNTIL` (REPrune: prune
    /// every INTERVAL epochs until epoch UNTIL while training).
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = text.split(':').collect();
        let number = |s: &str| -> Result<usize> {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_SCHEDULE_EPOCHS).contains(n))
                .ok_or_else(|| {
                    CompressionError::Config(format!(
                        "schedule {text:?}: {s:?} is not a number in 1..={MAX_SCHEDULE_EPOCHS}"
                    ))
                })
        };
        match parts.as_slice() {
            ["one-shot"] | ["oneshot"] | [""] => Ok(PruneSchedule::OneShot),
            ["progressive", stages] => Ok(PruneSchedule::Progressive {
                stages: number(stages)?,
            }),
            ["from-scratch", interval, until] => Ok(PruneSchedule::FromScratch {
                interval: number(interval)?,
                until: number(until)?,
            }),
            _ => Err(CompressionError::Config(format!(
                "unknown schedule {text:?} (expected one-shot, progressive:STAGES or \
                 from-scratch:INTERVAL:UNTIL)"
            ))),
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    pub prune: PruneOptions,
    /// Fine-tuning recipe; `None` (or 0 epochs) skips fine-tuning.
    pub fine_tune: Option<TrainConfig>,
    pub schedule: PruneSchedule,
    pub eval_batch_size: usize,
    /// Accuracy of the unpruned model if already known (saves one evaluation per run).
    pub baseline_accuracy: Option<f64>,
}

impl ExperimentConfig {
    /// One-shot pruning with `method` at `ratio`, uniform layer ratios, no fine-tuning.
    pub fn new(method: PruneMethod, ratio: f64) -> Self {
        ExperimentConfig {
            prune: PruneOptions::new(method, ratio),
            fine_tune: None,
            schedule: PruneSchedule::OneShot,
            eval_batch_size: 256,
            baseline_accuracy: None,
        }
    }
}

/// Measurements of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResult {
    pub architecture: String,
    pub method: String,
    /// The method with all its hyper-parameters (e.g. Neuron Merging's t and lambda).
    pub method_options: PruneMethod,
    pub ratio: f64,
    pub layer_ratios: LayerRatios,
    pub schedule: PruneSchedule,
    pub params_before: u64,
    pub params_after: u64,
    pub macs_before: u64,
    pub macs_after: u64,
    /// `1 - after / before`.
    pub param_reduction: f64,
    pub mac_reduction: f64,
    pub accuracy_before: f64,
    pub accuracy_pruned: f64,
    pub accuracy_fine_tuned: Option<f64>,
    pub fine_tune_epochs: usize,
    pub prune_seconds: f64,
    pub fine_tune_seconds: f64,
    pub total_seconds: f64,
    pub widths_before: Vec<(String, usize)>,
    pub widths_after: Vec<(String, usize)>,
}

/// The result and the networks it measured.
#[derive(Debug, Clone)]
pub struct ExperimentOutcome {
    pub result: ExperimentResult,
    /// The network right after (one-shot) pruning.
    pub pruned: Network,
    /// The fine-tuned (or progressively pruned and trained) network, if fine-tuning ran.
    pub fine_tuned: Option<Network>,
}

fn reduction(before: u64, after: u64) -> f64 {
    if before == 0 {
        0.0
    } else {
        1.0 - after as f64 / before as f64
    }
}

/// Runs one experiment. `train_set` is used only for fine-tuning.
pub fn run_experiment(
    network: &Network,
    train_set: &Dataset,
    test_set: &Dataset,
    config: &ExperimentConfig,
    progress: &dyn Fn(TrainEvent),
) -> Result<ExperimentOutcome> {
    let started = Instant::now();
    let [_, h, w] = network.input_size;
    let before = count_cost(network, h, w)?;
    let accuracy_before = match config.baseline_accuracy {
        Some(a) => a,
        None => evaluate(network, test_set, config.eval_batch_size)?,
    };

    let prune_started = Instant::now();
    let pruned = prune(network, &config.prune)?;
    let mut prune_seconds = prune_started.elapsed().as_secs_f64();
    let after = count_cost(&pruned, h, w)?;
    let accuracy_pruned = evaluate(&pruned, test_set, config.eval_batch_size)?;

    let fine_tune = config.fine_tune.as_ref().filter(|c| c.epochs > 0);
    let mut fine_tune_seconds = 0.0;
    let fine_tuned = match (fine_tune, config.schedule) {
        (None, PruneSchedule::Progressive { .. } | PruneSchedule::FromScratch { .. }) => {
            return Err(CompressionError::Config(
                "a progressive schedule needs training epochs".into(),
            ));
        }
        (Some(tc), PruneSchedule::FromScratch { interval, until }) => {
            if interval == 0 || until == 0 || until > tc.epochs {
                return Err(CompressionError::Config(format!(
                    "REPrune schedule: interval must be at least 1 and the last pruning epoch \
                     in 1..={} (got interval {interval}, until {until})",
                    tc.epochs
                )));
            }
            if matches!(config.prune.method, PruneMethod::NeuronMerging(_)) {
                return Err(CompressionError::Config(
                    "the REPrune schedule needs a method without merging".into(),
                ));
            }
            let mut full = network.clone();
            let mut selections = select_all(&full, &config.prune)?;
            let mut net = apply_all(&full, &selections)?;
            for epoch in 0..tc.epochs {
                let stepping = epoch < until;
                if stepping && epoch > 0 && epoch % interval == 0 {
                    let t = Instant::now();
                    selections = select_all(&full, &config.prune)?;
                    net = apply_all(&full, &selections)?;
                    prune_seconds += t.elapsed().as_secs_f64();
                }
                let t = Instant::now();
                net = train_epochs(&net, train_set, tc, epoch..epoch + 1, progress)?;
                fine_tune_seconds += t.elapsed().as_secs_f64();
                if stepping {
                    full = scatter_into(&full, &net, &selections)?;
                }
            }
            Some(net)
        }
        (None, PruneSchedule::OneShot) => None,
        (Some(tc), PruneSchedule::OneShot) => {
            let t = Instant::now();
            let net = train_epochs(&pruned, train_set, tc, 0..tc.epochs, progress)?;
            fine_tune_seconds = t.elapsed().as_secs_f64();
            Some(net)
        }
        (Some(tc), PruneSchedule::Progressive { stages }) => {
            if stages == 0 || stages > tc.epochs {
                return Err(CompressionError::Config(format!(
                    "progressive pruning needs 1..={} stages (one per epoch), got {stages}",
                    tc.epochs
                )));
            }
            let final_counts = resolve_keep_counts(network, &config.prune)?;
            let original: Vec<usize> = prune_sites(network).iter().map(|s| s.width).collect();
            let mut net = network.clone();
            for epoch in 0..tc.epochs {
                if epoch < stages {
                    let fraction = 1.0 - (1.0 - (epoch + 1) as f64 / stages as f64).powi(3);
                    let stage_options = if config.prune.layer_ratios == LayerRatios::GammaQuantile {
                        // REPrune: the global gamma quantile is recomputed on the current
                        // weights at every step, for the share of the original channels that
                        // this step must have removed.
                        let total0: usize = original.iter().sum();
                        let current: usize = prune_sites(&net)
                            .iter()
                            .map(|s| s.width)
                            .sum::<usize>()
                            .max(1);
                        let target = total0 as f64 * (1.0 - config.prune.ratio * fraction);
                        PruneOptions {
                            method: config.prune.method.clone(),
                            ratio: (1.0 - target / current as f64).clamp(0.0, 0.99),
                            layer_ratios: LayerRatios::GammaQuantile,
                        }
                    } else {
                        let counts: Vec<usize> = original
                            .iter()
                            .zip(&final_counts)
                            .map(|(&w0, &k)| {
                                let removed = ((w0 - k) as f64 * fraction).round() as usize;
                                (w0 - removed).max(k)
                            })
                            .collect();
                        PruneOptions {
                            method: config.prune.method.clone(),
                            ratio: 0.0,
                            layer_ratios: LayerRatios::KeepCounts(counts),
                        }
                    };
                    let t = Instant::now();
                    net = prune(&net, &stage_options)?;
                    prune_seconds += t.elapsed().as_secs_f64();
                }
                let t = Instant::now();
                net = train_epochs(&net, train_set, tc, epoch..epoch + 1, progress)?;
                fine_tune_seconds += t.elapsed().as_secs_f64();
            }
            Some(net)
        }
    };
    let accuracy_fine_tuned = match &fine_tuned {
        Some(net) => Some(evaluate(net, test_set, config.eval_batch_size)?),
        None => None,
    };
    let final_net = fine_tuned.as_ref().unwrap_or(&pruned);
    let result = ExperimentResult {
        architecture: network.architecture.clone(),
        method: config.prune.method.name().to_string(),
        method_options: config.prune.method.resolved_for(network)?,
        ratio: config.prune.ratio,
        layer_ratios: config.prune.layer_ratios.clone(),
        schedule: config.schedule,
        params_before: before.params,
        params_after: after.params,
        macs_before: before.macs,
        macs_after: after.macs,
        param_reduction: reduction(before.params, after.params),
        mac_reduction: reduction(before.macs, after.macs),
        accuracy_before,
        accuracy_pruned,
        accuracy_fine_tuned,
        fine_tune_epochs: fine_tune.map_or(0, |c| c.epochs),
        prune_seconds,
        fine_tune_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        widths_before: network.layer_widths(),
        widths_after: final_net.layer_widths(),
    };
    Ok(ExperimentOutcome {
        result,
        pruned,
        fine_tuned,
    })
}
