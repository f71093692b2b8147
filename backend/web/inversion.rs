//! Pages and `/api/v1/inversions` endpoints: image sets synthesised from a trained teacher
//! with DeepInversion or NaturalInversion (one job per batch, progress and cancel), their
//! images as a grid per class, the loss curves, PP&PR scoring against the real data (with
//! the fidelity-vs-diversity plot of every scored set) and the data-free repair of a pruned
//! teacher beside real-data fine-tuning.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath};
use super::pages::PageCtx;
use super::{AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::charts::{self, Frame, LabelledPoint, Series};
use crate::compression::sources::ModelSource;
use crate::compression::{DigitsForm, PruneMethod};
use crate::training::inversion::spec::{InversionSpec, MAX_BATCHES, TeacherSource};
use crate::training::inversion::store::{self, ImageInfo, InversionRow, Score};
use crate::training::inversion::{Encoder, InversionSettings, Method, jobs};
use crate::training::{TrainingError, inversion::BatchOutcome};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/inversion", RESEARCHER, get(index_page))
        .post("/inversion/sets", RESEARCHER, post(create_page))
        .get("/inversion/sets/{id}", RESEARCHER, get(set_page))
        .get(
            "/inversion/sets/{id}/images/{idx}",
            RESEARCHER,
            get(image_png),
        )
        .post("/inversion/sets/{id}/score", RESEARCHER, post(score_page))
        .post("/inversion/sets/{id}/repair", RESEARCHER, post(repair_page))
        .post("/inversion/sets/{id}/cancel", RESEARCHER, post(cancel_page))
        .get("/api/v1/inversions", RESEARCHER, get(list_api))
        .post("/api/v1/inversions", RESEARCHER, post(create_api))
        .get("/api/v1/inversions/{id}", RESEARCHER, get(get_api))
        .post("/api/v1/inversions/{id}/score", RESEARCHER, post(score_api))
        .post(
            "/api/v1/inversions/{id}/repair",
            RESEARCHER,
            post(repair_api),
        )
        .post(
            "/api/v1/inversions/{id}/cancel",
            RESEARCHER,
            post(cancel_api),
        )
}

/// A set to synthesise (API). Sizes are bounded before anything is queued.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct InversionRequest {
    #[serde(default)]
    pub name: String,
    /// `natural` or `deep`.
    pub method: String,
    /// `trained` / `trained:EPOCHS` (a VGG-11 with batch norm trained here on the data; default
    /// `trained:6`), or (admins) a compression checkpoint path on the server.
    #[serde(default)]
    pub teacher: String,
    /// Teacher width multiplier when trained here (default 0.25).
    #[serde(default)]
    pub teacher_width: Option<f64>,
    /// `digits` (default), or (admins) a CIFAR-10/100 folder on the server.
    #[serde(default)]
    pub data: String,
    /// Batches (1..=100, default 1) of `batch_size` images (1..=256, default 64).
    #[serde(default)]
    pub batches: Option<usize>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Iterations per batch (default 300).
    #[serde(default)]
    pub iterations: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Loss weights; defaults are the spec's CIFAR-10 settings of the method.
    #[serde(default)]
    pub bn_weight: Option<f64>,
    #[serde(default)]
    pub tv_weight: Option<f64>,
    #[serde(default)]
    pub l2_weight: Option<f64>,
    /// Adaptive DeepInversion's competition weight (DeepInversion only; default 0).
    #[serde(default)]
    pub competition_weight: Option<f64>,
    /// NaturalInversion's latent dimensions (default 1024).
    #[serde(default)]
    pub latent_dim: Option<usize>,
}

fn invalid(e: TrainingError) -> AppError {
    AppError::Invalid(e.to_string())
}

const DEFAULT_TEACHER_EPOCHS: usize = 6;

