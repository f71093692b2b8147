//! Benchmarks in the browser and under `/api/v1/benchmarks`: the list, the item browser,
//! imports (a file sent as the body, or the ELITE release from the server's disk for admins)
//! and generation, which are checked here and run as jobs (`safety::import_jobs`: 202 with the
//! job id, the job page shows progress), building benchmarks from others (merge, taxonomy
//! alignment, victim filter), and content-addressed images.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath, AppQuery};
use super::pages::PageCtx;
use super::{ADMIN, ANNOTATOR, AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::safety::construct::{
    self, AlignRequest, AlignSummary, FilterRequest, FilterSummary, MergeRequest, MergeSummary,
};
use crate::safety::generate::{GenerationRequest, Method};
use crate::safety::image::ImageLimits;
use crate::safety::import_jobs::{self, GENERATE_JOB, IMPORT_ELITE_JOB, IMPORT_ITEMS_JOB};
use crate::safety::store::{self, Benchmark, Item, ItemFilter, StoreError};
use crate::safety::taxonomy::Category;

pub(crate) fn routes(routes: Routes, upload_limit: usize) -> Routes {
    routes
        .post(
            "/api/v1/benchmarks/import/items",
            RESEARCHER,
            post(import_items_api).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .post(
            "/api/v1/benchmarks/import/elite",
            ADMIN,
            post(import_elite_api),
        )
        .post(
            "/api/v1/benchmarks/generate",
            RESEARCHER,
            post(generate_api).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .post("/api/v1/benchmarks/merge", RESEARCHER, post(merge_api))
        .post("/api/v1/benchmarks/{id}/align", RESEARCHER, post(align_api))
        .post(
            "/api/v1/benchmarks/{id}/filter",
            RESEARCHER,
            post(filter_api),
        )
        .get("/safety", RESEARCHER, get(benchmarks_page))
        .get("/safety/benchmarks/{id}", RESEARCHER, get(items_page))
        .post("/safety/benchmarks/filter", RESEARCHER, post(filter_page))
        .post("/safety/benchmarks/align", RESEARCHER, post(align_page))
        .post("/safety/benchmarks/merge", RESEARCHER, post(merge_page))
        .post(
            "/safety/benchmarks/generate",
            RESEARCHER,
            post(generate_page),
        )
        .get("/images/{sha256}", ANNOTATOR, get(image))
        .get("/api/v1/benchmarks", RESEARCHER, get(list_benchmarks_api))
        .get(
            "/api/v1/benchmarks/{id}/items",
            RESEARCHER,
            get(list_items_api),
        )
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sql(e) => e.into(),
            other => AppError::Invalid(other.to_string()),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/benchmarks.html")]
struct BenchmarksPage {
    ctx: PageCtx,
    benchmarks: Vec<Benchmark>,
}

async fn benchmarks_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<BenchmarksPage, AppError> {
    let benchmarks = store::list_benchmarks(&state.pool).await?;
    Ok(BenchmarksPage {
        ctx: PageCtx::new("Safety", "safety", Some(user), &csrf),
        benchmarks,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/items.html")]
struct ItemsPage {
    ctx: PageCtx,
    benchmark: Benchmark,
    items: Vec<Item>,
    total: i64,
    first: i64,
    last: i64,
    prev_offset: Option<i64>,
    next_offset: Option<i64>,
    categories: Vec<(String, &'static str)>,
    sources: Vec<String>,
    filter_category: String,
    filter_source: String,
    filter_q: String,
}

async fn items_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
    AppQuery(filter): AppQuery<ItemFilter>,
) -> Result<ItemsPage, AppError> {
    let benchmark = store::get_benchmark(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let (limit, offset) = super::api::page_bounds(filter.limit, filter.offset)?;
    let (items, total) = store::list_items(&state.pool, id, &filter).await?;
    let shown = items.len() as i64;
    Ok(ItemsPage {
        ctx: PageCtx::new(benchmark.name.clone(), "safety", Some(user), &csrf),
        first: offset + 1,
        last: offset + shown,
        prev_offset: (offset > 0).then(|| (offset - limit).max(0)),
        next_offset: (offset + shown < total).then_some(offset + limit),
        benchmark,
        items,
        total,
        categories: Category::ALL
            .iter()
            .map(|c| (c.code().to_string(), c.name()))
            .collect(),
        sources: store::sources(&state.pool, id).await?,
        filter_category: filter.category.unwrap_or_default(),
        filter_source: filter.source.unwrap_or_default(),
        filter_q: filter.q.unwrap_or_default(),
    })
}

fn whole_numbers(text: &str, field: &str) -> Result<Vec<i64>, AppError> {
    text.split([',', ' '])
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .map_err(|_| AppError::Invalid(format!("{field}: {t:?} is not a whole number")))
        })
        .collect()
}

#[derive(Deserialize)]
struct FilterForm {
    source: i64,
    runs: String,
    min_unsafe: Option<String>,
    threshold: Option<String>,
    per_category: Option<String>,
    /// One exemption per line: `SOURCE` or `SOURCE=S3,S10`.
    exempt: Option<String>,
    name: String,
}

/// The benchmarks page's filter form: victims' runs in, a new benchmark out.
async fn filter_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<FilterForm>,
) -> Result<Redirect, AppError> {
    let defaults = construct::FilterRule::default();
    let request = FilterRequest {
        runs: whole_numbers(&form.runs, "victim runs")?,
        rule: construct::FilterRule {
            min_unsafe: super::form_number(&form.min_unsafe, "min unsafe")?
                .unwrap_or(defaults.min_unsafe),
            threshold: super::form_number(&form.threshold, "threshold")?
                .unwrap_or(defaults.threshold),
            per_category: super::form_number(&form.per_category, "per category")?,
            exempt: form
                .exempt
                .as_deref()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(construct::MAX_EXEMPTIONS + 1)
                .map(|l| {
                    construct::parse_exemption(l)
                        .map_err(|e| AppError::Invalid(format!("exempt sources: {e}")))
                })
                .collect::<Result<_, _>>()?,
        },
        name: form.name,
    };
    let summary =
        construct::filter_benchmark(&state.pool, form.source, &request, Some(user.id)).await?;
    Ok(Redirect::to(&format!(
        "/safety/benchmarks/{}",
        summary.benchmark.id
    )))
}

#[derive(Deserialize)]
struct AlignForm {
    source: i64,
    run: i64,
    name: String,
}

/// The benchmarks page's taxonomy-alignment form.
async fn align_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<AlignForm>,
) -> Result<Redirect, AppError> {
    let request = AlignRequest {
        run: form.run,
        name: form.name,
    };
    let summary =
        construct::align_benchmark(&state.pool, form.source, &request, Some(user.id)).await?;
    Ok(Redirect::to(&format!(
        "/safety/benchmarks/{}",
        summary.benchmark.id
    )))
}

#[derive(Deserialize)]
struct MergeForm {
    /// Benchmark ids, comma-separated.
    sources: String,
    name: String,
}

/// The benchmarks page's merge form.
async fn merge_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<MergeForm>,
) -> Result<Redirect, AppError> {
    let request = MergeRequest {
        sources: whole_numbers(&form.sources, "benchmarks")?,
        name: form.name,
    };
    let summary = construct::merge_benchmarks(&state.pool, &request, Some(user.id)).await?;
    Ok(Redirect::to(&format!(
        "/safety/benchmarks/{}",
        summary.benchmark.id
    )))
}

#[derive(Deserialize)]
struct GenerateForm {
    name: String,
    /// One seed per line: JSON objects (category, instruction, optional benign, method, title,
    /// steps, image, caption).
    seeds: String,
    /// One method for every seed that names none; empty: the paper's four in turn.
    method: Option<String>,
}

/// The benchmarks page's generation form: checked here, generated by a job whose page shows
/// the progress.
async fn generate_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<GenerateForm>,
) -> Result<Redirect, AppError> {
    let mut seeds = Vec::new();
    for (n, line) in form.seeds.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if seeds.len() == crate::safety::generate::MAX_SEEDS {
            return Err(AppError::Invalid(format!(
                "at most {} seeds per request",
                crate::safety::generate::MAX_SEEDS
            )));
        }
        seeds.push(
            serde_json::from_str(line)
                .map_err(|e| AppError::Invalid(format!("seed line {}: {e}", n + 1)))?,
        );
    }
    let methods = match form.method.as_deref().map(str::trim) {
        None | Some("") => vec![
            Method::RolePlay,
            Method::FakeNews,
            Method::Blueprint,
            Method::Flowchart,
        ],
        Some(m) => vec![
            Method::parse(m).ok_or_else(|| AppError::Invalid(format!("unknown method {m:?}")))?,
        ],
    };
    let request = GenerationRequest {
        name: form.name,
        seeds,
        methods,
        pair_types: crate::safety::import::PairType::ALL.to_vec(),
    };
    let job = enqueue_generation(&state, &user, &request).await?;
    Ok(Redirect::to(&format!("/jobs/{job}")))
}

/// Check a generation request and enqueue its job.
async fn enqueue_generation(
    state: &AppState,
    user: &crate::accounts::User,
    request: &GenerationRequest,
) -> Result<i64, AppError> {
    crate::safety::generate::plan(request).map_err(AppError::Invalid)?;
    let bytes = serde_json::to_vec(request).map_err(AppError::internal)?;
    let (job, _) = import_jobs::enqueue_upload(
        &state.pool,
        GENERATE_JOB,
        &bytes,
        Some(user.id),
        |upload| serde_json::json!({ "upload_id": upload, "created_by": user.id }),
    )
    .await?;
    Ok(job)
}

/// An image by content hash: immutable, so cached for a year.
async fn image(
    State(state): State<AppState>,
    AppPath(sha256): AppPath<String>,
) -> Result<Response, AppError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AppError::NotFound);
    }
    let (bytes, format) = store::image(&state.pool, &sha256.to_ascii_lowercase())
        .await?
        .ok_or(AppError::NotFound)?;
    let content_type = match format.as_str() {
        "png" => "image/png",
        "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        _ => "application/octet-stream",
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(response)
}

