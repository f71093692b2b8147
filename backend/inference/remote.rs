//! Remote adapter for the OpenAI chat-completions wire format (vLLM,
//! SGLang, TGI, Ollama, OpenAI and compatible servers).
//!
//! Images travel as base64 `data:` URLs; a requested JSON schema becomes
//! `response_format: {type: "json_schema", ...}`. The API key comes from the
//! environment variable named in the spec, read when the model is built.
//! Each model has a semaphore for its maximum in-flight requests and a
//! pacing limiter for requests per minute. Failed attempts on 408, 429, 5xx,
//! timeouts, connection errors and truncated bodies are retried with
//! exponential backoff plus jitter, honouring `Retry-After` (seconds or an
//! HTTP date). Errors quote at most a short, sanitised excerpt of the server's
//! answer; where requests may go and which secrets they may carry is [`super::net`]'s policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

use super::{
    AdapterKind, ChatModel, ChatReply, ChatRequest, ContentPart, FinishReason, GenerationSettings,
    ImageInput, InferenceError, ModelInfo, Pricing, Role,
};

/// Connection settings of a remote model.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Registry name.
    pub name: String,
    /// Base URL; `/chat/completions` is appended (e.g. `http://host:8000/v1`).
    pub base_url: String,
    /// Model id sent in the request body.
    pub model_id: String,
    /// Environment variable with the API key (sent as a Bearer token).
    pub api_key_env: Option<String>,
    /// Concurrent requests.
    pub max_in_flight: usize,
    /// Requests started per minute.
    pub requests_per_minute: Option<u32>,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay (doubled each retry, with jitter).
    pub backoff_base: Duration,
    /// Longest wait between attempts (also caps `Retry-After`).
    pub backoff_max: Duration,
    /// Generation defaults merged under every request.
    pub defaults: GenerationSettings,
    /// Prices for the cost field.
    pub pricing: Pricing,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            base_url: String::new(),
            model_id: String::new(),
            api_key_env: None,
            max_in_flight: 8,
            requests_per_minute: None,
            timeout: Duration::from_secs(120),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            defaults: GenerationSettings::default(),
            pricing: Pricing::default(),
        }
    }
}

/// A model served over HTTP.
pub struct RemoteModel {
    cfg: RemoteConfig,
    info: ModelInfo,
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    in_flight: Arc<Semaphore>,
    next_slot: Mutex<Instant>,
}