fn teacher_source(
    state: &AppState,
    user: &crate::accounts::User,
    text: &str,
    width: Option<f64>,
    seed: u64,
) -> Result<TeacherSource, AppError> {
    let text = text.trim();
    let width = width.unwrap_or(0.25);
    if text.is_empty() || text == "trained" {
        return Ok(TeacherSource::Trained {
            epochs: DEFAULT_TEACHER_EPOCHS,
            width,
            seed,
        });
    }
    if let Some(n) = text.strip_prefix("trained:") {
        let epochs = n
            .trim()
            .parse()
            .map_err(|_| AppError::Invalid(format!("trained:{n}: expected a number of epochs")))?;
        return Ok(TeacherSource::Trained {
            epochs,
            width,
            seed,
        });
    }
    if !std::path::Path::new(text).is_absolute() {
        return Err(AppError::Invalid(format!(
            "unknown teacher {text:?}: `trained`, `trained:EPOCHS`, or an absolute checkpoint path (admins)"
        )));
    }
    let path = super::server_paths::resolve(&state.config, user, text)?;
    if !path.is_file() {
        return Err(AppError::Invalid("the teacher path is not a file".into()));
    }
    Ok(TeacherSource::Model(ModelSource::Checkpoint { path }))
}

fn specification(
    state: &AppState,
    user: &crate::accounts::User,
    request: InversionRequest,
) -> Result<(String, InversionSpec), AppError> {
    let method: Method = request.method.parse().map_err(invalid)?;
    let mut settings = InversionSettings::paper(method);
    settings.batch_size = request.batch_size.unwrap_or(64);
    settings.iterations = request.iterations.unwrap_or(300);
    if let Some(w) = request.bn_weight {
        settings.bn_weight = w;
    }
    if let Some(w) = request.tv_weight {
        settings.tv_weight = w;
    }
    if let Some(w) = request.l2_weight {
        settings.l2_weight = w;
    }
    if let Some(w) = request.competition_weight {
        settings.competition_weight = w;
    }
    if let Some(d) = request.latent_dim {
        settings.latent_dim = d;
    }
    let seed = request.seed.unwrap_or(0);
    let data = if request.data.trim().is_empty() {
        "digits"
    } else {
        request.data.trim()
    };
    let data = super::compression::data_source(state, user, data)?;
    if matches!(data, crate::compression::sources::DataSource::Digits { form } if form != DigitsForm::Image32)
    {
        return Err(AppError::Invalid(
            "inversion needs images: use `digits`, not `digits:64`".into(),
        ));
    }
    let spec = InversionSpec {
        teacher: teacher_source(state, user, &request.teacher, request.teacher_width, seed)?,
        data,
        settings,
        batches: request.batches.unwrap_or(1),
        seed,
        student_ratio: 0.5,
    };
    spec.check().map_err(invalid)?;
    let name: String = request.name.trim().chars().take(200).collect();
    let name = if name.is_empty() {
        format!("{} on {}", method.title(), spec.data.label())
    } else {
        name
    };
    Ok((name, spec))
}

/// The form's fields.
#[derive(Debug, Deserialize)]
struct InversionForm {
    #[serde(default)]
    name: String,
    method: String,
    #[serde(default)]
    teacher: String,
    #[serde(default)]
    data: String,
    batches: usize,
    batch_size: usize,
    iterations: usize,
    seed: u64,
}

/// One set with everything its page and API show.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InversionView {
    pub inversion: InversionRow,
    pub batches: Vec<BatchSummary>,
    pub scores: Vec<Score>,
    pub jobs: Vec<SetJob>,
    pub repairs: Vec<store::Repair>,
}

/// A stored batch without its images.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchSummary {
    pub batch: i32,
    pub teacher_accuracy: f64,
    pub best_iteration: usize,
    #[schema(value_type = Object)]
    pub best: crate::training::inversion::LossTerms,
    pub iterations: usize,
    pub seconds: f64,
}

/// One job of a set.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SetJob {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub done: i64,
    pub total: i64,
    pub message: Option<String>,
}

async fn load_view(
    state: &AppState,
    id: i64,
) -> Result<(InversionView, Vec<(i32, BatchOutcome)>), AppError> {
    let inversion = store::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let outcomes = store::batches(&state.pool, id).await?;
    let batches = outcomes
        .iter()
        .map(|(b, o)| BatchSummary {
            batch: *b,
            teacher_accuracy: o.teacher_accuracy,
            best_iteration: o.best_iteration,
            best: o.best,
            iterations: o.iterations,
            seconds: o.seconds,
        })
        .collect();
    let jobs = store::jobs_of(&state.pool, id)
        .await?
        .into_iter()
        .map(|(id, kind, status, done, total, message)| SetJob {
            id,
            kind,
            status,
            done,
            total,
            message,
        })
        .collect();
    Ok((
        InversionView {
            scores: store::scores(&state.pool, &[id]).await?,
            repairs: store::repairs(&state.pool, id).await?,
            inversion,
            batches,
            jobs,
        },
        outcomes,
    ))
}

