//! The annotation tables: queues, members, items, labels. Every write that must be all or
//! nothing (a queue with its items and members, a label with its item's count, an import) is
//! one transaction; every refusal happens before anything is written.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

/// Longest queue guideline, in bytes.
pub const MAX_GUIDELINE_BYTES: usize = 64 * 1024;

use super::import::LabelFile;
use super::schema::{LabelSchema, ValidLabel};
use super::selection::{Candidate, Selection, stratified_sample};
use super::{AnnotationError, Result};
use crate::accounts::{Role, User};

/// The pseudonym of a user in labels and exports: stable, and never the username.
pub fn pseudonym(user_id: i64) -> String {
    format!("annotator-{user_id}")
}

/// What a researcher asks for when creating a queue.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewQueue {
    pub name: String,
    /// `binary` (default) or `rubric`.
    #[serde(default)]
    pub label_schema: Option<String>,
    /// Verdicts needed per item (N).
    pub annotators_per_item: u32,
    #[serde(default)]
    pub guideline: Option<String>,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub seed: u64,
    /// Usernames of the annotators (at least N).
    #[serde(default)]
    pub annotators: Vec<String>,
}

/// A queue with its progress.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueSummary {
    pub id: i64,
    pub name: String,
    pub label_schema: String,
    pub annotators_per_item: i32,
    pub guideline: String,
    #[schema(value_type = Object)]
    pub selection: serde_json::Value,
    pub seed: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Items in the queue.
    pub items: i64,
    /// Items with N verdicts.
    pub done_items: i64,
    /// Labels (verdicts, skips, flags) given by the asking user.
    pub my_labels: i64,
    /// Items the asking user could still label.
    pub open_for_me: i64,
    /// Whether the asking user is an annotator of the queue.
    pub is_member: bool,
}

impl QueueSummary {
    pub fn schema(&self) -> LabelSchema {
        LabelSchema::parse(&self.label_schema).unwrap_or(LabelSchema::Binary)
    }
}

/// A member of a queue (usernames are shown to researchers only).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Member {
    pub user_id: i64,
    pub username: String,
    pub pseudonym: String,
    pub labels: i64,
}

const QUEUE_SUMMARY: &str = "
SELECT q.id, q.name, q.label_schema, q.annotators_per_item, q.guideline, q.selection, q.seed, q.created_at,
  (SELECT count(*) FROM annotation_items i WHERE i.queue_id = q.id) AS items,
  (SELECT count(*) FROM annotation_items i WHERE i.queue_id = q.id AND i.label_count >= q.annotators_per_item) AS done_items,
  (SELECT count(*) FROM annotation_labels l WHERE l.queue_id = q.id AND l.annotator_id = $1) AS my_labels,
  (SELECT count(*) FROM annotation_items i WHERE i.queue_id = q.id AND i.label_count < q.annotators_per_item
     AND NOT EXISTS (SELECT 1 FROM annotation_labels l WHERE l.queue_id = q.id
                     AND l.response_id = i.response_id AND l.annotator_id = $1)) AS open_for_me,
  EXISTS (SELECT 1 FROM annotation_queue_members m WHERE m.queue_id = q.id AND m.user_id = $1) AS is_member
FROM annotation_queues q";

/// Annotators stay blind: the selection (which may name a score band or a disagreement
/// between evaluators) is shown to researchers only.
fn blind_for(user: &User, mut queue: QueueSummary) -> QueueSummary {
    if !user.role.satisfies(Role::Researcher) {
        queue.selection = serde_json::json!({});
    }
    queue
}

/// Queues visible to `user`: all for researchers and admins, their own for annotators.
pub async fn list_queues(pool: &PgPool, user: &User) -> Result<Vec<QueueSummary>> {
    let sql = format!(
        "{QUEUE_SUMMARY} WHERE $2 OR EXISTS (SELECT 1 FROM annotation_queue_members m
           WHERE m.queue_id = q.id AND m.user_id = $1) ORDER BY q.id DESC"
    );
    let queues: Vec<QueueSummary> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user.id)
        .bind(user.role.satisfies(Role::Researcher))
        .fetch_all(pool)
        .await?;
    Ok(queues.into_iter().map(|q| blind_for(user, q)).collect())
}