/// Benchmarks, by name and newest version first.
#[utoipa::path(get, path = "/api/v1/benchmarks", tag = "safety", responses((status = 200, body = Vec<Benchmark>)))]
pub(crate) async fn list_benchmarks_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<Benchmark>>, AppError> {
    Ok(ApiJson(store::list_benchmarks(&state.pool).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    pub total: i64,
}

/// A benchmark's items, filtered and paginated.
#[utoipa::path(get, path = "/api/v1/benchmarks/{id}/items", tag = "safety",
    params(("id" = i64, Path, description = "benchmark id"), ItemFilter),
    responses((status = 200, body = ItemPage), (status = 404)))]
pub(crate) async fn list_items_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    AppQuery(filter): AppQuery<ItemFilter>,
) -> Result<ApiJson<ItemPage>, AppError> {
    store::get_benchmark(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    super::api::page_bounds(filter.limit, filter.offset)?;
    let (items, total) = store::list_items(&state.pool, id, &filter).await?;
    Ok(ApiJson(ItemPage { items, total }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ImportItemsQuery {
    /// Benchmark name (a new version is created when it exists).
    name: String,
    /// `jsonl` (default) or `csv`.
    format: Option<String>,
}

/// The job that imports or generates a benchmark; its result is the import summary.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportJob {
    pub job_id: i64,
    /// The job's page (progress, then the result).
    pub page: String,
}

fn accepted(job_id: i64) -> (StatusCode, ApiJson<ImportJob>) {
    (
        StatusCode::ACCEPTED,
        ApiJson(ImportJob {
            job_id,
            page: format!("/jobs/{job_id}"),
        }),
    )
}

/// Import a generic benchmark file sent as the request body (JSONL or CSV), as a job. The file
/// is parsed here (an unreadable file is refused with 422 and nothing stored), then stored and
/// imported by the `safety.import_items` job, whose result is the import summary. Images must
/// be inline base64 here; image paths are reported missing (use the CLI or the admin import to
/// read images from the server's disk).
#[utoipa::path(post, path = "/api/v1/benchmarks/import/items", tag = "safety", params(ImportItemsQuery),
    request_body(content = String, description = "JSONL or CSV file", content_type = "application/octet-stream"),
    responses((status = 202, body = ImportJob), (status = 413), (status = 422)))]
pub(crate) async fn import_items_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppQuery(query): AppQuery<ImportItemsQuery>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, ApiJson<ImportJob>), AppError> {
    use crate::safety::import::{parse_generic_csv, parse_generic_jsonl};
    let name = query.name.trim().to_string();
    if name.is_empty() {
        return Err(AppError::Invalid("the benchmark needs a name".into()));
    }
    let csv = match query.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => false,
        "csv" => true,
        other => {
            return Err(AppError::Invalid(format!(
                "unknown format {other:?}: jsonl or csv"
            )));
        }
    };
    if name.chars().count() > 200 {
        return Err(AppError::Invalid(
            "a benchmark needs a name of 1-200 characters".into(),
        ));
    }
    let (body, rows) = tokio::task::spawn_blocking(move || {
        let limits = ImageLimits::default();
        let rows = if csv {
            parse_generic_csv(&body, limits)?.rows.len()
        } else {
            parse_generic_jsonl(&body, limits).rows.len()
        };
        anyhow::Ok((body, rows))
    })
    .await
    .map_err(AppError::internal)?
    .map_err(|e| AppError::Invalid(e.to_string()))?;
    if rows == 0 {
        return Err(AppError::Invalid(
            "the file holds no importable rows".into(),
        ));
    }
    let (job, _) = import_jobs::enqueue_upload(
        &state.pool,
        IMPORT_ITEMS_JOB,
        &body,
        Some(user.id),
        |upload| {
            serde_json::json!({
                "upload_id": upload, "name": name, "csv": csv, "images": null,
                "source": "api upload", "created_by": user.id,
            })
        },
    )
    .await?;
    Ok(accepted(job))
}

