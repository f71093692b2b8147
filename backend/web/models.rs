//! The model registry's page and `/api/v1/models`: list, register and update targets and
//! judges. Registering or changing a model names a server path, an endpoint or a server secret,
//! so it is for admins; researchers list and use models, and see them without those fields.
//! A name is owned: registering a taken name is 409, a change is an explicit `PUT` (kept as a
//! revision). Handlers store specs; models are only loaded by workers and the CLI.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath};
use super::pages::PageCtx;
use super::{ADMIN, AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::inference::store::{self, RegisteredModel, RegistryError};
use crate::inference::{AdapterKind, ModelSpec};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/safety/models", RESEARCHER, get(models_page))
        .post("/safety/models", ADMIN, post(register_page))
        .get("/api/v1/models", RESEARCHER, get(list_api))
        .post("/api/v1/models", ADMIN, post(register_api))
        .get("/api/v1/models/{name}", RESEARCHER, get(get_api))
        .put(
            "/api/v1/models/{name}",
            ADMIN,
            axum::routing::put(update_api),
        )
        .get("/api/v1/models/{name}/revisions", ADMIN, get(revisions_api))
}

impl From<RegistryError> for AppError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Spec(e) => AppError::Invalid(e.to_string()),
            RegistryError::NoSuchModel(_) => AppError::NotFound,
            RegistryError::Exists(_) => AppError::Conflict(e.to_string()),
            RegistryError::Rename(_) => AppError::Invalid(e.to_string()),
            RegistryError::Corrupt(..) => AppError::internal(e),
            RegistryError::Sql(e) => e.into(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/models.html")]
struct ModelsPage {
    ctx: PageCtx,
    models: Vec<RegisteredModel>,
    adapters: Vec<&'static str>,
    is_admin: bool,
    notice: Option<String>,
}

async fn render(
    state: &AppState,
    user: crate::accounts::User,
    csrf: &CsrfToken,
    notice: Option<String>,
) -> Result<ModelsPage, AppError> {
    let is_admin = user.role == Role::Admin;
    Ok(ModelsPage {
        ctx: PageCtx::new("Models", "safety", Some(user), csrf),
        models: visible(store::list(&state.pool).await?, is_admin),
        is_admin,
        adapters: AdapterKind::ALL.iter().map(|a| a.as_str()).collect(),
        notice,
    })
}

async fn models_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<ModelsPage, AppError> {
    render(&state, user, &csrf, None).await
}

#[derive(Deserialize)]
struct ModelForm {
    name: String,
    adapter: String,
    local_path: Option<String>,
    base_url: Option<String>,
    model_id: Option<String>,
    api_key_env: Option<String>,
    price_input_per_million: Option<String>,
    price_output_per_million: Option<String>,
}

/// A local model's path is a server path: it must lie under the server roots (see
/// `server_paths`); it is stored canonical. `hf:` references name no server path.
fn check_local_path(
    state: &AppState,
    user: &crate::accounts::User,
    mut spec: ModelSpec,
) -> Result<ModelSpec, AppError> {
    spec.validate()
        .map_err(|e| AppError::Invalid(e.to_string()))?;
    if let Some(path) = spec.local_path.as_deref()
        && spec.adapter.is_local()
        && !path.starts_with("hf:")
    {
        let canonical = super::server_paths::resolve(&state.config, user, path)?;
        spec.local_path = Some(canonical.to_string_lossy().into_owned());
    }
    Ok(spec)
}

/// What a user of this role may see of the models.
fn visible(models: Vec<RegisteredModel>, is_admin: bool) -> Vec<RegisteredModel> {
    if is_admin {
        models
    } else {
        models.into_iter().map(RegisteredModel::redacted).collect()
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn price(value: Option<String>, field: &str) -> Result<Option<f64>, AppError> {
    match non_empty(value) {
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p >= 0.0)
            .map(Some)
            .ok_or_else(|| {
                AppError::Invalid(format!("{field}: {text:?} is not a non-negative number"))
            }),
        None => Ok(None),
    }
}

async fn register_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppForm(form): AppForm<ModelForm>,
) -> Result<ModelsPage, AppError> {
    let adapter: AdapterKind = form
        .adapter
        .parse()
        .map_err(|e: crate::inference::InferenceError| AppError::Invalid(e.to_string()))?;
    let mut spec = if adapter.is_local() {
        ModelSpec::local(
            form.name.trim(),
            adapter,
            non_empty(form.local_path).unwrap_or_default(),
        )
    } else {
        ModelSpec::remote(
            form.name.trim(),
            non_empty(form.base_url).unwrap_or_default(),
            non_empty(form.model_id).unwrap_or_default(),
        )
    };
    spec.api_key_env = non_empty(form.api_key_env);
    spec.price_input_per_million =
        price(form.price_input_per_million, "price per 1M input tokens")?;
    spec.price_output_per_million =
        price(form.price_output_per_million, "price per 1M output tokens")?;
    let spec = check_local_path(&state, &user, spec)?;
    let model = store::create(&state.pool, &spec, Some(user.id)).await?;
    let notice = format!("Registered {}.", model.name);
    render(&state, user, &csrf, Some(notice)).await
}

/// Registered models (without server paths, endpoints and secret names unless the caller is
/// an admin).
#[utoipa::path(get, path = "/api/v1/models", tag = "models", responses((status = 200, body = Vec<RegisteredModel>)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<ApiJson<Vec<RegisteredModel>>, AppError> {
    let models = store::list(&state.pool).await?;
    Ok(ApiJson(visible(models, user.role == Role::Admin)))
}

/// One model by name.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = RegisteredModel), (status = 404)))]
pub(crate) async fn get_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(name): AppPath<String>,
) -> Result<ApiJson<RegisteredModel>, AppError> {
    let model = store::get(&state.pool, &name).await?;
    Ok(ApiJson(if user.role == Role::Admin {
        model
    } else {
        model.redacted()
    }))
}

/// Register a model (a `ModelSpec`; admins). A taken name is 409: change it with `PUT`.
#[utoipa::path(post, path = "/api/v1/models", tag = "models", request_body(content = Object, description = "ModelSpec"),
    responses((status = 201, body = RegisteredModel), (status = 409), (status = 422)))]
pub(crate) async fn register_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(spec): ApiJson<ModelSpec>,
) -> Result<(StatusCode, ApiJson<RegisteredModel>), AppError> {
    let spec = check_local_path(&state, &user, spec)?;
    let model = store::create(&state.pool, &spec, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(model)))
}

/// Change a registered model (admins); the replaced spec is kept as a revision, and runs keep
/// the spec they started with.
#[utoipa::path(put, path = "/api/v1/models/{name}", tag = "models", request_body(content = Object, description = "ModelSpec"),
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = RegisteredModel), (status = 404), (status = 422)))]
pub(crate) async fn update_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(name): AppPath<String>,
    ApiJson(spec): ApiJson<ModelSpec>,
) -> Result<ApiJson<RegisteredModel>, AppError> {
    let spec = check_local_path(&state, &user, spec)?;
    Ok(ApiJson(
        store::update(&state.pool, &name, &spec, Some(user.id)).await?,
    ))
}

/// The specs a model had before each change, newest first (admins).
#[utoipa::path(get, path = "/api/v1/models/{name}/revisions", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = Vec<store::Revision>), (status = 404)))]
pub(crate) async fn revisions_api(
    State(state): State<AppState>,
    AppPath(name): AppPath<String>,
) -> Result<ApiJson<Vec<store::Revision>>, AppError> {
    Ok(ApiJson(store::revisions(&state.pool, &name).await?))
}
