//! Runs: create a run (a target model over a seeded subset of a benchmark, optionally judged),
//! enqueue its work in chunks, add evaluations, follow its progress, retry failed chunks and
//! cancel it. Its results (metrics, responses) are computed in [`super::run_results`], whose
//! items are re-exported here.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::jobs::{GENERATE_JOB, GenerateJob, JUDGE_JOB};
use super::panel::{Combine, panel_name, requested_judges};
use super::store::StoreError;
use super::taxonomy::Category;
use super::template::JudgeTemplate;
use crate::jobs::{self, NewJob};

pub use super::run_results::{
    PanelMember, PanelReport, ResponseRow, RunResults, response, responses, results,
    run_keyword_list,
};

/// Items per generation job.
pub const CHUNK: usize = 8;

/// What to run.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RunRequest {
    pub model: String,
    pub benchmark_id: i64,
    /// Judge model; without it (and without `judges`) responses are collected but not judged.
    #[serde(default)]
    pub judge: Option<String>,
    /// A panel of 2 to 5 judges instead of `judge`: each judges every response, and the panel's
    /// verdict is their majority (a tie counts as safe), its scores their mean or median
    /// (`combine`). One name here is the same as `judge`.
    #[serde(default, deserialize_with = "super::panel::deserialize_judges")]
    #[schema(max_items = 5)]
    pub judges: Vec<String>,
    /// How a panel combines its judges' rubric scores: `mean` (the default) or `median`.
    #[serde(default)]
    pub combine: Option<Combine>,
    /// Asked when the judge's replies stay unparseable after its retries.
    #[serde(default)]
    pub fallback_judge: Option<String>,
    /// A judge prompt template (the JSON form `elite judge score --template` reads) instead of
    /// our default.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub judge_template: Option<serde_json::Value>,
    /// Only these category codes.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Only items from these source datasets (e.g. `FigStep`; compared case-insensitively, as
    /// releases spell them differently: `FigStep`, `Figstep`).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Only items of these image/text combinations (`safe-unsafe`, ...).
    #[serde(default)]
    pub pair_types: Vec<String>,
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
    /// Wrap each item's text: `{text}` marks where it goes (an attack template, say). The
    /// keyword `taxonomy` selects the built-in taxonomy-alignment prompt (see
    /// `construct::TAXONOMY_PROMPT`), whose answers `construct::align_benchmark` reads.
    #[serde(default)]
    pub prompt_template: Option<String>,
    /// Refusal-keyword list for the keyword comparator: a shipped list's id (`elite`, the
    /// default, or `gcg`; see `data/keywords/`). The run stores the phrases it used.
    #[serde(default)]
    pub keyword_list: Option<String>,
    /// Your own refusal phrases instead of a shipped list (e.g. your copy of VLGuard's).
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
}

