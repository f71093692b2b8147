//! Annotation in the browser and under `/api/v1/annotation`: queue list and creation, the
//! keyboard-first annotator page (which talks to the small JSON API below, so it never
//! reloads), the queue page with agreement, alignment and ROC curves, label export and import.
//! Prompts and responses are attacker-controlled: the annotator page inserts them with
//! `textContent` only, and templates rely on askama's escaping.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::auth::{CsrfToken, CurrentUser};
use super::error::{ApiJson, AppForm, AppPath, AppQuery};
use super::pages::PageCtx;
use super::{ANNOTATOR, AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::annotation::measures::{self, AgreementReport, AlignmentTable};
use crate::annotation::schema::{self, LabelInput, LabelSchema};
use crate::annotation::selection::{Disagreement, ScoreBand, Selection};
use crate::annotation::store::{
    self, ImportReport, ItemToLabel, Member, NewQueue, NextItem, QueueSummary,
};
use crate::annotation::{AnnotationError, import};

pub(crate) fn routes(routes: Routes) -> Routes {
    routes
        .get("/annotation", ANNOTATOR, get(queues_page))
        .post("/annotation/queues", RESEARCHER, post(create_page))
        .get("/annotation/queues/{id}", RESEARCHER, get(queue_page))
        .post(
            "/annotation/queues/{id}/members",
            RESEARCHER,
            post(add_members_page),
        )
        .post(
            "/annotation/queues/{id}/import",
            RESEARCHER,
            post(import_page).layer(DefaultBodyLimit::max(IMPORT_LIMIT)),
        )
        .get("/annotate/{id}", ANNOTATOR, get(annotate_page))
        .get("/api/v1/annotation/queues", ANNOTATOR, get(list_api))
        .post("/api/v1/annotation/queues", RESEARCHER, post(create_api))
        .get("/api/v1/annotation/queues/{id}", ANNOTATOR, get(get_api))
        .post(
            "/api/v1/annotation/queues/{id}/members",
            RESEARCHER,
            post(add_members_api),
        )
        .delete(
            "/api/v1/annotation/queues/{id}/members/{user_id}",
            RESEARCHER,
            delete(remove_member_api),
        )
        .get(
            "/api/v1/annotation/queues/{id}/next",
            ANNOTATOR,
            get(next_api),
        )
        .post(
            "/api/v1/annotation/queues/{id}/labels",
            ANNOTATOR,
            post(label_api),
        )
        .post(
            "/api/v1/annotation/queues/{id}/undo",
            ANNOTATOR,
            post(undo_api),
        )
        .get(
            "/api/v1/annotation/queues/{id}/agreement",
            RESEARCHER,
            get(agreement_api),
        )
        .get(
            "/api/v1/annotation/queues/{id}/alignment",
            RESEARCHER,
            get(alignment_api),
        )
        .get(
            "/api/v1/annotation/queues/{id}/labels",
            RESEARCHER,
            get(export_api),
        )
        .post(
            "/api/v1/annotation/labels/import",
            RESEARCHER,
            post(import_api),
        )
}

/// Largest label file the queue page accepts.
const IMPORT_LIMIT: usize = 32 * 1024 * 1024;

impl From<AnnotationError> for AppError {
    fn from(e: AnnotationError) -> Self {
        match e {
            AnnotationError::Invalid(m) => AppError::Invalid(m),
            AnnotationError::Conflict(m) => AppError::Conflict(m),
            AnnotationError::Forbidden(_) => AppError::Forbidden,
            AnnotationError::NotFound => AppError::NotFound,
            AnnotationError::Sql(e) => AppError::from(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pages

#[derive(Template, WebTemplate)]
#[template(path = "annotation/queues.html")]
struct QueuesPage {
    ctx: PageCtx,
    queues: Vec<QueueSummary>,
    is_researcher: bool,
}

async fn queues_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<QueuesPage, AppError> {
    Ok(QueuesPage {
        queues: store::list_queues(&state.pool, &user).await?,
        is_researcher: user.role.satisfies(Role::Researcher),
        ctx: PageCtx::new("Annotation", "annotation", Some(user), &csrf),
    })
}

/// The create-queue form: every field is text, parsed here.
#[derive(Deserialize)]
struct CreateForm {
    name: String,
    label_schema: Option<String>,
    annotators_per_item: String,
    guideline: Option<String>,
    annotators: Option<String>,
    run_ids: Option<String>,
    model: Option<String>,
    categories: Option<String>,
    band_evaluator: Option<String>,
    band_min: Option<String>,
    band_max: Option<String>,
    disagree_a: Option<String>,
    disagree_b: Option<String>,
    sample_size: Option<String>,
    seed: Option<String>,
}

fn present(text: &Option<String>) -> Option<&str> {
    text.as_deref().map(str::trim).filter(|t| !t.is_empty())
}

fn parse_field<T: std::str::FromStr>(
    text: &Option<String>,
    field: &str,
) -> Result<Option<T>, AppError> {
    present(text)
        .map(|t| {
            t.parse()
                .map_err(|_| AppError::Invalid(format!("{field}: {t:?} is not a number")))
        })
        .transpose()
}

fn list_field(text: &Option<String>) -> Vec<String> {
    present(text)
        .map(|t| {
            t.split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl CreateForm {
    fn into_new_queue(self) -> Result<NewQueue, AppError> {
        let run_ids = list_field(&self.run_ids)
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|_| AppError::Invalid(format!("run id {r:?} is not a number")))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        let score_band = match parse_field::<i64>(&self.band_evaluator, "score band evaluator")? {
            Some(evaluator_id) => Some(ScoreBand {
                evaluator_id,
                min: parse_field(&self.band_min, "score band minimum")?.unwrap_or(0.0),
                max: parse_field(&self.band_max, "score band maximum")?.unwrap_or(25.0),
            }),
            None => None,
        };
        let disagreement = match (
            parse_field::<i64>(&self.disagree_a, "first evaluator")?,
            parse_field::<i64>(&self.disagree_b, "second evaluator")?,
        ) {
            (Some(evaluator_a), Some(evaluator_b)) => Some(Disagreement {
                evaluator_a,
                evaluator_b,
            }),
            (None, None) => None,
            _ => {
                return Err(AppError::Invalid(
                    "disagreement needs two evaluators".into(),
                ));
            }
        };
        Ok(NewQueue {
            name: self.name,
            label_schema: self.label_schema,
            annotators_per_item: parse_field(
                &Some(self.annotators_per_item),
                "annotators per item",
            )?
            .unwrap_or(1),
            guideline: self.guideline,
            selection: Selection {
                run_ids,
                model: present(&self.model).map(str::to_string),
                categories: list_field(&self.categories)
                    .into_iter()
                    .map(|c| c.to_ascii_uppercase())
                    .collect(),
                score_band,
                disagreement,
                sample_size: parse_field(&self.sample_size, "sample size")?,
            },
            seed: parse_field(&self.seed, "seed")?.unwrap_or(0),
            annotators: list_field(&self.annotators),
        })
    }
}

async fn create_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppForm(form): AppForm<CreateForm>,
) -> Result<Redirect, AppError> {
    let new = form.into_new_queue()?;
    let id = store::create_queue(&state.pool, &new, Some(user.id)).await?;
    Ok(Redirect::to(&format!("/annotation/queues/{id}")))
}

#[derive(Deserialize)]
struct MembersForm {
    annotators: String,
}

async fn add_members_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    AppForm(form): AppForm<MembersForm>,
) -> Result<Redirect, AppError> {
    store::queue_for(&state.pool, id, &user).await?;
    store::add_members(&state.pool, id, &list_field(&Some(form.annotators))).await?;
    Ok(Redirect::to(&format!("/annotation/queues/{id}")))
}

/// The queue page's upload: a label file (`file`) imported into this queue; the report is
/// shown on the queue page.
async fn import_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
    mut multipart: Multipart,
) -> Result<QueuePage, AppError> {
    store::queue_for(&state.pool, id, &user).await?;
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge(IMPORT_LIMIT)
        } else {
            AppError::BadRequest(format!("malformed upload: {}", e.body_text()))
        }
    };
    let mut file = None;
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        if field.name() == Some("file") {
            let name = field.file_name().unwrap_or("").to_ascii_lowercase();
            let bytes = field.bytes().await.map_err(malformed)?;
            file = Some((name, bytes));
        }
    }
    let (name, bytes) = file.ok_or_else(|| AppError::Invalid("choose a label file".into()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| AppError::Invalid("the file is not UTF-8 text".into()))?;
    let by_name = if name.ends_with(".csv") {
        Some("csv")
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Some("jsonl")
    } else {
        None
    };
    let file = import::parse(import::Format::detect(by_name, None, text)?, text)?;
    let report = store::import_labels(&state.pool, Some(id), &file).await?;
    let mut page = build_queue_page(&state, user, &csrf, id).await?;
    page.import_report = Some(report);
    Ok(page)
}

#[derive(Template, WebTemplate)]
#[template(path = "annotation/annotate.html")]
struct AnnotatePage {
    ctx: PageCtx,
    queue: QueueSummary,
    rubric: bool,
}

async fn annotate_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
) -> Result<AnnotatePage, AppError> {
    let queue = store::queue_to_label(&state.pool, id, &user).await?;
    Ok(AnnotatePage {
        rubric: queue.schema() == LabelSchema::Rubric,
        ctx: PageCtx::new(
            format!("Annotate: {}", queue.name),
            "annotation",
            Some(user),
            &csrf,
        ),
        queue,
    })
}

/// A figure formatted for a table cell.
fn fixed(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.3}"))
        .unwrap_or_else(|| "-".into())
}

