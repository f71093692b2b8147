//! Model inference: one async interface over local (candle) and remote
//! (OpenAI-compatible) vision-language models.
//!
//! # Interface
//!
//! A [`ChatRequest`] is a list of [`ChatMessage`]s whose content is text and
//! images ([`ImageInput`]: a decoded [`image::DynamicImage`] or encoded bytes),
//! plus [`GenerationSettings`] (max new tokens, temperature, top-p, seed, stop
//! strings, optional JSON schema). A [`ChatReply`] carries the text, the
//! [`FinishReason`], prompt/completion token counts, latency and, when prices
//! are configured, the cost. Every adapter implements [`ChatModel`];
//! [`ChatModel::generate_batch`] is the primary entry point: local models
//! batch requests, remote adapters run them concurrently. One bad request in a
//! batch yields an `Err` in its slot and never prevents the others.
//!
//! # Adapters
//!
//! * [`local`]: candle-transformers 0.11 models loaded from a directory
//!   (`config.json`, `tokenizer.json`, `*.safetensors` shards, optional
//!   `preprocessor_config.json` / `generation_config.json`). CPU by default,
//!   CUDA with the `cuda` feature. Families:
//!   - **Qwen3-VL** (`qwen3_vl`): our own implementation on candle-nn
//!     (`local::qwen3_vl`; candle's model uses 1-D RoPE and no causal mask in the
//!     prefill): vision tower with resampled learned positions and 2-D RoPE,
//!     interleaved multimodal RoPE, DeepStack, dynamic resolution, several
//!     images per request, left-padded batches.
//!   - **LLaVA-1.5 and LLaVA-NeXT** (`llava`, HF `llava-hf/*` layout; candle
//!     CLIP vision tower + projector + Llama). The adapter drives candle's
//!     public building blocks itself: candle's own `LLaVA` wrapper only handles
//!     batch size 1, requires `image_newline` (absent in 1.5) and selects the
//!     CLIP layer one off from HF. LLaVA-NeXT "anyres" tiling with unpadding
//!     and newline tokens is implemented; multiple images per request work.
//!     The text model must be Llama-compatible (Vicuna, Mistral without
//!     sliding window).
//!   - **Pixtral** (`pixtral`, HF `llava` layout with a `pixtral` vision
//!     tower and a Mistral text model, e.g. `mistral-community/pixtral-12b`;
//!     `local` detects it from `vision_config.model_type`). Our own vision
//!     tower on candle-nn (2-D RoPE ViT over each image's own patch grid;
//!     candle's `models::pixtral` differs from transformers in ways that
//!     matter, see the module) + projector + the shared Llama/Mistral decoder
//!     with padded batches. Images keep their aspect ratio (longest edge
//!     capped, sides rounded up to whole patches) and become `[IMG]` rows
//!     ended by `[IMG_BREAK]` / `[IMG_END]`; multiple images per request work.
//!   - **InternVL 2.5 / 3 / 3.5** (`internvl`, the transformers layout of the
//!     OpenGVLab `*-hf` checkpoints). Our own InternViT on candle-nn (LayerNorm or
//!     RMSNorm layers, optional query/key norm, per-channel layer scales), dynamic
//!     tiling with a thumbnail, pixel-shuffle downsampling and the MLP projector,
//!     on the shared decoder in its Qwen2, Qwen3 or Llama form.
//!   - **PaliGemma (1)** (`paligemma`, candle SigLIP + the shared decoder in
//!     its Gemma form, with PaliGemma's prefix-LM attention). The adapter
//!     scales image features like HF (`/ sqrt(hidden)`) rather than candle's
//!     L2 normalisation. One image per request (or none). PaliGemma 2
//!     (Gemma-2 text model) is reported as an unsupported config.
//!   - **Qwen3** text-only LLM (`qwen3`), intended as a local judge. Also
//!     loads a GGUF file (candle `quantized_qwen3`) when the path ends in
//!     `.gguf` (with `tokenizer.json` beside it). The chat template disables
//!     thinking (empty `<think>` block), as Qwen recommends for non-thinking
//!     use.
//!
//!   Batching: every family's language model is the shared decoder of
//!   `local::llama`, which takes left-padded batches with an attention mask,
//!   so requests of any prompt length share one forward pass (up to
//!   `MAX_BATCH` rows) and finished rows leave the batch. The exceptions are
//!   Qwen3 from a GGUF file and Qwen3 configs with attention biases, which
//!   run on candle-transformers' models: requests of equal prompt length
//!   share a pass, the others run one after another. Generation
//!   runs on a blocking thread (`spawn_blocking`), one batch at a time per
//!   model. Local models do not constrain decoding to a JSON schema; when a
//!   schema is requested, the adapter appends an instruction with the schema
//!   to the last user message.
//! * [`remote`]: the OpenAI chat-completions wire format (vLLM, SGLang, TGI,
//!   Ollama, OpenAI, ...) over reqwest, with images as base64 data URLs,
//!   `response_format` json_schema, API key from an environment variable,
//!   per-model concurrency and requests-per-minute limits, retries with
//!   exponential backoff, jitter and `Retry-After`, per-request timeouts.
//!
//! # Registry
//!
//! [`registry::ModelSpec`] describes a model (it is stored as JSON by the
//! caller); [`registry::load_model`] builds the adapter. `hf:org/name` model
//! references resolve through the local Hugging Face cache and, when online,
//! the `hf-hub` crate.
//!
//! # Tiny models
//!
//! [`tiny::make_tiny_model`] writes a random-weight model directory for each
//! family (config, generated byte-level `tokenizer.json`, safetensors) that
//! loads through the same code path as real checkpoints.

