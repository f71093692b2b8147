//! Process wiring for `elite serve` and `elite worker`: open the database, start the worker
//! pool and/or the HTTP server, and shut everything down in order on SIGINT/SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::db::Database;
use crate::jobs::{WorkerOptions, WorkerPool};
use crate::web::{self, AppState, WebConfig};

/// Serve the web app on `bind` (and run workers in-process unless `workers` is None) until a
/// shutdown signal arrives; then stop workers, drain connections and leave the private cluster
/// (stopping it if no other elite process uses it).
pub async fn serve(
    db: Database,
    bind: SocketAddr,
    web_config: WebConfig,
    workers: Option<WorkerOptions>,
) -> anyhow::Result<()> {
    let worker_pool =
        workers.map(|options| WorkerPool::start(db.pool.clone(), crate::job_registry(), options));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    // Workers hand their jobs back as soon as the signal arrives, not after the HTTP drain
    // (which waits for open event streams), so no lease is left to expire.
    let mut workers_stopping = stopping.clone();
    let workers_stopped = tokio::spawn(async move {
        let _ = workers_stopping.wait_for(|stop| *stop).await;
        if let Some(pool) = worker_pool {
            pool.shutdown().await;
        }
    });
    let state = AppState::new(db.pool.clone(), web_config);
    let (router, _) = web::app(state);
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    tracing::info!("serving on http://{}", listener.local_addr()?);
    eprintln!("elite is serving on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let mut stopping = stopping;
        let _ = stopping.wait_for(|stop| *stop).await;
    })
    .await?;
    let _ = workers_stopped.await;
    db.shutdown().await;
    Ok(())
}

/// Run workers only, until a shutdown signal.
pub async fn work(db: Database, options: WorkerOptions) -> anyhow::Result<()> {
    let registry = crate::job_registry();
    tracing::info!(kinds = ?registry.kinds(), "worker started");
    let pool = WorkerPool::start(db.pool.clone(), registry, options);
    shutdown_signal().await;
    pool.shutdown().await;
    db.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
