//! Which responses a queue holds: the filter a researcher picks (stored with the queue) and the
//! seeded sample stratified by hazard category. Pure: the SQL side ([`super::store`]) turns the
//! filter into candidate rows, this module picks among them.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{AnnotationError, Result};

/// The filter a queue was built from. Every part is optional; parts combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Selection {
    /// Responses of these runs (empty: any run).
    #[serde(default)]
    pub run_ids: Vec<i64>,
    /// Responses of runs of this target model.
    pub model: Option<String>,
    /// Items of these hazard categories, e.g. `["S1", "S4"]` (empty: all).
    #[serde(default)]
    pub categories: Vec<String>,
    /// ELITE score band `[min, max]` of one evaluator's judgements.
    pub score_band: Option<ScoreBand>,
    /// Only responses on which two evaluators' verdicts differ.
    pub disagreement: Option<Disagreement>,
    /// Sample this many responses (stratified by category); none: all matching responses.
    pub sample_size: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreBand {
    pub evaluator_id: i64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Disagreement {
    pub evaluator_a: i64,
    pub evaluator_b: i64,
}

impl Selection {
    /// Checks that do not need the database.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(AnnotationError::Invalid(m));
        for code in &self.categories {
            if crate::safety::taxonomy::Category::from_code(code).is_none() {
                return invalid(format!("unknown hazard category {code:?}"));
            }
        }
        if let Some(band) = &self.score_band
            && (!band.min.is_finite() || !band.max.is_finite() || band.min > band.max)
        {
            return invalid(format!(
                "score band [{}, {}] is not a range",
                band.min, band.max
            ));
        }
        if let Some(d) = &self.disagreement
            && d.evaluator_a == d.evaluator_b
        {
            return invalid("disagreement needs two different evaluators".into());
        }
        if self.sample_size == Some(0) {
            return invalid("sample size must be at least 1".into());
        }
        Ok(())
    }
}

/// A response that matches the filter, with its category (the stratum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub response_id: i64,
    pub category: String,
}

/// Up to `size` responses (all when `None`), sampled per category in proportion to its share
/// of the candidates (largest remainders; every category with candidates gets at least one
/// when `size` allows), in a seeded random order. Deterministic for a seed and candidate set.
pub fn stratified_sample(candidates: &[Candidate], size: Option<usize>, seed: u64) -> Vec<i64> {
    let mut strata: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for c in candidates {
        strata.entry(&c.category).or_default().push(c.response_id);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for ids in strata.values_mut() {
        ids.sort_unstable();
        ids.dedup();
        ids.shuffle(&mut rng);
    }
    let total: usize = strata.values().map(Vec::len).sum();
    let size = size.unwrap_or(total).min(total);
    let quotas = allocate(&strata.values().map(Vec::len).collect::<Vec<_>>(), size);
    let mut chosen: Vec<i64> = strata
        .values()
        .zip(quotas)
        .flat_map(|(ids, quota)| ids[..quota].iter().copied())
        .collect();
    chosen.shuffle(&mut rng);
    chosen
}

/// Split `size` among strata of the given sizes: proportional shares, rounded by largest
/// remainder, never more than a stratum holds, at least one per stratum when possible.
fn allocate(sizes: &[usize], size: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    if total == 0 {
        return vec![0; sizes.len()];
    }
    let size = size.min(total);
    let exact: Vec<f64> = sizes
        .iter()
        .map(|&n| n as f64 * size as f64 / total as f64)
        .collect();
    let mut quotas: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    // At least one per non-empty stratum while the budget allows.
    let mut assigned: usize = quotas.iter().sum();
    for (i, &n) in sizes.iter().enumerate() {
        if assigned < size && n > 0 && quotas[i] == 0 {
            quotas[i] = 1;
            assigned += 1;
        }
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    while assigned < size {
        let mut progressed = false;
        for &i in &order {
            if assigned < size && quotas[i] < sizes[i] {
                quotas[i] += 1;
                assigned += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    // The minimum-one rule can overshoot a stratum's proportional share; trim the largest.
    while assigned > size {
        let Some(i) = (0..sizes.len()).max_by_key(|&i| quotas[i]) else {
            break;
        };
        quotas[i] -= 1;
        assigned -= 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<Candidate> {
        (0..100)
            .map(|i| Candidate {
                response_id: i,
                category: if i < 70 {
                    "S1"
                } else if i < 95 {
                    "S2"
                } else {
                    "S3"
                }
                .into(),
            })
            .collect()
    }

    #[test]
    fn samples_are_proportional_per_category_and_seeded() {
        let c = candidates();
        let sample = stratified_sample(&c, Some(20), 7);
        assert_eq!(sample.len(), 20);
        let count = |lo: i64, hi: i64| sample.iter().filter(|&&i| i >= lo && i < hi).count();
        assert_eq!(count(0, 70), 14);
        assert_eq!(count(70, 95), 5);
        assert_eq!(count(95, 100), 1);
        assert_eq!(sample, stratified_sample(&c, Some(20), 7));
        assert_ne!(sample, stratified_sample(&c, Some(20), 8));
        let mut unique = sample.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 20);
    }

    #[test]
    fn no_size_takes_everything_and_large_sizes_are_capped() {
        let c = candidates();
        assert_eq!(stratified_sample(&c, None, 1).len(), 100);
        assert_eq!(stratified_sample(&c, Some(1000), 1).len(), 100);
        assert!(stratified_sample(&[], Some(5), 1).is_empty());
    }

    #[test]
    fn allocation_respects_the_budget() {
        assert_eq!(allocate(&[70, 25, 5], 20), vec![14, 5, 1]);
        assert_eq!(allocate(&[1, 1, 1], 2).iter().sum::<usize>(), 2);
        assert_eq!(allocate(&[3, 0], 5), vec![3, 0]);
    }
}