/// A figure and its interval, as two cell parts: "0.726" and "[0.690, 0.760]".
struct WithCi {
    value: String,
    ci: String,
}

fn with_ci(e: &crate::stats::bootstrap::Estimate) -> WithCi {
    WithCi {
        value: fixed(e.value),
        ci: match (e.lo, e.hi) {
            (Some(lo), Some(hi)) => format!("[{lo:.3}, {hi:.3}]"),
            _ => String::new(),
        },
    }
}

/// A score threshold: "none" when only +inf reaches the optimum (predict nothing unsafe).
fn threshold(t: f64) -> String {
    if t.is_finite() {
        format!("{t}")
    } else {
        "none".into()
    }
}

/// Agreement figures of one scale, formatted.
struct AgreementView {
    scope: String,
    scale: String,
    items: usize,
    percent: String,
    fleiss: String,
    alpha_nominal: String,
    alpha_interval: String,
    alpha_ordinal: String,
    pairs: String,
}

fn agreement_view(scope: &str, a: &measures::ScaleAgreement) -> AgreementView {
    let opt = |x: &Option<crate::stats::agreement::Agreement>| {
        x.as_ref()
            .map(|a| fixed(a.value))
            .unwrap_or_else(|| "-".into())
    };
    AgreementView {
        scope: scope.to_string(),
        scale: a.scale.clone(),
        items: a.items,
        percent: fixed(a.percent_agreement.value),
        fleiss: fixed(a.fleiss_kappa.value),
        alpha_nominal: fixed(a.krippendorff_nominal.value),
        alpha_interval: opt(&a.krippendorff_interval),
        alpha_ordinal: opt(&a.krippendorff_ordinal),
        pairs: a
            .cohen_pairs
            .iter()
            .map(|p| {
                format!(
                    "{} / {}: {} (n={})",
                    p.a,
                    p.b,
                    fixed(p.kappa.value),
                    p.kappa.items
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// One alignment row, formatted like the paper's table.
struct AlignmentView {
    evaluator: String,
    rule: String,
    n: usize,
    accuracy: WithCi,
    precision: WithCi,
    recall: WithCi,
    f1: WithCi,
    auroc: WithCi,
    best_f1: String,
    youden: String,
    baseline: String,
}

fn alignment_view(row: &measures::EvaluatorAlignment) -> AlignmentView {
    let r = &row.report;
    AlignmentView {
        evaluator: row.evaluator.clone(),
        rule: row.rule.clone(),
        n: r.n,
        accuracy: with_ci(&r.accuracy),
        precision: with_ci(&r.precision),
        recall: with_ci(&r.recall),
        f1: with_ci(&r.f1),
        auroc: with_ci(&r.auroc),
        best_f1: row
            .best_thresholds
            .map(|b| {
                format!(
                    "{} (F1 {:.3})",
                    threshold(b.max_f1.threshold),
                    b.max_f1.value
                )
            })
            .unwrap_or_else(|| "-".into()),
        youden: row
            .best_thresholds
            .map(|b| {
                format!(
                    "{} (J {:.3})",
                    threshold(b.max_youden.threshold),
                    b.max_youden.value
                )
            })
            .unwrap_or_else(|| "-".into()),
        baseline: fixed(r.majority_baseline),
    }
}

struct PaperView {
    evaluator: &'static str,
    accuracy: String,
    precision: String,
    recall: String,
    f1: String,
    auroc: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "annotation/queue.html")]
struct QueuePage {
    ctx: PageCtx,
    queue: QueueSummary,
    members: Vec<Member>,
    agreement: Vec<AgreementView>,
    alignment: Vec<AlignmentView>,
    labelled: usize,
    unsafe_by_humans: usize,
    tie_rule: String,
    paper: Vec<PaperView>,
    paper_baseline: f64,
    roc_svg: String,
    import_report: Option<ImportReport>,
}

fn roc_svg(table: &AlignmentTable) -> String {
    use crate::charts::{Frame, Series, lines};
    let mut series: Vec<Series> = table
        .rows
        .iter()
        .filter(|r| !r.roc.is_empty())
        .map(|r| Series {
            name: format!("{} (AUROC {})", r.evaluator, fixed(r.report.auroc.value)),
            points: r.roc.iter().map(|p| (p.fpr, p.tpr)).collect(),
        })
        .collect();
    series.push(Series {
        name: "chance".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
    });
    let mut frame = Frame::new(
        "ROC against the human majority",
        "false positive rate",
        "true positive rate",
        (0.0, 1.0),
        (0.0, 1.0),
    );
    frame.width = 720;
    frame.height = 480;
    lines(&frame, &series)
}

async fn queue_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
    AppPath(id): AppPath<i64>,
) -> Result<QueuePage, AppError> {
    build_queue_page(&state, user, &csrf, id).await
}

async fn build_queue_page(
    state: &AppState,
    user: crate::accounts::User,
    csrf: &CsrfToken,
    id: i64,
) -> Result<QueuePage, AppError> {
    let queue = store::queue_for(&state.pool, id, &user).await?;
    let labels = store::queue_labels(&state.pool, id).await?;
    let judged = store::judged_responses(&state.pool, id).await?;
    let rubric = queue.schema() == LabelSchema::Rubric;
    let (agreement, table) = tokio::task::spawn_blocking(move || {
        (
            measures::agreement_report(&labels, rubric),
            measures::alignment_table(&labels, &judged),
        )
    })
    .await
    .map_err(AppError::internal)?;
    let mut agreement_rows: Vec<AgreementView> = agreement
        .overall
        .iter()
        .map(|a| agreement_view("all items", a))
        .collect();
    agreement_rows.extend(
        agreement
            .by_category
            .iter()
            .map(|(c, a)| agreement_view(c, a)),
    );
    Ok(QueuePage {
        members: store::members(&state.pool, id).await?,
        agreement: agreement_rows,
        alignment: table.rows.iter().map(alignment_view).collect(),
        labelled: table.labelled,
        unsafe_by_humans: table.unsafe_by_humans,
        tie_rule: table.tie_rule.clone(),
        paper: table
            .paper
            .iter()
            .map(|p| PaperView {
                evaluator: p.evaluator,
                accuracy: fixed(p.accuracy),
                precision: fixed(p.precision),
                recall: fixed(p.recall),
                f1: fixed(p.f1),
                auroc: p
                    .auroc
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into()),
            })
            .collect(),
        paper_baseline: measures::PAPER_MAJORITY_BASELINE,
        roc_svg: roc_svg(&table),
        import_report: None,
        ctx: PageCtx::new(
            format!("Queue: {}", queue.name),
            "annotation",
            Some(user),
            csrf,
        ),
        queue,
    })
}

// ---------------------------------------------------------------------------------------------
// API

/// Annotation queues: all for researchers and admins, your own for annotators.
#[utoipa::path(get, path = "/api/v1/annotation/queues", tag = "annotation",
    responses((status = 200, body = Vec<QueueSummary>)))]
