//! Local adapters on candle-transformers: shared loading code and the
//! [`LocalModel`] wrapper that turns a model family into a [`ChatModel`].
//!
//! A family implements [`Family`]: it turns a request into model inputs
//! (chat template, tokenisation, image preprocessing), runs a batched prefill
//! and single-token decode steps with its KV cache. [`LocalModel`] groups
//! the requests of a batch by input shape, runs each group through the
//! shared generation loop in [`generation`] on a blocking thread, and maps
//! panics and tensor errors to [`InferenceError`]s per request.

pub mod chat_template;
pub mod generation;
pub mod internvl;
pub mod llama;
pub mod llava;
pub mod paligemma;
pub mod pixtral;
pub mod preprocess;
pub mod qwen3;
pub mod qwen_vl;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use super::{
    AdapterKind, ChatModel, ChatReply, ChatRequest, GenerationSettings, InferenceError, ModelInfo,
    Pricing,
};

/// Most requests of equal shape run in one forward pass.
pub const MAX_BATCH: usize = 8;

/// Model-ready inputs of one request.
pub struct Prepared<I> {
    /// Family-specific tensors / token ids.
    pub input: I,
    /// Prefill length in positions (text and image tokens).
    pub prompt_tokens: usize,
    /// Requests with equal keys can share a batched forward pass.
    pub group_key: Vec<usize>,
}

/// A local model family driven by the shared generation loop.
pub trait Family: Send + 'static {
    /// Inputs of one request after templating and preprocessing.
    type Input: Send + 'static;

    /// Applies the chat template, tokenises and preprocesses images.
    fn prepare(&self, request: &ChatRequest) -> Result<Prepared<Self::Input>, InferenceError>;

    /// Clears the KV cache and runs the prompt of every row (all rows have
    /// the same length). Returns logits `(batch, vocab)` of the last position.
    fn prefill(&mut self, inputs: &[&Self::Input]) -> candle_core::Result<Tensor>;

    /// Feeds one token per row at position `offset`; returns `(batch, vocab)`.
    fn step(&mut self, tokens: &[u32], offset: usize) -> candle_core::Result<Tensor>;

    /// Maximum number of positions (prompt plus generated tokens).
    fn context_length(&self) -> usize;

    /// Whether the family takes images.
    fn accepts_images(&self) -> bool;

    /// Largest number of rows one forward pass takes.
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    /// Whether prompts of different lengths share a forward pass (left padding with an
    /// attention mask). Such families get every request of a call in one group.
    fn pads_batches(&self) -> bool {
        false
    }

    /// Drops finished rows from the running batch, keeping `keep` (indices into the current
    /// batch, in order). Returns false when the family cannot, and then every row keeps
    /// being computed until the whole batch ends.
    fn retain_rows(&mut self, keep: &[usize]) -> candle_core::Result<bool> {
        let _ = keep;
        Ok(false)
    }
}

/// What every local family needs besides its weights.
#[derive(Clone)]
pub struct Common {
    /// The tokenizer from `tokenizer.json`.
    pub tokenizer: Arc<Tokenizer>,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Device the model runs on.
    pub device: Device,
    /// Floating point type of the weights.
    pub dtype: DType,
}

/// Options that do not come from the model directory.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Registry name of the model.
    pub name: String,
    /// Generation defaults merged under every request.
    pub defaults: GenerationSettings,
    /// Prices for the cost field.
    pub pricing: Pricing,
    /// Overrides the weight dtype (default: F32 on CPU, BF16 on CUDA).
    pub dtype: Option<DType>,
}

/// A local family wrapped as a [`ChatModel`].
pub struct LocalModel<F: Family> {
    info: ModelInfo,
    family: Arc<Mutex<F>>,
    tokenizer: Arc<Tokenizer>,
    eos_ids: Arc<Vec<u32>>,
    defaults: GenerationSettings,
    pricing: Pricing,
}

