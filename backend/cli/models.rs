//! `elite model ...`: register models, list them, make tiny test models, and ask a model one
//! question about one image (with tokens/s) to check it works.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;

use crate::inference::store;
use crate::inference::{ChatMessage, ChatRequest, GenerationSettings, ImageInput, load_model};

/// What `elite model test` prints.
#[derive(Debug, Serialize)]
pub struct TestReport {
    pub model: String,
    pub text: String,
    pub finish_reason: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub load_seconds: f64,
    pub generate_seconds: f64,
    pub tokens_per_second: f64,
    pub cost: Option<f64>,
}

impl TestReport {
    pub fn describe(&self) -> String {
        format!(
            "{}\n---\n{}: {} prompt + {} completion tokens, {:.1} tokens/s (loaded in {:.2} s, answered in {:.2} s, finish: {}){}",
            self.text,
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            self.tokens_per_second,
            self.load_seconds,
            self.generate_seconds,
            self.finish_reason,
            self.cost
                .map(|c| format!(", cost ${c:.6}"))
                .unwrap_or_default()
        )
    }
}

pub async fn test_model(
    pool: &PgPool,
    name: &str,
    image: Option<&Path>,
    prompt: &str,
    max_new_tokens: Option<usize>,
) -> anyhow::Result<TestReport> {
    let registered = store::get(pool, name).await?;
    let started = Instant::now();
    let model = load_model(
        &registered.spec,
        &crate::inference::device::select(registered.spec.device.as_deref())?,
    )
    .await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let message = match image {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read image {}: {e}", path.display()))?;
            ChatMessage::user_with_image(ImageInput::from_bytes(bytes), prompt)
        }
        None => ChatMessage::user(prompt),
    };
    let settings = GenerationSettings {
        max_new_tokens,
        ..GenerationSettings::default()
    };
    let started = Instant::now();
    let reply = model
        .generate(ChatRequest::new(vec![message]).with_settings(settings))
        .await?;
    let generate_seconds = started.elapsed().as_secs_f64();
    Ok(TestReport {
        model: name.to_string(),
        finish_reason: format!("{:?}", reply.finish_reason).to_lowercase(),
        prompt_tokens: reply.prompt_tokens,
        completion_tokens: reply.completion_tokens,
        tokens_per_second: reply.completion_tokens as f64 / reply.latency.as_secs_f64().max(1e-9),
        text: reply.text,
        load_seconds,
        generate_seconds,
        cost: reply.cost,
    })
}
