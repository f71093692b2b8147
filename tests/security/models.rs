//! Findings 1 and 2: secrets and SSRF through model registration, and model takeover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use elite::accounts::Role;
use elite::inference::net::{OutboundPolicy, set_outbound_policy};
use elite::inference::{ChatMessage, ChatRequest, ModelSpec, load_model};
use serde_json::json;

use crate::common::*;

/// This binary's policy: only 127.0.0.2 (where the tests' honest model servers listen) is
/// allowed; 127.0.0.1 stands for the internal network.
fn policy() {
    set_outbound_policy(OutboundPolicy::parse("127.0.0.2/32").unwrap());
}

/// A server on `ip` that counts requests and answers every chat completion with `status` and
/// `body`, recording the Authorization header it saw.
async fn counting_server(
    ip: &str,
    status: StatusCode,
    body: String,
) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, a) = (hits.clone(), auth.clone());
    let router = Router::new().fallback(move |headers: HeaderMap| {
        let (h, a, body) = (h.clone(), a.clone(), body.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            if let Some(v) = headers.get("authorization") {
                a.lock().unwrap().push(v.to_str().unwrap_or("").to_string());
            }
            (status, body)
        }
    });
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/v1"), hits, auth)
}

fn ask() -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::user("hello")])
}

#[tokio::test]
async fn a_researcher_cannot_register_or_repoint_models() {
    policy();
    let app = TestApp::with_config(test_config()).await;
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let mallory = app.user("mallory", Role::Researcher).await;
    let token = app.token(&mallory).await;
    let judge = json!({"name": "judge", "adapter": "openai", "base_url": "https://api.example.com/v1",
                       "model_id": "gpt-4o", "api_key_env": "ELITE_SECRET_OPENAI"});
    let created = app
        .send(api(
            "POST",
            "/api/v1/models",
            Some(&admin_token),
            Some(&judge.to_string()),
        ))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let before = table_counts(&app.pool).await;

    // Finding 1: a researcher names any server variable and any URL.
    let stolen = json!({"name": "mine", "adapter": "openai", "base_url": "http://127.0.0.1:9/v1",
                        "model_id": "x", "api_key_env": "AWS_SECRET_ACCESS_KEY"});
    // Finding 2: a researcher repoints the admin's judge.
    let takeover = json!({"name": "judge", "adapter": "openai", "base_url": "https://evil.example/v1",
                          "model_id": "x"});
    for body in [&stolen, &takeover] {
        let response = app
            .send(api(
                "POST",
                "/api/v1/models",
                Some(&token),
                Some(&body.to_string()),
            ))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let response = app
            .send(api(
                "PUT",
                "/api/v1/models/judge",
                Some(&token),
                Some(&body.to_string()),
            ))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    // Even an admin cannot repoint a name by registering it again.
    let again = app
        .send(api(
            "POST",
            "/api/v1/models",
            Some(&admin_token),
            Some(&takeover.to_string()),
        ))
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(table_counts(&app.pool).await, before);
    let stored = elite::inference::store::get(&app.pool, "judge")
        .await
        .unwrap();
    assert_eq!(
        stored.spec.base_url.as_deref(),
        Some("https://api.example.com/v1")
    );
}

#[tokio::test]
async fn secrets_and_internal_addresses_are_refused_at_registration() {
    policy();
    let app = TestApp::with_config(test_config()).await;
    let admin = app.user("root", Role::Admin).await;
    let token = app.token(&admin).await;
    let before = table_counts(&app.pool).await;
    for (spec, why) in [
        (
            json!({"name": "a", "adapter": "openai", "base_url": "https://api.example.com/v1",
                   "model_id": "x", "api_key_env": "AWS_SECRET_ACCESS_KEY"}),
            "not an allowed secret name",
        ),
        (
            json!({"name": "b", "adapter": "openai", "base_url": "http://127.0.0.1:8000/v1", "model_id": "x"}),
            "not allowed",
        ),
        (
            json!({"name": "c", "adapter": "openai", "base_url": "http://169.254.169.254/latest", "model_id": "x"}),
            "not allowed",
        ),
        (
            json!({"name": "d", "adapter": "openai", "base_url": "http://[::ffff:10.0.0.1]/v1", "model_id": "x"}),
            "not allowed",
        ),
    ] {
        let response = app
            .send(api(
                "POST",
                "/api/v1/models",
                Some(&token),
                Some(&spec.to_string()),
            ))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spec}"
        );
        let text = body_text(response).await;
        assert!(text.contains(why), "{text}");
    }
    assert_eq!(table_counts(&app.pool).await, before);
}

