//! `elite prune` and `elite train`: pruning experiments and base-model training from the
//! command line, with a progress bar over training batches.

use std::path::Path;

use super::progress_bar;
use crate::compression::jobs::{ExperimentJob, execute};
use crate::compression::sources::{DataSource, ModelSource};
use crate::compression::{
    CompressionError, ExperimentResult, Network, TrainConfig, TrainEvent, evaluate, train,
};

/// Run one experiment; the bar counts epochs (training of a demo model and fine-tuning).
pub fn prune(
    model: &str,
    data: &str,
    method: &str,
    ratio: f64,
    fine_tune_epochs: usize,
    schedule: &str,
) -> Result<ExperimentResult, CompressionError> {
    let job = ExperimentJob {
        model: ModelSource::parse(model)?,
        data: data.parse()?,
        method: method.to_string(),
        ratio,
        fine_tune_epochs,
        schedule: schedule.parse()?,
        created_by: None,
        inversion: None,
    };
    let bar = progress_bar(0, &format!("{method} at {ratio}"));
    let result = execute(&job, None, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    result
}

/// A human-readable summary of one experiment.
pub fn describe(result: &ExperimentResult) -> String {
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    format!(
        "{} on {}: ratio {}\n  parameters {} -> {} (-{})\n  MACs       {} -> {} (-{})\n  accuracy   {} before, {} pruned{}\n  {:.1} s",
        result.method,
        result.architecture,
        result.ratio,
        result.params_before,
        result.params_after,
        pct(result.param_reduction),
        result.macs_before,
        result.macs_after,
        pct(result.mac_reduction),
        pct(result.accuracy_before),
        pct(result.accuracy_pruned),
        result
            .accuracy_fine_tuned
            .map(|a| format!(
                ", {} after {} epochs of fine-tuning",
                pct(a),
                result.fine_tune_epochs
            ))
            .unwrap_or_default(),
        result.total_seconds
    )
}

/// Train a base model on a data set and save it; returns the test accuracy.
pub fn train_base(
    arch: &str,
    width: f64,
    data: &str,
    epochs: usize,
    seed: u64,
    out: &Path,
) -> Result<f64, CompressionError> {
    let data: DataSource = data.parse()?;
    let (train_set, test_set) = data.load()?;
    let classes = train_set.num_classes();
    let network = Network::by_name(arch, width, classes, train_set.shape(), seed)?;
    let config = TrainConfig {
        epochs,
        seed,
        ..TrainConfig::default()
    };
    let bar = progress_bar(0, &format!("training {arch}"));
    let on_event = |event: TrainEvent| {
        if let TrainEvent::BatchFinished {
            epoch,
            batch,
            batches,
            ..
        } = event
        {
            bar.set_length((epochs * batches) as u64);
            bar.set_position((epoch * batches + batch + 1) as u64);
        }
    };
    let trained = train(&network, &train_set, &config, &on_event)?;
    bar.finish_and_clear();
    trained.save_safetensors(out)?;
    evaluate(&trained, &test_set, 256)
}
