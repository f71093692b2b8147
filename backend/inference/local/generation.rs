//! The shared KV-cached generation loop: batched prefill, one decode step per
//! token for every row, greedy or seeded temperature / top-p sampling,
//! end-of-sequence tokens, stop strings and length limits.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use super::Family;
use crate::inference::{FinishReason, GenerationSettings, InferenceError};

/// Per-row generation parameters.
#[derive(Debug, Clone)]
pub struct RowSpec {
    /// Prefill length (equal across a group).
    pub prompt_tokens: usize,
    /// Merged settings.
    pub settings: GenerationSettings,
    /// Token budget (settings clipped to the remaining context).
    pub max_new_tokens: usize,
}

/// Result of one row.
#[derive(Debug, Clone)]
pub struct RowOutput {
    /// Generated ids (end-of-sequence token excluded).
    pub tokens: Vec<u32>,
    /// Decoded text, cut before the first stop string.
    pub text: String,
    /// Why the row ended.
    pub finish_reason: FinishReason,
    /// Time of the whole group.
    pub latency: Duration,
    /// Time to the first token of the group.
    pub prefill_latency: Duration,
}

/// Token sampler: greedy when the temperature is 0 / unset, otherwise
/// softmax with temperature, optional nucleus (top-p) filtering, and a
/// `StdRng` seeded from the request seed (fresh entropy when unset).
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    /// Builds a sampler from settings.
    pub fn new(settings: &GenerationSettings) -> Self {
        let rng = match settings.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            temperature: settings.temperature.unwrap_or(0.0),
            top_p: settings.top_p.unwrap_or(1.0),
            rng,
        }
    }

    /// Picks the next token from a row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let p = if l.is_nan() {
                    0.0
                } else {
                    ((f64::from(l - max)) / self.temperature).exp()
                };
                (i as u32, p)
            })
            .collect();
        if self.top_p < 1.0 {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let total: f64 = probs.iter().map(|p| p.1).sum();
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (k, p) in probs.iter().enumerate() {
                acc += p.1 / total;
                if acc >= self.top_p {
                    keep = k + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !total.is_finite() {
            return argmax(logits);
        }
        let mut u = self.rng.random::<f64>() * total;
        for (id, p) in &probs {
            if u < *p {
                return *id;
            }
            u -= p;
        }
        probs.last().map(|p| p.0).unwrap_or(0)
    }
}

/// Index of the largest finite logit (first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// Byte offset of the earliest stop string in `text`.
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, InferenceError> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| InferenceError::Tokenizer(e.to_string()))
}

fn logits_rows(logits: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let logits = logits.to_dtype(DType::F32)?;
    let logits = match logits.rank() {
        3 => logits.squeeze(1)?,
        1 => logits.unsqueeze(0)?,
        _ => logits,
    };
    logits.to_vec2::<f32>()
}

struct Row {
    sampler: Sampler,
    tokens: Vec<u32>,
    text: Option<String>,
    finished: Option<FinishReason>,
    stops: Vec<String>,
    budget: usize,
    last: u32,
    ignore_eos: bool,
}

/// Generates every row of a group (rows have the same prefill length, or the family pads).
/// Finished rows leave the batch when the family can drop them.
pub fn generate_group<F: Family>(
    family: &mut F,
    inputs: &[&F::Input],
    specs: &[RowSpec],
    tokenizer: &Tokenizer,
    eos: &[u32],
) -> Result<Vec<RowOutput>, InferenceError> {
    let start = Instant::now();
    let mut rows: Vec<Row> = specs
        .iter()
        .map(|s| Row {
            sampler: Sampler::new(&s.settings),
            tokens: Vec::new(),
            text: None,
            finished: None,
            stops: s.settings.stop.clone(),
            budget: s.max_new_tokens,
            last: 0,
            ignore_eos: s.settings.ignore_eos,
        })
        .collect();
    let mut offset = specs.iter().map(|s| s.prompt_tokens).max().unwrap_or(0);
    let mut logits = family.prefill(inputs)?;
    let prefill_latency = start.elapsed();
    // Rows still in the batch, as indices into `rows`.
    let mut active: Vec<usize> = (0..rows.len()).collect();
    loop {
        let table = logits_rows(&logits)?;
        if table.len() != active.len() {
            return Err(InferenceError::Model(format!(
                "model returned {} rows of logits for {} requests",
                table.len(),
                active.len()
            )));
        }
        for (&i, l) in active.iter().zip(&table) {
            let row = &mut rows[i];
            if row.finished.is_some() {
                continue;
            }
            if row.budget == 0 {
                row.finished = Some(FinishReason::Length);
                continue;
            }
            let tok = row.sampler.sample(l);
            row.last = tok;
            if !row.ignore_eos && eos.contains(&tok) {
                row.finished = Some(FinishReason::Stop);
                continue;
            }
            row.tokens.push(tok);
            if !row.stops.is_empty() {
                let text = decode(tokenizer, &row.tokens)?;
                if let Some(pos) = find_stop(&text, &row.stops) {
                    row.text = Some(text[..pos].to_string());
                    row.finished = Some(FinishReason::Stop);
                    continue;
                }
            }
            if row.tokens.len() >= row.budget {
                row.finished = Some(FinishReason::Length);
            }
        }
        // A padded batch decodes at the longest prompt's positions: a shorter row whose
        // budget reaches past the context ends there (Length) instead of failing the batch.
        if offset >= family.context_length() {
            for r in rows.iter_mut().filter(|r| r.finished.is_none()) {
                r.finished = Some(FinishReason::Length);
            }
        }
        if rows.iter().all(|r| r.finished.is_some()) {
            break;
        }
        let keep: Vec<usize> = (0..active.len())
            .filter(|&k| rows[active[k]].finished.is_none())
            .collect();
        if keep.len() < active.len() && family.retain_rows(&keep)? {
            active = keep.iter().map(|&k| active[k]).collect();
        }
        let next: Vec<u32> = active.iter().map(|&i| rows[i].last).collect();
        logits = family.step(&next, offset)?;
        offset += 1;
    }
    let latency = start.elapsed();
    rows.into_iter()
        .map(|r| {
            let text = match r.text {
                Some(t) => t,
                None => decode(tokenizer, &r.tokens)?,
            };
            Ok(RowOutput {
                tokens: r.tokens,
                text,
                finish_reason: r.finished.unwrap_or(FinishReason::Length),
                latency,
                prefill_latency,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1f32, 3.0, 0.5, 2.9];
        let mut g = Sampler::new(&GenerationSettings::default());
        assert_eq!(g.sample(&logits), 1);
        let s = GenerationSettings {
            temperature: Some(1.0),
            seed: Some(7),
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut x = Sampler::new(&s);
            (0..20).map(|_| x.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut x = Sampler::new(&s);
            (0..20).map(|_| x.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let p = GenerationSettings {
            top_p: Some(0.3),
            ..s
        };
        let mut x = Sampler::new(&p);
        assert!((0..50).all(|_| x.sample(&logits) == 1));
    }

    #[test]
    fn stop_strings() {
        assert_eq!(
            find_stop("hello world END more", &["END".into(), "wor".into()]),
            Some(6)
        );
        assert_eq!(find_stop("abc", &["x".into()]), None);
    }
}