#[tokio::test]
async fn no_request_reaches_a_refused_address_and_no_secret_leaves() {
    policy();
    // The "internal service" on 127.0.0.1 would answer with its secrets.
    let (internal, hits, auth) = counting_server(
        "127.0.0.1",
        StatusCode::OK,
        "internal-admin-console root:secret".into(),
    )
    .await;
    let port = internal
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    // A host name that resolves to loopback passes registration (names are checked when they
    // resolve) but the request is never sent.
    let by_name = ModelSpec::remote("n", format!("http://localhost:{port}/v1"), "x");
    let model = load_model(&by_name, &candle_core::Device::Cpu)
        .await
        .unwrap();
    let error = model.generate(ask()).await.unwrap_err().to_string();
    assert!(error.contains("outbound policy"), "{error}");
    assert!(!error.contains("root:secret"), "{error}");
    // A literal address is refused before any client is built.
    let literal = ModelSpec::remote("l", internal.clone(), "x");
    assert!(
        load_model(&literal, &candle_core::Device::Cpu)
            .await
            .is_err()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // A secret outside the allowed names is never read, even from a spec stored earlier.
    let mut secret = ModelSpec::remote("s", "http://127.0.0.2:9/v1", "x");
    secret.api_key_env = Some("PATH".into());
    let error = load_model(&secret, &candle_core::Device::Cpu)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("not an allowed secret name"), "{error}");
    assert!(auth.lock().unwrap().is_empty());
}

#[tokio::test]
async fn remote_errors_quote_only_a_short_clean_excerpt() {
    policy();
    let long = format!(
        "upstream failure\n\u{1b}[2J{}",
        "internal-stack-frame ".repeat(500)
    );
    let (base, hits, _) = counting_server("127.0.0.2", StatusCode::BAD_REQUEST, long.clone()).await;
    let spec = ModelSpec::remote("e", base, "x");
    let model = load_model(&spec, &candle_core::Device::Cpu).await.unwrap();
    let error = model.generate(ask()).await.unwrap_err().to_string();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(error.contains("upstream failure"), "{error}");
    assert!(
        error.chars().count() < 320,
        "{} chars: {error}",
        error.len()
    );
    assert!(!error.chars().any(|c| c.is_control()), "{error:?}");
}

#[tokio::test]
async fn runs_keep_the_model_spec_they_started_with() {
    policy();
    let app = TestApp::with_config(test_config()).await;
    let admin = app.user("root", Role::Admin).await;
    let token = app.token(&admin).await;
    let spec = json!({"name": "target", "adapter": "openai", "base_url": "https://a.example/v1", "model_id": "v1"});
    let created = app
        .send(api(
            "POST",
            "/api/v1/models",
            Some(&token),
            Some(&spec.to_string()),
        ))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let benchmark = crate::bounds::small_benchmark(&app).await;
    let run = app
        .send(api(
            "POST",
            "/api/v1/runs",
            Some(&token),
            Some(&json!({"model": "target", "benchmark_id": benchmark}).to_string()),
        ))
        .await;
    assert_eq!(
        run.status(),
        StatusCode::ACCEPTED,
        "{}",
        body_text(run).await
    );
    let changed = json!({"name": "target", "adapter": "openai", "base_url": "https://b.example/v1", "model_id": "v2"});
    let updated = app
        .send(api(
            "PUT",
            "/api/v1/models/target",
            Some(&token),
            Some(&changed.to_string()),
        ))
        .await;
    assert_eq!(updated.status(), StatusCode::OK);
    let snapshot: serde_json::Value =
        sqlx::query_scalar("SELECT model_specs -> 'target' FROM runs ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(snapshot["model_id"], "v1");
    assert_eq!(snapshot["base_url"], "https://a.example/v1");
    let revisions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_revisions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(revisions, 1);
}
