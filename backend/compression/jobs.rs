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
    /// Data-free repair: prune the teacher of an inversion set (instead of `model`) and
    /// fine-tune it on the set's images or, for the comparison, on the real training data.
    #[serde(default)]
    pub inversion: Option<InversionUse>,
}

/// How an experiment uses an inversion set (see [`ExperimentJob::inversion`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InversionUse {
    pub inversion_id: i64,
    /// Fine-tune on the synthesised images (true) or on the real training split (false).
    pub fine_tune_on_images: bool,
    /// Seed of the fine-tuning (batch order, augmentation).
    #[serde(default)]
    pub seed: u64,
}

/// A resolved [`InversionUse`]: the teacher and the images as a data set when fine-tuning
/// on them.
pub struct DataFree {
    pub teacher: super::Network,
    pub images: Option<super::Dataset>,
    pub seed: u64,
}

pub fn register(registry: Registry) -> Registry {
    registry.register(EXPERIMENT_JOB, run_experiment_job)
}

/// Everything a run needs, done on a blocking thread; returns the result and a notes string.
pub fn execute(
    job: &ExperimentJob,
    data_free: Option<DataFree>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<super::ExperimentResult, super::CompressionError> {
    let method: PruneMethod = job.method.parse()?;
    let (mut train_set, test_set) = job.data.load()?;
    let epochs_total = match (&job.model, &data_free) {
        (_, Some(_)) => job.fine_tune_epochs,
        (ModelSource::Demo { epochs, .. }, None) => *epochs + job.fine_tune_epochs,
        (ModelSource::Checkpoint { .. } | ModelSource::Named { .. }, None) => job.fine_tune_epochs,
    }
    .max(1) as u64;
    let epochs_done = std::sync::atomic::AtomicU64::new(0);
    let on_event = |event: TrainEvent| {
        if let TrainEvent::EpochFinished { .. } = event {
            let done = epochs_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(done.min(epochs_total), epochs_total);
        }
    };
    let mut seed = 0;
    let network = match data_free {
        Some(free) => {
            if let Some(images) = free.images {
                train_set = images;
            }
            seed = free.seed;
            free.teacher
        }
        None => job.model.load(&train_set, &on_event)?,
    };
    let mut config = ExperimentConfig::new(method, job.ratio);
    config.prune.layer_ratios = super::prune::paper_layer_ratios(&config.prune.method);
    config.schedule = job.schedule;
    if job.fine_tune_epochs > 0 {
        config.fine_tune = Some(TrainConfig {
            epochs: job.fine_tune_epochs,
            learning_rate: 0.01,
            seed,
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
    let (data_free, data_label) = match &job.inversion {
        Some(using) => {
            let (teacher, images, label) = crate::training::inversion::jobs::repair_inputs(
                &ctx.pool,
                using.inversion_id,
                using.fine_tune_on_images,
            )
            .await?;
            let free = DataFree {
                teacher,
                images,
                seed: using.seed,
            };
            (Some(free), label)
        }
        None => (None, job.data.label()),
    };
    let relay = ProgressRelay::start(&ctx, "training and pruning (epochs)");
    let callback = relay.callback();
    let run = job.clone();
    let result = tokio::task::spawn_blocking(move || execute(&run, data_free, &callback))
        .await
        .map_err(|e| JobError::Permanent(format!("experiment crashed: {e}")))?
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    drop(relay);
    let notes = match &job.inversion {
        Some(using) => format!(
            "model: the teacher of inversion #{}; fine-tuned on {}",
            using.inversion_id,
            if using.fine_tune_on_images {
                "its synthesised images (data-free)"
            } else {
                "the real training data"
            }
        ),
        None => format!("model: {}", job.model.label()),
    };
    let id = store::insert_result(
        &ctx.pool,
        &result,
        &data_label,
        &notes,
        Some(ctx.job.id),
        job.created_by,
    )
    .await?;
    Ok(Some(serde_json::json!({ "experiment_id": id })))
}
