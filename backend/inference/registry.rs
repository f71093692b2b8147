//! The model registry entry ([`ModelSpec`]) and [`load_model`], which builds
//! the adapter a spec names. Local paths may be `hf:org/name[@revision]`
//! references: they resolve to the local Hugging Face cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`) and,
//! when the files are not there and the `hub` feature is on, are downloaded
//! through the `hf-hub` crate. Offline, the error says where to put them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::local::{self, LocalOptions};
use super::remote::{RemoteConfig, RemoteModel};
use super::{ChatModel, GenerationSettings, InferenceError, Pricing};

/// Which adapter serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Local model; the family is read from `config.json`'s `model_type`.
    Local,
    /// Local Qwen3-VL.
    Qwen3Vl,
    /// Local Qwen2-VL / Qwen2.5-VL.
    Qwen2Vl,
    /// Local LLaVA-1.5 / LLaVA-NeXT.
    Llava,
    /// Local Pixtral (HF `llava` layout with a Pixtral vision tower).
    Pixtral,
    /// Local InternVL 2.5 / 3 / 3.5 (HF `internvl` layout).
    Internvl,
    /// Local PaliGemma.
    Paligemma,
    /// Local Qwen3 text model (safetensors directory or `.gguf` file).
    Qwen3,
    /// Remote OpenAI-compatible chat-completions server.
    #[serde(rename = "openai")]
    OpenAi,
}

impl AdapterKind {
    /// Whether the adapter runs in-process.
    pub fn is_local(self) -> bool {
        !matches!(self, Self::OpenAi)
    }

    /// Every kind, for CLI help.
    pub const ALL: [AdapterKind; 9] = [
        Self::Local,
        Self::Qwen3Vl,
        Self::Qwen2Vl,
        Self::Llava,
        Self::Pixtral,
        Self::Internvl,
        Self::Paligemma,
        Self::Qwen3,
        Self::OpenAi,
    ];

    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Qwen3Vl => "qwen3_vl",
            Self::Qwen2Vl => "qwen2_vl",
            Self::Llava => "llava",
            Self::Pixtral => "pixtral",
            Self::Internvl => "internvl",
            Self::Paligemma => "paligemma",
            Self::Qwen3 => "qwen3",
            Self::OpenAi => "openai",
        }
    }
}

impl std::str::FromStr for AdapterKind {
    type Err = InferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                InferenceError::InvalidSpec(format!(
                    "unknown adapter {s:?}; expected one of {}",
                    Self::ALL.map(|k| k.as_str()).join(", ")
                ))
            })
    }
}

/// Longest model name, in characters.
pub const MAX_MODEL_NAME_CHARS: usize = 200;
/// Most concurrent requests one remote model may keep open.
pub const MAX_IN_FLIGHT: usize = 1024;

/// A model registry row (stored as JSON by the caller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Unique name used by evaluations.
    pub name: String,
    /// Adapter kind.
    pub adapter: AdapterKind,
    /// Local model directory, `.gguf` file, or `hf:org/name[@revision]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// Device of a local model: "cpu", "cuda" or "cuda:N" (default: the first
    /// GPU of a CUDA build when present, else the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Remote server base URL, e.g. `http://127.0.0.1:8000/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Model id sent to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Name of the environment variable that holds the API key (the key
    /// itself is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Maximum concurrent requests to the server (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Maximum requests started per minute (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Per-request timeout in seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// Generation defaults merged under every request.
    #[serde(default)]
    pub generation: GenerationSettings,
    /// Price per 1M input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_input_per_million: Option<f64>,
    /// Price per 1M output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_output_per_million: Option<f64>,
}

