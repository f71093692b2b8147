//! Imports and generation as jobs. The request (a page, the API or the CLI) checks what it
//! cheaply can, stores the uploaded file or the generation request in `safety_uploads`, and
//! enqueues one of:
//! - `safety.import_items`: a generic JSONL/CSV benchmark (inline images, or paths under an
//!   image root the CLI gives);
//! - `safety.import_elite`: the ELITE release CSV with its image root;
//! - `safety.generate_pairs`: generation (`safety::generate`): images drawn or read chunk by
//!   chunk and stored as they are made (content-addressed, so a rerun stores nothing twice),
//!   then every item in one transaction.
//!
//! Idempotence: the transaction that stores the benchmark records the job's id on it
//! (`benchmarks.job_id` is unique) and deletes the upload; a job that runs again (its worker
//! died after that commit) finds its benchmark and stores nothing. A worker that dies before
//! the commit leaves no benchmark behind, only images that the rerun finds stored.
//! Progress goes to the job row (rows checked, images stored, pairs made).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::generate::{self, Drawing, GenerationRequest, MadeImage, PlannedImage, PlannedPair};
use super::image::ImageLimits;
use super::store::{self, BenchmarkRef, JobLink, StoreError, StoredPair};
use crate::jobs::{self, JobContext, JobError, NewJob, ProgressRelay, Registry};

pub const IMPORT_ITEMS_JOB: &str = "safety.import_items";
pub const IMPORT_ELITE_JOB: &str = "safety.import_elite";
pub const GENERATE_JOB: &str = "safety.generate_pairs";

/// Pairs drawn (and their images stored) per step of a generation job.
const GENERATION_CHUNK: usize = 32;

/// `safety.import_items`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportItemsJob {
    pub upload_id: i64,
    pub name: String,
    /// CSV (else JSONL).
    pub csv: bool,
    /// Root of image paths (set by the CLI; uploads over HTTP carry inline images only).
    pub images: Option<PathBuf>,
    /// The benchmark's `source`.
    pub source: String,
    pub created_by: Option<i64>,
}

/// `safety.import_elite`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportEliteJob {
    pub upload_id: i64,
    pub name: String,
    pub images: Option<PathBuf>,
    pub source: String,
    pub created_by: Option<i64>,
}

/// `safety.generate_pairs`: the upload holds the [`GenerationRequest`] as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateJob {
    pub upload_id: i64,
    /// TrueType font (CLI); default `ELITE_FONT`, then the usual system fonts.
    pub font: Option<PathBuf>,
    /// Root of photo paths in seeds (CLI).
    pub images: Option<PathBuf>,
    pub created_by: Option<i64>,
}

/// A seed whose photo was replaced by a drawn placeholder.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlaceholderNote {
    /// 1-based seed number.
    pub seed: usize,
    pub reason: String,
}

/// What a generation job stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GenerationSummary {
    #[schema(value_type = Object)]
    pub benchmark: serde_json::Value,
    pub items: usize,
    pub by_category: BTreeMap<String, usize>,
    /// Method -> pairs.
    pub by_method: BTreeMap<String, usize>,
    /// Pair type -> pairs.
    pub by_pair_type: BTreeMap<String, usize>,
    /// Images new to the database.
    pub images_stored: usize,
    /// Pairs of role play (or combination) seeds that got a drawn placeholder for a missing
    /// or unusable photo; their source ends in `+placeholder`.
    pub placeholders: usize,
    /// Seeds whose photo was given but could not be used, with the reason.
    pub photo_problems: Vec<PlaceholderNote>,
}

pub fn register(registry: Registry) -> Registry {
    registry
        .register(IMPORT_ITEMS_JOB, import_items)
        .register(IMPORT_ELITE_JOB, import_elite)
        .register(GENERATE_JOB, generate_pairs)
}

/// Store `data` as an upload and enqueue its job (`payload` gets the upload's id). Returns the
/// job id and the upload id.
pub async fn enqueue_upload(
    pool: &PgPool,
    kind: &str,
    data: &[u8],
    created_by: Option<i64>,
    payload: impl FnOnce(i64) -> serde_json::Value,
) -> Result<(i64, i64), sqlx::Error> {
    let upload: i64 = sqlx::query_scalar(
        "INSERT INTO safety_uploads (data, created_by) VALUES ($1, $2) RETURNING id",
    )
    .bind(data)
    .bind(created_by)
    .fetch_one(pool)
    .await?;
    let mut job = NewJob::new(kind, payload(upload))
        .dedup_key(format!("{kind}:upload:{upload}"))
        .max_attempts(3);
    job.created_by = created_by;
    match jobs::enqueue(pool, job).await {
        Ok(id) => Ok((id, upload)),
        Err(e) => {
            let _ = sqlx::query("DELETE FROM safety_uploads WHERE id = $1")
                .bind(upload)
                .execute(pool)
                .await;
            Err(e)
        }
    }
}