impl<F: Family> LocalModel<F> {
    /// Wraps a loaded family.
    pub fn new(family: F, common: &Common, adapter: AdapterKind, options: &LocalOptions) -> Self {
        let info = ModelInfo {
            name: options.name.clone(),
            adapter,
            accepts_images: family.accepts_images(),
            context_length: Some(family.context_length()),
        };
        Self {
            info,
            family: Arc::new(Mutex::new(family)),
            tokenizer: common.tokenizer.clone(),
            eos_ids: Arc::new(common.eos_ids.clone()),
            defaults: options.defaults.clone(),
            pricing: options.pricing,
        }
    }
}

#[async_trait]
impl<F: Family> ChatModel for LocalModel<F> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    async fn generate_batch(
        &self,
        requests: Vec<ChatRequest>,
    ) -> Vec<Result<ChatReply, InferenceError>> {
        let n = requests.len();
        if n == 0 {
            return Vec::new();
        }
        let family = self.family.clone();
        let tokenizer = self.tokenizer.clone();
        let eos = self.eos_ids.clone();
        let defaults = self.defaults.clone();
        let pricing = self.pricing;
        let handle = tokio::task::spawn_blocking(move || {
            let mut guard = family.lock().unwrap_or_else(|p| p.into_inner());
            run_batch(&mut *guard, &tokenizer, &eos, &defaults, pricing, requests)
        });
        match handle.await {
            Ok(results) => results,
            Err(e) => {
                let msg = panic_message(e);
                (0..n)
                    .map(|_| Err(InferenceError::Internal(msg.clone())))
                    .collect()
            }
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        let p = e.into_panic();
        format!("model panicked: {}", payload_text(&*p))
    } else {
        "generation task was cancelled".to_string()
    }
}

pub(crate) fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, turning a panic into an error built by `err`.
pub(crate) fn catch_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, InferenceError>,
) -> Result<T, InferenceError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(InferenceError::Internal(format!(
            "{what} panicked: {}",
            payload_text(&*p)
        ))),
    }
}

