//! Pages and `/api/v1/training` endpoints: training experiments (recipes x seeds, one job per
//! run), their table with the baseline comparisons, accuracy against time per step, the
//! per-seed points, filter-use evenness and the ViT position-term correlations.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath};
use super::pages::PageCtx;
use super::{AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::charts::{self, Frame, LabelledPoint, Series};
use crate::compression::sources::DataSource;
use crate::training::experiment::{ExperimentSpec, RecipeSummary, RunResult, VitSize, summarise};
use crate::training::store::{self, ExperimentRow};
use crate::training::{Family, MixSettings, Recipe, TrainingError, jobs};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/training", RESEARCHER, get(index_page))
        .post("/training/experiments", RESEARCHER, post(create_page))
        .get(
            "/training/experiments/{id}",
            RESEARCHER,
            get(experiment_page),
        )
        .get("/api/v1/training/experiments", RESEARCHER, get(list_api))
        .post("/api/v1/training/experiments", RESEARCHER, post(create_api))
        .get(
            "/api/v1/training/experiments/{id}",
            RESEARCHER,
            get(get_api),
        )
}

/// An experiment to run (API). Sizes are bounded before anything runs.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ExperimentRequest {
    #[serde(default)]
    pub name: String,
    /// Recipe names: `vanilla`, `mixup`, `cutmix`, `saliencymix`, `manifold_mixup`,
    /// `guided_sr`, `guided_sr_random`, `guided_ap`, `catchup_mix` (PreAct-ResNet-18), or
    /// `vit_class_token`, `vit_gap`, `vit_lape_gap`, `vit_pvg`, `vit_mpvg`,
    /// `vit_mpvg_inside` (the small ViT). The family's baseline is added when missing.
    pub recipes: Vec<String>,
    /// At most 10 seeds; default 0, 1, 2.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// `digits` (default), or (admins) a CIFAR-10/100 folder on the server.
    #[serde(default)]
    pub data: String,
    /// Fraction of the training set (1.0 = all; 0.1 = the reduced-data setting).
    #[serde(default)]
    pub train_fraction: Option<f64>,
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// PreAct-ResNet-18 width multiplier (default 0.125).
    #[serde(default)]
    pub width: Option<f64>,
    #[serde(default)]
    pub vit: Option<VitSize>,
    /// FGSM step in [0, 1] pixel units (default 2/255).
    #[serde(default)]
    pub fgsm_epsilon: Option<f32>,
    /// `cross_entropy` (default) or `bce`.
    #[serde(default)]
    pub loss: Option<crate::training::LossKind>,
}

fn invalid(e: TrainingError) -> AppError {
    AppError::Invalid(e.to_string())
}

/// The checked specification and the experiment's name.
fn specification(
    state: &AppState,
    user: &crate::accounts::User,
    request: ExperimentRequest,
) -> Result<(String, ExperimentSpec), AppError> {
    if request.recipes.len() > 32 {
        return Err(AppError::Invalid("at most 32 recipes".into()));
    }
    let recipes = request
        .recipes
        .iter()
        .map(|r| r.parse::<Recipe>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let mut spec = ExperimentSpec::new(recipes);
    if request.seeds.len() > crate::training::experiment::MAX_SEEDS {
        return Err(AppError::Invalid("at most 10 seeds".into()));
    }
    if !request.seeds.is_empty() {
        spec.seeds = request.seeds;
    }
    let data = if request.data.trim().is_empty() {
        "digits"
    } else {
        request.data.trim()
    };
    spec.data = super::compression::data_source(state, user, data)?;
    if matches!(spec.data, DataSource::Digits { form } if form != crate::compression::DigitsForm::Image32)
    {
        return Err(AppError::Invalid(
            "training recipes need images: use `digits`, not `digits:64`".into(),
        ));
    }
    if let Some(f) = request.train_fraction {
        spec.train_fraction = f;
    }
    if let Some(e) = request.epochs {
        spec.epochs = e;
    }
    if let Some(b) = request.batch_size {
        spec.batch_size = b;
    }
    spec.learning_rate = request.learning_rate;
    if let Some(w) = request.width {
        spec.width = w;
    }
    if let Some(v) = request.vit {
        spec.vit = v;
    }
    if let Some(e) = request.fgsm_epsilon {
        spec.fgsm_epsilon = e;
    }
    spec.mix = MixSettings {
        loss: request.loss.unwrap_or_default(),
        ..MixSettings::default()
    };
    let spec = spec.checked().map_err(invalid)?;
    let name: String = request.name.trim().chars().take(200).collect();
    let name = if name.is_empty() {
        spec.recipes
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" vs ")
            .chars()
            .take(200)
            .collect()
    } else {
        name
    };
    Ok((name, spec))
}

