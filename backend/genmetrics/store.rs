//! Storage of the generative-metrics area: embedding sets (inline matrices or server paths),
//! PP&PR results keyed by (real set, fake set, a, k, prdc_k), and toy-experiment series.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::toy::{ToyExperiment, ToyParams, ToyPoint};
use super::{AllScores, Embeddings, GenMetricsError, Params, load_embeddings, parse_raw_f32};

/// Errors of the area's storage and jobs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Metrics(#[from] GenMetricsError),
    #[error("embedding set {0} does not exist")]
    NoSuchSet(i64),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// An embedding set as listed (without its matrix).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EmbeddingSet {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub rows: i32,
    pub dim: i32,
    /// `inline` (stored in the database) or `path` (a file on the server).
    pub storage: String,
    pub path: Option<String>,
    pub tensor: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A stored PP&PR result with its parameters.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PprResult {
    pub id: i64,
    pub real_set_id: i64,
    pub fake_set_id: i64,
    pub real_name: String,
    pub fake_name: String,
    pub label: String,
    pub a: f64,
    pub k: i32,
    pub prdc_k: i32,
    pub p_precision: f64,
    pub p_recall: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    pub n_real: i32,
    pub n_fake: i32,
    pub dim: i32,
    pub seconds: f64,
    pub job_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl PprResult {
    /// The name shown in tables and plots: the label, else "fake vs real".
    pub fn display_name(&self) -> String {
        if self.label.is_empty() {
            format!("{} vs {}", self.fake_name, self.real_name)
        } else {
            self.label.clone()
        }
    }
}

fn raw_bytes(set: &Embeddings) -> Vec<u8> {
    set.data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

const SET_COLUMNS: &str = "id, name, description, rows, dim, storage, path, tensor, created_at";

/// Store a matrix in the database. The same content stored twice yields the first set.
pub async fn insert_inline_set(
    pool: &PgPool,
    name: &str,
    description: &str,
    set: &Embeddings,
    created_by: Option<i64>,
) -> Result<EmbeddingSet, StoreError> {
    check_name(name)?;
    let bytes = raw_bytes(set);
    let mut hasher = Sha256::new();
    hasher.update((set.dim as u64).to_le_bytes());
    hasher.update(&bytes);
    let sha = hasher.finalize().to_vec();
    let inserted = sqlx::query_as::<_, EmbeddingSet>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO embedding_sets (name, description, rows, dim, storage, data, sha256, created_by)
         VALUES ($1, $2, $3, $4, 'inline', $5, $6, $7)
         ON CONFLICT (sha256) WHERE storage = 'inline' DO NOTHING
         RETURNING {SET_COLUMNS}"
    )))
    .bind(name)
    .bind(description)
    .bind(set.rows as i32)
    .bind(set.dim as i32)
    .bind(&bytes)
    .bind(&sha)
    .bind(created_by)
    .fetch_optional(pool)
    .await?;
    match inserted {
        Some(set) => Ok(set),
        None => Ok(
            sqlx::query_as::<_, EmbeddingSet>(sqlx::AssertSqlSafe(format!(
                "SELECT {SET_COLUMNS} FROM embedding_sets WHERE sha256 = $1 AND storage = 'inline'"
            )))
            .bind(&sha)
            .fetch_one(pool)
            .await?,
        ),
    }
}

/// Register a matrix that stays in a file on the server (it is read now to validate it).
pub async fn insert_path_set(
    pool: &PgPool,
    name: &str,
    path: &Path,
    dim: Option<usize>,
    tensor: Option<&str>,
    created_by: Option<i64>,
) -> Result<EmbeddingSet, StoreError> {
    check_name(name)?;
    if !path.is_absolute() {
        return Err(StoreError::Invalid("the path must be absolute".into()));
    }
    let owned = path.to_path_buf();
    let tensor_owned = tensor.map(str::to_string);
    let set =
        tokio::task::spawn_blocking(move || load_embeddings(&owned, dim, tensor_owned.as_deref()))
            .await
            .map_err(|e| StoreError::Invalid(format!("reading the file failed: {e}")))??;
    let sha = Sha256::digest(path.to_string_lossy().as_bytes()).to_vec();
    Ok(
        sqlx::query_as::<_, EmbeddingSet>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO embedding_sets (name, rows, dim, storage, path, tensor, sha256, created_by)
         VALUES ($1, $2, $3, 'path', $4, $5, $6, $7) RETURNING {SET_COLUMNS}"
    )))
        .bind(name)
        .bind(set.rows as i32)
        .bind(set.dim as i32)
        .bind(path.to_string_lossy().as_ref())
        .bind(tensor)
        .bind(sha)
        .bind(created_by)
        .fetch_one(pool)
        .await?,
    )
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(StoreError::Invalid(
            "a set needs a name of 1-200 characters".into(),
        ));
    }
    Ok(())
}

pub async fn list_sets(pool: &PgPool) -> Result<Vec<EmbeddingSet>, StoreError> {
    Ok(
        sqlx::query_as::<_, EmbeddingSet>(sqlx::AssertSqlSafe(format!(
            "SELECT {SET_COLUMNS} FROM embedding_sets ORDER BY id DESC"
        )))
        .fetch_all(pool)
        .await?,
    )
}

