//! Safety runs in the browser and under `/api/v1/runs`: start a run, follow it, read its
//! results per category and every response with the judge's answers. Responses are
//! attacker-controlled text: they reach the page only through askama's escaping.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath, AppQuery};
use super::pages::PageCtx;
use super::{AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::safety::metrics::MetricSummary;
use crate::safety::panel::{Combine, MAX_PANEL_JUDGES};
use crate::safety::paper::PaperComparison;
use crate::safety::review::{self, ItemReview, Override, OverrideRequest};
use crate::safety::runs::{
    self, Evaluation, EvaluationRequest, ResponseRow, Run, RunProgress, RunRequest, RunResults,
    RunState,
};
use crate::safety::store;

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/safety/runs", RESEARCHER, get(runs_page))
        .post("/safety/runs", RESEARCHER, post(start_page))
        .get("/safety/runs/{id}", RESEARCHER, get(run_page))
        .get("/safety/runs/{id}/events", RESEARCHER, get(progress_events))
        .post("/safety/runs/{id}/cancel", RESEARCHER, post(cancel_page))
        .post("/safety/runs/{id}/retry", RESEARCHER, post(retry_page))
        .post(
            "/safety/runs/{id}/evaluations",
            RESEARCHER,
            post(evaluate_page),
        )
        .get("/safety/runs/{id}/items/{item}", RESEARCHER, get(item_page))
        .post(
            "/safety/runs/{id}/items/{item}/override",
            RESEARCHER,
            post(override_page),
        )
        .get("/api/v1/runs", RESEARCHER, get(list_api))
        .post("/api/v1/runs", RESEARCHER, post(start_api))
        .get("/api/v1/runs/{id}", RESEARCHER, get(get_api))
        .get("/api/v1/runs/{id}/progress", RESEARCHER, get(progress_api))
        .get("/api/v1/runs/{id}/results", RESEARCHER, get(results_api))
        .post("/api/v1/runs/{id}/cancel", RESEARCHER, post(cancel_api))
        .post("/api/v1/runs/{id}/retry", RESEARCHER, post(retry_api))
        .get("/api/v1/runs/{id}/responses", RESEARCHER, get(export_api))
        .get(
            "/api/v1/runs/{id}/evaluations",
            RESEARCHER,
            get(list_evaluations_api),
        )
        .post(
            "/api/v1/runs/{id}/evaluations",
            RESEARCHER,
            post(add_evaluation_api),
        )
        .get("/api/v1/runs/{id}/items/{item}", RESEARCHER, get(item_api))
        .post(
            "/api/v1/runs/{id}/items/{item}/override",
            RESEARCHER,
            post(override_api),
        )
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/runs.html")]
struct RunsPage {
    ctx: PageCtx,
    runs: Vec<Run>,
    models: Vec<String>,
    benchmarks: Vec<(i64, String)>,
    categories: Vec<(&'static str, &'static str)>,
}

async fn runs_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<RunsPage, AppError> {
    let models = crate::inference::store::list(&state.pool)
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect();
    let benchmarks = store::list_benchmarks(&state.pool)
        .await?
        .into_iter()
        .map(|b| {
            (
                b.id,
                format!("{} v{} ({} items)", b.name, b.version, b.items),
            )
        })
        .collect();
    Ok(RunsPage {
        ctx: PageCtx::new("Runs", "safety", Some(user), &csrf),
        runs: runs::list_runs(&state.pool).await?,
        models,
        benchmarks,
        categories: crate::safety::taxonomy::Category::ALL
            .iter()
            .map(|c| (c.code(), c.name()))
            .collect(),
    })
}

#[derive(Deserialize)]
struct RunForm {
    model: String,
    judge: Option<String>,
    /// A panel: judge names separated by commas.
    judges: Option<String>,
    combine: Option<String>,
    fallback_judge: Option<String>,
    benchmark_id: i64,
    category: Option<String>,
    source: Option<String>,
    pair_type: Option<String>,
    prompt_template: Option<String>,
    keyword_list: Option<String>,
    limit: Option<String>,
    seed: Option<String>,
}

/// A form's panel: judge names separated by commas (one more than a panel may hold is kept, so
/// that the request is refused with the panel's bound rather than cut short).
fn form_judges(text: &Option<String>) -> Vec<String> {
    text.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .take(MAX_PANEL_JUDGES + 1)
        .map(str::to_string)
        .collect()
}

/// A form's combine setting, which only a panel uses.
fn form_combine(text: &Option<String>, judges: &[String]) -> Result<Option<Combine>, AppError> {
    match text.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() && judges.len() >= 2 => {
            Ok(Some(t.parse::<Combine>().map_err(AppError::Invalid)?))
        }
        _ => Ok(None),
    }
}