/// One queue with the progress of `user`, if `user` may see it: researchers see every queue,
/// annotators only queues they are members of (403 otherwise; 404 when there is no queue).
pub async fn queue_for(pool: &PgPool, queue_id: i64, user: &User) -> Result<QueueSummary> {
    let sql = format!("{QUEUE_SUMMARY} WHERE q.id = $2");
    let queue: QueueSummary = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user.id)
        .bind(queue_id)
        .fetch_optional(pool)
        .await?
        .ok_or(AnnotationError::NotFound)?;
    if !user.role.satisfies(Role::Researcher) && !queue.is_member {
        return Err(AnnotationError::Forbidden(
            "you are not an annotator of this queue".into(),
        ));
    }
    Ok(blind_for(user, queue))
}

/// A queue `user` may label in: they must be a member, whatever their role.
pub async fn queue_to_label(pool: &PgPool, queue_id: i64, user: &User) -> Result<QueueSummary> {
    let queue = queue_for(pool, queue_id, user).await?;
    if !queue.is_member {
        return Err(AnnotationError::Forbidden(
            "you are not an annotator of this queue".into(),
        ));
    }
    Ok(queue)
}

pub async fn members(pool: &PgPool, queue_id: i64) -> Result<Vec<Member>> {
    Ok(sqlx::query_as(
        "SELECT u.id AS user_id, u.username, 'annotator-' || u.id AS pseudonym,
                (SELECT count(*) FROM annotation_labels l WHERE l.queue_id = m.queue_id AND l.annotator_id = u.id) AS labels
         FROM annotation_queue_members m JOIN users u ON u.id = m.user_id
         WHERE m.queue_id = $1 ORDER BY u.id",
    )
    .bind(queue_id)
    .fetch_all(pool)
    .await?)
}

