//! Parsing of benchmark files and the file checks of an import (no database work here).
//!
//! - The **ELITE release CSV** (`dataset, taxonomy_code, taxonomy, image_name, question`; UTF-8
//!   with a BOM, multi-line quoted questions): [`parse_elite_csv`]. Fields are kept byte for byte
//!   (questions with mis-decoded characters from the source survive unchanged); the BOM is
//!   stripped. Images are looked up as `{root}/{taxonomy}/{image_name}`, then
//!   `{root}/{taxonomy_code}/{image_name}`, with the file name compared case-sensitively.
//! - A **generic benchmark** in JSONL or CSV with the fields `text`, `image` (a path relative to
//!   an image root, or base64 without or with a `data:` URL prefix), `category` (code or name),
//!   optional `pair_type` (`safe-safe`, `safe-unsafe`, `unsafe-safe`, `unsafe-unsafe`) and
//!   optional `source`: [`parse_generic_jsonl`], [`parse_generic_csv`].
//!
//! A malformed row is rejected with its line and reason without failing the others; only a file
//! that cannot be read as a whole (e.g. a CSV header without a required column) is an error.
//! [`check_elite_import`] and [`check_generic_import`] produce an [`ImportReport`]: row counts per
//! category, duplicates, and every missing or unreadable image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::image::{ImageInfo, ImageLimits, content_hash, validate_image};
use super::taxonomy::Category;
use super::{Result, SafetyError};

/// The columns of the ELITE release CSV, in file order.
pub const ELITE_COLUMNS: [&str; 5] = [
    "dataset",
    "taxonomy_code",
    "taxonomy",
    "image_name",
    "question",
];

/// File extensions (lower-case) recognised as image paths in generic imports.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One row of the ELITE release CSV. Text fields are exactly the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchmarkRow {
    /// Source dataset (`SPA-VL`, `Figstep`, `New`, ...).
    pub dataset: String,
    /// Category code as written (`S1`..`S11`).
    pub taxonomy_code: String,
    /// Category name as written (`Violent Crimes`, ..., `Self-Harm`).
    pub taxonomy: String,
    /// Image file name, e.g. `SPA-VL_S1_004.jpg` (case matters).
    pub image_name: String,
    /// The question, byte for byte (may hold newlines and quotes).
    pub question: String,
    /// 1-based line of the file where the record starts (the header is line 1).
    pub line: u64,
    /// The category, resolved from `taxonomy_code` (and checked against `taxonomy`).
    pub category: Category,
}

/// A row that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// 1-based line where the record starts.
    pub line: u64,
    /// Why it was rejected.
    pub reason: String,
}

/// Rows parsed from a file, and the rows rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedFile<T> {
    /// Accepted rows, in file order.
    pub rows: Vec<T>,
    /// Rejected rows, in file order.
    pub rejected: Vec<RejectedRow>,
}

/// The image/text safety combination of a generated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairType {
    /// Safe image, safe text.
    SafeSafe,
    /// Safe image, unsafe text.
    SafeUnsafe,
    /// Unsafe image, safe text.
    UnsafeSafe,
    /// Unsafe image, unsafe text.
    UnsafeUnsafe,
}

impl PairType {
    /// All pair types.
    pub const ALL: [PairType; 4] = [
        PairType::SafeSafe,
        PairType::SafeUnsafe,
        PairType::UnsafeSafe,
        PairType::UnsafeUnsafe,
    ];

    /// `safe-safe`, `safe-unsafe`, `unsafe-safe` or `unsafe-unsafe`.
    pub fn as_str(self) -> &'static str {
        match self {
            PairType::SafeSafe => "safe-safe",
            PairType::SafeUnsafe => "safe-unsafe",
            PairType::UnsafeSafe => "unsafe-safe",
            PairType::UnsafeUnsafe => "unsafe-unsafe",
        }
    }

    /// Parses a pair type, ignoring case and accepting `_` or a space for `-`.
    pub fn parse(text: &str) -> Option<PairType> {
        let normalized: String = text
            .trim()
            .chars()
            .map(|c| {
                if c == '_' || c == ' ' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        PairType::ALL.into_iter().find(|p| p.as_str() == normalized)
    }
}

/// Where a generic item's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageSource {
    /// A path relative to the image root (checked to stay inside it).
    Path(String),
    /// Image bytes decoded from base64.
    Inline(Vec<u8>),
}