/// Where the ELITE release lies on the server's disk.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct EliteImportRequest {
    /// Path of `ELITE-benchmark.csv` on the server.
    pub csv: String,
    /// Image root on the server (`{root}/{taxonomy}/{name}` or `{root}/{code}/{name}`).
    pub images: Option<String>,
    #[serde(default = "default_elite_name")]
    pub name: String,
}

fn default_elite_name() -> String {
    "ELITE".into()
}

/// Largest ELITE CSV accepted (the release is about 1 MB).
const MAX_ELITE_CSV_BYTES: u64 = 64 * 1024 * 1024;

/// Import the ELITE release from files on the server (admins only: it reads server paths), as
/// a job: the CSV is read and parsed here (422 when it is not the release's format), the images
/// are checked and stored by the `safety.import_elite` job, whose result is the summary.
#[utoipa::path(post, path = "/api/v1/benchmarks/import/elite", tag = "safety", request_body = EliteImportRequest,
    responses((status = 202, body = ImportJob), (status = 403), (status = 422)))]
pub(crate) async fn import_elite_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<EliteImportRequest>,
) -> Result<(StatusCode, ApiJson<ImportJob>), AppError> {
    use crate::safety::import::parse_elite_csv;
    let name = request.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::Invalid(
            "a benchmark needs a name of 1-200 characters".into(),
        ));
    }
    let csv = super::server_paths::resolve(&state.config, &user, &request.csv)?;
    let images = match &request.images {
        Some(dir) => Some(super::server_paths::resolve(&state.config, &user, dir)?),
        None => None,
    };
    let bytes = tokio::task::spawn_blocking(move || {
        if std::fs::metadata(&csv)?.len() > MAX_ELITE_CSV_BYTES {
            anyhow::bail!("too large");
        }
        let bytes = std::fs::read(&csv)?;
        parse_elite_csv(&bytes)?;
        anyhow::Ok(bytes)
    })
    .await
    .map_err(AppError::internal)?
    // The reason may quote the file; a server file's contents never travel in an error.
    .map_err(|_| {
        AppError::Invalid(format!(
            "the file is not an ELITE CSV (UTF-8, with the release's five columns, at most {} MB)",
            MAX_ELITE_CSV_BYTES >> 20
        ))
    })?;
    let source = format!("elite-csv:{}", request.csv);
    let (job, _) = import_jobs::enqueue_upload(
        &state.pool,
        IMPORT_ELITE_JOB,
        &bytes,
        Some(user.id),
        |upload| {
            serde_json::json!({
                "upload_id": upload, "name": name, "images": images,
                "source": source, "created_by": user.id,
            })
        },
    )
    .await?;
    Ok(accepted(job))
}