pub async fn get_set(pool: &PgPool, id: i64) -> Result<EmbeddingSet, StoreError> {
    sqlx::query_as::<_, EmbeddingSet>(sqlx::AssertSqlSafe(format!(
        "SELECT {SET_COLUMNS} FROM embedding_sets WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NoSuchSet(id))
}

/// Read a set's matrix (from the database or its file).
pub async fn load_set(pool: &PgPool, id: i64) -> Result<Embeddings, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Stored {
        storage: String,
        dim: i32,
        data: Option<Vec<u8>>,
        path: Option<String>,
        tensor: Option<String>,
    }
    let Stored {
        storage,
        dim,
        data,
        path,
        tensor,
    } = sqlx::query_as::<_, Stored>(
        "SELECT storage, dim, data, path, tensor FROM embedding_sets WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NoSuchSet(id))?;
    let dim = dim as usize;
    let set = tokio::task::spawn_blocking(move || match (storage.as_str(), data, path) {
        ("inline", Some(bytes), _) => parse_raw_f32(&bytes, dim).map_err(StoreError::from),
        (_, _, Some(path)) => load_embeddings(Path::new(&path), Some(dim), tensor.as_deref())
            .map_err(StoreError::from),
        _ => Err(StoreError::Invalid(format!(
            "embedding set {id} has neither data nor a path"
        ))),
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("reading the set failed: {e}")))??;
    Ok(set)
}

const RESULT_SELECT: &str = "SELECT r.id, r.real_set_id, r.fake_set_id, rs.name AS real_name, fs.name AS fake_name,
    r.label, r.a, r.k, r.prdc_k, r.p_precision, r.p_recall, r.precision, r.recall, r.density, r.coverage,
    r.n_real, r.n_fake, r.dim, r.seconds, r.job_id, r.created_at
    FROM ppr_results r JOIN embedding_sets rs ON rs.id = r.real_set_id JOIN embedding_sets fs ON fs.id = r.fake_set_id";

/// The stored result for these sets and parameters, if any.
pub async fn find_result(
    pool: &PgPool,
    real: i64,
    fake: i64,
    params: &Params,
) -> Result<Option<PprResult>, StoreError> {
    Ok(sqlx::query_as::<_, PprResult>(sqlx::AssertSqlSafe(format!(
        "{RESULT_SELECT} WHERE r.real_set_id = $1 AND r.fake_set_id = $2 AND r.a = $3 AND r.k = $4 AND r.prdc_k = $5"
    )))
    .bind(real)
    .bind(fake)
    .bind(params.a)
    .bind(params.k as i32)
    .bind(params.prdc_k as i32)
    .fetch_optional(pool)
    .await?)
}

/// Record a result once: a second write for the same key keeps the first.
#[allow(clippy::too_many_arguments)]
pub async fn insert_result(
    pool: &PgPool,
    real: i64,
    fake: i64,
    params: &Params,
    label: &str,
    scores: &AllScores,
    seconds: f64,
    job_id: Option<i64>,
    created_by: Option<i64>,
) -> Result<PprResult, StoreError> {
    sqlx::query(
        "INSERT INTO ppr_results (real_set_id, fake_set_id, a, k, prdc_k, label, p_precision, p_recall,
             precision, recall, density, coverage, n_real, n_fake, dim, seconds, job_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (real_set_id, fake_set_id, a, k, prdc_k) DO NOTHING",
    )
    .bind(real)
    .bind(fake)
    .bind(params.a)
    .bind(params.k as i32)
    .bind(params.prdc_k as i32)
    .bind(label)
    .bind(scores.ppr.p_precision)
    .bind(scores.ppr.p_recall)
    .bind(scores.prdc.precision)
    .bind(scores.prdc.recall)
    .bind(scores.prdc.density)
    .bind(scores.prdc.coverage)
    .bind(scores.real_count as i32)
    .bind(scores.fake_count as i32)
    .bind(scores.dim as i32)
    .bind(seconds)
    .bind(job_id)
    .bind(created_by)
    .execute(pool)
    .await?;
    find_result(pool, real, fake, params)
        .await?
        .ok_or_else(|| StoreError::Invalid("result vanished after insert".into()))
}

pub async fn list_results(pool: &PgPool) -> Result<Vec<PprResult>, StoreError> {
    Ok(sqlx::query_as::<_, PprResult>(sqlx::AssertSqlSafe(format!(
        "{RESULT_SELECT} ORDER BY r.id DESC"
    )))
    .fetch_all(pool)
    .await?)
}

pub async fn get_result(pool: &PgPool, id: i64) -> Result<Option<PprResult>, StoreError> {
    Ok(sqlx::query_as::<_, PprResult>(sqlx::AssertSqlSafe(format!(
        "{RESULT_SELECT} WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// A stored toy run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ToyRun {
    pub id: i64,
    pub experiment: ToyExperiment,
    pub params: ToyParams,
    pub points: Vec<ToyPoint>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub async fn insert_toy_run(
    pool: &PgPool,
    experiment: ToyExperiment,
    params: &ToyParams,
    points: &[ToyPoint],
    job_id: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ppr_toy_runs (experiment, params, series, job_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(experiment.as_str())
    .bind(serde_json::to_value(params).unwrap_or_default())
    .bind(serde_json::to_value(points).unwrap_or_default())
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The newest run of each experiment.
pub async fn latest_toy_runs(pool: &PgPool) -> Result<Vec<ToyRun>, StoreError> {
    let rows: Vec<(
        i64,
        String,
        serde_json::Value,
        serde_json::Value,
        OffsetDateTime,
    )> = sqlx::query_as(
        "SELECT DISTINCT ON (experiment) id, experiment, params, series, created_at
         FROM ppr_toy_runs ORDER BY experiment, id DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, experiment, params, series, created_at)| {
            Some(ToyRun {
                id,
                experiment: experiment.parse().ok()?,
                params: serde_json::from_value(params).ok()?,
                points: serde_json::from_value(series).ok()?,
                created_at,
            })
        })
        .collect())
}