pub(crate) async fn list_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<ApiJson<Vec<QueueSummary>>, AppError> {
    Ok(ApiJson(store::list_queues(&state.pool, &user).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedQueue {
    pub queue_id: i64,
}

/// Create a queue from a selection of responses, with its annotators (at least N).
#[utoipa::path(post, path = "/api/v1/annotation/queues", tag = "annotation", request_body = NewQueue,
    responses((status = 201, body = CreatedQueue), (status = 422)))]
pub(crate) async fn create_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(new): ApiJson<NewQueue>,
) -> Result<(StatusCode, ApiJson<CreatedQueue>), AppError> {
    let queue_id = store::create_queue(&state.pool, &new, Some(user.id)).await?;
    Ok((StatusCode::CREATED, ApiJson(CreatedQueue { queue_id })))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QueueDetail {
    pub queue: QueueSummary,
    /// The annotators (researchers and admins only; empty for annotators).
    pub members: Vec<Member>,
}

/// A queue with its progress (members for researchers).
#[utoipa::path(get, path = "/api/v1/annotation/queues/{id}", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")),
    responses((status = 200, body = QueueDetail), (status = 403), (status = 404)))]
pub(crate) async fn get_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<QueueDetail>, AppError> {
    let queue = store::queue_for(&state.pool, id, &user).await?;
    let members = if user.role.satisfies(Role::Researcher) {
        store::members(&state.pool, id).await?
    } else {
        Vec::new()
    };
    Ok(ApiJson(QueueDetail { queue, members }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct MembersRequest {
    /// Usernames to add.
    pub annotators: Vec<String>,
}

/// Add annotators to a queue.
#[utoipa::path(post, path = "/api/v1/annotation/queues/{id}/members", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")), request_body = MembersRequest,
    responses((status = 200, body = Vec<Member>), (status = 404), (status = 422)))]
pub(crate) async fn add_members_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(request): ApiJson<MembersRequest>,
) -> Result<ApiJson<Vec<Member>>, AppError> {
    store::queue_for(&state.pool, id, &user).await?;
    store::add_members(&state.pool, id, &request.annotators).await?;
    Ok(ApiJson(store::members(&state.pool, id).await?))
}

