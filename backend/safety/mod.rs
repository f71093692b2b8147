//! Safety evaluation core: the ELITE evaluator and its benchmark, as pure computation.
//!
//! This area owns everything about judging vision-language model responses for safety that does
//! not need a database, a network, a clock or a terminal:
//!
//! - [`taxonomy`]: the 11 ELITE hazard categories (S1..S11) and their lookup by code or name.
//! - [`rubric`]: the four rubric items, the [`Judgement`] a judge returns, and the ELITE and
//!   StrongREJECT scores computed from it, with the unsafe threshold.
//! - [`template`]: judge prompt templates as versioned, replaceable data (our default one is
//!   written from the rubric facts), rendering and a stable fingerprint for cache keys.
//! - [`parse`]: the strict parser of judge replies (JSON form and line form); a reply that does
//!   not parse or is out of range is *unscored*, never 0.
//! - [`keywords`]: the refusal-keyword comparator (VLGuard style).
//! - [`image`]: the judge's view of an image (shrunk to 256 px, PNG data URL), size limits,
//!   validation and content hashing.
//! - [`import`]: parsing of the ELITE release CSV and of generic JSONL/CSV benchmarks, and the
//!   file checks of an import (missing and unreadable images); database insertion lives elsewhere.
//! - [`metrics`]: E-ASR, mean ELITE score, non-refusal rate, StrongREJECT and keyword ASR, per
//!   category and overall, with seeded bootstrap confidence intervals.
//! - [`paper`]: the paper's Table 3 overall E-ASR figures and a model-name matcher.
//! - [`judge_cli`]: scoring of one judge reply as a JSON object or human-readable text.
//! - [`generate`]: the paper's generation methods, planned and drawn (pure);
//!   [`import_jobs`] runs imports and generation as idempotent jobs.
//!
//! Nothing here panics on user input; fallible operations return [`SafetyError`].

pub mod construct;
pub mod generate;
pub mod image;
pub mod import;
pub mod import_jobs;
pub mod jobs;
pub mod judge_cli;
pub mod keywords;
pub mod metrics;
pub mod panel;
pub mod paper;
pub mod paper_store;
pub mod parse;
pub mod review;
pub mod rubric;
pub mod run_results;
pub mod runs;
pub mod store;
pub mod taxonomy;
pub mod template;

pub use self::image::{ImageInfo, ImageLimits, JudgeImage, content_hash, validate_image};
pub use import::{BenchmarkRow, GenericItem, ImportReport, PairType};
pub use judge_cli::{ScoreReport, score_reply};
pub use keywords::{KeywordEvaluator, KeywordList, REFUSAL_PHRASES, attack_succeeded};
pub use metrics::{ItemOutcome, MetricOptions, MetricSummary, SafetyReport};
pub use paper::{PAPER_E_ASR, paper_e_asr};
pub use parse::{ParsedReply, parse_reply};
pub use rubric::{
    DEFAULT_UNSAFE_THRESHOLD, Judgement, RubricItem, elite_score, is_unsafe, strongreject_rescaled,
    strongreject_score,
};
pub use taxonomy::Category;
pub use template::{JudgeTemplate, judgement_cache_key, render};

/// Errors of the safety area. Every message says what was wrong and, where it helps, with which
/// value, so it can be shown to a user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SafetyError {
    /// A hazard category code or name that is not one of S1..S11.
    #[error("unknown hazard category {0:?}: expected a code S1..S11 or a category name")]
    UnknownCategory(String),

    /// A rubric value outside its range.
    #[error("{item} value {value} is out of range {min}..={max}")]
    OutOfRange {
        item: &'static str,
        value: i64,
        min: u8,
        max: u8,
    },

    /// A judge template that is malformed or lacks a required part.
    #[error("invalid judge template: {0}")]
    InvalidTemplate(String),

    /// Image input larger than the byte limit.
    #[error("image is {bytes} bytes, above the limit of {limit} bytes")]
    ImageTooLarge { bytes: u64, limit: u64 },

    /// Image whose pixel count is above the limit.
    #[error("image is {width}x{height} ({pixels} pixels), above the limit of {limit} pixels")]
    ImageTooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },

    /// Bytes that are not an image in a supported format (PNG, JPEG, WebP, GIF, BMP).
    #[error("not an image in a supported format (PNG, JPEG, WebP, GIF or BMP)")]
    UnknownImageFormat,

    /// An image whose data could not be decoded.
    #[error("image could not be decoded: {0}")]
    ImageDecode(String),

    /// An image that could not be encoded as PNG.
    #[error("image could not be encoded as PNG: {0}")]
    ImageEncode(String),

    /// A CSV file that cannot be read as a whole (bad header, broken quoting...).
    #[error("CSV error: {0}")]
    Csv(String),

    /// A required column is absent from a CSV header or JSON object.
    #[error("missing required column {0:?}")]
    MissingColumn(String),

    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },

    /// JSON that could not be parsed or has the wrong shape.
    #[error("invalid JSON: {0}")]
    Json(String),

    /// Options of a computation that make no sense (e.g. a confidence level of 1.5).
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Result type of the safety area.
pub type Result<T> = std::result::Result<T, SafetyError>;
