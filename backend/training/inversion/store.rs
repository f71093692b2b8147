//! Storage of inversion sets: the set (its specification and teacher), its batches (unique
//! per set and index, stored with their images in one transaction, so a retried job never
//! doubles a batch), the images (PNG and raw tensor) and the PP&PR scores linked to the
//! generative-metrics results.

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::spec::InversionSpec;
use super::synth::BatchOutcome;
use crate::compression::Normalization;
use crate::genmetrics::store::PprResult;

/// A set as pages and the API show it: the data and teacher appear by their labels only
/// (a server path chosen by an admin is never shown).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InversionRow {
    pub id: i64,
    pub name: String,
    /// `deep` or `natural`.
    pub method: String,
    pub data: String,
    pub teacher: String,
    pub teacher_accuracy: Option<f64>,
    /// The specification with the data and teacher replaced by their labels.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub batches: i64,
    pub expected_batches: i64,
    pub images: i64,
    pub created_by: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(skip)]
    stored: Option<InversionSpec>,
}

impl InversionRow {
    /// The specification as stored; `None` when its JSON no longer parses.
    pub fn spec(&self) -> Option<&InversionSpec> {
        self.stored.as_ref()
    }

    pub fn method_title(&self) -> &'static str {
        self.method
            .parse::<super::Method>()
            .map_or("unknown method", super::Method::title)
    }
}

#[derive(sqlx::FromRow)]
struct Raw {
    id: i64,
    name: String,
    method: String,
    spec: serde_json::Value,
    teacher_accuracy: Option<f64>,
    created_by: Option<i64>,
    created_at: OffsetDateTime,
    batches: i64,
    images: i64,
}

fn row(raw: Raw) -> InversionRow {
    let stored = serde_json::from_value::<InversionSpec>(raw.spec.clone()).ok();
    let data = stored
        .as_ref()
        .map(|s| s.data.label())
        .unwrap_or_else(|| "unknown".into());
    let teacher = stored
        .as_ref()
        .map(|s| s.teacher.label())
        .unwrap_or_else(|| "unknown".into());
    let mut spec = raw.spec;
    if let Some(object) = spec.as_object_mut() {
        object.insert("data".into(), serde_json::Value::String(data.clone()));
        object.insert("teacher".into(), serde_json::Value::String(teacher.clone()));
    }
    InversionRow {
        id: raw.id,
        name: raw.name,
        method: raw.method,
        data,
        teacher,
        teacher_accuracy: raw.teacher_accuracy,
        expected_batches: stored.as_ref().map_or(0, |s| s.batches as i64),
        spec,
        batches: raw.batches,
        images: raw.images,
        created_by: raw.created_by,
        created_at: raw.created_at,
        stored,
    }
}

const SELECT: &str = "SELECT i.id, i.name, i.method, i.spec, i.teacher_accuracy, i.created_by, \
     i.created_at, \
     (SELECT count(*) FROM inversion_batches b WHERE b.inversion_id = i.id) AS batches, \
     (SELECT count(*) FROM inversion_images m WHERE m.inversion_id = i.id) AS images \
     FROM inversions i";

pub async fn create(
    pool: &PgPool,
    name: &str,
    spec: &InversionSpec,
    created_by: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let json = serde_json::to_value(spec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query_scalar(
        "INSERT INTO inversions (name, method, spec, created_by) VALUES ($1, $2, $3, $4) \
         RETURNING id",
    )
    .bind(name)
    .bind(spec.settings.method.name())
    .bind(json)
    .bind(created_by)
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<InversionRow>, sqlx::Error> {
    let raws: Vec<Raw> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} ORDER BY i.id DESC LIMIT 500"
    )))
    .fetch_all(pool)
    .await?;
    Ok(raws.into_iter().map(row).collect())
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<InversionRow>, sqlx::Error> {
    let raw: Option<Raw> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE i.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(raw.map(row))
}

/// The stored teacher: checkpoint bytes, input normalisation and whether flips keep classes.
pub struct StoredTeacher {
    pub bytes: Vec<u8>,
    pub normalization: Normalization,
    pub flip_invariant: bool,
}