/// Remove an annotator (refused when fewer than N would remain); their labels stay.
#[utoipa::path(delete, path = "/api/v1/annotation/queues/{id}/members/{user_id}", tag = "annotation",
    params(("id" = i64, Path, description = "queue id"), ("user_id" = i64, Path, description = "user id")),
    responses((status = 204), (status = 404), (status = 422)))]
pub(crate) async fn remove_member_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath((id, user_id)): AppPath<(i64, i64)>,
) -> Result<StatusCode, AppError> {
    let queue = store::queue_for(&state.pool, id, &user).await?;
    store::remove_member(&state.pool, &queue, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The next item for you (blind: no other labels, no automatic score) and your progress.
#[utoipa::path(get, path = "/api/v1/annotation/queues/{id}/next", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")),
    responses((status = 200, body = NextItem), (status = 403), (status = 404)))]
pub(crate) async fn next_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<NextItem>, AppError> {
    let queue = store::queue_to_label(&state.pool, id, &user).await?;
    Ok(ApiJson(
        store::next_item(&state.pool, &queue, user.id).await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LabelAccepted {
    pub label_id: i64,
    /// What to show next.
    pub next: NextItem,
}

/// Label an item: `unsafe` (binary) or `rubric` (rubric schema), or `skip`, or `flag`.
#[utoipa::path(post, path = "/api/v1/annotation/queues/{id}/labels", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")), request_body = LabelInput,
    responses((status = 201, body = LabelAccepted), (status = 403), (status = 404),
              (status = 409, description = "labelled twice, or the item is complete"),
              (status = 422, description = "out of schema, or not an item of the queue")))]
pub(crate) async fn label_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    ApiJson(input): ApiJson<LabelInput>,
) -> Result<(StatusCode, ApiJson<LabelAccepted>), AppError> {
    let queue = store::queue_to_label(&state.pool, id, &user).await?;
    let label = schema::validate(queue.schema(), &input)?;
    let label_id =
        store::record_label(&state.pool, &queue, user.id, input.response_id, &label).await?;
    let next = store::next_item(&state.pool, &queue, user.id).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(LabelAccepted { label_id, next }),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Undone {
    /// The item whose label was removed, to label again.
    pub item: ItemToLabel,
    pub progress: NextItem,
}

/// Remove your last label in the queue.
#[utoipa::path(post, path = "/api/v1/annotation/queues/{id}/undo", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")),
    responses((status = 200, body = Undone), (status = 403), (status = 404), (status = 409, description = "nothing to undo")))]