/// Prepares, groups and generates a whole batch (blocking).
fn run_batch<F: Family>(
    family: &mut F,
    tokenizer: &Tokenizer,
    eos: &[u32],
    defaults: &GenerationSettings,
    pricing: Pricing,
    requests: Vec<ChatRequest>,
) -> Vec<Result<ChatReply, InferenceError>> {
    let n = requests.len();
    let mut results: Vec<Option<Result<ChatReply, InferenceError>>> =
        (0..n).map(|_| None).collect();
    let mut prepared: Vec<Option<(Prepared<F::Input>, GenerationSettings)>> =
        (0..n).map(|_| None).collect();
    let context = family.context_length();
    for (i, req) in requests.into_iter().enumerate() {
        let started = Instant::now();
        let settings = req.settings.merged_over(defaults);
        let r = settings.validate().and_then(|_| {
            let mut req = req;
            req.settings = settings.clone();
            if req.messages.is_empty() {
                return Err(InferenceError::InvalidRequest(
                    "request has no messages".into(),
                ));
            }
            if req.image_count() > 0 && !family.accepts_images() {
                return Err(InferenceError::InvalidRequest(
                    "this model is text-only and does not accept images".into(),
                ));
            }
            let fam = &*family;
            let p = catch_panic("preprocessing", || fam.prepare(&req))?;
            if p.prompt_tokens >= context {
                return Err(InferenceError::ContextLength {
                    prompt_tokens: p.prompt_tokens,
                    limit: context,
                });
            }
            Ok(p)
        });
        match r {
            Ok(p) => prepared[i] = Some((p, settings)),
            Err(e) => {
                tracing::debug!(elapsed = ?started.elapsed(), error = %e, "request rejected");
                results[i] = Some(Err(e));
            }
        }
    }
    // Group by shape, keeping request order inside a group.
    let mut groups: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    let pads = family.pads_batches();
    for (i, p) in prepared.iter().enumerate() {
        if let Some((p, _)) = p {
            let key = if pads {
                Vec::new()
            } else {
                p.group_key.clone()
            };
            groups.entry(key).or_default().push(i);
        }
    }
    let mut order: Vec<Vec<usize>> = groups.into_values().collect();
    order.sort_by_key(|g| g[0]);
    let max_batch = family.max_batch().max(1);
    for group in order {
        for chunk in group.chunks(max_batch) {
            let inputs: Vec<&F::Input> = chunk
                .iter()
                .filter_map(|&i| prepared[i].as_ref().map(|(p, _)| &p.input))
                .collect();
            let rows: Vec<generation::RowSpec> = chunk
                .iter()
                .filter_map(|&i| prepared[i].as_ref())
                .map(|(p, s)| generation::RowSpec {
                    prompt_tokens: p.prompt_tokens,
                    settings: s.clone(),
                    max_new_tokens: s.max_new_tokens_or_default().min(context - p.prompt_tokens),
                })
                .collect();
            tracing::debug!(rows = inputs.len(), "batched forward pass");
            let out = catch_panic("generation", || {
                generation::generate_group(family, &inputs, &rows, tokenizer, eos)
            });
            match out {
                Ok(outs) => {
                    for (&i, o) in chunk.iter().zip(outs) {
                        let prompt_tokens = rows_prompt(&prepared, i);
                        results[i] = Some(Ok(ChatReply {
                            cost: pricing.cost(prompt_tokens, o.tokens.len()),
                            text: o.text,
                            finish_reason: o.finish_reason,
                            prompt_tokens,
                            completion_tokens: o.tokens.len(),
                            latency: o.latency,
                            prefill_latency: Some(o.prefill_latency),
                            token_ids: Some(o.tokens),
                        }));
                    }
                }
                Err(e) => {
                    for &i in chunk {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(InferenceError::Internal("request was not processed".into())))
        })
        .collect()
}

fn rows_prompt<I>(prepared: &[Option<(Prepared<I>, GenerationSettings)>], i: usize) -> usize {
    prepared[i]
        .as_ref()
        .map(|(p, _)| p.prompt_tokens)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Loading helpers shared by the families.

/// Default dtype for a device: F32 on CPU (candle's CPU kernels are fastest
/// and most accurate there), BF16 on CUDA.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

fn missing(path: &Path, what: &str) -> InferenceError {
    InferenceError::MissingFile {
        path: path.display().to_string(),
        hint: format!(
            "the model directory must contain {what}; copy the files of the Hugging Face \
             repository (config.json, tokenizer.json, *.safetensors) into {}",
            path.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    }
}

/// Reads a JSON file, with typed errors for absence and syntax.
pub fn read_json(path: &Path) -> Result<serde_json::Value, InferenceError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing(
                path,
                path.file_name()
                    .and_then(|f| f.to_str())
                    .unwrap_or("this file"),
            )
        } else {
            InferenceError::Load(format!("cannot read {}: {e}", path.display()))
        }
    })?;
    serde_json::from_str(&text)
        .map_err(|e| InferenceError::Load(format!("{} is not valid JSON: {e}", path.display())))
}

/// Reads an optional JSON file (absent → `None`).
pub fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>, InferenceError> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Parses a typed config from JSON, naming the file in the error.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
) -> Result<T, InferenceError> {
    serde_json::from_value(value)
        .map_err(|e| InferenceError::UnsupportedConfig(format!("{what}: {e}")))
}

