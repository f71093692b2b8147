//! `/api/v1`: the JSON API (Bearer API tokens or a session cookie plus `X-CSRF-Token`), with
//! its OpenAPI document at `/api/openapi.json` and Swagger UI at `/api/docs/`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

use super::error::{ApiJson, AppPath, AppQuery};
use super::{ADMIN, ANNOTATOR, AppError, AppState, CurrentUser, RESEARCHER, Routes};
use crate::accounts::{self, ApiToken, Role, User};
use crate::jobs::{self, Job};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/api/v1/me", ANNOTATOR, get(me))
        .get("/api/v1/tokens", ANNOTATOR, get(list_tokens))
        .post("/api/v1/tokens", ANNOTATOR, post(create_token))
        .delete("/api/v1/tokens/{id}", ANNOTATOR, delete(revoke_token))
        .get("/api/v1/users", ADMIN, get(list_users))
        .post("/api/v1/users", ADMIN, post(create_user))
        .get("/api/v1/jobs", RESEARCHER, get(list_jobs))
        .get("/api/v1/jobs/{id}", RESEARCHER, get(get_job))
        .post("/api/v1/jobs/{id}/cancel", RESEARCHER, post(cancel_job))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "elite API", description = "Evaluate the safety and quality of vision models."),
    paths(
        me, list_tokens, create_token, revoke_token, list_users, create_user, list_jobs, get_job, cancel_job,
        super::admin::disable_api, super::admin::enable_api, super::admin::tokens_api, super::admin::revoke_api,
        super::genmetrics::list_sets_api, super::genmetrics::upload_set_api, super::genmetrics::list_results_api,
        super::genmetrics::get_result_api, super::genmetrics::compute_api, super::genmetrics::list_toy_api,
        super::genmetrics::run_toy_api, super::compression::list_api, super::compression::run_api,
        super::compression::import_api,
        super::training::list_api, super::training::create_api, super::training::get_api,
        super::inversion::list_api, super::inversion::create_api, super::inversion::get_api,
        super::inversion::score_api, super::inversion::repair_api, super::inversion::cancel_api,
        super::safety::list_benchmarks_api, super::safety::list_items_api,
        super::safety::import_items_api, super::safety::import_elite_api, super::safety::filter_api, super::safety::generate_api, super::safety::align_api, super::safety::merge_api,
        super::models::list_api, super::models::get_api, super::models::register_api,
        super::models::update_api, super::models::revisions_api,
        super::runs::list_api, super::runs::start_api, super::runs::results_api, super::runs::export_api, super::runs::cancel_api, super::runs::retry_api,
        super::runs::get_api, super::runs::progress_api, super::runs::list_evaluations_api, super::runs::add_evaluation_api,
        super::runs::item_api, super::runs::override_api,
        super::paper::list_api, super::paper::replace_api,
        super::annotation::list_api, super::annotation::create_api, super::annotation::get_api,
        super::annotation::add_members_api, super::annotation::remove_member_api, super::annotation::next_api,
        super::annotation::label_api, super::annotation::undo_api, super::annotation::agreement_api,
        super::annotation::alignment_api, super::annotation::export_api, super::annotation::import_api,
    ),
    components(schemas(ErrorEnvelope, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Swagger UI and the OpenAPI document.
pub(crate) fn swagger() -> SwaggerUi {
    SwaggerUi::new("/api/docs").url("/api/openapi.json", ApiDoc::openapi())
}

/// The error envelope every API error uses.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    code: String,
    message: String,
}

/// One page of a list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct Pagination {
    /// At most this many items (1-500, default 50).
    limit: Option<i64>,
    /// Skip this many items.
    offset: Option<i64>,
}

impl Pagination {
    /// The page size and offset; out-of-range values are refused, never clamped.
    fn checked(&self) -> Result<(i64, i64), AppError> {
        page_bounds(self.limit, self.offset)
    }
}

/// A page size of 1-500 (default 50) and a non-negative offset, or 422.
pub(crate) fn page_bounds(limit: Option<i64>, offset: Option<i64>) -> Result<(i64, i64), AppError> {
    let limit = limit.unwrap_or(50);
    let offset = offset.unwrap_or(0);
    if !(1..=500).contains(&limit) {
        return Err(AppError::Invalid(format!(
            "limit must be between 1 and 500, not {limit}"
        )));
    }
    if !(0..=1_000_000_000).contains(&offset) {
        return Err(AppError::Invalid(format!(
            "offset must be between 0 and 1000000000, not {offset}"
        )));
    }
    Ok((limit, offset))
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts",
    responses((status = 200, body = User), (status = 401, body = ErrorEnvelope)))]
async fn me(CurrentUser(user): CurrentUser) -> ApiJson<User> {
    ApiJson(user)
}

/// Your API tokens (without their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "accounts",
    responses((status = 200, body = Vec<ApiToken>), (status = 401, body = ErrorEnvelope)))]
async fn list_tokens(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<ApiJson<Vec<ApiToken>>, AppError> {
    Ok(ApiJson(
        accounts::list_api_tokens(&state.pool, user.id).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// A name to recognise the token by (1-100 characters).
    name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    token: ApiToken,
    /// The secret: shown this once, store it now.
    secret: String,
}

/// Create an API token; the response carries its secret, which is never shown again.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "accounts", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 422, body = ErrorEnvelope)))]
async fn create_token(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, ApiJson<CreatedToken>), AppError> {
    let (token, secret) = accounts::create_api_token(&state.pool, user.id, &body.name).await?;
    Ok((StatusCode::CREATED, ApiJson(CreatedToken { token, secret })))
}

/// Revoke one of your API tokens.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "accounts",
    params(("id" = i64, Path, description = "token id")),
    responses((status = 204), (status = 404, body = ErrorEnvelope)))]
async fn revoke_token(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<StatusCode, AppError> {
    if accounts::revoke_api_token(&state.pool, user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound)
    }
}

/// All users (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "accounts",
    responses((status = 200, body = Vec<User>), (status = 403, body = ErrorEnvelope)))]
async fn list_users(State(state): State<AppState>) -> Result<ApiJson<Vec<User>>, AppError> {
    Ok(ApiJson(accounts::list_users(&state.pool).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    username: String,
    password: String,
    role: Role,
}

/// Create a user (admin).
#[utoipa::path(post, path = "/api/v1/users", tag = "accounts", request_body = NewUser,
    responses((status = 201, body = User), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn create_user(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, ApiJson<User>), AppError> {
    let user =
        accounts::create_user(&state.pool, body.username.trim(), &body.password, body.role).await?;
    Ok((StatusCode::CREATED, ApiJson(user)))
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(Pagination),
    responses((status = 200, body = Page<Job>)))]
async fn list_jobs(
    State(state): State<AppState>,
    AppQuery(page): AppQuery<Pagination>,
) -> Result<ApiJson<Page<Job>>, AppError> {
    let (limit, offset) = page.checked()?;
    let items = jobs::list_recent(&state.pool, limit, offset).await?;
    Ok(ApiJson(Page {
        items,
        limit,
        offset,
    }))
}

/// One job with its progress.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorEnvelope)))]
async fn get_job(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Job>, AppError> {
    Ok(ApiJson(
        jobs::get(&state.pool, id)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

/// Cancel a queued or running job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = i64, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
async fn cancel_job(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Job>, AppError> {
    jobs::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if !jobs::cancel(&state.pool, id).await? {
        return Err(AppError::Conflict("the job has already finished".into()));
    }
    Ok(ApiJson(
        jobs::get(&state.pool, id)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}