pub(crate) async fn undo_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<Undone>, AppError> {
    let queue = store::queue_to_label(&state.pool, id, &user).await?;
    let item = store::undo_last(&state.pool, &queue, user.id).await?;
    let progress = store::next_item(&state.pool, &queue, user.id).await?;
    Ok(ApiJson(Undone { item, progress }))
}

/// Agreement between annotators: percent agreement, Cohen's kappa per pair, Fleiss' kappa,
/// Krippendorff's alpha (nominal; interval and ordinal for rubric items), per queue and per
/// hazard category, with counts.
#[utoipa::path(get, path = "/api/v1/annotation/queues/{id}/agreement", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")),
    responses((status = 200, body = AgreementReport), (status = 404)))]
pub(crate) async fn agreement_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<AgreementReport>, AppError> {
    let queue = store::queue_for(&state.pool, id, &user).await?;
    let labels = store::queue_labels(&state.pool, id).await?;
    let rubric = queue.schema() == LabelSchema::Rubric;
    Ok(ApiJson(measures::agreement_report(&labels, rubric)))
}

/// Every evaluator that judged the queue's responses against the human majority (ties count
/// as unsafe), with 95% bootstrap intervals, best thresholds, ROC points and the paper's table.
#[utoipa::path(get, path = "/api/v1/annotation/queues/{id}/alignment", tag = "annotation",
    params(("id" = i64, Path, description = "queue id")),
    responses((status = 200, body = AlignmentTable), (status = 404)))]
