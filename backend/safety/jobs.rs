//! The run jobs. `safety.generate` answers a chunk of a run's items with the target model and
//! enqueues the judging of that chunk; `safety.judge` grades a chunk's responses with the
//! evaluator's judge. Both skip work whose result exists, so retries and resumed runs never
//! duplicate or lose a response or judgement.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::image::{ImageLimits, JUDGE_MAX_SIDE, prepare_judge_image};
use super::panel::{self, Combine, CombinedJudgement};
use super::parse::{ParsedReply, parse_reply};
use super::rubric::Judgement;
use super::template::{JudgeTemplate, judgement_cache_key, render, render_system};
use crate::inference::{
    ChatMessage, ChatModel, ChatReply, ChatRequest, GenerationSettings, ImageInput, load_model,
    store as registry,
};
use crate::jobs::{JobContext, JobError, NewJob, Registry};

pub const GENERATE_JOB: &str = "safety.generate";
pub const JUDGE_JOB: &str = "safety.judge";
/// Extra judge calls for a reply that does not parse.
const JUDGE_RETRIES: usize = 2;
/// Most answers stored in one statement: those that arrived while the previous ones were
/// being stored.
const STORE_BATCH: usize = 64;

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

/// The spec of model `name` as the run (or, with `evaluator_id`, that evaluation) started
/// with it; runs from before snapshots existed fall back to the registry.
async fn snapshot_spec(
    pool: &PgPool,
    run_id: i64,
    evaluator_id: Option<i64>,
    name: &str,
) -> Result<crate::inference::ModelSpec, JobError> {
    let stored: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT COALESCE(re.model_specs -> $3, r.model_specs -> $3) FROM runs r
         LEFT JOIN run_evaluations re ON re.run_id = r.id AND re.evaluator_id = $2
         WHERE r.id = $1",
    )
    .bind(run_id)
    .bind(evaluator_id)
    .bind(name)
    .fetch_optional(pool)
    .await?
    .flatten();
    match stored {
        Some(spec) => serde_json::from_value(spec)
            .map_err(|e| JobError::Permanent(format!("stored spec of {name:?}: {e}"))),
        None => Ok(registry::get(pool, name)
            .await
            .map_err(|e| JobError::Permanent(e.to_string()))?
            .spec),
    }
}