/// The item's text inside a run's prompt template.
pub fn apply_prompt_template(template: &str, text: &str) -> String {
    template.replace("{text}", text)
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

/// Find or create the evaluator for a judge (and optional fallback judge), template and
/// threshold.
pub async fn evaluator(
    conn: &mut sqlx::PgConnection,
    judge: &str,
    fallback_judge: Option<&str>,
    template: &JudgeTemplate,
    threshold: f64,
) -> Result<i64, StoreError> {
    if !threshold.is_finite() || threshold < 0.0 {
        return Err(StoreError::Invalid(format!(
            "threshold must be a non-negative number, not {threshold}"
        )));
    }
    let json = serde_json::to_value(template).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO evaluators (judge_name, template, fingerprint, threshold, fallback_judge) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT ON CONSTRAINT evaluators_identity DO UPDATE SET judge_name = EXCLUDED.judge_name
         RETURNING id",
    )
    .bind(judge)
    .bind(json)
    .bind(template.fingerprint())
    .bind(threshold)
    .bind(fallback_judge.unwrap_or(""))
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// Find or create the evaluators for `judges` (one judge, or a panel of 2 to 5): returns the
/// evaluator whose results the evaluation reports (the judge's, or the panel's) and the panel's
/// member evaluators (empty for one judge). Members are ordinary evaluators with the panel's
/// template, threshold and fallback judge, so their judgements (and the cache) are per judge.
pub async fn evaluation_evaluators(
    conn: &mut sqlx::PgConnection,
    judges: &[String],
    fallback_judge: Option<&str>,
    template: &JudgeTemplate,
    threshold: f64,
    combine: Option<Combine>,
) -> Result<(i64, Vec<i64>), StoreError> {
    match judges {
        [] => Err(StoreError::Invalid("an evaluation needs a judge".into())),
        [judge] => {
            if combine.is_some() {
                return Err(StoreError::Invalid(
                    "combine applies to a panel of two or more judges".into(),
                ));
            }
            Ok((
                evaluator(conn, judge, fallback_judge, template, threshold).await?,
                Vec::new(),
            ))
        }
        panel => {
            let mut members = Vec::with_capacity(panel.len());
            for judge in panel {
                members.push(evaluator(conn, judge, fallback_judge, template, threshold).await?);
            }
            let combine = combine.unwrap_or_default();
            let json =
                serde_json::to_value(template).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO evaluators (kind, judge_name, template, fingerprint, threshold, fallback_judge, combine, members)
                 VALUES ('panel', $1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT ON CONSTRAINT evaluators_identity DO UPDATE SET judge_name = EXCLUDED.judge_name
                 RETURNING id",
            )
            .bind(panel_name(panel))
            .bind(json)
            .bind(template.fingerprint())
            .bind(threshold)
            .bind(fallback_judge.unwrap_or(""))
            .bind(combine.as_str())
            .bind(&members)
            .fetch_one(conn)
            .await?;
            Ok((id, members))
        }
    }
}

/// The registered specs of these models by name (the snapshot a run keeps); a missing model is
/// a clear error.
async fn snapshot_models(
    pool: &PgPool,
    names: Vec<String>,
) -> Result<serde_json::Value, StoreError> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match crate::inference::store::snapshot(pool, &names).await {
        Ok(map) => Ok(serde_json::Value::Object(map)),
        Err(crate::inference::store::RegistryError::NoSuchModel(name)) => Err(StoreError::Invalid(
            format!("no model named {name:?}; register it first"),
        )),
        Err(e) => Err(StoreError::Invalid(e.to_string())),
    }
}

/// Most entries in a run's category, source and pair-type filters.
pub const MAX_FILTER_VALUES: usize = 64;
/// Largest seeded sample of a run.
pub const MAX_RUN_ITEMS: usize = 1_000_000;

fn bounded_names(field: &str, values: &[String]) -> Result<(), StoreError> {
    if values.len() > MAX_FILTER_VALUES || values.iter().any(|v| v.len() > 200) {
        return Err(StoreError::Invalid(format!(
            "{field}: at most {MAX_FILTER_VALUES} values of at most 200 bytes"
        )));
    }
    Ok(())
}

impl RunRequest {
    /// The keyword list the request names (the default list when it names none).
    pub fn keyword_list(&self) -> Result<super::keywords::KeywordList, StoreError> {
        match (&self.keyword_list, &self.keywords) {
            (Some(_), Some(_)) => Err(StoreError::Invalid(
                "give either keyword_list or keywords, not both".into(),
            )),
            (None, Some(phrases)) => {
                super::keywords::KeywordList::custom(phrases.clone()).map_err(StoreError::Invalid)
            }
            (id, None) => {
                let id = id.as_deref().unwrap_or(super::keywords::DEFAULT_LIST);
                super::keywords::shipped_list(id).ok_or_else(|| {
                    let known: Vec<String> = super::keywords::shipped_lists()
                        .into_iter()
                        .map(|l| l.id)
                        .collect();
                    StoreError::Invalid(format!(
                        "unknown keyword list {id:?}: one of {}, or your own phrases in `keywords`",
                        known.join(", ")
                    ))
                })
            }
        }
    }

    /// The judges of the run: none, one, or a panel.
    pub fn judges(&self) -> Result<Vec<String>, StoreError> {
        requested_judges(self.judge.as_deref(), &self.judges).map_err(StoreError::Invalid)
    }