pub mod device;
pub mod local;
pub mod net;
pub mod registry;
pub mod remote;
pub mod store;
pub mod tiny;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use registry::{AdapterKind, ModelSpec, load_model};
pub use tiny::make_tiny_model;

/// Largest accepted encoded image, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;
/// Largest accepted image side, in pixels (decoded or declared in the header).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest accepted image area, in pixels.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The evaluator / end user.
    User,
    /// A previous model answer.
    Assistant,
}

/// An image attached to a message.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// An already decoded image.
    Decoded(Arc<image::DynamicImage>),
    /// Encoded bytes (PNG, JPEG, WebP, GIF or BMP).
    Bytes(Arc<[u8]>),
}

impl ImageInput {
    /// Wraps encoded image bytes.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Bytes(Arc::from(bytes.into()))
    }

    /// Wraps a decoded image.
    pub fn from_image(img: image::DynamicImage) -> Self {
        Self::Decoded(Arc::new(img))
    }

    /// Decodes (if needed) and validates the image against the size limits.
    pub fn decode(&self) -> Result<Arc<image::DynamicImage>, InferenceError> {
        match self {
            Self::Decoded(img) => {
                check_dimensions(img.width(), img.height())?;
                Ok(img.clone())
            }
            Self::Bytes(bytes) => {
                if bytes.len() > MAX_IMAGE_BYTES {
                    return Err(InferenceError::ImageTooLarge(format!(
                        "{} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes",
                        bytes.len()
                    )));
                }
                let reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
                    .with_guessed_format()
                    .map_err(|e| InferenceError::Image(format!("cannot read image: {e}")))?;
                if reader.format().is_none() {
                    return Err(InferenceError::Image(
                        "unrecognised image format (expected PNG, JPEG, WebP, GIF or BMP)".into(),
                    ));
                }
                let (w, h) = reader
                    .into_dimensions()
                    .map_err(|e| InferenceError::Image(format!("cannot read image header: {e}")))?;
                check_dimensions(w, h)?;
                let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
                    .with_guessed_format()
                    .map_err(|e| InferenceError::Image(format!("cannot read image: {e}")))?;
                let mut limits = image::Limits::default();
                limits.max_image_width = Some(MAX_IMAGE_SIDE);
                limits.max_image_height = Some(MAX_IMAGE_SIDE);
                limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8);
                reader.limits(limits);
                let img = reader
                    .decode()
                    .map_err(|e| InferenceError::Image(format!("cannot decode image: {e}")))?;
                Ok(Arc::new(img))
            }
        }
    }
}

