//! Finding 3 and the listed bugs: sizes bounded before anything is allocated or stored, NUL
//! bytes and control characters refused, limits refused rather than clamped, server paths
//! confined to the roots without echoing files, and workers that outlive a bad job.

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine;
use elite::accounts::Role;
use elite::jobs::{self, JobStatus, NewJob, Registry, WorkerOptions, WorkerPool};
use serde_json::json;

use crate::common::*;

/// A two-item benchmark imported through the API; returns its id.
pub async fn small_benchmark(app: &TestApp) -> i64 {
    let admin = app.user("importer", Role::Admin).await;
    let token = app.token(&admin).await;
    let mut png = Vec::new();
    image::RgbImage::from_pixel(9, 5, image::Rgb([4, 5, 6]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let inline = base64::engine::general_purpose::STANDARD.encode(&png);
    let body = [
        json!({"text": "What does this sign say?", "image": inline, "category": "S9"}),
        json!({"text": "And this one?", "image": inline, "category": "S1"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    let created = app
        .send(api(
            "POST",
            "/api/v1/benchmarks/import/items?name=small",
            Some(&token),
            Some(&body),
        ))
        .await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let job_id = body_json(created).await["job_id"].as_i64().unwrap();
    let job = run_job(app, job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    job.result.unwrap()["benchmark"]["id"].as_i64().unwrap()
}

fn fast() -> WorkerOptions {
    WorkerOptions {
        concurrency: 1,
        poll_interval: Duration::from_millis(50),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..WorkerOptions::default()
    }
}

#[tokio::test]
async fn a_huge_synthetic_set_is_refused_and_a_stored_one_fails_cleanly() {
    let app = TestApp::with_config(test_config()).await;
    let user = app.user("rhea", Role::Researcher).await;
    let token = app.token(&user).await;
    let before = table_counts(&app.pool).await;
    // Finding 3: this request used to abort the server with a 24 TB allocation.
    let body =
        json!({"model": "demo:1", "data": "synthetic:100000000000", "method": "l1", "ratio": 0.5});
    let response = app
        .send(api(
            "POST",
            "/api/v1/compression/experiments",
            Some(&token),
            Some(&body.to_string()),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(table_counts(&app.pool).await, before);

    // A job stored before the bound existed fails permanently; the worker lives on.
    let payload = json!({
        "model": {"kind": "demo", "epochs": 1, "seed": 0},
        "data": {"kind": "synthetic", "images_per_class": 100_000_000_000u64, "seed": 0},
        "method": "l1", "ratio": 0.5, "fine_tune_epochs": 0, "created_by": null
    });
    let job = jobs::enqueue(
        &app.pool,
        NewJob::new("compression.experiment", payload).max_attempts(2),
    )
    .await
    .unwrap();
    let workers = WorkerPool::start(app.pool.clone(), elite::job_registry(), fast());
    let done = wait_job(&app, job).await;
    assert_eq!(done.status, JobStatus::Failed, "{done:?}");
    assert!(
        done.last_error.as_deref().unwrap_or("").contains("at most"),
        "{done:?}"
    );
    workers.shutdown().await;
}

#[tokio::test]
async fn a_panicking_job_fails_and_the_worker_goes_on() {
    let app = TestApp::with_config(test_config()).await;
    let panics = |_ctx: jobs::JobContext| async move {
        if true {
            panic!("index out of bounds in a handler");
        }
        Ok::<Option<serde_json::Value>, jobs::JobError>(None)
    };
    let fine = |_ctx: jobs::JobContext| async move {
        Ok::<Option<serde_json::Value>, jobs::JobError>(Some(json!({"ok": true})))
    };
    let registry = Registry::new()
        .register("test.panics", panics)
        .register("test.fine", fine);
    let bad = jobs::enqueue(&app.pool, NewJob::new("test.panics", json!({})))
        .await
        .unwrap();
    let workers = WorkerPool::start(app.pool.clone(), registry, fast());
    let failed = wait_job(&app, bad).await;
    assert_eq!(failed.status, JobStatus::Failed, "{failed:?}");
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("panicked"),
        "{failed:?}"
    );
    // The same single worker still takes the next job.
    let good = jobs::enqueue(&app.pool, NewJob::new("test.fine", json!({})))
        .await
        .unwrap();
    assert_eq!(wait_job(&app, good).await.status, JobStatus::Succeeded);
    workers.shutdown().await;
}

#[tokio::test]
async fn out_of_range_settings_are_refused_with_nothing_stored() {
    let app = TestApp::with_config(test_config()).await;
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let user = app.user("rhea", Role::Researcher).await;
    let token = app.token(&user).await;
    let model = json!({"name": "m", "adapter": "openai", "base_url": "https://a.example/v1", "model_id": "x"});
    app.send(api(
        "POST",
        "/api/v1/models",
        Some(&admin_token),
        Some(&model.to_string()),
    ))
    .await;
    let benchmark = small_benchmark(&app).await;
    let long_name = "n".repeat(1_000_000);
    let before = table_counts(&app.pool).await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("/api/v1/runs", json!({"model": "m", "benchmark_id": benchmark, "temperature": -5}).to_string(), "temperature"),
        ("/api/v1/runs", json!({"model": "m", "benchmark_id": benchmark, "max_new_tokens": 1_000_000_000_000_000u64}).to_string(), "max_new_tokens"),
        ("/api/v1/runs", json!({"model": "m", "benchmark_id": benchmark, "limit": 0}).to_string(), "limit"),
        ("/api/v1/runs", json!({"model": "m", "benchmark_id": benchmark, "limit": 18_446_744_073_709_551_615u64}).to_string(), "limit"),
        ("/api/v1/runs", json!({"model": long_name, "benchmark_id": benchmark}).to_string(), ""),
        ("/api/v1/models", json!({"name": long_name, "adapter": "openai", "base_url": "https://a.example/v1", "model_id": "x"}).to_string(), ""),
        ("/api/v1/models", json!({"name": "t", "adapter": "openai", "base_url": "https://a.example/v1", "model_id": "x", "generation": {"max_new_tokens": 1_000_000_000_000_000u64}}).to_string(), "max_new_tokens"),
        ("/api/v1/genmetrics/results", json!({"real_set_id": 1, "fake_set_id": 1, "k": 18_446_744_073_709_551_615u64}).to_string(), "k and prdc k"),
        ("/api/v1/annotation/queues", json!({"name": "q", "annotators": ["a"], "annotators_per_item": 1, "guideline": "g".repeat(1_500_000)}).to_string(), "guideline"),
    ];
    for (path, body, expect) in &cases {
        let tok = if path.contains("models") {
            &admin_token
        } else {
            &token
        };
        let response = app.send(api("POST", path, Some(tok), Some(body))).await;
        let status = response.status();
        let text = body_text(response).await;
        assert!(
            status.is_client_error() && text.contains(expect),
            "{path} {}: {status} {text}",
            &body[..body.len().min(120)],
        );
    }
    // Negative and oversized page limits are refused, not silently clamped.
    for query in ["limit=-5", "limit=100000", "offset=-1"] {
        let response = app
            .send(api(
                "GET",
                &format!("/api/v1/jobs?{query}"),
                Some(&token),
                None,
            ))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        let response = app
            .send(api(
                "GET",
                &format!("/api/v1/benchmarks/{benchmark}/items?{query}"),
                Some(&token),
                None,
            ))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
    }
    assert_eq!(table_counts(&app.pool).await, before);
}

#[tokio::test]
async fn nul_bytes_and_control_characters_are_refused_everywhere() {
    let app = TestApp::with_config(test_config()).await;
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let user = app.user("rhea", Role::Researcher).await;
    let token = app.token(&user).await;
    let browser = app.browser(&user).await;
    let benchmark = small_benchmark(&app).await;
    let before = table_counts(&app.pool).await;
    let json_cases = [
        (
            "/api/v1/models",
            json!({"name": "a\u{0}b", "adapter": "openai", "base_url": "https://a.example/v1", "model_id": "x"}),
            &admin_token,
        ),
        (
            "/api/v1/runs",
            json!({"model": "m\u{0}", "benchmark_id": benchmark}),
            &token,
        ),
        (
            "/api/v1/runs",
            json!({"model": "m", "benchmark_id": benchmark, "prompt_template": "{text}\u{1b}[2J"}),
            &token,
        ),
        ("/api/v1/tokens", json!({"name": "t\u{0}"}), &token),
        (
            "/api/v1/genmetrics/results",
            json!({"real_set_id": 1, "fake_set_id": 1, "label": "x\u{0}"}),
            &token,
        ),
    ];
    for (path, body, tok) in json_cases {
        let response = app
            .send(api("POST", path, Some(tok), Some(&body.to_string())))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}"
        );
    }
    // The same in a form, a query string and a path.
    let form_body = format!("csrf_token={}&name=x%00y&adapter=openai", browser.csrf);
    let response = app
        .send(form("/safety/models", Some(&browser), &form_body))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = app
        .send(api("GET", "/api/v1/models/a%00b", Some(&token), None))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = app
        .send(api(
            "GET",
            &format!("/api/v1/benchmarks/{benchmark}/items?q=%00"),
            Some(&token),
            None,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(table_counts(&app.pool).await, before);
}

#[tokio::test]
async fn server_paths_are_admin_only_confined_to_roots_and_never_echoed() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let app = TestApp::with_config(elite::web::WebConfig {
        server_roots: vec![root.path().to_path_buf()],
        ..elite::web::WebConfig::default()
    })
    .await;
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let user = app.user("rhea", Role::Researcher).await;
    let token = app.token(&user).await;
    // A file outside the roots full of secrets, and a symbolic link to it inside a root.
    let secret = outside.path().join("secret.csv");
    std::fs::write(&secret, "taxonomy_code,name\nTOP-SECRET-LINE,1\n").unwrap();
    let link = root.path().join("link.csv");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let garbage = root.path().join("garbage.csv");
    std::fs::write(&garbage, "SECRET-INSIDE-ROOT\u{1}\u{2}\n").unwrap();
    let before = table_counts(&app.pool).await;
    for csv in [
        secret.to_str().unwrap(),
        link.to_str().unwrap(),
        "/etc/passwd",
        garbage.to_str().unwrap(),
    ] {
        let response = app
            .send(api(
                "POST",
                "/api/v1/benchmarks/import/elite",
                Some(&admin_token),
                Some(&json!({"csv": csv, "name": "x"}).to_string()),
            ))
            .await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{csv}");
        let text = body_text(response).await;
        assert!(
            !text.contains("SECRET") && !text.contains("root:"),
            "{csv}: {text}"
        );
    }
    // Researchers never name server paths; an existing and a missing folder look the same.
    let mut answers = Vec::new();
    for data in [outside.path().to_str().unwrap(), "/no/such/folder"] {
        let body = json!({"model": "demo:1", "data": data, "method": "l1", "ratio": 0.5});
        let response = app
            .send(api(
                "POST",
                "/api/v1/compression/experiments",
                Some(&token),
                Some(&body.to_string()),
            ))
            .await;
        answers.push((response.status(), body_text(response).await));
    }
    assert_eq!(answers[0].0, StatusCode::FORBIDDEN);
    assert_eq!(answers[0], answers[1]);
    // A bare word is not taken as a relative folder of the server's working directory.
    let body = json!({"model": "demo:1", "data": "target", "method": "l1", "ratio": 0.5});
    let response = app
        .send(api(
            "POST",
            "/api/v1/compression/experiments",
            Some(&token),
            Some(&body.to_string()),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(table_counts(&app.pool).await, before);
}