    /// Every bound of the request, checked before anything is stored.
    pub fn validate(&self) -> Result<(), StoreError> {
        let judges = self.judges()?;
        if self.combine.is_some() && judges.len() < 2 {
            return Err(StoreError::Invalid(
                "combine applies to a panel of two or more judges".into(),
            ));
        }
        self.keyword_list()?;
        bounded_names("categories", &self.categories)?;
        bounded_names("sources", &self.sources)?;
        bounded_names("pair_types", &self.pair_types)?;
        if let Some(limit) = self.limit
            && !(1..=MAX_RUN_ITEMS).contains(&limit)
        {
            return Err(StoreError::Invalid(format!(
                "limit must be between 1 and {MAX_RUN_ITEMS}, not {limit}"
            )));
        }
        crate::inference::GenerationSettings {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(())
    }
}

/// Create a run, select its items, and enqueue its generation chunks.
pub async fn create_run(
    pool: &PgPool,
    request: &RunRequest,
    created_by: Option<i64>,
) -> Result<i64, StoreError> {
    request.validate()?;
    let judges = request.judges()?;
    if request.fallback_judge.is_some() && judges.is_empty() {
        return Err(StoreError::Invalid("a fallback judge needs a judge".into()));
    }
    let names = std::iter::once(&request.model)
        .chain(&judges)
        .chain(&request.fallback_judge)
        .cloned()
        .collect();
    let model_specs = snapshot_models(pool, names).await?;
    for code in &request.categories {
        code.parse::<Category>()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    for pair_type in &request.pair_types {
        if super::import::PairType::parse(pair_type).map(|p| p.as_str()) != Some(pair_type.as_str())
        {
            return Err(StoreError::Invalid(format!(
                "unknown pair type {pair_type:?}: safe-safe, safe-unsafe, unsafe-safe or unsafe-unsafe"
            )));
        }
    }
    let threshold = request
        .threshold
        .unwrap_or(super::rubric::DEFAULT_UNSAFE_THRESHOLD);
    let template = judge_template(request.judge_template.as_ref())?;
    let mut tx = pool.begin().await?;
    let (evaluator_id, members) = if judges.is_empty() {
        (None, Vec::new())
    } else {
        let (id, members) = evaluation_evaluators(
            &mut tx,
            &judges,
            request.fallback_judge.as_deref(),
            &template,
            threshold,
            request.combine,
        )
        .await?;
        (Some(id), members)
    };
    let benchmark: Option<i64> = sqlx::query_scalar("SELECT id FROM benchmarks WHERE id = $1")
        .bind(request.benchmark_id)
        .fetch_optional(&mut *tx)
        .await?;
    benchmark.ok_or_else(|| {
        StoreError::Invalid(format!("benchmark {} does not exist", request.benchmark_id))
    })?;
    let prompt_template = match request.prompt_template.as_deref() {
        None => None,
        Some("taxonomy") => Some(super::construct::TAXONOMY_PROMPT.to_string()),
        Some(t) if t.contains("{text}") && t.len() <= 20_000 => Some(t.to_string()),
        Some(_) => {
            return Err(StoreError::Invalid(
                "a prompt template must contain {text} (at most 20,000 bytes), or be \"taxonomy\""
                    .into(),
            ));
        }
    };
    let settings = serde_json::json!({
        "max_new_tokens": request.max_new_tokens, "temperature": request.temperature, "seed": request.seed,
        "prompt_template": prompt_template, "keywords": request.keyword_list()?,
    });
    let filter = serde_json::json!({
        "categories": request.categories, "sources": request.sources, "pair_types": request.pair_types,
        "limit": request.limit, "seed": request.seed,
    });
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (model_name, benchmark_id, evaluator_id, settings, filter, items, created_by, model_specs)
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7) RETURNING id",
    )
    .bind(&request.model)
    .bind(request.benchmark_id)
    .bind(evaluator_id)
    .bind(settings)
    .bind(filter)
    .bind(created_by)
    .bind(&model_specs)
    .fetch_one(&mut *tx)
    .await?;
    // A seeded, reproducible sample: order by a hash of (seed, item id).
    let any_of = |values: &Vec<String>| (!values.is_empty()).then(|| values.clone());
    let item_ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM items WHERE benchmark_id = $1 AND ($2::text[] IS NULL OR category_code = ANY($2))
           AND ($5::text[] IS NULL OR lower(source_dataset) = ANY(SELECT lower(s) FROM unnest($5::text[]) AS s)) AND ($6::text[] IS NULL OR pair_type = ANY($6))
         ORDER BY CASE WHEN $3::bigint IS NULL THEN lpad(position::text, 10, '0') ELSE md5($4 || ':' || id) END
         LIMIT $3",
    )
    .bind(request.benchmark_id)
    .bind(any_of(&request.categories))
    .bind(request.limit.map(|l| l as i64))
    .bind(request.seed.to_string())
    .bind(any_of(&request.sources))
    .bind(any_of(&request.pair_types))
    .fetch_all(&mut *tx)
    .await?;
    if item_ids.is_empty() {
        return Err(StoreError::Invalid("no items match the selection".into()));
    }
    let positions: Vec<i32> = (0..item_ids.len() as i32).collect();
    sqlx::query(
        "INSERT INTO run_items (run_id, item_id, position)
         SELECT $1, item, position FROM UNNEST($2::bigint[], $3::int[]) AS t(item, position)",
    )
    .bind(run_id)
    .bind(&item_ids)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE runs SET items = $2 WHERE id = $1")
        .bind(run_id)
        .bind(item_ids.len() as i32)
        .execute(&mut *tx)
        .await?;
    if let Some(evaluator_id) = evaluator_id {
        // A panel's members are evaluations of the run too: their jobs judge, the panel's
        // combine (see `jobs::run_judge`).
        let evaluations: Vec<i64> = std::iter::once(evaluator_id).chain(members).collect();
        sqlx::query(
            "INSERT INTO run_evaluations (run_id, evaluator_id, created_by)
             SELECT $1, e, $3 FROM unnest($2::bigint[]) AS e ON CONFLICT DO NOTHING",
        )
        .bind(run_id)
        .bind(&evaluations)
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
    }
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