impl RemoteModel {
    /// Builds the client; fails if the API key variable is named but unset.
    pub fn new(cfg: RemoteConfig) -> Result<Self, InferenceError> {
        let policy = super::net::outbound_policy();
        policy.check_url(&cfg.base_url)?;
        let api_key = match &cfg.api_key_env {
            Some(var) if !super::net::secret_allowed(var) => {
                return Err(InferenceError::InvalidSpec(format!(
                    "api_key_env {var:?} is not an allowed secret name (use {}* or a name listed in {})",
                    super::net::SECRET_PREFIX,
                    super::net::ALLOWED_SECRETS_ENV
                )));
            }
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => return Err(InferenceError::MissingApiKey(var.clone())),
            },
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(Duration::from_secs(30)))
            // The checked address must be the one connected to: no proxies from the
            // environment, no redirects to elsewhere, every resolved address vetted.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(super::net::GuardedResolver::new(policy)))
            .build()
            .map_err(|e| InferenceError::Internal(format!("cannot build HTTP client: {e}")))?;
        let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
        let info = ModelInfo {
            name: cfg.name.clone(),
            adapter: AdapterKind::OpenAi,
            accepts_images: true,
            context_length: None,
        };
        Ok(Self {
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            next_slot: Mutex::new(Instant::now()),
            cfg,
            info,
            client,
            url,
            api_key,
        })
    }

    /// Waits for a requests-per-minute slot (evenly spaced starts).
    async fn pace(&self) {
        let Some(rpm) = self.cfg.requests_per_minute else {
            return;
        };
        let interval = Duration::from_secs_f64(60.0 / f64::from(rpm.max(1)));
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(self.cfg.backoff_max);
        }
        let exp = self.cfg.backoff_base.as_secs_f64() * 2f64.powi(attempt.min(20) as i32);
        let capped = exp.min(self.cfg.backoff_max.as_secs_f64());
        let jitter = rand::rng().random_range(0.5..1.0);
        Duration::from_secs_f64(capped * jitter)
    }

    async fn one(&self, request: ChatRequest) -> Result<ChatReply, InferenceError> {
        let settings = request.settings.merged_over(&self.cfg.defaults);
        settings.validate()?;
        let body = build_body(&self.cfg.model_id, &request, &settings)?;
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| InferenceError::Internal("request limiter closed".into()))?;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            self.pace().await;
            let (result, retry_after) = self.attempt(&body).await;
            match result {
                Ok(v) => {
                    let mut reply = parse_reply(&v)?;
                    reply.latency = started.elapsed();
                    reply.cost = self
                        .cfg
                        .pricing
                        .cost(reply.prompt_tokens, reply.completion_tokens);
                    return Ok(reply);
                }
                Err(e) if e.is_retryable() && attempt < self.cfg.max_retries => {
                    let wait = self.backoff(attempt, retry_after);
                    tracing::warn!(model = %self.cfg.name, attempt, ?wait, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One HTTP attempt: the parsed JSON body or an error, plus `Retry-After`.
    async fn attempt(&self, body: &Value) -> (Result<Value, InferenceError>, Option<Duration>) {
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.cfg.timeout)
            .json(body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return (Err(self.transport(e)), None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return (Err(self.transport(e)), retry_after),
        };
        if !status.is_success() {
            return (
                Err(InferenceError::Http {
                    status: status.as_u16(),
                    body: snippet(&text),
                }),
                retry_after,
            );
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => (Ok(v), None),
            Err(e) if e.is_eof() => (
                Err(InferenceError::Connect {
                    url: self.url.clone(),
                    message: format!(
                        "truncated response body ({} bytes): {}",
                        text.len(),
                        snippet(&text)
                    ),
                }),
                None,
            ),
            Err(e) => (
                Err(InferenceError::BadResponse(format!(
                    "not JSON ({e}): {}",
                    snippet(&text)
                ))),
                None,
            ),
        }
    }

    fn transport(&self, e: reqwest::Error) -> InferenceError {
        if e.is_timeout() {
            InferenceError::Timeout(self.cfg.timeout)
        } else {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            if msg.contains("outbound policy") {
                // Refused by this server's own policy: asking again cannot help.
                return InferenceError::InvalidSpec(msg);
            }
            InferenceError::Connect {
                url: self.url.clone(),
                message: msg,
            }
        }
    }
}

fn snippet(text: &str) -> String {
    super::net::excerpt(text)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let when = httpdate(v)?;
    let now = std::time::SystemTime::now();
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

fn image_data_url(img: &ImageInput) -> Result<String, InferenceError> {
    let engine = base64::engine::general_purpose::STANDARD;
    match img {
        ImageInput::Bytes(bytes) => {
            // Validate (format, size limits) without keeping the decoded image.
            img.decode()?;
            let mime = match image::guess_format(bytes) {
                Ok(image::ImageFormat::Png) => "image/png",
                Ok(image::ImageFormat::Jpeg) => "image/jpeg",
                Ok(image::ImageFormat::WebP) => "image/webp",
                Ok(image::ImageFormat::Gif) => "image/gif",
                Ok(image::ImageFormat::Bmp) => "image/bmp",
                _ => return Err(InferenceError::Image("unrecognised image format".into())),
            };
            Ok(format!("data:{mime};base64,{}", engine.encode(bytes)))
        }
        ImageInput::Decoded(_) => {
            let img = img.decode()?;
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, image::ImageFormat::Png)
                .map_err(|e| InferenceError::Image(format!("cannot encode image as PNG: {e}")))?;
            Ok(format!(
                "data:image/png;base64,{}",
                engine.encode(buf.into_inner())
            ))
        }
    }
}

/// The chat-completions request body.
pub fn build_body(
    model_id: &str,
    request: &ChatRequest,
    settings: &GenerationSettings,
) -> Result<Value, InferenceError> {
    if request.messages.is_empty() {
        return Err(InferenceError::InvalidRequest(
            "request has no messages".into(),
        ));
    }
    let mut messages = Vec::new();
    for m in &request.messages {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let has_image = m.content.iter().any(|p| matches!(p, ContentPart::Image(_)));
        let content = if has_image {
            let parts = m
                .content
                .iter()
                .map(|p| {
                    Ok(match p {
                        ContentPart::Text(t) => json!({"type": "text", "text": t}),
                        ContentPart::Image(img) => {
                            json!({"type": "image_url", "image_url": {"url": image_data_url(img)?}})
                        }
                    })
                })
                .collect::<Result<Vec<_>, InferenceError>>()?;
            Value::Array(parts)
        } else {
            Value::String(m.text_content())
        };
        messages.push(json!({"role": role, "content": content}));
    }
    let mut body = json!({
        "model": model_id,
        "messages": messages,
        "max_tokens": settings.max_new_tokens_or_default(),
        "stream": false,
    });
    let o = body.as_object_mut().expect("object literal");
    if let Some(t) = settings.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = settings.top_p {
        o.insert("top_p".into(), json!(p));
    }
    if let Some(s) = settings.seed {
        o.insert("seed".into(), json!(s));
    }
    if settings.ignore_eos {
        o.insert("ignore_eos".into(), json!(true));
    }
    if !settings.stop.is_empty() {
        o.insert("stop".into(), json!(settings.stop));
    }
    if let Some(schema) = &settings.json_schema {
        o.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": true}}),
        );
    }
    Ok(body)
}

/// Reads a chat-completions response body.
pub fn parse_reply(v: &Value) -> Result<ChatReply, InferenceError> {
    let bad = |m: &str| InferenceError::BadResponse(format!("{m}: {}", snippet(&v.to_string())));
    if let Some(err) = v.get("error") {
        return Err(InferenceError::BadResponse(format!(
            "server reported an error: {err}"
        )));
    }
    let choice = v
        .get("choices")
        .and_then(|c| c.as_array())
        .and_then(|c| c.first())
        .ok_or_else(|| bad("no choices in response"))?;
    let message = choice
        .get("message")
        .ok_or_else(|| bad("choice has no message"))?;
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        Some(_) => return Err(bad("message content is not text")),
    };
    let finish_reason = match choice.get("finish_reason").and_then(|f| f.as_str()) {
        Some("stop") | Some("eos") | Some("stop_sequence") => FinishReason::Stop,
        Some("length") | Some("max_tokens") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    };
    let usage = v.get("usage");
    let count = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(|x| x.as_u64())
            .unwrap_or(0) as usize
    };
    Ok(ChatReply {
        text,
        finish_reason,
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        latency: Duration::ZERO,
        prefill_latency: None,
        cost: None,
        token_ids: None,
    })
}