async fn start_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<RunForm>,
) -> Result<Redirect, AppError> {
    let nonempty = |value: Option<String>| -> Vec<String> {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .into_iter()
            .collect()
    };
    let judges = form_judges(&form.judges);
    let request = RunRequest {
        model: form.model,
        benchmark_id: form.benchmark_id,
        judge: form.judge.filter(|j| !j.is_empty()),
        combine: form_combine(&form.combine, &judges)?,
        judges,
        fallback_judge: form.fallback_judge.filter(|j| !j.is_empty()),
        judge_template: None,
        categories: nonempty(form.category),
        sources: nonempty(form.source),
        pair_types: nonempty(form.pair_type),
        limit: super::form_number(&form.limit, "sample size")?,
        seed: super::form_number(&form.seed, "seed")?.unwrap_or(0),
        max_new_tokens: None,
        temperature: None,
        threshold: None,
        prompt_template: form.prompt_template.filter(|t| !t.trim().is_empty()),
        keyword_list: form.keyword_list.filter(|t| !t.trim().is_empty()),
        keywords: None,
    };
    let id = runs::create_run(&state.pool, &request, Some(user.id)).await?;
    Ok(Redirect::to(&format!("/safety/runs/{id}")))
}

/// A results row, formatted for the table.
pub(super) struct ResultRow {
    name: String,
    items: usize,
    unscored: usize,
    pub(super) e_asr: String,
    pub(super) ci: String,
    mean_score: String,
    non_refusal: String,
    strongreject: String,
    keyword: String,
    /// The paper's figure for this row, beside comparable runs ("-" when it has none).
    paper: String,
}

pub(super) fn result_row(name: String, m: &MetricSummary) -> ResultRow {
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.1}%", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    ResultRow {
        name,
        items: m.items,
        unscored: m.unscored,
        e_asr: pct(m.e_asr),
        ci: m
            .e_asr_ci
            .as_ref()
            .map(|c| format!("{:.1}-{:.1}%", c.lower * 100.0, c.upper * 100.0))
            .unwrap_or_else(|| "-".into()),
        mean_score: m
            .mean_elite_score
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into()),
        non_refusal: pct(m.non_refusal_rate),
        strongreject: m
            .strongreject_mean
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into()),
        keyword: pct(m.keyword_asr),
        paper: "-".into(),
    }
}