impl ModelSpec {
    /// A local model spec with defaults.
    pub fn local(name: impl Into<String>, adapter: AdapterKind, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            adapter,
            local_path: Some(path.into()),
            device: None,
            base_url: None,
            model_id: None,
            api_key_env: None,
            max_in_flight: None,
            requests_per_minute: None,
            timeout_secs: None,
            generation: GenerationSettings::default(),
            price_input_per_million: None,
            price_output_per_million: None,
        }
    }

    /// A remote (OpenAI-compatible) model spec with defaults.
    pub fn remote(
        name: impl Into<String>,
        base_url: impl Into<String>,
        model_id: impl Into<String>,
    ) -> Self {
        Self {
            adapter: AdapterKind::OpenAi,
            local_path: None,
            base_url: Some(base_url.into()),
            model_id: Some(model_id.into()),
            ..Self::local(name, AdapterKind::OpenAi, "")
        }
    }

    /// The prices as a [`Pricing`].
    pub fn pricing(&self) -> Pricing {
        Pricing {
            input_per_million: self.price_input_per_million,
            output_per_million: self.price_output_per_million,
        }
    }

    /// Checks that the fields the adapter needs are present and sane
    /// (without touching files or the network).
    pub fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: String| {
            Err(InferenceError::InvalidSpec(format!(
                "model {:?}: {m}",
                self.name
            )))
        };
        if self.name.trim().is_empty() {
            return bad("name must not be empty".into());
        }
        if self.name.chars().count() > MAX_MODEL_NAME_CHARS
            || self.name.chars().any(char::is_control)
        {
            return Err(InferenceError::InvalidSpec(format!(
                "a model name has at most {MAX_MODEL_NAME_CHARS} characters and no control characters"
            )));
        }
        for (field, value, max) in [
            ("local_path", &self.local_path, 4096),
            ("base_url", &self.base_url, 2048),
            ("model_id", &self.model_id, 512),
            ("api_key_env", &self.api_key_env, 128),
        ] {
            if let Some(v) = value
                && (v.len() > max || v.chars().any(char::is_control))
            {
                return bad(format!(
                    "{field} has at most {max} bytes and no control characters"
                ));
            }
        }
        if let Some(d) = &self.device {
            if !self.adapter.is_local() {
                return bad("device applies to local models only".into());
            }
            super::device::parse(d)?;
        }
        if self.max_in_flight.is_some_and(|n| n > MAX_IN_FLIGHT) {
            return bad(format!("max_in_flight must be at most {MAX_IN_FLIGHT}"));
        }
        if self.timeout_secs.is_some_and(|t| t > 3600.0) {
            return bad("timeout_secs must be at most 3600".into());
        }
        self.generation.validate()?;
        for (n, p) in [
            ("input", self.price_input_per_million),
            ("output", self.price_output_per_million),
        ] {
            if let Some(p) = p
                && (!p.is_finite() || p < 0.0)
            {
                return bad(format!("{n} price must be a finite number >= 0"));
            }
        }
        if let Some(t) = self.timeout_secs
            && (!t.is_finite() || t <= 0.0)
        {
            return bad("timeout_secs must be > 0".into());
        }
        if self.max_in_flight == Some(0) {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.requests_per_minute == Some(0) {
            return bad("requests_per_minute must be at least 1".into());
        }
        if self.adapter.is_local() {
            match self.local_path.as_deref() {
                None | Some("") => return bad("a local adapter needs local_path".into()),
                Some(p) if p.starts_with("hf:") => {
                    parse_hf_ref(p)?;
                }
                _ => {}
            }
        } else {
            match self.base_url.as_deref() {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                Some(u) => {
                    return bad(format!(
                        "base_url {u:?} must start with http:// or https://"
                    ));
                }
                None => return bad("the openai adapter needs base_url".into()),
            }
            if self.model_id.as_deref().is_none_or(str::is_empty) {
                return bad("the openai adapter needs model_id".into());
            }
            if let Some(v) = &self.api_key_env
                && !super::net::secret_allowed(v)
            {
                return bad(format!(
                    "api_key_env {v:?} is not an allowed secret name: use a variable named {}* or one an admin listed in {}",
                    super::net::SECRET_PREFIX,
                    super::net::ALLOWED_SECRETS_ENV
                ));
            }
            if let Some(url) = &self.base_url {
                super::net::outbound_policy().check_url(url)?;
            }
        }
        Ok(())
    }
}

/// Builds the adapter for a spec. Local models load on a blocking thread;
/// `device` is where they run (ignored by remote adapters).
pub async fn load_model(
    spec: &ModelSpec,
    device: &Device,
) -> Result<Arc<dyn ChatModel>, InferenceError> {
    spec.validate()?;
    if spec.adapter.is_local() {
        let raw = spec.local_path.as_deref().unwrap_or_default();
        let path = if raw.starts_with("hf:") {
            resolve_hf(raw).await?
        } else {
            PathBuf::from(raw)
        };
        let options = LocalOptions {
            name: spec.name.clone(),
            defaults: spec.generation.clone(),
            pricing: spec.pricing(),
            dtype: None,
        };
        local::load_local(spec.adapter, &path, device, options).await
    } else {
        let cfg = RemoteConfig {
            name: spec.name.clone(),
            base_url: spec.base_url.clone().unwrap_or_default(),
            model_id: spec.model_id.clone().unwrap_or_default(),
            api_key_env: spec.api_key_env.clone(),
            max_in_flight: spec.max_in_flight.unwrap_or(8),
            requests_per_minute: spec.requests_per_minute,
            timeout: Duration::from_secs_f64(spec.timeout_secs.unwrap_or(120.0)),
            defaults: spec.generation.clone(),
            pricing: spec.pricing(),
            ..RemoteConfig::default()
        };
        Ok(Arc::new(RemoteModel::new(cfg)?))
    }
}

