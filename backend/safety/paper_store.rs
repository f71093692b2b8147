//! The paper's figures beside our runs: the per-category Table 3 figures an admin loaded
//! (stored in `paper_category_figures`, replaced as a whole by each load) and which figures a
//! run is compared with ([`paper_comparison`]). What a table may hold is decided by
//! [`super::paper::parse_category_table`]; this module only stores and reads it.

use sqlx::PgPool;
use time::OffsetDateTime;

use super::paper::{
    CategoryFigure, PaperComparison, RunScope, comparison_label, is_full_elite, paper_e_asr,
};
use super::runs::Run;
use super::store::StoreError;

/// Longest provenance note kept with a table.
pub const MAX_PROVENANCE_CHARS: usize = 500;

/// A loaded per-category figure with where it came from.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StoredFigure {
    pub paper_model: String,
    pub category: String,
    pub e_asr_percent: f64,
    /// What the admin said the figures came from (a paper version and table, say).
    pub provenance: String,
    /// Who loaded them; absent when loaded with the CLI.
    pub loaded_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub loaded_at: OffsetDateTime,
}

/// Replace the whole per-category table with `figures` in one transaction, so a refused or
/// failed load leaves the previous table as it was. Returns how many figures are stored.
pub async fn replace_category_figures(
    pool: &PgPool,
    figures: &[CategoryFigure],
    provenance: &str,
    loaded_by: Option<i64>,
) -> Result<usize, StoreError> {
    let provenance = provenance.trim();
    if provenance.is_empty() || provenance.chars().count() > MAX_PROVENANCE_CHARS {
        return Err(StoreError::Invalid(format!(
            "say where the figures come from (1-{MAX_PROVENANCE_CHARS} characters), e.g. \"ELITE paper, arXiv 2502.04757v3, Table 3\""
        )));
    }
    if provenance.contains('\0') {
        return Err(StoreError::Invalid(
            "the provenance contains a NUL byte".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM paper_category_figures")
        .execute(&mut *tx)
        .await?;
    for f in figures {
        sqlx::query(
            "INSERT INTO paper_category_figures (paper_model, category, e_asr_percent, provenance, loaded_by)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&f.paper_model)
        .bind(&f.category)
        .bind(f.e_asr_percent)
        .bind(provenance)
        .bind(loaded_by)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(figures.len())
}

/// Every loaded figure, by model then category number.
pub async fn category_figures(pool: &PgPool) -> Result<Vec<StoredFigure>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT f.paper_model, f.category, f.e_asr_percent, f.provenance, u.username AS loaded_by, f.loaded_at
         FROM paper_category_figures f LEFT JOIN users u ON u.id = f.loaded_by
         ORDER BY f.paper_model, substring(f.category FROM 2)::int",
    )
    .fetch_all(pool)
    .await?)
}

/// The paper's Table 3 figure for a run judged by `evaluator_id`, when the run is comparable
/// with it: its model matches a paper model and it covers the full ELITE benchmark
/// ([`super::paper::is_full_elite`]). The label names both judges and templates.
pub async fn paper_comparison(
    pool: &PgPool,
    run: &Run,
    evaluator_id: i64,
) -> Result<Option<PaperComparison>, StoreError> {
    let Some((paper_model, e_asr)) = paper_e_asr(&run.model_name) else {
        return Ok(None);
    };
    #[derive(sqlx::FromRow)]
    struct Scope {
        source: String,
        benchmark_items: i64,
        prompt_template: bool,
        judge_name: String,
        kind: String,
        combine: String,
        template_id: Option<String>,
        template_version: Option<String>,
    }
    let Some(scope): Option<Scope> = sqlx::query_as(
        "SELECT b.source, (SELECT count(*) FROM items i WHERE i.benchmark_id = b.id) AS benchmark_items,
                (r.settings ->> 'prompt_template') IS NOT NULL AS prompt_template, e.judge_name, e.kind,
                e.combine, e.template ->> 'id' AS template_id, e.template ->> 'version' AS template_version
         FROM runs r JOIN benchmarks b ON b.id = r.benchmark_id JOIN evaluators e ON e.id = $2
         WHERE r.id = $1",
    )
    .bind(run.id)
    .bind(evaluator_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let comparable = is_full_elite(&RunScope {
        benchmark_source: &scope.source,
        benchmark_items: scope.benchmark_items,
        run_items: run.items as i64,
        prompt_template: scope.prompt_template,
    });
    if !comparable {
        return Ok(None);
    }
    // One load writes every row with the same provenance.
    let by_category: Vec<StoredFigure> = category_figures(pool)
        .await?
        .into_iter()
        .filter(|f| f.paper_model == paper_model)
        .collect();
    let provenance = by_category.first().map(|f| f.provenance.clone());
    let judge = match scope.kind.as_str() {
        "panel" => format!("panel {} ({})", scope.judge_name, scope.combine),
        _ => scope.judge_name,
    };
    Ok(Some(PaperComparison {
        paper_model: paper_model.to_string(),
        e_asr_percent: e_asr,
        label: comparison_label(
            &judge,
            scope.template_id.as_deref().unwrap_or("?"),
            scope.template_version.as_deref().unwrap_or("?"),
        ),
        by_category: by_category
            .into_iter()
            .map(|f| (f.category, f.e_asr_percent))
            .collect(),
        categories_provenance: provenance,
    }))
}
