//! Server-rendered pages of the shell: sign-in, dashboard, area landing pages, jobs with live
//! progress, account (API tokens) and user administration. Model output and user text reach
//! the browser only through askama's HTML escaping.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::CookieJar;
use futures::Stream;
use serde::Deserialize;

use super::auth::{self, ClientAddr, CsrfToken, CurrentUser, MaybeUser};
use super::error::{AppForm, AppPath, AppQuery, ErrorBody};
use super::{ADMIN, ANNOTATOR, AppError, AppState, PUBLIC, RESEARCHER, Routes};
use crate::accounts::{self, ApiToken, Role, User};
use crate::jobs::{self, Job, JobEvent, JobStatus};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/login", PUBLIC, get(login_page))
        .post("/login", PUBLIC, post(login))
        .post("/logout", ANNOTATOR, post(logout))
        .get("/", ANNOTATOR, get(dashboard))
        .get("/account", ANNOTATOR, get(account_page))
        .post("/account/tokens", ANNOTATOR, post(create_token))
        .post("/account/tokens/{id}/revoke", ANNOTATOR, post(revoke_token))
        .get("/jobs", RESEARCHER, get(jobs_page))
        .get("/jobs/{id}", RESEARCHER, get(job_page))
        .get("/jobs/{id}/events", RESEARCHER, get(job_events))
        .post("/jobs/{id}/cancel", RESEARCHER, post(cancel_job))
        .get("/admin/users", ADMIN, get(users_page))
        .post("/admin/users", ADMIN, post(add_user))
        .post("/admin/users/{id}/role", ADMIN, post(set_user_role))
}

/// What every page's layout needs.
pub struct PageCtx {
    pub title: String,
    pub area: &'static str,
    pub user: Option<User>,
    pub csrf: String,
}