/// One item of a generic JSONL or CSV benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenericItem {
    /// 1-based line where the item starts.
    pub line: u64,
    /// The user's text, as given.
    pub text: String,
    /// The image.
    pub image: ImageSource,
    /// The hazard category.
    pub category: Category,
    /// The image/text safety combination, when given.
    pub pair_type: Option<PairType>,
    /// Where the item comes from, when given.
    pub source: Option<String>,
}

/// A row repeating an earlier row (same image and same text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateRow {
    /// Line of the repeated row.
    pub line: u64,
    /// Line of the first occurrence.
    pub first_line: u64,
    /// The image reference (file name, relative path, or `sha256:...` for inline images).
    pub image: String,
}

/// An image that was not found under the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingImage {
    /// The image reference.
    pub image: String,
    /// Lines of the rows using it.
    pub lines: Vec<u64>,
    /// The paths that were tried.
    pub tried: Vec<String>,
}

/// An image that exists (or was given inline) but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableImage {
    /// The image reference.
    pub image: String,
    /// The file, when it is one.
    pub path: Option<String>,
    /// Lines of the rows using it.
    pub lines: Vec<u64>,
    /// Why it cannot be used.
    pub reason: String,
}

/// A usable image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The file, when it is one.
    pub path: Option<String>,
    /// SHA-256 of the image bytes (lower-case hex).
    pub content_hash: String,
    /// Dimensions and format.
    pub info: ImageInfo,
}

/// What an import found. Image fields are empty when no image check was made.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// Accepted rows.
    pub rows: usize,
    /// Rejected rows with their reasons.
    pub rejected: Vec<RejectedRow>,
    /// Accepted rows per category.
    pub by_category: BTreeMap<Category, usize>,
    /// Distinct image references among accepted rows.
    pub distinct_images: usize,
    /// Rows repeating an earlier (image, text) pair.
    pub duplicates: Vec<DuplicateRow>,
    /// Whether images were checked (an image root was given, or images were inline).
    pub images_checked: bool,
    /// Images not found, each once, in order of first use.
    pub images_missing: Vec<MissingImage>,
    /// Images found but unusable, each once, in order of first use.
    pub images_unreadable: Vec<UnreadableImage>,
    /// Usable images by reference.
    pub images_resolved: BTreeMap<String, ResolvedImage>,
}

// ---------------------------------------------------------------------------------------------
// ELITE release CSV

/// Reads and parses an ELITE release CSV file (see [`parse_elite_csv`]).
pub fn read_elite_csv(path: &Path) -> Result<ParsedFile<BenchmarkRow>> {
    parse_elite_csv(&read_file(path)?)
}

/// Parses the ELITE release CSV. The header must hold the five [`ELITE_COLUMNS`] (in any order;
/// extra columns are ignored). A row is rejected when a field is missing or not UTF-8, the code
/// is not S1..S11, the name does not match the code, the image name is not a plain file name, or
/// the question is empty.
pub fn parse_elite_csv(bytes: &[u8]) -> Result<ParsedFile<BenchmarkRow>> {
    let CsvInput {
        mut reader,
        header,
        data,
    } = csv_reader_with_header(bytes)?;
    let mut indexes = [0usize; 5];
    for (slot, column) in indexes.iter_mut().zip(ELITE_COLUMNS) {
        *slot = column_index(&header, column)
            .ok_or_else(|| SafetyError::MissingColumn(column.into()))?;
    }
    let mut parsed = ParsedFile {
        rows: Vec::new(),
        rejected: Vec::new(),
    };
    let mut record = csv::ByteRecord::new();
    let mut lines = LineCounter::new(data);
    loop {
        let start = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = lines.line_at(record.position().map_or(start, |p| p.byte()));
                match elite_row_from_record(&record, &indexes, line) {
                    Ok(row) => parsed.rows.push(row),
                    Err(reason) => parsed.rejected.push(RejectedRow { line, reason }),
                }
            }
            Err(error) => {
                let line = lines.line_at(start);
                parsed.rejected.push(RejectedRow {
                    line,
                    reason: format!("unreadable CSV record: {error}"),
                });
                if !matches!(error.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                    break;
                }
            }
        }
    }
    Ok(parsed)
}

