//! Pages and `/api/v1/genmetrics` endpoints of the generative-metrics area: embedding sets
//! (upload or server path), PP&PR results with plots, toy experiments. Computation is
//! enqueued as jobs; handlers only parse, store and render.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath};
use super::pages::PageCtx;
use super::{ADMIN, AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::charts::{self, Frame, LabelledPoint, Series};
use crate::genmetrics::jobs::{PPR_JOB, PprJob, TOY_JOB, ToyJob};
use crate::genmetrics::store::{self, EmbeddingSet, PprResult, StoreError, ToyRun};
use crate::genmetrics::toy::{ToyExperiment, ToyParams};
use crate::genmetrics::{self, Embeddings, Params};
use crate::jobs::{self, NewJob};

pub(crate) fn routes(routes: Routes, upload_limit: usize) -> Routes {
    let upload = || post(upload_set_page).layer(DefaultBodyLimit::max(upload_limit));
    let upload_api = || post(upload_set_api).layer(DefaultBodyLimit::max(upload_limit));
    routes
        .get("/genmetrics", RESEARCHER, get(index_page))
        .post("/genmetrics/sets", RESEARCHER, upload())
        .post("/genmetrics/sets/path", ADMIN, post(register_path_page))
        .post("/genmetrics/compute", RESEARCHER, post(compute_page))
        .get("/genmetrics/toy", RESEARCHER, get(toy_page))
        .post("/genmetrics/toy", RESEARCHER, post(run_toy_page))
        .get("/api/v1/genmetrics/sets", RESEARCHER, get(list_sets_api))
        .post("/api/v1/genmetrics/sets", RESEARCHER, upload_api())
        .get(
            "/api/v1/genmetrics/results",
            RESEARCHER,
            get(list_results_api),
        )
        .post("/api/v1/genmetrics/results", RESEARCHER, post(compute_api))
        .get(
            "/api/v1/genmetrics/results/{id}",
            RESEARCHER,
            get(get_result_api),
        )
        .get("/api/v1/genmetrics/toy", RESEARCHER, get(list_toy_api))
        .post("/api/v1/genmetrics/toy", RESEARCHER, post(run_toy_api))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Metrics(e) => AppError::Invalid(e.to_string()),
            StoreError::NoSuchSet(_) => AppError::Invalid(e.to_string()),
            StoreError::Invalid(m) => AppError::Invalid(m),
            StoreError::Sql(e) => e.into(),
        }
    }
}

// ---- shared operations -------------------------------------------------------------------

/// A parsed upload: name plus the matrix.
struct Upload {
    name: String,
    set: Embeddings,
}

/// Read `name`, `file`, optional `dim` and `tensor` from a multipart body and parse the matrix
/// by the file's extension (.npy, .safetensors, .csv, anything else raw f32 with `dim`).
async fn read_upload(mut multipart: Multipart, limit: usize) -> Result<Upload, AppError> {
    let mut name: Option<String> = None;
    let mut dim: Option<usize> = None;
    let mut tensor: Option<String> = None;
    let mut file: Option<(String, Vec<u8>)> = None;
    let multipart_error = |e| multipart_error(e, limit);
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name().unwrap_or_default() {
            "name" => {
                name = Some(
                    field
                        .text()
                        .await
                        .map_err(multipart_error)?
                        .trim()
                        .to_string(),
                )
            }
            "dim" => {
                let text = field.text().await.map_err(multipart_error)?;
                if !text.trim().is_empty() {
                    dim = Some(text.trim().parse().map_err(|_| {
                        AppError::Invalid(format!("dimension {text:?} is not a whole number"))
                    })?);
                }
            }
            "tensor" => {
                let text = field.text().await.map_err(multipart_error)?;
                tensor = Some(text.trim().to_string()).filter(|t| !t.is_empty());
            }
            "file" => {
                let filename = field.file_name().unwrap_or("upload").to_string();
                let bytes = field.bytes().await.map_err(multipart_error)?;
                file = Some((filename, bytes.to_vec()));
            }
            _ => {}
        }
    }
    let (filename, bytes) =
        file.ok_or_else(|| AppError::Invalid("no file in the upload".into()))?;
    let name = name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| filename.clone());
    let set = tokio::task::spawn_blocking(move || {
        let lower = filename.to_ascii_lowercase();
        if lower.ends_with(".npy") {
            genmetrics::parse_npy(&bytes)
        } else if lower.ends_with(".safetensors") {
            genmetrics::parse_safetensors(&bytes, tensor.as_deref())
        } else if lower.ends_with(".csv") {
            genmetrics::parse_csv(&bytes)
        } else {
            match dim {
                Some(dim) => genmetrics::parse_raw_f32(&bytes, dim),
                None => Err(genmetrics::GenMetricsError::MissingDim { path: filename }),
            }
        }
        .and_then(|set| set.validate().map(|_| set))
    })
    .await
    .map_err(AppError::internal)?
    .map_err(|e| AppError::Invalid(e.to_string()))?;
    Ok(Upload { name, set })
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge(limit)
    } else {
        AppError::BadRequest(format!("malformed upload: {}", e.body_text()))
    }
}

