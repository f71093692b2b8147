//! The web layer: axum router, the route table with each route's required role, middleware
//! (tracing, request ids, compression, body limits, CSRF, panics), error mapping, pages and
//! the `/api/v1` JSON API with its OpenAPI document. Handlers are thin: parse, call the domain
//! module, render. They never call a model: long work is enqueued as a job.

pub mod admin;
pub mod annotation;
pub mod api;
pub mod auth;
pub mod compression;
pub mod error;
pub mod events;
pub mod genmetrics;
pub mod hygiene;
pub mod inversion;
pub mod leaderboard;
pub mod models;
pub mod pages;
pub mod paper;
pub mod runs;
pub mod safety;
pub mod server_paths;
pub mod training;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Access, CurrentUser};
pub use error::{AppError, ErrorBody};

use crate::accounts::Role;

/// Largest request body accepted by default (forms and JSON). Upload routes set their own.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The Content-Security-Policy of every response, Swagger UI included (its page loads its
/// scripts and styles from files; nothing inline). Pages use no inline script, style
/// attribute or `on...` handler; charts are inline SVG with presentation attributes only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'; \
     img-src 'self' data:; style-src 'self'";

/// Settings of the web application.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Mark cookies `Secure` (serve behind HTTPS).
    pub secure_cookies: bool,
    /// Failed logins one client address gets per account before exponential back-off
    /// starts (see [`auth`] for the whole policy).
    pub login_max_failures: u32,
    /// Longest back-off, and the window of the per-address and per-account budgets.
    pub login_window: Duration,
    /// Failed logins one client address may make per window, across all usernames.
    pub login_address_max_failures: u32,
    /// Failed logins one account may receive per window from addresses that never signed
    /// into it.
    pub login_account_max_failures: u32,
    /// Largest file upload (embedding sets, images), in bytes.
    pub upload_limit: usize,
    /// Folders under which admins may name server paths (see [`server_paths`]).
    pub server_roots: Vec<std::path::PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            secure_cookies: false,
            login_max_failures: 10,
            login_window: Duration::from_secs(900),
            login_address_max_failures: 50,
            login_account_max_failures: 200,
            upload_limit: 256 * 1024 * 1024,
            server_roots: server_paths::roots_from_env(),
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<WebConfig>,
    pub login_limiter: Arc<auth::LoginLimiter>,
    pub events: events::EventHub,
}

impl AppState {
    /// Build the state; starts the task that relays job events from PostgreSQL to pages.
    pub fn new(pool: PgPool, config: WebConfig) -> Self {
        let limiter = auth::LoginLimiter::new(auth::LoginPolicy {
            pair_free_failures: config.login_max_failures,
            window: config.login_window,
            address_max_failures: config.login_address_max_failures,
            account_max_failures: config.login_account_max_failures,
            ..auth::LoginPolicy::default()
        });
        AppState {
            events: events::EventHub::start(pool.clone()),
            pool,
            config: Arc::new(config),
            login_limiter: Arc::new(limiter),
        }
    }
}

/// An optional number typed into a form field: empty means absent; anything else must parse.
pub(crate) fn form_number<T: std::str::FromStr>(
    text: &Option<String>,
    field: &str,
) -> Result<Option<T>, AppError> {
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| AppError::Invalid(format!("{field}: {t:?} is not a valid number"))),
    }
}

/// One entry of the route table: what a route is and who may use it.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// Builds the router and the route table together, so no route escapes its guard.
pub(crate) struct Routes {
    state: AppState,
    router: Router<AppState>,
    table: Vec<RouteInfo>,
}