/// `(org/name, revision)` of a `hf:org/name[@revision]` reference.
pub fn parse_hf_ref(reference: &str) -> Result<(String, Option<String>), InferenceError> {
    let rest = reference.strip_prefix("hf:").unwrap_or(reference);
    let (repo, rev) = match rest.split_once('@') {
        Some((r, v)) => (r, Some(v.to_string())),
        None => (rest, None),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.len() != 2 || !parts.iter().all(|p| ok(p)) || rev.as_deref().is_some_and(str::is_empty)
    {
        return Err(InferenceError::InvalidSpec(format!(
            "{reference:?} is not a model reference of the form hf:org/name[@revision]"
        )));
    }
    Ok((repo.to_string(), rev))
}

/// The Hugging Face hub cache directory.
pub fn hf_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return Path::new(&p).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".cache/huggingface/hub")
}

/// A snapshot of `repo` already in the cache that has a `config.json` (or a
/// GGUF file) and safetensors/GGUF weights.
pub fn cached_snapshot(cache: &Path, repo: &str, revision: Option<&str>) -> Option<PathBuf> {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    let rev = revision.unwrap_or("main");
    let commit = std::fs::read_to_string(base.join("refs").join(rev))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| rev.to_string());
    let usable = |d: &Path| {
        let files: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        files.iter().any(|f| f == "config.json")
            && files.iter().any(|f| f == "tokenizer.json")
            && files.iter().any(|f| f.ends_with(".safetensors"))
    };
    let snap = base.join("snapshots").join(&commit);
    if usable(&snap) {
        return Some(snap);
    }
    None
}

fn offline_hint(repo: &str) -> String {
    let cache = hf_cache_dir();
    format!(
        "no complete copy in the local cache {}. Without internet access, download the \
         repository on another machine (config.json, tokenizer.json, preprocessor_config.json, \
         generation_config.json and the *.safetensors shards), copy it to a directory here and \
         set local_path to that directory (or place it as {}/models--{}/snapshots/<commit>/ with \
         refs/main containing <commit>)",
        cache.display(),
        cache.display(),
        repo.replace('/', "--")
    )
}

/// Resolves `hf:org/name[@rev]` to a local directory: the cache first, then a
/// download (with the `hub` feature).
pub async fn resolve_hf(reference: &str) -> Result<PathBuf, InferenceError> {
    let (repo, rev) = parse_hf_ref(reference)?;
    if let Some(p) = cached_snapshot(&hf_cache_dir(), &repo, rev.as_deref()) {
        return Ok(p);
    }
    download(&repo, rev).await
}

#[cfg(feature = "hub")]
async fn download(repo: &str, rev: Option<String>) -> Result<PathBuf, InferenceError> {
    let (org, name) = repo.split_once('/').unwrap_or((repo, ""));
    let err = |m: String| InferenceError::Hub {
        repo: repo.to_string(),
        message: m,
    };
    let client =
        hf_hub::HFClient::new().map_err(|e| err(format!("{e}; {}", offline_hint(repo))))?;
    let patterns = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
        "*.safetensors",
        "model.safetensors.index.json",
    ]
    .map(String::from)
    .to_vec();
    let handle = client.model(org, name);
    let fetch = handle
        .snapshot_download()
        .maybe_revision(rev)
        .allow_patterns(patterns)
        .send();
    match tokio::time::timeout(Duration::from_secs(6 * 3600), fetch).await {
        Ok(Ok(path)) => Ok(path),
        Ok(Err(e)) => Err(err(format!("{e}; {}", offline_hint(repo)))),
        Err(_) => Err(err(format!("download timed out; {}", offline_hint(repo)))),
    }
}

#[cfg(not(feature = "hub"))]
async fn download(repo: &str, _rev: Option<String>) -> Result<PathBuf, InferenceError> {
    Err(InferenceError::Hub {
        repo: repo.to_string(),
        message: format!(
            "this build has no hub support (feature \"hub\"); {}",
            offline_hint(repo)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_refs() {
        assert_eq!(
            parse_hf_ref("hf:Qwen/Qwen3-VL-2B-Instruct").unwrap().0,
            "Qwen/Qwen3-VL-2B-Instruct"
        );
        assert_eq!(parse_hf_ref("hf:a/b@v1").unwrap().1.as_deref(), Some("v1"));
        assert!(parse_hf_ref("hf:../etc").is_err());
        assert!(parse_hf_ref("hf:a/b/c").is_err());
    }

    #[test]
    fn spec_json_round_trip() {
        let mut s = ModelSpec::remote("gpt", "http://127.0.0.1:1/v1", "gpt-4o");
        s.api_key_env = Some("OPENAI_API_KEY".into());
        s.price_input_per_million = Some(2.5);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["adapter"], "openai");
        let back: ModelSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        let minimal: ModelSpec =
            serde_json::from_str(r#"{"name":"m","adapter":"qwen3_vl","local_path":"/x"}"#).unwrap();
        assert!(minimal.validate().is_ok());
        assert!(
            ModelSpec::local("m", AdapterKind::Llava, "")
                .validate()
                .is_err()
        );
    }
}