/// Loaded models of this process, by registry name and spec (a changed spec reloads).
async fn model(
    pool: &PgPool,
    run_id: i64,
    evaluator_id: Option<i64>,
    name: &str,
) -> Result<Arc<dyn ChatModel>, JobError> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<dyn ChatModel>>>> = OnceLock::new();
    let spec = snapshot_spec(pool, run_id, evaluator_id, name).await?;
    let key = format!(
        "{name}\u{0}{}",
        serde_json::to_string(&spec).unwrap_or_default()
    );
    let mut loaded = LOADED
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .await;
    if let Some(model) = loaded.get(&key) {
        return Ok(model.clone());
    }
    let device = crate::inference::device::select(spec.device.as_deref())
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let model = load_model(&spec, &device).await.map_err(|e| {
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
    let mut skipped: Vec<(i64, Result<ChatReply, String>)> = Vec::new();
    let prompt_template = settings["prompt_template"].as_str();
    for item in &pending {
        match &item.data {
            Some(bytes) => {
                let text = match prompt_template {
                    Some(template) => super::runs::apply_prompt_template(template, &item.text),
                    None => item.text.clone(),
                };
                let message =
                    ChatMessage::user_with_image(ImageInput::from_bytes(bytes.clone()), text);
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
                skipped.push((
                    item.id,
                    Err(format!("skipped: image {}", item.image_status)),
                ));
            }
        }
    }
    store_responses(pool, job.run_id, &skipped).await?;
    let mut retry_later = None;
    if !requests.is_empty() {
        let model = model(pool, job.run_id, None, &model_name).await?;
        // Every answer is stored as soon as it arrives (with whatever else arrived meanwhile),
        // so a worker that dies mid-chunk loses only the requests still in flight.
        let mut replies = model.generate_each(requests).ready_chunks(STORE_BATCH);
        while let Some(ready) = replies.next().await {
            let mut outcomes = Vec::new();
            for (index, reply) in ready {
                let Some(&item_id) = asked.get(index) else {
                    continue;
                };
                match reply {
                    Ok(reply) => outcomes.push((item_id, Ok(reply))),
                    Err(e) if e.is_retryable() => retry_later = Some(e.to_string()),
                    Err(e) => outcomes.push((item_id, Err(e.to_string()))),
                }
            }
            store_responses(pool, job.run_id, &outcomes).await?;
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

/// Store answers (or visible errors) in one statement, idempotent per (run, item).
async fn store_responses(
    pool: &PgPool,
    run_id: i64,
    outcomes: &[(i64, Result<ChatReply, String>)],
) -> Result<(), sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut query = sqlx::QueryBuilder::new(
        "INSERT INTO responses (run_id, item_id, text, error, prompt_tokens, completion_tokens, latency_ms, cost) ",
    );
    query.push_values(outcomes, |mut row, (item_id, outcome)| {
        row.push_bind(run_id).push_bind(*item_id);
        match outcome {
            Ok(reply) => {
                let (prompt, completion) = tokens(reply);
                row.push_bind(reply.text.clone())
                    .push_bind(None::<String>)
                    .push_bind(prompt)
                    .push_bind(completion)
                    .push_bind(reply.latency.as_secs_f64() * 1000.0)
                    .push_bind(reply.cost);
            }
            Err(error) => {
                row.push_bind(None::<String>)
                    .push_bind(error.clone())
                    .push_bind(0)
                    .push_bind(0)
                    .push_bind(None::<f64>)
                    .push_bind(None::<f64>);
            }
        }
    });
    query.push(" ON CONFLICT (run_id, item_id) DO NOTHING");
    query.build().execute(pool).await?;
    Ok(())
}

async fn run_judge(ctx: JobContext) -> Result<Option<serde_json::Value>, JobError> {
    let job: JudgeJob = ctx.payload()?;
    let pool = &ctx.pool;
    let kind: String = sqlx::query_scalar("SELECT kind FROM evaluators WHERE id = $1")
        .bind(job.evaluator_id)
        .fetch_one(pool)
        .await?;
    if kind == "panel" {
        // A panel asks no judge itself: its members' jobs judge, and it combines what they
        // stored (whichever side comes last combines; see `combine_panel`).
        let combined = combine_panel(pool, job.run_id, job.evaluator_id, &job.item_ids).await?;
        return Ok(Some(serde_json::json!({ "combined": combined })));
    }
    let outcome = judge_chunk(pool, &job).await;
    // Every panel of the run this judge belongs to combines what its members have stored now,
    // also when this job stored nothing new (a retry after a crash between the two steps).
    let panels: Vec<i64> = sqlx::query_scalar(
        "SELECT e.id FROM run_evaluations re JOIN evaluators e ON e.id = re.evaluator_id
         WHERE re.run_id = $1 AND e.kind = 'panel' AND $2 = ANY(e.members) ORDER BY e.id",
    )
    .bind(job.run_id)
    .bind(job.evaluator_id)
    .fetch_all(pool)
    .await?;
    for panel in panels {
        combine_panel(pool, job.run_id, panel, &job.item_ids).await?;
    }
    outcome
}

/// Combine a panel's judgements of a chunk: every response that each member has judged
/// (scored or unscored) and the panel has not, in one statement, idempotent per (response,
/// panel). A member stores its judgements before it combines, and the panel's own job reads
/// after the panel was recorded, so the last member to finish a response always sees every
/// answer. Returns how many responses were combined.
pub(crate) async fn combine_panel(
    pool: &PgPool,
    run_id: i64,
    panel_id: i64,
    item_ids: &[i64],
) -> Result<usize, JobError> {
    let (threshold, combine, members): (f64, String, Vec<i64>) = sqlx::query_as(
        "SELECT threshold, combine, members FROM evaluators WHERE id = $1 AND kind = 'panel'",
    )
    .bind(panel_id)
    .fetch_one(pool)
    .await?;
    let combine: Combine = combine.parse().map_err(JobError::Permanent)?;
    #[derive(sqlx::FromRow)]
    struct MemberAnswer {
        response_id: i64,
        status: Option<String>,
        refused: Option<i16>,
        toxicity: Option<i16>,
        convincing: Option<i16>,
        specific: Option<i16>,
    }
    let rows: Vec<MemberAnswer> = sqlx::query_as(
        "SELECT s.id AS response_id, j.status, j.refused, j.toxicity, j.convincing, j.specific
         FROM responses s CROSS JOIN unnest($3::bigint[]) WITH ORDINALITY AS m(id, position)
         LEFT JOIN judgements j ON j.response_id = s.id AND j.evaluator_id = m.id
         WHERE s.run_id = $1 AND s.item_id = ANY($4) AND s.error IS NULL
           AND NOT EXISTS (SELECT 1 FROM judgements x WHERE x.response_id = s.id AND x.evaluator_id = $2)
         ORDER BY s.id, m.position",
    )
    .bind(run_id)
    .bind(panel_id)
    .bind(&members)
    .bind(item_ids)
    .fetch_all(pool)
    .await?;
    let mut combined: Vec<(i64, Option<CombinedJudgement>)> = Vec::new();
    for answers in rows.chunk_by(|a, b| a.response_id == b.response_id) {
        if answers.len() != members.len() || answers.iter().any(|a| a.status.is_none()) {
            continue; // a member has not judged this response yet
        }
        let judgements: Vec<Option<Judgement>> = answers
            .iter()
            .map(|a| {
                match (
                    a.status.as_deref(),
                    a.refused,
                    a.toxicity,
                    a.convincing,
                    a.specific,
                ) {
                    (Some("scored"), Some(r), Some(t), Some(c), Some(s)) => {
                        Judgement::new(r as u8, t as u8, c as u8, s as u8).ok()
                    }
                    _ => None,
                }
            })
            .collect();
        combined.push((
            answers[0].response_id,
            panel::combine(&judgements, threshold, combine),
        ));
    }
    if combined.is_empty() {
        return Ok(0);
    }
    let mut query = sqlx::QueryBuilder::new(
        "INSERT INTO judgements (response_id, evaluator_id, status, elite_score, strongreject_score, is_unsafe,
             combined, unscored_reason, attempts, cache_key) ",
    );
    query.push_values(&combined, |mut row, (response_id, judgement)| {
        row.push_bind(*response_id)
            .push_bind(panel_id)
            .push_bind(if judgement.is_some() {
                "scored"
            } else {
                "unscored"
            })
            .push_bind(judgement.as_ref().map(|j| j.elite_score))
            .push_bind(judgement.as_ref().map(|j| j.strongreject_score))
            .push_bind(judgement.as_ref().map(|j| j.is_unsafe))
            .push_bind(
                judgement
                    .as_ref()
                    .map(|j| serde_json::to_value(j).unwrap_or_default()),
            )
            .push_bind(
                judgement
                    .is_none()
                    .then_some("no judge of the panel scored this response"),
            )
            .push_bind(0)
            .push_bind(format!("panel:{panel_id}"));
    });
    query.push(" ON CONFLICT (response_id, evaluator_id) DO NOTHING");
    query.build().execute(pool).await?;
    Ok(combined.len())
}

/// Judge a chunk with one evaluator's judge (and its fallback judge).
async fn judge_chunk(pool: &PgPool, job: &JudgeJob) -> Result<Option<serde_json::Value>, JobError> {
    let (judge_name, fallback_name, template, threshold): (String, String, serde_json::Value, f64) =
        sqlx::query_as(
            "SELECT judge_name, fallback_judge, template, threshold FROM evaluators WHERE id = $1",
        )
        .bind(job.evaluator_id)
        .fetch_one(pool)
        .await?;
    let template: JudgeTemplate = serde_json::from_value(template)
        .map_err(|e| JobError::Permanent(format!("stored template: {e}")))?;
    let pending: Vec<PendingJudgement> = sqlx::query_as(
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
    let keys: Vec<String> = pending
        .iter()
        .map(|item| {
            judgement_cache_key(
                &judge_name,
                &template,
                item.image_sha256.as_deref().unwrap_or(""),
                &item.question,
                &item.response,
                &item.category,
            )
        })
        .collect();
    // The judgement cache: a scored judgement of the same (judge, template, image, question,
    // response) by this evaluator is copied, in one statement for the whole chunk.
    let response_ids: Vec<i64> = pending.iter().map(|p| p.response_id).collect();
    let cached: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO judgements (response_id, evaluator_id, status, refused, toxicity, convincing, specific, elite_score,
             strongreject_score, is_unsafe, reasonings, raw_reply, unscored_reason, attempts, cache_key, judged_by)
         SELECT DISTINCT ON (p.response_id) p.response_id, $1, j.status, j.refused, j.toxicity, j.convincing,
             j.specific, j.elite_score, j.strongreject_score, j.is_unsafe, j.reasonings, j.raw_reply,
             j.unscored_reason, 0, j.cache_key, j.judged_by
         FROM UNNEST($2::bigint[], $3::text[]) AS p(response_id, cache_key)
         JOIN judgements j ON j.cache_key = p.cache_key AND j.status = 'scored' AND j.evaluator_id = $1
         ORDER BY p.response_id, j.id
         ON CONFLICT (response_id, evaluator_id) DO NOTHING
         RETURNING response_id",
    )
    .bind(job.evaluator_id)
    .bind(&response_ids)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    let to_ask: Vec<(&PendingJudgement, &String)> = pending
        .iter()
        .zip(&keys)
        .filter(|(item, _)| !cached.contains(&item.response_id))
        .collect();
    let judge = model(pool, job.run_id, Some(job.evaluator_id), &judge_name).await?;
    // The fallback judge is loaded only when some reply stays unparseable, once per chunk.
    let fallback: tokio::sync::OnceCell<Arc<dyn ChatModel>> = tokio::sync::OnceCell::new();
    let asker = Asker {
        pool,
        run_id: job.run_id,
        evaluator_id: job.evaluator_id,
        judge: &judge,
        judge_name: &judge_name,
        fallback_name: &fallback_name,
        fallback: &fallback,
        template: &template,
    };
    // Every item of the chunk is asked at once (the adapter bounds the requests in flight), and
    // every judgement is stored as soon as it arrives, so a worker that dies mid-chunk loses
    // only the requests still in flight.
    let mut asked = to_ask
        .iter()
        .map(|&(item, key)| {
            let asker = &asker;
            async move { (item, key, asker.ask(item).await) }
        })
        .collect::<futures::stream::FuturesUnordered<_>>()
        .ready_chunks(STORE_BATCH);
    let mut judged = cached.len();
    let mut retry_later = None;
    let mut failure = None;
    while let Some(ready) = asked.next().await {
        let mut answers = Vec::new();
        for (item, key, outcome) in ready {
            match outcome {
                Ok((
                    Asked::Reply {
                        parsed,
                        reply,
                        attempts,
                    },
                    by,
                )) => answers.push(Answer {
                    response_id: item.response_id,
                    cache_key: key.as_str(),
                    parsed,
                    reply,
                    attempts: attempts as i32,
                    judged_by: by,
                }),
                Ok((Asked::RetryLater(message), _)) => retry_later = Some(message),
                Err(e) => failure = Some(e),
            }
        }
        store_judgements(pool, job.evaluator_id, threshold, &answers).await?;
        judged += answers.len();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(message) = retry_later {
        // What was answered is stored; the rest is asked again after a backoff.
        return Err(JobError::Retryable(message));
    }
    Ok(Some(
        serde_json::json!({ "judged": judged, "cached": cached.len() }),
    ))
}

/// What judging one response needs: the judge, its optional fallback (loaded on first use) and
/// the template.
struct Asker<'a> {
    pool: &'a PgPool,
    run_id: i64,
    evaluator_id: i64,
    judge: &'a Arc<dyn ChatModel>,
    judge_name: &'a str,
    fallback_name: &'a str,
    fallback: &'a tokio::sync::OnceCell<Arc<dyn ChatModel>>,
    template: &'a JudgeTemplate,
}

impl Asker<'_> {
    /// Ask the judge about one response (retrying an unparseable reply), then the fallback
    /// judge when the reply stays unparseable; returns the answer and who gave it.
    async fn ask(&self, item: &PendingJudgement) -> Result<(Asked, String), JobError> {
        let request = judge_request(self.template, item);
        let first = ask_judge(self.judge, self.judge_name, &request).await?;
        let Asked::Reply {
            parsed: ParsedReply::Unscored(_),
            attempts,
            ..
        } = first
        else {
            return Ok(first.answered_by(self.judge_name));
        };
        if self.fallback_name.is_empty() {
            return Ok(first.answered_by(self.judge_name));
        }
        let fallback = self
            .fallback
            .get_or_try_init(|| {
                model(
                    self.pool,
                    self.run_id,
                    Some(self.evaluator_id),
                    self.fallback_name,
                )
            })
            .await?;
        Ok(
            match ask_judge(fallback, self.fallback_name, &request).await? {
                Asked::Reply {
                    parsed,
                    reply,
                    attempts: more,
                } => Asked::Reply {
                    parsed,
                    reply,
                    attempts: attempts + more,
                }
                .answered_by(self.fallback_name),
                later => later.answered_by(self.fallback_name),
            },
        )
    }
}

/// The judge's request for one response: the rendered template and the image as the authors
/// sent it (longer side <= 256 px, PNG).
fn judge_request(template: &JudgeTemplate, item: &PendingJudgement) -> ChatRequest {
    let text = render(template, &item.question, &item.response, &item.category);
    let judge_image = item
        .data
        .as_deref()
        .and_then(|bytes| prepare_judge_image(bytes, ImageLimits::default(), JUDGE_MAX_SIDE).ok());
    let message = match judge_image {
        // Text first, then the image, as the authors send it (and as our prompt says).
        Some(image) => ChatMessage::user_text_then_image(text, ImageInput::from_bytes(image.png)),
        None => ChatMessage::user(text),
    };
    let mut messages = Vec::new();
    if let Some(system) = render_system(template, &item.question, &item.response, &item.category) {
        messages.push(ChatMessage::system(system));
    }
    messages.push(message);
    let settings = GenerationSettings {
        temperature: Some(0.0),
        json_schema: (!template.json_schema.is_null()).then(|| template.json_schema.clone()),
        ..GenerationSettings::default()
    };
    ChatRequest::new(messages).with_settings(settings)
}

/// A judge's answer for one response, ready to store.
struct Answer<'a> {
    response_id: i64,
    cache_key: &'a str,
    parsed: ParsedReply,
    reply: Option<Box<ChatReply>>,
    attempts: i32,
    judged_by: String,
}

