//! The paper's per-category Table 3 figures as an API: anyone signed in with the researcher
//! role reads them, only admins replace them (from their own copy of the paper; the platform
//! ships without them). Reading and checking the CSV is [`crate::safety::paper`]'s, storing it
//! [`crate::safety::paper_store`]'s.

use axum::extract::State;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};

use super::auth::CurrentUser;
use super::error::{ApiJson, AppQuery};
use super::{ADMIN, AppError, AppState, RESEARCHER, Routes};
use crate::safety::paper::parse_category_table;
use crate::safety::paper_store::{self, StoredFigure};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/api/v1/paper/categories", RESEARCHER, get(list_api))
        .put("/api/v1/paper/categories", ADMIN, put(replace_api))
}

/// The loaded per-category figures.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CategoryTable {
    /// How many figures are stored.
    pub figures: usize,
    pub rows: Vec<StoredFigure>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct ReplaceQuery {
    /// Where the figures come from (paper version and table), 1-500 characters.
    provenance: String,
}

/// The paper's per-category E-ASR figures an admin loaded (empty until then).
#[utoipa::path(get, path = "/api/v1/paper/categories", tag = "safety",
    responses((status = 200, body = CategoryTable)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
) -> Result<ApiJson<CategoryTable>, AppError> {
    let rows = paper_store::category_figures(&state.pool).await?;
    Ok(ApiJson(CategoryTable {
        figures: rows.len(),
        rows,
    }))
}

/// Replace the per-category figures with a CSV from the caller's copy of the paper: long
/// (`model,category,e_asr`) or as printed (`model,S1,...,S11`). A refused file changes nothing.
#[utoipa::path(put, path = "/api/v1/paper/categories", tag = "safety", params(ReplaceQuery),
    request_body(content = String, description = "CSV, at most 64 KiB", content_type = "text/csv"),
    responses((status = 200, body = CategoryTable), (status = 403), (status = 422)))]
pub(crate) async fn replace_api(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppQuery(query): AppQuery<ReplaceQuery>,
    body: axum::body::Bytes,
) -> Result<ApiJson<CategoryTable>, AppError> {
    let figures = parse_category_table(&body).map_err(AppError::Invalid)?;
    paper_store::replace_category_figures(&state.pool, &figures, &query.provenance, Some(admin.id))
        .await?;
    tracing::info!(admin = %admin.username, figures = figures.len(), "paper per-category figures replaced");
    list_api(State(state)).await
}
