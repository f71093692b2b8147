//! Pages and `/api/v1/compression` endpoints: experiments (run as jobs), the accuracy vs
//! FLOPs / parameters plots, and import of results produced elsewhere.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm};
use super::pages::PageCtx;
use super::server_paths;
use super::{AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::charts::{self, Frame, Series};
use crate::compression::jobs::{EXPERIMENT_JOB, ExperimentJob};
use crate::compression::sources::{DataSource, ModelSource};
use crate::compression::store::{self, ExperimentRow, ImportRow};
use crate::compression::table::{Measurement, SummaryRow, summarise};
use crate::compression::{CompressionError, PruneMethod};
use crate::jobs::{self, NewJob};

pub(crate) fn routes(routes: Routes, upload_limit: usize) -> Routes {
    routes
        .get("/compression", RESEARCHER, get(index_page))
        .post("/compression/experiments", RESEARCHER, post(run_page))
        .post(
            "/compression/import",
            RESEARCHER,
            post(import_page).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .get("/api/v1/compression/experiments", RESEARCHER, get(list_api))
        .post("/api/v1/compression/experiments", RESEARCHER, post(run_api))
        .post("/api/v1/compression/import", RESEARCHER, post(import_api))
}

/// What to run (form and API).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ExperimentRequest {
    /// `demo`, `demo:EPOCHS`, or a checkpoint path on the server (ignored with
    /// `inversion_id`).
    #[serde(default)]
    pub model: String,
    /// `digits`, `digits:64`, `synthetic`, `synthetic:N`, or a CIFAR-10/100 or image folder
    /// on the server.
    pub data: String,
    pub method: String,
    pub ratio: f64,
    #[serde(default)]
    pub fine_tune_epochs: usize,
    /// `one-shot` (default), `progressive:STAGES` or `from-scratch:INTERVAL:UNTIL`.
    #[serde(default)]
    pub schedule: String,
    /// Data-free repair: prune the teacher of this inversion set (`model` and `data` are
    /// then the set's) and fine-tune it on `fine_tune_on`.
    #[serde(default)]
    pub inversion_id: Option<i64>,
    /// With `inversion_id`: `images` (the set's synthesised images; default) or `real`
    /// (the real training data, for comparison).
    #[serde(default)]
    pub fine_tune_on: Option<String>,
    /// Seed of the fine-tuning with `inversion_id`.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn invalid(e: CompressionError) -> AppError {
    AppError::Invalid(e.to_string())
}

async fn enqueue(
    state: &AppState,
    user: &crate::accounts::User,
    request: ExperimentRequest,
) -> Result<i64, AppError> {
    let method: PruneMethod = request.method.parse().map_err(invalid)?;
    if !(0.0..1.0).contains(&request.ratio) {
        return Err(invalid(CompressionError::InvalidRatio(request.ratio)));
    }
    if request.fine_tune_epochs > 200 {
        return Err(AppError::Invalid("at most 200 fine-tuning epochs".into()));
    }
    if let Some(id) = request.inversion_id {
        return enqueue_repair(state, user, id, &request, method).await;
    }
    // Built-in sources (`demo`, `digits`, `synthetic:N`) are anyone's; a server path is an
    // admin's, under the configured roots (see `server_paths`).
    let model = match ModelSource::parse(&request.model).map_err(invalid)? {
        ModelSource::Checkpoint { path } => ModelSource::Checkpoint {
            path: checkpoint(state, user, &path)?,
        },
        ModelSource::Named { architecture, path } => ModelSource::Named {
            architecture,
            path: checkpoint(state, user, &path)?,
        },
        builtin => builtin,
    };
    let data = data_source(state, user, &request.data)?;
    let payload = ExperimentJob {
        model,
        data,
        method: method.name().to_string(),
        ratio: request.ratio,
        fine_tune_epochs: request.fine_tune_epochs,
        schedule: request.schedule.parse().map_err(invalid)?,
        created_by: Some(user.id),
        inversion: None,
    };
    let job = NewJob::new(
        EXPERIMENT_JOB,
        serde_json::to_value(&payload).map_err(AppError::internal)?,
    )
    .created_by(user.id)
    .max_attempts(2);
    Ok(jobs::enqueue(&state.pool, job).await?)
}

/// A data-free repair experiment on inversion set `id` (checked: the set exists, has its
/// teacher, and its images when fine-tuning on them).
async fn enqueue_repair(
    state: &AppState,
    user: &crate::accounts::User,
    id: i64,
    request: &ExperimentRequest,
    method: PruneMethod,
) -> Result<i64, AppError> {
    use crate::training::inversion::store as inversions;
    let on_images = match request.fine_tune_on.as_deref().map(str::trim) {
        None | Some("") | Some("images") => true,
        Some("real") => false,
        Some(other) => {
            return Err(AppError::Invalid(format!(
                "fine_tune_on {other:?}: expected images or real"
            )));
        }
    };
    if request.fine_tune_epochs == 0 {
        return Err(AppError::Invalid(
            "a data-free repair needs at least one fine-tuning epoch".into(),
        ));
    }
    if !request.schedule.trim().is_empty() && request.schedule.trim() != "one-shot" {
        return Err(AppError::Invalid(
            "a data-free repair prunes once, then fine-tunes (schedule one-shot)".into(),
        ));
    }
    let seed = request.seed.unwrap_or(0);
    if seed > crate::training::experiment::MAX_SEED {
        return Err(AppError::Invalid("seed too large".into()));
    }
    let row = inversions::get(&state.pool, id)
        .await?
        .ok_or_else(|| AppError::Invalid(format!("inversion set {id} does not exist")))?;
    let spec = row
        .spec()
        .cloned()
        .ok_or_else(|| AppError::Invalid(format!("inversion set {id} is unreadable")))?;
    if row.teacher_accuracy.is_none() {
        return Err(AppError::Invalid(format!(
            "inversion set {id} has no teacher yet"
        )));
    }
    if on_images && row.images == 0 {
        return Err(AppError::Invalid(format!(
            "inversion set {id} has no images yet"
        )));
    }
    Ok(crate::training::inversion::jobs::queue_repair(
        &state.pool,
        id,
        &spec.data,
        method.name(),
        request.ratio,
        request.fine_tune_epochs,
        seed,
        on_images,
        Some(user.id),
    )
    .await?)
}

/// A checkpoint path named in a request: absolute, an admin's, under the server roots, a file.
fn checkpoint(
    state: &AppState,
    user: &crate::accounts::User,
    path: &std::path::Path,
) -> Result<std::path::PathBuf, AppError> {
    if !path.is_absolute() {
        return Err(AppError::Invalid(format!(
            "unknown model {:?}: `demo`, `demo:EPOCHS`, or an absolute checkpoint path (admins)",
            path.display()
        )));
    }
    let resolved = server_paths::resolve(&state.config, user, &path.to_string_lossy())?;
    if !resolved.is_file() {
        return Err(AppError::Invalid(
            "the checkpoint path is not a file".into(),
        ));
    }
    Ok(resolved)
}

/// A data source named in a request: a built-in set, or (admins) an absolute folder under the
/// server roots. A relative name is never looked up on the server's disk.
pub(crate) fn data_source(
    state: &AppState,
    user: &crate::accounts::User,
    text: &str,
) -> Result<DataSource, AppError> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix("nm:") {
        return Ok(DataSource::AuthorsNormalized {
            inner: Box::new(data_source(state, user, inner)?),
        });
    }
    if text.starts_with("digits") || text.starts_with("synthetic") {
        return text.parse().map_err(invalid);
    }
    if !std::path::Path::new(text).is_absolute() {
        return Err(AppError::Invalid(format!(
            "unknown data source {text:?}: `digits`, `digits:64`, `synthetic`, `synthetic:N`, or an absolute folder path (admins)"
        )));
    }
    let dir = server_paths::resolve(&state.config, user, text)?;
    dir.to_string_lossy().parse().map_err(invalid)
}