/// P-precision (fidelity) against P-recall (diversity), one point per scored set and encoder.
fn fidelity_chart(rows: &[InversionRow], scores: &[Score]) -> String {
    let points: Vec<LabelledPoint> = scores
        .iter()
        .map(|s| {
            let method = rows
                .iter()
                .find(|r| r.id == s.inversion_id)
                .map_or("?", |r| r.method_title());
            LabelledPoint {
                label: format!("#{} ({})", s.inversion_id, s.encoder),
                x: s.result.p_recall,
                y: s.result.p_precision,
                group: format!("{method}, {}", s.encoder),
            }
        })
        .collect();
    let frame = Frame::new(
        "Fidelity vs diversity (PP&PR against the real images)",
        "P-recall (diversity)",
        "P-precision (fidelity)",
        (0.0, 1.0),
        (0.0, 1.0),
    );
    charts::scatter(&frame, &points)
}

/// The total loss over iterations, one line per batch.
fn loss_chart(outcomes: &[(i32, BatchOutcome)]) -> Option<String> {
    let series: Vec<Series> = outcomes
        .iter()
        .take(12)
        .map(|(b, o)| Series {
            name: format!("batch {b}"),
            points: o
                .history
                .iter()
                .filter(|(_, t)| t.total.is_finite() && t.total > 0.0)
                .map(|(it, t)| ((*it + 1) as f64, t.total.log10()))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return None;
    }
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let frame = Frame::new(
        "Total loss per iteration",
        "iteration",
        "log10 loss",
        charts::padded_range(xs, (0.0, 1.0)),
        charts::padded_range(ys, (0.0, 0.0)),
    );
    Some(charts::lines(&frame, &series))
}

#[derive(Template, WebTemplate)]
#[template(path = "inversion/index.html")]
struct IndexPage {
    ctx: PageCtx,
    sets: Vec<InversionRow>,
    fidelity_svg: Option<String>,
    max_batches: usize,
}

async fn index_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<IndexPage, AppError> {
    let sets = store::list(&state.pool).await?;
    let scores = store::scores(&state.pool, &[]).await?;
    Ok(IndexPage {
        ctx: PageCtx::new("Inversion", "inversion", Some(user), &csrf),
        fidelity_svg: (!scores.is_empty()).then(|| fidelity_chart(&sets, &scores)),
        sets,
        max_batches: MAX_BATCHES,
    })
}

async fn create_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<InversionForm>,
) -> Result<Redirect, AppError> {
    let request = InversionRequest {
        name: form.name,
        method: form.method,
        teacher: form.teacher,
        data: form.data,
        batches: Some(form.batches),
        batch_size: Some(form.batch_size),
        iterations: Some(form.iterations),
        seed: Some(form.seed),
        ..InversionRequest::default()
    };
    let (name, spec) = specification(&state, &user, request)?;
    let (id, _) = jobs::start_inversion(&state.pool, &name, &spec, Some(user.id)).await?;
    Ok(Redirect::to(&format!("/inversion/sets/{id}")))
}

/// Images of one class, for the grid.
struct ClassRow {
    label: i32,
    images: Vec<ImageInfo>,
}

#[derive(Template, WebTemplate)]
#[template(path = "inversion/set.html")]
struct SetPage {
    ctx: PageCtx,
    view: InversionView,
    classes: Vec<ClassRow>,
    loss_svg: Option<String>,
    fidelity_svg: Option<String>,
    spec_text: String,
    active: bool,
    methods: Vec<&'static str>,
}

/// Images shown per class on the page.
const GRID_PER_CLASS: i64 = 16;

