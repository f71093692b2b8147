//! The model registry's storage: one row per model, its [`ModelSpec`] as JSON. Adding a model
//! whose name exists replaces its spec (the CLI and API say so).

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

/// Validate and store a spec; returns the row and whether it replaced an existing one.
pub async fn upsert(
    pool: &PgPool,
    spec: &ModelSpec,
    created_by: Option<i64>,
) -> Result<(RegisteredModel, bool), RegistryError> {
    spec.validate()?;
    let json = serde_json::to_value(spec)
        .map_err(|e| RegistryError::Corrupt(spec.name.clone(), e.to_string()))?;
    let (row, inserted): (Row, bool) = {
        let r: (i64, String, String, serde_json::Value, OffsetDateTime, OffsetDateTime, bool) = sqlx::query_as(
            "INSERT INTO models (name, adapter, spec, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET adapter = EXCLUDED.adapter, spec = EXCLUDED.spec, updated_at = now()
             RETURNING id, name, adapter, spec, created_at, updated_at, (xmax = 0)",
        )
        .bind(&spec.name)
        .bind(spec.adapter.as_str())
        .bind(json)
        .bind(created_by)
        .fetch_one(pool)
        .await?;
        ((r.0, r.1, r.2, r.3, r.4, r.5), r.6)
    };
    Ok((from_row(row)?, !inserted))
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