fn method_names() -> Vec<&'static str> {
    PruneMethod::all_defaults()
        .iter()
        .map(|m| m.name())
        .collect()
}

/// Accuracy against a reduction, one series per method (and architecture/data when mixed).
fn accuracy_chart(
    rows: &[ExperimentRow],
    title: &str,
    x_label: &str,
    reduction: fn(&ExperimentRow) -> f64,
) -> String {
    let mut series: Vec<Series> = Vec::new();
    for row in rows {
        let Some(accuracy) = row.best_accuracy() else {
            continue;
        };
        let name = format!("{} ({} / {})", row.method, row.architecture, row.dataset);
        let point = (reduction(row) * 100.0, accuracy * 100.0);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                name,
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let frame = Frame::new(
        title,
        x_label,
        "top-1 accuracy (%)",
        (0.0, 100.0),
        charts::padded_range(ys, (0.0, 0.0)),
    );
    charts::lines(&frame, &series)
}

#[derive(Template, WebTemplate)]
#[template(path = "compression/index.html")]
struct IndexPage {
    ctx: PageCtx,
    notice: Option<String>,
    rows: Vec<ExperimentRow>,
    flops_svg: String,
    params_svg: String,
    methods: Vec<&'static str>,
    summary: Vec<SummaryRow>,
}

/// The paper-style summary of the stored rows.
fn summary_of(rows: &[ExperimentRow]) -> Vec<SummaryRow> {
    let measurements: Vec<Measurement> = rows
        .iter()
        .map(|r| Measurement {
            architecture: r.architecture.clone(),
            dataset: r.dataset.clone(),
            method: r.method.clone(),
            ratio: r.ratio,
            fine_tune_epochs: r.fine_tune_epochs,
            param_reduction: r.param_reduction,
            mac_reduction: r.mac_reduction,
            accuracy_before: r.accuracy_before,
            accuracy_pruned: r.accuracy_pruned,
            accuracy_fine_tuned: r.accuracy_fine_tuned,
        })
        .collect();
    summarise(&measurements)
}

async fn render(
    state: &AppState,
    user: crate::accounts::User,
    csrf: &CsrfToken,
    notice: Option<String>,
) -> Result<IndexPage, AppError> {
    let rows = store::list(&state.pool).await?;
    Ok(IndexPage {
        ctx: PageCtx::new("Compression", "compression", Some(user), csrf),
        notice,
        flops_svg: accuracy_chart(
            &rows,
            "Accuracy vs FLOPs reduction",
            "FLOPs (MACs) removed (%)",
            |r| r.mac_reduction,
        ),
        params_svg: accuracy_chart(
            &rows,
            "Accuracy vs parameter reduction",
            "parameters removed (%)",
            |r| r.param_reduction,
        ),
        summary: summary_of(&rows),
        rows,
        methods: method_names(),
    })
}

async fn index_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<IndexPage, AppError> {
    render(&state, user, &csrf, None).await
}

async fn run_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<ExperimentRequest>,
) -> Result<Redirect, AppError> {
    let job = enqueue(&state, &user, form).await?;
    Ok(Redirect::to(&format!("/jobs/{job}")))
}

