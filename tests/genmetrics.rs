//! The generative-metrics area through its public interfaces: uploads and computations via
//! the API and the pages (run as jobs by real workers), the toy experiments, and the `ppr` /
//! `embed` commands of the binary, checked against the golden values.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use elite::accounts::Role;
use elite::jobs::{JobStatus, WorkerOptions, WorkerPool};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ppr")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("expected.json")).unwrap())
        .unwrap()
}

const BOUNDARY: &str = "elite-test-boundary";

fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, bytes)) = file {
        body.extend(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn upload_request(path: &str, token: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .unwrap()
}

fn workers(app: &TestApp) -> WorkerPool {
    let options = WorkerOptions {
        concurrency: 1,
        poll_interval: Duration::from_millis(50),
        ..WorkerOptions::default()
    };
    WorkerPool::start(app.pool.clone(), elite::job_registry(), options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_sets_are_computed_by_a_job_and_match_the_golden_values() {
    let app = TestApp::new().await;
    let user = app.user("pia", Role::Researcher).await;
    let token = app.token(&user).await;
    let expected = golden();
    let case = &expected["cases"]["shift"];
    let mut ids = Vec::new();
    for (field, name) in [("real", "real images <b>"), ("fake", "generator X")] {
        let bytes = std::fs::read(golden_dir().join(case[field].as_str().unwrap())).unwrap();
        let body = multipart(&[("name", name), ("dim", "32")], Some(("data.f32", &bytes)));
        let response = app
            .send(upload_request("/api/v1/genmetrics/sets", &token, body))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let set = body_json(response).await;
        assert_eq!(set["dim"], 32);
        ids.push(set["id"].as_i64().unwrap());
    }
    // The same content again is the same set.
    let bytes = std::fs::read(golden_dir().join(case["real"].as_str().unwrap())).unwrap();
    let again = body_json(
        app.send(upload_request(
            "/api/v1/genmetrics/sets",
            &token,
            multipart(&[("dim", "32")], Some(("x.f32", &bytes))),
        ))
        .await,
    )
    .await;
    assert_eq!(again["id"].as_i64().unwrap(), ids[0]);

    let request = format!(
        r#"{{"real_set_id": {}, "fake_set_id": {}, "label": "gen <X>"}}"#,
        ids[0], ids[1]
    );
    let response = app
        .send(api(
            "POST",
            "/api/v1/genmetrics/results",
            Some(&token),
            Some(&request),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job_id = body_json(response).await["job_id"].as_i64().unwrap();
    // Asking twice enqueues nothing new.
    let twice = body_json(
        app.send(api(
            "POST",
            "/api/v1/genmetrics/results",
            Some(&token),
            Some(&request),
        ))
        .await,
    )
    .await;
    assert_eq!(twice["job_id"].as_i64().unwrap(), job_id);

    let pool = workers(&app);
    let job = wait_job(&app, job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let results = body_json(
        app.send(api("GET", "/api/v1/genmetrics/results", Some(&token), None))
            .await,
    )
    .await;
    let result = &results[0];
    let close = |got: &Value, want: &Value, tol: f64| {
        (got.as_f64().unwrap() - want.as_f64().unwrap()).abs() <= tol
    };
    assert!(
        close(&result["p_precision"], &case["p_precision"], 1e-6),
        "{result}"
    );
    assert!(
        close(&result["p_recall"], &case["p_recall"], 1e-6),
        "{result}"
    );
    let prdc = &case["prdc_k5"];
    assert!(
        close(&result["precision"], &prdc["precision"], 2.0 / 2000.0),
        "{result}"
    );
    assert!(
        close(&result["recall"], &prdc["recall"], 2.0 / 2000.0),
        "{result}"
    );
    assert!(
        close(&result["coverage"], &prdc["coverage"], 2.0 / 2000.0),
        "{result}"
    );
    assert!(
        close(&result["density"], &prdc["density"], 1e-3),
        "{result}"
    );
    assert_eq!(result["a"], 1.2);
    assert_eq!(result["k"], 4);
    assert_eq!(
        (result["n_real"].as_i64(), result["n_fake"].as_i64()),
        (Some(2000), Some(1500))
    );

    // A re-run of the job (e.g. after a crash) reuses the stored result.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ppr_results")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);

    // The page lists it, with both charts, and escapes the names.
    let browser = app.browser(&user).await;
    let page = body_text(app.send(get("/genmetrics", Some(&browser))).await).await;
    assert!(
        page.contains("gen &#60;X&#62;") || page.contains("gen &lt;X&gt;"),
        "label not escaped"
    );
    assert!(!page.contains("gen <X>"));
    assert!(page.contains("real images &#60;b&#62;") || page.contains("real images &lt;b&gt;"));
    assert_eq!(page.matches("<svg").count(), 2, "scatter and bar charts");
    assert!(page.contains("0.8506"), "PP value shown");
    pool.shutdown().await;
}

#[tokio::test]
async fn bad_uploads_and_requests_are_refused_and_store_nothing() {
    let app = TestApp::with_config(elite::web::WebConfig {
        upload_limit: 64 * 1024,
        ..Default::default()
    })
    .await;
    let user = app.user("quinn", Role::Researcher).await;
    let token = app.token(&user).await;
    let send = |body: Vec<u8>| app.send(upload_request("/api/v1/genmetrics/sets", &token, body));

    let nan: Vec<u8> = [1.0f32, f32::NAN, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let response = send(multipart(&[("dim", "2")], Some(("x.f32", &nan)))).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("non-finite")
    );

    let response = send(multipart(&[], Some(("x.f32", &[0u8; 12])))).await;
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "raw data without a dimension"
    );
    let response = send(multipart(&[("dim", "5")], Some(("x.f32", &[0u8; 12])))).await;
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("truncated")
    );
    let response = send(multipart(&[], Some(("x.npy", b"not an npy file")))).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = send(multipart(&[], Some(("x.csv", b"1,2\n3,oops\n")))).await;
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("oops")
    );
    let response = send(multipart(&[("name", "only a name")], None)).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = send(multipart(
        &[("dim", "4")],
        Some(("big.f32", &vec![0u8; 128 * 1024])),
    ))
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.count("embedding_sets").await, 0);

    // Sets of different widths cannot be compared; unknown sets are refused.
    let a: Vec<u8> = (0..40).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let a = body_json(send(multipart(&[("dim", "4")], Some(("a.f32", &a)))).await).await["id"]
        .as_i64()
        .unwrap();
    let b: Vec<u8> = (0..40)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let b = body_json(send(multipart(&[("dim", "2")], Some(("b.f32", &b)))).await).await["id"]
        .as_i64()
        .unwrap();
    let body = format!(r#"{{"real_set_id": {a}, "fake_set_id": {b}}}"#);
    let response = app
        .send(api(
            "POST",
            "/api/v1/genmetrics/results",
            Some(&token),
            Some(&body),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dimension")
    );
    let body = format!(r#"{{"real_set_id": {a}, "fake_set_id": 999999}}"#);
    let response = app
        .send(api(
            "POST",
            "/api/v1/genmetrics/results",
            Some(&token),
            Some(&body),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = format!(r#"{{"real_set_id": {a}, "fake_set_id": {a}, "k": 20}}"#);
    let response = app
        .send(api(
            "POST",
            "/api/v1/genmetrics/results",
            Some(&token),
            Some(&body),
        ))
        .await;
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 22")
    );
    assert_eq!(app.count("jobs").await, 0);

    // Browser uploads carry the CSRF token as the form's first part.
    let browser = app.browser(&user).await;
    let form = |token: &str| {
        Request::post("/genmetrics/sets")
            .header(header::COOKIE, &browser.cookie)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(multipart(
                &[("csrf_token", token), ("name", "web"), ("dim", "4")],
                Some(("w.f32", &[0u8; 48])),
            )))
            .unwrap()
    };
    assert_eq!(
        app.send(form("not-the-token")).await.status(),
        StatusCode::FORBIDDEN
    );
    let ok = app.send(form(&browser.csrf)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(body_text(ok).await.contains("Stored set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toy_experiments_run_as_jobs_and_are_plotted() {
    let app = TestApp::new().await;
    let user = app.user("ravi", Role::Researcher).await;
    let browser = app.browser(&user).await;
    let response = app
        .send(form(
            "/genmetrics/toy",
            Some(&browser),
            &format!(
                "csrf_token={}&experiment=std&samples=300&dim=8&seed=3",
                browser.csrf
            ),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let job_id: i64 = location.trim_start_matches("/jobs/").parse().unwrap();
    let pool = workers(&app);
    assert_eq!(wait_job(&app, job_id).await.status, JobStatus::Succeeded);
    let page = body_text(app.send(get("/genmetrics/toy", Some(&browser))).await).await;
    assert!(page.contains("id=\"toy-std\""), "{page}");
    assert!(page.contains("<svg"));
    let token = app.token(&user).await;
    let runs = body_json(
        app.send(api("GET", "/api/v1/genmetrics/toy", Some(&token), None))
            .await,
    )
    .await;
    let points = runs[0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 11);
    // A narrow fake set has lower P-recall than a wide one.
    assert!(points[0]["p_recall"].as_f64().unwrap() < points[10]["p_recall"].as_f64().unwrap());
    let bad = app
        .send(api(
            "POST",
            "/api/v1/genmetrics/toy",
            Some(&token),
            Some(r#"{"experiment": "moon"}"#),
        ))
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    pool.shutdown().await;
}

fn run(args: &[&str]) -> (bool, String, String) {
    run_elite(args, None)
}

#[test]
fn ppr_command_prints_the_golden_values_as_json() {
    let expected = golden();
    for (name, case) in expected["cases"].as_object().unwrap() {
        let dim = case["real_shape"][1].as_u64().unwrap().to_string();
        let real = golden_dir().join(case["real"].as_str().unwrap());
        let fake = golden_dir().join(case["fake"].as_str().unwrap());
        let (ok, stdout, stderr) = run(&[
            "ppr",
            "--real",
            real.to_str().unwrap(),
            "--fake",
            fake.to_str().unwrap(),
            "--dim",
            &dim,
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let got: Value = serde_json::from_str(stdout.trim()).unwrap();
        for key in [
            "p_precision",
            "p_recall",
            "precision",
            "recall",
            "density",
            "coverage",
            "n_real",
            "n_fake",
            "dim",
            "a",
            "k",
            "prdc_k",
            "seconds",
        ] {
            assert!(got.get(key).is_some(), "{name}: missing {key}");
        }
        let n = case["real_shape"][0].as_f64().unwrap();
        assert!(
            (got["p_precision"].as_f64().unwrap() - case["p_precision"].as_f64().unwrap()).abs()
                <= 1e-6,
            "{name}"
        );
        assert!(
            (got["p_recall"].as_f64().unwrap() - case["p_recall"].as_f64().unwrap()).abs() <= 1e-6,
            "{name}"
        );
        for key in ["precision", "recall", "coverage"] {
            assert!(
                (got[key].as_f64().unwrap() - case["prdc_k5"][key].as_f64().unwrap()).abs()
                    <= 2.0 / n,
                "{name} {key}"
            );
        }
        assert!(
            (got["density"].as_f64().unwrap() - case["prdc_k5"]["density"].as_f64().unwrap()).abs()
                <= 1e-3,
            "{name}"
        );
    }
}

#[test]
fn ppr_command_reports_bad_input_clearly() {
    let real = golden_dir().join("wide_real_1000x16.f32");
    let fake = golden_dir().join("shift_fake_1500x32.f32");
    let (ok, _, stderr) = run(&[
        "ppr",
        "--real",
        real.to_str().unwrap(),
        "--fake",
        "/nonexistent.npy",
        "--dim",
        "16",
    ]);
    assert!(!ok && stderr.contains("/nonexistent.npy"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "ppr",
        "--real",
        real.to_str().unwrap(),
        "--fake",
        real.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("dimension"),
        "raw without --dim: {stderr}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let csv16 = tmp.path().join("a.csv");
    std::fs::write(
        &csv16,
        (0..10)
            .map(|i| format!("{i},{}\n", i * 2))
            .collect::<String>(),
    )
    .unwrap();
    let (ok, _, stderr) = run(&[
        "ppr",
        "--real",
        csv16.to_str().unwrap(),
        "--fake",
        fake.to_str().unwrap(),
        "--dim",
        "32",
    ]);
    assert!(!ok && stderr.contains("dimension"), "{stderr}");
    let tiny = tmp.path().join("tiny.csv");
    std::fs::write(&tiny, "1,2\n3,4\n").unwrap();
    let (ok, _, stderr) = run(&[
        "ppr",
        "--real",
        tiny.to_str().unwrap(),
        "--fake",
        tiny.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("at least"), "{stderr}");
}

fn write_images(dir: &Path, n: usize, tint: u8) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8 ^ tint, (y * 6 + i as u32 * 9) as u8, tint])
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn embed_and_ppr_work_on_image_folders_with_a_tiny_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("clip.safetensors");
    let (ok, _, stderr) = run(&["make-tiny-encoder", "clip", weights.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let (real, fake) = (tmp.path().join("real"), tmp.path().join("fake"));
    write_images(&real, 12, 0);
    write_images(&fake, 10, 200);
    let out = tmp.path().join("real.npy");
    let (ok, stdout, stderr) = run(&[
        "embed",
        "--images",
        real.to_str().unwrap(),
        "--encoder",
        "clip",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("12 embeddings of dimension 12"), "{stdout}");
    let set = elite::genmetrics::read_npy(&out).unwrap();
    assert_eq!((set.rows, set.dim), (12, 12));

    let (ok, stdout, stderr) = run(&[
        "ppr",
        "--real-images",
        real.to_str().unwrap(),
        "--fake-images",
        fake.to_str().unwrap(),
        "--encoder",
        "clip",
        "--weights",
        weights.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let got: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (
            got["n_real"].as_u64(),
            got["n_fake"].as_u64(),
            got["dim"].as_u64()
        ),
        (Some(12), Some(10), Some(12))
    );
    let pp = got["p_precision"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&pp));
    // Self-comparison of the embedded folder is exactly 1.
    let (ok, stdout, _) = run(&[
        "ppr",
        "--real",
        out.to_str().unwrap(),
        "--fake",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok);
    let same: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(same["p_precision"].as_f64(), Some(1.0));
    assert_eq!(same["p_recall"].as_f64(), Some(1.0));
}