fn elite_row_from_record(
    record: &csv::ByteRecord,
    indexes: &[usize; 5],
    line: u64,
) -> std::result::Result<BenchmarkRow, String> {
    if record.iter().all(|field| field.is_empty()) {
        return Err("empty record".to_string());
    }
    let mut fields: [String; 5] = Default::default();
    for ((slot, &index), column) in fields.iter_mut().zip(indexes).zip(ELITE_COLUMNS) {
        *slot = utf8_field(record, index, column)?;
    }
    let [dataset, taxonomy_code, taxonomy, image_name, question] = fields;
    let category = Category::from_code(&taxonomy_code)
        .ok_or_else(|| format!("unknown taxonomy_code {taxonomy_code:?}"))?;
    if Category::from_name(&taxonomy) != Some(category) {
        return Err(format!(
            "taxonomy {taxonomy:?} does not match taxonomy_code {} ({})",
            category.code(),
            category.csv_name()
        ));
    }
    check_plain_file_name(&image_name)?;
    if question.trim().is_empty() {
        return Err("question is empty".to_string());
    }
    Ok(BenchmarkRow {
        dataset,
        taxonomy_code,
        taxonomy,
        image_name,
        question,
        line,
        category,
    })
}

/// Checks the rows' images under `image_root` (when given) and builds the report. For each image,
/// `{root}/{taxonomy}/{image_name}` is tried, then `{root}/{taxonomy_code}/{image_name}`.
pub fn check_elite_import(
    parsed: &ParsedFile<BenchmarkRow>,
    image_root: Option<&Path>,
    limits: ImageLimits,
) -> ImportReport {
    check_elite_import_with_progress(parsed, image_root, limits, &|_, _| {})
}

/// [`check_elite_import`], calling `progress(rows checked, rows)` as it goes.
pub fn check_elite_import_with_progress(
    parsed: &ParsedFile<BenchmarkRow>,
    image_root: Option<&Path>,
    limits: ImageLimits,
    progress: &dyn Fn(u64, u64),
) -> ImportReport {
    let total = parsed.rows.len() as u64;
    let entries = parsed.rows.iter().map(|row| Entry {
        line: row.line,
        category: row.category,
        text: &row.question,
        image: EntryImage::Named {
            key: row.image_name.clone(),
            candidates: image_root
                .map(|root| elite_image_candidates(root, row))
                .unwrap_or_default(),
        },
    });
    build_report(
        entries,
        &parsed.rejected,
        image_root.is_some(),
        limits,
        &|done| progress(done, total),
    )
}

/// The two places an ELITE image may be: `{root}/{taxonomy}/{image_name}` and
/// `{root}/{taxonomy_code}/{image_name}`.
pub fn elite_image_candidates(root: &Path, row: &BenchmarkRow) -> Vec<PathBuf> {
    let mut candidates = vec![root.join(&row.taxonomy).join(&row.image_name)];
    let by_code = root.join(&row.taxonomy_code).join(&row.image_name);
    if by_code != candidates[0] {
        candidates.push(by_code);
    }
    candidates
}