async fn read_file(mut multipart: Multipart) -> Result<Vec<u8>, AppError> {
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| AppError::BadRequest(e.body_text()))?
    {
        if field.name() == Some("file") {
            return Ok(field
                .bytes()
                .await
                .map_err(|e| AppError::BadRequest(e.body_text()))?
                .to_vec());
        }
    }
    Err(AppError::Invalid("no file in the upload".into()))
}

async fn import_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    multipart: Multipart,
) -> Result<IndexPage, AppError> {
    let bytes = read_file(multipart).await?;
    let rows = store::parse_import(&bytes).map_err(AppError::Invalid)?;
    let count = store::insert_imported(&state.pool, &rows, Some(user.id)).await?;
    render(&state, user, &csrf, Some(format!("Imported {count} rows."))).await
}

/// All experiments, ours and imported.
#[utoipa::path(get, path = "/api/v1/compression/experiments", tag = "compression",
    responses((status = 200, body = Vec<ExperimentRow>)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<ExperimentRow>>, AppError> {
    Ok(ApiJson(store::list(&state.pool).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EnqueuedExperiment {
    pub job_id: i64,
}

/// Run one method at one ratio (as a job).
#[utoipa::path(post, path = "/api/v1/compression/experiments", tag = "compression", request_body = ExperimentRequest,
    responses((status = 202, body = EnqueuedExperiment), (status = 422)))]
pub(crate) async fn run_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<ExperimentRequest>,
) -> Result<(StatusCode, ApiJson<EnqueuedExperiment>), AppError> {
    let job_id = enqueue(&state, &user, request).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(EnqueuedExperiment { job_id })))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Imported {
    pub imported: usize,
}

/// Import rows produced elsewhere (JSON array of rows); all are checked before any is stored.
#[utoipa::path(post, path = "/api/v1/compression/import", tag = "compression", request_body = Vec<ImportRow>,
    responses((status = 201, body = Imported), (status = 422)))]
pub(crate) async fn import_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    body: axum::body::Bytes,
) -> Result<(StatusCode, ApiJson<Imported>), AppError> {
    let rows = store::parse_import(&body).map_err(AppError::Invalid)?;
    let imported = store::insert_imported(&state.pool, &rows, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(Imported { imported })))
}
