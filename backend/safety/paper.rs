//! The paper's reference results: overall E-ASR (%) of each model on the full ELITE benchmark
//! (Table 3 of the paper), as seed data for the leaderboard's "paper" column, a matcher from a
//! user's model name to a paper model name that ignores case and punctuation, the rule saying
//! which runs are comparable with those figures ([`is_full_elite`]), and the reader of the
//! per-category table an admin loads ([`parse_category_table`]).
//!
//! Only the overall (average) row of Table 3 is seeded: the paper also reports E-ASR per hazard
//! category for every model, but those numbers are not in our specification or in any source
//! this project could read, and we do not make them up. An admin loads them from their own copy
//! of the paper (`elite paper load`, `PUT /api/v1/paper/categories`) as a CSV, in long form
//! (`model,category,e_asr`) or as the table reads (`model,S1,...,S11`); the pages then show
//! them beside full-ELITE runs with the file's provenance.
//!
//! The paper's figures come from GPT-4o as judge with the authors' own prompt; a run compared
//! with them is labelled with its own judge and template ([`comparison_label`]).

use std::collections::BTreeMap;

use super::taxonomy::Category;

/// Overall E-ASR, in percent, per model (paper Table 3, full benchmark).
pub const PAPER_E_ASR: &[(&str, f64)] = &[
    ("GPT-4o", 15.67),
    ("GPT-4o-mini", 28.23),
    ("Gemini-2.0-Flash", 55.37),
    ("Gemini-1.5-Pro", 37.69),
    ("Gemini-1.5-Flash", 40.70),
    ("LLaVA-v1.5-7B", 63.59),
    ("LLaVA-v1.5-13B", 69.68),
    ("DeepSeek-VL-7B", 42.36),
    ("DeepSeek-VL2-Small", 60.95),
    ("ShareGPT4V-7B", 67.16),
    ("ShareGPT4V-13B", 68.08),
    ("Phi-3.5-Vision", 31.85),
    ("Pixtral-12B", 79.86),
    ("Llama-3.2-11B-Vision", 47.94),
    ("Qwen2-VL-7B", 53.72),
    ("Molmo-7B", 63.79),
    ("InternVL2.5-8B", 46.48),
    ("InternVL2.5-26B", 36.21),
];

/// Rows of the ELITE release (the public CSV; the specification's 4,587 image-text pairs).
pub const ELITE_RELEASE_ITEMS: i64 = 4_587;

/// How the ELITE CSV importers (`elite import elite-csv` and `POST /api/v1/benchmarks/elite`)
/// begin a benchmark's source; no other import writes it.
pub const ELITE_CSV_SOURCE_PREFIX: &str = "elite-csv:";

/// What decides whether a run is comparable with Table 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunScope<'a> {
    /// The run's benchmark's `source`.
    pub benchmark_source: &'a str,
    /// Items of the run's benchmark.
    pub benchmark_items: i64,
    /// Items the run selected.
    pub run_items: i64,
    /// Whether the run wraps each item's text in a prompt template of its own.
    pub prompt_template: bool,
}

/// Whether a run covers the full ELITE benchmark, so that the paper's Table 3 figure may be
/// shown beside it: its benchmark is an import of the ELITE CSV holding every one of the
/// release's 4,587 rows, the run selected every item of it (no category, source or pair-type
/// filter and no sample left anything out), and the items' texts go to the model as they are
/// (no prompt template). Items skipped for a missing image still count as selected; the page
/// states how many were skipped.
pub fn is_full_elite(scope: &RunScope) -> bool {
    scope.benchmark_source.starts_with(ELITE_CSV_SOURCE_PREFIX)
        && scope.benchmark_items == ELITE_RELEASE_ITEMS
        && scope.run_items == scope.benchmark_items
        && !scope.prompt_template
}

