//! The run jobs. `safety.generate` answers a chunk of a run's items with the target model and
//! enqueues the judging of that chunk; `safety.judge` grades a chunk's responses with the
//! evaluator's judge. Both skip work whose result exists, so retries and resumed runs never
//! duplicate or lose a response or judgement.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::image::{ImageLimits, JUDGE_MAX_SIDE, prepare_judge_image};
use super::parse::{ParsedReply, parse_reply};
use super::template::{JudgeTemplate, judgement_cache_key, render};
use crate::inference::{
    ChatMessage, ChatModel, ChatReply, ChatRequest, GenerationSettings, ImageInput, load_model,
    store as registry,
};
use crate::jobs::{JobContext, JobError, NewJob, Registry};

pub const GENERATE_JOB: &str = "safety.generate";
pub const JUDGE_JOB: &str = "safety.judge";
/// Extra judge calls for a reply that does not parse.
const JUDGE_RETRIES: usize = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateJob {
    pub run_id: i64,
    pub item_ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeJob {
    pub run_id: i64,
    pub evaluator_id: i64,
    pub item_ids: Vec<i64>,
}

pub fn register(registry: Registry) -> Registry {
    registry
        .register(GENERATE_JOB, run_generate)
        .register(JUDGE_JOB, run_judge)
}

impl From<super::store::StoreError> for JobError {
    fn from(e: super::store::StoreError) -> Self {
        match e {
            super::store::StoreError::Sql(e) => JobError::Retryable(format!("database: {e}")),
            other => JobError::Permanent(other.to_string()),
        }
    }
}

/// Loaded models of this process, by registry name and spec (a changed spec reloads).
async fn model(pool: &PgPool, name: &str) -> Result<Arc<dyn ChatModel>, JobError> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<dyn ChatModel>>>> = OnceLock::new();
    let registered = registry::get(pool, name)
        .await
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let key = format!(
        "{name}\u{0}{}",
        serde_json::to_string(&registered.spec).unwrap_or_default()
    );
    let mut loaded = LOADED
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .await;
    if let Some(model) = loaded.get(&key) {
        return Ok(model.clone());
    }
    let model = load_model(&registered.spec, &crate::cli::models::device())
        .await
        .map_err(|e| {
            if e.is_retryable() {
                JobError::Retryable(e.to_string())
            } else {
                JobError::Permanent(e.to_string())
            }
        })?;
    loaded.retain(|k, _| !k.starts_with(&format!("{name}\u{0}")));
    loaded.insert(key, model.clone());
    Ok(model)
}

fn tokens(reply: &ChatReply) -> (i32, i32) {
    (reply.prompt_tokens as i32, reply.completion_tokens as i32)
}

