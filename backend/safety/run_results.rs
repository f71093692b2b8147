//! A run's results: E-ASR and the other metrics computed from one evaluator's stored
//! judgements (panels combined, pending answers kept apart), the judges' agreement for a panel,
//! the paper's figures when comparable, and the stored responses as the pages and exports list
//! them. Creating, following and cancelling runs is [`super::runs`]'s.

use serde::Serialize;
use sqlx::PgPool;

use super::metrics::{ItemOutcome, MetricOptions, SafetyReport, report};
use super::panel::{
    Combine, CombinedJudgement, PairAgreement, PanelVerdicts, TIE_RULE, verdict_agreement,
};
use super::rubric::Judgement;
use super::runs::{Run, get_run};
use super::store::StoreError;
use super::taxonomy::Category;

/// The run's results: counts and the metrics over judged responses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunResults {
    #[schema(value_type = Object)]
    pub run: Run,
    /// The evaluator whose judgements the report is computed from.
    pub evaluator_id: Option<i64>,
    #[schema(value_type = Object)]
    pub report: Option<SafetyReport>,
    /// Responses this evaluator has not judged yet: left out of the report (not counted as
    /// unscored) until they are judged.
    #[serde(default)]
    pub pending: usize,
    /// Items of the run not answered yet.
    #[serde(default)]
    pub unanswered: usize,
    /// When the evaluator is a panel: its judges, rules and their agreement.
    #[serde(default)]
    pub panel: Option<PanelReport>,
    /// The paper's Table 3 figures, only when the run is comparable with them (see
    /// [`super::paper_store::paper_comparison`]).
    #[serde(default)]
    pub paper: Option<super::paper::PaperComparison>,
}

/// A panel evaluation's judges, its rules, and how much its judges agree.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PanelReport {
    /// The member evaluators and their judges, in panel order.
    pub judges: Vec<PanelMember>,
    /// How the judges' rubric scores are combined.
    pub combine: Combine,
    /// How the verdict is decided, ties included.
    pub verdict_rule: String,
    /// Cohen's kappa on the unsafe verdict for each pair of judges, over the responses both
    /// scored: overall and per category.
    pub agreement: Vec<PairAgreement>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PanelMember {
    pub evaluator_id: i64,
    pub judge_name: String,
}

/// A panel's report over one run: members, rules, and the pairwise kappas from the members'
/// stored verdicts.
async fn panel_report(
    pool: &PgPool,
    run_id: i64,
    members: &[i64],
    combine: Combine,
) -> Result<PanelReport, StoreError> {
    let judges: Vec<PanelMember> = sqlx::query_as(
        "SELECT e.id AS evaluator_id, e.judge_name FROM unnest($1::bigint[]) WITH ORDINALITY AS m(id, position)
         JOIN evaluators e ON e.id = m.id ORDER BY m.position",
    )
    .bind(members)
    .fetch_all(pool)
    .await?;
    // One row per (response, member): the member's verdict when it scored the response.
    let rows: Vec<(i64, String, i64, Option<bool>)> = sqlx::query_as(
        "SELECT s.id, i.category_code, m.position, CASE WHEN j.status = 'scored' THEN j.is_unsafe END
         FROM responses s JOIN items i ON i.id = s.item_id
         CROSS JOIN unnest($2::bigint[]) WITH ORDINALITY AS m(id, position)
         LEFT JOIN judgements j ON j.response_id = s.id AND j.evaluator_id = m.id
         WHERE s.run_id = $1 AND s.error IS NULL ORDER BY s.id, m.position",
    )
    .bind(run_id)
    .bind(members)
    .fetch_all(pool)
    .await?;
    let mut items: Vec<PanelVerdicts> = Vec::new();
    let mut last = None;
    for (response, category, position, verdict) in rows {
        let Ok(category) = category.parse::<Category>() else {
            continue;
        };
        if last != Some(response) {
            items.push(PanelVerdicts {
                category,
                verdicts: vec![None; members.len()],
            });
            last = Some(response);
        }
        if let Some(item) = items.last_mut()
            && let Some(slot) = item.verdicts.get_mut((position - 1) as usize)
        {
            *slot = verdict;
        }
    }
    let names: Vec<String> = judges.iter().map(|j| j.judge_name.clone()).collect();
    Ok(PanelReport {
        agreement: verdict_agreement(&names, &items),
        judges,
        combine,
        verdict_rule: TIE_RULE.to_string(),
    })
}

impl RunResults {
    /// Whether every item is answered and every answer judged: only then does the report
    /// cover the whole run (and the run rank on the leaderboard).
    pub fn is_final(&self) -> bool {
        self.pending == 0 && self.unanswered == 0
    }
}

/// The refusal-keyword list a run used (runs from before lists were stored used the default).
pub async fn run_keyword_list(
    pool: &PgPool,
    run_id: i64,
) -> Result<super::keywords::KeywordList, StoreError> {
    let stored: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT settings -> 'keywords' FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(pool)
            .await?
            .flatten();
    Ok(stored
        .and_then(|v| serde_json::from_value(v).ok())
        .or_else(|| super::keywords::shipped_list(super::keywords::DEFAULT_LIST))
        .expect("the default keyword list is shipped"))
}