/// Build a new benchmark from this one: keep the pairs that enough victim models answered
/// unsafely (by their runs' ELITE judgements), balancing over-full categories.
#[utoipa::path(post, path = "/api/v1/benchmarks/{id}/filter", tag = "safety", request_body = FilterRequest,
    params(("id" = i64, Path, description = "source benchmark id")),
    responses((status = 201, body = FilterSummary), (status = 404), (status = 422)))]
pub(crate) async fn filter_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(request): ApiJson<FilterRequest>,
) -> Result<(StatusCode, ApiJson<FilterSummary>), AppError> {
    store::get_benchmark(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let summary = construct::filter_benchmark(&state.pool, id, &request, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(summary)))
}

/// Generate image-text pairs from seeds with the paper's methods (role play with the seed's
/// photo, fake news, blueprint and flowchart images drawn by the server with the seed's text,
/// typographic, and safe-safe combinations) as a new benchmark, as a job. The request is
/// checked here (422 and nothing stored when it is not valid); the `safety.generate_pairs`
/// job's result is a `GenerationSummary`.
#[utoipa::path(post, path = "/api/v1/benchmarks/generate", tag = "safety", request_body = GenerationRequest,
    responses((status = 202, body = ImportJob), (status = 422)))]
pub(crate) async fn generate_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<GenerationRequest>,
) -> Result<(StatusCode, ApiJson<ImportJob>), AppError> {
    let job = enqueue_generation(&state, &user, &request).await?;
    Ok(accepted(job))
}