async fn run_generate(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: GenerateJob = ctx.payload()?;
    let pool = &ctx.pool;
    let (model_name, settings): (String, serde_json::Value) =
        sqlx::query_as("SELECT model_name, settings FROM runs WHERE id = $1")
            .bind(job.run_id)
            .fetch_one(pool)
            .await?;
    #[derive(sqlx::FromRow)]
    struct Pending {
        id: i64,
        text: String,
        image_status: String,
        data: Option<Vec<u8>>,
    }
    let pending: Vec<Pending> = sqlx::query_as(
        "SELECT i.id, i.text, i.image_status, im.data FROM items i LEFT JOIN images im ON im.sha256 = i.image_sha256
         WHERE i.id = ANY($2) AND NOT EXISTS (SELECT 1 FROM responses s WHERE s.run_id = $1 AND s.item_id = i.id)
         ORDER BY i.id",
    )
    .bind(job.run_id)
    .bind(&job.item_ids)
    .fetch_all(pool)
    .await?;
    let mut requests = Vec::new();
    let mut asked = Vec::new();
    for item in &pending {
        match &item.data {
            Some(bytes) => {
                let message = ChatMessage::user_with_image(
                    ImageInput::from_bytes(bytes.clone()),
                    item.text.clone(),
                );
                let settings = GenerationSettings {
                    max_new_tokens: settings["max_new_tokens"].as_u64().map(|n| n as usize),
                    temperature: settings["temperature"].as_f64(),
                    seed: settings["seed"].as_u64(),
                    ..GenerationSettings::default()
                };
                requests.push(ChatRequest::new(vec![message]).with_settings(settings));
                asked.push(item.id);
            }
            None => {
                // Visible skip: the item has no usable image.
                store_response(
                    pool,
                    job.run_id,
                    item.id,
                    Err(format!("skipped: image {}", item.image_status)),
                )
                .await?;
            }
        }
    }
    let mut retry_later = None;
    if !requests.is_empty() {
        let model = model(pool, &model_name).await?;
        let replies = model.generate_batch(requests).await;
        for (item_id, reply) in asked.iter().zip(replies) {
            match reply {
                Ok(reply) => store_response(pool, job.run_id, *item_id, Ok(&reply)).await?,
                Err(e) if e.is_retryable() => retry_later = Some(e.to_string()),
                Err(e) => store_response(pool, job.run_id, *item_id, Err(e.to_string())).await?,
            }
        }
    }
    if let Some(message) = retry_later {
        // Answers that arrived are stored; the rest are asked again after a backoff, and the
        // chunk is judged once it is whole.
        return Err(JobError::Retryable(message));
    }
    // Read the evaluations after storing the answers (see `runs::add_evaluation`).
    let evaluators: Vec<i64> =
        sqlx::query_scalar("SELECT evaluator_id FROM run_evaluations WHERE run_id = $1")
            .bind(job.run_id)
            .fetch_all(pool)
            .await?;
    for evaluator_id in evaluators {
        enqueue_judging(pool, job.run_id, evaluator_id, &job.item_ids).await?;
    }
    Ok(Some(
        serde_json::json!({ "answered": asked.len(), "skipped": pending.len() - asked.len() }),
    ))
}

/// Enqueue the judging of one answered chunk by one evaluator (once per chunk and evaluator).
pub(crate) async fn enqueue_judging(
    pool: &PgPool,
    run_id: i64,
    evaluator_id: i64,
    item_ids: &[i64],
) -> Result<(), sqlx::Error> {
    let payload = JudgeJob {
        run_id,
        evaluator_id,
        item_ids: item_ids.to_vec(),
    };
    let key = format!(
        "{JUDGE_JOB}:{run_id}:{evaluator_id}:{}",
        item_ids.first().copied().unwrap_or_default()
    );
    let judge = NewJob::new(
        JUDGE_JOB,
        serde_json::to_value(&payload).unwrap_or_default(),
    )
    .dedup_key(key)
    .max_attempts(5);
    crate::jobs::enqueue(pool, judge).await?;
    Ok(())
}

async fn store_response(
    pool: &PgPool,
    run_id: i64,
    item_id: i64,
    reply: Result<&ChatReply, String>,
) -> Result<(), sqlx::Error> {
    let (text, error, (prompt, completion), latency, cost) = match reply {
        Ok(r) => (
            Some(r.text.clone()),
            None,
            tokens(r),
            Some(r.latency.as_secs_f64() * 1000.0),
            r.cost,
        ),
        Err(e) => (None, Some(e), (0, 0), None, None),
    };
    sqlx::query(
        "INSERT INTO responses (run_id, item_id, text, error, prompt_tokens, completion_tokens, latency_ms, cost)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id, item_id) DO NOTHING",
    )
    .bind(run_id)
    .bind(item_id)
    .bind(text)
    .bind(error)
    .bind(prompt)
    .bind(completion)
    .bind(latency)
    .bind(cost)
    .execute(pool)
    .await?;
    Ok(())
}

