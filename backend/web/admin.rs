//! User administration beyond the users page: disabling and enabling accounts, and seeing and
//! revoking anyone's API tokens, as pages under `/admin/users/{id}` and as JSON under
//! `/api/v1/admin/users/{id}`. Every route here requires the admin role. Disabling ends the
//! user's sessions and revokes their tokens (see [`crate::accounts::set_disabled_by_id`]).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{delete, get, post};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppPath};
use super::pages::PageCtx;
use super::{ADMIN, AppError, AppState, Routes};
use crate::accounts::{self, ApiToken, Role, User};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .post("/admin/users/{id}/disable", ADMIN, post(disable_page))
        .post("/admin/users/{id}/enable", ADMIN, post(enable_page))
        .get("/admin/users/{id}/tokens", ADMIN, get(tokens_page))
        .post(
            "/admin/users/{id}/tokens/{token_id}/revoke",
            ADMIN,
            post(revoke_page),
        )
        .post("/api/v1/admin/users/{id}/disable", ADMIN, post(disable_api))
        .post("/api/v1/admin/users/{id}/enable", ADMIN, post(enable_api))
        .get("/api/v1/admin/users/{id}/tokens", ADMIN, get(tokens_api))
        .delete(
            "/api/v1/admin/users/{id}/tokens/{token_id}",
            ADMIN,
            delete(revoke_api),
        )
}

/// Disable or enable `id` on behalf of `admin`, who may not disable themselves.
async fn set_disabled(
    state: &AppState,
    admin: &User,
    id: i64,
    disabled: bool,
) -> Result<User, AppError> {
    if disabled && admin.id == id {
        return Err(AppError::Conflict(
            "you cannot disable your own account".into(),
        ));
    }
    let user = accounts::set_disabled_by_id(&state.pool, id, disabled).await?;
    tracing::info!(admin = %admin.username, user = %user.username, disabled, "account status changed");
    Ok(user)
}

async fn user_or_404(state: &AppState, id: i64) -> Result<User, AppError> {
    accounts::get_user(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)
}

async fn revoke(state: &AppState, admin: &User, id: i64, token_id: i64) -> Result<(), AppError> {
    if !accounts::revoke_api_token(&state.pool, id, token_id).await? {
        return Err(AppError::NotFound);
    }
    tracing::info!(admin = %admin.username, user_id = id, token_id, "API token revoked by an admin");
    Ok(())
}

async fn disable_page(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    set_disabled(&state, &admin, id, true).await?;
    Ok(Redirect::to("/admin/users"))
}

async fn enable_page(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    set_disabled(&state, &admin, id, false).await?;
    Ok(Redirect::to("/admin/users"))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/tokens.html")]
struct TokensPage {
    ctx: PageCtx,
    subject: User,
    tokens: Vec<ApiToken>,
}

async fn tokens_page(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
) -> Result<TokensPage, AppError> {
    let subject = user_or_404(&state, id).await?;
    let tokens = accounts::list_api_tokens(&state.pool, id).await?;
    Ok(TokensPage {
        ctx: PageCtx::new(
            format!("Tokens of {}", subject.username),
            "admin",
            Some(admin),
            &csrf,
        ),
        subject,
        tokens,
    })
}

async fn revoke_page(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath((id, token_id)): AppPath<(i64, i64)>,
) -> Result<Redirect, AppError> {
    revoke(&state, &admin, id, token_id).await?;
    Ok(Redirect::to(&format!("/admin/users/{id}/tokens")))
}

/// Disable a user (admin): ends their sessions and revokes their API tokens.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/disable", tag = "accounts",
    params(("id" = i64, Path, description = "user id")),
    responses((status = 200, body = User), (status = 404, body = super::api::ErrorEnvelope),
        (status = 409, body = super::api::ErrorEnvelope)))]
pub(crate) async fn disable_api(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<User>, AppError> {
    Ok(ApiJson(set_disabled(&state, &admin, id, true).await?))
}

/// Enable a disabled user (admin). Revoked tokens stay revoked.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/enable", tag = "accounts",
    params(("id" = i64, Path, description = "user id")),
    responses((status = 200, body = User), (status = 404, body = super::api::ErrorEnvelope)))]
pub(crate) async fn enable_api(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<User>, AppError> {
    Ok(ApiJson(set_disabled(&state, &admin, id, false).await?))
}

/// A user's active API tokens (admin; without their secrets).
#[utoipa::path(get, path = "/api/v1/admin/users/{id}/tokens", tag = "accounts",
    params(("id" = i64, Path, description = "user id")),
    responses((status = 200, body = Vec<ApiToken>), (status = 404, body = super::api::ErrorEnvelope)))]
pub(crate) async fn tokens_api(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Vec<ApiToken>>, AppError> {
    user_or_404(&state, id).await?;
    Ok(ApiJson(accounts::list_api_tokens(&state.pool, id).await?))
}

/// Revoke one of a user's API tokens (admin).
#[utoipa::path(delete, path = "/api/v1/admin/users/{id}/tokens/{token_id}", tag = "accounts",
    params(("id" = i64, Path, description = "user id"), ("token_id" = i64, Path, description = "token id")),
    responses((status = 204), (status = 404, body = super::api::ErrorEnvelope)))]
pub(crate) async fn revoke_api(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath((id, token_id)): AppPath<(i64, i64)>,
) -> Result<StatusCode, AppError> {
    revoke(&state, &admin, id, token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