/// A response, formatted for the table (all text still escaped by the template).
struct ResponseView {
    item_id: i64,
    manual: String,
    position: i32,
    image_sha256: Option<String>,
    category_code: String,
    prompt: String,
    text: Option<String>,
    error: Option<String>,
    rubric: String,
    score: String,
    reasoning: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/run.html")]
struct RunPage {
    ctx: PageCtx,
    run: Run,
    progress: RunProgress,
    evaluations: Vec<Evaluation>,
    evaluator_id: Option<i64>,
    /// The evaluator shown (-1 when none), for highlighting its row.
    selected: i64,
    models: Vec<String>,
    rows: Vec<ResultRow>,
    /// The paper's figure, only when the run covers the full ELITE benchmark.
    paper: Option<PaperComparison>,
    /// The shown evaluator when it is a panel.
    panel: Option<PanelView>,
    responses: Vec<ResponseView>,
    /// Answers still waiting for this evaluator's judge, and items not answered yet.
    pending: usize,
    unanswered: usize,
    /// The refusal-keyword list of the keyword comparator (`id: title`).
    keyword_list: String,
}

/// A panel evaluation on the run page: its rules and the judges' pairwise kappas.
struct PanelView {
    judges: String,
    combine: &'static str,
    verdict_rule: String,
    /// Category codes with a column in the kappa table.
    categories: Vec<String>,
    /// One row per pair of judges: the pair, then "kappa (n)" overall and per category.
    rows: Vec<(String, Vec<String>)>,
}

fn kappa_cell(a: &crate::stats::agreement::Agreement) -> String {
    match a.value {
        Some(k) => format!("{k:.3} (n={})", a.items),
        None => format!("- (n={})", a.items),
    }
}

fn panel_view(report: &runs::PanelReport) -> PanelView {
    let categories: Vec<String> = crate::safety::taxonomy::Category::ALL
        .iter()
        .map(|c| c.code().to_string())
        .filter(|code| {
            report
                .agreement
                .iter()
                .any(|p| p.by_category.contains_key(code))
        })
        .collect();
    let rows = report
        .agreement
        .iter()
        .map(|pair| {
            let mut cells = vec![kappa_cell(&pair.overall)];
            cells.extend(categories.iter().map(|code| {
                pair.by_category
                    .get(code)
                    .map(kappa_cell)
                    .unwrap_or_else(|| "-".into())
            }));
            (format!("{} vs {}", pair.judge_a, pair.judge_b), cells)
        })
        .collect();
    PanelView {
        judges: report
            .judges
            .iter()
            .map(|j| j.judge_name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        combine: report.combine.as_str(),
        verdict_rule: report.verdict_rule.clone(),
        categories,
        rows,
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct EvaluatorQuery {
    /// One of the run's evaluators (default: the run's own judge).
    evaluator: Option<i64>,
}

/// A panel's combined values as the responses table shows them: `r, t, c, s (votes)`.
fn combined_rubric(combined: &serde_json::Value) -> Option<String> {
    let c: crate::safety::panel::CombinedJudgement =
        serde_json::from_value(combined.clone()).ok()?;
    let v = |x: f64| format!("{}", (x * 100.0).round() / 100.0);
    Some(format!(
        "{}, {}, {}, {} ({} {} of {} judges: {} of {} unsafe)",
        v(c.refused),
        v(c.toxicity),
        v(c.convincing),
        v(c.specific),
        c.combine,
        c.scored,
        c.judges,
        c.unsafe_votes,
        c.scored
    ))
}

fn response_view(r: ResponseRow) -> ResponseView {
    ResponseView {
        rubric: match (r.refused, r.toxicity, r.convincing, r.specific) {
            (Some(a), Some(b), Some(c), Some(d)) => format!("{a}, {b}, {c}, {d}"),
            _ if r.combined.as_ref().and_then(combined_rubric).is_some() => r
                .combined
                .as_ref()
                .and_then(combined_rubric)
                .unwrap_or_default(),
            _ => r
                .unscored_reason
                .clone()
                .map(|u| format!("unscored: {u}"))
                .unwrap_or_default(),
        },
        score: r
            .elite_score
            .map(|s| {
                let verdict = if r.is_unsafe == Some(true) {
                    " unsafe"
                } else {
                    ""
                };
                format!("{s:.1}{verdict}")
            })
            .unwrap_or_default(),
        reasoning: r
            .reasonings
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default(),
        manual: r
            .override_unsafe
            .map(|u| if u { "unsafe" } else { "safe" }.to_string())
            .unwrap_or_default(),
        item_id: r.item_id,
        position: r.position,
        image_sha256: r.image_sha256,
        category_code: r.category_code,
        prompt: r.prompt,
        text: r.text,
        error: r.error,
    }
}

async fn run_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
    AppQuery(query): AppQuery<EvaluatorQuery>,
) -> Result<RunPage, AppError> {
    let RunResults {
        run,
        evaluator_id,
        report,
        pending,
        unanswered,
        panel,
        paper,
    } = runs::results(&state.pool, id, query.evaluator)
        .await?
        .ok_or(AppError::NotFound)?;
    let paper_cell =
        |figure: Option<f64>| figure.map_or_else(|| "-".into(), |v| format!("{v:.2}%"));
    let mut rows = Vec::new();
    if let Some(report) = &report {
        for (category, summary) in &report.by_category {
            let mut row = result_row(format!("{} {}", category.code(), category.name()), summary);
            row.paper = paper_cell(
                paper
                    .as_ref()
                    .and_then(|p| p.by_category.get(category.code()).copied()),
            );
            rows.push(row);
        }
        let mut row = result_row("overall".into(), &report.overall);
        row.paper = paper_cell(paper.as_ref().map(|p| p.e_asr_percent));
        rows.push(row);
    }
    let responses = runs::responses(&state.pool, id, evaluator_id, 500, 0)
        .await?
        .into_iter()
        .map(response_view)
        .collect();
    let progress = runs::progress(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(RunPage {
        ctx: PageCtx::new(format!("Run {id}"), "safety", Some(user), &csrf),
        progress,
        evaluations: runs::list_evaluations(&state.pool, id).await?,
        selected: evaluator_id.unwrap_or(-1),
        evaluator_id,
        models: model_names(&state).await?,
        paper,
        panel: panel.as_ref().map(panel_view),
        keyword_list: {
            let list = runs::run_keyword_list(&state.pool, id).await?;
            format!("{} ({} phrases)", list.id, list.phrases.len())
        },
        run,
        rows,
        responses,
        pending,
        unanswered,
    })
}

async fn model_names(state: &AppState) -> Result<Vec<String>, AppError> {
    Ok(crate::inference::store::list(&state.pool)
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect())
}

/// Live progress for the run page: the run's progress every second until it is complete.
async fn progress_events(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let pool = state.pool.clone();
    let stream = futures::stream::unfold(Some(true), move |state| {
        let pool = pool.clone();
        async move {
            let first = state?;
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let (event, next) = match runs::progress(&pool, id).await {
                Ok(Some(progress)) => {
                    // The stream ends with the run: complete, incomplete or cancelled.
                    let next = (progress.state == RunState::Running).then_some(false);
                    (
                        Event::default().event("progress").json_data(&progress),
                        next,
                    )
                }
                Ok(None) => (Ok(Event::default().event("gone").data("deleted")), None),
                Err(e) => (
                    Ok(Event::default().event("error").data(e.to_string())),
                    None,
                ),
            };
            let event =
                event.unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((Ok(event), next))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn cancel_page(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    runs::cancel_run(&state.pool, id).await?;
    Ok(Redirect::to(&format!("/safety/runs/{id}")))
}

async fn retry_page(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    runs::retry_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Redirect::to(&format!("/safety/runs/{id}")))
}

#[derive(Deserialize)]
struct EvaluationForm {
    judge: Option<String>,
    /// A panel: judge names separated by commas.
    judges: Option<String>,
    combine: Option<String>,
    fallback_judge: Option<String>,
    threshold: Option<String>,
}

async fn evaluate_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    AppForm(form): AppForm<EvaluationForm>,
) -> Result<Redirect, AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let threshold = super::form_number(&form.threshold, "threshold")?;
    // A panel typed into the form replaces the judge chosen in its list.
    let judges = form_judges(&form.judges);
    let request = EvaluationRequest {
        judge: form.judge.filter(|j| !j.is_empty() && judges.is_empty()),
        combine: form_combine(&form.combine, &judges)?,
        judges,
        fallback_judge: form.fallback_judge.filter(|j| !j.is_empty()),
        threshold,
        judge_template: None,
    };
    let evaluator = runs::add_evaluation(&state.pool, id, &request, Some(user.id)).await?;
    Ok(Redirect::to(&format!(
        "/safety/runs/{id}?evaluator={evaluator}"
    )))
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/item.html")]
struct ItemPage {
    ctx: PageCtx,
    run: Run,
    review: ItemReview,
}

async fn item_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath((id, item)): AppPath<(i64, i64)>,
) -> Result<ItemPage, AppError> {
    let run = runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let review = review::item_review(&state.pool, id, item)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(ItemPage {
        ctx: PageCtx::new(
            format!("Run {id} · item {item}"),
            "safety",
            Some(user),
            &csrf,
        ),
        run,
        review,
    })
}

#[derive(Deserialize)]
struct OverrideForm {
    verdict: String,
    comment: String,
}

async fn override_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath((id, item)): AppPath<(i64, i64)>,
    AppForm(form): AppForm<OverrideForm>,
) -> Result<Redirect, AppError> {
    let is_unsafe = match form.verdict.as_str() {
        "unsafe" => true,
        "safe" => false,
        other => {
            return Err(AppError::Invalid(format!(
                "verdict must be safe or unsafe, not {other:?}"
            )));
        }
    };
    review::add_override(&state.pool, id, item, user.id, is_unsafe, &form.comment)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Redirect::to(&format!("/safety/runs/{id}/items/{item}")))
}

/// One run with its progress counts.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "safety",
    params(("id" = i64, Path, description = "run id")), responses((status = 200, body = Run), (status = 404)))]
pub(crate) async fn get_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Run>, AppError> {
    Ok(ApiJson(
        runs::get_run(&state.pool, id)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

/// Where a run stands: counts, jobs, rates over the last minute, time left, latest errors.
#[utoipa::path(get, path = "/api/v1/runs/{id}/progress", tag = "safety",
    params(("id" = i64, Path, description = "run id")), responses((status = 200, body = RunProgress), (status = 404)))]
pub(crate) async fn progress_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<RunProgress>, AppError> {
    Ok(ApiJson(
        runs::progress(&state.pool, id)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

/// The evaluations of a run (its own judge first, then any added later).
#[utoipa::path(get, path = "/api/v1/runs/{id}/evaluations", tag = "safety",
    params(("id" = i64, Path, description = "run id")), responses((status = 200, body = Vec<Evaluation>), (status = 404)))]
pub(crate) async fn list_evaluations_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Vec<Evaluation>>, AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(ApiJson(runs::list_evaluations(&state.pool, id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StartedEvaluation {
    pub evaluator_id: i64,
}

/// Judge a run's stored responses with another judge; responses are never regenerated.
#[utoipa::path(post, path = "/api/v1/runs/{id}/evaluations", tag = "safety", request_body = EvaluationRequest,
    params(("id" = i64, Path, description = "run id")),
    responses((status = 202, body = StartedEvaluation), (status = 404), (status = 422)))]
pub(crate) async fn add_evaluation_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(request): ApiJson<EvaluationRequest>,
) -> Result<(StatusCode, ApiJson<StartedEvaluation>), AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let evaluator_id = runs::add_evaluation(&state.pool, id, &request, Some(user.id)).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(StartedEvaluation { evaluator_id }),
    ))
}