async fn run_judge(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: JudgeJob = ctx.payload()?;
    let pool = &ctx.pool;
    let (judge_name, fallback_name, template, threshold): (String, String, serde_json::Value, f64) =
        sqlx::query_as(
            "SELECT judge_name, fallback_judge, template, threshold FROM evaluators WHERE id = $1",
        )
        .bind(job.evaluator_id)
        .fetch_one(pool)
        .await?;
    let template: JudgeTemplate = serde_json::from_value(template)
        .map_err(|e| JobError::Permanent(format!("stored template: {e}")))?;
    #[derive(sqlx::FromRow)]
    struct Pending {
        response_id: i64,
        response: String,
        question: String,
        category: String,
        image_sha256: Option<String>,
        data: Option<Vec<u8>>,
    }
    let pending: Vec<Pending> = sqlx::query_as(
        "SELECT s.id AS response_id, s.text AS response, i.text AS question, c.name AS category, i.image_sha256, im.data
         FROM responses s JOIN items i ON i.id = s.item_id JOIN categories c ON c.code = i.category_code
         LEFT JOIN images im ON im.sha256 = i.image_sha256
         WHERE s.run_id = $1 AND s.item_id = ANY($3) AND s.error IS NULL
           AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.response_id = s.id AND j.evaluator_id = $2)",
    )
    .bind(job.run_id)
    .bind(job.evaluator_id)
    .bind(&job.item_ids)
    .fetch_all(pool)
    .await?;
    if pending.is_empty() {
        return Ok(Some(serde_json::json!({ "judged": 0 })));
    }
    let judge = model(pool, &judge_name).await?;
    let mut judged = 0;
    let mut retry_later = None;
    for item in &pending {
        let key = judgement_cache_key(
            &judge_name,
            &template,
            item.image_sha256.as_deref().unwrap_or(""),
            &item.question,
            &item.response,
        );
        let cached = sqlx::query(
            "INSERT INTO judgements (response_id, evaluator_id, status, refused, toxicity, convincing, specific, elite_score,
                 strongreject_score, is_unsafe, reasonings, raw_reply, unscored_reason, attempts, cache_key, judged_by)
             SELECT $1, $2, status, refused, toxicity, convincing, specific, elite_score, strongreject_score, is_unsafe,
                 reasonings, raw_reply, unscored_reason, 0, cache_key, judged_by
             FROM judgements WHERE cache_key = $3 AND status = 'scored' AND evaluator_id = $2 LIMIT 1
             ON CONFLICT (response_id, evaluator_id) DO NOTHING",
        )
        .bind(item.response_id)
        .bind(job.evaluator_id)
        .bind(&key)
        .execute(pool)
        .await?
        .rows_affected();
        if cached > 0 {
            judged += 1;
            continue;
        }
        let text = render(&template, &item.question, &item.response, &item.category);
        // The judge sees the image as the authors sent it: longer side <= 256 px, PNG.
        let judge_image = item.data.as_deref().and_then(|bytes| {
            prepare_judge_image(bytes, ImageLimits::default(), JUDGE_MAX_SIDE).ok()
        });
        let message = match judge_image {
            Some(image) => ChatMessage::user_with_image(ImageInput::from_bytes(image.png), text),
            None => ChatMessage::user(text),
        };
        let settings = GenerationSettings {
            temperature: Some(0.0),
            json_schema: Some(template.json_schema.clone()),
            ..GenerationSettings::default()
        };
        let request = ChatRequest::new(vec![message]).with_settings(settings);
        let (parsed, reply, attempts, judged_by) =
            match ask_judge(&judge, &judge_name, &request).await? {
                Asked::RetryLater(message) => {
                    retry_later = Some(message);
                    continue;
                }
                Asked::Reply {
                    parsed: ParsedReply::Unscored(_),
                    attempts,
                    ..
                } if !fallback_name.is_empty() => {
                    let fallback = model(pool, &fallback_name).await?;
                    match ask_judge(&fallback, &fallback_name, &request).await? {
                        Asked::RetryLater(message) => {
                            retry_later = Some(message);
                            continue;
                        }
                        Asked::Reply {
                            parsed,
                            reply,
                            attempts: more,
                        } => (parsed, reply, attempts + more, &fallback_name),
                    }
                }
                Asked::Reply {
                    parsed,
                    reply,
                    attempts,
                } => (parsed, reply, attempts, &judge_name),
            };
        let at = StoredJudgement {
            response_id: item.response_id,
            evaluator_id: job.evaluator_id,
            threshold,
            attempts: attempts as i32,
            cache_key: &key,
            judged_by,
        };
        store_judgement(pool, &at, &parsed, &reply).await?;
        judged += 1;
    }
    if let Some(message) = retry_later {
        return Err(JobError::Retryable(message));
    }
    Ok(Some(serde_json::json!({ "judged": judged })))
}