/// Grade a run's stored responses with another judge, or a panel of judges (never
/// regenerating them).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct EvaluationRequest {
    /// One judge (give this or `judges`).
    #[serde(default)]
    pub judge: Option<String>,
    /// A panel of 2 to 5 judges (see [`RunRequest::judges`]).
    #[serde(default, deserialize_with = "super::panel::deserialize_judges")]
    #[schema(max_items = 5)]
    pub judges: Vec<String>,
    /// How a panel combines its judges' rubric scores: `mean` (the default) or `median`.
    #[serde(default)]
    pub combine: Option<Combine>,
    /// Asked when the judge's replies stay unparseable after its retries.
    #[serde(default)]
    pub fallback_judge: Option<String>,
    /// ELITE score at or above which a response is unsafe (default 10).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// A judge prompt template instead of our default (see [`RunRequest::judge_template`]).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub judge_template: Option<serde_json::Value>,
}

/// The judge template a request names, or our default; checked before anything is stored.
pub fn judge_template(value: Option<&serde_json::Value>) -> Result<JudgeTemplate, StoreError> {
    match value {
        None => Ok(JudgeTemplate::default_elite()),
        Some(value) => {
            let template: JudgeTemplate = serde_json::from_value(value.clone())
                .map_err(|e| StoreError::Invalid(format!("judge template: {e}")))?;
            template
                .validate()
                .map_err(|e| StoreError::Invalid(format!("judge template: {e}")))?;
            Ok(template)
        }
    }
}

/// One evaluator's progress over a run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Evaluation {
    pub evaluator_id: i64,
    /// The judge's name, or the panel's (`A + B + C`).
    pub judge_name: String,
    /// `judge` or `panel`.
    pub kind: String,
    /// A panel's rule for scores (`mean` or `median`); empty for one judge.
    pub combine: String,
    /// A panel's member evaluators, in panel order (each also an evaluation of the run).
    pub members: Vec<i64>,
    /// Empty when the evaluator has no fallback judge.
    pub fallback_judge: String,
    pub threshold: f64,
    pub judged: i64,
    pub unscored: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Add an evaluation to a run: judging jobs for every chunk already answered now, the rest as
