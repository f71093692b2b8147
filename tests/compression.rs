//! The compression area through its public interfaces: experiments run as jobs from the API
//! and stored once, the plots and table on the page, imports of external results, and the
//! `prune` / `train` commands of the binary.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use elite::accounts::Role;
use elite::compression::Network;
use elite::jobs::{JobStatus, WorkerOptions, WorkerPool};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_runs_as_a_job_and_is_plotted() {
    let app = TestApp::new().await;
    let user = app.user("sam", Role::Researcher).await;
    let token = app.token(&user).await;
    let request =
        r#"{"model": "demo:1", "data": "synthetic:12", "method": "neuron-merging", "ratio": 0.5}"#;
    let response = app
        .send(api(
            "POST",
            "/api/v1/compression/experiments",
            Some(&token),
            Some(request),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job_id = body_json(response).await["job_id"].as_i64().unwrap();
    let options = WorkerOptions {
        concurrency: 1,
        poll_interval: Duration::from_millis(50),
        ..WorkerOptions::default()
    };
    let workers = WorkerPool::start(app.pool.clone(), elite::job_registry(), options);
    let job = wait_job(&app, job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");

    let rows = body_json(
        app.send(api(
            "GET",
            "/api/v1/compression/experiments",
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    let row = &rows[0];
    assert_eq!(row["method"], "neuron-merging");
    assert_eq!(row["dataset"], "synthetic");
    assert_eq!(row["source"], "job");
    let (before, after) = (
        row["params_before"].as_i64().unwrap(),
        row["params_after"].as_i64().unwrap(),
    );
    assert!(after < before, "{row}");
    let reduction = row["param_reduction"].as_f64().unwrap();
    assert!((reduction - (1.0 - after as f64 / before as f64)).abs() < 1e-9);
    assert!(
        row["mac_reduction"].as_f64().unwrap() > 0.3,
        "half the channels of every layer remove well over 30% of MACs"
    );
    for key in ["accuracy_before", "accuracy_pruned"] {
        let a = row[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{key} = {a}");
    }

    // Bad requests are refused before anything is queued.
    // Server paths are an admin's (researchers get 403 whether or not the path exists).
    for (bad, status) in [
        (
            r#"{"model": "demo", "data": "synthetic", "method": "magic", "ratio": 0.5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"model": "demo", "data": "synthetic", "method": "l1", "ratio": 1.5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"model": "/nonexistent.safetensors", "data": "synthetic", "method": "l1", "ratio": 0.5}"#,
            StatusCode::FORBIDDEN,
        ),
        (
            r#"{"model": "demo", "data": "/nonexistent-dir", "method": "l1", "ratio": 0.5}"#,
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = app
            .send(api(
                "POST",
                "/api/v1/compression/experiments",
                Some(&token),
                Some(bad),
            ))
            .await;
        assert_eq!(response.status(), status, "{bad}");
    }
    assert_eq!(app.count("jobs").await, 1);

    let browser = app.browser(&user).await;
    let page = body_text(app.send(get("/compression", Some(&browser))).await).await;
    assert!(page.contains("id=\"acc-vs-flops\"") && page.contains("id=\"acc-vs-params\""));
    assert_eq!(page.matches("<svg").count(), 2);
    assert!(
        page.contains("neuron-merging (vgg"),
        "series legend names method and architecture"
    );
    workers.shutdown().await;
}

const BOUNDARY: &str = "elite-test-boundary";

#[tokio::test]
async fn external_results_import_all_or_nothing() {
    let app = TestApp::new().await;
    let user = app.user("tess", Role::Researcher).await;
    let token = app.token(&user).await;
    let json = r#"[{"architecture": "VGG-16", "dataset": "CIFAR-10", "method": "neuron-merging", "ratio": 0.5,
                    "param_reduction": 0.64, "mac_reduction": 0.45, "accuracy_pruned": 0.9316, "notes": "paper <b>"},
                   {"architecture": "ResNet-110", "dataset": "CIFAR-10", "method": "reprune-filter", "ratio": 0.5,
                    "param_reduction": 0.5, "mac_reduction": 0.49, "accuracy_fine_tuned": 0.9405}]"#;
    let response = app
        .send(api(
            "POST",
            "/api/v1/compression/import",
            Some(&token),
            Some(json),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(body_json(response).await["imported"], 2);

    let bad = json.replace("0.9405", "94.05");
    let response = app
        .send(api(
            "POST",
            "/api/v1/compression/import",
            Some(&token),
            Some(&bad),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("row 2")
    );
    assert_eq!(app.count("compression_experiments").await, 2);

    // CSV through the page's upload form.
    let browser = app.browser(&user).await;
    let csv = "architecture,dataset,method,ratio,param_reduction,mac_reduction,accuracy_pruned\nResNet-56,CIFAR-10,l1,0.3,0.3,0.28,0.91\n";
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.csv\"\r\n\r\n{csv}\r\n--{BOUNDARY}--\r\n"
    );
    // The CSRF token travels as the first part of the upload.
    let token_part = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{}\r\n",
        browser.csrf
    );
    let request = |path: String, body: String| {
        Request::post(path)
            .header(header::COOKIE, &browser.cookie)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        app.send(request("/compression/import".into(), body.clone()))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let response = app
        .send(request(
            "/compression/import".into(),
            format!("{token_part}{body}"),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = body_text(response).await;
    assert!(page.contains("Imported 1 rows."));
    assert!(
        page.contains("paper &#60;b&#62;") || page.contains("paper &lt;b&gt;"),
        "notes escaped"
    );
    // The paper-style summary: the imported VGG-16 / CIFAR-10 Neuron Merging row at 0.5 is
    // followed by the published numbers for that setting, marked as the paper's.
    assert!(page.contains(r#"id="summary""#));
    let summary =
        &page[page.find(r#"id="summary""#).unwrap()..page.find(r#"id="experiments""#).unwrap()];
    assert!(
        summary.contains("paper: Kim et al., NeurIPS 2020"),
        "{summary}"
    );
    assert!(summary.contains("93.16"));
    assert_eq!(summary.matches("class=\"published\"").count(), 1);
    body = body.replace("0.91", "nine");
    let response = app
        .send(request(
            "/compression/import".into(),
            format!("{token_part}{body}"),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.count("compression_experiments").await, 3);
}

fn run(args: &[&str]) -> (bool, String, String) {
    run_elite(args, None)
}

#[test]
fn train_then_prune_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("vgg.safetensors");
    let (ok, stdout, stderr) = run(&[
        "train",
        "--arch",
        "vgg16",
        "--width",
        "0.125",
        "--data",
        "synthetic:8",
        "--epochs",
        "1",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("test accuracy"), "{stdout}");
    for method in [
        "l1",
        "random",
        "neuron-merging",
        "reprune-filter",
        "reprune-kernel",
    ] {
        let (ok, stdout, stderr) = run(&[
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "synthetic:8",
            "--method",
            method,
            "--ratio",
            "0.5",
            "--json",
        ]);
        assert!(ok, "{method}: {stderr}");
        let result: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(result["method"], method);
        assert!(
            result["params_after"].as_u64().unwrap() < result["params_before"].as_u64().unwrap()
        );
        assert!(result["macs_after"].as_u64().unwrap() < result["macs_before"].as_u64().unwrap());
    }
    let (ok, _, stderr) = run(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        "synthetic:8",
        "--method",
        "magic",
        "--ratio",
        "0.5",
    ]);
    assert!(!ok && stderr.contains("unknown pruning method"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "prune",
        "--model",
        "/missing.safetensors",
        "--data",
        "synthetic:8",
        "--method",
        "l1",
        "--ratio",
        "0.5",
    ]);
    assert!(!ok && stderr.contains("/missing.safetensors"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        "synthetic:8",
        "--method",
        "l1",
        "--ratio",
        "1.0",
    ]);
    assert!(!ok && stderr.contains("ratio"), "{stderr}");
}

/// A plain PyTorch-named checkpoint (no topology metadata, as the converter script writes)
/// loads through `ARCH=PATH`; without the architecture it is a clear error.
#[test]
fn prune_loads_a_plain_checkpoint_of_a_named_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lenet.safetensors");
    let net = Network::by_name("lenet300_100", 1.0, 10, [1, 8, 8], 3).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = net
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, t.dims().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let model = format!("lenet300_100={}", path.display());
    let (ok, stdout, stderr) = run(&[
        "prune",
        "--model",
        &model,
        "--data",
        "digits:64",
        "--method",
        "neuron-merging",
        "--ratio",
        "0.5",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["architecture"], "lenet300_100");
    // 64*300 + 300 + 300*100 + 100 + 100*10 + 10 before; 150 and 50 hidden after.
    assert_eq!(result["params_before"], 50_610);
    assert_eq!(
        result["params_after"],
        64 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10
    );
    assert_eq!(result["method_options"]["threshold"], 0.45);
    let (ok, _, stderr) = run(&[
        "prune",
        "--model",
        path.to_str().unwrap(),
        "--data",
        "digits:64",
        "--method",
        "l1",
        "--ratio",
        "0.5",
    ]);
    assert!(!ok && stderr.contains("ARCH=PATH"), "{stderr}");
}

/// REPrune's schedule from the command line: LeNet-300-100 (`demo:0`, untrained) pruned
/// while it trains for two epochs on the 64-d digits; a malformed schedule is refused.
#[test]
fn prune_with_the_from_scratch_schedule_from_the_command_line() {
    let args = |schedule: &'static str| {
        vec![
            "prune",
            "--model",
            "demo:0",
            "--data",
            "digits:64",
            "--method",
            "reprune-kernel",
            "--ratio",
            "0.5",
            "--finetune-epochs",
            "2",
            "--schedule",
            schedule,
            "--json",
        ]
    };
    let (ok, stdout, stderr) = run(&args("from-scratch:1:2"));
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["schedule"]["kind"], "from_scratch");
    // No batch norm in LeNet: the gamma quantile falls back to floor(n / 2) per layer.
    let widths: Vec<u64> = result["widths_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[1].as_u64().unwrap())
        .collect();
    assert_eq!(widths, vec![150, 50, 10]);
    let accuracy = result["accuracy_fine_tuned"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let (ok, _, stderr) = run(&args("from-scratch:0:2"));
    assert!(!ok && stderr.contains("schedule"), "{stderr}");
    let (ok, _, stderr) = run(&args("sometimes"));
    assert!(!ok && stderr.contains("unknown schedule"), "{stderr}");
}