fn check_dimensions(w: u32, h: u32) -> Result<(), InferenceError> {
    if w == 0 || h == 0 {
        return Err(InferenceError::Image(format!(
            "image has an empty size {w}x{h}"
        )));
    }
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(InferenceError::ImageTooLarge(format!(
            "{w}x{h} exceeds the limit of {MAX_IMAGE_SIDE} pixels per side / {MAX_IMAGE_PIXELS} pixels"
        )));
    }
    Ok(())
}

/// One piece of message content.
#[derive(Debug, Clone)]
pub enum ContentPart {
    /// Plain text.
    Text(String),
    /// An image.
    Image(ImageInput),
}

/// A chat message.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// Ordered text and image parts.
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    /// A text-only message.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![ContentPart::Text(text.into())],
        }
    }

    /// A system message.
    pub fn system(text: impl Into<String>) -> Self {
        Self::text(Role::System, text)
    }

    /// A user message with text only.
    pub fn user(text: impl Into<String>) -> Self {
        Self::text(Role::User, text)
    }

    /// A user message with one image followed by text.
    pub fn user_with_image(image: ImageInput, text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![ContentPart::Image(image), ContentPart::Text(text.into())],
        }
    }

    /// A user message with text followed by one image (the order the ELITE judge expects).
    pub fn user_text_then_image(text: impl Into<String>, image: ImageInput) -> Self {
        Self {
            role: Role::User,
            content: vec![ContentPart::Text(text.into()), ContentPart::Image(image)],
        }
    }

    /// An assistant message.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text(Role::Assistant, text)
    }

    /// The concatenated text parts.
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text(t) => Some(t.as_str()),
                ContentPart::Image(_) => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }
}

/// Decoding settings. Every field is optional so that a model's defaults
/// (from its [`ModelSpec`]) can be overridden field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationSettings {
    /// Maximum number of generated tokens (default 256).
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; `0` or unset means greedy decoding.
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold in (0, 1].
    pub top_p: Option<f64>,
    /// Seed of the sampler (local) or the `seed` request field (remote).
    pub seed: Option<u64>,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// A JSON schema the answer must follow (structured output).
    pub json_schema: Option<serde_json::Value>,
    /// Keep generating past end-of-sequence tokens (benchmarks; sent as
    /// vLLM's `ignore_eos` to remote servers).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
}

/// Largest `max_new_tokens` a request or spec may ask for.
pub const MAX_NEW_TOKENS_LIMIT: usize = 32_768;
/// Largest sampling temperature (the OpenAI API's own bound).
pub const MAX_TEMPERATURE: f64 = 2.0;

/// Default `max_new_tokens` when neither the request nor the model sets it.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

