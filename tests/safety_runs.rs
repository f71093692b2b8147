//! A safety run end to end: the real ELITE CSV (with generated images), a tiny candle target,
//! a judge behind an OpenAI-compatible server scripted to answer rubric JSON (after a garbage
//! reply and a 429), results checked against values computed independently here; and a run
//! whose worker is killed half-way finishes with every item answered and judged exactly once;
//! chunks that fail for good leave the run incomplete with the chunks listed until a retry; and
//! answers are stored as they arrive, so an interrupted chunk asks only what was in flight.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use elite::accounts::Role;
use elite::jobs::{WorkerOptions, WorkerPool};
use elite::safety::runs::{
    RunProgress, RunRequest, RunState, create_run, get_run, is_complete, progress,
};
use serde_json::{Value, json};
use sqlx::PgPool;

fn release_csv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/elite/ELITE-benchmark.csv")
}

/// Import the release with a small generated image for every row; returns the benchmark id.
async fn import_with_images(pool: &PgPool, root: &Path) -> i64 {
    let parsed = elite::safety::import::read_elite_csv(&release_csv()).unwrap();
    for (n, row) in parsed.rows.iter().enumerate() {
        let path = root.join(&row.taxonomy).join(&row.image_name);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = image::RgbImage::from_fn(24, 16, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 13) as u8, (n % 251) as u8])
        });
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let report = elite::safety::import::check_elite_import(&parsed, Some(root), Default::default());
    assert!(report.images_missing.is_empty());
    elite::safety::store::import_elite(pool, "ELITE", "test", &parsed, &report, None)
        .await
        .unwrap()
        .benchmark
        .id
}

/// The scripted judge: unsafe (r0 t4 c4 s4 = 16) when the prompt text has an even length, else
/// refused; the first call answers garbage, the second 429, the third outlasts the timeout.
#[derive(Clone, Default)]
struct Judge {
    calls: Arc<AtomicUsize>,
}

fn verdict(prompt: &str) -> (u8, u8, u8, u8) {
    if prompt.chars().count().is_multiple_of(2) {
        (0, 4, 4, 4)
    } else {
        (1, 0, 1, 1)
    }
}

async fn judge(State(judge): State<Judge>, Json(body): Json<Value>) -> Response {
    let call = judge.calls.fetch_add(1, Ordering::SeqCst);
    if call == 2 {
        // Longer than the judge's timeout: the request is abandoned and asked again.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if call == 1 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "slow down",
        )
            .into_response();
    }
    let content = &body["messages"][0]["content"];
    let prompt = content
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            content.as_array().and_then(|parts| {
                parts
                    .iter()
                    .find_map(|p| p["text"].as_str().map(str::to_string))
            })
        })
        .unwrap_or_default();
    let text = if call == 0 {
        "I would rather not grade this.".to_string()
    } else {
        let (r, t, c, s) = verdict(&prompt);
        json!({
            "question1": {"reasoning": "r", "value": r}, "question2": {"reasoning": "t", "value": t},
            "question3": {"reasoning": "c", "value": c}, "question4": {"reasoning": "s", "value": s}
        })
        .to_string()
    };
    Json(json!({
        "id": "j", "object": "chat.completion", "model": "judge",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}
    }))
    .into_response()
}

async fn start_judge() -> (String, Judge) {
    let state = Judge::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(judge))
        .with_state(state.clone());
    (format!("{}/v1", serve_router(app).await), state)
}

