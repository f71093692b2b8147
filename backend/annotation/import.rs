//! Parsing label files for import: CSV with a header row, or JSON Lines. Pure. A row names its
//! response by `response_id`, or by `run_id` and `item_id`; `annotator` is a pseudonym; `unsafe`
//! is true/false/1/0/unsafe/safe; optional `refused`, `toxicity`, `convincing`, `specific`
//! carry rubric answers (all four or none; with them `unsafe` may be left out and is derived).
//! Rows that record a skip or a flag (`skipped` / `flagged` true and no verdict, as exports
//! write them) are not labels: they are listed as ignored. Any malformed row rejects the whole
//! file, with its line number. In JSON Lines, a nested `rubric` object is read like top-level
//! rubric fields, so an export imports back as it is.

use std::fmt;

use super::schema::{RubricLabel, parse_verdict};
use super::{AnnotationError, Result};

/// Files larger than this many rows are refused.
pub const MAX_ROWS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKey {
    Response(i64),
    RunItem { run_id: i64, item_id: i64 },
}

impl fmt::Display for ResponseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseKey::Response(id) => write!(f, "response {id}"),
            ResponseKey::RunItem { run_id, item_id } => write!(f, "run {run_id} item {item_id}"),
        }
    }
}

/// One valid row of a label file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    /// 1-based line in the file (the header is line 1 of a CSV).
    pub line: usize,
    pub key: ResponseKey,
    pub annotator: String,
    pub is_unsafe: bool,
    pub rubric: Option<RubricLabel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// From a `format` parameter, else the content type, else a look at the first byte.
    pub fn detect(param: Option<&str>, content_type: Option<&str>, body: &str) -> Result<Format> {
        match param.map(|p| p.trim().to_ascii_lowercase()) {
            Some(p) if p == "csv" => return Ok(Format::Csv),
            Some(p) if p == "jsonl" || p == "ndjson" || p == "json" => return Ok(Format::Jsonl),
            Some(p) if !p.is_empty() => {
                return Err(AnnotationError::Invalid(format!(
                    "unknown format {p:?}: csv or jsonl"
                )));
            }
            _ => {}
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.contains("csv") {
            Ok(Format::Csv)
        } else if ct.contains("json") || body.trim_start().starts_with('{') {
            Ok(Format::Jsonl)
        } else {
            Ok(Format::Csv)
        }
    }
}

/// A parsed label file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelFile {
    pub rows: Vec<ImportRow>,
    /// `line N: ...` for rows that are skips or flags, not labels.
    pub ignored: Vec<String>,
}

/// Parse a whole file; the first malformed row fails it.
pub fn parse(format: Format, body: &str) -> Result<LabelFile> {
    let parsed = match format {
        Format::Csv => parse_csv(body)?,
        Format::Jsonl => parse_jsonl(body)?,
    };
    let mut file = LabelFile::default();
    for (line, row) in parsed {
        match row {
            Some(row) => file.rows.push(row),
            None => file
                .ignored
                .push(format!("line {line}: a skip or flag, not a label")),
        }
    }
    let rows = &file.rows;
    if rows.is_empty() && file.ignored.is_empty() {
        return Err(AnnotationError::Invalid("the file holds no labels".into()));
    }
    if rows.len() > MAX_ROWS {
        return Err(AnnotationError::Invalid(format!(
            "at most {MAX_ROWS} labels per file"
        )));
    }
    Ok(file)
}

/// Field access shared by both formats: each gives a lookup of text values by name. `None` for
/// a skip or flag row.
fn row_from(line: usize, get: &dyn Fn(&str) -> Option<String>) -> Result<Option<ImportRow>> {
    let bad = |m: String| AnnotationError::Invalid(format!("line {line}: {m}"));
    let int = |name: &str| -> Result<Option<i64>> {
        match get(name).filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("{name} {v:?} is not a whole number"))),
        }
    };
    let key = match (int("response_id")?, int("run_id")?, int("item_id")?) {
        (Some(id), _, _) => ResponseKey::Response(id),
        (None, Some(run_id), Some(item_id)) => ResponseKey::RunItem { run_id, item_id },
        _ => return Err(bad("give response_id, or run_id and item_id".into())),
    };
    let annotator = get("annotator")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("annotator is missing".into()))?;
    if annotator.chars().count() > 100 {
        return Err(bad("annotator pseudonym longer than 100 characters".into()));
    }
    let rubric_values: Vec<Option<i64>> = ["refused", "toxicity", "convincing", "specific"]
        .iter()
        .map(|n| int(n))
        .collect::<Result<_>>()?;
    let rubric = match rubric_values.as_slice() {
        [Some(r), Some(t), Some(c), Some(s)] => {
            let small =
                |v: i64| u8::try_from(v).map_err(|_| bad(format!("rubric value {v} out of range")));
            let rubric = RubricLabel {
                refused: small(*r)?,
                toxicity: small(*t)?,
                convincing: small(*c)?,
                specific: small(*s)?,
            };
            rubric.validate().map_err(|e| bad(e.to_string()))?;
            Some(rubric)
        }
        values if values.iter().all(Option::is_none) => None,
        _ => return Err(bad("give all four rubric items or none".into())),
    };
    let verdict = match get("unsafe").filter(|v| !v.trim().is_empty()) {
        Some(v) => Some(
            parse_verdict(&v)
                .ok_or_else(|| bad(format!("unsafe {v:?}: true/false, 1/0, unsafe/safe")))?,
        ),
        None => None,
    };
    let marked = |name: &str| get(name).and_then(|v| parse_verdict(&v)) == Some(true);
    let is_unsafe = match (verdict, rubric) {
        (Some(v), _) => v,
        (None, Some(r)) => r.is_unsafe(),
        (None, None) if marked("skipped") || marked("flagged") => return Ok(None),
        (None, None) => return Err(bad("unsafe is missing".into())),
    };
    Ok(Some(ImportRow {
        line,
        key,
        annotator,
        is_unsafe,
        rubric,
    }))
}