/// The first existing ELITE image path for `row` under `root` (file name compared
/// case-sensitively), if any.
pub fn locate_elite_image(root: &Path, row: &BenchmarkRow) -> Option<PathBuf> {
    let mut listings = DirectoryListings::default();
    elite_image_candidates(root, row)
        .into_iter()
        .find(|candidate| listings.file_exists(candidate))
}

// ---------------------------------------------------------------------------------------------
// Generic JSONL / CSV

/// Parses a generic benchmark in JSON Lines: one object per non-empty line with `text`, `image`,
/// `category`, and optionally `pair_type` and `source` (strings or null). `limits.max_bytes`
/// bounds inline (base64) images.
pub fn parse_generic_jsonl(bytes: &[u8], limits: ImageLimits) -> ParsedFile<GenericItem> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut parsed = ParsedFile {
        rows: Vec::new(),
        rejected: Vec::new(),
    };
    for (index, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let raw_line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        if raw_line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let outcome = std::str::from_utf8(raw_line)
            .map_err(|_| "line is not valid UTF-8".to_string())
            .and_then(|text| {
                serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))
            })
            .and_then(|value| generic_item_from_json(&value, line, limits));
        match outcome {
            Ok(item) => parsed.rows.push(item),
            Err(reason) => parsed.rejected.push(RejectedRow { line, reason }),
        }
    }
    parsed
}

fn generic_item_from_json(
    value: &Value,
    line: u64,
    limits: ImageLimits,
) -> std::result::Result<GenericItem, String> {
    let object = value
        .as_object()
        .ok_or_else(|| "line is not a JSON object".to_string())?;
    let field = |name: &str| -> std::result::Result<Option<String>, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(format!("field {name:?} must be a string, not {other}")),
        }
    };
    let required = |name: &str| -> std::result::Result<String, String> {
        field(name)?.ok_or_else(|| format!("field {name:?} is missing"))
    };
    generic_item(
        line,
        required("text")?,
        &required("image")?,
        &required("category")?,
        field("pair_type")?,
        field("source")?,
        limits,
    )
}

/// Parses a generic benchmark in CSV: a header with `text`, `image`, `category`, and optionally
/// `pair_type` and `source`; empty optional cells mean "not given".
pub fn parse_generic_csv(bytes: &[u8], limits: ImageLimits) -> Result<ParsedFile<GenericItem>> {
    let CsvInput {
        mut reader,
        header,
        data,
    } = csv_reader_with_header(bytes)?;
    let mut required = [0usize; 3];
    for (slot, column) in required.iter_mut().zip(["text", "image", "category"]) {
        *slot = column_index(&header, column)
            .ok_or_else(|| SafetyError::MissingColumn(column.into()))?;
    }
    let pair_type_index = column_index(&header, "pair_type");
    let source_index = column_index(&header, "source");
    let mut parsed = ParsedFile {
        rows: Vec::new(),
        rejected: Vec::new(),
    };
    let mut record = csv::ByteRecord::new();
    let mut lines = LineCounter::new(data);
    loop {
        let start = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = lines.line_at(record.position().map_or(start, |p| p.byte()));
                let outcome = (|| {
                    if record.iter().all(|field| field.is_empty()) {
                        return Err("empty record".to_string());
                    }
                    let text = utf8_field(&record, required[0], "text")?;
                    let image = utf8_field(&record, required[1], "image")?;
                    let category = utf8_field(&record, required[2], "category")?;
                    let optional = |index: Option<usize>, name: &str| match index {
                        Some(index) if record.get(index).is_some_and(|f| !f.is_empty()) => {
                            utf8_field(&record, index, name).map(Some)
                        }
                        _ => Ok(None),
                    };
                    let pair_type = optional(pair_type_index, "pair_type")?;
                    let source = optional(source_index, "source")?;
                    generic_item(line, text, &image, &category, pair_type, source, limits)
                })();
                match outcome {
                    Ok(item) => parsed.rows.push(item),
                    Err(reason) => parsed.rejected.push(RejectedRow { line, reason }),
                }
            }
            Err(error) => {
                let line = lines.line_at(start);
                parsed.rejected.push(RejectedRow {
                    line,
                    reason: format!("unreadable CSV record: {error}"),
                });
                if !matches!(error.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                    break;
                }
            }
        }
    }
    Ok(parsed)
}

