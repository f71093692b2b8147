//! Pages and `/api/v1` endpoints of the safety area that exist so far: benchmarks, the item
//! browser, and content-addressed images.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppPath, AppQuery};
use super::pages::PageCtx;
use super::{ANNOTATOR, AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::safety::store::{self, Benchmark, Item, ItemFilter, StoreError};
use crate::safety::taxonomy::Category;

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/safety", RESEARCHER, get(benchmarks_page))
        .get("/safety/benchmarks/{id}", RESEARCHER, get(items_page))
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
    let (items, total) = store::list_items(&state.pool, id, &filter).await?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let offset = filter.offset.unwrap_or(0).max(0);
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
    let (items, total) = store::list_items(&state.pool, id, &filter).await?;
    Ok(ApiJson(ItemPage { items, total }))
}