/// their answers arrive (the generation job enqueues judging for every evaluation of its run).
pub async fn add_evaluation(
    pool: &PgPool,
    run_id: i64,
    request: &EvaluationRequest,
    created_by: Option<i64>,
) -> Result<i64, StoreError> {
    let judges =
        requested_judges(request.judge.as_deref(), &request.judges).map_err(StoreError::Invalid)?;
    if judges.is_empty() {
        return Err(StoreError::Invalid(
            "an evaluation needs a judge (or judges)".into(),
        ));
    }
    let names = judges
        .iter()
        .chain(&request.fallback_judge)
        .cloned()
        .collect();
    let model_specs = snapshot_models(pool, names).await?;
    let threshold = request
        .threshold
        .unwrap_or(super::rubric::DEFAULT_UNSAFE_THRESHOLD);
    let template = judge_template(request.judge_template.as_ref())?;
    // Record the evaluation before looking at the answers: a generation job stores its answers
    // before it reads the evaluations, so every chunk is enqueued by one side or the other.
    let mut tx = pool.begin().await?;
    let run_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await?;
    if !run_exists {
        return Err(StoreError::Sql(sqlx::Error::RowNotFound));
    }
    let (evaluator_id, members) = evaluation_evaluators(
        &mut tx,
        &judges,
        request.fallback_judge.as_deref(),
        &template,
        threshold,
        request.combine,
    )
    .await?;
    let evaluations: Vec<i64> = std::iter::once(evaluator_id)
        .chain(members.iter().copied())
        .collect();
    sqlx::query(
        "INSERT INTO run_evaluations (run_id, evaluator_id, created_by, model_specs)
         SELECT $1, e, $3, $4 FROM unnest($2::bigint[]) AS e ON CONFLICT DO NOTHING",
    )
    .bind(run_id)
    .bind(&evaluations)
    .bind(created_by)
    .bind(&model_specs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT ri.item_id, EXISTS (SELECT 1 FROM responses s WHERE s.run_id = ri.run_id AND s.item_id = ri.item_id)
         FROM run_items ri WHERE ri.run_id = $1 ORDER BY ri.position",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    for chunk in rows.chunks(CHUNK) {
        if chunk.iter().all(|(_, answered)| *answered) {
            let items: Vec<i64> = chunk.iter().map(|(item, _)| *item).collect();
            for evaluator in &evaluations {
                super::jobs::enqueue_judging(pool, run_id, *evaluator, &items).await?;
            }
        }
    }
    Ok(evaluator_id)
}

/// The evaluations of a run, oldest first.
pub async fn list_evaluations(pool: &PgPool, run_id: i64) -> Result<Vec<Evaluation>, StoreError> {
    Ok(sqlx::query_as::<_, Evaluation>(
        "SELECT e.id AS evaluator_id, e.judge_name, e.kind, e.combine, e.members, e.fallback_judge, e.threshold, re.created_at,
            (SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id
              WHERE s.run_id = re.run_id AND j.evaluator_id = e.id) AS judged,
            (SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id
              WHERE s.run_id = re.run_id AND j.evaluator_id = e.id AND j.status = 'unscored') AS unscored
         FROM run_evaluations re JOIN evaluators e ON e.id = re.evaluator_id
         WHERE re.run_id = $1 ORDER BY re.created_at, (e.kind = 'panel') DESC, e.id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

const RUN_SELECT: &str = "SELECT r.id, r.model_name, r.benchmark_id, r.evaluator_id, e.judge_name, r.items, r.created_at,
    (SELECT count(*) FROM responses s WHERE s.run_id = r.id) AS responses,
    (SELECT count(*) FROM responses s WHERE s.run_id = r.id AND s.error IS NOT NULL) AS errors,
    (SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id
      WHERE s.run_id = r.id AND j.evaluator_id = r.evaluator_id) AS judged
    FROM runs r LEFT JOIN evaluators e ON e.id = r.evaluator_id";

/// Each run's selection (its filter and prompt template, as text), by run id: runs with equal
/// selections of one benchmark answer the same items the same way.
pub async fn run_selections(pool: &PgPool) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, filter::text || coalesce(settings ->> 'prompt_template', '') FROM runs",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn list_runs(pool: &PgPool) -> Result<Vec<Run>, StoreError> {
    Ok(sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "{RUN_SELECT} ORDER BY r.id DESC"
    )))
    .fetch_all(pool)
    .await?)
}

pub async fn get_run<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: i64,
) -> Result<Option<Run>, StoreError> {
    Ok(
        sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE r.id = $1")))
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Where a run stands. Every run ends in `complete`, `incomplete` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Chunks are queued or being answered or judged.
    Running,
    /// Every item answered, and every answer judged by every evaluation of the run.
    Complete,
    /// Nothing is queued or running, but work is missing: `failed_chunks` lists the chunks
    /// that failed for good; Retry queues them again.
    Incomplete,
    /// A researcher cancelled the run's outstanding chunks (none failed).
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Complete => "complete",
            RunState::Incomplete => "incomplete",
            RunState::Cancelled => "cancelled",
        }
    }

    /// The state in words, for pages.
    pub fn label(self) -> &'static str {
        match self {
            RunState::Running => "in progress",
            other => other.as_str(),
        }
    }
}