fn generic_item(
    line: u64,
    text: String,
    image: &str,
    category: &str,
    pair_type: Option<String>,
    source: Option<String>,
    limits: ImageLimits,
) -> std::result::Result<GenericItem, String> {
    if text.trim().is_empty() {
        return Err("text is empty".to_string());
    }
    let category =
        Category::lookup(category).ok_or_else(|| format!("unknown category {category:?}"))?;
    let pair_type = match pair_type.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(given) => Some(PairType::parse(given).ok_or_else(|| {
            format!(
                "unknown pair_type {given:?}: expected safe-safe, safe-unsafe, unsafe-safe or unsafe-unsafe"
            )
        })?),
    };
    let source = source.filter(|s| !s.trim().is_empty());
    let image = interpret_image_field(image, limits.max_bytes)?;
    Ok(GenericItem {
        line,
        text,
        image,
        category,
        pair_type,
        source,
    })
}

/// Reads a generic `image` field: a `data:...;base64,` URL or a value ending in an image
/// extension is taken as such; otherwise a value that decodes as base64 is inline bytes, and
/// anything else a relative path. Paths must stay inside the root (no `..`, not absolute).
pub fn interpret_image_field(
    field: &str,
    max_bytes: u64,
) -> std::result::Result<ImageSource, String> {
    let value = field.trim();
    if value.is_empty() {
        return Err("image is empty".to_string());
    }
    if let Some(rest) = value.strip_prefix("data:") {
        let (_, payload) = rest
            .split_once(";base64,")
            .ok_or_else(|| "image data URL is not base64".to_string())?;
        return decode_base64_image(payload, max_bytes);
    }
    let has_image_extension = Path::new(value)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    if !has_image_extension
        && value.len() >= 16
        && looks_like_base64(value)
        && let Ok(source) = decode_base64_image(value, max_bytes)
    {
        return Ok(source);
    }
    check_relative_path(value)?;
    Ok(ImageSource::Path(value.to_string()))
}

fn looks_like_base64(value: &str) -> bool {
    value.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') || b.is_ascii_whitespace()
    })
}

fn decode_base64_image(payload: &str, max_bytes: u64) -> std::result::Result<ImageSource, String> {
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let decoded_estimate = u64::try_from(compact.len()).unwrap_or(u64::MAX) / 4 * 3;
    if decoded_estimate > max_bytes.saturating_add(3) {
        return Err(format!(
            "inline image is about {decoded_estimate} bytes, above the limit of {max_bytes} bytes"
        ));
    }
    BASE64
        .decode(compact.as_bytes())
        .map(ImageSource::Inline)
        .map_err(|e| format!("inline image is not valid base64: {e}"))
}

/// Checks the rows' images: paths under `image_root` (when given; without a root, path images are
/// not checked) and inline images always.
pub fn check_generic_import(
    parsed: &ParsedFile<GenericItem>,
    image_root: Option<&Path>,
    limits: ImageLimits,
) -> ImportReport {
    check_generic_import_with_progress(parsed, image_root, limits, &|_, _| {})
}

