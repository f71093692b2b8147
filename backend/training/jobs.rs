//! The `training.run` job: train one recipe with one seed of a stored experiment, measure it
//! and store the run. A retried job whose run is stored stops at once; the run's row is
//! unique per (experiment, recipe, seed), so it is never stored twice.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::experiment::{ExperimentSpec, run_one};
use super::{Recipe, store};
use crate::jobs::{self, JobContext, JobError, NewJob, ProgressRelay, Registry};
use crate::nn::fit::TrainEvent;

pub const RUN_JOB: &str = "training.run";

/// Payload of [`RUN_JOB`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunJob {
    pub experiment_id: i64,
    pub recipe: Recipe,
    pub seed: u64,
}

pub fn register(registry: Registry) -> Registry {
    registry.register(RUN_JOB, run_job)
}

/// Stores a checked experiment and queues one job per (recipe, seed); returns the
/// experiment's id and the jobs' ids. Each job has a dedup key, so queueing again never
/// doubles a run.
pub async fn start_experiment(
    pool: &PgPool,
    name: &str,
    spec: &ExperimentSpec,
    created_by: Option<i64>,
) -> Result<(i64, Vec<i64>), sqlx::Error> {
    let id = store::create(pool, name, spec, created_by).await?;
    let mut job_ids = Vec::new();
    for &seed in &spec.seeds {
        for &recipe in &spec.recipes {
            let payload = RunJob {
                experiment_id: id,
                recipe,
                seed,
            };
            let mut job = NewJob::new(
                RUN_JOB,
                serde_json::to_value(&payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            )
            .dedup_key(format!("training:{id}:{recipe}:{seed}"))
            .max_attempts(2);
            if let Some(user) = created_by {
                job = job.created_by(user);
            }
            job_ids.push(jobs::enqueue(pool, job).await?);
        }
    }
    Ok((id, job_ids))
}

async fn run_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: RunJob = ctx.payload()?;
    let recipe = job.recipe.name();
    if store::has_run(&ctx.pool, job.experiment_id, &recipe, job.seed).await? {
        return Ok(Some(serde_json::json!({ "reused": true })));
    }
    let experiment = store::get(&ctx.pool, job.experiment_id)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("experiment {} is gone", job.experiment_id)))?;
    let spec = experiment
        .spec()
        .cloned()
        .ok_or_else(|| JobError::Permanent("stored specification unreadable".into()))?;
    let relay = ProgressRelay::start(&ctx, "training (steps)");
    let callback = relay.callback();
    let run = job.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (train, test) = spec.data.load()?;
        let total = spec.steps(train.len()) as u64;
        let done = std::sync::atomic::AtomicU64::new(0);
        let on_event = |event: TrainEvent| {
            if let TrainEvent::BatchFinished { .. } = event {
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                callback(d.min(total), total);
            }
        };
        run_one(&spec, run.recipe, run.seed, &train, &test, &on_event)
    })
    .await
    .map_err(|e| JobError::Permanent(format!("training crashed: {e}")))?
    .map_err(|e| JobError::Permanent(e.to_string()))?;
    drop(relay);
    store::insert_run(&ctx.pool, job.experiment_id, &result, Some(ctx.job.id)).await?;
    Ok(Some(serde_json::json!({
        "experiment_id": job.experiment_id,
        "test_accuracy": result.test_accuracy,
    })))
}