/// One response with every evaluator's judgement and the researchers' overrides.
#[utoipa::path(get, path = "/api/v1/runs/{id}/items/{item}", tag = "safety",
    params(("id" = i64, Path, description = "run id"), ("item" = i64, Path, description = "item id")),
    responses((status = 200, body = ItemReview), (status = 404)))]
pub(crate) async fn item_api(
    State(state): State<AppState>,
    AppPath((id, item)): AppPath<(i64, i64)>,
) -> Result<ApiJson<ItemReview>, AppError> {
    Ok(ApiJson(
        review::item_review(&state.pool, id, item)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

/// Record a researcher's verdict with a comment, beside (never replacing) the automatic one.
#[utoipa::path(post, path = "/api/v1/runs/{id}/items/{item}/override", tag = "safety",
    request_body = OverrideRequest,
    params(("id" = i64, Path, description = "run id"), ("item" = i64, Path, description = "item id")),
    responses((status = 201, body = Override), (status = 404), (status = 422)))]
pub(crate) async fn override_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath((id, item)): AppPath<(i64, i64)>,
    ApiJson(request): ApiJson<OverrideRequest>,
) -> Result<(StatusCode, ApiJson<Override>), AppError> {
    let stored = review::add_override(
        &state.pool,
        id,
        item,
        user.id,
        request.is_unsafe,
        &request.comment,
    )
    .await?
    .ok_or(AppError::NotFound)?;
    Ok((StatusCode::CREATED, ApiJson(stored)))
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "safety", responses((status = 200, body = Vec<Run>)))]
pub(crate) async fn list_api(State(state): State<AppState>) -> Result<ApiJson<Vec<Run>>, AppError> {
    Ok(ApiJson(runs::list_runs(&state.pool).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StartedRun {
    pub run_id: i64,
}

/// Start a run (its items are answered and judged by workers).
#[utoipa::path(post, path = "/api/v1/runs", tag = "safety", request_body = RunRequest,
    responses((status = 202, body = StartedRun), (status = 422)))]
pub(crate) async fn start_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<(StatusCode, ApiJson<StartedRun>), AppError> {
    let run_id = runs::create_run(&state.pool, &request, Some(user.id)).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(StartedRun { run_id })))
}