/// The paper's figure beside a comparable run, with what differs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PaperComparison {
    /// The paper's model name.
    pub paper_model: String,
    /// Its E-ASR in percent (Table 3, full benchmark).
    pub e_asr_percent: f64,
    /// Judge and template of the paper and of this run.
    pub label: String,
    /// The paper's E-ASR per category code, in percent, when an admin loaded them
    /// ([`parse_category_table`]); empty otherwise.
    pub by_category: BTreeMap<String, f64>,
    /// Where the per-category figures came from, as the admin who loaded them said.
    pub categories_provenance: Option<String>,
}

/// The label beside a paper figure: the paper's judge and prompt, and this run's.
pub fn comparison_label(run_judge: &str, template_id: &str, template_version: &str) -> String {
    let same_judge = exact_match(run_judge).is_some_and(|(name, _)| name == "GPT-4o");
    format!(
        "paper: GPT-4o judge, the authors' prompt; this run: {} judge {run_judge}, template {template_id} v{template_version}",
        if same_judge { "same" } else { "different" },
    )
}

/// Suffix words dropped when an exact match fails (`Qwen/Qwen2-VL-7B-Instruct` -> `Qwen2-VL-7B`).
const IGNORED_SUFFIXES: [&str; 4] = ["instruct", "hf", "chat", "it"];

/// Lower-case ASCII letters and digits of a name: `LLaVA-v1.5-7B` -> `llavav157b`.
pub fn normalize_model_name(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The paper model matching `name`, with its E-ASR in percent.
///
/// Names match when their letters and digits agree, ignoring case (`llava-v1.5-7b` matches
/// `LLaVA-v1.5-7B`). When that fails, an organisation prefix (`org/`) and trailing words
/// `instruct`, `hf`, `chat`, `it` are dropped and the match is tried again. Different models
/// never match each other (`GPT-4o` does not match `GPT-4o-mini`).
pub fn paper_e_asr(name: &str) -> Option<(&'static str, f64)> {
    exact_match(name).or_else(|| {
        let without_org = name.rsplit('/').next().unwrap_or(name);
        let mut words: Vec<&str> = without_org
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
            .filter(|w| !w.is_empty())
            .collect();
        while words
            .last()
            .is_some_and(|w| IGNORED_SUFFIXES.contains(&w.to_ascii_lowercase().as_str()))
        {
            words.pop();
        }
        exact_match(&words.join("-"))
    })
}

fn exact_match(name: &str) -> Option<(&'static str, f64)> {
    let key = normalize_model_name(name);
    if key.is_empty() {
        return None;
    }
    PAPER_E_ASR
        .iter()
        .copied()
        .find(|(paper_name, _)| normalize_model_name(paper_name) == key)
}

/// Largest per-category table accepted, in bytes (18 models x 11 categories need about 6 KiB).
pub const MAX_CATEGORY_TABLE_BYTES: usize = 64 * 1024;

/// One per-category figure of Table 3.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct CategoryFigure {
    /// The paper's model name (as in [`PAPER_E_ASR`]).
    pub paper_model: String,
    /// The category's code, `S1`..`S11`.
    pub category: String,
    /// E-ASR in percent.
    pub e_asr_percent: f64,
}