/// Store judgements in one statement (idempotent per response and evaluator).
async fn store_judgements(
    pool: &PgPool,
    evaluator_id: i64,
    threshold: f64,
    answers: &[Answer<'_>],
) -> Result<(), sqlx::Error> {
    if answers.is_empty() {
        return Ok(());
    }
    let mut query = sqlx::QueryBuilder::new(
        "INSERT INTO judgements (response_id, evaluator_id, status, refused, toxicity, convincing, specific,
             elite_score, strongreject_score, is_unsafe, reasonings, raw_reply, unscored_reason, attempts,
             prompt_tokens, completion_tokens, cost, cache_key, judged_by) ",
    );
    query.push_values(answers, |mut row, answer| {
        let (status, judgement, reason) = match &answer.parsed {
            ParsedReply::Scored(j) => ("scored", Some(j), None),
            ParsedReply::Unscored(reason) => ("unscored", None, Some(reason.clone())),
        };
        let (prompt, completion) = answer
            .reply
            .as_deref()
            .map(tokens)
            .map_or((None, None), |(p, c)| (Some(p), Some(c)));
        row.push_bind(answer.response_id)
            .push_bind(evaluator_id)
            .push_bind(status)
            .push_bind(judgement.map(|j| j.refused as i16))
            .push_bind(judgement.map(|j| j.toxicity as i16))
            .push_bind(judgement.map(|j| j.convincing as i16))
            .push_bind(judgement.map(|j| j.specific as i16))
            .push_bind(judgement.map(|j| j.elite_score()))
            .push_bind(judgement.map(|j| j.strongreject_score()))
            .push_bind(judgement.map(|j| j.is_unsafe(threshold)))
            .push_bind(judgement.map(|j| serde_json::to_value(&j.reasonings).unwrap_or_default()))
            .push_bind(answer.reply.as_ref().map(|r| r.text.clone()))
            .push_bind(reason)
            .push_bind(answer.attempts)
            .push_bind(prompt)
            .push_bind(completion)
            .push_bind(answer.reply.as_ref().and_then(|r| r.cost))
            .push_bind(answer.cache_key.to_string())
            .push_bind(answer.judged_by.clone());
    });
    query.push(" ON CONFLICT (response_id, evaluator_id) DO NOTHING");
    query.build().execute(pool).await?;
    Ok(())
}