fn store_error(e: StoreError) -> JobError {
    match e {
        StoreError::Sql(e) => e.into(),
        other => JobError::Permanent(other.to_string()),
    }
}

fn blocking_error(e: tokio::task::JoinError) -> JobError {
    JobError::Permanent(format!("stopped: {e}"))
}

/// The benchmark this job stored before, as its result.
async fn already_stored(ctx: &JobContext) -> Result<Option<serde_json::Value>, JobError> {
    Ok(store::stored_by_job(&ctx.pool, ctx.job.id)
        .await
        .map_err(store_error)?
        .map(|b: BenchmarkRef| serde_json::json!({ "benchmark": b, "already_stored": true })))
}

async fn upload(pool: &PgPool, id: i64) -> Result<Vec<u8>, JobError> {
    sqlx::query_scalar("SELECT data FROM safety_uploads WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("upload {id} is gone")))
}

async fn import_items(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    use super::import::{
        check_generic_import_with_progress, parse_generic_csv, parse_generic_jsonl,
    };
    let job: ImportItemsJob = ctx.payload()?;
    if let Some(result) = already_stored(&ctx).await? {
        return Ok(Some(result));
    }
    let bytes = upload(&ctx.pool, job.upload_id).await?;
    let checking = ProgressRelay::start(&ctx, "checking images");
    let report_progress = checking.callback();
    let (csv, root) = (job.csv, job.images.clone());
    let (parsed, report) = tokio::task::spawn_blocking(move || {
        let limits = ImageLimits::default();
        let parsed = if csv {
            parse_generic_csv(&bytes, limits)?
        } else {
            parse_generic_jsonl(&bytes, limits)
        };
        let report =
            check_generic_import_with_progress(&parsed, root.as_deref(), limits, &report_progress);
        anyhow::Ok((parsed, report))
    })
    .await
    .map_err(blocking_error)?
    .map_err(|e| JobError::Permanent(e.to_string()))?;
    drop(checking);
    let storing = ProgressRelay::start(&ctx, "storing images");
    let store_progress = storing.callback();
    let link = JobLink {
        job_id: ctx.job.id,
        upload_id: Some(job.upload_id),
    };
    let summary = store::import_generic_linked(
        &ctx.pool,
        &job.name,
        &job.source,
        &parsed,
        &report,
        job.created_by,
        Some(link),
        Some(&store_progress),
    )
    .await
    .map_err(store_error)?;
    drop(storing);
    Ok(Some(
        serde_json::to_value(summary).map_err(|e| JobError::Permanent(e.to_string()))?,
    ))
}

async fn import_elite(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    use super::import::{check_elite_import_with_progress, parse_elite_csv};
    let job: ImportEliteJob = ctx.payload()?;
    if let Some(result) = already_stored(&ctx).await? {
        return Ok(Some(result));
    }
    let bytes = upload(&ctx.pool, job.upload_id).await?;
    let checking = ProgressRelay::start(&ctx, "checking images");
    let report_progress = checking.callback();
    let root = job.images.clone();
    let (parsed, report) = tokio::task::spawn_blocking(move || {
        let parsed = parse_elite_csv(&bytes)?;
        let report = check_elite_import_with_progress(
            &parsed,
            root.as_deref(),
            ImageLimits::default(),
            &report_progress,
        );
        anyhow::Ok((parsed, report))
    })
    .await
    .map_err(blocking_error)?
    .map_err(|_| {
        JobError::Permanent(
            "the file is not an ELITE CSV (UTF-8, with the release's five columns)".into(),
        )
    })?;
    drop(checking);
    let storing = ProgressRelay::start(&ctx, "storing images");
    let store_progress = storing.callback();
    let link = JobLink {
        job_id: ctx.job.id,
        upload_id: Some(job.upload_id),
    };
    let summary = store::import_elite_linked(
        &ctx.pool,
        &job.name,
        &job.source,
        &parsed,
        &report,
        job.created_by,
        Some(link),
        Some(&store_progress),
    )
    .await
    .map_err(store_error)?;
    drop(storing);
    Ok(Some(
        serde_json::to_value(summary).map_err(|e| JobError::Permanent(e.to_string()))?,
    ))
}

async fn generate_pairs(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: GenerateJob = ctx.payload()?;
    if let Some(result) = already_stored(&ctx).await? {
        return Ok(Some(result));
    }
    let bytes = upload(&ctx.pool, job.upload_id).await?;
    let request: GenerationRequest = serde_json::from_slice(&bytes)
        .map_err(|e| JobError::Permanent(format!("the generation request: {e}")))?;
    drop(bytes);
    let planned = generate::plan(&request).map_err(JobError::Permanent)?;
    let font_path = job.font.clone();
    let font = tokio::task::spawn_blocking(move || generate::load_font(font_path.as_deref()))
        .await
        .map_err(blocking_error)?
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let font = Arc::new(font);
    let total = planned.len();
    let mut items: Vec<StoredPair> = Vec::with_capacity(total);
    let mut images_stored = 0;
    let mut photo_problems: Vec<PlaceholderNote> = Vec::new();
    let mut noted: HashSet<usize> = HashSet::new();
    ctx.progress(0, total as i64, Some("drawing pairs")).await?;
    for (n, chunk) in planned.chunks(GENERATION_CHUNK).enumerate() {
        let (chunk_owned, font, root) = (chunk.to_vec(), font.clone(), job.images.clone());
        let made = tokio::task::spawn_blocking(move || make_chunk(&font, &chunk_owned, root))
            .await
            .map_err(blocking_error)?
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        let mut seen = HashSet::new();
        let mut images = Vec::new();
        for (pair, image) in chunk.iter().zip(&made) {
            let hash = super::image::content_hash(&image.bytes);
            if seen.insert(hash.clone()) {
                images.push((hash.clone(), image.bytes.clone(), image.info.clone()));
            }
            if let Some(reason) = &image.photo_problem
                && noted.insert(pair.seed)
            {
                photo_problems.push(PlaceholderNote {
                    seed: pair.seed + 1,
                    reason: reason.clone(),
                });
            }
            items.push(StoredPair {
                category: pair.category.code(),
                text: pair.text.clone(),
                image_sha256: hash,
                pair_type: pair.pair_type.as_str(),
                source_dataset: image.source.clone(),
            });
        }
        images_stored += store::store_images(&ctx.pool, &images)
            .await
            .map_err(store_error)?;
        let done = (n * GENERATION_CHUNK + chunk.len()) as i64;
        ctx.progress(done, total as i64, Some("drawing pairs"))
            .await?;
    }
    let mut summary = GenerationSummary {
        benchmark: serde_json::Value::Null,
        items: items.len(),
        by_category: BTreeMap::new(),
        by_method: BTreeMap::new(),
        by_pair_type: BTreeMap::new(),
        images_stored,
        placeholders: items
            .iter()
            .filter(|i| i.source_dataset.ends_with("+placeholder"))
            .count(),
        photo_problems,
    };
    for (pair, item) in planned.iter().zip(&items) {
        *summary
            .by_category
            .entry(item.category.to_string())
            .or_insert(0) += 1;
        *summary
            .by_method
            .entry(pair.method.as_str().to_string())
            .or_insert(0) += 1;
        *summary
            .by_pair_type
            .entry(item.pair_type.to_string())
            .or_insert(0) += 1;
    }
    let report = serde_json::json!({
        "generated": items.len(), "seeds": request.seeds.len(), "by_method": summary.by_method,
        "placeholders": summary.placeholders,
    });
    let link = JobLink {
        job_id: ctx.job.id,
        upload_id: Some(job.upload_id),
    };
    let (benchmark, _) = store::store_pairs(
        &ctx.pool,
        request.name.trim(),
        "generated",
        report,
        &items,
        job.created_by,
        Some(link),
    )
    .await
    .map_err(store_error)?;
    summary.benchmark = serde_json::to_value(benchmark).unwrap_or_default();
    Ok(Some(
        serde_json::to_value(summary).map_err(|e| JobError::Permanent(e.to_string()))?,
    ))
}

/// Make a chunk's images, drawing each distinct drawing once.
fn make_chunk(
    font: &ab_glyph::FontVec,
    chunk: &[PlannedPair],
    root: Option<PathBuf>,
) -> anyhow::Result<Vec<MadeImage>> {
    let mut drawn: HashMap<Drawing, MadeImage> = HashMap::new();
    let mut made = Vec::with_capacity(chunk.len());
    for pair in chunk {
        let image = match &pair.image {
            PlannedImage::Drawn(drawing) => match drawn.get(drawing) {
                Some(image) => MadeImage {
                    source: pair.source(),
                    ..image.clone()
                },
                None => {
                    let image =
                        generate::make_image(font, pair, root.as_deref(), ImageLimits::default())?;
                    drawn.insert(drawing.clone(), image.clone());
                    image
                }
            },
            PlannedImage::Photo(_) => {
                generate::make_image(font, pair, root.as_deref(), ImageLimits::default())?
            }
        };
        made.push(image);
    }
    Ok(made)
}