/// What to compute (form and API).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ComputeRequest {
    pub real_set_id: i64,
    pub fake_set_id: i64,
    #[serde(default = "default_a")]
    pub a: f64,
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default = "default_prdc_k")]
    pub prdc_k: usize,
    #[serde(default)]
    pub label: String,
}

/// Largest k (and PRDC k) a computation may ask for.
pub const MAX_K: usize = 1000;

fn default_a() -> f64 {
    1.2
}
fn default_k() -> usize {
    4
}
fn default_prdc_k() -> usize {
    5
}

/// Check the request against the stored sets and enqueue the computation.
async fn enqueue_compute(
    state: &AppState,
    user: &crate::accounts::User,
    request: ComputeRequest,
) -> Result<i64, AppError> {
    let a_ok = request.a > 0.0 && request.a.is_finite() && request.a <= 1000.0;
    let k_ok = (1..=MAX_K).contains(&request.k) && (1..=MAX_K).contains(&request.prdc_k);
    if !(a_ok && k_ok) {
        return Err(AppError::Invalid(format!(
            "a must be in (0, 1000]; k and prdc k between 1 and {MAX_K}"
        )));
    }
    if request.label.chars().count() > 200 {
        return Err(AppError::Invalid(
            "the label is longer than 200 characters".into(),
        ));
    }
    let real = store::get_set(&state.pool, request.real_set_id).await?;
    let fake = store::get_set(&state.pool, request.fake_set_id).await?;
    if real.dim != fake.dim {
        return Err(AppError::Invalid(format!(
            "the real set has dimension {} but the fake set has {}",
            real.dim, fake.dim
        )));
    }
    let needed = request.k.max(request.prdc_k) + 2;
    for set in [&real, &fake] {
        if (set.rows as usize) < needed {
            return Err(AppError::Invalid(format!(
                "set {:?} has {} rows; k needs at least {needed}",
                set.name, set.rows
            )));
        }
    }
    let params = Params {
        a: request.a,
        k: request.k,
        prdc_k: request.prdc_k,
    };
    let payload = PprJob {
        real_set_id: real.id,
        fake_set_id: fake.id,
        params,
        label: request.label.trim().to_string(),
        created_by: Some(user.id),
    };
    let key = format!(
        "{PPR_JOB}:{}:{}:{}:{}:{}",
        real.id, fake.id, params.a, params.k, params.prdc_k
    );
    let job = NewJob::new(
        PPR_JOB,
        serde_json::to_value(&payload).map_err(AppError::internal)?,
    )
    .dedup_key(key)
    .created_by(user.id)
    .max_attempts(3);
    Ok(jobs::enqueue(&state.pool, job).await?)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ToyRequest {
    pub experiment: ToyExperiment,
    #[serde(default = "default_samples")]
    pub samples: usize,
    #[serde(default = "default_dim")]
    pub dim: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_samples() -> usize {
    1000
}
fn default_dim() -> usize {
    64
}

async fn enqueue_toy(
    state: &AppState,
    user: &crate::accounts::User,
    request: ToyRequest,
) -> Result<i64, AppError> {
    if !(10..=20_000).contains(&request.samples) || !(1..=4096).contains(&request.dim) {
        return Err(AppError::Invalid(
            "samples must be 10-20,000 and the dimension 1-4096".into(),
        ));
    }
    let params = ToyParams {
        samples: request.samples,
        dim: request.dim,
        seed: request.seed,
        ..ToyParams::default()
    };
    let payload = ToyJob {
        experiment: request.experiment,
        params,
    };
    let job = NewJob::new(
        TOY_JOB,
        serde_json::to_value(&payload).map_err(AppError::internal)?,
    )
    .created_by(user.id);
    Ok(jobs::enqueue(&state.pool, job).await?)
}

// ---- charts --------------------------------------------------------------------------------

fn results_scatter(results: &[PprResult]) -> String {
    let points: Vec<LabelledPoint> = results
        .iter()
        .map(|r| LabelledPoint {
            label: r.display_name(),
            x: r.p_precision,
            y: r.p_recall,
            group: format!("a = {}, k = {}", r.a, r.k),
        })
        .collect();
    let frame = Frame::new(
        "Fidelity vs diversity",
        "P-precision (fidelity)",
        "P-recall (diversity)",
        (0.0, 1.05),
        (0.0, 1.05),
    );
    charts::scatter(&frame, &points)
}

fn results_bars(results: &[PprResult]) -> String {
    let shown: Vec<&PprResult> = results.iter().take(8).collect();
    let groups: Vec<String> = shown.iter().map(|r| r.display_name()).collect();
    let metrics: Vec<String> = ["PP", "PR", "P", "R", "D", "C"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let values: Vec<Vec<f64>> = shown
        .iter()
        .map(|r| {
            vec![
                r.p_precision,
                r.p_recall,
                r.precision,
                r.recall,
                r.density,
                r.coverage,
            ]
        })
        .collect();
    let top = values.iter().flatten().copied().fold(1.0f64, f64::max) * 1.05;
    let frame = Frame::new(
        "PP / PR next to the k-NN baselines",
        "",
        "score",
        (0.0, 1.0),
        (0.0, top),
    );
    charts::grouped_bars(&frame, &groups, &metrics, &values)
}

fn toy_chart(run: &ToyRun) -> String {
    let metric = |name: &str, pick: fn(&genmetrics::toy::ToyPoint) -> f64| Series {
        name: name.to_string(),
        points: run.points.iter().map(|p| (p.x, pick(p))).collect(),
    };
    let series = vec![
        metric("P-precision", |p| p.p_precision),
        metric("P-recall", |p| p.p_recall),
        metric("precision (k-NN)", |p| p.precision),
        metric("recall (k-NN)", |p| p.recall),
        metric("density", |p| p.density),
        metric("coverage", |p| p.coverage),
    ];
    let xs = run.points.iter().map(|p| p.x);
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let frame = Frame::new(
        &format!("{} experiment", run.experiment.as_str()),
        run.experiment.x_label(),
        "score",
        charts::padded_range(xs, (0.0, 0.0)),
        charts::padded_range(ys, (0.0, 1.0)),
    );
    charts::lines(&frame, &series)
}

// ---- pages ---------------------------------------------------------------------------------

#[derive(Template, WebTemplate)]
#[template(path = "genmetrics/index.html")]
struct IndexPage {
    ctx: PageCtx,
    notice: Option<String>,
    results: Vec<PprResult>,
    sets: Vec<EmbeddingSet>,
    scatter_svg: String,
    bars_svg: String,
    is_admin: bool,
    upload_limit_mib: usize,
}

async fn render_index(
    state: &AppState,
    user: crate::accounts::User,
    csrf: &CsrfToken,
    notice: Option<String>,
) -> Result<IndexPage, AppError> {
    let results = store::list_results(&state.pool).await?;
    let sets = store::list_sets(&state.pool).await?;
    Ok(IndexPage {
        scatter_svg: results_scatter(&results),
        bars_svg: results_bars(&results),
        is_admin: user.role == Role::Admin,
        ctx: PageCtx::new("Generative metrics", "genmetrics", Some(user), csrf),
        notice,
        results,
        sets,
        upload_limit_mib: state.config.upload_limit / (1024 * 1024),
    })
}

async fn index_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<IndexPage, AppError> {
    render_index(&state, user, &csrf, None).await
}

async fn upload_set_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    multipart: Multipart,
) -> Result<IndexPage, AppError> {
    let upload = read_upload(multipart, state.config.upload_limit).await?;
    let stored =
        store::insert_inline_set(&state.pool, &upload.name, "", &upload.set, Some(user.id)).await?;
    let notice = format!(
        "Stored set {:?}: {} rows of dimension {}.",
        stored.name, stored.rows, stored.dim
    );
    render_index(&state, user, &csrf, Some(notice)).await
}

#[derive(Deserialize)]
struct PathForm {
    name: String,
    path: String,
    dim: Option<String>,
    tensor: Option<String>,
}

async fn register_path_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppForm(form): AppForm<PathForm>,
) -> Result<IndexPage, AppError> {
    let dim = match form.dim.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => Some(
            d.parse()
                .map_err(|_| AppError::Invalid(format!("dimension {d:?} is not a whole number")))?,
        ),
        None => None,
    };
    let tensor = form
        .tensor
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let path = super::server_paths::resolve(&state.config, &user, &form.path)?;
    let stored = store::insert_path_set(
        &state.pool,
        form.name.trim(),
        &path,
        dim,
        tensor,
        Some(user.id),
    )
    .await
    .map_err(|e| match e {
        // The reader's reason may quote the file: say only that it is unreadable.
        StoreError::Metrics(_) => AppError::Invalid(
            "the file is not a readable embedding set (.npy, .safetensors, CSV or raw f32)".into(),
        ),
        other => other.into(),
    })?;
    let notice = format!(
        "Registered {:?}: {} rows of dimension {}.",
        stored.name, stored.rows, stored.dim
    );
    render_index(&state, user, &csrf, Some(notice)).await
}

