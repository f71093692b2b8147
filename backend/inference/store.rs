//! The model registry's storage: one row per model, its [`ModelSpec`] as JSON. A name is unique
//! and owned: [`create`] refuses a taken name, [`update`] is the explicit change, and every
//! change keeps the replaced spec in `model_revisions` with who changed it. [`upsert`] (the
//! server-side CLI's `elite model add`) creates or updates, recording the revision likewise.

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::{InferenceError, ModelSpec};

/// Errors of the registry's storage.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Spec(#[from] InferenceError),
    #[error("no model named {0:?}")]
    NoSuchModel(String),
    #[error("a model named {0:?} exists already; change it with an explicit update")]
    Exists(String),
    #[error("the spec's name {0:?} differs from the model being updated")]
    Rename(String),
    #[error("stored spec of {0:?} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// A registered model.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegisteredModel {
    pub id: i64,
    pub name: String,
    pub adapter: String,
    #[schema(value_type = Object)]
    pub spec: ModelSpec,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl RegisteredModel {
    /// The model as a non-admin sees it: where it lives (server path, endpoint) and which
    /// server secret it reads are an admin's business.
    pub fn redacted(mut self) -> Self {
        self.spec.local_path = None;
        self.spec.base_url = None;
        self.spec.api_key_env = None;
        self
    }
}

type Row = (
    i64,
    String,
    String,
    serde_json::Value,
    OffsetDateTime,
    OffsetDateTime,
);

fn from_row(
    (id, name, adapter, spec, created_at, updated_at): Row,
) -> Result<RegisteredModel, RegistryError> {
    let spec = serde_json::from_value(spec)
        .map_err(|e| RegistryError::Corrupt(name.clone(), e.to_string()))?;
    Ok(RegisteredModel {
        id,
        name,
        adapter,
        spec,
        created_at,
        updated_at,
    })
}

/// Register a new model; a taken name is [`RegistryError::Exists`].
pub async fn create(
    pool: &PgPool,
    spec: &ModelSpec,
    created_by: Option<i64>,
) -> Result<RegisteredModel, RegistryError> {
    spec.validate()?;
    let row: Option<Row> = sqlx::query_as(
        "INSERT INTO models (name, adapter, spec, created_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING RETURNING id, name, adapter, spec, created_at, updated_at",
    )
    .bind(&spec.name)
    .bind(spec.adapter.as_str())
    .bind(spec_json(spec)?)
    .bind(created_by)
    .fetch_optional(pool)
    .await?;
    from_row(row.ok_or_else(|| RegistryError::Exists(spec.name.clone()))?)
}

/// Replace the spec of the model `name`, keeping the old spec as a revision by `changed_by`.
pub async fn update(
    pool: &PgPool,
    name: &str,
    spec: &ModelSpec,
    changed_by: Option<i64>,
) -> Result<RegisteredModel, RegistryError> {
    spec.validate()?;
    if spec.name != name {
        return Err(RegistryError::Rename(spec.name.clone()));
    }
    let mut tx = pool.begin().await?;
    let model_id: Option<i64> =
        sqlx::query_scalar("SELECT id FROM models WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let model_id = model_id.ok_or_else(|| RegistryError::NoSuchModel(name.to_string()))?;
    sqlx::query(
        "INSERT INTO model_revisions (model_id, spec, changed_by) SELECT id, spec, $2 FROM models WHERE id = $1",
    )
    .bind(model_id)
    .bind(changed_by)
    .execute(&mut *tx)
    .await?;
    let row: Row = sqlx::query_as(
        "UPDATE models SET adapter = $2, spec = $3, updated_at = now() WHERE id = $1
         RETURNING id, name, adapter, spec, created_at, updated_at",
    )
    .bind(model_id)
    .bind(spec.adapter.as_str())
    .bind(spec_json(spec)?)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    from_row(row)
}

/// Create, or update an existing name (recording the revision); returns the row and whether
/// it replaced an existing one. For the server-side CLI, whose user owns the server.
pub async fn upsert(
    pool: &PgPool,
    spec: &ModelSpec,
    created_by: Option<i64>,
) -> Result<(RegisteredModel, bool), RegistryError> {
    match create(pool, spec, created_by).await {
        Err(RegistryError::Exists(_)) => {
            Ok((update(pool, &spec.name, spec, created_by).await?, true))
        }
        other => Ok((other?, false)),
    }
}

fn spec_json(spec: &ModelSpec) -> Result<serde_json::Value, RegistryError> {
    serde_json::to_value(spec).map_err(|e| RegistryError::Corrupt(spec.name.clone(), e.to_string()))
}

/// A replaced spec of a model, newest first.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Revision {
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub changed_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub changed_at: OffsetDateTime,
}

/// The revisions of a model, newest first.
pub async fn revisions(pool: &PgPool, name: &str) -> Result<Vec<Revision>, RegistryError> {
    let model = get(pool, name).await?;
    Ok(sqlx::query_as(
        "SELECT r.spec, u.username AS changed_by, r.changed_at FROM model_revisions r
         LEFT JOIN users u ON u.id = r.changed_by WHERE r.model_id = $1 ORDER BY r.id DESC",
    )
    .bind(model.id)
    .fetch_all(pool)
    .await?)
}

/// The current specs of these models, by name, for a run's snapshot. A missing name is
/// [`RegistryError::NoSuchModel`].
pub async fn snapshot(
    pool: &PgPool,
    names: &[&str],
) -> Result<serde_json::Map<String, serde_json::Value>, RegistryError> {
    let mut map = serde_json::Map::new();
    for name in names {
        let model = get(pool, name).await?;
        map.insert((*name).to_string(), spec_json(&model.spec)?);
    }
    Ok(map)
}

pub async fn list(pool: &PgPool) -> Result<Vec<RegisteredModel>, RegistryError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, adapter, spec, created_at, updated_at FROM models ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(from_row).collect()
}

pub async fn get(pool: &PgPool, name: &str) -> Result<RegisteredModel, RegistryError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, adapter, spec, created_at, updated_at FROM models WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    from_row(row.ok_or_else(|| RegistryError::NoSuchModel(name.to_string()))?)
}