pub async fn set_teacher(
    pool: &PgPool,
    id: i64,
    teacher: &StoredTeacher,
    label: &str,
    accuracy: f64,
) -> Result<(), sqlx::Error> {
    let norm = serde_json::to_value(teacher.normalization)
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "UPDATE inversions SET teacher = $2, teacher_label = $3, teacher_accuracy = $4, \
         normalization = $5, flip_invariant = $6 WHERE id = $1 AND teacher IS NULL",
    )
    .bind(id)
    .bind(&teacher.bytes)
    .bind(label)
    .bind(accuracy)
    .bind(norm)
    .bind(teacher.flip_invariant)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn teacher(pool: &PgPool, id: i64) -> Result<Option<StoredTeacher>, sqlx::Error> {
    let row: Option<(Option<Vec<u8>>, Option<serde_json::Value>, bool)> = sqlx::query_as(
        "SELECT teacher, normalization, flip_invariant FROM inversions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((Some(bytes), Some(norm), flip_invariant)) => {
            serde_json::from_value(norm)
                .ok()
                .map(|normalization| StoredTeacher {
                    bytes,
                    normalization,
                    flip_invariant,
                })
        }
        _ => None,
    })
}

pub async fn has_batch(pool: &PgPool, id: i64, batch: usize) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM inversion_batches WHERE inversion_id = $1 AND batch = $2)",
    )
    .bind(id)
    .bind(batch as i32)
    .fetch_one(pool)
    .await
}

/// Stores a batch and its images (`pngs[i]` drawn from image `i`) in one transaction; a
/// batch already stored is left as it is. Returns whether this call stored it.
pub async fn insert_batch(
    pool: &PgPool,
    id: i64,
    batch: usize,
    outcome: &BatchOutcome,
    pngs: &[Vec<u8>],
    job_id: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let json = serde_json::to_value(outcome).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let inserted = sqlx::query(
        "INSERT INTO inversion_batches (inversion_id, batch, result, job_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(batch as i32)
    .bind(json)
    .bind(job_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        let len: usize = outcome.shape.iter().product();
        let b = outcome.labels.len();
        let mut idx = Vec::with_capacity(b);
        let mut pixels = Vec::with_capacity(b);
        for i in 0..b {
            idx.push((batch * b + i) as i32);
            pixels.push(
                outcome.images[i * len..(i + 1) * len]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
        }
        let labels: Vec<i32> = outcome.labels.iter().map(|&l| l as i32).collect();
        let predicted: Vec<i32> = outcome.predicted.iter().map(|&l| l as i32).collect();
        sqlx::query(
            "INSERT INTO inversion_images (inversion_id, idx, label, predicted, probability, png, pixels) \
             SELECT $1, * FROM unnest($2::int[], $3::int[], $4::int[], $5::real[], $6::bytea[], $7::bytea[])",
        )
        .bind(id)
        .bind(&idx)
        .bind(&labels)
        .bind(&predicted)
        .bind(&outcome.label_probability)
        .bind(pngs)
        .bind(&pixels)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// Every stored batch's outcome (images not included), by index.
pub async fn batches(pool: &PgPool, id: i64) -> Result<Vec<(i32, BatchOutcome)>, sqlx::Error> {
    let rows: Vec<(i32, serde_json::Value)> = sqlx::query_as(
        "SELECT batch, result FROM inversion_batches WHERE inversion_id = $1 ORDER BY batch",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(b, v)| serde_json::from_value(v).ok().map(|o| (b, o)))
        .collect())
}

/// One image as listed (without its bytes).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ImageInfo {
    pub idx: i32,
    pub label: i32,
    pub predicted: i32,
    pub probability: f32,
}

/// Up to `per_class` images of each class, by index.
pub async fn image_grid(
    pool: &PgPool,
    id: i64,
    per_class: i64,
) -> Result<Vec<ImageInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT idx, label, predicted, probability FROM ( \
           SELECT idx, label, predicted, probability, \
                  row_number() OVER (PARTITION BY label ORDER BY idx) AS n \
           FROM inversion_images WHERE inversion_id = $1) t \
         WHERE n <= $2 ORDER BY label, idx",
    )
    .bind(id)
    .bind(per_class)
    .fetch_all(pool)
    .await
}