async fn compute_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<ComputeRequest>,
) -> Result<Redirect, AppError> {
    let job = enqueue_compute(&state, &user, form).await?;
    Ok(Redirect::to(&format!("/jobs/{job}")))
}

/// A toy run as the page shows it.
struct ToyView {
    experiment: &'static str,
    samples: usize,
    dim: usize,
    seed: u64,
    a: f64,
    k: usize,
    prdc_k: usize,
    svg: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "genmetrics/toy.html")]
struct ToyPage {
    ctx: PageCtx,
    runs: Vec<ToyView>,
}

async fn toy_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<ToyPage, AppError> {
    let runs = store::latest_toy_runs(&state.pool)
        .await?
        .iter()
        .map(|run| ToyView {
            experiment: run.experiment.as_str(),
            samples: run.params.samples,
            dim: run.params.dim,
            seed: run.params.seed,
            a: run.params.a,
            k: run.params.k,
            prdc_k: run.params.prdc_k,
            svg: toy_chart(run),
        })
        .collect();
    Ok(ToyPage {
        ctx: PageCtx::new("Toy experiments", "genmetrics", Some(user), &csrf),
        runs,
    })
}

async fn run_toy_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<ToyRequest>,
) -> Result<Redirect, AppError> {
    let job = enqueue_toy(&state, &user, form).await?;
    Ok(Redirect::to(&format!("/jobs/{job}")))
}

