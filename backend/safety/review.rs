//! Reviewing one response: every evaluator's judgement of it, the human labels it received in
//! annotation queues (or by import), and researchers' manual verdicts, which are kept beside
//! the automatic scores and never replace them.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::runs::{self, ResponseRow};
use super::store::StoreError;

/// One evaluator's judgement of a response.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EvaluatorJudgement {
    pub evaluator_id: i64,
    pub judge_name: String,
    /// `judge`, or `panel` for a panel's combined judgement (its members' own judgements are
    /// listed as well, each under its evaluator).
    pub kind: String,
    pub judged_by: Option<String>,
    pub threshold: f64,
    pub status: String,
    pub refused: Option<i16>,
    pub toxicity: Option<i16>,
    pub convincing: Option<i16>,
    pub specific: Option<i16>,
    pub elite_score: Option<f64>,
    pub strongreject_score: Option<f64>,
    pub is_unsafe: Option<bool>,
    #[schema(value_type = Object)]
    pub reasonings: Option<serde_json::Value>,
    pub unscored_reason: Option<String>,
    pub raw_reply: Option<String>,
    pub attempts: i32,
    /// A panel's combined values and votes (`panel::CombinedJudgement`).
    #[schema(value_type = Option<Object>)]
    pub combined: Option<serde_json::Value>,
}

impl EvaluatorJudgement {
    /// A panel's combined judgement, read back.
    pub fn panel(&self) -> Option<super::panel::CombinedJudgement> {
        serde_json::from_value(self.combined.clone()?).ok()
    }
}

/// A researcher's manual verdict on a response.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Override {
    pub id: i64,
    pub username: Option<String>,
    pub is_unsafe: bool,
    pub comment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What a researcher submits to override the automatic verdict.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct OverrideRequest {
    /// The researcher's verdict: is the response unsafe (the attack succeeded)?
    #[serde(rename = "unsafe")]
    pub is_unsafe: bool,
    pub comment: String,
}

/// A human label of the response (annotators appear by pseudonym only).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HumanLabel {
    pub queue_id: Option<i64>,
    pub annotator: Option<String>,
    pub is_unsafe: Option<bool>,
    #[schema(value_type = Object)]
    pub rubric: Option<serde_json::Value>,
    pub flagged: bool,
    pub skipped: bool,
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Everything known about one response of a run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemReview {
    #[schema(value_type = Object)]
    pub response: ResponseRow,
    pub judgements: Vec<EvaluatorJudgement>,
    pub human_labels: Vec<HumanLabel>,
    pub overrides: Vec<Override>,
}

pub async fn item_review(
    pool: &PgPool,
    run_id: i64,
    item_id: i64,
) -> Result<Option<ItemReview>, StoreError> {
    let Some(response) = runs::response(pool, run_id, item_id, None).await? else {
        return Ok(None);
    };
    let judgements = sqlx::query_as::<_, EvaluatorJudgement>(
        "SELECT e.id AS evaluator_id, e.judge_name, e.kind, j.combined, j.judged_by, e.threshold, j.status, j.refused, j.toxicity,
                j.convincing, j.specific, j.elite_score, j.strongreject_score, j.is_unsafe, j.reasonings,
                j.unscored_reason, j.raw_reply, j.attempts
         FROM judgements j JOIN evaluators e ON e.id = j.evaluator_id
         WHERE j.response_id = $1 ORDER BY e.id",
    )
    .bind(response.response_id)
    .fetch_all(pool)
    .await?;
    let human_labels = sqlx::query_as::<_, HumanLabel>(
        "SELECT queue_id, annotator_pseudonym AS annotator, is_unsafe, rubric, flagged, skipped, source, created_at
         FROM annotation_labels WHERE response_id = $1 ORDER BY created_at, id",
    )
    .bind(response.response_id)
    .fetch_all(pool)
    .await?;
    let overrides = overrides(pool, response.response_id).await?;
    Ok(Some(ItemReview {
        response,
        judgements,
        human_labels,
        overrides,
    }))
}

async fn overrides(pool: &PgPool, response_id: i64) -> Result<Vec<Override>, StoreError> {
    Ok(sqlx::query_as::<_, Override>(
        "SELECT o.id, u.username, o.is_unsafe, o.comment, o.created_at
         FROM judgement_overrides o LEFT JOIN users u ON u.id = o.user_id
         WHERE o.response_id = $1 ORDER BY o.created_at DESC, o.id DESC",
    )
    .bind(response_id)
    .fetch_all(pool)
    .await?)
}

/// Record a manual verdict with its comment; the automatic judgements stay as they are.
pub async fn add_override(
    pool: &PgPool,
    run_id: i64,
    item_id: i64,
    user_id: i64,
    is_unsafe: bool,
    comment: &str,
) -> Result<Option<Override>, StoreError> {
    let comment = comment.trim();
    if comment.is_empty() {
        return Err(StoreError::Invalid(
            "an override needs a comment saying why".into(),
        ));
    }
    if comment.chars().count() > 4000 {
        return Err(StoreError::Invalid(
            "the comment is longer than 4000 characters".into(),
        ));
    }
    let Some(response_id): Option<i64> =
        sqlx::query_scalar("SELECT id FROM responses WHERE run_id = $1 AND item_id = $2")
            .bind(run_id)
            .bind(item_id)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(None);
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO judgement_overrides (response_id, user_id, is_unsafe, comment)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(response_id)
    .bind(user_id)
    .bind(is_unsafe)
    .bind(comment)
    .fetch_one(pool)
    .await?;
    Ok(overrides(pool, response_id)
        .await?
        .into_iter()
        .find(|o| o.id == id))
}
