//! The safety area's commands: `elite import ...` (imports and generation run as jobs that
//! this process works on while a progress bar follows them), following a run in this
//! process, `elite run retry`, result tables, and `elite paper load|show` (the paper's
//! per-category figures).

use std::path::Path;

use sqlx::PgPool;

use crate::safety::image::ImageLimits;
use crate::safety::import::parse_elite_csv;
use crate::safety::import_jobs::{
    self, GENERATE_JOB, GenerationSummary, IMPORT_ELITE_JOB, IMPORT_ITEMS_JOB,
};
use crate::safety::store::ImportSummary;

/// Work on one upload's job in this process (other workers may take it too) and follow it with
/// a progress bar until it finishes; returns its result.
pub async fn wait_for_job(
    pool: &PgPool,
    job_id: i64,
    upload_id: i64,
    label: &str,
) -> anyhow::Result<serde_json::Value> {
    use crate::jobs::{JobStatus, WorkerOptions, WorkerPool};
    let workers = WorkerPool::start(
        pool.clone(),
        crate::job_registry(),
        WorkerOptions {
            concurrency: 1,
            only_payload: Some(serde_json::json!({ "upload_id": upload_id })),
            ..WorkerOptions::default()
        },
    );
    let bar = super::progress_bar(0, label);
    let outcome = loop {
        let Some(job) = crate::jobs::get(pool, job_id).await? else {
            break Err(anyhow::anyhow!("job {job_id} vanished"));
        };
        bar.set_length(job.progress_total.max(0) as u64);
        bar.set_position(job.progress_done.max(0) as u64);
        if let Some(message) = &job.progress_message {
            bar.set_message(format!("{label}: {message}"));
        }
        match job.status {
            JobStatus::Succeeded => break Ok(job.result.unwrap_or_default()),
            JobStatus::Failed => {
                break Err(anyhow::anyhow!(
                    "job {job_id} failed: {}",
                    job.last_error.unwrap_or_default()
                ));
            }
            JobStatus::Cancelled => break Err(anyhow::anyhow!("job {job_id} was cancelled")),
            JobStatus::Queued | JobStatus::Running => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    workers.shutdown().await;
    outcome
}

/// `elite import elite-csv`: the CSV is parsed here, the images checked and stored by a job.
pub async fn import_elite(
    pool: &PgPool,
    csv: &Path,
    images: Option<&Path>,
    name: &str,
) -> anyhow::Result<ImportSummary> {
    let bytes =
        std::fs::read(csv).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", csv.display()))?;
    parse_elite_csv(&bytes)?;
    let images = images.map(std::path::absolute).transpose()?;
    let source = format!("elite-csv:{}", csv.display());
    let (job, upload) =
        import_jobs::enqueue_upload(pool, IMPORT_ELITE_JOB, &bytes, None, |upload| {
            serde_json::json!({
                "upload_id": upload, "name": name, "images": images, "source": source,
                "created_by": null,
            })
        })
        .await?;
    let result = wait_for_job(pool, job, upload, "import").await?;
    Ok(serde_json::from_value(result)?)
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
    if let Some(panel) = &results.panel {
        let names: Vec<&str> = panel.judges.iter().map(|j| j.judge_name.as_str()).collect();
        text.push_str(&format!(
            "panel of {}: {}; scores: {}; verdict: {}
",
            names.len(),
            names.join(", "),
            panel.combine,
            panel.verdict_rule
        ));
        let kappa = |a: &crate::stats::agreement::Agreement| match a.value {
            Some(k) => format!("{k:.3} (n={})", a.items),
            None => format!("- (n={})", a.items),
        };
        for pair in &panel.agreement {
            text.push_str(&format!(
                "kappa {} vs {}: {}",
                pair.judge_a,
                pair.judge_b,
                kappa(&pair.overall)
            ));
            for (code, a) in &pair.by_category {
                text.push_str(&format!(", {code} {}", kappa(a)));
            }
            text.push('\n');
        }
    }
    if let Some(p) = &results.paper {
        text.push_str(&format!(
            "paper (Table 3, {}): E-ASR {:.2}%",
            p.paper_model, p.e_asr_percent
        ));
        for category in crate::safety::taxonomy::Category::ALL {
            if let Some(value) = p.by_category.get(category.code()) {
                text.push_str(&format!(", {} {value:.2}%", category.code()));
            }
        }
        text.push_str(&format!("\n  {}\n", p.label));
    }
    text
}

/// `elite import items`: a generic JSONL or CSV benchmark (by extension) with columns/keys
/// text, image (path under `images`, or base64), category, optional pair_type and source; the
/// file is parsed here, the images checked and stored by a job.
pub async fn import_generic(
    pool: &PgPool,
    file: &Path,
    images: Option<&Path>,
    name: &str,
) -> anyhow::Result<ImportSummary> {
    use crate::safety::import::{parse_generic_csv, parse_generic_jsonl};
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let limits = ImageLimits::default();
    let rows = if csv {
        parse_generic_csv(&bytes, limits)?.rows.len()
    } else {
        parse_generic_jsonl(&bytes, limits).rows.len()
    };
    if rows == 0 {
        anyhow::bail!("{} holds no importable rows", file.display());
    }
    let images = images.map(std::path::absolute).transpose()?;
    let source = format!("items:{}", file.display());
    let (job, upload) =
        import_jobs::enqueue_upload(pool, IMPORT_ITEMS_JOB, &bytes, None, |upload| {
            serde_json::json!({
                "upload_id": upload, "name": name, "csv": csv, "images": images, "source": source,
                "created_by": null,
            })
        })
        .await?;
    let result = wait_for_job(pool, job, upload, "import").await?;
    Ok(serde_json::from_value(result)?)
}

/// `elite import generated`: the request is checked here, the pairs made and stored by a job.
pub async fn generate(
    pool: &PgPool,
    request: &crate::safety::generate::GenerationRequest,
    font: Option<&Path>,
    images: Option<&Path>,
) -> anyhow::Result<GenerationSummary> {
    crate::safety::generate::plan(request).map_err(|e| anyhow::anyhow!(e))?;
    // A missing font is said now rather than by the job.
    crate::safety::generate::load_font(font)?;
    let font = font.map(std::path::absolute).transpose()?;
    let images = images.map(std::path::absolute).transpose()?;
    let bytes = serde_json::to_vec(request)?;
    let (job, upload) = import_jobs::enqueue_upload(pool, GENERATE_JOB, &bytes, None, |upload| {
        serde_json::json!({ "upload_id": upload, "font": font, "images": images, "created_by": null })
    })
    .await?;
    let result = wait_for_job(pool, job, upload, "generate").await?;
    Ok(serde_json::from_value(result)?)
}

/// A generation summary as text.
pub fn describe_generation(summary: &GenerationSummary) -> String {
    let benchmark = &summary.benchmark;
    let mut text = format!(
        "generated {} v{} (id {}): {} pairs, {} images stored\n",
        benchmark["name"].as_str().unwrap_or_default(),
        benchmark["version"],
        benchmark["id"],
        summary.items,
        summary.images_stored
    );
    for (method, count) in &summary.by_method {
        text.push_str(&format!("  {method:<12} {count}\n"));
    }
    for (pair_type, count) in &summary.by_pair_type {
        text.push_str(&format!("  {pair_type:<14} {count}\n"));
    }
    if summary.placeholders > 0 {
        text.push_str(&format!(
            "{} pairs got a drawn placeholder for a missing photo (source ends in +placeholder)\n",
            summary.placeholders
        ));
    }
    for note in &summary.photo_problems {
        text.push_str(&format!("seed {}: {}\n", note.seed, note.reason));
    }
    text
}

/// A generation request from a seeds file (JSONL, one seed per line) and the command line's
/// lists.
pub fn generation_request(
    seeds: &Path,
    name: String,
    methods: &[String],
    pair_types: &[String],
) -> anyhow::Result<crate::safety::generate::GenerationRequest> {
    use crate::safety::generate::{MAX_SEEDS, Method};
    use crate::safety::import::PairType;
    let text = std::fs::read_to_string(seeds)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", seeds.display()))?;
    let mut parsed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if parsed.len() == MAX_SEEDS {
            anyhow::bail!("{}: at most {MAX_SEEDS} seeds", seeds.display());
        }
        parsed.push(
            serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", seeds.display(), n + 1))?,
        );
    }
    Ok(crate::safety::generate::GenerationRequest {
        name,
        seeds: parsed,
        methods: methods
            .iter()
            .map(|v| Method::parse(v).ok_or_else(|| anyhow::anyhow!("unknown method {v:?}")))
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

/// `elite paper load`: replace the paper's per-category figures with a CSV file's; a refused
/// file changes nothing. Returns what was loaded, in words.
pub async fn load_paper_categories(
    pool: &PgPool,
    file: &Path,
    provenance: &str,
) -> anyhow::Result<String> {
    use crate::safety::paper::{MAX_CATEGORY_TABLE_BYTES, parse_category_table};
    let size = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    if size > MAX_CATEGORY_TABLE_BYTES as u64 {
        anyhow::bail!(
            "{} has {size} bytes; a table has at most {MAX_CATEGORY_TABLE_BYTES}",
            file.display()
        );
    }
    let bytes = std::fs::read(file)?;
    let figures = parse_category_table(&bytes)
        .map_err(|e| anyhow::anyhow!("{} was not loaded: {e}", file.display()))?;
    let stored =
        crate::safety::paper_store::replace_category_figures(pool, &figures, provenance, None)
            .await?;
    let models: std::collections::BTreeSet<&str> =
        figures.iter().map(|f| f.paper_model.as_str()).collect();
    Ok(format!(
        "loaded {stored} per-category figures for {} models ({}); the previous table is replaced",
        models.len(),
        models.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// `elite paper show`: the loaded figures as a table (or JSON).
pub async fn show_paper_categories(pool: &PgPool, json: bool) -> anyhow::Result<String> {
    let rows = crate::safety::paper_store::category_figures(pool).await?;
    if json {
        return Ok(serde_json::to_string(&rows)?);
    }
    let Some(first) = rows.first() else {
        return Ok(
            "no per-category figures loaded (elite paper load FILE --provenance ...)".into(),
        );
    };
    let mut out = format!("from: {}\n", first.provenance);
    for row in &rows {
        out.push_str(&format!(
            "{:<24} {:<4} {:>6.2}%\n",
            row.paper_model, row.category, row.e_asr_percent
        ));
    }
    out.push_str(&format!("{} figures", rows.len()));
    Ok(out)
}