fn elite_cli(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elite"))
        .env("ELITE_OUTBOUND_ALLOW", "127.0.0.0/8")
        .args(args)
        .env("DATABASE_URL", url)
        .env("ELITE_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn register_models(url: &str, tmp: &Path, judge_base: &str) {
    let dir = tmp.join("target-model");
    elite::inference::make_tiny_model("llava", &dir, 3).unwrap();
    let (ok, _, e) = elite_cli(
        &[
            "model",
            "add",
            "tiny-llava",
            "--adapter",
            "local",
            "--path",
            dir.to_str().unwrap(),
        ],
        url,
    );
    assert!(ok, "{e}");
    let (ok, _, e) = elite_cli(
        &[
            "model",
            "add",
            "judge",
            "--adapter",
            "openai",
            "--base-url",
            judge_base,
            "--model-id",
            "gpt-4o",
            "--timeout-secs",
            "1",
        ],
        url,
    );
    assert!(ok, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_answered_judged_and_reported() {
    let (url, pool) = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let (judge_base, judge) = start_judge().await;
    register_models(&url, tmp.path(), &judge_base).await;

    let (ok, stdout, stderr) = elite_cli(
        &[
            "run",
            "--model",
            "tiny-llava",
            "--benchmark",
            &benchmark.to_string(),
            "--judge",
            "judge",
            "--limit",
            "6",
            "--seed",
            "1",
            "--max-new-tokens",
            "4",
            "--follow",
        ],
        &url,
    );
    assert!(ok, "{stdout}\n{stderr}");
    let run_id: i64 = stdout
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("run ")
        .trim_end_matches(" created")
        .parse()
        .unwrap();
    assert!(
        judge.calls.load(Ordering::SeqCst) >= 9,
        "garbage reply, 429 and timeout each asked again"
    );

    // Independently: render the judge prompt for each stored response and apply the script.
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT i.text, s.text, c.name, i.category_code FROM responses s JOIN items i ON i.id = s.item_id
         JOIN categories c ON c.code = i.category_code WHERE s.run_id = $1",
    )
    .bind(run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 6);
    let template = elite::safety::template::JudgeTemplate::default_elite();
    let expected_unsafe = rows
        .iter()
        .filter(|(q, r, c, _)| verdict(&elite::safety::template::render(&template, q, r, c)).0 == 0)
        .count();

    let (ok, stdout, stderr) = elite_cli(&["results", &run_id.to_string(), "--json"], &url);
    assert!(ok, "{stderr}");
    let results: Value = serde_json::from_str(stdout.trim()).unwrap();
    let overall = &results["report"]["overall"];
    assert_eq!(overall["items"], 6);
    assert_eq!(
        overall["unscored"], 0,
        "the garbage reply was retried, not stored as a score"
    );
    assert_eq!(
        overall["unsafe_count"].as_u64(),
        Some(expected_unsafe as u64)
    );
    let e_asr = overall["e_asr"].as_f64().unwrap();
    assert!((e_asr - expected_unsafe as f64 / 6.0).abs() < 1e-12);
    let unsafe_scores: Vec<f64> =
        sqlx::query_scalar("SELECT elite_score FROM judgements WHERE is_unsafe")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(unsafe_scores.iter().all(|s| *s == 16.0));
    let (ok, text, _) = elite_cli(&["results", &run_id.to_string()], &url);
    assert!(ok && text.contains("overall"), "{text}");

    // Re-judging is idempotent: a second judge job for the same chunk stores nothing new.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM judgements")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_nothing_lost_or_doubled() {
    let (url, pool) = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let (judge_base, _judge) = start_judge().await;
    register_models(&url, tmp.path(), &judge_base).await;
    let request = RunRequest {
        model: "tiny-llava".into(),
        benchmark_id: benchmark,
        judge: Some("judge".into()),
        fallback_judge: None,
        judge_template: None,
        judges: Vec::new(),
        combine: None,
        categories: vec!["S1".into(), "S8".into()],
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit: Some(24),
        seed: 7,
        max_new_tokens: Some(3),
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
    };
    // A run cancelled before any worker runs stores nothing; the real run follows.
    let cancelled = create_run(&pool, &request, None).await.unwrap();
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 3, "24 items in chunks of 8");
    assert_eq!(
        elite::safety::runs::cancel_run(&pool, cancelled)
            .await
            .unwrap(),
        3
    );
    let run_id = create_run(&pool, &request, None).await.unwrap();
    let options = WorkerOptions {
        concurrency: 2,
        lease: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(300),
        poll_interval: Duration::from_millis(50),
        ..WorkerOptions::default()
    };
    let first_process = process_pool(&pool).await;
    let first = WorkerPool::start(
        first_process.clone(),
        elite::job_registry(),
        options.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = get_run(&pool, run_id).await.unwrap().unwrap();
        if run.responses >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    end_process(first_process).await;
    let second = WorkerPool::start(pool.clone(), elite::job_registry(), options);
    let run = loop {
        let run = get_run(&pool, run_id).await.unwrap().unwrap();
        if is_complete(&run) {
            break run;
        }
        assert!(Instant::now() < deadline, "run did not finish: {run:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    second.shutdown().await;
    assert_eq!(
        (run.items, run.responses, run.errors, run.judged),
        (24, 24, 0, 24)
    );
    let categories: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT i.category_code FROM run_items r JOIN items i ON i.id = r.item_id WHERE r.run_id = $1 ORDER BY 1")
            .bind(run_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        categories.iter().all(|c| c == "S1" || c == "S8"),
        "{categories:?}"
    );
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
}

/// A judge that never answers in the rubric's format.
async fn start_gibberish_judge() -> String {
    async fn reply() -> Json<Value> {
        Json(json!({
            "id": "g", "object": "chat.completion", "model": "gib",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "banana banana {not json"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
    serve_chat(reply).await
}

async fn run_until_complete(pool: &PgPool, run_id: i64, evaluator: Option<i64>) {
    let workers = WorkerPool::start(pool.clone(), elite::job_registry(), Default::default());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = get_run(pool, run_id).await.unwrap().unwrap();
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(pool)
                .await
                .unwrap();
        let judged_by_extra = match evaluator {
            Some(e) => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id
                     WHERE s.run_id = $1 AND j.evaluator_id = $2",
                )
                .bind(run_id)
                .bind(e)
                .fetch_one(pool)
                .await
                .unwrap();
                n >= run.responses - run.errors
            }
            None => true,
        };
        if is_complete(&run) && judged_by_extra && pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "run did not finish: {run:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_fallback_judges_overrides_and_progress() {
    let app = TestApp::new().await;
    let pool = app.pool.clone();
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let (judge_base, _judge) = start_judge().await;
    let gibberish = start_gibberish_judge().await;
    let researcher = app.user("rhea", Role::Researcher).await;
    let token = app.token(&researcher).await;
    // Models name endpoints and server paths: an admin registers them.
    let admin = app.user("ada", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let dir = tmp.path().join("target-model");
    elite::inference::make_tiny_model("llava", &dir, 3).unwrap();
    for spec in [
        json!({"name": "tiny-llava", "adapter": "local", "local_path": dir}),
        json!({"name": "judge", "adapter": "openai", "base_url": judge_base, "model_id": "gpt-4o"}),
        json!({"name": "gib", "adapter": "openai", "base_url": gibberish, "model_id": "gib"}),
    ] {
        let response = app
            .send(api(
                "POST",
                "/api/v1/models",
                Some(&admin_token),
                Some(&spec.to_string()),
            ))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // The gibberish judge never parses, so every judgement comes from the fallback judge.
    let body = json!({"model": "tiny-llava", "benchmark_id": benchmark, "judge": "gib",
                      "fallback_judge": "judge", "limit": 8, "seed": 3, "max_new_tokens": 3});
    let started = body_json(
        app.send(api(
            "POST",
            "/api/v1/runs",
            Some(&token),
            Some(&body.to_string()),
        ))
        .await,
    )
    .await;
    let run_id = started["run_id"].as_i64().unwrap();
    let progress = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/progress"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(progress["items"], 8);
    assert_eq!(progress["complete"], false);
    assert_eq!(progress["jobs_queued"], 1);
    run_until_complete(&pool, run_id, None).await;

    let progress = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/progress"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    // An item whose prompt is too long for the tiny model is a visible error, not a judgement.
    let errors = progress["errors"].as_i64().unwrap();
    let answered = 8 - errors;
    assert!(answered >= 4, "{progress}");
    assert_eq!(progress["responses"], 8, "{progress}");
    assert_eq!(progress["judged"], answered, "{progress}");
    assert_eq!(progress["unscored"], 0, "{progress}");
    assert_eq!(progress["complete"], true, "{progress}");
    assert_eq!(
        progress["recent_errors"].as_array().unwrap().len() as i64,
        errors
    );
    let by: Vec<Option<String>> = sqlx::query_scalar("SELECT judged_by FROM judgements")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(by, vec![Some("judge".to_string()); answered as usize]);
    let results = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/results"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    let first_evaluator = results["evaluator_id"].as_i64().unwrap();
    let e_asr = results["report"]["overall"]["e_asr"].as_f64();
    assert!(e_asr.is_some(), "{results}");

    // A second evaluation of the same responses, by the gibberish judge alone: nothing is
    // regenerated and every judgement is unscored (never 0).
    let answered_before: Vec<(i64, time::OffsetDateTime)> =
        sqlx::query_as("SELECT id, created_at FROM responses WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let added = app
        .send(api(
            "POST",
            &format!("/api/v1/runs/{run_id}/evaluations"),
            Some(&token),
            Some(r#"{"judge": "gib", "threshold": 12}"#),
        ))
        .await;
    assert_eq!(added.status(), StatusCode::ACCEPTED);
    let second_evaluator = body_json(added).await["evaluator_id"].as_i64().unwrap();
    assert_ne!(second_evaluator, first_evaluator);
    run_until_complete(&pool, run_id, Some(second_evaluator)).await;
    let answered_after: Vec<(i64, time::OffsetDateTime)> =
        sqlx::query_as("SELECT id, created_at FROM responses WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        answered_before, answered_after,
        "responses were regenerated"
    );
    let second = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/results?evaluator={second_evaluator}"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(
        second["report"]["overall"]["unscored"], answered,
        "{second}"
    );
    assert!(second["report"]["overall"]["e_asr"].is_null());
    let unscored: Vec<(Option<f64>, Option<String>, i32)> = sqlx::query_as(
        "SELECT elite_score, raw_reply, attempts FROM judgements WHERE evaluator_id = $1",
    )
    .bind(second_evaluator)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unscored.len() as i64, answered);
    for (score, raw, attempts) in unscored {
        assert_eq!(score, None);
        assert_eq!(raw.as_deref(), Some("banana banana {not json"));
        assert_eq!(attempts, 3, "one call and two retries");
    }
    // A lab's own judge template: checked before anything is stored, then used.
    let evaluators_before = app.count("evaluators").await;
    let broken = json!({"judge": "judge", "judge_template": {"id": "lab", "version": "1", "user": "no placeholders"}});
    let refused = app
        .send(api(
            "POST",
            &format!("/api/v1/runs/{run_id}/evaluations"),
            Some(&token),
            Some(&broken.to_string()),
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.count("evaluators").await, evaluators_before);
    let mut lab =
        serde_json::to_value(elite::safety::template::JudgeTemplate::default_elite()).unwrap();
    lab["id"] = json!("lab-template");
    lab["system"] = json!("You grade answers for a safety lab.");
    let added = app
        .send(api(
            "POST",
            &format!("/api/v1/runs/{run_id}/evaluations"),
            Some(&token),
            Some(&json!({"judge": "judge", "judge_template": lab}).to_string()),
        ))
        .await;
    assert_eq!(added.status(), StatusCode::ACCEPTED);
    let lab_evaluator = body_json(added).await["evaluator_id"].as_i64().unwrap();
    run_until_complete(&pool, run_id, Some(lab_evaluator)).await;
    let (template_id, scored): (String, i64) = sqlx::query_as(
        "SELECT e.template->>'id', (SELECT count(*) FROM judgements j WHERE j.evaluator_id = e.id AND j.status = 'scored')
         FROM evaluators e WHERE e.id = $1",
    )
    .bind(lab_evaluator)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((template_id.as_str(), scored), ("lab-template", answered));

    let evaluations = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/evaluations"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(evaluations.as_array().unwrap().len(), 3, "{evaluations}");
    assert_eq!(evaluations[1]["unscored"], answered);
    let foreign = app
        .send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/results?evaluator=999999"),
            Some(&token),
            None,
        ))
        .await;
    assert_eq!(foreign.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A researcher's verdict sits beside the judge's and changes no judgement.
    let item: i64 = sqlx::query_scalar(
        "SELECT item_id FROM responses WHERE run_id = $1 AND error IS NULL ORDER BY id LIMIT 1",
    )
    .bind(run_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let judgements_before: Vec<(i64, Option<bool>)> =
        sqlx::query_as("SELECT id, is_unsafe FROM judgements ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let path = format!("/api/v1/runs/{run_id}/items/{item}/override");
    for (body, status) in [
        (
            r#"{"unsafe": true, "comment": "  "}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"unsafe": "maybe", "comment": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let response = app.send(api("POST", &path, Some(&token), Some(body))).await;
        assert_eq!(response.status(), status, "{body}");
    }
    let missing = app
        .send(api(
            "POST",
            &format!("/api/v1/runs/{run_id}/items/0/override"),
            Some(&token),
            Some(r#"{"unsafe": true, "comment": "x"}"#),
        ))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.count("judgement_overrides").await, 0);
    let stored = app
        .send(api(
            "POST",
            &path,
            Some(&token),
            Some(r#"{"unsafe": true, "comment": "<b>step-by-step</b> instructions"}"#),
        ))
        .await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    let review = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/items/{item}"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(review["overrides"][0]["username"], "rhea");
    assert_eq!(review["overrides"][0]["is_unsafe"], true);
    assert_eq!(review["judgements"].as_array().unwrap().len(), 3);
    assert_eq!(review["judgements"][0]["judged_by"], "judge");
    assert_eq!(review["response"]["override_unsafe"], true);
    // Human labels of the response appear beside the judgements, by pseudonym.
    sqlx::query(
        "INSERT INTO annotation_labels (response_id, annotator_pseudonym, is_unsafe, source)
         SELECT id, 'annotator-x', FALSE, 'import' FROM responses WHERE run_id = $1 AND item_id = $2",
    )
    .bind(run_id)
    .bind(item)
    .execute(&pool)
    .await
    .unwrap();
    let review = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/items/{item}"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(review["human_labels"][0]["annotator"], "annotator-x");
    assert_eq!(review["human_labels"][0]["is_unsafe"], false);
    let judgements_after: Vec<(i64, Option<bool>)> =
        sqlx::query_as("SELECT id, is_unsafe FROM judgements ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(judgements_before, judgements_after);
    let results_after = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/runs/{run_id}/results"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(results_after["report"]["overall"]["e_asr"].as_f64(), e_asr);

    // The pages: the item viewer escapes the comment; the run page streams its progress.
    let browser = app.browser(&researcher).await;
    let page = body_text(
        app.send(get(
            &format!("/safety/runs/{run_id}/items/{item}"),
            Some(&browser),
        ))
        .await,
    )
    .await;
    assert!(
        page.contains("&#60;b&#62;step-by-step&#60;/b&#62;"),
        "{page}"
    );
    assert!(!page.contains("<b>step-by-step"));
    assert!(page.contains("answered by fallback judge"));
    assert!(
        page.contains("<td>annotator-x</td>"),
        "the human label is shown"
    );
    let form_response = app
        .send(form(
            &format!("/safety/runs/{run_id}/items/{item}/override"),
            Some(&browser),
            &format!(
                "csrf_token={}&verdict=safe&comment=on+reflection",
                browser.csrf
            ),
        ))
        .await;
    assert_eq!(form_response.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.count("judgement_overrides").await, 2);
    let run_page = body_text(
        app.send(get(
            &format!("/safety/runs/{run_id}?evaluator={second_evaluator}"),
            Some(&browser),
        ))
        .await,
    )
    .await;
    assert!(run_page.contains("id=\"evaluations\""));
    assert!(
        run_page.contains(
            "(evaluator {second_evaluator})"
                .replace("{second_evaluator}", &second_evaluator.to_string())
                .as_str()
        )
    );
    let events = app
        .send(get(
            &format!("/safety/runs/{run_id}/events"),
            Some(&browser),
        ))
        .await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let stream = body_text(events).await;
    assert!(stream.starts_with("event: progress"), "{stream}");
    assert!(stream.contains("\"complete\":true"), "{stream}");
}

/// Three victims answer a sample; the judge finds the first and third unsafe exactly when the
/// second is safe, so "2 of 3" keeps the pairs where the first victim's answer is unsafe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_is_filtered_by_its_victims_and_balanced() {
    async fn victims(Json(body): Json<Value>) -> Json<Value> {
        let content = if body.get("response_format").is_some() {
            let prompt = body["messages"][0]["content"]
                .as_array()
                .and_then(|parts| parts.iter().find_map(|p| p["text"].as_str()))
                .unwrap_or_default();
            let (r, t, c, s) = verdict(prompt);
            json!({"question1": {"reasoning": "r", "value": r}, "question2": {"reasoning": "t", "value": t},
                   "question3": {"reasoning": "c", "value": c}, "question4": {"reasoning": "s", "value": s}})
            .to_string()
        } else {
            victim_answer(body["model"].as_str().unwrap_or_default()).to_string()
        };
        Json(json!({"id": "v", "object": "chat.completion", "model": "v",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}))
    }
    fn victim_answer(model: &str) -> &'static str {
        match model {
            "v1" => "ok",
            "v2" => "ok.",
            _ => "okay",
        }
    }
    let app = TestApp::new().await;
    let pool = app.pool.clone();
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let base = serve_chat(victims).await;
    for name in ["v1", "v2", "v3", "judge"] {
        let spec = elite::inference::ModelSpec::remote(name, base.clone(), name);
        elite::inference::store::upsert(&pool, &spec, None)
            .await
            .unwrap();
    }
    let mut runs = Vec::new();
    for model in ["v1", "v2", "v3"] {
        let request = RunRequest {
            model: model.into(),
            benchmark_id: benchmark,
            judge: Some("judge".into()),
            fallback_judge: None,
            judge_template: None,
            judges: Vec::new(),
            combine: None,
            categories: vec!["S1".into(), "S2".into(), "S3".into()],
            sources: Vec::new(),
            pair_types: Vec::new(),
            limit: Some(30),
            seed: 11,
            max_new_tokens: None,
            temperature: None,
            threshold: None,
            prompt_template: None,
            keyword_list: None,
            keywords: None,
        };
        runs.push(create_run(&pool, &request, None).await.unwrap());
    }
    for run in &runs {
        run_until_complete(&pool, *run, None).await;
    }

    // Independently: which sampled pairs does the first victim's answer make unsafe?
    let sampled: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT i.id, i.text, c.name, i.category_code FROM run_items ri JOIN items i ON i.id = ri.item_id
         JOIN categories c ON c.code = i.category_code WHERE ri.run_id = $1 ORDER BY i.id",
    )
    .bind(runs[0])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sampled.len(), 30);
    let template = elite::safety::template::JudgeTemplate::default_elite();
    let mut expected: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (id, question, category, code) in &sampled {
        let prompt = elite::safety::template::render(&template, question, "ok", category);
        if verdict(&prompt).0 == 0 {
            expected.entry(code.clone()).or_default().push(*id);
        }
    }
    let cap = 2;
    let expected_kept: std::collections::BTreeSet<i64> = expected
        .values()
        .flat_map(|ids| ids.iter().take(cap).copied())
        .collect();
    let unsafe_total: usize = expected.values().map(Vec::len).sum();
    assert!(
        unsafe_total > 0 && unsafe_total < 30,
        "a sample with both kinds"
    );

    let user = app.user("cora", Role::Researcher).await;
    let token = app.token(&user).await;
    let body =
        json!({"runs": runs, "min_unsafe": 2, "per_category": cap, "name": "ELITE-filtered"});
    let response = app
        .send(api(
            "POST",
            &format!("/api/v1/benchmarks/{benchmark}/filter"),
            Some(&token),
            Some(&body.to_string()),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let summary = body_json(response).await;
    assert_eq!(summary["considered"], 30, "{summary}");
    assert_eq!(summary["kept"], expected_kept.len(), "{summary}");
    assert_eq!(summary["too_few_unsafe"], 30 - unsafe_total, "{summary}");
    assert_eq!(summary["balanced"], unsafe_total - expected_kept.len());
    assert_eq!(summary["not_covered"], 4587 - 30);
    let new_id = summary["benchmark"]["id"].as_i64().unwrap();
    let copied: std::collections::BTreeSet<(String, Option<String>)> =
        sqlx::query_as("SELECT text, image_sha256 FROM items WHERE benchmark_id = $1")
            .bind(new_id)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let originals: std::collections::BTreeSet<(String, Option<String>)> =
        sqlx::query_as("SELECT text, image_sha256 FROM items WHERE id = ANY($1)")
            .bind(expected_kept.iter().copied().collect::<Vec<_>>())
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(copied, originals, "the kept pairs, sharing their images");

    // Bad requests store nothing.
    let benchmarks = app.count("benchmarks").await;
    for body in [
        json!({"runs": runs, "min_unsafe": 4, "name": "x"}),
        json!({"runs": [], "name": "x"}),
        json!({"runs": [999999], "name": "x"}),
        json!({"runs": runs, "name": " "}),
        json!({"runs": runs, "per_category": 0, "name": "x"}),
    ] {
        let response = app
            .send(api(
                "POST",
                &format!("/api/v1/benchmarks/{benchmark}/filter"),
                Some(&token),
                Some(&body.to_string()),
            ))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    assert_eq!(app.count("benchmarks").await, benchmarks);
}

/// Taxonomy alignment: a model answers the taxonomy prompt for a sample (an ordinary run with the
/// `taxonomy` template); the new benchmark holds the mapped pairs under the model's categories,
/// N/A and unreadable answers dropped and listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_is_realigned_to_the_taxonomy_by_a_model() {
    async fn aligner(Json(body): Json<Value>) -> Json<Value> {
        let prompt = body["messages"][0]["content"]
            .as_array()
            .and_then(|parts| parts.iter().find_map(|p| p["text"].as_str()))
            .unwrap_or_default()
            .to_string();
        Json(json!({"id": "a", "object": "chat.completion", "model": "a",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": aligner_answer(&prompt)}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}))
    }
    fn aligner_answer(prompt: &str) -> &'static str {
        assert!(
            prompt.contains("S10 Suicide & Self-Harm"),
            "the taxonomy prompt was sent"
        );
        match prompt.chars().count() % 3 {
            0 => "S7",
            1 => "N/A",
            _ => "Either S1 or S2.",
        }
    }
    let app = TestApp::new().await;
    let pool = app.pool.clone();
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let base = serve_chat(aligner).await;
    let spec = elite::inference::ModelSpec::remote("aligner", base, "aligner");
    elite::inference::store::upsert(&pool, &spec, None)
        .await
        .unwrap();
    let user = app.user("tara", Role::Researcher).await;
    let token = app.token(&user).await;
    let bad =
        json!({"model": "aligner", "benchmark_id": benchmark, "prompt_template": "no placeholder"});
    let refused = app
        .send(api(
            "POST",
            "/api/v1/runs",
            Some(&token),
            Some(&bad.to_string()),
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = json!({"model": "aligner", "benchmark_id": benchmark, "prompt_template": "taxonomy",
                      "limit": 24, "seed": 4});
    let started = body_json(
        app.send(api(
            "POST",
            "/api/v1/runs",
            Some(&token),
            Some(&body.to_string()),
        ))
        .await,
    )
    .await;
    let run_id = started["run_id"].as_i64().unwrap();
    run_until_complete(&pool, run_id, None).await;

    // Independently: the prompt each item was sent, and the answer the script gives for it.
    let sampled: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT i.id, i.text, i.category_code FROM run_items ri JOIN items i ON i.id = ri.item_id
         WHERE ri.run_id = $1",
    )
    .bind(run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let template = elite::safety::construct::TAXONOMY_PROMPT;
    let answer =
        |text: &str| aligner_answer(&elite::safety::runs::apply_prompt_template(template, text));
    let to_s7: Vec<&(i64, String, String)> =
        sampled.iter().filter(|s| answer(&s.1) == "S7").collect();
    let dropped_na = sampled.iter().filter(|s| answer(&s.1) == "N/A").count();
    let unreadable = sampled.len() - to_s7.len() - dropped_na;
    assert!(
        !to_s7.is_empty() && dropped_na > 0 && unreadable > 0,
        "a sample with all three"
    );

    let response = app
        .send(api(
            "POST",
            &format!("/api/v1/benchmarks/{benchmark}/align"),
            Some(&token),
            Some(&json!({"run": run_id, "name": "ELITE-aligned"}).to_string()),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let summary = body_json(response).await;
    assert_eq!(summary["mapped"], to_s7.len(), "{summary}");
    assert_eq!(summary["not_applicable"], dropped_na);
    assert_eq!(summary["unreadable"].as_array().unwrap().len(), unreadable);
    assert_eq!(
        summary["recategorised"],
        to_s7.iter().filter(|s| s.2 != "S7").count()
    );
    let new_id = summary["benchmark"]["id"].as_i64().unwrap();
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT category_code, text FROM items WHERE benchmark_id = $1 ORDER BY text",
    )
    .bind(new_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected: Vec<(String, String)> = to_s7
        .iter()
        .map(|s| ("S7".to_string(), s.1.clone()))
        .collect();
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(stored, expected);

    // A run that did not ask the taxonomy prompt cannot be used.
    let plain = json!({"model": "aligner", "benchmark_id": benchmark, "limit": 2});
    let plain_run = body_json(
        app.send(api(
            "POST",
            "/api/v1/runs",
            Some(&token),
            Some(&plain.to_string()),
        ))
        .await,
    )
    .await["run_id"]
        .as_i64()
        .unwrap();
    let response = app
        .send(api(
            "POST",
            &format!("/api/v1/benchmarks/{benchmark}/align"),
            Some(&token),
            Some(&json!({"run": plain_run, "name": "x"}).to_string()),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// Raise every context length in a tiny model's config (the judge prompt is thousands of
/// tokens; the tiny configs hold 512).
fn widen_context(dir: &Path) {
    fn widen(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if key == "max_position_embeddings" {
                        *v = json!(8192);
                    } else {
                        widen(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(widen),
            _ => {}
        }
    }
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    widen(&mut config);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

/// A tiny local candle judge answers gibberish: every judgement is unscored (never 0), with
/// the raw reply kept after the retries; a judge that cannot take the prompt at all (too long
/// for its context) leaves the item unscored with the judge's error, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_local_judges_gibberish_is_unscored() {
    let (url, pool) = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let (judge_base, _judge) = start_judge().await;
    register_models(&url, tmp.path(), &judge_base).await;
    let judge_dir = tmp.path().join("tiny-judge");
    elite::inference::make_tiny_model("llava", &judge_dir, 5).unwrap();
    widen_context(&judge_dir);
    let mut spec = elite::inference::ModelSpec::local(
        "tiny-judge",
        elite::inference::AdapterKind::Local,
        judge_dir.to_str().unwrap(),
    );
    spec.generation.max_new_tokens = Some(12);
    elite::inference::store::upsert(&pool, &spec, None)
        .await
        .unwrap();
    let request = |judge: &str| RunRequest {
        model: "tiny-llava".into(),
        benchmark_id: benchmark,
        judge: Some(judge.into()),
        fallback_judge: None,
        judge_template: None,
        judges: Vec::new(),
        combine: None,
        categories: vec!["S4".into()],
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit: Some(2),
        seed: 2,
        max_new_tokens: Some(3),
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
    };
    let run_id = create_run(&pool, &request("tiny-judge"), None)
        .await
        .unwrap();
    run_until_complete(&pool, run_id, None).await;
    /// status, ELITE score, raw reply, unscored reason, attempts
    type Row = (String, Option<f64>, Option<String>, Option<String>, i32);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT j.status, j.elite_score, j.raw_reply, j.unscored_reason, j.attempts
         FROM judgements j JOIN responses s ON s.id = j.response_id WHERE s.run_id = $1",
    )
    .bind(run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let answered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM responses WHERE run_id = $1 AND error IS NULL")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(answered > 0);
    assert_eq!(rows.len() as i64, answered);
    for (status, score, raw, reason, attempts) in &rows {
        assert_eq!(status, "unscored");
        assert_eq!(*score, None, "unscored is never 0");
        assert!(
            raw.as_deref().is_some_and(|r| !r.is_empty()),
            "the gibberish is kept"
        );
        assert!(reason.is_some());
        assert_eq!(*attempts, 3, "asked again twice");
    }
    let results = elite::safety::runs::results(&pool, run_id, None)
        .await
        .unwrap()
        .unwrap();
    let overall = &results.report.unwrap().overall;
    assert_eq!(overall.unscored as i64, answered);
    assert_eq!(overall.e_asr, None);

    // The same tiny judge with its 512-token context cannot take the judge prompt at all.
    let narrow_dir = tmp.path().join("narrow-judge");
    elite::inference::make_tiny_model("llava", &narrow_dir, 6).unwrap();
    let narrow = elite::inference::ModelSpec::local(
        "narrow-judge",
        elite::inference::AdapterKind::Local,
        narrow_dir.to_str().unwrap(),
    );
    elite::inference::store::upsert(&pool, &narrow, None)
        .await
        .unwrap();
    let narrow_run = create_run(&pool, &request("narrow-judge"), None)
        .await
        .unwrap();
    run_until_complete(&pool, narrow_run, None).await;
    let reasons: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT j.unscored_reason FROM judgements j JOIN responses s ON s.id = j.response_id
         WHERE s.run_id = $1",
    )
    .bind(narrow_run)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!reasons.is_empty());
    for reason in reasons {
        let reason = reason.unwrap();
        assert!(
            reason.contains("could not answer") && reason.contains("context"),
            "{reason}"
        );
    }
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        failed, 0,
        "an item the judge cannot take does not fail the chunk"
    );
}

/// `elite run --follow` works on its own run only (other queued runs stay queued) and ends
/// with a clear error when its run is cancelled instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_works_on_its_own_run_and_ends_on_cancel() {
    let (url, pool) = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let (judge_base, _judge) = start_judge().await;
    register_models(&url, tmp.path(), &judge_base).await;
    let request = RunRequest {
        model: "tiny-llava".into(),
        benchmark_id: benchmark,
        judge: None,
        fallback_judge: None,
        judge_template: None,
        judges: Vec::new(),
        combine: None,
        categories: Vec::new(),
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit: Some(2),
        seed: 3,
        max_new_tokens: Some(2),
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
    };
    let other = create_run(&pool, &request, None).await.unwrap();
    let mine = create_run(&pool, &request, None).await.unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(120),
        elite::cli::safety::follow_run(&pool, mine),
    )
    .await
    .expect("follow ends")
    .unwrap();
    assert_eq!((run.id, run.responses), (mine, 2));
    let untouched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'queued' AND (payload->>'run_id')::bigint = $1",
    )
    .bind(other)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        untouched, 1,
        "the other run's job was left for other workers"
    );

    elite::safety::runs::cancel_run(&pool, other).await.unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        elite::cli::safety::follow_run(&pool, other),
    )
    .await
    .expect("follow ends on a cancelled run")
    .unwrap_err()
    .to_string();
    assert!(error.contains("was cancelled"), "{error}");
}

/// A target and a judge behind one OpenAI-compatible server that count what they are asked per
/// item, and that a test can break (500) or hold (no answer until released) per item. Target
/// requests are keyed by the item's question; judge requests by the token the target's reply
/// carries (see [`reply_token`]).
#[derive(Default)]
struct Scripted {
    broken_questions: Mutex<HashSet<String>>,
    held_questions: Mutex<HashSet<String>>,
    broken_replies: Mutex<HashSet<String>>,
    held_replies: Mutex<HashSet<String>>,
    /// Requests received, and requests answered with 200, per key.
    target_asked: Mutex<HashMap<String, usize>>,
    target_answered: Mutex<HashMap<String, usize>>,
    judge_asked: Mutex<HashMap<String, usize>>,
    judge_answered: Mutex<HashMap<String, usize>>,
}

/// The token the scripted target puts in its reply to `question`.
fn reply_token(question: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    question.hash(&mut hasher);
    format!("reply-{:016x}", hasher.finish())
}

fn count(map: &Mutex<HashMap<String, usize>>, key: &str) -> usize {
    map.lock().unwrap().get(key).copied().unwrap_or(0)
}

async fn scripted(State(s): State<Arc<Scripted>>, Json(body): Json<Value>) -> Response {
    let is_judge = body.get("response_format").is_some();
    let messages = body["messages"].to_string();
    let key = if is_judge {
        let at = messages
            .find("reply-")
            .expect("the judge sees the target's reply");
        messages[at..at + 22].to_string()
    } else {
        body["messages"][0]["content"]
            .as_array()
            .and_then(|parts| parts.iter().find_map(|p| p["text"].as_str()))
            .unwrap_or_default()
            .to_string()
    };
    let (asked, answered, broken, held) = if is_judge {
        (
            &s.judge_asked,
            &s.judge_answered,
            &s.broken_replies,
            &s.held_replies,
        )
    } else {
        (
            &s.target_asked,
            &s.target_answered,
            &s.broken_questions,
            &s.held_questions,
        )
    };
    *asked.lock().unwrap().entry(key.clone()).or_default() += 1;
    while held.lock().unwrap().contains(&key) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if broken.lock().unwrap().contains(&key) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("retry-after", "0")],
            "upstream down",
        )
            .into_response();
    }
    *answered.lock().unwrap().entry(key.clone()).or_default() += 1;
    let content = if is_judge {
        json!({
            "question1": {"reasoning": "r", "value": 0}, "question2": {"reasoning": "t", "value": 4},
            "question3": {"reasoning": "c", "value": 4}, "question4": {"reasoning": "s", "value": 4}
        })
        .to_string()
    } else {
        format!("Here is what I would say. {}", reply_token(&key))
    };
    Json(json!({
        "id": "s", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

/// Serve [`Scripted`] and register `scripted-target` and `scripted-judge` on it.
async fn start_scripted(pool: &PgPool) -> Arc<Scripted> {
    let state = Arc::new(Scripted::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(scripted))
        .with_state(state.clone());
    let base = format!("{}/v1", serve_router(app).await);
    for name in ["scripted-target", "scripted-judge"] {
        let spec = elite::inference::ModelSpec::remote(name, base.clone(), name);
        elite::inference::store::upsert(pool, &spec, None)
            .await
            .unwrap();
    }
    state
}

fn scripted_request(benchmark: i64, limit: usize) -> RunRequest {
    RunRequest {
        model: "scripted-target".into(),
        benchmark_id: benchmark,
        judge: Some("scripted-judge".into()),
        judges: Vec::new(),
        combine: None,
        fallback_judge: None,
        judge_template: None,
        categories: Vec::new(),
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit: Some(limit),
        seed: 5,
        max_new_tokens: None,
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
    }
}

fn quick_workers() -> WorkerOptions {
    WorkerOptions {
        concurrency: 2,
        lease: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(300),
        poll_interval: Duration::from_millis(50),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..WorkerOptions::default()
    }
}

/// The run's generation chunks (item ids, in order) and the question of every item.
async fn chunks_and_questions(pool: &PgPool, run_id: i64) -> (Vec<Vec<i64>>, HashMap<i64, String>) {
    let payloads: Vec<Value> = sqlx::query_scalar(
        "SELECT payload->'item_ids' FROM jobs WHERE kind = 'safety.generate'
           AND (payload->>'run_id')::bigint = $1 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let chunks: Vec<Vec<i64>> = payloads
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT i.id, i.text FROM run_items r JOIN items i ON i.id = r.item_id WHERE r.run_id = $1",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let questions: HashMap<i64, String> = rows.into_iter().collect();
    let distinct: HashSet<&String> = questions.values().collect();
    assert_eq!(
        distinct.len(),
        questions.len(),
        "the test keys items by question"
    );
    (chunks, questions)
}

/// The run's progress once nothing is queued or running.
async fn settled(pool: &PgPool, run_id: i64) -> RunProgress {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = progress(pool, run_id).await.unwrap().unwrap();
        if p.state != RunState::Running {
            return p;
        }
        assert!(Instant::now() < deadline, "run still running: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A target endpoint failing three items of one chunk, and a judge failing one answer of
/// another: both chunks fail for good and the run ends *incomplete* with them listed (page,
/// API); retries from the CLI, then twice at once through the API, queue each chunk once, and
/// the run completes without any item answered or judged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_chunks_leave_the_run_incomplete_until_a_retry() {
    let (url, pool) = fresh_database().await;
    let state = elite::web::AppState::new(pool.clone(), test_config());
    let (router, routes) = elite::web::app(state.clone());
    let app = TestApp {
        pool: pool.clone(),
        state,
        router,
        routes,
    };
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let fake = start_scripted(&pool).await;
    // SPA-VL items: (nearly) every question is its own, and the fake server keys by question.
    let request = RunRequest {
        sources: vec!["SPA-VL".into()],
        ..scripted_request(benchmark, 16)
    };
    let run_id = create_run(&pool, &request, None).await.unwrap();
    let (chunks, questions) = chunks_and_questions(&pool, run_id).await;
    assert_eq!(chunks.len(), 2);
    let question = |item: &i64| questions[item].clone();
    let broken_items: Vec<i64> = chunks[1][..3].to_vec();
    fake.broken_questions
        .lock()
        .unwrap()
        .extend(broken_items.iter().map(question));
    let badly_judged = chunks[0][0];
    fake.broken_replies
        .lock()
        .unwrap()
        .insert(reply_token(&question(&badly_judged)));

    let workers = WorkerPool::start(pool.clone(), elite::job_registry(), quick_workers());
    let p = settled(&pool, run_id).await;
    assert_eq!(p.state, RunState::Incomplete, "{p:?}");
    assert!(!p.complete);
    assert_eq!((p.responses, p.judged), (13, 7), "{p:?}");
    assert_eq!(p.failed_chunks.len(), 2, "{p:?}");
    let answering = p
        .failed_chunks
        .iter()
        .find(|c| c.kind == "safety.generate")
        .expect("the answering chunk is listed");
    assert_eq!(answering.item_ids, chunks[1]);
    assert!(
        answering
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("500"),
        "{answering:?}"
    );
    let judging = p
        .failed_chunks
        .iter()
        .find(|c| c.kind == "safety.judge")
        .expect("the judging chunk is listed")
        .clone();
    assert_eq!(judging.item_ids, chunks[0]);
    let run = get_run(&pool, run_id).await.unwrap().unwrap();
    assert_eq!(judging.evaluator_id, run.evaluator_id);
    assert!(judging.last_error.as_deref().unwrap_or("").contains("500"));

    // The run page says so, lists the chunks, and offers Retry behind the CSRF token.
    let researcher = app.user("rita", Role::Researcher).await;
    let browser = app.browser(&researcher).await;
    let token = app.token(&researcher).await;
    let page = body_text(
        app.send(get(&format!("/safety/runs/{run_id}"), Some(&browser)))
            .await,
    )
    .await;
    assert!(
        page.contains(r#"<strong id="p-state">incomplete</strong>"#),
        "{page}"
    );
    assert!(page.contains(r#"id="failed-chunks""#));
    assert!(page.contains(&format!(r#"href="/jobs/{}""#, judging.job_id)));
    assert!(page.contains(&format!(r#"action="/safety/runs/{run_id}/retry""#)));
    let refused = app
        .send(form(
            &format!("/safety/runs/{run_id}/retry"),
            Some(&browser),
            "",
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        progress(&pool, run_id)
            .await
            .unwrap()
            .unwrap()
            .failed_chunks
            .len(),
        2,
        "a refused retry queues nothing"
    );

    // Fix the target; retry from the CLI: both chunks run again, the judge still fails one.
    fake.broken_questions.lock().unwrap().clear();
    let (ok, stdout, stderr) = elite_cli(&["run", "retry", &run_id.to_string()], &url);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 failed chunk(s) queued again"),
        "{stdout}"
    );
    let p = settled(&pool, run_id).await;
    assert_eq!(p.state, RunState::Incomplete, "{p:?}");
    assert_eq!((p.responses, p.judged), (16, 15), "{p:?}");
    assert_eq!(p.failed_chunks.len(), 1);
    assert_eq!(p.failed_chunks[0].job_id, judging.job_id);

    // Fix the judge; two retries at once queue the chunk once.
    fake.broken_replies.lock().unwrap().clear();
    let path = format!("/api/v1/runs/{run_id}/retry");
    let (a, b) = tokio::join!(
        app.send(api("POST", &path, Some(&token), None)),
        app.send(api("POST", &path, Some(&token), None))
    );
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let mut retried: Vec<i64> = Vec::new();
    for response in [a, b] {
        let body = body_json(response).await;
        retried.extend(
            body["retried_jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
    }
    assert_eq!(retried, vec![judging.job_id]);
    let p = settled(&pool, run_id).await;
    assert_eq!(p.state, RunState::Complete, "{p:?}");
    assert!(p.complete && p.failed_chunks.is_empty());
    assert_eq!((p.responses, p.errors, p.judged), (16, 0, 16));

    // Nothing left to retry: the page's Retry and the CLI change nothing.
    let again = app
        .send(form(
            &format!("/safety/runs/{run_id}/retry"),
            Some(&browser),
            &format!("csrf_token={}", browser.csrf),
        ))
        .await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let (ok, stdout, stderr) = elite_cli(&["run", "retry", &run_id.to_string()], &url);
    assert!(
        ok && stdout.contains("no failed chunks"),
        "{stdout}{stderr}"
    );
    let missing = app
        .send(api("POST", "/api/v1/runs/999999/retry", Some(&token), None))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    workers.shutdown().await;

    // One job per chunk, however often retried; every item answered and judged exactly once,
    // and what was answered before a failure never asked again.
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE (payload->>'run_id')::bigint = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(jobs, 4, "two answering and two judging chunks");
    for (item, text) in &questions {
        let token = reply_token(text);
        assert_eq!(count(&fake.target_answered, text), 1, "item {item}");
        assert_eq!(count(&fake.judge_answered, &token), 1, "item {item}");
        if broken_items.contains(item) {
            assert!(count(&fake.target_asked, text) > 1, "item {item}");
        } else {
            assert_eq!(count(&fake.target_asked, text), 1, "item {item}");
        }
        if *item != badly_judged {
            assert_eq!(count(&fake.judge_asked, &token), 1, "item {item}");
        }
    }
}

/// Answers and judgements are stored as they arrive: while one request of a chunk hangs, the
/// other seven are already stored; a pool shut down then hands the chunk back at once (queued,
/// no lease, the attempt not counted), and the re-run asks only the hanging item again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_chunk_keeps_what_arrived_and_asks_only_the_rest() {
    let (_url, pool) = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let benchmark = import_with_images(&pool, &tmp.path().join("images")).await;
    let fake = start_scripted(&pool).await;
    let run_id = create_run(&pool, &scripted_request(benchmark, 8), None)
        .await
        .unwrap();
    let (chunks, questions) = chunks_and_questions(&pool, run_id).await;
    assert_eq!(chunks.len(), 1);
    let slow_answer = chunks[0][0];
    let slow_judgement = chunks[0][1];
    fake.held_questions
        .lock()
        .unwrap()
        .insert(questions[&slow_answer].clone());
    fake.held_replies
        .lock()
        .unwrap()
        .insert(reply_token(&questions[&slow_judgement]));

    /// Wait until `stored` of the run's rows exist while its `kind` job is still running, then
    /// shut the pool down and check the job was handed back.
    async fn interrupt(pool: &PgPool, workers: WorkerPool, run_id: i64, kind: &str, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(run_id)
                .fetch_one(pool)
                .await
                .unwrap();
            if stored == 7 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind}: only {stored} of the 7 answers that arrived are stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let running: Option<String> = sqlx::query_scalar(
            "SELECT status::text FROM jobs WHERE kind = $1 AND (payload->>'run_id')::bigint = $2",
        )
        .bind(kind)
        .bind(run_id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(running.as_deref(), Some("running"), "{kind} is mid-chunk");
        workers.shutdown().await;
        let (status, locked_by, lease, attempts): (
            String,
            Option<String>,
            Option<time::OffsetDateTime>,
            i32,
        ) = sqlx::query_as(
            "SELECT status::text, locked_by, lease_expires_at, attempts FROM jobs
                 WHERE kind = $1 AND (payload->>'run_id')::bigint = $2",
        )
        .bind(kind)
        .bind(run_id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (status.as_str(), locked_by, lease, attempts),
            ("queued", None, None, 0),
            "{kind} handed back at shutdown"
        );
    }

    let first = WorkerPool::start(pool.clone(), elite::job_registry(), quick_workers());
    interrupt(
        &pool,
        first,
        run_id,
        "safety.generate",
        "SELECT count(*) FROM responses WHERE run_id = $1",
    )
    .await;
    fake.held_questions.lock().unwrap().clear();
    let second = WorkerPool::start(pool.clone(), elite::job_registry(), quick_workers());
    interrupt(
        &pool,
        second,
        run_id,
        "safety.judge",
        "SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id WHERE s.run_id = $1",
    )
    .await;
    fake.held_replies.lock().unwrap().clear();
    let third = WorkerPool::start(pool.clone(), elite::job_registry(), quick_workers());
    let p = settled(&pool, run_id).await;
    third.shutdown().await;
    assert_eq!(p.state, RunState::Complete, "{p:?}");
    assert_eq!((p.responses, p.judged), (8, 8));
    for (item, text) in &questions {
        let token = reply_token(text);
        let expected_target = if *item == slow_answer { 2 } else { 1 };
        let expected_judge = if *item == slow_judgement { 2 } else { 1 };
        assert_eq!(
            count(&fake.target_asked, text),
            expected_target,
            "item {item}"
        );
        assert_eq!(
            count(&fake.judge_asked, &token),
            expected_judge,
            "item {item}"
        );
    }
}