// ---- API -----------------------------------------------------------------------------------

/// Stored embedding sets, newest first.
#[utoipa::path(get, path = "/api/v1/genmetrics/sets", tag = "genmetrics",
    responses((status = 200, body = Vec<EmbeddingSet>)))]
pub(crate) async fn list_sets_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<EmbeddingSet>>, AppError> {
    Ok(ApiJson(store::list_sets(&state.pool).await?))
}

/// Upload an embedding set (multipart: `name`, `file`, optional `dim` for raw f32 and
/// `tensor` for safetensors). The same content uploaded twice returns the first set.
#[utoipa::path(post, path = "/api/v1/genmetrics/sets", tag = "genmetrics",
    request_body(content_type = "multipart/form-data", description = "fields name, file, dim, tensor"),
    responses((status = 201, body = EmbeddingSet), (status = 413), (status = 422)))]
pub(crate) async fn upload_set_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    multipart: Multipart,
) -> Result<(StatusCode, ApiJson<EmbeddingSet>), AppError> {
    let upload = read_upload(multipart, state.config.upload_limit).await?;
    let stored =
        store::insert_inline_set(&state.pool, &upload.name, "", &upload.set, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(stored)))
}

/// Stored results, newest first.
#[utoipa::path(get, path = "/api/v1/genmetrics/results", tag = "genmetrics",
    responses((status = 200, body = Vec<PprResult>)))]
pub(crate) async fn list_results_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<PprResult>>, AppError> {
    Ok(ApiJson(store::list_results(&state.pool).await?))
}

#[utoipa::path(get, path = "/api/v1/genmetrics/results/{id}", tag = "genmetrics",
    params(("id" = i64, Path, description = "result id")),
    responses((status = 200, body = PprResult), (status = 404)))]
pub(crate) async fn get_result_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<PprResult>, AppError> {
    Ok(ApiJson(
        store::get_result(&state.pool, id)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

/// The job that computes (or already computed) a result.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Enqueued {
    pub job_id: i64,
}

/// Compute PP&PR and the baselines for two stored sets (as a job).
#[utoipa::path(post, path = "/api/v1/genmetrics/results", tag = "genmetrics", request_body = ComputeRequest,
    responses((status = 202, body = Enqueued), (status = 422)))]
pub(crate) async fn compute_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<ComputeRequest>,
) -> Result<(StatusCode, ApiJson<Enqueued>), AppError> {
    let job_id = enqueue_compute(&state, &user, request).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(Enqueued { job_id })))
}

/// The newest run of each toy experiment.
#[utoipa::path(get, path = "/api/v1/genmetrics/toy", tag = "genmetrics",
    responses((status = 200, body = Vec<ToyRun>)))]
pub(crate) async fn list_toy_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<ToyRun>>, AppError> {
    Ok(ApiJson(store::latest_toy_runs(&state.pool).await?))
}

/// Run a toy experiment (as a job).
#[utoipa::path(post, path = "/api/v1/genmetrics/toy", tag = "genmetrics", request_body = ToyRequest,
    responses((status = 202, body = Enqueued), (status = 422)))]
pub(crate) async fn run_toy_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<ToyRequest>,
) -> Result<(StatusCode, ApiJson<Enqueued>), AppError> {
    let job_id = enqueue_toy(&state, &user, request).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(Enqueued { job_id })))
}
