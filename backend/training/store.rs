//! Storage of training experiments (their specification) and runs (one per recipe and seed,
//! unique, so a retried job stores its run once).

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::experiment::{ExperimentSpec, RunResult};

/// A stored experiment, as pages and the API show it: the data source appears by its label
/// only (a server folder chosen by an admin is never shown to researchers).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExperimentRow {
    pub id: i64,
    pub name: String,
    /// `cnn` (mixing recipes) or `vit` (position-embedding variants).
    pub family: String,
    /// `digits`, `cifar10`, `cifar100`, ...
    pub data: String,
    /// The specification with `data` replaced by its label.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub created_by: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Runs stored so far, of `expected_runs`.
    pub runs: i64,
    pub expected_runs: i64,
    /// The specification as stored (with server paths), for the jobs and the summary.
    #[serde(skip)]
    stored: Option<ExperimentSpec>,
}

impl ExperimentRow {
    /// The specification, as stored; `None` when its JSON no longer parses.
    pub fn spec(&self) -> Option<&ExperimentSpec> {
        self.stored.as_ref()
    }
}

#[derive(sqlx::FromRow)]
struct RawExperiment {
    id: i64,
    name: String,
    family: String,
    spec: serde_json::Value,
    created_by: Option<i64>,
    created_at: OffsetDateTime,
    runs: i64,
}

fn row(raw: RawExperiment) -> ExperimentRow {
    let stored = serde_json::from_value::<ExperimentSpec>(raw.spec.clone()).ok();
    let data = stored
        .as_ref()
        .map(|s| s.data.label())
        .unwrap_or_else(|| "unknown".into());
    let mut spec = raw.spec;
    if let Some(object) = spec.as_object_mut() {
        object.insert("data".into(), serde_json::Value::String(data.clone()));
    }
    ExperimentRow {
        id: raw.id,
        name: raw.name,
        family: raw.family,
        data,
        spec,
        created_by: raw.created_by,
        created_at: raw.created_at,
        runs: raw.runs,
        expected_runs: stored
            .as_ref()
            .map_or(0, |s| (s.recipes.len() * s.seeds.len()) as i64),
        stored,
    }
}

const SELECT: &str = "SELECT e.id, e.name, e.family, e.spec, e.created_by, e.created_at, \
     (SELECT count(*) FROM training_runs r WHERE r.experiment_id = e.id) AS runs \
     FROM training_experiments e";

/// Stores a checked specification; returns the experiment's id.
pub async fn create(
    pool: &PgPool,
    name: &str,
    spec: &ExperimentSpec,
    created_by: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let family = match spec.family() {
        Ok(super::Family::Vit) => "vit",
        _ => "cnn",
    };
    let spec = serde_json::to_value(spec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query_scalar(
        "INSERT INTO training_experiments (name, family, spec, created_by) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(name)
    .bind(family)
    .bind(spec)
    .bind(created_by)
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<ExperimentRow>, sqlx::Error> {
    let rows: Vec<RawExperiment> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY e.id DESC")))
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(row).collect())
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<ExperimentRow>, sqlx::Error> {
    let raw: Option<RawExperiment> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE e.id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(raw.map(row))
}

/// The runs of an experiment, by recipe then seed. A row whose JSON no longer parses is
/// skipped rather than failing the page.
pub async fn runs(pool: &PgPool, experiment_id: i64) -> Result<Vec<RunResult>, sqlx::Error> {
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
        "SELECT result FROM training_runs WHERE experiment_id = $1 ORDER BY recipe, seed",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(v,)| serde_json::from_value(v).ok())
        .collect())
}

/// Whether the run of (experiment, recipe, seed) is stored.
pub async fn has_run(
    pool: &PgPool,
    experiment_id: i64,
    recipe: &str,
    seed: u64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM training_runs \
         WHERE experiment_id = $1 AND recipe = $2 AND seed = $3)",
    )
    .bind(experiment_id)
    .bind(recipe)
    .bind(seed as i64)
    .fetch_one(pool)
    .await
}

/// Stores a run once; a second store of the same (experiment, recipe, seed) is ignored.
pub async fn insert_run(
    pool: &PgPool,
    experiment_id: i64,
    result: &RunResult,
    job_id: Option<i64>,
) -> Result<(), sqlx::Error> {
    let value = serde_json::to_value(result).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO training_runs (experiment_id, recipe, seed, result, job_id) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (experiment_id, recipe, seed) DO NOTHING",
    )
    .bind(experiment_id)
    .bind(result.recipe.name())
    .bind(result.seed as i64)
    .bind(value)
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}