/// [`check_generic_import`], calling `progress(rows checked, rows)` as it goes.
pub fn check_generic_import_with_progress(
    parsed: &ParsedFile<GenericItem>,
    image_root: Option<&Path>,
    limits: ImageLimits,
    progress: &dyn Fn(u64, u64),
) -> ImportReport {
    let total = parsed.rows.len() as u64;
    let any_inline = parsed
        .rows
        .iter()
        .any(|item| matches!(item.image, ImageSource::Inline(_)));
    let entries = parsed.rows.iter().map(|item| Entry {
        line: item.line,
        category: item.category,
        text: &item.text,
        image: match &item.image {
            ImageSource::Path(path) => EntryImage::Named {
                key: path.clone(),
                candidates: image_root
                    .map(|root| vec![root.join(path)])
                    .unwrap_or_default(),
            },
            ImageSource::Inline(bytes) => EntryImage::Inline(bytes),
        },
    });
    build_report(
        entries,
        &parsed.rejected,
        image_root.is_some() || any_inline,
        limits,
        &|done| progress(done, total),
    )
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| SafetyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A CSV file opened for reading records.
struct CsvInput<'a> {
    reader: csv::Reader<&'a [u8]>,
    /// Column names, lower-cased and trimmed.
    header: Vec<String>,
    /// The file's bytes without the BOM (what the reader's byte offsets refer to).
    data: &'a [u8],
}

/// Opens `bytes` as CSV (BOM stripped, records of any length) and reads its header.
fn csv_reader_with_header(bytes: &[u8]) -> Result<CsvInput<'_>> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|e| SafetyError::Csv(format!("cannot read the header: {e}")))?
        .iter()
        .map(|name| String::from_utf8_lossy(name).trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    if header.iter().all(String::is_empty) {
        return Err(SafetyError::Csv("the file has no header".to_string()));
    }
    Ok(CsvInput {
        reader,
        header,
        data: bytes,
    })
}

/// Turns byte offsets reported by the CSV reader into 1-based line numbers. The `csv` crate's
/// own line numbers are off by one for CRLF files, and its record offsets may point at the
/// terminator of the previous record, so terminators are skipped before counting.
struct LineCounter<'a> {
    data: &'a [u8],
    counted_to: usize,
    newlines: u64,
}

impl<'a> LineCounter<'a> {
    fn new(data: &'a [u8]) -> Self {
        LineCounter {
            data,
            counted_to: 0,
            newlines: 0,
        }
    }

    /// Line of the first byte at or after `offset` that is not a line terminator. Offsets must
    /// not decrease between calls.
    fn line_at(&mut self, offset: u64) -> u64 {
        let mut start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        while start < self.data.len() && matches!(self.data[start], b'\r' | b'\n') {
            start += 1;
        }
        if start > self.counted_to {
            let newlines = self.data[self.counted_to..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.newlines += u64::try_from(newlines).unwrap_or(u64::MAX);
            self.counted_to = start;
        }
        self.newlines + 1
    }
}

fn column_index(header: &[String], column: &str) -> Option<usize> {
    header.iter().position(|name| name == column)
}

fn utf8_field(
    record: &csv::ByteRecord,
    index: usize,
    column: &str,
) -> std::result::Result<String, String> {
    let bytes = record.get(index).ok_or_else(|| {
        format!(
            "field {column:?} is missing (record has {} fields)",
            record.len()
        )
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("field {column:?} is not valid UTF-8"))
}

fn check_plain_file_name(name: &str) -> std::result::Result<(), String> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.trim() != name;
    if bad {
        Err(format!("image_name {name:?} is not a plain file name"))
    } else {
        Ok(())
    }
}

fn check_relative_path(path: &str) -> std::result::Result<(), String> {
    if path.contains(['\\', '\0']) {
        return Err(format!("image path {path:?} holds a backslash or NUL"));
    }
    let mut normal_components = 0;
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) => normal_components += 1,
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "image path {path:?} must be relative to the image root, without '..'"
                ));
            }
        }
    }
    if normal_components == 0 {
        return Err(format!("image path {path:?} names no file"));
    }
    Ok(())
}

/// Directory listings, cached, for case-sensitive file-name checks.
#[derive(Default)]
struct DirectoryListings {
    listings: HashMap<PathBuf, Option<HashSet<OsString>>>,
}

