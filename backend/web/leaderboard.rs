//! The safety leaderboard: each model's newest finished run per benchmark and selection, as a
//! table and a models x categories heatmap, with the paper's figures beside comparable runs.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::routing::get;

use super::auth::{CsrfToken, CurrentUser};
use super::pages::PageCtx;
use super::runs::result_row;
use super::{AppError, AppState, RESEARCHER, Routes};
use crate::accounts::Role;
use crate::safety::runs::{self, RunResults};
use crate::safety::store;

pub(crate) fn routes(routes: Routes) -> Routes {
    routes.get("/safety/leaderboard", RESEARCHER, get(leaderboard_page))
}

/// One model's row of the leaderboard.
struct LeaderRow {
    model: String,
    benchmark: String,
    run_id: i64,
    items: usize,
    e_asr: String,
    ci: String,
    paper: String,
    /// What differs between the paper's figure and this run (empty without a figure).
    paper_label: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "safety/leaderboard.html")]
struct LeaderboardPage {
    ctx: PageCtx,
    rows: Vec<LeaderRow>,
    heatmap_svg: String,
}

async fn leaderboard_page(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    csrf: CsrfToken,
) -> Result<LeaderboardPage, AppError> {
    use crate::safety::taxonomy::Category;
    let benchmarks: std::collections::HashMap<i64, String> = store::list_benchmarks(&state.pool)
        .await?
        .into_iter()
        .map(|b| (b.id, format!("{} v{}", b.name, b.version)))
        .collect();
    // The newest judged run per (model, benchmark, selection): a subset run never hides a run
    // over the whole benchmark.
    let selections: std::collections::HashMap<i64, String> = runs::run_selections(&state.pool)
        .await?
        .into_iter()
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    let mut cells = Vec::new();
    for run in runs::list_runs(&state.pool)
        .await?
        .into_iter()
        .filter(|r| r.evaluator_id.is_some())
    {
        let selection = selections.get(&run.id).cloned().unwrap_or_default();
        if seen.contains(&(run.model_name.clone(), run.benchmark_id, selection.clone())) {
            continue;
        }
        // Only finished evaluations rank: every item answered and every answer judged (a run
        // still judging, or cancelled half-way, would rank on a partial sample).
        let Some(
            results @ RunResults {
                report: Some(_), ..
            },
        ) = runs::results(&state.pool, run.id, None).await?
        else {
            continue;
        };
        if !results.is_final() {
            continue;
        }
        // The paper's figure is only there beside runs over the full ELITE benchmark.
        let RunResults {
            run,
            report: Some(report),
            paper,
            ..
        } = results
        else {
            continue;
        };
        seen.insert((run.model_name.clone(), run.benchmark_id, selection));
        let mut line: Vec<Option<f64>> = Category::ALL
            .iter()
            .map(|c| report.by_category.get(c).and_then(|m| m.e_asr))
            .collect();
        line.push(report.overall.e_asr);
        line.push(paper.as_ref().map(|p| p.e_asr_percent / 100.0));
        labels.push(format!("{} (run {})", run.model_name, run.id));
        cells.push(line);
        // The paper's own row under the run, when an admin loaded its per-category figures.
        if let Some(p) = paper.as_ref().filter(|p| !p.by_category.is_empty()) {
            let mut line: Vec<Option<f64>> = Category::ALL
                .iter()
                .map(|c| p.by_category.get(c.code()).map(|v| v / 100.0))
                .collect();
            line.push(Some(p.e_asr_percent / 100.0));
            line.push(Some(p.e_asr_percent / 100.0));
            labels.push(format!("{} (paper, Table 3)", p.paper_model));
            cells.push(line);
        }
        let row = result_row(String::new(), &report.overall);
        rows.push(LeaderRow {
            model: run.model_name.clone(),
            benchmark: benchmarks
                .get(&run.benchmark_id)
                .cloned()
                .unwrap_or_default(),
            run_id: run.id,
            items: report.overall.items,
            e_asr: row.e_asr,
            ci: row.ci,
            paper: paper
                .as_ref()
                .map(|p| format!("{:.2}%", p.e_asr_percent))
                .unwrap_or_else(|| "-".into()),
            paper_label: paper.map(|p| p.label).unwrap_or_default(),
        });
    }
    let mut columns: Vec<String> = Category::ALL.iter().map(|c| c.code().to_string()).collect();
    columns.push("overall".into());
    columns.push("paper".into());
    Ok(LeaderboardPage {
        ctx: PageCtx::new("Leaderboard", "safety", Some(user), &csrf),
        heatmap_svg: crate::charts::heatmap(
            "E-ASR (%) by hazard category",
            &labels,
            &columns,
            &cells,
        ),
        rows,
    })
}