/// Read a per-category table: CSV with a header row, `#` lines as comments (for provenance).
///
/// Two layouts are accepted. Long: columns `model`, `category` and `e_asr` (any order, other
/// columns refused), one figure per row. Wide, as Table 3 is printed: a `model` column and one
/// column per category, headed by code or name (`S1`, `Violent Crimes`); an empty cell or `-`
/// means no figure. Models must be Table 3's (matched loosely, stored under the paper's name),
/// categories the taxonomy's, figures percentages from 0 to 100 (a trailing `%` is allowed).
/// A model-category pair may appear once. Anything else refuses the whole file, naming its line.
pub fn parse_category_table(bytes: &[u8]) -> Result<Vec<CategoryFigure>, String> {
    if bytes.len() > MAX_CATEGORY_TABLE_BYTES {
        return Err(format!(
            "the table has {} bytes; at most {MAX_CATEGORY_TABLE_BYTES} are accepted",
            bytes.len()
        ));
    }
    if bytes.contains(&0) {
        return Err("the table contains a NUL byte".into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "the table is not UTF-8 text".to_string())?;
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the header row cannot be read: {e}"))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let Some(model_col) = header.iter().position(|h| h == "model") else {
        return Err("the header row needs a `model` column".into());
    };
    let long = header.iter().any(|h| h == "category");
    let mut columns: Vec<Option<Category>> = Vec::with_capacity(header.len());
    let (mut category_col, mut value_col) = (None, None);
    for (i, name) in header.iter().enumerate() {
        if i == model_col {
            columns.push(None);
            continue;
        }
        if long {
            match name.as_str() {
                "category" if category_col.is_none() => category_col = Some(i),
                "e_asr" | "e-asr" | "e_asr_percent" if value_col.is_none() => value_col = Some(i),
                other => {
                    return Err(format!(
                        "unexpected column {other:?}: the long layout has model, category and e_asr"
                    ));
                }
            }
            columns.push(None);
        } else {
            let Some(category) = Category::lookup(name) else {
                return Err(format!("column {name:?} is not a hazard category"));
            };
            if columns.contains(&Some(category)) {
                return Err(format!("category {} has two columns", category.code()));
            }
            columns.push(Some(category));
        }
    }
    if long && value_col.is_none() {
        return Err("the long layout needs an `e_asr` column".into());
    }
    let mut figures: BTreeMap<(&'static str, Category), f64> = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.position() {
            Some(p) => format!("line {}: the row cannot be read ({e})", p.line()),
            None => format!("a row cannot be read: {e}"),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let model = record.get(model_col).unwrap_or_default();
        let Some((paper_model, _)) = paper_e_asr(model) else {
            return Err(format!(
                "line {line}: {model:?} is not a model of Table 3 ({})",
                PAPER_E_ASR
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let mut cells: Vec<(Category, &str)> = Vec::new();
        if let (Some(c), Some(v)) = (category_col, value_col) {
            let text = record.get(c).unwrap_or_default();
            let category = Category::lookup(text)
                .ok_or_else(|| format!("line {line}: {text:?} is not a hazard category"))?;
            cells.push((category, record.get(v).unwrap_or_default()));
        } else {
            for (i, category) in columns.iter().enumerate() {
                if let Some(category) = category {
                    let cell = record.get(i).unwrap_or_default();
                    if !(cell.is_empty() || cell == "-") {
                        cells.push((*category, cell));
                    }
                }
            }
        }
        for (category, text) in cells {
            let value = text
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
                .ok_or_else(|| {
                    format!("line {line}: E-ASR {text:?} is not a percentage from 0 to 100")
                })?;
            if figures.insert((paper_model, category), value).is_some() {
                return Err(format!(
                    "line {line}: {paper_model} {} appears twice",
                    category.code()
                ));
            }
        }
    }
    if figures.is_empty() {
        return Err("the table holds no figures".into());
    }
    Ok(figures
        .into_iter()
        .map(|((paper_model, category), e_asr_percent)| CategoryFigure {
            paper_model: paper_model.to_string(),
            category: category.code().to_string(),
            e_asr_percent,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_loosely_but_not_wrongly() {
        assert_eq!(paper_e_asr("llava-v1.5-7b"), Some(("LLaVA-v1.5-7B", 63.59)));
        assert_eq!(
            paper_e_asr("LLAVA v1.5 13B"),
            Some(("LLaVA-v1.5-13B", 69.68))
        );
        assert_eq!(paper_e_asr("gpt-4o"), Some(("GPT-4o", 15.67)));
        assert_eq!(paper_e_asr("gpt_4o_mini"), Some(("GPT-4o-mini", 28.23)));
        assert_eq!(
            paper_e_asr("Qwen/Qwen2-VL-7B-Instruct"),
            Some(("Qwen2-VL-7B", 53.72))
        );
        assert_eq!(paper_e_asr("gpt-4"), None);
        assert_eq!(paper_e_asr(""), None);
        assert_eq!(paper_e_asr("///"), None);
        assert_eq!(PAPER_E_ASR.len(), 18);
    }

    #[test]
    fn only_full_elite_runs_are_comparable() {
        let full = RunScope {
            benchmark_source: "elite-csv:ELITE-benchmark.csv",
            benchmark_items: 4_587,
            run_items: 4_587,
            prompt_template: false,
        };
        assert!(is_full_elite(&full));
        for scope in [
            RunScope {
                run_items: 24,
                ..full
            },
            RunScope {
                benchmark_items: 366,
                run_items: 366,
                ..full
            },
            RunScope {
                benchmark_source: "filter:benchmark 1",
                ..full
            },
            RunScope {
                benchmark_source: "items:mine.jsonl",
                ..full
            },
            RunScope {
                prompt_template: true,
                ..full
            },
        ] {
            assert!(!is_full_elite(&scope), "{scope:?}");
        }
        assert!(comparison_label("gpt-4o", "elite-default", "1").contains("same judge gpt-4o"));
        assert!(
            comparison_label("judge", "lab", "2")
                .contains("different judge judge, template lab v2")
        );
    }

    #[test]
    fn category_tables_are_read_in_both_layouts_or_refused_whole() {
        let wide = "\u{feff}# typed in from a copy of the paper\n\
                    Model, S1 ,Suicide & Self-Harm,Sexual Content\n\
                    llava-v1.5-7b,61.5,-,70%\n\
                    GPT-4o,,3,\n";
        let figures = parse_category_table(wide.as_bytes()).unwrap();
        let got: Vec<(&str, &str, f64)> = figures
            .iter()
            .map(|f| (f.paper_model.as_str(), f.category.as_str(), f.e_asr_percent))
            .collect();
        assert_eq!(
            got,
            [
                ("GPT-4o", "S10", 3.0),
                ("LLaVA-v1.5-7B", "S1", 61.5),
                ("LLaVA-v1.5-7B", "S11", 70.0),
            ]
        );
        let long = "e_asr,model,category\n12.25,Pixtral-12B,hate\n0,GPT-4o,S2\n";
        let figures = parse_category_table(long.as_bytes()).unwrap();
        assert_eq!(figures.len(), 2);
        assert_eq!(figures[1].paper_model, "Pixtral-12B");
        assert_eq!(figures[1].category, "S9");
        assert_eq!(figures[1].e_asr_percent, 12.25);

        for (table, why) in [
            ("model,category,e_asr\nGPT-4o,S1,100.5\n", "line 2"),
            ("model,category,e_asr\nGPT-4o,S1,inf\n", "percentage"),
            ("model,category,e_asr\nGPT-4\n", "line 2"),
            (
                "model,category,e_asr\nGPT-4,S1,3\n",
                "not a model of Table 3",
            ),
            (
                "model,category,e_asr\nGPT-4o,S12,3\n",
                "not a hazard category",
            ),
            (
                "model,category,e_asr,note\nGPT-4o,S1,3,x\n",
                "unexpected column",
            ),
            ("model,category\nGPT-4o,S1\n", "needs an `e_asr` column"),
            ("name,S1\nGPT-4o,3\n", "needs a `model` column"),
            ("model,S1,Violent Crimes\nGPT-4o,3,4\n", "two columns"),
            ("model,S1,Weather\nGPT-4o,3,4\n", "not a hazard category"),
            (
                "model,S1\nGPT-4o,3\ngpt_4o,4\n",
                "line 3: GPT-4o S1 appears twice",
            ),
            ("model,S1\nGPT-4o,-\n", "no figures"),
            ("model,S1\nGPT-4o,3\0\n", "NUL"),
        ] {
            let err = parse_category_table(table.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{table:?}: {err}");
        }
        assert!(
            parse_category_table(&[0xff, 0xfe])
                .unwrap_err()
                .contains("UTF-8")
        );
        let huge = vec![b'#'; MAX_CATEGORY_TABLE_BYTES + 1];
        assert!(parse_category_table(&huge).unwrap_err().contains("at most"));
    }
}