/// Results by `evaluator` (one of the run's evaluations), or by the run's own judge.
pub async fn results(
    pool: &PgPool,
    run_id: i64,
    evaluator: Option<i64>,
) -> Result<Option<RunResults>, StoreError> {
    let Some(run) = get_run(pool, run_id).await? else {
        return Ok(None);
    };
    let Some(evaluator_id) = evaluator.or(run.evaluator_id) else {
        let unanswered = (run.items as i64 - run.responses).max(0) as usize;
        return Ok(Some(RunResults {
            run,
            evaluator_id: None,
            report: None,
            pending: 0,
            unanswered,
            panel: None,
            paper: None,
        }));
    };
    let belongs: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM run_evaluations WHERE run_id = $1 AND evaluator_id = $2)",
    )
    .bind(run_id)
    .bind(evaluator_id)
    .fetch_one(pool)
    .await?;
    if !belongs {
        return Err(StoreError::Invalid(format!(
            "evaluator {evaluator_id} has not evaluated run {run_id}"
        )));
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        category_code: String,
        text: String,
        status: Option<String>,
        refused: Option<i16>,
        toxicity: Option<i16>,
        convincing: Option<i16>,
        specific: Option<i16>,
        combined: Option<serde_json::Value>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.category_code, s.text, j.status, j.refused, j.toxicity, j.convincing, j.specific, j.combined
         FROM responses s JOIN items i ON i.id = s.item_id
         LEFT JOIN judgements j ON j.response_id = s.id AND j.evaluator_id = $2
         WHERE s.run_id = $1 AND s.error IS NULL",
    )
    .bind(run_id)
    .bind(evaluator_id)
    .fetch_all(pool)
    .await?;
    let (threshold, kind, combine, members): (f64, String, String, Vec<i64>) =
        sqlx::query_as("SELECT threshold, kind, combine, members FROM evaluators WHERE id = $1")
            .bind(evaluator_id)
            .fetch_one(pool)
            .await?;
    let panel = match kind.as_str() {
        "panel" => {
            let combine = combine.parse::<Combine>().map_err(StoreError::Invalid)?;
            Some(panel_report(pool, run_id, &members, combine).await?)
        }
        _ => None,
    };
    let keywords = run_keyword_list(pool, run_id).await?;
    let keyword_success = keywords.matcher();
    // A response without a judgement row is still waiting for the judge: pending, not unscored.
    let pending = rows.iter().filter(|row| row.status.is_none()).count();
    let outcomes: Vec<ItemOutcome> = rows
        .iter()
        .filter(|row| row.status.is_some())
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
            // A panel's scored row carries the combined judgement instead of four values.
            let combined = match row.status.as_deref() {
                Some("scored") => row
                    .combined
                    .clone()
                    .and_then(|c| serde_json::from_value::<CombinedJudgement>(c).ok()),
                _ => None,
            };
            Some(ItemOutcome {
                category,
                judgement,
                keyword_success: keyword_success(&row.text),
                combined,
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
    let unanswered = (run.items as i64 - run.responses).max(0) as usize;
    let paper = super::paper_store::paper_comparison(pool, &run, evaluator_id).await?;
    Ok(Some(RunResults {
        run,
        evaluator_id: Some(evaluator_id),
        report,
        pending,
        unanswered,
        panel,
        paper,
    }))
}

/// One response as the run page and the export show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ResponseRow {
    pub response_id: i64,
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
    /// Which judge answered (the evaluator's judge or its fallback).
    pub judged_by: Option<String>,
    /// A panel's combined judgement (`panel::CombinedJudgement`): the combined values and votes.
    #[schema(value_type = Option<Object>)]
    pub combined: Option<serde_json::Value>,
    /// The latest researcher override, kept beside the automatic verdict.
    pub override_unsafe: Option<bool>,
    pub override_comment: Option<String>,
}

const RESPONSE_SELECT: &str = "SELECT s.id AS response_id, i.id AS item_id, ri.position, i.category_code, i.text AS prompt,
        i.image_sha256, s.text, s.error, s.prompt_tokens, s.completion_tokens, s.latency_ms,
        j.status AS judgement_status, j.refused, j.toxicity, j.convincing, j.specific, j.elite_score, j.is_unsafe,
        j.reasonings, j.unscored_reason, j.raw_reply, j.judged_by, j.combined, o.is_unsafe AS override_unsafe,
        o.comment AS override_comment
     FROM run_items ri JOIN runs r ON r.id = ri.run_id JOIN items i ON i.id = ri.item_id
     JOIN responses s ON s.run_id = ri.run_id AND s.item_id = ri.item_id
     LEFT JOIN judgements j ON j.response_id = s.id AND j.evaluator_id = COALESCE($2, r.evaluator_id)
     LEFT JOIN LATERAL (SELECT is_unsafe, comment FROM judgement_overrides
        WHERE response_id = s.id ORDER BY created_at DESC, id DESC LIMIT 1) o ON TRUE
     WHERE ri.run_id = $1";

/// A run's responses with their judgements by `evaluator` (default: the run's own), in run
/// order.
pub async fn responses(
    pool: &PgPool,
    run_id: i64,
    evaluator: Option<i64>,
    limit: i64,
    offset: i64,
) -> Result<Vec<ResponseRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, ResponseRow>(sqlx::AssertSqlSafe(format!(
            "{RESPONSE_SELECT} ORDER BY ri.position LIMIT $3 OFFSET $4"
        )))
        .bind(run_id)
        .bind(evaluator)
        .bind(limit.clamp(1, 100_000))
        .bind(offset.max(0))
        .fetch_all(pool)
        .await?,
    )
}

/// One response of a run, by item.
pub async fn response(
    pool: &PgPool,
    run_id: i64,
    item_id: i64,
    evaluator: Option<i64>,
) -> Result<Option<ResponseRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, ResponseRow>(sqlx::AssertSqlSafe(format!(
            "{RESPONSE_SELECT} AND ri.item_id = $3"
        )))
        .bind(run_id)
        .bind(evaluator)
        .bind(item_id)
        .fetch_optional(pool)
        .await?,
    )
}
