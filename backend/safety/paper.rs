//! The paper's reference results: overall E-ASR (%) of each model on the full ELITE benchmark
//! (Table 3 of the paper), as seed data for the leaderboard's "paper" column, a matcher from a
//! user's model name to a paper model name that ignores case and punctuation, and the rule
//! saying which runs are comparable with those figures ([`is_full_elite`]).
//!
//! Only the overall (average) row of Table 3 is seeded: the paper also reports E-ASR per hazard
//! category for every model, but those numbers are not in our specification or data, and we do
//! not make them up. Add them here, from the paper, to show them per category.
//!
//! The paper's figures come from GPT-4o as judge with the authors' own prompt; a run compared
//! with them is labelled with its own judge and template ([`comparison_label`]).

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
}
