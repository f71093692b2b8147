//! Shared test support: a real PostgreSQL (DATABASE_URL, or a throwaway private cluster
//! started with the same launcher the binary uses), one fresh database per test, and an
//! in-process app with helpers for users and sessions.
#![allow(dead_code)]

pub mod annotation_fixture;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use elite::accounts::{self, Role, User};
use elite::db::{self, ClusterOptions, LocalCluster};
use elite::web::{self, AppState, RouteInfo, WebConfig};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tower::ServiceExt;

/// Connection options of the server the tests use (maintenance database).
fn server_options() -> PgConnectOptions {
    PgConnectOptions::from_str(server_url()).expect("valid database URL")
}

/// The URL of the server the tests use.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let data_dir = std::env::var_os("ELITE_TEST_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/elite-test-pg")
            });
        let cluster = LocalCluster::ensure_running(ClusterOptions {
            data_dir,
            ephemeral: true,
            process: db::ProcessKind::OneShot,
        })
        .expect("start the throwaway PostgreSQL cluster for tests");
        let url = cluster.url_for("postgres");
        // Keep it running for the other tests; scripts/test.sh stops it at the end.
        std::mem::forget(cluster);
        url
    })
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

/// A fresh, migrated database for one test, with its URL (for running the binary against it).
pub async fn fresh_database() -> (String, PgPool) {
    let pool = fresh_pool().await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    (with_database(server_url(), &name), pool)
}

/// A fresh, migrated database for one test.
pub async fn fresh_pool() -> PgPool {
    let name = format!("elite_test_{}", uuid::Uuid::new_v4().simple());
    let server = server_options();
    db::create_database_with(&server.clone().database("postgres"), &name)
        .await
        .expect("create test database");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with(server.database(&name))
        .await
        .expect("connect to test database");
    db::MIGRATOR
        .run(&pool)
        .await
        .expect("migrate test database");
    pool
}

/// A second pool on the same database, standing for another process: a test that "kills" a
/// worker aborts its tasks and then closes this pool, so that, as when a process dies, its
/// connections are gone and PostgreSQL drops whatever a half-sent statement held.
pub async fn process_pool(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("connect a second pool")
}

/// End the "process" behind `pool` (see [`process_pool`]).
pub async fn end_process(pool: PgPool) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), pool.close()).await;
}

/// Serve `router` on a free local port; returns `http://127.0.0.1:PORT`. Models of this
/// process may then reach loopback servers (see [`allow_loopback_models`]).
pub async fn serve_router(router: Router) -> String {
    allow_loopback_models();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    base
}

/// An OpenAI-compatible model server answering chat completions with `handler`; returns its
/// base URL (`.../v1`).
pub async fn serve_chat<H, T>(handler: H) -> String
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    allow_loopback_models();
    let router = Router::new().route("/v1/chat/completions", axum::routing::post(handler));
    format!("{}/v1", serve_router(router).await)
}

/// Let models of this process reach loopback servers (the tests' fake model servers), as a
/// lab running vLLM on the same machine would configure it. A policy a test set on purpose
/// (the security tests allow only 127.0.0.2) is left alone, also when tests share a process.
pub fn allow_loopback_models() {
    elite::inference::net::set_outbound_policy_if_unset(
        elite::inference::net::OutboundPolicy::parse("127.0.0.0/8").expect("valid policy"),
    );
}

/// The configuration of the tests' app: server paths may be read under the temporary folder.
pub fn test_config() -> WebConfig {
    WebConfig {
        server_roots: vec![std::env::temp_dir()],
        ..WebConfig::default()
    }
}

/// The app over a fresh database.
pub struct TestApp {
    pub pool: PgPool,
    pub state: AppState,
    pub router: Router,
    pub routes: Vec<RouteInfo>,
}

/// A signed-in browser: the cookie header to send and the CSRF token for forms.
#[derive(Clone, Debug)]
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
    pub user: User,
}

