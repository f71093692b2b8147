//! The OpenAI-compatible adapter against an axum server on 127.0.0.1 that
//! can answer normally, 429, 500, slowly, with garbage or truncated JSON.
//! The server's behaviour is chosen by the first path segment of the base URL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use candle_core::Device;
use elite::inference::remote::{RemoteConfig, RemoteModel};
use elite::inference::{
    ChatMessage, ChatModel, ChatRequest, FinishReason, GenerationSettings, ImageInput,
    InferenceError, ModelSpec, Pricing, load_model,
};
use serde_json::{Value, json};

#[derive(Default)]
struct Server {
    hits: Mutex<HashMap<String, usize>>,
    bodies: Mutex<HashMap<String, Vec<Value>>>,
    auth: Mutex<HashMap<String, String>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

fn completion(text: &str) -> Value {
    json!({
        "id": "x", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    })
}

async fn handler(
    State(s): State<Arc<Server>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = {
        let mut h = s.hits.lock().unwrap();
        let e = h.entry(mode.clone()).or_default();
        *e += 1;
        *e
    };
    s.bodies
        .lock()
        .unwrap()
        .entry(mode.clone())
        .or_default()
        .push(body.clone());
    if let Some(a) = headers.get("authorization") {
        s.auth
            .lock()
            .unwrap()
            .insert(mode.clone(), a.to_str().unwrap_or("").to_string());
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let user_text = match &last["content"] {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<String>(),
        _ => String::new(),
    };
    match mode.as_str() {
        "ok" | "key" => Json(completion(&format!("echo: {user_text}"))).into_response(),
        "flaky429" if n <= 2 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "slow down",
        )
            .into_response(),
        "flaky500" if n <= 2 => (StatusCode::BAD_GATEWAY, "upstream hiccup").into_response(),
        "flakytrunc" if n <= 1 => {
            "{\"choices\": [{\"message\": {\"content\": \"hel".into_response()
        }
        "flaky429" | "flaky500" | "flakytrunc" => Json(completion("recovered")).into_response(),
        "always500" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "model crashed: CUDA out of memory",
        )
            .into_response(),
        "bad400" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "max_tokens is too large: 999999"}})),
        )
            .into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(completion("late")).into_response()
        }
        "garbage" => (StatusCode::OK, "<html>502 proxy error</html>").into_response(),
        "truncated" => "{\"choices\": [{\"message\": {\"content\": \"hel".into_response(),
        "concurrency" => {
            let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
            s.max_active.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(80)).await;
            s.active.fetch_sub(1, Ordering::SeqCst);
            Json(completion("ok")).into_response()
        }
        "rpm" => Json(completion("ok")).into_response(),
        "length" => Json(json!({
            "choices": [{"message": {"content": "cut"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}
        }))
        .into_response(),
        _ => (StatusCode::NOT_FOUND, "unknown mode").into_response(),
    }
}

async fn start() -> (String, Arc<Server>) {
    // The fake server listens on loopback, which a lab running vLLM locally allows.
    elite::inference::net::set_outbound_policy(
        elite::inference::net::OutboundPolicy::parse("127.0.0.0/8").unwrap(),
    );
    let state = Arc::new(Server::default());
    let app = axum::Router::new()
        .route("/{mode}/v1/chat/completions", post(handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (format!("http://{addr}"), state)
}

fn cfg(base: &str, mode: &str) -> RemoteConfig {
    RemoteConfig {
        name: mode.into(),
        base_url: format!("{base}/{mode}/v1"),
        model_id: "test-model".into(),
        timeout: Duration::from_secs(5),
        max_retries: 3,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..RemoteConfig::default()
    }
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10]));
    let mut c = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut c, image::ImageFormat::Png)
        .unwrap();
    c.into_inner()
}

fn req(text: &str) -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::user(text)])
}

#[tokio::test]
async fn answers_with_images_schema_and_cost() {
    let (base, server) = start().await;
    let mut c = cfg(&base, "ok");
    c.pricing = Pricing {
        input_per_million: Some(2.0),
        output_per_million: Some(10.0),
    };
    let m = RemoteModel::new(c).unwrap();
    let settings = GenerationSettings {
        max_new_tokens: Some(64),
        temperature: Some(0.0),
        seed: Some(1),
        stop: vec!["END".into()],
        json_schema: Some(json!({"type": "object", "properties": {"safe": {"type": "boolean"}}})),
        ..Default::default()
    };
    let r = ChatRequest::new(vec![
        ChatMessage::system("judge"),
        ChatMessage::user_with_image(ImageInput::from_bytes(png()), "Is this safe?"),
    ])
    .with_settings(settings);
    let reply = m.generate(r).await.unwrap();
    assert_eq!(reply.text, "echo: Is this safe?");
    assert_eq!(reply.finish_reason, FinishReason::Stop);
    assert_eq!((reply.prompt_tokens, reply.completion_tokens), (1000, 500));
    assert!((reply.cost.unwrap() - (1000.0 * 2.0 + 500.0 * 10.0) / 1e6).abs() < 1e-12);
    let body = server.bodies.lock().unwrap()["ok"][0].clone();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["stop"][0], "END");
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["properties"]["safe"]["type"],
        "boolean"
    );
    let url = body["messages"][1]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("data:image/png;base64,"));

    // A batch runs concurrently and keeps order.
    let replies = m.generate_batch(vec![req("a"), req("b"), req("c")]).await;
    let texts: Vec<_> = replies.into_iter().map(|r| r.unwrap().text).collect();
    assert_eq!(texts, ["echo: a", "echo: b", "echo: c"]);

    let l = RemoteModel::new(cfg(&base, "length")).unwrap();
    assert_eq!(
        l.generate(req("x")).await.unwrap().finish_reason,
        FinishReason::Length
    );
}

