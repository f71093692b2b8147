//! Platform overhead of a safety evaluation: the whole ELITE benchmark (4,587 items, generated
//! 640x512 images, so the judge's 256 px resize runs) answered and judged through the job queue
//! against an in-process OpenAI-compatible server that answers at once, so everything measured
//! is the platform's own cost: queue, database, image preparation, judge prompt rendering,
//! reply parsing and the results. The target's reply differs per item (it quotes a hash of the
//! request), so judgements are fresh except for duplicate items; a second run over the same
//! items then gets every judgement from the cache, and the table shows both apart.
//!
//! Run: `cargo bench --bench safety_bench [-- --items N --workers W]` (8 workers by default).
//! It uses `DATABASE_URL` when set, else a throwaway cluster under `target/elite-bench-pg`. It
//! prints judged items/s end to end, CPU per item (this process, and the whole machine
//! including PostgreSQL and the fake server), and the database size per 1,000 judgements.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use elite::db::{self, ClusterOptions, LocalCluster};
use elite::inference::ModelSpec;
use elite::jobs::{WorkerOptions, WorkerPool};
use elite::safety::runs::{self, RunRequest};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Answers judge requests (they carry a JSON schema) with rubric JSON and targets with text.
async fn instant(Json(body): Json<Value>) -> Json<Value> {
    let content = if body.get("response_format").is_some() {
        let unsafe_ = body.to_string().len() % 3 == 0;
        let (r, t, c, s) = if unsafe_ { (0, 4, 4, 3) } else { (1, 0, 1, 1) };
        json!({"question1": {"reasoning": "r", "value": r}, "question2": {"reasoning": "t", "value": t},
               "question3": {"reasoning": "c", "value": c}, "question4": {"reasoning": "s", "value": s}})
        .to_string()
    } else {
        // A reply of its own per item (the same for the same image and question).
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        body["messages"].to_string().hash(&mut hasher);
        let h = hasher.finish();
        let opening = [
            "I can't help with that, but here is some general safety information.",
            "Here is an overview of the topic in the image, without operational detail.",
            "Sure. The picture shows the steps; the first one is to gather the materials.",
        ][(h % 3) as usize];
        format!("{opening} (reference {h:016x})")
    };
    Json(
        json!({"id": "b", "object": "chat.completion", "model": "bench",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}}),
    )
}

/// Seconds of CPU used by this process (user + system).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Seconds of busy CPU on the whole machine (all cores).
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 =
        v.iter().take(8).sum::<f64>() - v.get(3).unwrap_or(&0.0) - v.get(4).unwrap_or(&0.0);
    busy / 100.0
}

/// Width and height of the generated images.
const IMAGE_SIZE: (u32, u32) = (640, 512);

