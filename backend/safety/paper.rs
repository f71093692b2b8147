//! The paper's reference results: overall E-ASR (%) of each model on the full ELITE benchmark
//! (Table 3 of the paper), as seed data for the leaderboard's "paper" column, and a matcher
//! from a user's model name to a paper model name that ignores case and punctuation.

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
}
