//! The inversion jobs:
//! - `inversion.teacher`: load or train the teacher, store it with the set, then queue one
//!   `inversion.batch` job per batch;
//! - `inversion.batch`: synthesise one batch and store it with its images (reported
//!   progress: iterations and the current loss terms; a cancelled job stops its computation
//!   at the next iteration);
//! - `inversion.score`: embed the set and the teacher's real training images with one
//!   encoder, compute PP&PR and the k-NN baselines, store the result in the
//!   generative-metrics tables and link it to the set.
//!
//! Every job has a dedup key under `inversion:{id}:`, so queueing twice never doubles work,
//! and each stops at once when its result is already stored.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::images::{Encoder, embed, to_png};
use super::spec::{InversionSpec, prepare_teacher, student_of, synthetic_dataset};
use super::store::{self, StoredTeacher};
use super::synth::{LossTerms, invert_batch};
use crate::compression::Network;
use crate::compression::jobs::{EXPERIMENT_JOB, ExperimentJob, InversionUse};
use crate::jobs::{self, JobContext, JobError, NewJob, ProgressRelay, Registry};
use crate::training::TrainingError;

pub const TEACHER_JOB: &str = "inversion.teacher";
pub const BATCH_JOB: &str = "inversion.batch";
pub const SCORE_JOB: &str = "inversion.score";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherJob {
    pub inversion_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchJob {
    pub inversion_id: i64,
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreJob {
    pub inversion_id: i64,
    pub encoder: Encoder,
    pub params: crate::genmetrics::Params,
}

pub fn register(registry: Registry) -> Registry {
    registry
        .register(TEACHER_JOB, teacher_job)
        .register(BATCH_JOB, batch_job)
        .register(SCORE_JOB, score_job)
}

fn encode<T: Serialize>(value: &T) -> Result<serde_json::Value, sqlx::Error> {
    serde_json::to_value(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Stores a checked set and queues its teacher job; returns the set's id and the job's.
pub async fn start_inversion(
    pool: &PgPool,
    name: &str,
    spec: &InversionSpec,
    created_by: Option<i64>,
) -> Result<(i64, i64), sqlx::Error> {
    let id = store::create(pool, name, spec, created_by).await?;
    let mut job = NewJob::new(TEACHER_JOB, encode(&TeacherJob { inversion_id: id })?)
        .dedup_key(store::job_key(id, "teacher"))
        .max_attempts(2);
    if let Some(user) = created_by {
        job = job.created_by(user);
    }
    Ok((id, jobs::enqueue(pool, job).await?))
}

/// Queues the scoring of a set with one encoder (once per set and encoder).
pub async fn start_score(
    pool: &PgPool,
    id: i64,
    encoder: Encoder,
    created_by: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let payload = ScoreJob {
        inversion_id: id,
        encoder,
        params: crate::genmetrics::Params::default(),
    };
    let mut job = NewJob::new(SCORE_JOB, encode(&payload)?)
        .dedup_key(store::job_key(id, &format!("score:{}", encoder.name())))
        .max_attempts(2);
    if let Some(user) = created_by {
        job = job.created_by(user);
    }
    jobs::enqueue(pool, job).await
}

/// A data-free repair of set `id`: the set's teacher pruned with `method` at `ratio`, then
/// fine-tuned for `epochs` on the set's images (`on_images`) or on the real training split
/// `data`. Queued once per set, settings and fine-tuning data (a dedup key), so asking again
/// returns the same job. Returns the job's id.
#[allow(clippy::too_many_arguments)]
pub async fn queue_repair(
    pool: &PgPool,
    id: i64,
    data: &crate::compression::sources::DataSource,
    method: &str,
    ratio: f64,
    epochs: usize,
    seed: u64,
    on_images: bool,
    created_by: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let payload = ExperimentJob {
        // Ignored: the experiment prunes the set's stored teacher.
        model: crate::compression::sources::ModelSource::Demo { epochs: 0, seed },
        data: data.clone(),
        method: method.to_string(),
        ratio,
        fine_tune_epochs: epochs,
        schedule: Default::default(),
        created_by,
        inversion: Some(InversionUse {
            inversion_id: id,
            fine_tune_on_images: on_images,
            seed,
        }),
    };
    let part = format!(
        "repair:{method}:{ratio}:{epochs}:{seed}:{}",
        if on_images { "images" } else { "real" }
    );
    let mut job = NewJob::new(EXPERIMENT_JOB, encode(&payload)?)
        .dedup_key(store::job_key(id, &part))
        .max_attempts(2);
    if let Some(user) = created_by {
        job = job.created_by(user);
    }
    jobs::enqueue(pool, job).await
}

/// Queues the data-free repair comparison: [`queue_repair`] on the set's images and, beside
/// it, on the real training data (the row right after pruning is the no-fine-tuning
/// reference). Returns both jobs' ids.
pub async fn start_repair(
    pool: &PgPool,
    id: i64,
    method: &str,
    ratio: f64,
    epochs: usize,
    seed: u64,
    created_by: Option<i64>,
) -> Result<Vec<i64>, sqlx::Error> {
    let row = store::get(pool, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let spec = row.spec().cloned().ok_or(sqlx::Error::RowNotFound)?;
    let mut ids = Vec::new();
    for on_images in [true, false] {
        ids.push(
            queue_repair(
                pool, id, &spec.data, method, ratio, epochs, seed, on_images, created_by,
            )
            .await?,
        );
    }
    Ok(ids)
}

/// Cancels every queued or running job of the set; returns how many.
pub async fn cancel(pool: &PgPool, id: i64) -> Result<usize, sqlx::Error> {
    let mut n = 0;
    for (job_id, _, status, ..) in store::jobs_of(pool, id).await? {
        if (status == "queued" || status == "running") && jobs::cancel(pool, job_id).await? {
            n += 1;
        }
    }
    Ok(n)
}

fn permanent(e: impl std::fmt::Display) -> JobError {
    JobError::Permanent(e.to_string())
}

async fn load_spec(pool: &PgPool, id: i64) -> Result<InversionSpec, JobError> {
    let row = store::get(pool, id)
        .await?
        .ok_or_else(|| permanent(format!("inversion {id} is gone")))?;
    row.spec()
        .cloned()
        .ok_or_else(|| permanent("stored specification unreadable"))
}

async fn teacher_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: TeacherJob = ctx.payload()?;
    let id = job.inversion_id;
    let spec = load_spec(&ctx.pool, id).await?;
    if store::teacher(&ctx.pool, id).await?.is_none() {
        let relay = ProgressRelay::start(&ctx, "preparing the teacher (epochs)");
        let callback = relay.callback();
        let run = spec.clone();
        let (stored, label, accuracy) = tokio::task::spawn_blocking(move || {
            let epochs = match &run.teacher {
                super::spec::TeacherSource::Trained { epochs, .. } => *epochs as u64,
                _ => 1,
            };
            let done = std::sync::atomic::AtomicU64::new(0);
            let on_event = |event: crate::nn::fit::TrainEvent| {
                if let crate::nn::fit::TrainEvent::EpochFinished { .. } = event {
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    callback(d.min(epochs), epochs);
                }
            };
            let (teacher, train, _, accuracy) = prepare_teacher(&run, &on_event)?;
            Ok::<_, TrainingError>((
                StoredTeacher {
                    bytes: teacher.to_safetensors_bytes()?,
                    normalization: train.normalization(),
                    flip_invariant: train.flip_invariant(),
                },
                run.teacher.label(),
                accuracy,
            ))
        })
        .await
        .map_err(|e| permanent(format!("teacher preparation crashed: {e}")))?
        .map_err(permanent)?;
        drop(relay);
        store::set_teacher(&ctx.pool, id, &stored, &label, accuracy).await?;
    }
    let mut queued = Vec::new();
    for batch in 0..spec.batches {
        let mut job = NewJob::new(
            BATCH_JOB,
            encode(&BatchJob {
                inversion_id: id,
                batch,
            })?,
        )
        .dedup_key(store::job_key(id, &format!("batch:{batch}")))
        .max_attempts(2);
        if let Some(user) = ctx.job.created_by {
            job = job.created_by(user);
        }
        queued.push(jobs::enqueue(&ctx.pool, job).await?);
    }
    Ok(Some(
        serde_json::json!({ "inversion_id": id, "batch_jobs": queued }),
    ))
}

/// Sets a flag when dropped: the worker drops a cancelled job's future, and the blocking
/// computation sees the flag at its next iteration.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn describe(it: usize, terms: &LossTerms) -> String {
    format!(
        "iteration {it}: loss {:.4} (CE {:.4}, BN {:.4}, TV {:.2}, L2 {:.2})",
        terms.total, terms.cross_entropy, terms.bn, terms.tv, terms.l2
    )
}

async fn batch_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: BatchJob = ctx.payload()?;
    let id = job.inversion_id;
    if store::has_batch(&ctx.pool, id, job.batch).await? {
        return Ok(Some(serde_json::json!({ "reused": true })));
    }
    let spec = load_spec(&ctx.pool, id).await?;
    if job.batch >= spec.batches {
        return Err(permanent("batch index out of range"));
    }
    let teacher = store::teacher(&ctx.pool, id)
        .await?
        .ok_or_else(|| permanent("the teacher is not stored yet"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let latest: Arc<Mutex<Option<(usize, usize, LossTerms)>>> = Arc::new(Mutex::new(None));
    let relay = {
        let (latest, ctx) = (latest.clone(), ctx.clone());
        tokio::spawn(async move {
            let mut shown = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = *latest.lock().expect("progress lock");
                if let Some((it, total, terms)) = now.filter(|(it, ..)| *it != shown) {
                    shown = it;
                    let _ = ctx
                        .progress(it as i64, total as i64, Some(&describe(it, &terms)))
                        .await;
                }
            }
        })
    };
    let run = spec.clone();
    let batch = job.batch;
    let outcome = tokio::task::spawn_blocking(move || {
        let net = Network::from_safetensors_bytes(&teacher.bytes, Path::new("stored teacher"))?;
        let student = if run.settings.competition_weight > 0.0 {
            Some(student_of(&net, run.student_ratio)?)
        } else {
            None
        };
        let mut progress = |p: super::synth::Progress| {
            *latest.lock().expect("progress lock") = Some((p.iteration, p.iterations, p.terms));
            !stop.load(Ordering::Relaxed)
        };
        let outcome = invert_batch(
            &net,
            student.as_ref(),
            &run.settings,
            teacher.flip_invariant,
            run.seed,
            batch,
            &mut progress,
        )?;
        let len: usize = outcome.shape.iter().product();
        let pngs = outcome
            .images
            .chunks(len)
            .map(|img| to_png(img, outcome.shape, &teacher.normalization))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, TrainingError>((outcome, pngs))
    })
    .await;
    relay.abort();
    let (outcome, pngs) = outcome
        .map_err(|e| permanent(format!("inversion crashed: {e}")))?
        .map_err(permanent)?;
    store::insert_batch(&ctx.pool, id, job.batch, &outcome, &pngs, Some(ctx.job.id)).await?;
    ctx.progress(
        outcome.iterations as i64,
        outcome.iterations as i64,
        Some(&describe(outcome.iterations, &outcome.best)),
    )
    .await?;
    Ok(Some(serde_json::json!({
        "inversion_id": id,
        "batch": job.batch,
        "teacher_accuracy": outcome.teacher_accuracy,
        "best_loss": outcome.best.total,
    })))
}

async fn score_job(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: ScoreJob = ctx.payload()?;
    let id = job.inversion_id;
    let spec = load_spec(&ctx.pool, id).await?;
    let teacher = store::teacher(&ctx.pool, id)
        .await?
        .ok_or_else(|| permanent("the teacher is not stored yet"))?;
    let (images, _) = store::image_tensors(&ctx.pool, id).await?;
    if images.is_empty() {
        return Err(permanent("the set has no images yet"));
    }
    let encoder = job.encoder;
    let data = spec.data.clone();
    let (real, fake) = tokio::task::spawn_blocking(move || {
        let net = Network::from_safetensors_bytes(&teacher.bytes, Path::new("stored teacher"))?;
        let (train, _) = data.load()?;
        let norm = teacher.normalization;
        // Embedded 1,024 images at a time: a CIFAR training split is never copied whole.
        let (mut values, mut dim) = (Vec::new(), 0);
        let indices: Vec<usize> = (0..train.len()).collect();
        for chunk in indices.chunks(1024) {
            let mut block = Vec::with_capacity(chunk.len() * train.image_len());
            for &i in chunk {
                block.extend_from_slice(train.image(i).unwrap_or_default());
            }
            let e = embed(encoder, &net, &block, train.shape(), &norm)?;
            dim = e.dim;
            values.extend(e.data);
        }
        let real = crate::genmetrics::Embeddings::new(train.len(), dim, values)
            .map_err(|e| TrainingError::Config(e.to_string()))?;
        let fake = embed(encoder, &net, &images, net.input_size, &norm)?;
        Ok::<_, TrainingError>((real, fake))
    })
    .await
    .map_err(|e| permanent(format!("embedding crashed: {e}")))?
    .map_err(permanent)?;
    let row = store::get(&ctx.pool, id)
        .await?
        .ok_or_else(|| permanent("gone"))?;
    let created_by = ctx.job.created_by;
    let real_name = format!("{} train ({}, {})", row.data, row.teacher, encoder.name());
    let fake_name = format!(
        "inversion #{id} {} ({})",
        row.method_title(),
        encoder.name()
    );
    let real_set = crate::genmetrics::store::insert_inline_set(
        &ctx.pool,
        &clip(&real_name),
        "real images of an inversion's teacher",
        &real,
        created_by,
    )
    .await?;
    let fake_set = crate::genmetrics::store::insert_inline_set(
        &ctx.pool,
        &clip(&fake_name),
        "synthesised images",
        &fake,
        created_by,
    )
    .await?;
    let params = job.params;
    let result =
        match crate::genmetrics::store::find_result(&ctx.pool, real_set.id, fake_set.id, &params)
            .await?
        {
            Some(found) => found,
            None => {
                let relay = ProgressRelay::start(&ctx, "computing distances");
                let callback = relay.callback();
                let started = std::time::Instant::now();
                let (r, f) = (real.clone(), fake.clone());
                let scores = tokio::task::spawn_blocking(move || {
                    crate::genmetrics::evaluate(&r, &f, &params, Some(&callback))
                })
                .await
                .map_err(|e| permanent(format!("PP&PR crashed: {e}")))?
                .map_err(permanent)?;
                drop(relay);
                crate::genmetrics::store::insert_result(
                    &ctx.pool,
                    real_set.id,
                    fake_set.id,
                    &params,
                    &clip(&format!(
                        "{} #{id} vs {} ({})",
                        row.method_title(),
                        row.data,
                        encoder.name()
                    )),
                    &scores,
                    started.elapsed().as_secs_f64(),
                    Some(ctx.job.id),
                    created_by,
                )
                .await?
            }
        };
    store::set_score(&ctx.pool, id, encoder.name(), result.id).await?;
    Ok(Some(serde_json::json!({
        "inversion_id": id,
        "result_id": result.id,
        "p_precision": result.p_precision,
        "p_recall": result.p_recall,
    })))
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// What the compression job needs of a set for a data-free repair: the teacher and, when
/// fine-tuning on the images, the images as a data set.
pub async fn repair_inputs(
    pool: &PgPool,
    id: i64,
    with_images: bool,
) -> Result<(Network, Option<crate::compression::Dataset>, String), JobError> {
    let row = store::get(pool, id)
        .await?
        .ok_or_else(|| permanent(format!("inversion {id} is gone")))?;
    let teacher = store::teacher(pool, id)
        .await?
        .ok_or_else(|| permanent(format!("inversion {id} has no teacher yet")))?;
    let net = Network::from_safetensors_bytes(&teacher.bytes, Path::new("stored teacher"))
        .map_err(permanent)?;
    if !with_images {
        return Ok((net, None, row.data.clone()));
    }
    let label = format!("{} ← {} #{id} images", row.data, row.method_title());
    let (images, labels) = store::image_tensors(pool, id).await?;
    if labels.is_empty() {
        return Err(permanent(format!("inversion {id} has no images yet")));
    }
    let classes = net.num_classes().map_err(permanent)?;
    let data = synthetic_dataset(
        images,
        net.input_size,
        labels,
        classes,
        teacher.normalization,
        teacher.flip_invariant,
    )
    .map_err(permanent)?;
    Ok((net, Some(data), label))
}
