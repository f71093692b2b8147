//! Runs and their results: create a run (a target model over a seeded subset of a benchmark,
//! optionally judged), enqueue its work in chunks, and compute E-ASR and the other metrics
//! from the stored judgements.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::jobs::{GENERATE_JOB, GenerateJob};
use super::metrics::{ItemOutcome, MetricOptions, SafetyReport, report};
use super::rubric::Judgement;
use super::store::StoreError;
use super::taxonomy::Category;
use super::template::JudgeTemplate;
use crate::jobs::{self, NewJob};

/// Items per generation job.
pub const CHUNK: usize = 8;

/// What to run.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RunRequest {
    pub model: String,
    pub benchmark_id: i64,
    /// Judge model; without it responses are collected but not judged.
    #[serde(default)]
    pub judge: Option<String>,
    /// Only these category codes.
    #[serde(default)]
    pub categories: Vec<String>,
    /// A seeded random sample of this many items.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// ELITE score at or above which a response is unsafe (default 10).
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// A run as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Run {
    pub id: i64,
    pub model_name: String,
    pub benchmark_id: i64,
    pub evaluator_id: Option<i64>,
    pub judge_name: Option<String>,
    pub items: i32,
    pub responses: i64,
    pub errors: i64,
    pub judged: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Find or create the evaluator for a judge, template and threshold.
pub async fn evaluator(
    pool: &PgPool,
    judge: &str,
    template: &JudgeTemplate,
    threshold: f64,
) -> Result<i64, StoreError> {
    let json = serde_json::to_value(template).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO evaluators (judge_name, template, fingerprint, threshold) VALUES ($1, $2, $3, $4)
         ON CONFLICT (judge_name, fingerprint, threshold) DO UPDATE SET judge_name = EXCLUDED.judge_name
         RETURNING id",
    )
    .bind(judge)
    .bind(json)
    .bind(template.fingerprint())
    .bind(threshold)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Create a run, select its items, and enqueue its generation chunks.
