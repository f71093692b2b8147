//! The `compression.experiment` job: load or train the base model, prune it with one method at
//! one ratio, measure, optionally fine-tune, and store one row. A retried job whose row exists
//! stops at once.

use serde::{Deserialize, Serialize};

use super::sources::{DataSource, ModelSource};
use super::store;
use super::{ExperimentConfig, PruneMethod, TrainConfig, TrainEvent, run_experiment};
use crate::jobs::{JobContext, JobError, ProgressRelay, Registry};

pub const EXPERIMENT_JOB: &str = "compression.experiment";

/// Payload of [`EXPERIMENT_JOB`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentJob {
    pub model: ModelSource,
    pub data: DataSource,
    /// A method name (see `PruneMethod::name`), run with its default options.
    pub method: String,
    pub ratio: f64,
    #[serde(default)]
    pub fine_tune_epochs: usize,
    /// When pruning happens (one-shot by default; `FromScratch` is REPrune's schedule, for
    /// which the fine-tuning epochs are the training epochs).
    #[serde(default)]
    pub schedule: super::PruneSchedule,
    pub created_by: Option<i64>,
}

pub fn register(registry: Registry) -> Registry {
    registry.register(EXPERIMENT_JOB, run_experiment_job)
}

/// Everything a run needs, done on a blocking thread; returns the result and a notes string.
pub fn execute(
    job: &ExperimentJob,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<super::ExperimentResult, super::CompressionError> {
    let method: PruneMethod = job.method.parse()?;
    let (train_set, test_set) = job.data.load()?;
    let epochs_total = match &job.model {
        ModelSource::Demo { epochs, .. } => *epochs + job.fine_tune_epochs,
        ModelSource::Checkpoint { .. } | ModelSource::Named { .. } => job.fine_tune_epochs,
    }
    .max(1) as u64;
    let epochs_done = std::sync::atomic::AtomicU64::new(0);
    let on_event = |event: TrainEvent| {
        if let TrainEvent::EpochFinished { .. } = event {
            let done = epochs_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(done.min(epochs_total), epochs_total);
        }
    };
    let network = job.model.load(&train_set, &on_event)?;
    let mut config = ExperimentConfig::new(method, job.ratio);
    config.prune.layer_ratios = super::prune::paper_layer_ratios(&config.prune.method);
    config.schedule = job.schedule;
    if job.fine_tune_epochs > 0 {
        config.fine_tune = Some(TrainConfig {
            epochs: job.fine_tune_epochs,
            learning_rate: 0.01,
            ..TrainConfig::default()
        });
    }
    let outcome = run_experiment(&network, &train_set, &test_set, &config, &on_event)?;
    progress(epochs_total, epochs_total);
    Ok(outcome.result)
}

async fn run_experiment_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: ExperimentJob = ctx.payload()?;
    if let Some(id) = store::result_of_job(&ctx.pool, ctx.job.id).await? {
        return Ok(Some(
            serde_json::json!({ "experiment_id": id, "reused": true }),
        ));
    }
    let relay = ProgressRelay::start(&ctx, "training and pruning (epochs)");
    let callback = relay.callback();
    let run = job.clone();
    let result = tokio::task::spawn_blocking(move || execute(&run, &callback))
        .await
        .map_err(|e| JobError::Permanent(format!("experiment crashed: {e}")))?
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    drop(relay);
    let notes = format!("model: {}", job.model.label());
    let id = store::insert_result(
        &ctx.pool,
        &result,
        &job.data.label(),
        &notes,
        Some(ctx.job.id),
        job.created_by,
    )
    .await?;
    Ok(Some(serde_json::json!({ "experiment_id": id })))
}