/// A chunk of a run whose job failed for good (its attempts spent, or a permanent error).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FailedChunk {
    pub job_id: i64,
    /// `safety.generate` (answering) or `safety.judge` (judging).
    pub kind: String,
    /// The evaluation, for a judging chunk.
    pub evaluator_id: Option<i64>,
    pub item_ids: Vec<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

impl FailedChunk {
    /// The stage, in words, for pages and the CLI.
    pub fn stage(&self) -> String {
        match self.evaluator_id {
            Some(evaluator) if self.kind == JUDGE_JOB => format!("judging (evaluator {evaluator})"),
            _ => "answering".into(),
        }
    }
}

/// The run's chunks (answering and judging) whose jobs failed for good, oldest first.
pub async fn failed_chunks<'e>(
    db: impl sqlx::PgExecutor<'e>,
    run_id: i64,
) -> Result<Vec<FailedChunk>, StoreError> {
    Ok(sqlx::query_as::<_, FailedChunk>(
        "SELECT id AS job_id, kind, (payload->>'evaluator_id')::bigint AS evaluator_id,
                ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(payload->'item_ids') AS x) AS item_ids,
                attempts, last_error
         FROM jobs WHERE kind = ANY($2) AND (payload->>'run_id')::bigint = $1 AND status = 'failed'
         ORDER BY id",
    )
    .bind(run_id)
    .bind(&[GENERATE_JOB, JUDGE_JOB][..])
    .fetch_all(db)
    .await?)
}

/// Queue a run's failed chunks again, answering and judging alike. Each chunk keeps its one
/// job, queued again with a fresh attempt budget, and the job skips the items already answered
/// or judged, so nothing is asked twice; concurrent retries queue each chunk once. Returns the
/// jobs queued again (none when nothing had failed), or `None` when there is no such run.
pub async fn retry_run(pool: &PgPool, run_id: i64) -> Result<Option<Vec<i64>>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
        .bind(run_id)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let ids: Vec<i64> = failed_chunks(pool, run_id)
        .await?
        .iter()
        .map(|chunk| chunk.job_id)
        .collect();
    Ok(Some(jobs::retry_failed(pool, &ids).await?))
}

/// Where a run stands: counts, rates over the last minute and an estimate of the time left.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunProgress {
    pub run_id: i64,
    pub items: i64,
    pub responses: i64,
    /// Responses that are errors or visible skips (no usable image).
    pub errors: i64,
    /// Judgements by the run's own evaluator.
    pub judged: i64,
    pub unscored: i64,
    /// Every item answered and judged by the run's own judge.
    pub complete: bool,
    /// Running, or how the run ended (see [`RunState`]).
    pub state: RunState,
    /// Chunks that failed for good, with their last error (what Retry queues again).
    pub failed_chunks: Vec<FailedChunk>,
    pub jobs_queued: i64,
    pub jobs_running: i64,
    pub jobs_failed: i64,
    pub jobs_cancelled: i64,
    /// Answers per second over the last minute (or since the run started, if younger).
    pub answers_per_second: f64,
    /// Judgements per second over the same window.
    pub judgements_per_second: f64,
    /// Seconds until the slower stage is done at the current rates; absent when idle.
    pub eta_seconds: Option<f64>,
    /// The latest failures: response errors and failed jobs, newest first.
    pub recent_errors: Vec<String>,
}

