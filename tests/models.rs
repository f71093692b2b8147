//! The model registry end to end: `elite model make-tiny/add/list/test` against a real
//! database (a tiny local LLaVA and an OpenAI-compatible server started by the test), and the
//! registry's API and page.

mod common;

use std::process::Command;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use elite::accounts::Role;
use serde_json::{Value, json};

fn elite(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elite"))
        .env("ELITE_OUTBOUND_ALLOW", "127.0.0.0/8")
        .args(args)
        .env("DATABASE_URL", url)
        .env("ELITE_LOG", "warn")
        .env("ELITE_SECRET_TEST_KEY", "sk-test-123")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn fake_openai(headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let authorised =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer sk-test-123");
    let content = &body["messages"][0]["content"];
    let prompt = content
        .as_str()
        .or_else(|| content[0]["text"].as_str())
        .unwrap_or("?");
    let text = if authorised {
        format!("echo: {prompt}")
    } else {
        "no key".into()
    };
    Json(json!({
        "id": "x", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_registered_and_tested_from_the_cli() {
    let (url, _pool) = fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-llava");
    let (ok, _, stderr) = elite(
        &["model", "make-tiny", "llava", dir.to_str().unwrap()],
        &url,
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = elite(
        &[
            "model",
            "add",
            "tiny-llava",
            "--adapter",
            "local",
            "--path",
            dir.to_str().unwrap(),
        ],
        &url,
    );
    assert!(ok && stdout.contains("registered"), "{stderr}");
    let image = tmp.path().join("cat.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]))
        .save(&image)
        .unwrap();
    let (ok, stdout, stderr) = elite(
        &[
            "model",
            "test",
            "tiny-llava",
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "What is shown?",
            "--max-new-tokens",
            "4",
            "--json",
        ],
        &url,
    );
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["completion_tokens"], 4);
    assert!(report["prompt_tokens"].as_u64().unwrap() > 4);
    assert!(report["tokens_per_second"].as_f64().unwrap() > 0.0);

    // A remote model behind an OpenAI-compatible server; the key comes from the environment.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let server = axum::Router::new().route("/v1/chat/completions", post(fake_openai));
    tokio::spawn(async move { axum::serve(listener, server).await.unwrap() });
    let (ok, _, stderr) = elite(
        &[
            "model",
            "add",
            "remote",
            "--adapter",
            "openai",
            "--base-url",
            &base,
            "--model-id",
            "m",
            "--api-key-env",
            "ELITE_SECRET_TEST_KEY",
            "--price-in",
            "2",
            "--price-out",
            "10",
        ],
        &url,
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = elite(
        &["model", "test", "remote", "--prompt", "hello", "--json"],
        &url,
    );
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["text"], "echo: hello");
    let cost = report["cost"].as_f64().unwrap();
    assert!(
        (cost - (7.0 * 2.0 + 3.0 * 10.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );

    let (ok, stdout, _) = elite(&["model", "list", "--json"], &url);
    assert!(ok);
    let list: Value = serde_json::from_str(stdout.trim()).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["remote", "tiny-llava"]);
    assert!(!stdout.contains("sk-test-123"), "the key is never stored");

    let (ok, _, stderr) = elite(&["model", "add", "bad", "--adapter", "telepathy"], &url);
    assert!(!ok && stderr.contains("unknown adapter"), "{stderr}");
    let (ok, _, stderr) = elite(&["model", "add", "bad", "--adapter", "openai"], &url);
    assert!(!ok && stderr.to_lowercase().contains("base"), "{stderr}");
    let (ok, _, stderr) = elite(&["model", "test", "nobody", "--prompt", "hi"], &url);
    assert!(!ok && stderr.contains("no model named"), "{stderr}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    elite(
        &[
            "model",
            "add",
            "broken",
            "--adapter",
            "llava",
            "--path",
            empty.to_str().unwrap(),
        ],
        &url,
    );
    let (ok, _, stderr) = elite(&["model", "test", "broken", "--prompt", "hi"], &url);
    assert!(!ok && stderr.contains("config.json"), "{stderr}");
}

#[tokio::test]
async fn the_registry_api_and_page() {
    let app = TestApp::new().await;
    let admin = app.user("vic", Role::Admin).await;
    let token = app.token(&admin).await;
    let spec = r#"{"name": "judge <1>", "adapter": "openai", "base_url": "http://127.0.0.1:9/v1", "model_id": "gpt-4o",
                   "api_key_env": "ELITE_SECRET_OPENAI", "generation": {"temperature": 0.0}}"#;
    let created = app
        .send(api("POST", "/api/v1/models", Some(&token), Some(spec)))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    // A taken name is not silently repointed: the change is an explicit update.
    let again = app
        .send(api("POST", "/api/v1/models", Some(&token), Some(spec)))
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let changed = spec.replace("gpt-4o", "gpt-4o-mini");
    let updated = app
        .send(api(
            "PUT",
            "/api/v1/models/judge%20%3C1%3E",
            Some(&token),
            Some(&changed),
        ))
        .await;
    assert_eq!(updated.status(), StatusCode::OK);
    let revisions = body_json(
        app.send(api(
            "GET",
            "/api/v1/models/judge%20%3C1%3E/revisions",
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(revisions[0]["spec"]["model_id"], "gpt-4o");
    assert_eq!(revisions[0]["changed_by"], "vic");
    let invalid = app
        .send(api(
            "POST",
            "/api/v1/models",
            Some(&token),
            Some(r#"{"name": "x", "adapter": "openai"}"#),
        ))
        .await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let got = body_json(
        app.send(api(
            "GET",
            "/api/v1/models/judge%20%3C1%3E",
            Some(&token),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(got["spec"]["model_id"], "gpt-4o-mini");
    assert_eq!(app.count("models").await, 1);
    // Researchers use models but see neither endpoint nor secret name, and cannot register.
    let researcher = app.user("rae", Role::Researcher).await;
    let rtoken = app.token(&researcher).await;
    let seen = body_json(
        app.send(api(
            "GET",
            "/api/v1/models/judge%20%3C1%3E",
            Some(&rtoken),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(seen["spec"]["model_id"], "gpt-4o-mini");
    assert!(seen["spec"].get("base_url").is_none(), "{seen}");
    assert!(seen["spec"].get("api_key_env").is_none(), "{seen}");
    let refused = app
        .send(api("POST", "/api/v1/models", Some(&rtoken), Some(spec)))
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let browser = app.browser(&admin).await;
    let page = body_text(app.send(get("/safety/models", Some(&browser))).await).await;
    assert!(page.contains("judge &#60;1&#62;") || page.contains("judge &lt;1&gt;"));
    let dir = tempfile::tempdir().unwrap();
    let local = form_encode(dir.path().to_str().unwrap());
    let form_body = format!(
        "csrf_token={}&name=local-one&adapter=llava&local_path={local}&price_input_per_million=abc",
        browser.csrf
    );
    let response = app
        .send(form("/safety/models", Some(&browser), &form_body))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let form_body = format!(
        "csrf_token={}&name=local-one&adapter=llava&local_path={local}",
        browser.csrf
    );
    let response = app
        .send(form("/safety/models", Some(&browser), &form_body))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.count("models").await, 2);
}

fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