pub async fn image_png(pool: &PgPool, id: i64, idx: i32) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT png FROM inversion_images WHERE inversion_id = $1 AND idx = $2")
        .bind(id)
        .bind(idx)
        .fetch_optional(pool)
        .await
}

/// All images' raw values (concatenated) and labels, by index.
pub async fn image_tensors(pool: &PgPool, id: i64) -> Result<(Vec<f32>, Vec<u32>), sqlx::Error> {
    let rows: Vec<(i32, Vec<u8>)> = sqlx::query_as(
        "SELECT label, pixels FROM inversion_images WHERE inversion_id = $1 ORDER BY idx",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut values = Vec::new();
    let mut labels = Vec::with_capacity(rows.len());
    for (label, bytes) in rows {
        labels.push(label.max(0) as u32);
        values.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok((values, labels))
}

pub async fn set_score(
    pool: &PgPool,
    id: i64,
    encoder: &str,
    result_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inversion_scores (inversion_id, encoder, result_id) VALUES ($1, $2, $3) \
         ON CONFLICT (inversion_id, encoder) DO UPDATE SET result_id = EXCLUDED.result_id",
    )
    .bind(id)
    .bind(encoder)
    .bind(result_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A set's PP&PR score with one encoder.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Score {
    pub inversion_id: i64,
    pub encoder: String,
    pub result: PprResult,
}

/// Scores of the given sets (all sets when `ids` is empty).
pub async fn scores(pool: &PgPool, ids: &[i64]) -> Result<Vec<Score>, sqlx::Error> {
    let links: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT inversion_id, encoder, result_id FROM inversion_scores \
         WHERE cardinality($1::bigint[]) = 0 OR inversion_id = ANY($1) \
         ORDER BY inversion_id, encoder",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for (inversion_id, encoder, result_id) in links {
        if let Some(result) = crate::genmetrics::store::get_result(pool, result_id)
            .await
            .map_err(|e| match e {
                crate::genmetrics::store::StoreError::Sql(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?
        {
            out.push(Score {
                inversion_id,
                encoder,
                result,
            });
        }
    }
    Ok(out)
}

/// Dedup-key prefix of every job working on set `id`.
pub fn job_key(id: i64, part: &str) -> String {
    format!("inversion:{id}:{part}")
}

/// The set's jobs: (id, kind, status, progress done, total, message), oldest first.
pub async fn jobs_of(
    pool: &PgPool,
    id: i64,
) -> Result<Vec<(i64, String, String, i64, i64, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, status::text, progress_done, progress_total, progress_message \
         FROM jobs WHERE dedup_key LIKE $1 ORDER BY id",
    )
    .bind(format!("inversion:{id}:%"))
    .fetch_all(pool)
    .await
}

/// A compression experiment that pruned a set's teacher (a data-free repair or its
/// real-data comparison).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Repair {
    pub experiment_id: i64,
    pub method: String,
    pub ratio: f64,
    pub fine_tune_epochs: i32,
    /// `images` (the set's) or `real`.
    pub fine_tuned_on: String,
    pub accuracy_before: Option<f64>,
    pub accuracy_pruned: Option<f64>,
    pub accuracy_fine_tuned: Option<f64>,
}

/// The repairs of set `id`, by method, ratio and fine-tuning data.
pub async fn repairs(pool: &PgPool, id: i64) -> Result<Vec<Repair>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id AS experiment_id, c.method, c.ratio, c.fine_tune_epochs, \
                CASE WHEN j.payload->'inversion'->>'fine_tune_on_images' = 'true' \
                     THEN 'images' ELSE 'real' END AS fine_tuned_on, \
                c.accuracy_before, c.accuracy_pruned, c.accuracy_fine_tuned \
         FROM compression_experiments c JOIN jobs j ON j.id = c.job_id \
         WHERE (j.payload->'inversion'->>'inversion_id')::bigint = $1 \
         ORDER BY c.method, c.ratio, fine_tuned_on, c.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}