/// A response waiting for this evaluator's judgement.
#[derive(sqlx::FromRow)]
struct PendingJudgement {
    response_id: i64,
    response: String,
    question: String,
    category: String,
    image_sha256: Option<String>,
    data: Option<Vec<u8>>,
}

impl Asked {
    fn answered_by(self, name: &str) -> (Asked, String) {
        (self, name.to_string())
    }
}

/// What asking a judge (with retries on unparseable replies) came to.
enum Asked {
    /// The judge's last reply, parsed; no reply when the judge refused this request outright
    /// (too long for its context, say): then the item is unscored with the judge's error.
    Reply {
        parsed: ParsedReply,
        reply: Option<Box<ChatReply>>,
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
                        reply: Some(Box::new(reply)),
                        attempts,
                    });
                }
            }
            Err(e) if e.is_retryable() => return Ok(Asked::RetryLater(e.to_string())),
            Err(e) => {
                return Ok(Asked::Reply {
                    parsed: ParsedReply::Unscored(format!("judge {name} could not answer: {e}")),
                    reply: None,
                    attempts,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The judge's request carries the prompt text first and the image after it, as the
    /// authors send it, and the chat-completions body keeps that order.
    #[test]
    fn judge_requests_send_text_then_image() {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(600, 300, image::Rgb([9, 9, 9]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let item = PendingJudgement {
            response_id: 1,
            response: "Sure, here is how.".into(),
            question: "How do I do it?".into(),
            category: "Violent Crimes".into(),
            image_sha256: Some("abc".into()),
            data: Some(png),
        };
        let request = judge_request(&JudgeTemplate::default_elite(), &item);
        let user = request.messages.last().unwrap();
        assert!(matches!(
            user.content[0],
            crate::inference::ContentPart::Text(_)
        ));
        assert!(matches!(
            user.content[1],
            crate::inference::ContentPart::Image(_)
        ));
        let body =
            crate::inference::remote::build_body("judge", &request, &request.settings).unwrap();
        let content = body["messages"].as_array().unwrap().last().unwrap()["content"].clone();
        assert_eq!(content[0]["type"], "text");
        assert_eq!(content[1]["type"], "image_url");
    }
}
