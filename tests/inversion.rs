//! The inversion area through its public interfaces: a set started from the API trains its
//! teacher, runs one job per batch and stores every batch once with its images; the page
//! shows the images per class, the loss curve and, after one call, the PP&PR scores against
//! the real digits (also stored as generative-metrics results); the data-free repair runs as
//! compression experiments beside real-data fine-tuning; cancelling stops a running batch;
//! bad requests are refused before anything is queued; `elite invert` writes a set to disk.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use elite::accounts::Role;
use elite::jobs::{JobStatus, WorkerOptions, WorkerPool};
use serde_json::Value;

fn workers(app: &TestApp) -> WorkerPool {
    WorkerPool::start(
        app.pool.clone(),
        elite::job_registry(),
        WorkerOptions {
            concurrency: 2,
            poll_interval: Duration::from_millis(50),
            ..WorkerOptions::default()
        },
    )
}

async fn view(app: &TestApp, token: &str, id: i64) -> Value {
    body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/inversions/{id}"),
            Some(token),
            None,
        ))
        .await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_is_synthesised_scored_and_used_for_a_data_free_repair() {
    let app = TestApp::new().await;
    let user = app.user("ada", Role::Researcher).await;
    let token = app.token(&user).await;
    let request = r#"{"name": "ni <b>digits</b>", "method": "natural", "teacher": "trained:1",
        "teacher_width": 0.125, "batches": 2, "batch_size": 10, "iterations": 4,
        "latent_dim": 32, "seed": 3}"#;
    let response = app
        .send(api(
            "POST",
            "/api/v1/inversions",
            Some(&token),
            Some(request),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let started = body_json(response).await;
    let id = started["inversion_id"].as_i64().unwrap();
    let pool = workers(&app);
    let teacher_job = wait_job(&app, started["job_id"].as_i64().unwrap()).await;
    assert_eq!(teacher_job.status, JobStatus::Succeeded, "{teacher_job:?}");
    let batch_jobs: Vec<i64> = teacher_job.result.unwrap()["batch_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(batch_jobs.len(), 2);
    for &job in &batch_jobs {
        let done = wait_job(&app, job).await;
        assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
        assert_eq!(done.progress_done, 4, "iterations reported");
        assert!(
            done.progress_message
                .as_deref()
                .unwrap_or("")
                .contains("CE"),
            "loss terms reported: {done:?}"
        );
    }
    assert_eq!(app.count("inversion_batches").await, 2);
    assert_eq!(app.count("inversion_images").await, 20);

    let shown = view(&app, &token, id).await;
    assert_eq!(shown["inversion"]["batches"], 2);
    assert_eq!(shown["inversion"]["images"], 20);
    assert_eq!(shown["inversion"]["method"], "natural");
    let accuracy = shown["inversion"]["teacher_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    // Labels: ten classes in turn per batch of ten (the class count is the teacher's).
    let labels: Vec<i32> = sqlx::query_scalar(
        "SELECT label FROM inversion_images WHERE inversion_id = $1 ORDER BY idx",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(labels, (0..20).map(|i| i % 10).collect::<Vec<i32>>());
    // Raw tensors are stored beside the PNGs: 3 x 32 x 32 f32 each.
    let lengths: Vec<i32> =
        sqlx::query_scalar("SELECT length(pixels) FROM inversion_images WHERE inversion_id = $1")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(lengths.iter().all(|&l| l == 3 * 32 * 32 * 4));

    // A batch job queued again finds its batch stored: nothing doubles.
    let again = elite::jobs::enqueue(
        &app.pool,
        elite::jobs::NewJob::new(
            "inversion.batch",
            serde_json::json!({"inversion_id": id, "batch": 0}),
        ),
    )
    .await
    .unwrap();
    let job = wait_job(&app, again).await;
    assert_eq!(job.result.unwrap()["reused"], true);
    assert_eq!(app.count("inversion_images").await, 20);

    // The page: escaped name, the grid (one image per class per batch), the loss curve.
    let browser = app.browser(&user).await;
    let page = body_text(
        app.send(get(&format!("/inversion/sets/{id}"), Some(&browser)))
            .await,
    )
    .await;
    assert!(!page.contains("<b>digits</b>"), "the name is escaped");
    assert_eq!(
        page.matches(&format!("/inversion/sets/{id}/images/"))
            .count(),
        20
    );
    assert!(page.contains("id=\"loss-curve\""));
    let png = app
        .send(get(
            &format!("/inversion/sets/{id}/images/0"),
            Some(&browser),
        ))
        .await;
    assert_eq!(png.status(), StatusCode::OK);
    assert_eq!(png.headers()["content-type"], "image/png");
    let bytes = axum::body::to_bytes(png.into_body(), usize::MAX)
        .await
        .unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (32, 32));

    // PP&PR in one call, stored as a generative-metrics result too.
    let response = app
        .send(api(
            "POST",
            &format!("/api/v1/inversions/{id}/score"),
            Some(&token),
            Some(r#"{"encoder": "pixels"}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job = body_json(response).await["job_ids"][0].as_i64().unwrap();
    let done = wait_job(&app, job).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let shown = view(&app, &token, id).await;
    let score = &shown["scores"][0];
    assert_eq!(score["encoder"], "pixels");
    assert_eq!(score["result"]["n_fake"], 20);
    assert_eq!(
        score["result"]["n_real"], 1438,
        "the teacher's training digits"
    );
    assert_eq!(score["result"]["dim"], 3 * 64);
    for key in [
        "p_precision",
        "p_recall",
        "precision",
        "recall",
        "density",
        "coverage",
    ] {
        assert!(score["result"][key].as_f64().unwrap() >= 0.0, "{key}");
    }
    assert_eq!(app.count("ppr_results").await, 1);
    let index = body_text(app.send(get("/inversion", Some(&browser))).await).await;
    assert!(index.contains("id=\"fidelity-vs-diversity\""));

    // Data-free repair: two compression experiments on the stored teacher.
    let response = app
        .send(api(
            "POST",
            &format!("/api/v1/inversions/{id}/repair"),
            Some(&token),
            Some(r#"{"method": "l1", "ratio": 0.5, "epochs": 1}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let jobs: Vec<i64> = body_json(response).await["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for &job in &jobs {
        let done = wait_job(&app, job).await;
        assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    }
    pool.shutdown().await;
    let shown = view(&app, &token, id).await;
    let repairs = shown["repairs"].as_array().unwrap();
    let on: Vec<&str> = repairs
        .iter()
        .map(|r| r["fine_tuned_on"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["images", "real"]);
    for r in repairs {
        // The pruned network is the stored teacher's: its accuracy before pruning is the
        // set's teacher accuracy on the same real test split.
        assert!((r["accuracy_before"].as_f64().unwrap() - accuracy).abs() < 1e-9);
        assert!(r["accuracy_fine_tuned"].is_number());
    }
    let datasets: Vec<String> =
        sqlx::query_scalar("SELECT dataset FROM compression_experiments ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        datasets,
        [
            format!("digits ← NaturalInversion #{id} images"),
            "digits".into()
        ]
    );
    let compression = body_text(app.send(get("/compression", Some(&browser))).await).await;
    assert!(compression.contains(&format!("NaturalInversion #{id} images")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_batch() {
    let app = TestApp::new().await;
    let user = app.user("eve", Role::Researcher).await;
    let token = app.token(&user).await;
    let request = r#"{"method": "deep", "teacher": "trained:1", "teacher_width": 0.125,
        "batches": 3, "batch_size": 8, "iterations": 10000}"#;
    let response = app
        .send(api(
            "POST",
            "/api/v1/inversions",
            Some(&token),
            Some(request),
        ))
        .await;
    let id = body_json(response).await["inversion_id"].as_i64().unwrap();
    let pool = workers(&app);
    // Wait until a batch job reports iterations.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let shown = view(&app, &token, id).await;
        let running = shown["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "inversion.batch" && j["done"].as_i64().unwrap_or(0) > 0);
        if running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no batch started: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = app
        .send(api(
            "POST",
            &format!("/api/v1/inversions/{id}/cancel"),
            Some(&token),
            None,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body_json(response).await["cancelled"].as_u64().unwrap() >= 1);
    // The workers become free again: the shutdown returns although 10,000 iterations of
    // three batches were asked for.
    tokio::time::timeout(Duration::from_secs(120), pool.shutdown())
        .await
        .expect("the cancelled computation stops");
    let shown = view(&app, &token, id).await;
    assert!(
        shown["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "inversion.batch")
            .all(|j| j["status"] == "cancelled"),
        "{shown}"
    );
    assert_eq!(app.count("inversion_batches").await, 0);
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_queued() {
    let app = TestApp::new().await;
    let user = app.user("bea", Role::Researcher).await;
    let token = app.token(&user).await;
    for (bad, status) in [
        (r#"{"method": "magic"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"method": "natural", "batches": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "batches": 1000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "batch_size": 18446744073709551615}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "iterations": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "deep", "iterations": 100000000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "latent_dim": 1000000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "deep", "bn_weight": -1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "deep", "tv_weight": 1e300}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "competition_weight": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "teacher": "trained:100000"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "teacher": "trained", "teacher_width": 9}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "teacher": "model.safetensors"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "data": "digits:64"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"method": "natural", "seed": 18446744073709551615}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // Server paths are an admin's.
        (
            r#"{"method": "natural", "teacher": "/etc/passwd"}"#,
            StatusCode::FORBIDDEN,
        ),
        (
            r#"{"method": "natural", "data": "/etc"}"#,
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = app
            .send(api("POST", "/api/v1/inversions", Some(&token), Some(bad)))
            .await;
        let code = response.status();
        let body = body_text(response).await;
        assert!(
            code == status
                || (status == StatusCode::UNPROCESSABLE_ENTITY && code == StatusCode::BAD_REQUEST),
            "{bad}: {code} {body}"
        );
        assert!(!body.contains("root:"), "no file content quoted: {body}");
    }
    assert_eq!(app.count("jobs").await, 0);
    assert_eq!(app.count("inversions").await, 0);

    // Scoring and repairing need an existing set with images; bad options are refused.
    for (path, body, status) in [
        (
            "/api/v1/inversions/999/score",
            r#"{}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/inversions/999/repair",
            r#"{}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/inversions/999/cancel",
            r#"{}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = app.send(api("POST", path, Some(&token), Some(body))).await;
        assert_eq!(response.status(), status, "{path}");
    }
    let response = app
        .send(api(
            "POST",
            "/api/v1/inversions",
            Some(&token),
            Some(r#"{"method": "deep", "teacher": "trained:1"}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = body_json(response).await["inversion_id"].as_i64().unwrap();
    for (path, body) in [
        ("score", r#"{"encoder": "inception"}"#),
        ("score", r#"{"encoder": "pixels"}"#),
        ("repair", r#"{"method": "l1"}"#),
        ("repair", r#"{"method": "neuron-merging"}"#),
        ("repair", r#"{"method": "l1", "ratio": 2}"#),
        ("repair", r#"{"method": "l1", "epochs": 100000}"#),
    ] {
        let response = app
            .send(api(
                "POST",
                &format!("/api/v1/inversions/{id}/{path}"),
                Some(&token),
                Some(body),
            ))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}"
        );
    }
    // The compression API's data-free option checks the set too.
    let response = app
        .send(api(
            "POST",
            "/api/v1/compression/experiments",
            Some(&token),
            Some(&format!(
                r#"{{"data": "digits", "method": "l1", "ratio": 0.5, "fine_tune_epochs": 1, "inversion_id": {id}}}"#
            )),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.count("jobs").await, 1, "only the set's teacher job");

    // An admin's server paths (teacher checkpoint, data folder) are stored for the jobs but
    // never shown: rows carry labels only.
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let folder = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let secret = folder.path().to_string_lossy().into_owned();
    let checkpoint = folder.path().join("teacher.safetensors");
    std::fs::write(&checkpoint, b"not read by the request").unwrap();
    let body = serde_json::json!({
        "method": "natural",
        "teacher": checkpoint.to_string_lossy(),
        "data": secret,
    })
    .to_string();
    let response = app
        .send(api(
            "POST",
            "/api/v1/inversions",
            Some(&admin_token),
            Some(&body),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let admin_set = body_json(response).await["inversion_id"].as_i64().unwrap();
    let stored: String = sqlx::query_scalar("SELECT spec::text FROM inversions WHERE id = $1")
        .bind(admin_set)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(stored.contains(&secret), "the jobs need the paths");
    let browser = app.browser(&user).await;
    let shown = [
        view(&app, &token, admin_set).await.to_string(),
        body_text(
            app.send(api("GET", "/api/v1/inversions", Some(&token), None))
                .await,
        )
        .await,
        body_text(app.send(get("/inversion", Some(&browser))).await).await,
        body_text(
            app.send(get(&format!("/inversion/sets/{admin_set}"), Some(&browser)))
                .await,
        )
        .await,
    ];
    for text in shown {
        assert!(!text.contains(&secret), "server path shown: {text}");
    }

    // Annotators have no access.
    let annotator = app.user("cid", Role::Annotator).await;
    let token = app.token(&annotator).await;
    let response = app
        .send(api(
            "POST",
            "/api/v1/inversions",
            Some(&token),
            Some(r#"{"method": "natural"}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[test]
fn the_invert_command_writes_a_set() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("set");
    let dir_text = dir.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = run_elite(
        &[
            "invert",
            "--teacher",
            "trained:1",
            "--method",
            "deep",
            "--images",
            "12",
            "--batch-size",
            "8",
            "--iterations",
            "3",
            "--out",
            &dir_text,
            "--json",
        ],
        None,
    );
    assert!(ok, "{stdout}{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["images"], 12);
    assert_eq!(
        summary["batches"].as_array().unwrap().len(),
        2,
        "8 + 4 images"
    );
    let pngs = walk_pngs(&dir);
    assert_eq!(pngs, 12);
    let tensors =
        candle_core::safetensors::load(dir.join("images.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(tensors["images"].dims(), &[12, 3, 32, 32]);
    assert_eq!(tensors["labels"].dims(), &[12]);
    assert!(dir.join("summary.json").is_file());

    let (ok, _, stderr) = run_elite(
        &[
            "invert",
            "--teacher",
            "trained:1",
            "--method",
            "sideways",
            "--out",
            &dir_text,
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("natural or deep"), "{stderr}");
}

fn walk_pngs(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += walk_pngs(&path);
        } else if path.extension().is_some_and(|e| e == "png") {
            n += 1;
        }
    }
    n
}