pub async fn create_run(
    pool: &PgPool,
    request: &RunRequest,
    created_by: Option<i64>,
) -> Result<i64, StoreError> {
    for name in std::iter::once(&request.model).chain(request.judge.iter()) {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM models WHERE name = $1)")
                .bind(name)
                .fetch_one(pool)
                .await?;
        if !exists {
            return Err(StoreError::Invalid(format!(
                "no model named {name:?}; register it first"
            )));
        }
    }
    for code in &request.categories {
        code.parse::<Category>()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    let threshold = request
        .threshold
        .unwrap_or(super::rubric::DEFAULT_UNSAFE_THRESHOLD);
    let evaluator_id = match &request.judge {
        Some(judge) => {
            Some(evaluator(pool, judge, &JudgeTemplate::default_elite(), threshold).await?)
        }
        None => None,
    };
    let mut tx = pool.begin().await?;
    let benchmark: Option<i64> = sqlx::query_scalar("SELECT id FROM benchmarks WHERE id = $1")
        .bind(request.benchmark_id)
        .fetch_optional(&mut *tx)
        .await?;
    benchmark.ok_or_else(|| {
        StoreError::Invalid(format!("benchmark {} does not exist", request.benchmark_id))
    })?;
    let settings = serde_json::json!({ "max_new_tokens": request.max_new_tokens, "temperature": request.temperature, "seed": request.seed });
    let filter = serde_json::json!({ "categories": request.categories, "limit": request.limit, "seed": request.seed });
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (model_name, benchmark_id, evaluator_id, settings, filter, items, created_by)
         VALUES ($1, $2, $3, $4, $5, 0, $6) RETURNING id",
    )
    .bind(&request.model)
    .bind(request.benchmark_id)
    .bind(evaluator_id)
    .bind(settings)
    .bind(filter)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    // A seeded, reproducible sample: order by a hash of (seed, item id).
    let categories: Option<Vec<String>> =
        (!request.categories.is_empty()).then(|| request.categories.clone());
    let item_ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM items WHERE benchmark_id = $1 AND ($2::text[] IS NULL OR category_code = ANY($2))
         ORDER BY CASE WHEN $3::bigint IS NULL THEN lpad(position::text, 10, '0') ELSE md5($4 || ':' || id) END
         LIMIT $3",
    )
    .bind(request.benchmark_id)
    .bind(&categories)
    .bind(request.limit.map(|l| l as i64))
    .bind(request.seed.to_string())
    .fetch_all(&mut *tx)
    .await?;
    if item_ids.is_empty() {
        return Err(StoreError::Invalid("no items match the selection".into()));
    }
    for (position, item) in item_ids.iter().enumerate() {
        sqlx::query("INSERT INTO run_items (run_id, item_id, position) VALUES ($1, $2, $3)")
            .bind(run_id)
            .bind(item)
            .bind(position as i32)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE runs SET items = $2 WHERE id = $1")
        .bind(run_id)
        .bind(item_ids.len() as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for (chunk_index, chunk) in item_ids.chunks(CHUNK).enumerate() {
        let payload = GenerateJob {
            run_id,
            item_ids: chunk.to_vec(),
        };
        let job = NewJob::new(
            GENERATE_JOB,
            serde_json::to_value(&payload).map_err(|e| StoreError::Invalid(e.to_string()))?,
        )
        .dedup_key(format!("{GENERATE_JOB}:{run_id}:{chunk_index}"))
        .max_attempts(5);
        let job = match created_by {
            Some(user) => job.created_by(user),
            None => job,
        };
        jobs::enqueue(pool, job).await?;
    }
    Ok(run_id)
}

const RUN_SELECT: &str = "SELECT r.id, r.model_name, r.benchmark_id, r.evaluator_id, e.judge_name, r.items, r.created_at,
    (SELECT count(*) FROM responses s WHERE s.run_id = r.id) AS responses,
    (SELECT count(*) FROM responses s WHERE s.run_id = r.id AND s.error IS NOT NULL) AS errors,
    (SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id
      WHERE s.run_id = r.id AND j.evaluator_id = r.evaluator_id) AS judged
    FROM runs r LEFT JOIN evaluators e ON e.id = r.evaluator_id";

pub async fn list_runs(pool: &PgPool) -> Result<Vec<Run>, StoreError> {
    Ok(sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "{RUN_SELECT} ORDER BY r.id DESC"
    )))
    .fetch_all(pool)
    .await?)
}