/// The safetensors files of a model directory (from the index when present).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, InferenceError> {
    if !dir.is_dir() {
        return Err(InferenceError::MissingFile {
            path: dir.display().to_string(),
            hint: "model directory does not exist; create it with config.json, tokenizer.json \
                   and the *.safetensors weights of the model"
                .into(),
        });
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                InferenceError::Load(format!("{} has no weight_map", index.display()))
            })?;
        let names: HashSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let mut files: Vec<PathBuf> = names.into_iter().map(|n| dir.join(n)).collect();
        files.sort();
        for f in &files {
            if !f.exists() {
                return Err(missing(
                    f,
                    "every shard listed in model.safetensors.index.json",
                ));
            }
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| InferenceError::Load(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(missing(
            &dir.join("model.safetensors"),
            "*.safetensors weight files",
        ));
    }
    Ok(files)
}

/// Loads every tensor of the directory's safetensors files, converting
/// floating point tensors to `dtype`. Files are memory-mapped and tensors
/// converted one at a time, so the peak is the loaded weights plus one tensor
/// (a bf16 checkpoint loaded as f32 is never held twice).
pub fn load_tensors(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, InferenceError> {
    let mut all = HashMap::new();
    for f in weight_files(dir)? {
        let bad = |e: candle_core::Error| {
            InferenceError::Load(format!("cannot read weights {}: {e}", f.display()))
        };
        // SAFETY: the file is mapped read-only and only read while `mapped` lives; a
        // model directory is not rewritten while a model loads from it.
        let mapped =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(&f) }.map_err(bad)?;
        let names: Vec<String> = mapped.tensors().into_iter().map(|(n, _)| n).collect();
        for name in names {
            let t = mapped.load(&name, device).map_err(bad)?;
            let t = if t.dtype().is_float() && t.dtype() != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            all.insert(name, t);
        }
    }
    Ok(all)
}

/// Renames tensors saved by transformers >= 4.52 (`model.language_model.*`,
/// `model.vision_tower.*`, `lm_head.*`) to the classic layout
/// (`language_model.model.*`, `vision_tower.*`, `language_model.lm_head.*`)
/// that the LLaVA and PaliGemma adapters read.
///
/// transformers 5 also saves the CLIP / SigLIP tower without its inner
/// `vision_model.` level (`vision_tower.embeddings.*`); that level is put back.
pub fn to_classic_vlm_layout(map: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let map = if map.keys().any(|k| k.starts_with("model.language_model.")) {
        renamed_from_v5(map)
    } else {
        map
    };
    if map
        .keys()
        .any(|k| k.starts_with("vision_tower.vision_model."))
        || !map.keys().any(|k| k.starts_with("vision_tower."))
    {
        return map;
    }
    map.into_iter()
        .map(|(k, t)| match k.strip_prefix("vision_tower.") {
            Some(rest) => (format!("vision_tower.vision_model.{rest}"), t),
            None => (k, t),
        })
        .collect()
}

fn renamed_from_v5(map: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    map.into_iter()
        .map(|(k, t)| {
            let k = if let Some(r) = k.strip_prefix("model.language_model.") {
                format!("language_model.model.{r}")
            } else if let Some(r) = k.strip_prefix("lm_head.") {
                format!("language_model.lm_head.{r}")
            } else if let Some(r) = k.strip_prefix("model.") {
                r.to_string()
            } else {
                k
            };
            (k, t)
        })
        .collect()
}

/// Loads `tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, InferenceError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(missing(
            &path,
            "tokenizer.json (the fast tokenizer of the model)",
        ));
    }
    Tokenizer::from_file(&path)
        .map_err(|e| InferenceError::Load(format!("cannot load {}: {e}", path.display())))
}