#[tokio::test]
async fn retries_429_5xx_and_truncation_then_succeeds() {
    let (base, server) = start().await;
    for mode in ["flaky429", "flaky500", "flakytrunc"] {
        let m = RemoteModel::new(cfg(&base, mode)).unwrap();
        let r = m.generate(req("x")).await.unwrap();
        assert_eq!(r.text, "recovered", "{mode}");
    }
    let hits = server.hits.lock().unwrap().clone();
    assert_eq!(hits["flaky429"], 3);
    assert_eq!(hits["flaky500"], 3);
    assert_eq!(hits["flakytrunc"], 2);
}

#[tokio::test]
async fn errors_say_what_the_server_answered() {
    let (base, server) = start().await;
    let e = RemoteModel::new(cfg(&base, "always500"))
        .unwrap()
        .generate(req("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, InferenceError::Http { status: 500, .. }), "{e}");
    assert!(e.to_string().contains("CUDA out of memory"), "{e}");
    assert_eq!(
        server.hits.lock().unwrap()["always500"],
        4,
        "1 try + 3 retries"
    );

    let e = RemoteModel::new(cfg(&base, "bad400"))
        .unwrap()
        .generate(req("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, InferenceError::Http { status: 400, .. }), "{e}");
    assert!(e.to_string().contains("max_tokens is too large"), "{e}");
    assert_eq!(
        server.hits.lock().unwrap()["bad400"],
        1,
        "4xx is not retried"
    );

    let e = RemoteModel::new(cfg(&base, "garbage"))
        .unwrap()
        .generate(req("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, InferenceError::BadResponse(_)), "{e}");
    assert!(e.to_string().contains("502 proxy error"), "{e}");

    let e = RemoteModel::new(cfg(&base, "truncated"))
        .unwrap()
        .generate(req("x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    let mut c = cfg(&base, "slow");
    c.timeout = Duration::from_millis(200);
    c.max_retries = 1;
    let t0 = Instant::now();
    let e = RemoteModel::new(c)
        .unwrap()
        .generate(req("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, InferenceError::Timeout(_)), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));

    // Server down: a port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = cfg(&format!("http://127.0.0.1:{port}"), "ok");
    c.max_retries = 1;
    let e = RemoteModel::new(c)
        .unwrap()
        .generate(req("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, InferenceError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");

    // A bad image fails its own request only.
    let m = RemoteModel::new(cfg(&base, "ok")).unwrap();
    let bad = ChatRequest::new(vec![ChatMessage::user_with_image(
        ImageInput::from_bytes(b"nope".to_vec()),
        "x",
    )]);
    let out = m.generate_batch(vec![req("a"), bad, req("c")]).await;
    assert!(out[0].is_ok() && out[2].is_ok());
    assert!(matches!(out[1], Err(InferenceError::Image(_))));
}

#[tokio::test]
async fn limits_in_flight_and_rate() {
    let (base, server) = start().await;
    let mut c = cfg(&base, "concurrency");
    c.max_in_flight = 2;
    let m = RemoteModel::new(c).unwrap();
    let out = m
        .generate_batch((0..6).map(|i| req(&i.to_string())).collect())
        .await;
    assert!(out.iter().all(|r| r.is_ok()));
    assert!(server.max_active.load(Ordering::SeqCst) <= 2);
    assert_eq!(server.max_active.load(Ordering::SeqCst), 2);

    let mut c = cfg(&base, "rpm");
    c.requests_per_minute = Some(600); // one start every 100 ms
    let m = RemoteModel::new(c).unwrap();
    let t0 = Instant::now();
    let out = m
        .generate_batch((0..4).map(|i| req(&i.to_string())).collect())
        .await;
    assert!(out.iter().all(|r| r.is_ok()));
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn registry_builds_remote_with_api_key_from_env() {
    let (base, server) = start().await;
    let mut spec = ModelSpec::remote("gpt", format!("{base}/key/v1"), "gpt-test");
    spec.api_key_env = Some("ELITE_SECRET_TEST_REMOTE_KEY".into());
    spec.timeout_secs = Some(5.0);
    spec.generation.max_new_tokens = Some(7);
    let e = load_model(&spec, &Device::Cpu).await.err().unwrap();
    assert!(
        matches!(e, InferenceError::MissingApiKey(ref v) if v == "ELITE_SECRET_TEST_REMOTE_KEY"),
        "{e}"
    );
    // SAFETY: only this test touches this variable.
    unsafe { std::env::set_var("ELITE_SECRET_TEST_REMOTE_KEY", "sk-test-123") };
    let m = load_model(&spec, &Device::Cpu).await.unwrap();
    assert_eq!(m.generate(req("hi")).await.unwrap().text, "echo: hi");
    assert_eq!(server.auth.lock().unwrap()["key"], "Bearer sk-test-123");
    assert_eq!(server.bodies.lock().unwrap()["key"][0]["max_tokens"], 7);
    // The key is not part of the stored spec.
    assert!(!serde_json::to_string(&spec).unwrap().contains("sk-test"));
}