async fn set_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
) -> Result<SetPage, AppError> {
    let (view, outcomes) = load_view(&state, id).await?;
    let mut classes: Vec<ClassRow> = Vec::new();
    for image in store::image_grid(&state.pool, id, GRID_PER_CLASS).await? {
        match classes.last_mut() {
            Some(c) if c.label == image.label => c.images.push(image),
            _ => classes.push(ClassRow {
                label: image.label,
                images: vec![image],
            }),
        }
    }
    let active = view
        .jobs
        .iter()
        .any(|j| j.status == "queued" || j.status == "running");
    let fidelity_svg = (!view.scores.is_empty())
        .then(|| fidelity_chart(std::slice::from_ref(&view.inversion), &view.scores));
    Ok(SetPage {
        ctx: PageCtx::new("Inversion set", "inversion", Some(user), &csrf),
        spec_text: serde_json::to_string_pretty(&view.inversion.spec).unwrap_or_default(),
        loss_svg: loss_chart(&outcomes),
        fidelity_svg,
        classes,
        active,
        methods: PruneMethod::all_defaults()
            .iter()
            .map(|m| m.name())
            .filter(|m| !m.starts_with("neuron-merging"))
            .collect(),
        view,
    })
}

async fn image_png(
    State(state): State<AppState>,
    AppPath((id, idx)): AppPath<(i64, i32)>,
) -> Result<Response, AppError> {
    let bytes = store::image_png(&state.pool, id, idx)
        .await?
        .ok_or(AppError::NotFound)?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    Ok(response)
}

/// Scoring request: the encoder (`pixels` or `teacher`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ScoreRequest {
    #[serde(default)]
    pub encoder: Option<String>,
}

async fn start_score(
    state: &AppState,
    user: &crate::accounts::User,
    id: i64,
    request: ScoreRequest,
) -> Result<i64, AppError> {
    let encoder: Encoder = request
        .encoder
        .as_deref()
        .unwrap_or("pixels")
        .parse()
        .map_err(invalid)?;
    let row = store::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if row.images == 0 {
        return Err(AppError::Invalid(
            "the set has no images yet: score it when a batch is stored".into(),
        ));
    }
    Ok(jobs::start_score(&state.pool, id, encoder, Some(user.id)).await?)
}

/// Repair request: prune the teacher with `method` at `ratio` and fine-tune for `epochs`,
/// once on the set's images and once on the real data.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RepairRequest {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub ratio: Option<f64>,
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
}

async fn start_repair(
    state: &AppState,
    user: &crate::accounts::User,
    id: i64,
    request: RepairRequest,
) -> Result<Vec<i64>, AppError> {
    let method: PruneMethod = request
        .method
        .as_deref()
        .unwrap_or("l1")
        .parse()
        .map_err(|e: crate::compression::CompressionError| AppError::Invalid(e.to_string()))?;
    if matches!(method, PruneMethod::NeuronMerging(_)) {
        return Err(AppError::Invalid(
            "a data-free repair fine-tunes a pruned network; Neuron Merging repairs without data by itself".into(),
        ));
    }
    let ratio = request.ratio.unwrap_or(0.5);
    if !(ratio.is_finite() && (0.0..0.95).contains(&ratio)) {
        return Err(AppError::Invalid("ratio must lie in [0, 0.95)".into()));
    }
    let epochs = request.epochs.unwrap_or(3);
    if !(1..=100).contains(&epochs) {
        return Err(AppError::Invalid("epochs must be 1..=100".into()));
    }
    let seed = request.seed.unwrap_or(0);
    if seed > crate::training::experiment::MAX_SEED {
        return Err(AppError::Invalid("seed too large".into()));
    }
    let row = store::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if row.images == 0 || row.teacher_accuracy.is_none() {
        return Err(AppError::Invalid(
            "the set has no images yet: repair with it when a batch is stored".into(),
        ));
    }
    Ok(jobs::start_repair(
        &state.pool,
        id,
        method.name(),
        ratio,
        epochs,
        seed,
        Some(user.id),
    )
    .await?)
}

#[derive(Debug, Deserialize)]
struct ScoreForm {
    encoder: String,
}