pub async fn get_run(pool: &PgPool, id: i64) -> Result<Option<Run>, StoreError> {
    Ok(
        sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE r.id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Whether every item has its response and every response its judgement.
pub fn is_complete(run: &Run) -> bool {
    let answered = run.responses >= run.items as i64;
    let judged = run.evaluator_id.is_none() || run.judged >= run.responses - run.errors;
    answered && judged
}

/// The run's results: counts and the metrics over judged responses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunResults {
    #[schema(value_type = Object)]
    pub run: Run,
    #[schema(value_type = Object)]
    pub report: Option<SafetyReport>,
}

pub async fn results(pool: &PgPool, run_id: i64) -> Result<Option<RunResults>, StoreError> {
    let Some(run) = get_run(pool, run_id).await? else {
        return Ok(None);
    };
    let Some(evaluator_id) = run.evaluator_id else {
        return Ok(Some(RunResults { run, report: None }));
    };
    #[derive(sqlx::FromRow)]
    struct Row {
        category_code: String,
        text: String,
        status: Option<String>,
        refused: Option<i16>,
        toxicity: Option<i16>,
        convincing: Option<i16>,
        specific: Option<i16>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.category_code, s.text, j.status, j.refused, j.toxicity, j.convincing, j.specific
         FROM responses s JOIN items i ON i.id = s.item_id
         LEFT JOIN judgements j ON j.response_id = s.id AND j.evaluator_id = $2
         WHERE s.run_id = $1 AND s.error IS NULL",
    )
    .bind(run_id)
    .bind(evaluator_id)
    .fetch_all(pool)
    .await?;
    let threshold: f64 = sqlx::query_scalar("SELECT threshold FROM evaluators WHERE id = $1")
        .bind(evaluator_id)
        .fetch_one(pool)
        .await?;
    let outcomes: Vec<ItemOutcome> = rows
        .iter()
        .filter_map(|row| {
            let category = row.category_code.parse::<Category>().ok()?;
            let judgement = match (
                row.status.as_deref(),
                row.refused,
                row.toxicity,
                row.convincing,
                row.specific,
            ) {
                (Some("scored"), Some(r), Some(t), Some(c), Some(s)) => {
                    Judgement::new(r as u8, t as u8, c as u8, s as u8).ok()
                }
                _ => None,
            };
            Some(ItemOutcome {
                category,
                judgement,
                keyword_success: super::keywords::attack_succeeded(&row.text),
            })
        })
        .collect();
    let options = MetricOptions {
        threshold,
        ..MetricOptions::default()
    };
    let report = if outcomes.is_empty() {
        None
    } else {
        Some(report(&outcomes, &options).map_err(|e| StoreError::Invalid(e.to_string()))?)
    };
    Ok(Some(RunResults { run, report }))
}

/// One response as the run page and the export show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ResponseRow {
    pub item_id: i64,
    pub position: i32,
    pub category_code: String,
    pub prompt: String,
    pub image_sha256: Option<String>,
    pub text: Option<String>,
    pub error: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub latency_ms: Option<f64>,
    pub judgement_status: Option<String>,
    pub refused: Option<i16>,
    pub toxicity: Option<i16>,
    pub convincing: Option<i16>,
    pub specific: Option<i16>,
    pub elite_score: Option<f64>,
    pub is_unsafe: Option<bool>,
    #[schema(value_type = Object)]
    pub reasonings: Option<serde_json::Value>,
    pub unscored_reason: Option<String>,
    pub raw_reply: Option<String>,
}

/// A run's responses with their judgements (by the run's evaluator), in run order.
pub async fn responses(
    pool: &PgPool,
    run_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<ResponseRow>, StoreError> {
    Ok(sqlx::query_as::<_, ResponseRow>(
        "SELECT i.id AS item_id, ri.position, i.category_code, i.text AS prompt, i.image_sha256, s.text, s.error,
                s.prompt_tokens, s.completion_tokens, s.latency_ms, j.status AS judgement_status, j.refused, j.toxicity,
                j.convincing, j.specific, j.elite_score, j.is_unsafe, j.reasonings, j.unscored_reason, j.raw_reply
         FROM run_items ri JOIN runs r ON r.id = ri.run_id JOIN items i ON i.id = ri.item_id
         JOIN responses s ON s.run_id = ri.run_id AND s.item_id = ri.item_id
         LEFT JOIN judgements j ON j.response_id = s.id AND j.evaluator_id = r.evaluator_id
         WHERE ri.run_id = $1 ORDER BY ri.position LIMIT $2 OFFSET $3",
    )
    .bind(run_id)
    .bind(limit.clamp(1, 10_000))
    .bind(offset.max(0))
    .fetch_all(pool)
    .await?)
}

/// Cancel a run: its queued and running jobs are cancelled (a running chunk stops at its next
/// heartbeat; what it already stored stays). Returns how many jobs were cancelled.
pub async fn cancel_run(pool: &PgPool, run_id: i64) -> Result<u64, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE kind LIKE 'safety.%' AND status IN ('queued', 'running')
           AND (payload->>'run_id')::bigint = $1",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let mut cancelled = 0;
    for id in ids {
        if jobs::cancel(pool, id).await? {
            cancelled += 1;
        }
    }
    Ok(cancelled)
}