fn parse_csv(body: &str) -> Result<Vec<(usize, Option<ImportRow>)>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(body.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| AnnotationError::Invalid(format!("line 1: {e}")))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map(|p| p.line() as usize)
            .unwrap_or(i + 2);
        let record = record.map_err(|e| AnnotationError::Invalid(format!("line {line}: {e}")))?;
        let get = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .and_then(|i| record.get(i))
                .map(str::to_string)
        };
        rows.push((line, row_from(line, &get)?));
    }
    Ok(rows)
}

fn parse_jsonl(body: &str) -> Result<Vec<(usize, Option<ImportRow>)>> {
    let mut rows = Vec::new();
    for (i, text) in body.lines().enumerate() {
        let line = i + 1;
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| AnnotationError::Invalid(format!("line {line}: not JSON ({e})")))?;
        let object = value
            .as_object()
            .ok_or_else(|| AnnotationError::Invalid(format!("line {line}: not a JSON object")))?;
        let rubric = object.get("rubric").and_then(|r| r.as_object());
        let get = |name: &str| match object
            .get(name)
            .or_else(|| rubric.and_then(|r| r.get(name)))
        {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        rows.push((line, row_from(line, &get)?));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_jsonl_give_the_same_rows() {
        let csv = "response_id,annotator,unsafe\n7,ann-1,unsafe\n8,ann-1,0\n";
        let jsonl = "{\"response_id\": 7, \"annotator\": \"ann-1\", \"unsafe\": true}\n\n{\"response_id\": \"8\", \"annotator\": \"ann-1\", \"unsafe\": \"safe\"}\n";
        let a = parse(Format::Csv, csv).unwrap().rows;
        let b = parse(Format::Jsonl, jsonl).unwrap().rows;
        assert_eq!(a.len(), 2);
        assert_eq!(
            a.iter().map(|r| (r.key, r.is_unsafe)).collect::<Vec<_>>(),
            b.iter().map(|r| (r.key, r.is_unsafe)).collect::<Vec<_>>()
        );
        assert_eq!(a[0].line, 2);
    }

    #[test]
    fn run_item_keys_and_rubrics_are_read() {
        let csv = "run_id,item_id,annotator,refused,toxicity,convincing,specific\n1,2,x,0,4,5,5\n";
        let rows = parse(Format::Csv, csv).unwrap().rows;
        assert_eq!(
            rows[0].key,
            ResponseKey::RunItem {
                run_id: 1,
                item_id: 2
            }
        );
        assert!(rows[0].is_unsafe);
        let nested = "{\"response_id\": 4, \"annotator\": \"x\", \"unsafe\": null, \"rubric\": {\"refused\": 1, \"toxicity\": 0, \"convincing\": 1, \"specific\": 1}}";
        let rows = parse(Format::Jsonl, nested).unwrap().rows;
        assert_eq!(rows[0].rubric.map(|r| r.refused), Some(1));
        assert!(!rows[0].is_unsafe);
    }

    #[test]
    fn skips_and_flags_are_ignored_not_refused() {
        let csv = "response_id,annotator,unsafe,skipped,flagged\n1,a,,true,false\n2,a,,false,true\n3,a,1,false,false\n";
        let file = parse(Format::Csv, csv).unwrap();
        assert_eq!(file.rows.len(), 1);
        assert_eq!(file.ignored.len(), 2);
        assert!(file.ignored[0].starts_with("line 2"));
    }

    #[test]
    fn malformed_rows_fail_with_their_line() {
        for (body, needle) in [
            ("response_id,annotator,unsafe\n1,a,maybe\n", "line 2"),
            ("response_id,annotator\n1,a\n", "unsafe is missing"),
            ("annotator,unsafe\na,1\n", "response_id"),
            (
                "response_id,annotator,unsafe,refused\n1,a,1,0\n",
                "all four",
            ),
            ("response_id,annotator,unsafe\n", "no labels"),
        ] {
            let e = parse(Format::Csv, body).unwrap_err().to_string();
            assert!(e.contains(needle), "{body:?}: {e}");
        }
        let e = parse(Format::Jsonl, "{\"response_id\": 1}\nnot json\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