/// The form's fields (lists as comma-separated text).
#[derive(Debug, Deserialize)]
struct ExperimentForm {
    #[serde(default)]
    name: String,
    recipes: String,
    #[serde(default)]
    seeds: String,
    #[serde(default)]
    data: String,
    train_fraction: f64,
    epochs: usize,
    batch_size: usize,
    width: f64,
}

impl ExperimentForm {
    fn into_request(self) -> Result<ExperimentRequest, AppError> {
        let list = |s: &str| -> Vec<String> {
            s.split([',', ' '])
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .take(64)
                .map(String::from)
                .collect()
        };
        let seeds = list(&self.seeds)
            .iter()
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| AppError::Invalid(format!("seed {s:?} is not a whole number")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExperimentRequest {
            name: self.name,
            recipes: list(&self.recipes),
            seeds,
            data: self.data,
            train_fraction: Some(self.train_fraction),
            epochs: Some(self.epochs),
            batch_size: Some(self.batch_size),
            learning_rate: None,
            width: Some(self.width),
            vit: None,
            fgsm_epsilon: None,
            loss: None,
        })
    }
}

/// An experiment with its runs and table.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExperimentView {
    pub experiment: ExperimentRow,
    pub runs: Vec<RunResult>,
    pub summary: Vec<RecipeSummary>,
}

async fn load_view(state: &AppState, id: i64) -> Result<ExperimentView, AppError> {
    let experiment = store::get(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::NotFound)?;
    let runs = store::runs(&state.pool, id).await?;
    let summary = experiment
        .spec()
        .map(|spec| summarise(spec, &runs))
        .unwrap_or_default();
    Ok(ExperimentView {
        experiment,
        runs,
        summary,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "training/index.html")]
struct IndexPage {
    ctx: PageCtx,
    experiments: Vec<ExperimentRow>,
    mixing: Vec<String>,
    vit: Vec<String>,
}

async fn index_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<IndexPage, AppError> {
    let all = Recipe::all();
    Ok(IndexPage {
        ctx: PageCtx::new("Training", "training", Some(user), &csrf),
        experiments: store::list(&state.pool).await?,
        mixing: all
            .iter()
            .filter(|r| r.family() == Family::Cnn)
            .map(|r| r.name())
            .collect(),
        vit: all
            .iter()
            .filter(|r| r.family() == Family::Vit)
            .map(|r| r.name())
            .collect(),
    })
}

async fn create_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<ExperimentForm>,
) -> Result<Redirect, AppError> {
    let (name, spec) = specification(&state, &user, form.into_request()?)?;
    let (id, _) = jobs::start_experiment(&state.pool, &name, &spec, Some(user.id)).await?;
    Ok(Redirect::to(&format!("/training/experiments/{id}")))
}

/// One row of the page's table, formatted.
struct TableRow {
    recipe: String,
    paper: String,
    seeds: usize,
    accuracy: String,
    corrupted: String,
    fgsm: String,
    step_ms: String,
    ratio: String,
    entropy: String,
    published: String,
}

fn pct(v: f64) -> String {
    format!("{:.2}", v * 100.0)
}

fn table_rows(summary: &[RecipeSummary]) -> Vec<TableRow> {
    summary
        .iter()
        .map(|s| TableRow {
            recipe: s.recipe.clone(),
            paper: s.paper.clone(),
            seeds: s.seeds,
            accuracy: match s.accuracy_sd {
                Some(sd) => format!("{} ± {}", pct(s.accuracy_mean), pct(sd)),
                None => pct(s.accuracy_mean),
            },
            corrupted: pct(s.corrupted_mean),
            fgsm: pct(s.fgsm_mean),
            step_ms: format!("{:.1}", s.seconds_per_step * 1000.0),
            ratio: s
                .step_time_ratio
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_default(),
            entropy: s
                .filter_entropy
                .map(|e| format!("{e:.4}"))
                .unwrap_or_default(),
            published: s
                .published
                .as_ref()
                .map(|p| format!("{:.2} ({})", p.top1, p.setting))
                .unwrap_or_default(),
        })
        .collect()
}

/// Accuracy against time per step relative to the baseline, one point per recipe (mean
/// over seeds).
fn overhead_chart(summary: &[RecipeSummary]) -> String {
    let points: Vec<LabelledPoint> = summary
        .iter()
        .filter_map(|s| {
            Some(LabelledPoint {
                label: s.recipe.clone(),
                x: s.step_time_ratio?,
                y: s.accuracy_mean * 100.0,
                group: s.paper.clone(),
            })
        })
        .collect();
    let frame = Frame::new(
        "Accuracy vs overhead",
        "time per step / baseline's",
        "test top-1 (%)",
        charts::padded_range(points.iter().map(|p| p.x), (0.9, 1.1)),
        charts::padded_range(points.iter().map(|p| p.y), (0.0, 0.0)),
    );
    charts::scatter(&frame, &points)
}