/// End-of-sequence ids: `eos_token_id` of the config (top level or
/// `text_config`) and `generation_config.json`, plus the given token strings
/// when the tokenizer knows them.
pub fn eos_ids(
    dir: &Path,
    config: &serde_json::Value,
    tokenizer: &Tokenizer,
    names: &[&str],
) -> Result<Vec<u32>, InferenceError> {
    let mut ids = Vec::new();
    let mut add = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => ids.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
        }
        _ => {}
    };
    add(config.get("eos_token_id"));
    add(config
        .get("text_config")
        .and_then(|t| t.get("eos_token_id")));
    if let Some(g) = read_json_opt(&dir.join("generation_config.json"))? {
        add(g.get("eos_token_id"));
    }
    for n in names {
        if let Some(id) = tokenizer.token_to_id(n) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Tokenizer id of a special token that the template needs.
pub fn special_id(tokenizer: &Tokenizer, token: &str) -> Result<u32, InferenceError> {
    tokenizer.token_to_id(token).ok_or_else(|| {
        InferenceError::UnsupportedConfig(format!("tokenizer.json has no {token} token"))
    })
}

/// Reads `config.json`, moving transformers 5's `rope_parameters` (which replaced the
/// top-level `rope_theta` / `rope_scaling` fields) back to the classic names, in the
/// top level and in `text_config`, so that every family's config struct reads either form.
pub fn read_model_config(dir: &Path) -> Result<serde_json::Value, InferenceError> {
    let mut v = read_json(&dir.join("config.json"))?;
    fn lift(c: &mut serde_json::Value) {
        let Some(obj) = c.as_object_mut() else {
            return;
        };
        let Some(rope) = obj.get("rope_parameters").cloned() else {
            return;
        };
        if let Some(theta) = rope.get("rope_theta")
            && !obj.contains_key("rope_theta")
        {
            obj.insert("rope_theta".into(), theta.clone());
        }
        let kind = rope
            .get("rope_type")
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        // Scaling parameters (or Qwen's `mrope_section`) go where the classic configs kept them.
        let scaled = kind != "default" || rope.get("mrope_section").is_some();
        if scaled && obj.get("rope_scaling").is_none_or(|r| r.is_null()) {
            let mut scaling = rope;
            if let Some(m) = scaling.as_object_mut() {
                m.remove("rope_theta");
            }
            obj.insert("rope_scaling".into(), scaling);
        }
    }
    lift(&mut v);
    if let Some(t) = v.get_mut("text_config") {
        lift(t);
    }
    Ok(v)
}

/// The image processor's settings: `preprocessor_config.json`, or the
/// `image_processor` entry of `processor_config.json` (where transformers 5 saves it).
pub fn image_processor_config(dir: &Path) -> Result<Option<serde_json::Value>, InferenceError> {
    if let Some(v) = read_json_opt(&dir.join("preprocessor_config.json"))? {
        return Ok(Some(v));
    }
    Ok(read_json_opt(&dir.join("processor_config.json"))?
        .and_then(|v| v.get("image_processor").cloned()))
}

/// Tokenises a rendered chat template; `add_special` adds the tokenizer's own
/// special tokens (Llama's BOS), as transformers' processors do.
pub fn encode_prompt(
    tokenizer: &Tokenizer,
    text: &str,
    add_special: bool,
) -> Result<Vec<u32>, InferenceError> {
    tokenizer
        .encode(text, add_special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))
}

/// Tokenises a rendered prompt (special tokens in the text are recognised).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, InferenceError> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))
}

/// Loads the files every family needs.
pub fn load_common(
    dir: &Path,
    device: &Device,
    dtype: Option<DType>,
    config: &serde_json::Value,
    eos_names: &[&str],
) -> Result<Common, InferenceError> {
    let tokenizer = load_tokenizer(dir)?;
    let eos_ids = eos_ids(dir, config, &tokenizer, eos_names)?;
    Ok(Common {
        tokenizer: Arc::new(tokenizer),
        eos_ids,
        device: device.clone(),
        dtype: dtype.unwrap_or_else(|| default_dtype(device)),
    })
}

/// Copies the request messages and, when a JSON schema is requested, appends
/// the schema instruction to the last user message (local models cannot
/// enforce it).
pub fn messages_with_schema(request: &ChatRequest) -> Vec<super::ChatMessage> {
    let mut msgs = request.messages.clone();
    if let Some(schema) = &request.settings.json_schema
        && let Some(last) = msgs.iter_mut().rev().find(|m| m.role == super::Role::User)
    {
        last.content
            .push(super::ContentPart::Text(super::schema_instruction(schema)));
    }
    msgs
}

