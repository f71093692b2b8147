//! Workers: claim jobs, run their handlers under a heartbeat-extended lease, and record the
//! outcome. A worker that dies simply stops extending its lease; another claims the job again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{ENQUEUED_CHANNEL, Job, job_columns, publish_event};

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (timeouts, unavailable services), with backoff.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (bad payload, missing input): fail the job now.
    #[error("{0}")]
    Permanent(String),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Retryable(format!("database: {e}"))
    }
}

type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Option<serde_json::Value>, JobError>> + Send>>;

/// Code that runs jobs of one kind. Must be idempotent (see the module contract).
pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, ctx: JobContext) -> HandlerFuture;
}

impl<F, Fut> JobHandler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<serde_json::Value>, JobError>> + Send + 'static,
{
    fn run(&self, ctx: JobContext) -> HandlerFuture {
        Box::pin(self(ctx))
    }
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn JobHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(mut self, kind: &str, handler: impl JobHandler) -> Self {
        self.handlers.insert(kind.to_string(), Arc::new(handler));
        self
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}

/// What a handler gets: its job, the pool, and a way to report progress.
#[derive(Clone)]
pub struct JobContext {
    pub job: Job,
    pub pool: PgPool,
    worker_id: String,
}

impl JobContext {
    /// Record progress (done of total, with a message) and announce it to listeners.
    pub async fn progress(
        &self,
        done: i64,
        total: i64,
        message: Option<&str>,
    ) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE jobs SET progress_done = $3, progress_total = $4, progress_message = $5
             WHERE id = $1 AND locked_by = $2 AND status = 'running'",
        )
        .bind(self.job.id)
        .bind(&self.worker_id)
        .bind(done)
        .bind(total)
        .bind(message)
        .execute(&self.pool)
        .await?;
        publish_event(&self.pool, self.job.id).await?;
        Ok(())
    }

    /// Deserialize the payload, or fail the job permanently with a clear message.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.job.payload.clone())
            .map_err(|e| JobError::Permanent(format!("invalid payload for {}: {e}", self.job.kind)))
    }
}

/// Tuning of a worker pool.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often the lease is extended (well below `lease`).
    pub heartbeat: Duration,
    /// How often idle workers look for work when no notification arrives.
    pub poll_interval: Duration,
    /// First retry delay; doubled per attempt, with jitter, capped at `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Prefix of the worker ids (host name and pid are added).
    pub name: String,
    /// Claim only jobs whose payload contains this JSON (`payload @> only_payload`), e.g.
    /// `{"run_id": 7}` for `elite run --follow`, which works on its own run only.
    pub only_payload: Option<serde_json::Value>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 4,
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            poll_interval: Duration::from_secs(2),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
            name: "worker".into(),
            only_payload: None,
        }
    }
}

/// A set of worker tasks in this process.
pub struct WorkerPool {
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl WorkerPool {
    /// Start `options.concurrency` workers for the registry's kinds.
    pub fn start(pool: PgPool, registry: Registry, options: WorkerOptions) -> WorkerPool {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let registry = Arc::new(registry);
        let mut tasks = JoinSet::new();
        tasks.spawn(listen_for_jobs(
            pool.clone(),
            wake.clone(),
            shutdown_rx.clone(),
        ));
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        for n in 0..options.concurrency.max(1) {
            let worker = Worker {
                last_sweep: std::sync::Mutex::new(std::time::Instant::now() - options.lease),
                id: format!(
                    "{}-{host}-{}-{n}-{}",
                    options.name,
                    std::process::id(),
                    short_random()
                ),
                pool: pool.clone(),
                registry: registry.clone(),
                options: options.clone(),
                wake: wake.clone(),
            };
            tasks.spawn(worker.run(shutdown_rx.clone()));
        }
        WorkerPool { shutdown, tasks }
    }

    /// Ask the workers to stop, hand their running jobs back to the queue, and wait.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stop the workers abruptly, as a crash would: no clean-up, leases simply expire.
    pub fn kill(mut self) {
        self.tasks.abort_all();
        self.tasks.detach_all();
    }
}

fn short_random() -> String {
    format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff)
}