impl GenerationSettings {
    /// Fields set in `self` win; unset ones come from `defaults`. Stop strings
    /// are the union of both.
    pub fn merged_over(&self, defaults: &GenerationSettings) -> GenerationSettings {
        let mut stop = defaults.stop.clone();
        for s in &self.stop {
            if !stop.contains(s) {
                stop.push(s.clone());
            }
        }
        GenerationSettings {
            max_new_tokens: self.max_new_tokens.or(defaults.max_new_tokens),
            temperature: self.temperature.or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p),
            seed: self.seed.or(defaults.seed),
            stop,
            json_schema: self
                .json_schema
                .clone()
                .or_else(|| defaults.json_schema.clone()),
            ignore_eos: self.ignore_eos || defaults.ignore_eos,
        }
    }

    /// `max_new_tokens` or [`DEFAULT_MAX_NEW_TOKENS`].
    pub fn max_new_tokens_or_default(&self) -> usize {
        self.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS)
    }

    /// Checks the ranges of the numeric fields.
    pub fn validate(&self) -> Result<(), InferenceError> {
        if let Some(t) = self.temperature
            && (!t.is_finite() || t < 0.0)
        {
            return Err(InferenceError::InvalidRequest(format!(
                "temperature must be a finite number >= 0, got {t}"
            )));
        }
        if let Some(p) = self.top_p
            && (!p.is_finite() || p <= 0.0 || p > 1.0)
        {
            return Err(InferenceError::InvalidRequest(format!(
                "top_p must be in (0, 1], got {p}"
            )));
        }
        if let Some(t) = self.temperature
            && t > MAX_TEMPERATURE
        {
            return Err(InferenceError::InvalidRequest(format!(
                "temperature must be at most {MAX_TEMPERATURE}, got {t}"
            )));
        }
        if let Some(n) = self.max_new_tokens
            && !(1..=MAX_NEW_TOKENS_LIMIT).contains(&n)
        {
            return Err(InferenceError::InvalidRequest(format!(
                "max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {n}"
            )));
        }
        if self.stop.len() > 16 || self.stop.iter().any(|s| s.len() > 256) {
            return Err(InferenceError::InvalidRequest(
                "at most 16 stop strings of at most 256 bytes each".into(),
            ));
        }
        if self
            .json_schema
            .as_ref()
            .is_some_and(|s| s.to_string().len() > 64 * 1024)
        {
            return Err(InferenceError::InvalidRequest(
                "a JSON schema has at most 64 KiB".into(),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(InferenceError::InvalidRequest(
                "stop strings must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// A chat-completion request.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The conversation; the model answers the last user message.
    pub messages: Vec<ChatMessage>,
    /// Decoding settings (merged over the model's defaults).
    pub settings: GenerationSettings,
}

impl ChatRequest {
    /// A request with the given messages and default settings.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            settings: GenerationSettings::default(),
        }
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: GenerationSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Number of images over all messages.
    pub fn image_count(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.content)
            .filter(|p| matches!(p, ContentPart::Image(_)))
            .count()
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The server filtered the content.
    ContentFilter,
    /// Any other reason reported by a server.
    Other,
}

/// Prices in currency units per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    /// Price per 1M prompt tokens.
    pub input_per_million: Option<f64>,
    /// Price per 1M completion tokens.
    pub output_per_million: Option<f64>,
}

impl Pricing {
    /// `prompt * in / 1e6 + completion * out / 1e6`, or `None` when no price
    /// is configured (a missing one of the two counts as 0).
    pub fn cost(&self, prompt_tokens: usize, completion_tokens: usize) -> Option<f64> {
        if self.input_per_million.is_none() && self.output_per_million.is_none() {
            return None;
        }
        let i = self.input_per_million.unwrap_or(0.0);
        let o = self.output_per_million.unwrap_or(0.0);
        Some(prompt_tokens as f64 * i / 1e6 + completion_tokens as f64 * o / 1e6)
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// The generated text (stop strings and end-of-sequence tokens removed).
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens, image tokens included.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Wall time from start of processing to the answer (for a local batch
    /// group, the group's time).
    pub latency: Duration,
    /// Time to the first token (local models; includes image encoding).
    pub prefill_latency: Option<Duration>,
    /// Cost from the model's prices, when configured.
    pub cost: Option<f64>,
    /// Generated token ids (local models).
    pub token_ids: Option<Vec<u32>>,
}

/// Static facts about a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Registry name.
    pub name: String,
    /// Adapter that serves it.
    pub adapter: AdapterKind,
    /// Whether images are accepted.
    pub accepts_images: bool,
    /// Context length in tokens, when known.
    pub context_length: Option<usize>,
}

/// Errors of the inference module. Each names what went wrong and, where
/// possible, what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    /// The image bytes could not be decoded.
    #[error("unreadable image: {0}")]
    Image(String),
    /// The image exceeds the size limits.
    #[error("image too large: {0}")]
    ImageTooLarge(String),
    /// A file the model needs is absent.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// The expected path.
        path: String,
        /// What to do.
        hint: String,
    },
    /// Weights or tokenizer could not be loaded.
    #[error("failed to load model: {0}")]
    Load(String),
    /// The configuration names something this adapter does not implement.
    #[error("unsupported model configuration: {0}")]
    UnsupportedConfig(String),
    /// The registry entry is incomplete or inconsistent.
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// The request is malformed for this model.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Prompt (with image tokens) does not fit the model's context.
    #[error("prompt of {prompt_tokens} tokens does not fit the context length of {limit} tokens")]
    ContextLength {
        /// Prompt tokens including image tokens.
        prompt_tokens: usize,
        /// The model's context length.
        limit: usize,
    },
    /// Tokenisation failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A tensor operation failed during generation.
    #[error("model execution failed: {0}")]
    Model(String),
    /// The server answered with a non-success status (after retries).
    #[error("server answered HTTP {status}: {body}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The server could not be reached, or the connection broke (including
    /// a truncated response).
    #[error("request to {url} failed: {message}")]
    Connect {
        /// Endpoint.
        url: String,
        /// Transport error.
        message: String,
    },
    /// The request exceeded its timeout (after retries).
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered 2xx with a body that is not a chat completion.
    #[error("malformed server response: {0}")]
    BadResponse(String),
    /// The API key variable named in the spec is not set.
    #[error("environment variable {0} (API key) is not set")]
    MissingApiKey(String),
    /// A `hf:` model reference could not be resolved.
    #[error("cannot fetch {repo} from the Hugging Face Hub: {message}")]
    Hub {
        /// `org/name`.
        repo: String,
        /// Why, and where to put the files instead.
        message: String,
    },
    /// An internal failure (e.g. a panic inside a model library).
    #[error("internal error: {0}")]
    Internal(String),
}

impl InferenceError {
    /// Whether a remote call that failed this way may succeed when retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Connect { .. } | Self::Timeout(_) => true,
            _ => false,
        }
    }
}