/// Every run's accuracy, one column of points per recipe.
fn seeds_chart(spec_recipes: &[String], runs: &[RunResult]) -> String {
    let points: Vec<LabelledPoint> = runs
        .iter()
        .filter_map(|r| {
            let name = r.recipe.name();
            let x = spec_recipes.iter().position(|n| *n == name)? as f64 + 1.0;
            Some(LabelledPoint {
                label: format!("seed {}", r.seed),
                x,
                y: r.test_accuracy * 100.0,
                group: name,
            })
        })
        .collect();
    let frame = Frame::new(
        "Per-seed test accuracy",
        "recipe (in the table's order)",
        "test top-1 (%)",
        (0.5, spec_recipes.len() as f64 + 0.5),
        charts::padded_range(points.iter().map(|p| p.y), (0.0, 0.0)),
    );
    charts::scatter(&frame, &points)
}

/// The ViT's position-term correlation per layer, one line per variant.
fn counterbalance_chart(summary: &[RecipeSummary]) -> Option<String> {
    let series: Vec<Series> = summary
        .iter()
        .map(|s| Series {
            name: s.recipe.clone(),
            points: s
                .counterbalance
                .iter()
                .enumerate()
                .filter_map(|(l, v)| v.map(|v| ((l + 1) as f64, v)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return None;
    }
    let layers = summary
        .iter()
        .map(|s| s.counterbalance.len())
        .max()
        .unwrap_or(1);
    let frame = Frame::new(
        "Correlation of LN(x) and the position term, per layer",
        "layer",
        "Pearson correlation",
        (0.5, layers as f64 + 0.5),
        (-1.0, 1.0),
    );
    Some(charts::lines(&frame, &series))
}

#[derive(Template, WebTemplate)]
#[template(path = "training/experiment.html")]
struct ExperimentPage {
    ctx: PageCtx,
    experiment: ExperimentRow,
    spec_text: String,
    rows: Vec<TableRow>,
    runs: Vec<RunResult>,
    overhead_svg: String,
    seeds_svg: String,
    counterbalance_svg: Option<String>,
    filter_use: Vec<(String, Vec<String>)>,
}

async fn experiment_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
) -> Result<ExperimentPage, AppError> {
    let view = load_view(&state, id).await?;
    let recipes: Vec<String> = view.summary.iter().map(|s| s.recipe.clone()).collect();
    let filter_use = view
        .runs
        .iter()
        .filter(|r| !r.filter_use.is_empty())
        .map(|r| {
            (
                format!("{} / seed {}", r.recipe, r.seed),
                r.filter_use
                    .iter()
                    .map(|u| format!("{:.4}", u.entropy))
                    .collect(),
            )
        })
        .collect();
    Ok(ExperimentPage {
        ctx: PageCtx::new("Training experiment", "training", Some(user), &csrf),
        spec_text: serde_json::to_string_pretty(&view.experiment.spec).unwrap_or_default(),
        rows: table_rows(&view.summary),
        overhead_svg: overhead_chart(&view.summary),
        seeds_svg: seeds_chart(&recipes, &view.runs),
        counterbalance_svg: counterbalance_chart(&view.summary),
        filter_use,
        experiment: view.experiment,
        runs: view.runs,
    })
}

/// All training experiments, newest first.
#[utoipa::path(get, path = "/api/v1/training/experiments", tag = "training",
    responses((status = 200, body = Vec<ExperimentRow>)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<ExperimentRow>>, AppError> {
    Ok(ApiJson(store::list(&state.pool).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StartedExperiment {
    pub experiment_id: i64,
    pub job_ids: Vec<i64>,
}

/// Start an experiment: one job per recipe and seed.
#[utoipa::path(post, path = "/api/v1/training/experiments", tag = "training", request_body = ExperimentRequest,
    responses((status = 202, body = StartedExperiment), (status = 422)))]
pub(crate) async fn create_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<ExperimentRequest>,
) -> Result<(StatusCode, ApiJson<StartedExperiment>), AppError> {
    let (name, spec) = specification(&state, &user, request)?;
    let (experiment_id, job_ids) =
        jobs::start_experiment(&state.pool, &name, &spec, Some(user.id)).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(StartedExperiment {
            experiment_id,
            job_ids,
        }),
    ))
}

/// One experiment: its specification, every run and the per-recipe table.
#[utoipa::path(get, path = "/api/v1/training/experiments/{id}", tag = "training",
    responses((status = 200, body = ExperimentView), (status = 404)))]
pub(crate) async fn get_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<ExperimentView>, AppError> {
    Ok(ApiJson(load_view(&state, id).await?))
}