/// Wake workers when a job is enqueued by any process (LISTEN); reconnects on failure.
async fn listen_for_jobs(pool: PgPool, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(ENQUEUED_CHANNEL).await?;
            loop {
                listener.recv().await?;
                wake.notify_waiters();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = listener => {
                if let Err(e) = result {
                    tracing::debug!("job listener: {e}; reconnecting");
                }
            }
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct Worker {
    id: String,
    last_sweep: std::sync::Mutex<std::time::Instant>,
    pool: PgPool,
    registry: Arc<Registry>,
    options: WorkerOptions,
    wake: Arc<Notify>,
}

enum LeaseState {
    Held,
    /// Cancelled, or claimed by someone else after our lease expired.
    Lost,
}

impl Worker {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let kinds = self.registry.kinds();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let notified = self.wake.notified();
            match self.claim(&kinds).await {
                Ok(Some(job)) => {
                    if self.execute(job, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(worker = %self.id, "claiming a job: {e}"),
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(self.options.poll_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Claim the next due job: a queued one, or a running one whose worker's lease expired.
    async fn claim(&self, kinds: &[String]) -> Result<Option<Job>, sqlx::Error> {
        // Sweeping dead last attempts is rare work: once per lease period per worker.
        let due = self.last_sweep.lock().map(|mut last| {
            let due = last.elapsed() >= self.options.lease;
            if due {
                *last = std::time::Instant::now();
            }
            due
        });
        if due.unwrap_or(true)
            && let Err(e) = super::fail_exhausted(&self.pool).await
        {
            tracing::debug!("failing exhausted jobs: {e}");
        }
        let job = sqlx::query_as::<_, Job>(concat!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1,
                    lease_expires_at = now() + $2, started_at = coalesce(started_at, now())
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE kind = ANY($3)
                   AND ($4::jsonb IS NULL OR payload @> $4)
                   AND ((status = 'queued' AND run_at <= now())
                     OR (status = 'running' AND lease_expires_at < now() AND attempts < max_attempts))
                 ORDER BY priority DESC, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING ",
            job_columns!()
        ))
        .bind(&self.id)
        .bind(whole_microseconds(self.options.lease))
        .bind(kinds)
        .bind(&self.options.only_payload)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(job) = &job {
            tracing::info!(job = job.id, kind = %job.kind, attempt = job.attempts, worker = %self.id, "claimed job");
            metrics::counter!("elite_jobs_claimed_total", "kind" => job.kind.clone()).increment(1);
            let _ = publish_event(&self.pool, job.id).await;
        }
        Ok(job)
    }

    /// Run one job to its end. Returns true when shutdown was requested meanwhile.
    async fn execute(&self, job: Job, shutdown: &mut watch::Receiver<bool>) -> bool {
        let Some(handler) = self.registry.handlers.get(&job.kind).cloned() else {
            return false;
        };
        let ctx = JobContext {
            job: job.clone(),
            pool: self.pool.clone(),
            worker_id: self.id.clone(),
        };
        let started = std::time::Instant::now();
        // A handler that panics fails its job (permanently: the same input panics again);
        // the worker itself goes on.
        let mut run =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handler.run(ctx)));
        let mut heartbeat = tokio::time::interval(self.options.heartbeat);
        heartbeat.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break Some(outcome.unwrap_or_else(|panic| {
                    Err(JobError::Permanent(format!("the job's handler panicked: {}", panic_text(&*panic))))
                })),
                _ = heartbeat.tick() => {
                    match self.extend_lease(job.id).await {
                        Ok(LeaseState::Held) => {}
                        Ok(LeaseState::Lost) => {
                            tracing::info!(job = job.id, "job cancelled or taken over; stopping its handler");
                            break None;
                        }
                        Err(e) => tracing::warn!(job = job.id, "heartbeat failed: {e}"),
                    }
                }
                _ = shutdown.changed() => {
                    drop(run);
                    if let Err(e) = self.release(job.id).await {
                        tracing::warn!(job = job.id, "releasing job at shutdown: {e}");
                    }
                    return true;
                }
            }
        };
        let Some(outcome) = outcome else { return false };
        metrics::histogram!("elite_job_seconds", "kind" => job.kind.clone())
            .record(started.elapsed().as_secs_f64());
        let recorded = match outcome {
            Ok(result) => self.succeed(job.id, result).await,
            Err(JobError::Permanent(message)) => self.fail(&job, &message, false).await,
            Err(JobError::Retryable(message)) => self.fail(&job, &message, true).await,
        };
        if let Err(e) = recorded {
            tracing::warn!(job = job.id, "recording job outcome: {e}");
        }
        let _ = publish_event(&self.pool, job.id).await;
        false
    }

    async fn extend_lease(&self, id: i64) -> Result<LeaseState, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE jobs SET lease_expires_at = now() + $3
             WHERE id = $1 AND locked_by = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(&self.id)
        .bind(whole_microseconds(self.options.lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(if updated == 1 {
            LeaseState::Held
        } else {
            LeaseState::Lost
        })
    }

    async fn succeed(&self, id: i64, result: Option<serde_json::Value>) -> Result<(), sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE jobs SET status = 'succeeded', result = $3, finished_at = now(),
                    locked_by = NULL, lease_expires_at = NULL, last_error = NULL
             WHERE id = $1 AND locked_by = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(&self.id)
        .bind(result)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            tracing::info!(
                job = id,
                "finished a job whose lease was lost; its outcome is discarded"
            );
        }
        Ok(())
    }

    async fn fail(&self, job: &Job, message: &str, retryable: bool) -> Result<(), sqlx::Error> {
        let retry = retryable && job.attempts < job.max_attempts;
        let delay = backoff(&self.options, job.attempts);
        tracing::warn!(job = job.id, kind = %job.kind, attempt = job.attempts, retry, "job failed: {message}");
        sqlx::query(
            "UPDATE jobs SET status = CASE WHEN $4 THEN 'queued'::job_status ELSE 'failed'::job_status END,
                    run_at = CASE WHEN $4 THEN now() + $5 ELSE run_at END,
                    finished_at = CASE WHEN $4 THEN NULL ELSE now() END,
                    last_error = $3, locked_by = NULL, lease_expires_at = NULL
             WHERE id = $1 AND locked_by = $2 AND status = 'running'",
        )
        .bind(job.id)
        .bind(&self.id)
        .bind(message)
        .bind(retry)
        .bind(delay)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Give a job back at shutdown without counting the interrupted attempt.
    async fn release(&self, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0),
                    locked_by = NULL, lease_expires_at = NULL, run_at = now()
             WHERE id = $1 AND locked_by = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(&self.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Exponential backoff with full jitter between half and all of the nominal delay.
fn backoff(options: &WorkerOptions, attempt: i32) -> Duration {
    let exponent = attempt.clamp(1, 20) as u32 - 1;
    let nominal = options
        .base_backoff
        .saturating_mul(1u32 << exponent.min(16))
        .min(options.max_backoff);
    let jitter = rand::rng().random_range(0.5..=1.0);
    whole_microseconds(nominal.mul_f64(jitter))
}

/// PostgreSQL intervals hold microseconds; sqlx refuses durations with finer parts.
fn whole_microseconds(d: Duration) -> Duration {
    Duration::from_micros(d.as_micros().min(u64::MAX as u128) as u64)
}

/// The message of a caught panic, when it is text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = WorkerOptions {
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            ..WorkerOptions::default()
        };
        for attempt in 1..30 {
            let d = backoff(&options, attempt);
            let nominal = (2u64 << (attempt as u32 - 1).min(16)).min(60);
            assert!(
                d.as_secs_f64() <= nominal as f64 + 1e-9,
                "attempt {attempt}: {d:?}"
            );
            assert!(
                d.as_secs_f64() >= nominal as f64 / 2.0 - 1e-9,
                "attempt {attempt}: {d:?}"
            );
        }
    }
}