pub const PASSWORD: &str = "correct horse battery";

impl TestApp {
    /// The app as the tests use it: [`test_config`], loopback model servers allowed.
    pub async fn new() -> Self {
        allow_loopback_models();
        Self::with_config(test_config()).await
    }

    pub async fn with_config(config: WebConfig) -> Self {
        let pool = fresh_pool().await;
        let state = AppState::new(pool.clone(), config);
        let (router, routes) = web::app(state.clone());
        TestApp {
            pool,
            state,
            router,
            routes,
        }
    }

    pub async fn user(&self, name: &str, role: Role) -> User {
        accounts::create_user(&self.pool, name, PASSWORD, role)
            .await
            .expect("create user")
    }

    /// A session for `user` without going through the login form.
    pub async fn browser(&self, user: &User) -> Browser {
        let secret = accounts::create_session(&self.pool, user.id)
            .await
            .expect("session");
        let csrf = web::auth::random_token();
        Browser {
            cookie: format!("elite_session={secret}; elite_csrf={csrf}"),
            csrf,
            user: user.clone(),
        }
    }

    pub async fn token(&self, user: &User) -> String {
        accounts::create_api_token(&self.pool, user.id, "test")
            .await
            .expect("token")
            .1
    }

    pub async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible")
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }
}

/// Rows per table of the public schema (`_sqlx_migrations` aside), to show a refused request
/// stored nothing.
pub async fn table_counts(pool: &PgPool) -> std::collections::BTreeMap<String, i64> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("list tables");
    let mut counts = std::collections::BTreeMap::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{table}\""
        )))
        .fetch_one(pool)
        .await
        .expect("count rows");
        counts.insert(table, n);
    }
    counts
}

pub async fn body_text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}

pub async fn body_json(response: Response<Body>) -> serde_json::Value {
    let text = body_text(response).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn form(path: &str, browser: Option<&Browser>, body: &str) -> Request<Body> {
    let mut builder =
        Request::post(path).header("content-type", "application/x-www-form-urlencoded");
    if let Some(b) = browser {
        builder = builder.header("cookie", &b.cookie);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

pub fn get(path: &str, browser: Option<&Browser>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(b) = browser {
        builder = builder.header("cookie", &b.cookie);
    }
    builder.body(Body::empty()).unwrap()
}

pub fn api(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(b) => builder
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

pub fn role_name(role: Role) -> &'static str {
    role.as_str()
}

/// Show the library's logs in a test (`ELITE_TEST_LOG=debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("ELITE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// Wait until a job has finished (any final state) and return it.
pub async fn wait_job(app: &TestApp, id: i64) -> elite::jobs::Job {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let job = elite::jobs::get(&app.pool, id).await.unwrap().unwrap();
        if job.status.is_finished() {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} did not finish: {job:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Run the `elite` binary (no DATABASE_URL unless given): (success, stdout, stderr).
pub fn run_elite(args: &[&str], database_url: Option<&str>) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_elite"));
    command
        .args(args)
        .env("ELITE_LOG", "warn")
        .env("ELITE_OUTBOUND_ALLOW", "127.0.0.0/8");
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let out = command.output().expect("run elite");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a job to its end with a worker pool of this process (the build's registry) that claims
/// only jobs with its payload (other queued work waits), and return it (any final state).
pub async fn run_job(app: &TestApp, id: i64) -> elite::jobs::Job {
    let job = elite::jobs::get(&app.pool, id).await.unwrap().unwrap();
    let workers = elite::jobs::WorkerPool::start(
        app.pool.clone(),
        elite::job_registry(),
        elite::jobs::WorkerOptions {
            concurrency: 1,
            poll_interval: std::time::Duration::from_millis(50),
            only_payload: Some(job.payload),
            ..Default::default()
        },
    );
    let job = wait_job(app, id).await;
    workers.shutdown().await;
    job
}