#[async_trait]
impl ChatModel for RemoteModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    async fn generate_batch(
        &self,
        requests: Vec<ChatRequest>,
    ) -> Vec<Result<ChatReply, InferenceError>> {
        futures::future::join_all(requests.into_iter().map(|r| self.one(r))).await
    }

    fn generate_each(
        &self,
        requests: Vec<ChatRequest>,
    ) -> futures::stream::BoxStream<'_, (usize, Result<ChatReply, InferenceError>)> {
        use futures::StreamExt;
        requests
            .into_iter()
            .enumerate()
            .map(|(index, request)| async move { (index, self.one(request).await) })
            .collect::<futures::stream::FuturesUnordered<_>>()
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_formats() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let t = httpdate("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn body_has_schema_and_images() {
        let png = {
            let img = image::RgbImage::from_pixel(2, 2, image::Rgb([1, 2, 3]));
            let mut c = std::io::Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(img)
                .write_to(&mut c, image::ImageFormat::Png)
                .unwrap();
            c.into_inner()
        };
        let req = ChatRequest::new(vec![
            super::super::ChatMessage::system("be safe"),
            super::super::ChatMessage::user_with_image(ImageInput::from_bytes(png), "what?"),
        ]);
        let s = GenerationSettings {
            json_schema: Some(json!({"type": "object"})),
            seed: Some(3),
            ..Default::default()
        };
        let b = build_body("m", &req, &s).unwrap();
        assert_eq!(b["messages"][0]["content"], "be safe");
        let url = b["messages"][1]["content"][0]["image_url"]["url"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("data:image/png;base64,"));
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["seed"], 3);
    }
}
