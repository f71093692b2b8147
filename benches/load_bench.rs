//! HTTP load on loopback: requests per second and latency percentiles of the public health
//! check, an authenticated API list (Bearer token) and an authenticated page (session cookie),
//! served by the real router over a real socket and PostgreSQL. The load generator is a
//! hyper client on its own runtime thread, with a fixed number of keep-alive connections,
//! each sending requests back to back for a fixed time; every loop is bounded in time.
//!
//! Run: `cargo bench --bench load_bench [-- --seconds S --connections C]` (defaults 5 s, 32).
//! It uses `DATABASE_URL` when set, else a throwaway cluster under `target/elite-bench-pg`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::body::Body;
use elite::accounts::{self, Role};
use elite::db::{self, ClusterOptions, LocalCluster};
use elite::jobs::{self, NewJob};
use elite::web::{self, AppState, WebConfig};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// One target: a path and the headers that authenticate it.
struct Target {
    label: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
}

struct Outcome {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Drive `target` with `connections` concurrent request loops for `seconds`.
async fn drive(base: &str, target: &Target, connections: usize, seconds: u64) -> Outcome {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let uri: axum::http::Uri = format!("{base}{}", target.path).parse().expect("uri");
        let headers = target.headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let mut request = axum::http::Request::get(uri.clone());
                for (k, v) in &headers {
                    request = request.header(*k, v);
                }
                let request = request.body(Body::empty()).expect("request");
                let sent = Instant::now();
                match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let body =
                            axum::body::to_bytes(Body::new(response.into_body()), 1 << 24).await;
                        if ok && body.is_ok() {
                            latencies.push(sent.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("load task");
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort();
    Outcome {
        requests: all.len(),
        errors,
        elapsed,
        latencies: all,
    }
}

fn main() {
    let seconds = arg("--seconds").unwrap_or(5);
    let connections = arg("--connections").unwrap_or(32) as usize;
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let (base, targets) = server_runtime.block_on(async {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let server_url = match std::env::var("DATABASE_URL") {
            Ok(url) => url,
            Err(_) => {
                let cluster = LocalCluster::ensure_running(ClusterOptions {
                    data_dir: root.join("target/elite-bench-pg"),
                    ephemeral: true,
                    process: db::ProcessKind::OneShot,
                })
                .expect("start a throwaway PostgreSQL cluster");
                let url = cluster.url_for("postgres");
                std::mem::forget(cluster);
                url
            }
        };
        let name = format!("elite_load_{}", std::process::id());
        let server = PgConnectOptions::from_str(&server_url).unwrap();
        db::create_database_with(&server.clone().database("postgres"), &name)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(server.clone().database(&name))
            .await
            .unwrap();
        db::MIGRATOR.run(&pool).await.unwrap();
        let user =
            accounts::create_user(&pool, "loader", "correct horse battery", Role::Researcher)
                .await
                .unwrap();
        let (_, token) = accounts::create_api_token(&pool, user.id, "load")
            .await
            .unwrap();
        let session = accounts::create_session(&pool, user.id).await.unwrap();
        for i in 0..50 {
            jobs::enqueue(
                &pool,
                NewJob::new("bench.idle", serde_json::json!({ "n": i })),
            )
            .await
            .unwrap();
        }
        let state = AppState::new(pool, WebConfig::default());
        let (router, _) = web::app(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        let targets = vec![
            Target {
                label: "GET /healthz (public)",
                path: "/healthz".into(),
                headers: vec![],
            },
            Target {
                label: "GET /api/v1/jobs?limit=20 (Bearer)",
                path: "/api/v1/jobs?limit=20".into(),
                headers: vec![("authorization", format!("Bearer {token}"))],
            },
            Target {
                label: "GET /jobs page (session cookie)",
                path: "/jobs".into(),
                headers: vec![("cookie", format!("elite_session={session}"))],
            },
        ];
        (base, targets)
    });
    // The load generator runs on its own single thread, so it competes with the server for the
    // two cores the way an external tool would.
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "load: {connections} keep-alive connections, {seconds} s per target, loopback, one client thread"
    );
    println!(
        "| target | requests | req/s | p50 | p99 | max | errors |\n|---|---|---|---|---|---|---|"
    );
    for target in &targets {
        client_runtime.block_on(drive(&base, target, connections, 1));
        let outcome = client_runtime.block_on(drive(&base, target, connections, seconds));
        let per_second = outcome.requests as f64 / outcome.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            target.label,
            outcome.requests,
            per_second,
            percentile(&outcome.latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&outcome.latencies, 99.0).as_secs_f64() * 1e3,
            outcome
                .latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            outcome.errors,
        );
    }
    drop(server_runtime);
}
