//! The safety commands' CLI side: `elite import elite-csv` (parse the release file, check the
//! images, store a benchmark version, and summarise what was imported, missing or unreadable),
//! following a run in this process, and `elite run retry`.

use std::path::Path;

use sqlx::PgPool;

use crate::safety::image::ImageLimits;
use crate::safety::import::{check_elite_import, read_elite_csv};
use crate::safety::store::{self, ImportSummary};

pub async fn import_elite(
    pool: &PgPool,
    csv: &Path,
    images: Option<&Path>,
    name: &str,
) -> anyhow::Result<ImportSummary> {
    let (csv_owned, images_owned) = (csv.to_path_buf(), images.map(Path::to_path_buf));
    let (parsed, report) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let parsed = read_elite_csv(&csv_owned)?;
        let report = check_elite_import(&parsed, images_owned.as_deref(), ImageLimits::default());
        Ok((parsed, report))
    })
    .await??;
    let source = format!("elite-csv:{}", csv.display());
    Ok(store::import_elite(pool, name, &source, &parsed, &report, None).await?)
}

pub fn describe_import(summary: &ImportSummary) -> String {
    let mut text = format!(
        "imported {} v{} (id {}): {} items, {} images stored, {} duplicates kept\n",
        summary.benchmark.name,
        summary.benchmark.version,
        summary.benchmark.id,
        summary.items,
        summary.images_stored,
        summary.duplicates
    );
    for (code, count) in &summary.by_category {
        text.push_str(&format!("  {code:<4} {count}\n"));
    }
    if !summary.images_missing.is_empty() {
        let shown: Vec<&str> = summary
            .images_missing
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        text.push_str(&format!(
            "{} images missing (their items are kept and marked): {}{}\n",
            summary.images_missing.len(),
            shown.join(", "),
            if summary.images_missing.len() > 10 {
                ", ..."
            } else {
                ""
            }
        ));
    }
    for (image, reason) in &summary.images_unreadable {
        text.push_str(&format!("unreadable image {image}: {reason}\n"));
    }
    for (line, reason) in &summary.rejected {
        text.push_str(&format!("line {line} rejected: {reason}\n"));
    }
    text
}

/// `elite run ... --follow`: run workers in this process until the run ends, with a progress
/// bar over responses plus judgements. Ends with the run when it is complete, and with an error
/// saying why when it is incomplete (its failed chunks), cancelled, or interrupted (Ctrl-C or
/// SIGTERM: the workers hand their chunks back to the queue at once).
pub async fn follow_run(pool: &PgPool, run_id: i64) -> anyhow::Result<crate::safety::runs::Run> {
    use crate::jobs::{WorkerOptions, WorkerPool};
    use crate::safety::runs::{RunState, get_run, progress};
    let run = get_run(pool, run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run_id}"))?;
    // Work on this run's jobs only: other queued work belongs to other processes.
    let workers = WorkerPool::start(
        pool.clone(),
        crate::job_registry(),
        WorkerOptions {
            concurrency: 2,
            only_payload: Some(serde_json::json!({ "run_id": run_id })),
            ..WorkerOptions::default()
        },
    );
    let bar = super::progress_bar(0, &format!("run {run_id}"));
    let judged_part = if run.evaluator_id.is_some() {
        run.items as u64
    } else {
        0
    };
    bar.set_length(run.items as u64 + judged_part);
    let interrupted = crate::server::shutdown_signal();
    tokio::pin!(interrupted);
    let outcome = async {
        loop {
            let p = progress(pool, run_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("run {run_id} vanished"))?;
            bar.set_position(p.responses as u64 + p.judged.min(judged_part as i64) as u64);
            match p.state {
                RunState::Running => {}
                RunState::Complete => return Ok(()),
                RunState::Cancelled => anyhow::bail!(
                    "run {run_id} was cancelled: {} of {} items answered, {} judged",
                    p.responses,
                    p.items,
                    p.judged
                ),
                RunState::Incomplete => anyhow::bail!("{}", describe_incomplete(&p)),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = &mut interrupted => anyhow::bail!(
                    "interrupted: the chunks of run {run_id} still to do are queued for the next \
                     worker (`elite worker`, or `elite run retry {run_id} --follow`)"
                ),
            }
        }
    }
    .await;
    bar.finish_and_clear();
    workers.shutdown().await;
    outcome?;
    get_run(pool, run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run {run_id} vanished"))
}

/// Why a run is incomplete: its failed chunks with their last errors, and what to do.
pub fn describe_incomplete(p: &crate::safety::runs::RunProgress) -> String {
    let mut text = format!(
        "run {} is incomplete: {} of {} items answered, {} judged; {} chunk(s) failed",
        p.run_id,
        p.responses,
        p.items,
        p.judged,
        p.failed_chunks.len()
    );
    for chunk in p.failed_chunks.iter().take(10) {
        text.push_str(&format!(
            "\n  job {} ({}, {} items): {}",
            chunk.job_id,
            chunk.stage(),
            chunk.item_ids.len(),
            chunk.last_error.as_deref().unwrap_or("no error recorded")
        ));
    }
    text.push_str(&format!(
        "\nfix the cause, then `elite run retry {}` queues the failed chunks again",
        p.run_id
    ));
    text
}

/// `elite run retry RUN [--follow]`: queue the run's failed chunks again and say which.
pub async fn retry_run(pool: &PgPool, run_id: i64, follow: bool) -> anyhow::Result<()> {
    use crate::safety::runs;
    let failed = runs::failed_chunks(pool, run_id).await?;
    let retried = runs::retry_run(pool, run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run_id}"))?;
    if retried.is_empty() {
        println!("run {run_id} has no failed chunks");
    } else {
        println!(
            "run {run_id}: {} failed chunk(s) queued again",
            retried.len()
        );
        for chunk in failed.iter().filter(|c| retried.contains(&c.job_id)) {
            println!(
                "  job {} ({}, {} items)",
                chunk.job_id,
                chunk.stage(),
                chunk.item_ids.len()
            );
        }
    }
    if follow {
        let run = follow_run(pool, run_id).await?;
        println!(
            "run {} finished: {} responses, {} judged",
            run.id, run.responses, run.judged
        );
    }
    Ok(())
}

/// A text table of a run's results.
pub fn describe_results(results: &crate::safety::runs::RunResults) -> String {
    let run = &results.run;
    let mut text = format!(
        "run {} · {} · {} items, {} responses ({} errors/skipped), {} judged{}\n",
        run.id,
        run.model_name,
        run.items,
        run.responses,
        run.errors,
        run.judged,
        run.judge_name
            .as_ref()
            .map(|j| format!(" by {j}"))
            .unwrap_or_default()
    );
    if !results.is_final() {
        text.push_str(&format!(
            "not final: {} answers wait for the judge, {} items for an answer (left out below)\n",
            results.pending, results.unanswered
        ));
    }
    let Some(report) = &results.report else {
        text.push_str(if run.evaluator_id.is_none() {
            "no judgements (run without a judge)\n"
        } else {
            "no judged responses yet (errors and skipped items are never judged)\n"
        });
        return text;
    };
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.2}", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    text.push_str("category  items  unscored  E-ASR %  95% CI         mean ELITE  keyword ASR %\n");
    let mut line = |name: &str, m: &crate::safety::metrics::MetricSummary| {
        let ci = m
            .e_asr_ci
            .as_ref()
            .map(|c| format!("[{:.1}, {:.1}]", c.lower * 100.0, c.upper * 100.0))
            .unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "{name:<9} {:>5}  {:>8}  {:>7}  {ci:<13}  {:>10}  {:>13}\n",
            m.items,
            m.unscored,
            pct(m.e_asr),
            m.mean_elite_score
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
            pct(m.keyword_asr)
        ));
    };
    for (category, summary) in &report.by_category {
        line(category.code(), summary);
    }
    line("overall", &report.overall);
    text
}