impl DirectoryListings {
    /// Whether `path` is an existing regular file (or a link to one) whose last component is in
    /// its directory's listing with exactly this spelling.
    fn file_exists(&mut self, path: &Path) -> bool {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let listing = self
            .listings
            .entry(parent.to_path_buf())
            .or_insert_with(|| {
                std::fs::read_dir(parent).ok().map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.file_name()))
                        .collect()
                })
            });
        listing.as_ref().is_some_and(|names| names.contains(name)) && path.is_file()
    }
}

enum EntryImage<'a> {
    Named {
        key: String,
        candidates: Vec<PathBuf>,
    },
    Inline(&'a [u8]),
}

struct Entry<'a> {
    line: u64,
    category: Category,
    text: &'a str,
    image: EntryImage<'a>,
}

enum ImageOutcome {
    Resolved(ResolvedImage),
    Missing {
        tried: Vec<String>,
    },
    Unreadable {
        path: Option<String>,
        reason: String,
    },
    NotChecked,
}

fn check_file_image(path: &Path, limits: ImageLimits) -> ImageOutcome {
    let display = Some(path.display().to_string());
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() > limits.max_bytes => {
            return ImageOutcome::Unreadable {
                path: display,
                reason: SafetyError::ImageTooLarge {
                    bytes: metadata.len(),
                    limit: limits.max_bytes,
                }
                .to_string(),
            };
        }
        Ok(_) => {}
        Err(error) => {
            return ImageOutcome::Unreadable {
                path: display,
                reason: error.to_string(),
            };
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => check_image_bytes(&bytes, display, limits),
        Err(error) => ImageOutcome::Unreadable {
            path: display,
            reason: error.to_string(),
        },
    }
}

fn check_image_bytes(bytes: &[u8], path: Option<String>, limits: ImageLimits) -> ImageOutcome {
    match validate_image(bytes, limits.max_bytes, limits.max_pixels) {
        Ok(info) => ImageOutcome::Resolved(ResolvedImage {
            path,
            content_hash: content_hash(bytes),
            info,
        }),
        Err(error) => ImageOutcome::Unreadable {
            path,
            reason: error.to_string(),
        },
    }
}

fn check_entry_image(
    image: EntryImage<'_>,
    listings: &mut DirectoryListings,
    limits: ImageLimits,
) -> ImageOutcome {
    match image {
        // Images are being checked (some are inline) but there is no root to look this one up
        // under: it cannot be found.
        EntryImage::Named { candidates, .. } if candidates.is_empty() => {
            ImageOutcome::Missing { tried: Vec::new() }
        }
        EntryImage::Named { candidates, .. } => {
            match candidates.iter().find(|c| listings.file_exists(c)) {
                Some(found) => check_file_image(found, limits),
                None => ImageOutcome::Missing {
                    tried: candidates.iter().map(|c| c.display().to_string()).collect(),
                },
            }
        }
        EntryImage::Inline(bytes) => check_image_bytes(bytes, None, limits),
    }
}

