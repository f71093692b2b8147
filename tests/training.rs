//! The training area through its public interfaces: an experiment started from the API runs
//! as one job per (recipe, seed), each run is stored once, the page shows the table and the
//! charts, bad requests are refused before anything is queued, and `elite train --recipe`
//! runs the same experiment in one process.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use elite::accounts::Role;
use elite::jobs::{JobStatus, WorkerOptions, WorkerPool};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_runs_one_job_per_recipe_and_seed_and_is_shown() {
    let app = TestApp::new().await;
    let user = app.user("ada", Role::Researcher).await;
    let token = app.token(&user).await;
    // Vanilla is added as the baseline; 2 recipes x 2 seeds = 4 jobs.
    let request = r#"{"name": "guided <b>test</b>", "recipes": ["guided_sr"], "seeds": [0, 1],
        "epochs": 1, "train_fraction": 0.1, "batch_size": 32, "width": 0.0625}"#;
    let response = app
        .send(api(
            "POST",
            "/api/v1/training/experiments",
            Some(&token),
            Some(request),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let started = body_json(response).await;
    let id = started["experiment_id"].as_i64().unwrap();
    let job_ids: Vec<i64> = started["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(job_ids.len(), 4);

    let workers = WorkerPool::start(
        app.pool.clone(),
        elite::job_registry(),
        WorkerOptions {
            concurrency: 2,
            poll_interval: Duration::from_millis(50),
            ..WorkerOptions::default()
        },
    );
    for &job_id in &job_ids {
        let job = wait_job(&app, job_id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    workers.shutdown().await;
    assert_eq!(app.count("training_runs").await, 4);

    let view = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/training/experiments/{id}"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(view["experiment"]["runs"], 4);
    assert_eq!(view["experiment"]["expected_runs"], 4);
    let summary = view["summary"].as_array().unwrap();
    let names: Vec<&str> = summary
        .iter()
        .map(|s| s["recipe"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vanilla", "guided_sr"], "baseline first");
    for row in summary {
        assert_eq!(row["seeds"], 2);
        let acc = row["accuracy_mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{row}");
        assert!(row["accuracy_sd"].is_number(), "two seeds give a spread");
        let runs: Vec<&Value> = view["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["recipe"] == row["recipe"])
            .collect();
        let mean = runs
            .iter()
            .map(|r| r["test_accuracy"].as_f64().unwrap())
            .sum::<f64>()
            / runs.len() as f64;
        assert!(
            (mean - acc).abs() < 1e-12,
            "the table's mean is the runs' mean"
        );
    }
    assert!((summary[0]["step_time_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    for run in view["runs"].as_array().unwrap() {
        let kinds: std::collections::BTreeSet<&str> = run["corrupted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["corruption"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.len(), 3, "noise, blur, contrast: {kinds:?}");
        assert_eq!(
            run["filter_use"].as_array().unwrap().len(),
            5,
            "stem and four stages"
        );
        assert!(run["steps"].as_u64().unwrap() >= 1);
    }

    // A job queued again for a stored run reuses it; nothing is stored twice.
    let again = elite::jobs::enqueue(
        &app.pool,
        elite::jobs::NewJob::new(
            "training.run",
            serde_json::json!({"experiment_id": id, "recipe": "vanilla", "seed": 0}),
        ),
    )
    .await
    .unwrap();
    let job = run_job(&app, again).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.result.unwrap()["reused"], true);
    assert_eq!(app.count("training_runs").await, 4);

    let browser = app.browser(&user).await;
    let page = body_text(
        app.send(get(&format!("/training/experiments/{id}"), Some(&browser)))
            .await,
    )
    .await;
    assert!(
        page.contains("guided &#60;b&#62;test") || page.contains("guided &lt;b&gt;test"),
        "the name is escaped: {}",
        &page[page.find("<h1").unwrap_or(0)..][..200]
    );
    assert!(!page.contains("<b>test</b>"));
    assert!(page.contains("guided_sr") && page.contains("vanilla"));
    assert!(
        page.matches("<svg").count() >= 2,
        "overhead and per-seed charts"
    );
    let index = body_text(app.send(get("/training", Some(&browser))).await).await;
    assert!(index.contains(&format!("/training/experiments/{id}")));
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_queued() {
    let app = TestApp::new().await;
    let user = app.user("bea", Role::Researcher).await;
    let token = app.token(&user).await;
    for (bad, status) in [
        (
            r#"{"recipes": ["magic"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"recipes": []}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"recipes": ["mixup", "vit_mpvg"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["mixup"], "epochs": 100000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["mixup"], "batch_size": 18446744073709551615}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["mixup"], "seeds": [0,1,2,3,4,5,6,7,8,9,10]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["mixup"], "train_fraction": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["vit_pvg"], "vit": {"dim": 65, "heads": 4}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["vit_pvg"], "vit": {"dim": 4096, "depth": 64}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"recipes": ["mixup"], "data": "digits:64"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // Server paths are an admin's.
        (
            r#"{"recipes": ["mixup"], "data": "/etc"}"#,
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = app
            .send(api(
                "POST",
                "/api/v1/training/experiments",
                Some(&token),
                Some(bad),
            ))
            .await;
        let code = response.status();
        let body = body_text(response).await;
        assert!(
            code == status
                || (status == StatusCode::UNPROCESSABLE_ENTITY && code == StatusCode::BAD_REQUEST),
            "{bad}: {code} {body}"
        );
    }
    assert_eq!(app.count("jobs").await, 0);
    assert_eq!(app.count("training_experiments").await, 0);

    // A server folder (admins only) is stored for the job but never shown to researchers.
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let folder = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let secret = folder.path().to_string_lossy().into_owned();
    let body = serde_json::json!({"recipes": ["mixup"], "data": secret}).to_string();
    let response = app
        .send(api(
            "POST",
            "/api/v1/training/experiments",
            Some(&admin_token),
            Some(&body),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = body_json(response).await["experiment_id"].as_i64().unwrap();
    let stored: String = sqlx::query_scalar("SELECT spec::text FROM training_experiments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(stored.contains(&secret), "the job needs the path");
    let shown = body_json(
        app.send(api(
            "GET",
            &format!("/api/v1/training/experiments/{id}"),
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    let folder_name = folder.path().file_name().unwrap().to_string_lossy();
    assert_eq!(
        shown["experiment"]["data"],
        folder_name.as_ref(),
        "shown by its label"
    );
    assert_eq!(shown["experiment"]["spec"]["data"], folder_name.as_ref());
    let listed = body_text(
        app.send(api(
            "GET",
            "/api/v1/training/experiments",
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    let browser = app.browser(&user).await;
    let page = body_text(
        app.send(get(&format!("/training/experiments/{id}"), Some(&browser)))
            .await,
    )
    .await;
    let index = body_text(app.send(get("/training", Some(&browser))).await).await;
    for text in [shown.to_string(), listed, page, index] {
        assert!(!text.contains(&secret), "server path shown: {text}");
    }

    // Annotators have no access.
    let annotator = app.user("cid", Role::Annotator).await;
    let token = app.token(&annotator).await;
    let response = app
        .send(api(
            "POST",
            "/api/v1/training/experiments",
            Some(&token),
            Some(r#"{"recipes": ["mixup"]}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[test]
fn the_train_command_runs_an_experiment_and_prints_json() {
    let (ok, stdout, stderr) = run_elite(
        &[
            "train",
            "--recipe",
            "catchup_mix,vit_mpvg",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--train-fraction",
            "0.1",
            "--json",
        ],
        None,
    );
    assert!(!ok, "CNN and ViT recipes are separate experiments");
    assert!(stderr.contains("separate experiments"), "{stderr}");

    let (ok, stdout_ok, stderr) = run_elite(
        &[
            "train",
            "--recipe",
            "catchup_mix",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--train-fraction",
            "0.1",
            "--width",
            "0.0625",
            "--json",
        ],
        None,
    );
    assert!(ok, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout_ok).unwrap();
    let recipes: Vec<&str> = out["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["recipe"].as_str().unwrap())
        .collect();
    assert_eq!(recipes, ["vanilla", "catchup_mix"]);
    assert_eq!(out["runs"].as_array().unwrap().len(), 2);
    for run in out["runs"].as_array().unwrap() {
        // 10% of the digits' training split, stratified.
        let n = run["train_images"].as_u64().unwrap();
        assert!((130..=160).contains(&n), "{n}");
    }
}