/// Loads a local model of the given family from a directory (or a `.gguf`
/// file for Qwen3) on a blocking thread.
pub async fn load_local(
    adapter: AdapterKind,
    path: &Path,
    device: &Device,
    options: LocalOptions,
) -> Result<Arc<dyn ChatModel>, InferenceError> {
    let path = path.to_path_buf();
    let device = device.clone();
    let handle = tokio::task::spawn_blocking(move || {
        catch_panic("model loading", || {
            load_local_blocking(adapter, &path, &device, &options)
        })
    });
    match handle.await {
        Ok(r) => r,
        Err(e) => Err(InferenceError::Internal(panic_message(e))),
    }
}

/// Blocking form of [`load_local`].
pub fn load_local_blocking(
    adapter: AdapterKind,
    path: &Path,
    device: &Device,
    options: &LocalOptions,
) -> Result<Arc<dyn ChatModel>, InferenceError> {
    let adapter = if adapter == AdapterKind::Local {
        detect_family(path)?
    } else {
        adapter
    };
    Ok(match adapter {
        AdapterKind::Qwen3Vl | AdapterKind::Qwen2Vl => {
            let (f, c) = qwen_vl::QwenVl::load(path, device, options.dtype)?;
            Arc::new(LocalModel::new(f, &c, adapter, options))
        }
        AdapterKind::Llava => {
            let (f, c) = llava::Llava::load(path, device, options.dtype)?;
            Arc::new(LocalModel::new(f, &c, adapter, options))
        }
        AdapterKind::Pixtral => {
            let (f, c) = pixtral::Pixtral::load(path, device, options.dtype)?;
            Arc::new(LocalModel::new(f, &c, adapter, options))
        }
        AdapterKind::Internvl => {
            let (f, c) = internvl::InternVl::load(path, device, options.dtype)?;
            Arc::new(LocalModel::new(f, &c, adapter, options))
        }
        AdapterKind::Paligemma => {
            let (f, c) = paligemma::PaliGemma::load(path, device, options.dtype)?;
            Arc::new(LocalModel::new(f, &c, adapter, options))
        }
        AdapterKind::Qwen3 => {
            let (f, c) = qwen3::Qwen3::load(path, device, options.dtype)?;
            Arc::new(LocalModel::new(f, &c, adapter, options))
        }
        AdapterKind::Local | AdapterKind::OpenAi => {
            return Err(InferenceError::InvalidSpec(format!(
                "{adapter:?} is not a local model family"
            )));
        }
    })
}

/// Picks the family from `config.json`'s `model_type` (or a `.gguf` path).
pub fn detect_family(path: &Path) -> Result<AdapterKind, InferenceError> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok(AdapterKind::Qwen3);
    }
    let cfg = read_json(&path.join("config.json"))?;
    let mt = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    match mt {
        "qwen3_vl" => Ok(AdapterKind::Qwen3Vl),
        "qwen2_vl" | "qwen2_5_vl" => Ok(AdapterKind::Qwen2Vl),
        "llava" if pixtral::is_pixtral(&cfg) => Ok(AdapterKind::Pixtral),
        "llava" | "llava_next" => Ok(AdapterKind::Llava),
        "internvl" => Ok(AdapterKind::Internvl),
        "paligemma" => Ok(AdapterKind::Paligemma),
        "qwen3" => Ok(AdapterKind::Qwen3),
        other => Err(InferenceError::UnsupportedConfig(format!(
            "model_type {other:?} in {} is not one of qwen2_vl, qwen2_5_vl, qwen3_vl, llava, \
             llava_next, internvl, paligemma, qwen3 (or llava with a pixtral vision tower)",
            path.join("config.json").display()
        ))),
    }
}