async fn score_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    AppForm(form): AppForm<ScoreForm>,
) -> Result<Redirect, AppError> {
    start_score(
        &state,
        &user,
        id,
        ScoreRequest {
            encoder: Some(form.encoder),
        },
    )
    .await?;
    Ok(Redirect::to(&format!("/inversion/sets/{id}")))
}

#[derive(Debug, Deserialize)]
struct RepairForm {
    method: String,
    ratio: f64,
    epochs: usize,
}

async fn repair_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    AppForm(form): AppForm<RepairForm>,
) -> Result<Redirect, AppError> {
    let request = RepairRequest {
        method: Some(form.method),
        ratio: Some(form.ratio),
        epochs: Some(form.epochs),
        seed: None,
    };
    start_repair(&state, &user, id, request).await?;
    Ok(Redirect::to(&format!("/inversion/sets/{id}")))
}

async fn cancel_page(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    store::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    jobs::cancel(&state.pool, id).await?;
    Ok(Redirect::to(&format!("/inversion/sets/{id}")))
}

/// All inversion sets, newest first.
#[utoipa::path(get, path = "/api/v1/inversions", tag = "inversion",
    responses((status = 200, body = Vec<InversionRow>)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<InversionRow>>, AppError> {
    Ok(ApiJson(store::list(&state.pool).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StartedInversion {
    pub inversion_id: i64,
    /// The teacher job; it queues one job per batch when the teacher is ready.
    pub job_id: i64,
}

/// Start a set: the teacher job, then one job per batch.
#[utoipa::path(post, path = "/api/v1/inversions", tag = "inversion", request_body = InversionRequest,
    responses((status = 202, body = StartedInversion), (status = 422)))]
pub(crate) async fn create_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<InversionRequest>,
) -> Result<(StatusCode, ApiJson<StartedInversion>), AppError> {
    let (name, spec) = specification(&state, &user, request)?;
    let (inversion_id, job_id) =
        jobs::start_inversion(&state.pool, &name, &spec, Some(user.id)).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(StartedInversion {
            inversion_id,
            job_id,
        }),
    ))
}

/// A set with its batches, scores, jobs and repairs.
#[utoipa::path(get, path = "/api/v1/inversions/{id}", tag = "inversion",
    params(("id" = i64, Path)), responses((status = 200, body = InversionView), (status = 404)))]
pub(crate) async fn get_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<InversionView>, AppError> {
    Ok(ApiJson(load_view(&state, id).await?.0))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QueuedJobs {
    pub job_ids: Vec<i64>,
}

/// Score a set with PP&PR and the k-NN baselines against the teacher's real training images.
#[utoipa::path(post, path = "/api/v1/inversions/{id}/score", tag = "inversion", request_body = ScoreRequest,
    params(("id" = i64, Path)), responses((status = 202, body = QueuedJobs), (status = 404), (status = 422)))]
pub(crate) async fn score_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(request): ApiJson<ScoreRequest>,
) -> Result<(StatusCode, ApiJson<QueuedJobs>), AppError> {
    let job = start_score(&state, &user, id, request).await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(QueuedJobs { job_ids: vec![job] }),
    ))
}

/// Data-free repair: prune the teacher and fine-tune it on the set's images and, beside it,
/// on the real data (two compression experiments).
#[utoipa::path(post, path = "/api/v1/inversions/{id}/repair", tag = "inversion", request_body = RepairRequest,
    params(("id" = i64, Path)), responses((status = 202, body = QueuedJobs), (status = 404), (status = 422)))]
pub(crate) async fn repair_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(request): ApiJson<RepairRequest>,
) -> Result<(StatusCode, ApiJson<QueuedJobs>), AppError> {
    let job_ids = start_repair(&state, &user, id, request).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(QueuedJobs { job_ids })))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Cancelled {
    pub cancelled: usize,
}

/// Cancel every queued or running job of a set (stored batches stay).
#[utoipa::path(post, path = "/api/v1/inversions/{id}/cancel", tag = "inversion",
    params(("id" = i64, Path)), responses((status = 200, body = Cancelled), (status = 404)))]
pub(crate) async fn cancel_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Cancelled>, AppError> {
    store::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(ApiJson(Cancelled {
        cancelled: jobs::cancel(&state.pool, id).await?,
    }))
}