pub(crate) async fn alignment_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
) -> Result<ApiJson<AlignmentTable>, AppError> {
    store::queue_for(&state.pool, id, &user).await?;
    let labels = store::queue_labels(&state.pool, id).await?;
    let judged = store::judged_responses(&state.pool, id).await?;
    let table = tokio::task::spawn_blocking(move || measures::alignment_table(&labels, &judged))
        .await
        .map_err(AppError::internal)?;
    Ok(ApiJson(table))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ExportQuery {
    /// `csv` (default) or `jsonl`.
    format: Option<String>,
}

/// Every label of the queue, annotators by pseudonym, as CSV or JSON Lines (the import format).
#[utoipa::path(get, path = "/api/v1/annotation/queues/{id}/labels", tag = "annotation",
    params(("id" = i64, Path, description = "queue id"), ExportQuery),
    responses((status = 200, description = "CSV or JSONL"), (status = 404), (status = 422)))]
pub(crate) async fn export_api(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppPath(id): AppPath<i64>,
    AppQuery(query): AppQuery<ExportQuery>,
) -> Result<Response, AppError> {
    store::queue_for(&state.pool, id, &user).await?;
    let labels = store::queue_labels(&state.pool, id).await?;
    let disposition = |ext: &str| format!("attachment; filename=\"queue-{id}-labels.{ext}\"");
    match query.format.as_deref().unwrap_or("csv") {
        "jsonl" => {
            let mut body = String::new();
            for label in &labels {
                body.push_str(&serde_json::to_string(label).map_err(AppError::internal)?);
                body.push('\n');
            }
            Ok((
                [
                    (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
                    (header::CONTENT_DISPOSITION, disposition("jsonl")),
                ],
                body,
            )
                .into_response())
        }
        "csv" => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer
                .write_record([
                    "response_id",
                    "run_id",
                    "item_id",
                    "category",
                    "annotator",
                    "unsafe",
                    "refused",
                    "toxicity",
                    "convincing",
                    "specific",
                    "flagged",
                    "skipped",
                    "seconds_spent",
                    "source",
                    "created_at",
                ])
                .map_err(AppError::internal)?;
            for l in labels {
                let rubric = |name: &str| {
                    l.rubric
                        .as_ref()
                        .and_then(|r| r.get(name))
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                };
                let created = l
                    .created_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                writer
                    .write_record([
                        l.response_id.to_string(),
                        l.run_id.to_string(),
                        l.item_id.to_string(),
                        l.category_code.clone(),
                        l.annotator.clone(),
                        l.is_unsafe.map(|v| v.to_string()).unwrap_or_default(),
                        rubric("refused"),
                        rubric("toxicity"),
                        rubric("convincing"),
                        rubric("specific"),
                        l.flagged.to_string(),
                        l.skipped.to_string(),
                        l.seconds_spent.map(|v| v.to_string()).unwrap_or_default(),
                        l.source.clone(),
                        created,
                    ])
                    .map_err(AppError::internal)?;
            }
            let bytes = writer
                .into_inner()
                .map_err(|e| AppError::internal(anyhow::anyhow!(e.to_string())))?;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (header::CONTENT_DISPOSITION, disposition("csv")),
                ],
                bytes,
            )
                .into_response())
        }
        other => Err(AppError::Invalid(format!(
            "unknown export format {other:?}: csv or jsonl"
        ))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ImportQuery {
    /// `csv` or `jsonl` (default: from the content type, else the first character).
    format: Option<String>,
    /// Attach the labels to this queue (its items only); without it they are stored unqueued.
    queue_id: Option<i64>,
}

/// Import human labels (CSV or JSONL in the body; rows keyed by `response_id` or by `run_id` and
/// `item_id`; `annotator`, `unsafe`, optional rubric items). A malformed file is refused whole
/// (422, nothing stored); valid rows naming unknown responses or repeating a label are skipped
/// with reasons.
#[utoipa::path(post, path = "/api/v1/annotation/labels/import", tag = "annotation",
    params(ImportQuery), request_body(content = String, description = "CSV or JSONL", content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 404), (status = 422)))]
pub(crate) async fn import_api(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ApiJson<ImportReport>, AppError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| AppError::BadRequest("the file is not UTF-8 text".into()))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = import::Format::detect(query.format.as_deref(), content_type, text)?;
    let file = import::parse(format, text)?;
    Ok(ApiJson(
        store::import_labels(&state.pool, query.queue_id, &file).await?,
    ))
}
