//! The PostgreSQL job queue: leases, crash recovery, exclusivity, retries, cancellation, and
//! progress events streamed to a browser over a real socket.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use elite::accounts::Role;
use elite::jobs::{
    self, JobContext, JobError, JobStatus, NewJob, Registry, WorkerOptions, WorkerPool,
};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;

fn fast_options() -> WorkerOptions {
    WorkerOptions {
        concurrency: 1,
        lease: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(200),
        poll_interval: Duration::from_millis(50),
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        name: "test".into(),
        only_payload: None,
    }
}

async fn wait_for_status(pool: &PgPool, id: i64, status: JobStatus, within: Duration) -> jobs::Job {
    let deadline = Instant::now() + within;
    loop {
        let job = jobs::get(pool, id).await.unwrap().unwrap();
        if job.status == status {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {:?} not {status:?} after {within:?}: {job:?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn effects_table(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE invocations (job_id BIGINT NOT NULL, worker TEXT);
         CREATE TABLE completions (job_id BIGINT NOT NULL);",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// A worker dies mid-job; after its lease expires another worker re-claims the job and it
/// completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_reclaimed_and_completes_once() {
    let pool = fresh_pool().await;
    effects_table(&pool).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    let handler = move |ctx: JobContext| {
        let signal = signal.clone();
        async move {
            sqlx::query("INSERT INTO invocations (job_id) VALUES ($1)")
                .bind(ctx.job.id)
                .execute(&ctx.pool)
                .await?;
            if ctx.job.attempts == 1 {
                signal.notify_one();
                // The first attempt hangs until its worker is killed.
                std::future::pending::<()>().await;
            }
            sqlx::query("INSERT INTO completions (job_id) VALUES ($1)")
                .bind(ctx.job.id)
                .execute(&ctx.pool)
                .await?;
            Ok(Some(json!({"attempt": ctx.job.attempts})))
        }
    };
    let registry = Registry::new().register("test.effect", handler);
    let id = jobs::enqueue(&pool, NewJob::new("test.effect", json!({})))
        .await
        .unwrap();

    let doomed_process = process_pool(&pool).await;
    let doomed = WorkerPool::start(doomed_process.clone(), registry.clone(), fast_options());
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("first attempt started");
    doomed.kill();
    let killed_at = Instant::now();
    end_process(doomed_process).await;

    let rescuer = WorkerPool::start(pool.clone(), registry, fast_options());
    let job = wait_for_status(&pool, id, JobStatus::Succeeded, Duration::from_secs(15)).await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1000),
        "re-claimed before the lease expired"
    );
    assert_eq!(job.attempts, 2);
    assert_eq!(job.result, Some(json!({"attempt": 2})));
    let invocations: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let completions: i64 = sqlx::query_scalar("SELECT count(*) FROM completions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((invocations, completions), (2, 1));
    rescuer.shutdown().await;
}

/// Many workers in two pools over many jobs: each job runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_the_same_job() {
    let pool = fresh_pool().await;
    effects_table(&pool).await;
    let handler = |ctx: JobContext| async move {
        sqlx::query("INSERT INTO invocations (job_id) VALUES ($1)")
            .bind(ctx.job.id)
            .execute(&ctx.pool)
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(None)
    };
    let registry = Registry::new().register("test.once", handler);
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(
            jobs::enqueue(&pool, NewJob::new("test.once", json!({ "n": n })))
                .await
                .unwrap(),
        );
    }
    let options = WorkerOptions {
        concurrency: 4,
        ..fast_options()
    };
    let a = WorkerPool::start(pool.clone(), registry.clone(), options.clone());
    let b = WorkerPool::start(pool.clone(), registry, options);
    for id in &ids {
        wait_for_status(&pool, *id, JobStatus::Succeeded, Duration::from_secs(30)).await;
    }
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM invocations GROUP BY job_id HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((duplicates, total), (0, 60));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_until_the_limit() {
    init_logs();
    let pool = fresh_pool().await;
    let handler = |ctx: JobContext| async move {
        let succeed_on: i32 = ctx.payload::<serde_json::Value>()?["succeed_on"]
            .as_i64()
            .unwrap_or(99) as i32;
        if ctx.job.attempts < succeed_on {
            return Err(JobError::Retryable(format!(
                "flaky service, attempt {}",
                ctx.job.attempts
            )));
        }
        Ok(None)
    };
    let permanent = |_ctx: JobContext| async move {
        Err::<Option<serde_json::Value>, _>(JobError::Permanent("bad payload".into()))
    };
    let registry = Registry::new()
        .register("test.flaky", handler)
        .register("test.broken", permanent);
    let recovers = jobs::enqueue(&pool, NewJob::new("test.flaky", json!({"succeed_on": 3})))
        .await
        .unwrap();
    let exhausts = jobs::enqueue(&pool, NewJob::new("test.flaky", json!({})).max_attempts(2))
        .await
        .unwrap();
    let broken = jobs::enqueue(&pool, NewJob::new("test.broken", json!({})))
        .await
        .unwrap();
    let workers = WorkerPool::start(
        pool.clone(),
        registry,
        WorkerOptions {
            concurrency: 2,
            ..fast_options()
        },
    );

    let job = wait_for_status(
        &pool,
        recovers,
        JobStatus::Succeeded,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.last_error, None);
    let job = wait_for_status(&pool, exhausts, JobStatus::Failed, Duration::from_secs(15)).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(job.last_error.as_deref(), Some("flaky service, attempt 2"));
    let job = wait_for_status(&pool, broken, JobStatus::Failed, Duration::from_secs(15)).await;
    assert_eq!(job.attempts, 1, "a permanent error is not retried");
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_handler_and_sticks() {
    let pool = fresh_pool().await;
    let running = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (r, d) = (running.clone(), dropped.clone());
    let handler = move |_ctx: JobContext| {
        let (r, d) = (r.clone(), d.clone());
        async move {
            let _guard = OnDrop(d);
            r.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(None)
        }
    };
    let registry = Registry::new().register("test.slow", handler);
    let id = jobs::enqueue(&pool, NewJob::new("test.slow", json!({})))
        .await
        .unwrap();
    let queued = jobs::enqueue(&pool, NewJob::new("test.never", json!({})))
        .await
        .unwrap();
    let workers = WorkerPool::start(pool.clone(), registry, fast_options());
    wait_for_status(&pool, id, JobStatus::Running, Duration::from_secs(10)).await;
    while !running.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(jobs::cancel(&pool, id).await.unwrap());
    assert!(jobs::cancel(&pool, queued).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while dropped.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "handler still running after cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        jobs::get(&pool, id).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert!(
        !jobs::cancel(&pool, id).await.unwrap(),
        "a finished job cannot be cancelled again"
    );
    workers.shutdown().await;
}

#[tokio::test]
async fn dedup_keys_make_enqueue_idempotent() {
    let pool = fresh_pool().await;
    let a = jobs::enqueue(
        &pool,
        NewJob::new("test.x", json!({"a": 1})).dedup_key("run-7"),
    )
    .await
    .unwrap();
    let b = jobs::enqueue(
        &pool,
        NewJob::new("test.x", json!({"a": 2})).dedup_key("run-7"),
    )
    .await
    .unwrap();
    assert_eq!(a, b);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Progress reported by a handler reaches a browser's event stream over a real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_to_the_browser_over_sse() {
    let app = TestApp::new().await;
    let user = app.user("rita", Role::Researcher).await;
    let browser = app.browser(&user).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let go = Arc::new(tokio::sync::Notify::new());
    let gate = go.clone();
    let handler = move |ctx: JobContext| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            for done in 1..=3 {
                ctx.progress(done, 3, Some(&format!("step {done}"))).await?;
            }
            Ok(None)
        }
    };
    let id = jobs::enqueue(&app.pool, NewJob::new("test.progress", json!({})))
        .await
        .unwrap();
    let workers = WorkerPool::start(
        app.pool.clone(),
        Registry::new().register("test.progress", handler),
        fast_options(),
    );
    wait_for_status(&app.pool, id, JobStatus::Running, Duration::from_secs(10)).await;

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let unauthenticated = client
        .get(format!("http://{address}/jobs/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_ne!(unauthenticated.status(), 200);
    let response = client
        .get(format!("http://{address}/jobs/{id}/events"))
        .header("cookie", &browser.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    // Let the handler go once the stream is open and has sent the current state.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    text.push_str(&String::from_utf8_lossy(&first));
    go.notify_one();
    let read = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("\"succeeded\"") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("stream ends with success");
    assert!(text.contains("event: progress"), "{text}");
    assert!(text.contains("\"status\":\"running\""), "{text}");
    for step in 1..=3 {
        assert!(
            text.contains(&format!("\"message\":\"step {step}\"")),
            "missing step {step}: {text}"
        );
    }
    workers.shutdown().await;
}

/// A pool shut down cleanly hands its running job back at once: queued, no lease, the
/// interrupted attempt not counted; another pool then runs it without waiting for a lease to
/// expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_shut_down_cleanly_hands_its_job_back_at_once() {
    let pool = fresh_pool().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    let hang = move |_ctx: JobContext| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            std::future::pending::<Result<Option<serde_json::Value>, JobError>>().await
        }
    };
    let id = jobs::enqueue(&pool, NewJob::new("test.hang", json!({})))
        .await
        .unwrap();
    // A lease far longer than the test: only a job handed back can be claimed again soon.
    let options = WorkerOptions {
        lease: Duration::from_secs(120),
        ..fast_options()
    };
    let workers = WorkerPool::start(
        pool.clone(),
        Registry::new().register("test.hang", hang),
        options.clone(),
    );
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the job started");
    workers.shutdown().await;
    let (status, locked_by, lease, attempts): (
        String,
        Option<String>,
        Option<time::OffsetDateTime>,
        i32,
    ) = sqlx::query_as(
        "SELECT status::text, locked_by, lease_expires_at, attempts FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), locked_by, lease, attempts),
        ("queued", None, None, 0)
    );

    let quick = |ctx: JobContext| async move { Ok(Some(json!({"attempt": ctx.job.attempts}))) };
    let rescuer = WorkerPool::start(
        pool.clone(),
        Registry::new().register("test.hang", quick),
        options,
    );
    let job = wait_for_status(&pool, id, JobStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(job.attempts, 1, "the interrupted attempt is not counted");
    rescuer.shutdown().await;
}