/// Where a judgement goes and how it was obtained.
struct StoredJudgement<'a> {
    response_id: i64,
    evaluator_id: i64,
    threshold: f64,
    attempts: i32,
    cache_key: &'a str,
    judged_by: &'a str,
}

/// What asking a judge (with retries on unparseable replies) came to.
enum Asked {
    Reply {
        parsed: ParsedReply,
        reply: Box<ChatReply>,
        attempts: usize,
    },
    /// The judge is unavailable for now (rate limit, timeout, 5xx): ask again later.
    RetryLater(String),
}

async fn ask_judge(
    judge: &Arc<dyn ChatModel>,
    name: &str,
    request: &ChatRequest,
) -> Result<Asked, JobError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match judge.generate(request.clone()).await {
            Ok(reply) => {
                let parsed = parse_reply(&reply.text);
                if matches!(parsed, ParsedReply::Scored(_)) || attempts > JUDGE_RETRIES {
                    return Ok(Asked::Reply {
                        parsed,
                        reply: Box::new(reply),
                        attempts,
                    });
                }
            }
            Err(e) if e.is_retryable() => return Ok(Asked::RetryLater(e.to_string())),
            Err(e) => return Err(JobError::Permanent(format!("judge {name}: {e}"))),
        }
    }
}

async fn store_judgement(
    pool: &PgPool,
    at: &StoredJudgement<'_>,
    parsed: &ParsedReply,
    reply: &ChatReply,
) -> Result<(), sqlx::Error> {
    let threshold = at.threshold;
    let (status, judgement, reason) = match parsed {
        ParsedReply::Scored(j) => ("scored", Some(j), None),
        ParsedReply::Unscored(reason) => ("unscored", None, Some(reason.clone())),
    };
    let (prompt, completion) = tokens(reply);
    sqlx::query(
        "INSERT INTO judgements (response_id, evaluator_id, status, refused, toxicity, convincing, specific, elite_score,
             strongreject_score, is_unsafe, reasonings, raw_reply, unscored_reason, attempts, prompt_tokens,
             completion_tokens, cost, cache_key, judged_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (response_id, evaluator_id) DO NOTHING",
    )
    .bind(at.response_id)
    .bind(at.evaluator_id)
    .bind(status)
    .bind(judgement.map(|j| j.refused as i16))
    .bind(judgement.map(|j| j.toxicity as i16))
    .bind(judgement.map(|j| j.convincing as i16))
    .bind(judgement.map(|j| j.specific as i16))
    .bind(judgement.map(|j| j.elite_score()))
    .bind(judgement.map(|j| j.strongreject_score()))
    .bind(judgement.map(|j| j.is_unsafe(threshold)))
    .bind(judgement.map(|j| serde_json::to_value(&j.reasonings).unwrap_or_default()))
    .bind(&reply.text)
    .bind(reason)
    .bind(at.attempts)
    .bind(prompt)
    .bind(completion)
    .bind(reply.cost)
    .bind(at.cache_key)
    .bind(at.judged_by)
    .execute(pool)
    .await?;
    Ok(())
}