impl PageCtx {
    pub fn new(
        title: impl Into<String>,
        area: &'static str,
        user: Option<User>,
        csrf: &CsrfToken,
    ) -> Self {
        PageCtx {
            title: title.into(),
            area,
            user,
            csrf: csrf.0.clone(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    ctx: PageCtx,
    status_code: u16,
    reason: String,
    message: String,
}

/// The HTML rendering of an error (used for every page route).
pub fn error_page(status: StatusCode, body: &ErrorBody, user: Option<User>) -> Response {
    ErrorPage {
        ctx: PageCtx {
            title: "Error".into(),
            area: "",
            user,
            csrf: String::new(),
        },
        status_code: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error").to_string(),
        message: body.message.clone(),
    }
    .into_response()
}

#[derive(Template, WebTemplate)]
#[template(path = "auth/login.html")]
struct LoginPage {
    ctx: PageCtx,
    error: Option<String>,
    next: String,
    username: String,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(
    MaybeUser(user): MaybeUser,
    csrf: CsrfToken,
    AppQuery(query): AppQuery<NextQuery>,
) -> Response {
    let next = auth::safe_next(query.next.as_deref());
    if user.is_some() {
        return Redirect::to(&next).into_response();
    }
    LoginPage {
        ctx: PageCtx::new("Sign in", "", None, &csrf),
        error: None,
        next,
        username: String::new(),
    }
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    csrf: CsrfToken,
    jar: CookieJar,
    AppForm(form): AppForm<LoginForm>,
) -> Result<Response, AppError> {
    let next = auth::safe_next(form.next.as_deref());
    let failed = |username: String| {
        let page = LoginPage {
            ctx: PageCtx::new("Sign in", "", None, &csrf),
            error: Some("Wrong username or password.".into()),
            next: next.clone(),
            username,
        };
        (StatusCode::UNAUTHORIZED, page).into_response()
    };
    // No account has such a name (too long, NUL, ...): refuse before counting or looking up.
    if !accounts::valid_username(&form.username) {
        return Ok(failed(String::new()));
    }
    let attempt = state
        .login_limiter
        .begin(&form.username, client)
        .map_err(|refusal| {
            tracing::warn!(username = %form.username, %client, ?refusal, "login refused by the limiter");
            AppError::TooManyRequests
        })?;
    match accounts::authenticate(&state.pool, &form.username, &form.password).await? {
        Some(user) => {
            attempt.succeeded();
            let secret = accounts::create_session(&state.pool, user.id).await?;
            tracing::info!(user = %user.username, "signed in");
            let jar = jar.add(auth::session_cookie(secret, state.config.secure_cookies));
            Ok((jar, Redirect::to(&next)).into_response())
        }
        None => Ok(failed(form.username)),
    }
}

async fn logout(State(state): State<AppState>, jar: CookieJar) -> Result<Response, AppError> {
    if let Some(cookie) = jar.get(auth::SESSION_COOKIE) {
        accounts::delete_session(&state.pool, cookie.value()).await?;
    }
    Ok((
        jar.add(auth::clear_session_cookie()),
        Redirect::to("/login"),
    )
        .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
struct Dashboard {
    ctx: PageCtx,
    user: User,
    job_counts: Vec<(JobStatus, i64)>,
}

async fn dashboard(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<Dashboard, AppError> {
    let job_counts = if user.role.satisfies(Role::Researcher) {
        jobs::status_counts(&state.pool).await?
    } else {
        Vec::new()
    };
    Ok(Dashboard {
        ctx: PageCtx::new("Dashboard", "", Some(user.clone()), &csrf),
        user,
        job_counts,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "account/tokens.html")]
struct AccountPage {
    ctx: PageCtx,
    user: User,
    tokens: Vec<ApiToken>,
    new_secret: Option<String>,
}

async fn account_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<AccountPage, AppError> {
    let tokens = accounts::list_api_tokens(&state.pool, user.id).await?;
    Ok(AccountPage {
        ctx: PageCtx::new("Account", "", Some(user.clone()), &csrf),
        user,
        tokens,
        new_secret: None,
    })
}

#[derive(Deserialize)]
struct TokenForm {
    name: String,
}

async fn create_token(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppForm(form): AppForm<TokenForm>,
) -> Result<AccountPage, AppError> {
    let (_, secret) = accounts::create_api_token(&state.pool, user.id, &form.name).await?;
    let tokens = accounts::list_api_tokens(&state.pool, user.id).await?;
    Ok(AccountPage {
        ctx: PageCtx::new("Account", "", Some(user.clone()), &csrf),
        user,
        tokens,
        new_secret: Some(secret),
    })
}

async fn revoke_token(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    if !accounts::revoke_api_token(&state.pool, user.id, id).await? {
        return Err(AppError::NotFound);
    }
    Ok(Redirect::to("/account"))
}

#[derive(Template, WebTemplate)]
#[template(path = "jobs/list.html")]
struct JobsPage {
    ctx: PageCtx,
    jobs: Vec<Job>,
}

async fn jobs_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<JobsPage, AppError> {
    let jobs = jobs::list_recent(&state.pool, 200, 0).await?;
    Ok(JobsPage {
        ctx: PageCtx::new("Jobs", "jobs", Some(user), &csrf),
        jobs,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "jobs/detail.html")]
struct JobPage {
    ctx: PageCtx,
    job: Job,
    payload: String,
    result: Option<String>,
}

async fn job_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
) -> Result<JobPage, AppError> {
    let job = jobs::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let payload = serde_json::to_string_pretty(&job.payload).unwrap_or_default();
    let result = job
        .result
        .as_ref()
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_default());
    Ok(JobPage {
        ctx: PageCtx::new(format!("Job {id}"), "jobs", Some(user), &csrf),
        job,
        payload,
        result,
    })
}

/// Server-sent events with the job's progress: its current state first, then every change,
/// ending after a finished state.
async fn job_events(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let mut receiver = state.events.subscribe();
    let job = jobs::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let first = JobEvent {
        id,
        status: job.status.as_str().to_string(),
        done: job.progress_done,
        total: job.progress_total,
        message: job.progress_message.clone(),
    };
    let stream = async_stream(first, move |tx| async move {
        let finished =
            |e: &JobEvent| matches!(e.status.as_str(), "succeeded" | "failed" | "cancelled");
        loop {
            match receiver.recv().await {
                Ok(event) if event.id == id => {
                    let done = finished(&event);
                    if tx.send(event).await.is_err() || done {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream of SSE events: `first`, then whatever `produce` sends (stops at a finished state).
fn async_stream<F, Fut>(
    first: JobEvent,
    produce: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<JobEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let already_finished = matches!(first.status.as_str(), "succeeded" | "failed" | "cancelled");
    let initial = tx.clone();
    tokio::spawn(async move {
        let _ = initial.send(first).await;
    });
    if !already_finished {
        tokio::spawn(produce(tx));
    } else {
        drop(tx);
    }
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|event| {
        Ok(Event::default()
            .event("progress")
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().event("progress")))
    })
}

use futures::StreamExt;

async fn cancel_job(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
) -> Result<Redirect, AppError> {
    jobs::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    jobs::cancel(&state.pool, id).await?;
    Ok(Redirect::to(&format!("/jobs/{id}")))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/users.html")]
struct UsersPage {
    ctx: PageCtx,
    users: Vec<User>,
    roles: [Role; 3],
    notice: Option<String>,
}

async fn users_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<UsersPage, AppError> {
    let users = accounts::list_users(&state.pool).await?;
    Ok(UsersPage {
        ctx: PageCtx::new("Users", "admin", Some(user), &csrf),
        users,
        roles: Role::ALL,
        notice: None,
    })
}

#[derive(Deserialize)]
struct NewUserForm {
    username: String,
    password: String,
    role: String,
}

async fn add_user(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    csrf: CsrfToken,
    AppForm(form): AppForm<NewUserForm>,
) -> Result<UsersPage, AppError> {
    let role: Role = form.role.parse()?;
    let created =
        accounts::create_user(&state.pool, form.username.trim(), &form.password, role).await?;
    tracing::info!(admin = %admin.username, user = %created.username, role = %created.role, "user added");
    let users = accounts::list_users(&state.pool).await?;
    Ok(UsersPage {
        ctx: PageCtx::new("Users", "admin", Some(admin), &csrf),
        users,
        roles: Role::ALL,
        notice: Some(format!("Added {} as {}.", created.username, created.role)),
    })
}

#[derive(Deserialize)]
struct RoleForm {
    role: String,
}

async fn set_user_role(
    State(state): State<AppState>,
    CurrentUser(admin): CurrentUser,
    AppPath(id): AppPath<i64>,
    AppForm(form): AppForm<RoleForm>,
) -> Result<Redirect, AppError> {
    let role: Role = form.role.parse()?;
    if admin.id == id && role != Role::Admin {
        return Err(AppError::Conflict(
            "you cannot remove your own admin role".into(),
        ));
    }
    accounts::set_role_by_id(&state.pool, id, role).await?;
    Ok(Redirect::to("/admin/users"))
}