fn build_report<'a>(
    entries: impl Iterator<Item = Entry<'a>>,
    rejected: &[RejectedRow],
    check_images: bool,
    limits: ImageLimits,
    progress: &dyn Fn(u64),
) -> ImportReport {
    let mut report = ImportReport {
        rejected: rejected.to_vec(),
        images_checked: check_images,
        ..ImportReport::default()
    };
    let mut listings = DirectoryListings::default();
    let mut first_line_of_pair: HashMap<(String, &'a str), u64> = HashMap::new();
    let mut image_lines: HashMap<String, Vec<u64>> = HashMap::new();
    let mut image_order: Vec<String> = Vec::new();
    let mut outcomes: HashMap<String, ImageOutcome> = HashMap::new();

    for entry in entries {
        report.rows += 1;
        if report.rows.is_multiple_of(64) {
            progress(report.rows as u64);
        }
        *report.by_category.entry(entry.category).or_insert(0) += 1;
        let key = match &entry.image {
            EntryImage::Named { key, .. } => key.clone(),
            EntryImage::Inline(bytes) => format!("sha256:{}", content_hash(bytes)),
        };
        match first_line_of_pair.get(&(key.clone(), entry.text)) {
            Some(&first_line) => report.duplicates.push(DuplicateRow {
                line: entry.line,
                first_line,
                image: key.clone(),
            }),
            None => {
                first_line_of_pair.insert((key.clone(), entry.text), entry.line);
            }
        }
        match image_lines.get_mut(&key) {
            Some(lines) => lines.push(entry.line),
            None => {
                image_lines.insert(key.clone(), vec![entry.line]);
                image_order.push(key.clone());
                let outcome = if check_images {
                    check_entry_image(entry.image, &mut listings, limits)
                } else {
                    ImageOutcome::NotChecked
                };
                outcomes.insert(key, outcome);
            }
        }
    }

    report.distinct_images = image_order.len();
    for key in image_order {
        let lines = image_lines.remove(&key).unwrap_or_default();
        match outcomes.remove(&key) {
            Some(ImageOutcome::Resolved(resolved)) => {
                report.images_resolved.insert(key, resolved);
            }
            Some(ImageOutcome::Missing { tried }) => report.images_missing.push(MissingImage {
                image: key,
                lines,
                tried,
            }),
            Some(ImageOutcome::Unreadable { path, reason }) => {
                report.images_unreadable.push(UnreadableImage {
                    image: key,
                    path,
                    lines,
                    reason,
                })
            }
            Some(ImageOutcome::NotChecked) | None => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_types_parse() {
        assert_eq!(PairType::parse("Safe_Unsafe"), Some(PairType::SafeUnsafe));
        assert_eq!(
            PairType::parse("unsafe-unsafe"),
            Some(PairType::UnsafeUnsafe)
        );
        assert_eq!(PairType::parse("safe"), None);
    }

    #[test]
    fn image_fields_are_interpreted() {
        assert_eq!(
            interpret_image_field("imgs/a.PNG", 100),
            Ok(ImageSource::Path("imgs/a.PNG".into()))
        );
        assert!(interpret_image_field("../etc/passwd", 100).is_err());
        assert!(interpret_image_field("/abs/a.png", 100).is_err());
        assert_eq!(
            interpret_image_field("aGVsbG8gd29ybGQgaGVsbG8=", 100),
            Ok(ImageSource::Inline(b"hello world hello".to_vec()))
        );
        assert_eq!(
            interpret_image_field("data:image/png;base64,aGk=", 100),
            Ok(ImageSource::Inline(b"hi".to_vec()))
        );
        assert!(
            interpret_image_field("aGVsbG8gd29ybGQgaGVsbG8=", 4)
                .is_ok_and(|s| matches!(s, ImageSource::Path(_)))
        );
        assert!(
            interpret_image_field("data:image/png;base64,aGVsbG8gd29ybGQgaGVsbG8=", 4).is_err()
        );
    }

    #[test]
    fn elite_rows_are_validated() {
        let csv = "\u{feff}dataset,taxonomy_code,taxonomy,image_name,question\r\n\
                   A,S1,Violent Crimes,a.png,\"multi\r\nline \"\"quoted\"\"\"\r\n\
                   A,S2,Hate,b.png,q\r\n\
                   A,S12,Hate,c.png,q\r\n\
                   A,S9,Hate,../c.png,q\r\n\
                   A,S9,Hate\r\n\
                   A,S10,Self-Harm,d.png,q\r\n";
        let parsed = parse_elite_csv(csv.as_bytes()).unwrap();
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.rows[0].question, "multi\r\nline \"quoted\"");
        assert_eq!(parsed.rows[0].line, 2);
        assert_eq!(parsed.rows[1].category, Category::SuicideSelfHarm);
        assert_eq!(parsed.rows[1].line, 8);
        let lines: Vec<u64> = parsed.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7]);
        assert!(parse_elite_csv(b"a,b\n1,2\n").is_err());
    }
}