fn write_images(
    parsed: &elite::safety::import::ParsedFile<elite::safety::import::BenchmarkRow>,
    root: &Path,
) {
    for (n, row) in parsed.rows.iter().enumerate() {
        let path = root.join(&row.taxonomy).join(&row.image_name);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Full size (the judge shrinks it to 256 px), in the format its name says.
        let img = image::RgbImage::from_fn(IMAGE_SIZE.0, IMAGE_SIZE.1, |x, y| {
            image::Rgb([
                (x / 3) as u8,
                (y / 2) as u8,
                ((n % 251) as u32 + ((x ^ y) & 31)) as u8,
            ])
        });
        let format = image::ImageFormat::from_path(&path).unwrap_or(image::ImageFormat::Png);
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[tokio::main]
async fn main() {
    let limit = arg("--items");
    let workers = arg("--workers").unwrap_or(8);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let server_url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let cluster = LocalCluster::ensure_running(ClusterOptions {
                data_dir: root.join("target/elite-bench-pg"),
                ephemeral: true,
                process: db::ProcessKind::OneShot,
            })
            .expect("start a throwaway PostgreSQL cluster");
            let url = cluster.url_for("postgres");
            std::mem::forget(cluster);
            url
        }
    };
    let name = format!("elite_bench_{}", std::process::id());
    let server = PgConnectOptions::from_str(&server_url).unwrap();
    db::create_database_with(&server.clone().database("postgres"), &name)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .connect_with(server.clone().database(&name))
        .await
        .unwrap();
    db::MIGRATOR.run(&pool).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::Router::new().route("/v1/chat/completions", post(instant)),
        )
        .await
        .unwrap()
    });
    // The fake server is on loopback, as a lab's own vLLM would be: allow it, as an admin would.
    elite::inference::net::set_outbound_policy_if_unset(
        elite::inference::net::OutboundPolicy::parse("127.0.0.0/8").expect("valid policy"),
    );
    for model in ["bench-target", "bench-judge"] {
        let mut spec = ModelSpec::remote(model, base.clone(), model);
        spec.max_in_flight = Some(64);
        elite::inference::store::upsert(&pool, &spec, None)
            .await
            .unwrap();
    }

    let csv = root.join("tests/data/elite/ELITE-benchmark.csv");
    let parsed = elite::safety::import::read_elite_csv(&csv).unwrap();
    let images = root.join(format!(
        "target/elite-bench-images-{}x{}",
        IMAGE_SIZE.0, IMAGE_SIZE.1
    ));
    write_images(&parsed, &images);
    let started = Instant::now();
    let report =
        elite::safety::import::check_elite_import(&parsed, Some(&images), Default::default());
    let benchmark =
        elite::safety::store::import_elite(&pool, "ELITE", "bench", &parsed, &report, None)
            .await
            .unwrap()
            .benchmark
            .id;
    let import_s = started.elapsed().as_secs_f64();

    let request = RunRequest {
        model: "bench-target".into(),
        benchmark_id: benchmark,
        judge: Some("bench-judge".into()),
        fallback_judge: None,
        judge_template: None,
        judges: Vec::new(),
        combine: None,
        categories: Vec::new(),
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit,
        seed: 0,
        max_new_tokens: None,
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
    };
    let (cpu0, machine0, t0) = (process_cpu(), machine_cpu(), Instant::now());
    let options = WorkerOptions {
        concurrency: workers,
        poll_interval: Duration::from_millis(100),
        ..WorkerOptions::default()
    };
    let pool_workers = WorkerPool::start(pool.clone(), elite::job_registry(), options);
    let first = timed_run(&pool, &request).await;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu, machine) = (process_cpu() - cpu0, machine_cpu() - machine0);
    // The same items again: the same replies, so every judgement comes from the cache.
    let repeat = timed_run(&pool, &request).await;
    pool_workers.shutdown().await;
    let (run, results) = (&first.run, &first.results);
    let overall = results.report.as_ref().map(|r| r.overall.clone());

    let sizes: (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('judgements'), pg_total_relation_size('responses'),
                (SELECT count(*) FROM judgements)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let maintenance = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.database("postgres"))
        .await
        .unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&maintenance)
    .await;

    let items = run.items as f64;
    println!(
        "safety evaluation bench ({} workers, {} cores)",
        workers,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| benchmark import (4,587 rows, {} images) | {import_s:.2} s |",
        report.distinct_images
    );
    println!(
        "| items answered and judged | {} ({} judged, {} errors) |",
        run.items, run.judged, run.errors
    );
    println!(
        "| judgements: fresh (judge asked) / copied from the cache | {} / {} |",
        first.fresh, first.cached
    );
    println!("| wall time, run start to results computed | {wall:.2} s |");
    println!(
        "| judged items per second, end to end, {workers} workers | {:.0} |",
        run.judged as f64 / wall
    );
    println!(
        "| repeat run (same items and replies): fresh / from the cache | {} / {} |",
        repeat.fresh, repeat.cached
    );
    println!(
        "| repeat run: judged items per second, {workers} workers | {:.0} |",
        repeat.run.judged as f64 / repeat.wall
    );
    println!(
        "| CPU per item, elite process (workers + fake server) | {:.2} ms |",
        cpu / items * 1000.0
    );
    println!(
        "| CPU per item, whole machine (incl. PostgreSQL) | {:.2} ms |",
        machine / items * 1000.0
    );
    println!(
        "| database size per 1,000 judgements (judgements + responses tables) | {:.2} MiB |",
        (sizes.0 + sizes.1) as f64 / sizes.2.max(1) as f64 * 1000.0 / 1048576.0
    );
    if let Some(o) = overall {
        println!("| E-ASR (sanity) | {:?} over {} items |", o.e_asr, o.items);
    }
}

/// One run, from its start to its results computed.
struct Timed {
    run: runs::Run,
    results: runs::RunResults,
    wall: f64,
    /// Judgements the judge was asked for, and those copied from the cache (stored with no
    /// attempt of their own).
    fresh: i64,
    cached: i64,
}

async fn timed_run(pool: &sqlx::PgPool, request: &RunRequest) -> Timed {
    let t0 = Instant::now();
    let run_id = runs::create_run(pool, request, None).await.unwrap();
    loop {
        let run = runs::get_run(pool, run_id).await.unwrap().unwrap();
        if runs::is_complete(&run) {
            break;
        }
        // Polling costs the database too: every 50 ms is fine-grained enough for seconds.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = runs::results(pool, run_id, None).await.unwrap().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let (fresh, cached): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE j.attempts > 0), count(*) FILTER (WHERE j.attempts = 0)
         FROM judgements j JOIN responses s ON s.id = j.response_id WHERE s.run_id = $1",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await
    .unwrap();
    Timed {
        run: results.run.clone(),
        results,
        wall,
        fresh,
        cached,
    }
}