impl Routes {
    fn new(state: AppState) -> Self {
        Routes {
            state,
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// Add `method path`, reachable only with `access`.
    pub(crate) fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        let guarded = handler.route_layer(middleware::from_fn_with_state(
            (self.state.clone(), access),
            auth::guard,
        ));
        self.router = self.router.route(path, guarded);
        self.table.push(RouteInfo {
            method,
            path,
            access,
        });
        self
    }

    pub(crate) fn get(
        self,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.add(Method::GET, path, access, handler)
    }

    pub(crate) fn post(
        self,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.add(Method::POST, path, access, handler)
    }

    pub(crate) fn put(
        self,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.add(Method::PUT, path, access, handler)
    }

    pub(crate) fn delete(
        self,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.add(Method::DELETE, path, access, handler)
    }
}

pub(crate) const PUBLIC: Access = Access::Public;
pub(crate) const ANNOTATOR: Access = Access::Role(Role::Annotator);
pub(crate) const RESEARCHER: Access = Access::Role(Role::Researcher);
pub(crate) const ADMIN: Access = Access::Role(Role::Admin);

/// The whole application: routes, their table, and the middleware stack.
pub fn app(state: AppState) -> (Router, Vec<RouteInfo>) {
    let routes = Routes::new(state.clone())
        .get("/healthz", PUBLIC, get(healthz))
        .get("/metrics", ADMIN, get(metrics_page));
    let routes = pages::routes(routes);
    let routes = admin::routes(routes);
    let routes = api::routes(routes);
    let routes = genmetrics::routes(routes, state.config.upload_limit);
    let routes = compression::routes(routes, state.config.upload_limit);
    let routes = training::routes(routes);
    let routes = inversion::routes(routes);
    let routes = safety::routes(routes, state.config.upload_limit);
    let routes = models::routes(routes);
    let routes = runs::routes(routes);
    let routes = paper::routes(routes);
    let routes = leaderboard::routes(routes);
    let routes = annotation::routes(routes);
    let Routes {
        router, mut table, ..
    } = routes;
    // Swagger UI registers its own routes; they are public documentation.
    table.push(RouteInfo {
        method: Method::GET,
        path: "/api/openapi.json",
        access: PUBLIC,
    });
    table.push(RouteInfo {
        method: Method::GET,
        path: "/api/docs/",
        access: PUBLIC,
    });

    let static_files = Router::new()
        .nest_service("/static", ServeDir::new(static_dir()))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        ));
    table.push(RouteInfo {
        method: Method::GET,
        path: "/static/{*file}",
        access: PUBLIC,
    });

    let router = router
        .merge(api::swagger())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(static_files)
        .layer(middleware::from_fn(hygiene::refuse_control_characters))
        .layer(middleware::from_fn(render_error_pages))
        .layer(middleware::from_fn(auth::csrf_cookie))
        .layer(middleware::from_fn(record_metrics))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(CatchPanicLayer::custom(|_| {
            AppError::internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    (router, table)
}

/// Where static assets live: `ELITE_STATIC_DIR`, else `static/` of the source tree.
fn static_dir() -> std::path::PathBuf {
    std::env::var_os("ELITE_STATIC_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static"))
}

async fn healthz(State(state): State<AppState>) -> Result<&'static str, AppError> {
    sqlx::query("SELECT 1").execute(&state.pool).await?;
    Ok("ok")
}

/// The process-wide Prometheus recorder (installed once).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (embedding); then we render an empty set.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

async fn metrics_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

async fn record_metrics(request: Request, next: Next) -> Response {
    prometheus();
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("elite_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("elite_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> AppError {
    AppError::NotFound
}

async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        code: "method_not_allowed",
        message: "method not allowed".into(),
    };
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({ "error": body })),
    )
        .into_response();
    response.extensions_mut().insert(body);
    response
}

/// Page routes get the HTML error page instead of the JSON envelope.
async fn render_error_pages(request: Request, next: Next) -> Response {
    let is_api = request.uri().path().starts_with("/api/");
    let user = None;
    let response = next.run(request).await;
    if is_api {
        return response;
    }
    match response.extensions().get::<ErrorBody>().cloned() {
        Some(body) => {
            let status = response.status();
            let mut page = pages::error_page(status, &body, user).into_response();
            *page.status_mut() = status;
            page
        }
        None => response,
    }
}