/// `elite import items`: a generic JSONL or CSV benchmark (by extension) with columns/keys
/// text, image (path under `images`, or base64), category, optional pair_type and source.
pub async fn import_generic(
    pool: &PgPool,
    file: &Path,
    images: Option<&Path>,
    name: &str,
) -> anyhow::Result<ImportSummary> {
    use crate::safety::import::{check_generic_import, parse_generic_csv, parse_generic_jsonl};
    let (file_owned, images_owned) = (file.to_path_buf(), images.map(Path::to_path_buf));
    let (parsed, report) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let bytes = std::fs::read(&file_owned)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file_owned.display()))?;
        let limits = ImageLimits::default();
        let is_csv = file_owned
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let parsed = if is_csv {
            parse_generic_csv(&bytes, limits)?
        } else {
            parse_generic_jsonl(&bytes, limits)
        };
        let report = check_generic_import(&parsed, images_owned.as_deref(), limits);
        Ok((parsed, report))
    })
    .await??;
    let source = format!("items:{}", file.display());
    Ok(store::import_generic(pool, name, &source, &parsed, &report, None).await?)
}

/// A generation request from a seeds file (JSONL: category, instruction, optional benign) and
/// the command line's lists.
pub fn generation_request(
    seeds: &Path,
    name: String,
    image_styles: &[String],
    text_templates: &[String],
    pair_types: &[String],
) -> anyhow::Result<crate::safety::generate::GenerationRequest> {
    use crate::safety::import::PairType;
    let text = std::fs::read_to_string(seeds)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", seeds.display()))?;
    let mut parsed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        parsed.push(
            serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", seeds.display(), n + 1))?,
        );
    }
    fn parse<T: serde::de::DeserializeOwned>(kind: &str, value: &str) -> anyhow::Result<T> {
        serde_json::from_value(serde_json::Value::String(value.trim().to_string()))
            .map_err(|_| anyhow::anyhow!("unknown {kind} {value:?}"))
    }
    Ok(crate::safety::generate::GenerationRequest {
        name,
        seeds: parsed,
        image_styles: image_styles
            .iter()
            .map(|v| parse("image style", v))
            .collect::<anyhow::Result<_>>()?,
        text_templates: text_templates
            .iter()
            .map(|v| parse("text template", v))
            .collect::<anyhow::Result<_>>()?,
        pair_types: pair_types
            .iter()
            .map(|v| PairType::parse(v).ok_or_else(|| anyhow::anyhow!("unknown pair type {v:?}")))
            .collect::<anyhow::Result<_>>()?,
    })
}

/// `--keyword-list`: a shipped list's id, or a file whose phrases become the run's own list.
/// Returns the request's `keyword_list` and `keywords` fields.
pub fn keyword_choice(
    choice: Option<String>,
) -> anyhow::Result<(Option<String>, Option<Vec<String>>)> {
    let Some(choice) = choice else {
        return Ok((None, None));
    };
    if crate::safety::keywords::shipped_list(&choice).is_some() {
        return Ok((Some(choice), None));
    }
    let path = std::path::Path::new(&choice);
    if !path.is_file() {
        anyhow::bail!("--keyword-list {choice:?}: neither a shipped list (elite, gcg) nor a file");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let list = crate::safety::keywords::KeywordList::from_text(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((None, Some(list.phrases)))
}