pub async fn progress(pool: &PgPool, run_id: i64) -> Result<Option<RunProgress>, StoreError> {
    // Every count below must come from one snapshot: read one by one, a judgement stored and
    // its job finished between two reads would show a run `complete` with an answer unjudged.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let Some(run) = get_run(&mut *tx, run_id).await? else {
        return Ok(None);
    };
    #[derive(sqlx::FromRow)]
    struct Counts {
        window: f64,
        answers_recent: i64,
        judged_recent: i64,
        unscored: i64,
        queued: i64,
        running: i64,
        failed: i64,
        cancelled: i64,
        unjudged: i64,
    }
    let counts: Counts = sqlx::query_as(
        "WITH w AS (SELECT LEAST(60.0, GREATEST(1.0, EXTRACT(EPOCH FROM now() - r.created_at)::float8)) AS window
                    FROM runs r WHERE r.id = $1),
              j AS (SELECT status, count(*) AS n FROM jobs
                    WHERE kind LIKE 'safety.%' AND (payload->>'run_id')::bigint = $1 GROUP BY status)
         SELECT w.window,
           (SELECT count(*) FROM responses s WHERE s.run_id = $1
              AND s.created_at > now() - make_interval(secs => w.window)) AS answers_recent,
           (SELECT count(*) FROM judgements x JOIN responses s ON s.id = x.response_id
              WHERE s.run_id = $1 AND x.evaluator_id = $2
              AND x.created_at > now() - make_interval(secs => w.window)) AS judged_recent,
           (SELECT count(*) FROM judgements x JOIN responses s ON s.id = x.response_id
              WHERE s.run_id = $1 AND x.evaluator_id = $2 AND x.status = 'unscored') AS unscored,
           COALESCE((SELECT n FROM j WHERE status = 'queued'), 0) AS queued,
           COALESCE((SELECT n FROM j WHERE status = 'running'), 0) AS running,
           COALESCE((SELECT n FROM j WHERE status = 'failed'), 0) AS failed,
           COALESCE((SELECT n FROM j WHERE status = 'cancelled'), 0) AS cancelled,
           (SELECT count(*) FROM responses s JOIN run_evaluations re ON re.run_id = s.run_id
              WHERE s.run_id = $1 AND s.error IS NULL AND NOT EXISTS (SELECT 1 FROM judgements x
                WHERE x.response_id = s.id AND x.evaluator_id = re.evaluator_id)) AS unjudged
         FROM w",
    )
    .bind(run_id)
    .bind(run.evaluator_id)
    .fetch_one(&mut *tx)
    .await?;
    let recent_errors: Vec<String> = sqlx::query_scalar(
        "(SELECT 'item ' || item_id || ': ' || error AS message, created_at AS at FROM responses
            WHERE run_id = $1 AND error IS NOT NULL ORDER BY created_at DESC LIMIT 5)
         UNION ALL
         (SELECT 'job ' || id || ' (' || kind || '): ' || COALESCE(last_error, status::text),
                 COALESCE(finished_at, created_at) FROM jobs
            WHERE kind LIKE 'safety.%' AND (payload->>'run_id')::bigint = $1 AND status = 'failed'
            ORDER BY 2 DESC LIMIT 5)
         ORDER BY 2 DESC LIMIT 5",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    let answers_per_second = counts.answers_recent as f64 / counts.window;
    let judgements_per_second = counts.judged_recent as f64 / counts.window;
    let answers_left = (run.items as i64 - run.responses).max(0);
    let judgements_left = match run.evaluator_id {
        Some(_) => (run.items as i64 - run.errors - run.judged).max(0),
        None => 0,
    };
    let stage = |left: i64, rate: f64| -> Option<f64> {
        match left {
            0 => Some(0.0),
            _ if rate > 0.0 => Some(left as f64 / rate),
            _ => None,
        }
    };
    let eta_seconds = match (
        stage(answers_left, answers_per_second),
        stage(judgements_left, judgements_per_second),
    ) {
        (Some(a), Some(j)) if a + j > 0.0 => Some(a.max(j)),
        _ => None,
    };
    let failed_chunks = failed_chunks(&mut *tx, run_id).await?;
    tx.commit().await?;
    let state = if counts.queued + counts.running > 0 {
        RunState::Running
    } else if !failed_chunks.is_empty() {
        RunState::Incomplete
    } else if run.responses >= run.items as i64 && counts.unjudged == 0 {
        RunState::Complete
    } else if counts.cancelled > 0 {
        RunState::Cancelled
    } else {
        RunState::Incomplete
    };
    Ok(Some(RunProgress {
        run_id,
        items: run.items as i64,
        responses: run.responses,
        errors: run.errors,
        judged: run.judged,
        unscored: counts.unscored,
        complete: is_complete(&run),
        state,
        failed_chunks,
        jobs_queued: counts.queued,
        jobs_running: counts.running,
        jobs_failed: counts.failed,
        jobs_cancelled: counts.cancelled,
        answers_per_second,
        judgements_per_second,
        eta_seconds,
        recent_errors,
    }))
}

/// Whether every item has its response and every response its judgement.
pub fn is_complete(run: &Run) -> bool {
    let answered = run.responses >= run.items as i64;
    let judged = run.evaluator_id.is_none() || run.judged >= run.responses - run.errors;
    answered && judged
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
