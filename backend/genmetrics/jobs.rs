//! Job handlers of the generative-metrics area: compute PP&PR for two stored sets, and run a
//! toy demonstration. Both are idempotent: a result already stored for the same key is kept.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::store::{self, StoreError};
use super::toy::{ToyExperiment, ToyParams, run_toy};
use super::{Params, evaluate};
use crate::jobs::{JobContext, JobError, ProgressRelay, Registry};

pub const PPR_JOB: &str = "genmetrics.ppr";
pub const TOY_JOB: &str = "genmetrics.toy";

/// Payload of [`PPR_JOB`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PprJob {
    pub real_set_id: i64,
    pub fake_set_id: i64,
    pub params: Params,
    #[serde(default)]
    pub label: String,
    pub created_by: Option<i64>,
}

/// Payload of [`TOY_JOB`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToyJob {
    pub experiment: ToyExperiment,
    pub params: ToyParams,
}

pub fn register(registry: Registry) -> Registry {
    registry
        .register(PPR_JOB, run_ppr_job)
        .register(TOY_JOB, run_toy_job)
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sql(e) => JobError::Retryable(format!("database: {e}")),
            other => JobError::Permanent(other.to_string()),
        }
    }
}

async fn run_ppr_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: PprJob = ctx.payload()?;
    let pool = &ctx.pool;
    if let Some(existing) =
        store::find_result(pool, job.real_set_id, job.fake_set_id, &job.params).await?
    {
        return Ok(Some(
            serde_json::json!({ "result_id": existing.id, "reused": true }),
        ));
    }
    let real = store::load_set(pool, job.real_set_id).await?;
    let fake = store::load_set(pool, job.fake_set_id).await?;
    let relay = ProgressRelay::start(&ctx, "computing distances");
    let callback = relay.callback();
    let params = job.params;
    let started = Instant::now();
    let scores =
        tokio::task::spawn_blocking(move || evaluate(&real, &fake, &params, Some(&callback)))
            .await
            .map_err(|e| JobError::Permanent(format!("computation crashed: {e}")))?
            .map_err(|e| JobError::Permanent(e.to_string()))?;
    let seconds = started.elapsed().as_secs_f64();
    drop(relay);
    let stored = store::insert_result(
        pool,
        job.real_set_id,
        job.fake_set_id,
        &job.params,
        &job.label,
        &scores,
        seconds,
        Some(ctx.job.id),
        job.created_by,
    )
    .await?;
    ctx.progress(1, 1, Some("done")).await?;
    Ok(Some(
        serde_json::json!({ "result_id": stored.id, "seconds": seconds }),
    ))
}

async fn run_toy_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: ToyJob = ctx.payload()?;
    if job.params.samples > 20_000 || job.params.dim > 4096 {
        return Err(JobError::Permanent(
            "toy runs are limited to 20,000 samples of dimension 4096".into(),
        ));
    }
    let relay = ProgressRelay::start(&ctx, "sweeping");
    let callback = relay.callback();
    let (experiment, params) = (job.experiment, job.params);
    let points = tokio::task::spawn_blocking(move || run_toy(experiment, &params, &callback))
        .await
        .map_err(|e| JobError::Permanent(format!("computation crashed: {e}")))?
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    drop(relay);
    store::insert_toy_run(
        &ctx.pool,
        job.experiment,
        &job.params,
        &points,
        Some(ctx.job.id),
    )
    .await?;
    Ok(Some(serde_json::json!({ "points": points.len() })))
}
