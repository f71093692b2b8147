//! The model registry's page and `/api/v1/models`: list and register targets and judges.
//! Handlers store specs; models are only loaded by workers and the CLI.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath};
use super::pages::PageCtx;
use super::{AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::inference::store::{self, RegisteredModel, RegistryError};
use crate::inference::{AdapterKind, ModelSpec};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/safety/models", RESEARCHER, get(models_page))
        .post("/safety/models", RESEARCHER, post(register_page))
        .get("/api/v1/models", RESEARCHER, get(list_api))
        .post("/api/v1/models", RESEARCHER, post(register_api))
        .get("/api/v1/models/{name}", RESEARCHER, get(get_api))
}

impl From<RegistryError> for AppError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Spec(e) => AppError::Invalid(e.to_string()),
            RegistryError::NoSuchModel(_) => AppError::NotFound,
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
    notice: Option<String>,
}

async fn render(
    state: &AppState,
    user: crate::accounts::User,
    csrf: &CsrfToken,
    notice: Option<String>,
) -> Result<ModelsPage, AppError> {
    Ok(ModelsPage {
        ctx: PageCtx::new("Models", "safety", Some(user), csrf),
        models: store::list(&state.pool).await?,
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
    let (model, replaced) = store::upsert(&state.pool, &spec, Some(user.id)).await?;
    let notice = format!(
        "{} {}.",
        if replaced { "Updated" } else { "Registered" },
        model.name
    );
    render(&state, user, &csrf, Some(notice)).await
}

/// Registered models.
#[utoipa::path(get, path = "/api/v1/models", tag = "models", responses((status = 200, body = Vec<RegisteredModel>)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<RegisteredModel>>, AppError> {
    Ok(ApiJson(store::list(&state.pool).await?))
}

/// One model by name.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = RegisteredModel), (status = 404)))]
pub(crate) async fn get_api(
    State(state): State<AppState>,
    AppPath(name): AppPath<String>,
) -> Result<ApiJson<RegisteredModel>, AppError> {
    Ok(ApiJson(store::get(&state.pool, &name).await?))
}

/// Register a model (a `ModelSpec`); an existing name is updated (200) rather than created (201).
#[utoipa::path(post, path = "/api/v1/models", tag = "models", request_body(content = Object, description = "ModelSpec"),
    responses((status = 201, body = RegisteredModel), (status = 200, body = RegisteredModel), (status = 422)))]
pub(crate) async fn register_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(spec): ApiJson<ModelSpec>,
) -> Result<(StatusCode, ApiJson<RegisteredModel>), AppError> {
    let (model, replaced) = store::upsert(&state.pool, &spec, Some(user.id)).await?;
    Ok((
        if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        ApiJson(model),
    ))
}