/// Users by name, all of whom must exist, be enabled and hold at least the annotator role.
async fn resolve_annotators(pool: &PgPool, usernames: &[String]) -> Result<Vec<i64>> {
    let mut names: Vec<String> = usernames
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    let found: Vec<(i64, String, Role, bool)> =
        sqlx::query_as("SELECT id, username, role, disabled FROM users WHERE username = ANY($1)")
            .bind(&names)
            .fetch_all(pool)
            .await?;
    for name in &names {
        match found.iter().find(|f| &f.1 == name) {
            None => {
                return Err(AnnotationError::Invalid(format!("no user named {name:?}")));
            }
            Some((_, _, role, disabled)) if *disabled || !role.satisfies(Role::Annotator) => {
                return Err(AnnotationError::Invalid(format!(
                    "{name:?} cannot annotate (disabled or without the annotator role)"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(found.into_iter().map(|f| f.0).collect())
}

/// Responses (with text: errors and skipped items are not labelled) matching `selection`.
pub async fn candidates(pool: &PgPool, selection: &Selection) -> Result<Vec<Candidate>> {
    let band = selection.score_band.as_ref();
    let disagreement = selection.disagreement.as_ref();
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT r.id, it.category_code
         FROM responses r JOIN runs ru ON ru.id = r.run_id JOIN items it ON it.id = r.item_id
         WHERE r.text IS NOT NULL
           AND (cardinality($1::bigint[]) = 0 OR r.run_id = ANY($1))
           AND ($2::text IS NULL OR ru.model_name = $2)
           AND (cardinality($3::text[]) = 0 OR it.category_code = ANY($3))
           AND ($4::bigint IS NULL OR EXISTS (SELECT 1 FROM judgements j WHERE j.response_id = r.id
                 AND j.evaluator_id = $4 AND j.elite_score BETWEEN $5 AND $6))
           AND ($7::bigint IS NULL OR EXISTS (SELECT 1 FROM judgements a JOIN judgements b
                 ON b.response_id = a.response_id AND b.evaluator_id = $8
                 WHERE a.response_id = r.id AND a.evaluator_id = $7
                   AND a.is_unsafe IS NOT NULL AND b.is_unsafe IS NOT NULL AND a.is_unsafe <> b.is_unsafe))
         ORDER BY r.id",
    )
    .bind(&selection.run_ids)
    .bind(&selection.model)
    .bind(&selection.categories)
    .bind(band.map(|b| b.evaluator_id))
    .bind(band.map(|b| b.min).unwrap_or(0.0))
    .bind(band.map(|b| b.max).unwrap_or(0.0))
    .bind(disagreement.map(|d| d.evaluator_a))
    .bind(disagreement.map(|d| d.evaluator_b).unwrap_or(0))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(response_id, category)| Candidate {
            response_id,
            category,
        })
        .collect())
}

/// Create a queue: validates everything (schema, N against the annotators, the selection
/// matching at least one response) before one transaction writes the queue, its items and
/// its members.
pub async fn create_queue(pool: &PgPool, new: &NewQueue, created_by: Option<i64>) -> Result<i64> {
    let invalid = |m: String| Err(AnnotationError::Invalid(m));
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return invalid("the queue needs a name of 1 to 200 characters".into());
    }
    let schema = LabelSchema::parse(new.label_schema.as_deref().unwrap_or(""))?;
    if new
        .guideline
        .as_ref()
        .is_some_and(|g| g.len() > MAX_GUIDELINE_BYTES)
    {
        return invalid(format!(
            "the guideline has at most {} KiB",
            MAX_GUIDELINE_BYTES / 1024
        ));
    }
    if new.annotators_per_item == 0 || new.annotators_per_item > 1000 {
        return invalid("annotators per item must be between 1 and 1000".into());
    }
    new.selection.validate()?;
    let annotators = resolve_annotators(pool, &new.annotators).await?;
    if (new.annotators_per_item as usize) > annotators.len() {
        return invalid(format!(
            "{} annotators per item but only {} annotators assigned",
            new.annotators_per_item,
            annotators.len()
        ));
    }
    let seed = i64::try_from(new.seed)
        .map_err(|_| AnnotationError::Invalid("seed is too large".into()))?;
    let chosen = stratified_sample(
        &candidates(pool, &new.selection).await?,
        new.selection.sample_size,
        new.seed,
    );
    if chosen.is_empty() {
        return invalid("no response matches the selection".into());
    }
    let selection = serde_json::to_value(&new.selection)
        .map_err(|e| AnnotationError::Invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO annotation_queues (name, label_schema, annotators_per_item, guideline, selection, seed, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(name)
    .bind(schema.as_str())
    .bind(new.annotators_per_item as i32)
    .bind(new.guideline.as_deref().unwrap_or("").trim())
    .bind(&selection)
    .bind(seed)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    let positions: Vec<i32> = (0..chosen.len() as i32).collect();
    sqlx::query(
        "INSERT INTO annotation_items (queue_id, response_id, position)
         SELECT $1, * FROM unnest($2::bigint[], $3::int[])",
    )
    .bind(id)
    .bind(&chosen)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO annotation_queue_members (queue_id, user_id) SELECT $1, unnest($2::bigint[])",
    )
    .bind(id)
    .bind(&annotators)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Add annotators (by username) to a queue; existing members are kept.
pub async fn add_members(pool: &PgPool, queue_id: i64, usernames: &[String]) -> Result<()> {
    let ids = resolve_annotators(pool, usernames).await?;
    if ids.is_empty() {
        return Err(AnnotationError::Invalid(
            "name at least one annotator".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO annotation_queue_members (queue_id, user_id) SELECT $1, unnest($2::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(queue_id)
    .bind(&ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Remove an annotator; refused when fewer than N would remain. Their labels stay.
pub async fn remove_member(pool: &PgPool, queue: &QueueSummary, user_id: i64) -> Result<()> {
    let mut tx = pool.begin().await?;
    let removed =
        sqlx::query("DELETE FROM annotation_queue_members WHERE queue_id = $1 AND user_id = $2")
            .bind(queue.id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if removed == 0 {
        return Err(AnnotationError::NotFound);
    }
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM annotation_queue_members WHERE queue_id = $1")
            .bind(queue.id)
            .fetch_one(&mut *tx)
            .await?;
    if left < i64::from(queue.annotators_per_item) {
        return Err(AnnotationError::Invalid(format!(
            "the queue needs {} annotators per item; only {left} would remain",
            queue.annotators_per_item
        )));
    }
    tx.commit().await?;
    Ok(())
}

/// One item as an annotator sees it: no label of anyone else, no automatic score.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ItemToLabel {
    pub response_id: i64,
    pub position: i32,
    pub category_code: String,
    pub prompt: String,
    pub response: String,
    pub image_sha256: Option<String>,
}

/// What the annotator page needs next: the item (none when the annotator is done) and the
/// annotator's progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NextItem {
    pub item: Option<ItemToLabel>,
    /// Labels this annotator has given in the queue (verdicts, skips and flags).
    pub my_labels: i64,
    /// Items this annotator could still label.
    pub open_for_me: i64,
}

#[derive(sqlx::FromRow)]
struct NextRow {
    response_id: Option<i64>,
    position: Option<i32>,
    category_code: Option<String>,
    prompt: Option<String>,
    response: Option<String>,
    image_sha256: Option<String>,
    my_labels: i64,
    open_for_me: i64,
}

/// The next item for `annotator_id`, in one indexed query: an item of the queue with fewer
/// than N verdicts that the annotator has not labelled, skipped or flagged, preferring items
/// with the most verdicts (to finish them), then queue position.
pub async fn next_item(pool: &PgPool, queue: &QueueSummary, annotator_id: i64) -> Result<NextItem> {
    let row: NextRow = sqlx::query_as(
        "SELECT n.response_id, n.position, it.category_code, it.text AS prompt, r.text AS response,
                it.image_sha256,
                (SELECT count(*) FROM annotation_labels l WHERE l.queue_id = $1 AND l.annotator_id = $2) AS my_labels,
                (SELECT count(*) FROM annotation_items i WHERE i.queue_id = $1 AND i.label_count < $3
                   AND NOT EXISTS (SELECT 1 FROM annotation_labels l WHERE l.queue_id = $1
                                   AND l.response_id = i.response_id AND l.annotator_id = $2)) AS open_for_me
         FROM (SELECT 1) AS one
         LEFT JOIN LATERAL (
             SELECT i.response_id, i.position FROM annotation_items i
             WHERE i.queue_id = $1 AND i.label_count < $3
               AND NOT EXISTS (SELECT 1 FROM annotation_labels l WHERE l.queue_id = $1
                               AND l.response_id = i.response_id AND l.annotator_id = $2)
             ORDER BY i.label_count DESC, i.position LIMIT 1) n ON true
         LEFT JOIN responses r ON r.id = n.response_id
         LEFT JOIN items it ON it.id = r.item_id",
    )
    .bind(queue.id)
    .bind(annotator_id)
    .bind(queue.annotators_per_item)
    .fetch_one(pool)
    .await?;
    let item = match (row.response_id, row.position, row.category_code, row.prompt) {
        (Some(response_id), Some(position), Some(category_code), Some(prompt)) => {
            Some(ItemToLabel {
                response_id,
                position,
                category_code,
                prompt,
                response: row.response.unwrap_or_default(),
                image_sha256: row.image_sha256,
            })
        }
        _ => None,
    };
    Ok(NextItem {
        item,
        my_labels: row.my_labels,
        open_for_me: row.open_for_me,
    })
}

/// Store one label. Refused, with nothing written: a response that is not an item of the
/// queue (404), a second label by the same annotator (409), a verdict on an item that already
/// has N verdicts (409).
pub async fn record_label(
    pool: &PgPool,
    queue: &QueueSummary,
    annotator_id: i64,
    response_id: i64,
    label: &ValidLabel,
) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let count: Option<i32> = sqlx::query_scalar(
        "SELECT label_count FROM annotation_items WHERE queue_id = $1 AND response_id = $2 FOR UPDATE",
    )
    .bind(queue.id)
    .bind(response_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(count) = count else {
        return Err(AnnotationError::Invalid(format!(
            "response {response_id} is not an item of queue {}",
            queue.id
        )));
    };
    if label.is_verdict() && count >= queue.annotators_per_item {
        return Err(AnnotationError::Conflict(
            "this item already has all its labels".into(),
        ));
    }
    let rubric = label
        .rubric
        .map(|r| serde_json::to_value(r).unwrap_or_default());
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO annotation_labels (queue_id, response_id, annotator_id, annotator_pseudonym, is_unsafe,
                                        rubric, flagged, skipped, seconds_spent, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'annotator')
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(queue.id)
    .bind(response_id)
    .bind(annotator_id)
    .bind(pseudonym(annotator_id))
    .bind(label.is_unsafe)
    .bind(rubric)
    .bind(label.flagged)
    .bind(label.skipped)
    .bind(label.seconds_spent)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(AnnotationError::Conflict(
            "you have already labelled this item".into(),
        ));
    };
    if label.is_verdict() {
        sqlx::query(
            "UPDATE annotation_items SET label_count = label_count + 1 WHERE queue_id = $1 AND response_id = $2",
        )
        .bind(queue.id)
        .bind(response_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Delete the annotator's last label in the queue; returns that item (to show it again).
pub async fn undo_last(
    pool: &PgPool,
    queue: &QueueSummary,
    annotator_id: i64,
) -> Result<ItemToLabel> {
    let mut tx = pool.begin().await?;
    let removed: Option<(i64, Option<bool>)> = sqlx::query_as(
        "DELETE FROM annotation_labels WHERE id = (
             SELECT id FROM annotation_labels WHERE queue_id = $1 AND annotator_id = $2
             ORDER BY id DESC LIMIT 1)
         RETURNING response_id, is_unsafe",
    )
    .bind(queue.id)
    .bind(annotator_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((response_id, verdict)) = removed else {
        return Err(AnnotationError::Conflict("nothing to undo".into()));
    };
    if verdict.is_some() {
        sqlx::query(
            "UPDATE annotation_items SET label_count = label_count - 1 WHERE queue_id = $1 AND response_id = $2",
        )
        .bind(queue.id)
        .bind(response_id)
        .execute(&mut *tx)
        .await?;
    }
    let item: ItemToLabel = sqlx::query_as(
        "SELECT i.response_id, i.position, it.category_code, it.text AS prompt,
                COALESCE(r.text, '') AS response, it.image_sha256
         FROM annotation_items i JOIN responses r ON r.id = i.response_id JOIN items it ON it.id = r.item_id
         WHERE i.queue_id = $1 AND i.response_id = $2",
    )
    .bind(queue.id)
    .bind(response_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(item)
}

/// A stored label with what identifies its response, for exports and statistics.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LabelRow {
    pub response_id: i64,
    pub run_id: i64,
    pub item_id: i64,
    pub category_code: String,
    pub annotator: String,
    #[serde(rename = "unsafe")]
    pub is_unsafe: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub rubric: Option<serde_json::Value>,
    pub flagged: bool,
    pub skipped: bool,
    pub seconds_spent: Option<f64>,
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Every label of a queue (annotators' and imported), in order of creation.
pub async fn queue_labels(pool: &PgPool, queue_id: i64) -> Result<Vec<LabelRow>> {
    Ok(sqlx::query_as(
        "SELECT l.response_id, r.run_id, r.item_id, it.category_code,
                COALESCE(l.annotator_pseudonym, 'anonymous') AS annotator, l.is_unsafe, l.rubric,
                l.flagged, l.skipped, l.seconds_spent, l.source, l.created_at
         FROM annotation_labels l JOIN responses r ON r.id = l.response_id JOIN items it ON it.id = r.item_id
         WHERE l.queue_id = $1 ORDER BY l.id",
    )
    .bind(queue_id)
    .fetch_all(pool)
    .await?)
}

/// A judgement of a labelled response, by one evaluator, with the response text (for the
/// refusal-keyword comparator).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JudgedResponse {
    pub response_id: i64,
    pub response: Option<String>,
    pub evaluator_id: Option<i64>,
    pub judge_name: Option<String>,
    pub threshold: Option<f64>,
    pub elite_score: Option<f64>,
    pub strongreject_score: Option<f64>,
    pub is_unsafe: Option<bool>,
}

/// The queue's responses with every scored judgement of them (one row per response and
/// evaluator; a row without evaluator for responses nobody judged).
pub async fn judged_responses(pool: &PgPool, queue_id: i64) -> Result<Vec<JudgedResponse>> {
    Ok(sqlx::query_as(
        "SELECT i.response_id, r.text AS response, e.id AS evaluator_id, e.judge_name, e.threshold,
                j.elite_score, j.strongreject_score, j.is_unsafe
         FROM annotation_items i JOIN responses r ON r.id = i.response_id
         LEFT JOIN judgements j ON j.response_id = i.response_id AND j.status = 'scored'
         LEFT JOIN evaluators e ON e.id = j.evaluator_id
         WHERE i.queue_id = $1 ORDER BY i.response_id, e.id",
    )
    .bind(queue_id)
    .fetch_all(pool)
    .await?)
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub imported: usize,
    pub skipped: usize,
    /// One line per skipped row: `line N: reason`.
    pub reasons: Vec<String>,
}

/// Store parsed label rows in one transaction. Rows naming no stored response, a response
/// outside `queue_id` (when given), or repeating a stored (response, annotator) label are
/// skipped with a reason; the rest are stored.
pub async fn import_labels(
    pool: &PgPool,
    queue_id: Option<i64>,
    file: &LabelFile,
) -> Result<ImportReport> {
    let mut report = ImportReport {
        skipped: file.ignored.len(),
        reasons: file.ignored.clone(),
        ..Default::default()
    };
    let mut tx = pool.begin().await?;
    if let Some(queue) = queue_id {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM annotation_queues WHERE id = $1)")
                .bind(queue)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(AnnotationError::NotFound);
        }
    }
    for row in &file.rows {
        let response_id: Option<i64> = match row.key {
            super::import::ResponseKey::Response(id) => {
                sqlx::query_scalar("SELECT id FROM responses WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            super::import::ResponseKey::RunItem { run_id, item_id } => {
                sqlx::query_scalar("SELECT id FROM responses WHERE run_id = $1 AND item_id = $2")
                    .bind(run_id)
                    .bind(item_id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        let mut skip = |reason: String| {
            report.skipped += 1;
            report.reasons.push(format!("line {}: {reason}", row.line));
        };
        let Some(response_id) = response_id else {
            skip(format!("no stored response for {}", row.key));
            continue;
        };
        if let Some(queue) = queue_id {
            let in_queue: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM annotation_items WHERE queue_id = $1 AND response_id = $2)",
            )
            .bind(queue)
            .bind(response_id)
            .fetch_one(&mut *tx)
            .await?;
            if !in_queue {
                skip(format!(
                    "response {response_id} is not an item of queue {queue}"
                ));
                continue;
            }
        }
        let rubric = row
            .rubric
            .map(|r| serde_json::to_value(r).unwrap_or_default());
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO annotation_labels (queue_id, response_id, annotator_pseudonym, is_unsafe, rubric, source)
             VALUES ($1, $2, $3, $4, $5, 'import') ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(queue_id)
        .bind(response_id)
        .bind(&row.annotator)
        .bind(row.is_unsafe)
        .bind(rubric)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            skip(format!(
                "{} already has a label by {:?}",
                row.key, row.annotator
            ));
            continue;
        }
        if let Some(queue) = queue_id {
            sqlx::query(
                "UPDATE annotation_items SET label_count = label_count + 1 WHERE queue_id = $1 AND response_id = $2",
            )
            .bind(queue)
            .bind(response_id)
            .execute(&mut *tx)
            .await?;
        }
        report.imported += 1;
    }
    tx.commit().await?;
    Ok(report)
}
