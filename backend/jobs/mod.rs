//! The PostgreSQL job queue: enqueue, claim with `FOR UPDATE SKIP LOCKED` under a lease that a
//! heartbeat extends, retry with exponential backoff, cancel, recovery of jobs whose worker
//! died, and progress events over LISTEN/NOTIFY.
//!
//! Contract for handlers (see ARCHITECTURE.md): a job may run more than once (a worker can die
//! after doing part of the work), so a handler must be idempotent: it writes each result under
//! a unique key (`ON CONFLICT DO NOTHING`) and skips work whose result already exists. Only the
//! worker holding the lease can finish a job, so a job *completes* exactly once.

mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

pub use worker::{JobContext, JobError, JobHandler, Registry, WorkerOptions, WorkerPool};

/// Channel on which new jobs are announced (payload: the job kind).
pub const ENQUEUED_CHANNEL: &str = "elite_job_enqueued";
/// Channel on which progress and status changes are announced (payload: [`JobEvent`] JSON).
pub const EVENTS_CHANNEL: &str = "elite_job_events";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "job_status", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: JobStatus,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub run_at: OffsetDateTime,
    pub locked_by: Option<String>,
    pub progress_done: i64,
    pub progress_total: i64,
    pub progress_message: Option<String>,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub created_by: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// The columns of [`Job`], for `concat!` into static SQL.
macro_rules! job_columns {
    () => {
        "id, kind, payload, status, priority, attempts, max_attempts, run_at, locked_by, \
         progress_done, progress_total, progress_message, last_error, result, created_by, \
         created_at, started_at, finished_at"
    };
}
pub(crate) use job_columns;

/// A progress or status change, as sent on [`EVENTS_CHANNEL`] and streamed to pages.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct JobEvent {
    pub id: i64,
    pub status: String,
    pub done: i64,
    pub total: i64,
    pub message: Option<String>,
}

/// What to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub max_attempts: i32,
    /// When set, enqueueing a second job with the same key returns the first one.
    pub dedup_key: Option<String>,
    pub created_by: Option<i64>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            priority: 0,
            max_attempts: 5,
            dedup_key: None,
            created_by: None,
        }
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    pub fn created_by(mut self, user_id: i64) -> Self {
        self.created_by = Some(user_id);
        self
    }
}

/// Add a job to the queue and wake idle workers; returns its id (the existing job's id when
/// the dedup key is taken).
pub async fn enqueue(pool: &PgPool, job: NewJob) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, priority, max_attempts, dedup_key, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
    )
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(&job.dedup_key)
    .bind(job.created_by)
    .fetch_optional(&mut *tx)
    .await?;
    let id = match inserted {
        Some(id) => id,
        None => {
            sqlx::query_scalar("SELECT id FROM jobs WHERE dedup_key = $1")
                .bind(&job.dedup_key)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ENQUEUED_CHANNEL)
        .bind(&job.kind)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as::<_, Job>(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The newest jobs first.
pub async fn list_recent(pool: &PgPool, limit: i64, offset: i64) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query_as::<_, Job>(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs ORDER BY id DESC LIMIT $1 OFFSET $2"
    ))
    .bind(limit.clamp(1, 500))
    .bind(offset.max(0))
    .fetch_all(pool)
    .await
}

/// Counts of jobs per status, for the dashboard.
pub async fn status_counts(pool: &PgPool) -> Result<Vec<(JobStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
}

/// Cancel a queued or running job. A running handler is stopped at its next heartbeat.
/// Returns false when the job does not exist or has already finished.
pub async fn cancel(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), locked_by = NULL,
                lease_expires_at = NULL
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    if changed {
        publish_event(pool, id).await?;
    }
    Ok(changed)
}

/// Queue failed jobs again with a fresh attempt budget. The row (its id and dedup key) is
/// reused, so a unit of work keeps exactly one job however often it is retried; only rows still
/// `failed` change, so concurrent retries of the same jobs queue each of them once. Returns the
/// ids queued again.
pub async fn retry_failed(pool: &PgPool, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let retried: Vec<(i64, String)> = sqlx::query_as(
        "UPDATE jobs SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
                locked_by = NULL, lease_expires_at = NULL, result = NULL
         WHERE id = ANY($1) AND status = 'failed'
         RETURNING id, kind",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut kinds: Vec<&str> = retried.iter().map(|(_, kind)| kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ENQUEUED_CHANNEL)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    for (id, _) in &retried {
        publish_event(pool, *id).await?;
    }
    Ok(retried.into_iter().map(|(id, _)| id).collect())
}

/// Send the job's current state on [`EVENTS_CHANNEL`].
pub(crate) async fn publish_event(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_notify($1, json_build_object('id', id, 'status', status, 'done', progress_done,
                'total', progress_total, 'message', progress_message)::text)
         FROM jobs WHERE id = $2",
    )
    .bind(EVENTS_CHANNEL)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Mark as failed the jobs whose lease expired after their last allowed attempt (their worker
/// died and nobody may retry them). Other expired jobs are simply claimed again.
pub async fn fail_exhausted(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE jobs SET status = 'failed', finished_at = now(), locked_by = NULL,
                last_error = coalesce(last_error || '; ', '') || 'worker lost after the last attempt'
         WHERE status = 'running' AND lease_expires_at < now() AND attempts >= max_attempts",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Relays (done, total) counters written by blocking compute threads to the job row (and its
/// event stream) twice a second; stops when dropped.
pub struct ProgressRelay {
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressRelay {
    pub fn start(ctx: &JobContext, message: &'static str) -> Self {
        let (done, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (d, t, ctx) = (done.clone(), total.clone(), ctx.clone());
        let task = tokio::spawn(async move {
            let mut last = (u64::MAX, u64::MAX);
            loop {
                let now = (d.load(Ordering::Relaxed), t.load(Ordering::Relaxed));
                if now != last && now.1 > 0 {
                    let _ = ctx
                        .progress(now.0 as i64, now.1 as i64, Some(message))
                        .await;
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        ProgressRelay { done, total, task }
    }

    /// The callback to hand to computation code (any thread).
    pub fn callback(&self) -> impl Fn(u64, u64) + Sync + Send + 'static {
        let (d, t) = (self.done.clone(), self.total.clone());
        move |done, total| {
            d.store(done, Ordering::Relaxed);
            t.store(total, Ordering::Relaxed);
        }
    }
}

impl Drop for ProgressRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