impl From<candle_core::Error> for InferenceError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(e.to_string())
    }
}

/// The interface every adapter implements.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// Static facts about the model.
    fn info(&self) -> &ModelInfo;

    /// Answers a batch of requests; the result has one entry per request, in
    /// order. A failing request yields `Err` in its slot only.
    async fn generate_batch(
        &self,
        requests: Vec<ChatRequest>,
    ) -> Vec<Result<ChatReply, InferenceError>>;

    /// Answers a batch, yielding each reply with its request's index as soon as it is ready
    /// (so a caller can store it before the rest of the batch is done). The default waits for
    /// the whole batch (a local model answers a batch at once); remote adapters yield each
    /// reply as it arrives.
    fn generate_each(
        &self,
        requests: Vec<ChatRequest>,
    ) -> futures::stream::BoxStream<'_, (usize, Result<ChatReply, InferenceError>)> {
        use futures::StreamExt;
        futures::stream::once(self.generate_batch(requests))
            .flat_map(|replies| futures::stream::iter(replies.into_iter().enumerate()))
            .boxed()
    }

    /// Answers one request.
    async fn generate(&self, request: ChatRequest) -> Result<ChatReply, InferenceError> {
        self.generate_batch(vec![request])
            .await
            .pop()
            .unwrap_or_else(|| Err(InferenceError::Internal("adapter returned no reply".into())))
    }
}

/// Message appended to the last user turn when a local model is asked for a
/// JSON schema it cannot enforce.
pub(crate) fn schema_instruction(schema: &serde_json::Value) -> String {
    format!(
        "\n\nAnswer only with a JSON value that follows this JSON schema:\n{}",
        serde_json::to_string(schema).unwrap_or_default()
    )
}