/// Build one benchmark from several (matched and generated pairs, say), so that victims answer
/// and the filter balances over their union: the pairs in the order of `sources`, sharing their
/// images; a pair without a source data set gets its benchmark's name as one.
#[utoipa::path(post, path = "/api/v1/benchmarks/merge", tag = "safety", request_body = MergeRequest,
    responses((status = 201, body = MergeSummary), (status = 422)))]
pub(crate) async fn merge_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(request): ApiJson<MergeRequest>,
) -> Result<(StatusCode, ApiJson<MergeSummary>), AppError> {
    let summary = construct::merge_benchmarks(&state.pool, &request, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(summary)))
}

/// Build a new benchmark from this one with the categories a model gave in a taxonomy-alignment
/// run (a run started with `prompt_template: "taxonomy"`); N/A and unreadable answers are dropped
/// and listed.
#[utoipa::path(post, path = "/api/v1/benchmarks/{id}/align", tag = "safety", request_body = AlignRequest,
    params(("id" = i64, Path, description = "source benchmark id")),
    responses((status = 201, body = AlignSummary), (status = 404), (status = 422)))]
pub(crate) async fn align_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(request): ApiJson<AlignRequest>,
) -> Result<(StatusCode, ApiJson<AlignSummary>), AppError> {
    store::get_benchmark(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let summary = construct::align_benchmark(&state.pool, id, &request, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(summary)))
}