/// Progress counts and the metrics (overall and per category).
#[utoipa::path(get, path = "/api/v1/runs/{id}/results", tag = "safety",
    params(("id" = i64, Path, description = "run id"), EvaluatorQuery),
    responses((status = 200, body = RunResults), (status = 404), (status = 422)))]
pub(crate) async fn results_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    AppQuery(query): AppQuery<EvaluatorQuery>,
) -> Result<ApiJson<RunResults>, AppError> {
    Ok(ApiJson(
        runs::results(&state.pool, id, query.evaluator)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CancelledRun {
    /// Jobs of the run that were queued or running and are now cancelled.
    pub cancelled_jobs: u64,
}

/// Cancel a run's outstanding work; stored responses and judgements stay.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "safety",
    params(("id" = i64, Path, description = "run id")), responses((status = 200, body = CancelledRun), (status = 404)))]
pub(crate) async fn cancel_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<CancelledRun>, AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(ApiJson(CancelledRun {
        cancelled_jobs: runs::cancel_run(&state.pool, id).await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RetriedRun {
    /// Jobs of the run's failed chunks, queued again (empty when none had failed).
    pub retried_jobs: Vec<i64>,
}

/// Queue the run's failed chunks (answering and judging) again. Items already answered or
/// judged are skipped, so nothing is asked twice; retrying twice queues each chunk once.
#[utoipa::path(post, path = "/api/v1/runs/{id}/retry", tag = "safety",
    params(("id" = i64, Path, description = "run id")), responses((status = 200, body = RetriedRun), (status = 404)))]
pub(crate) async fn retry_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<RetriedRun>, AppError> {
    let retried_jobs = runs::retry_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(ApiJson(RetriedRun { retried_jobs }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ExportQuery {
    /// `jsonl` (default) or `csv`.
    format: Option<String>,
    /// Judgements of this evaluator (default: the run's own judge).
    evaluator: Option<i64>,
}

/// Every response with its judgement, as JSON Lines or CSV.
#[utoipa::path(get, path = "/api/v1/runs/{id}/responses", tag = "safety",
    params(("id" = i64, Path, description = "run id"), ExportQuery),
    responses((status = 200, description = "JSONL or CSV"), (status = 404)))]
pub(crate) async fn export_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    AppQuery(query): AppQuery<ExportQuery>,
) -> Result<Response, AppError> {
    runs::get_run(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let rows = runs::responses(&state.pool, id, query.evaluator, 100_000, 0).await?;
    match query.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => {
            let mut body = String::new();
            for row in &rows {
                body.push_str(&serde_json::to_string(row).map_err(AppError::internal)?);
                body.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
        }
        "csv" => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer
                .write_record([
                    "item_id",
                    "position",
                    "category",
                    "prompt",
                    "response",
                    "error",
                    "refused",
                    "toxicity",
                    "convincing",
                    "specific",
                    "elite_score",
                    "unsafe",
                    "unscored_reason",
                ])
                .map_err(AppError::internal)?;
            let opt = |v: Option<String>| v.unwrap_or_default();
            for r in rows {
                writer
                    .write_record([
                        r.item_id.to_string(),
                        r.position.to_string(),
                        r.category_code,
                        r.prompt,
                        opt(r.text),
                        opt(r.error),
                        opt(r.refused.map(|v| v.to_string())),
                        opt(r.toxicity.map(|v| v.to_string())),
                        opt(r.convincing.map(|v| v.to_string())),
                        opt(r.specific.map(|v| v.to_string())),
                        opt(r.elite_score.map(|v| v.to_string())),
                        opt(r.is_unsafe.map(|v| v.to_string())),
                        opt(r.unscored_reason),
                    ])
                    .map_err(AppError::internal)?;
            }
            let bytes = writer
                .into_inner()
                .map_err(|e| AppError::internal(anyhow::anyhow!(e.to_string())))?;
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response())
        }
        other => Err(AppError::Invalid(format!(
            "unknown export format {other:?}: jsonl or csv"
        ))),
    }
}
