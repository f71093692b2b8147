//! A safety run end to end: the real ELITE CSV (with generated images), a tiny candle target,
//! a judge behind an OpenAI-compatible server scripted to answer rubric JSON (after a garbage
//! reply and a 429), results checked against values computed independently here; and a run
//! whose worker is killed half-way finishes with every item answered and judged exactly once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use elite::jobs::{WorkerOptions, WorkerPool};
use elite::safety::runs::{RunRequest, create_run, get_run, is_complete};
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
/// refused; the first call answers garbage and the second 429.
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(judge))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, state)
}

fn elite_cli(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elite"))
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
        judge.calls.load(Ordering::SeqCst) >= 8,
        "garbage reply retried and 429 retried"
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
        categories: vec!["S1".into(), "S8".into()],
        limit: Some(24),
        seed: 7,
        max_new_tokens: Some(3),
        temperature: None,
        threshold: None,
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
    let first = WorkerPool::start(pool.clone(), elite::job_registry(), options.clone());
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
