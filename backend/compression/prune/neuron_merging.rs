//! Neuron Merging (Kim et al., "Neuron Merging: Compensating for Pruned Neurons",
//! NeurIPS 2020): data-free pruning that hands each pruned neuron's contribution to a
//! similar kept neuron through the next layer.
//!
//! # Variant implemented
//! 1. **Which channels go**: the same magnitude criterion as the baseline (L1 norm of the
//!    raw filters by default, L2 optional), so that at equal widths Neuron Merging differs
//!    from L1 pruning only by the compensation.
//! 2. **Decomposition** `W ~ Z Y` of the producer's *effective* pre-activation map: for a
//!    layer followed by batch norm the BN-folded filter `w^_n = s_n w_n` and bias
//!    `b^_n = s_n b_n + t_n` (BN scale `s`, shift `t`); for a plain layer the filter and its
//!    bias. Kept rows of `Z` are one-hot. A pruned neuron `n` is matched to a kept neuron `p`:
//!    - plain layers: the kept filter with the highest cosine similarity of the
//!      bias-augmented vectors `[w_n, b_n]` (the bias is one more input weight, acting on a
//!      constant 1), merged when that similarity is at least `threshold` (t);
//!    - batch-norm layers (the paper's BN-aware rule): the kept filter minimising
//!      `|| w^_n/|w^_n| - w^_p/|w^_p| ||^2 + lambda * (b^_n/|w^_n| - b^_p/|w^_p|)^2`, i.e. the
//!      relative error `|| (w^_n - z w^_p, b^_n - z b^_p) ||^2 / |w^_n|^2` of replacing
//!      neuron `n` by `z` times neuron `p` (bias mismatch weighted by `lambda`), merged when
//!      its cosine similarity is at least `threshold` as well.
//!
//!    The scale is `Z[n, p] = |w^_n| / |w^_p|` (positive), so ReLU(z a) = z ReLU(a) holds and
//!    the next layer absorbs it: its input weights become `W' Z` (the pruned channel's input
//!    weights, times `z`, are added to the partner's). Max/avg pooling and flatten between
//!    the two layers commute with positive scales. Unmatched neurons are plainly pruned.
//! 3. **Exactness**: if a pruned filter (BN-folded where applicable) and its bias are exactly
//!    `z > 0` times a kept one, the merged network computes the same function.
//!
//! Defaults: `threshold` 0.0 (merge into the best partner whenever it is positively
//! correlated; a negatively correlated partner can never absorb a neuron through ReLU) and
//! `lambda` 0.5. They were chosen on the synthetic data set of this crate, whose briefly
//! trained filters are rarely near-duplicates, so a high threshold degenerates to plain
//! pruning; the paper tunes both per network. Raise `threshold` to merge only close
//! copies. Both values are recorded with every experiment result.

use serde::{Deserialize, Serialize};

use super::{Selection, SelectionCriterion, SiteWeights, filter_norms, top_k};
use crate::compression::{CompressionError, Result};

/// Hyper-parameters of Neuron Merging.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NeuronMergingOptions {
    /// Minimum cosine similarity `t` for merging a pruned neuron into a kept one.
    pub threshold: f64,
    /// Weight `lambda` of the bias mismatch in the batch-norm-aware partner choice.
    pub lambda: f64,
    /// Magnitude criterion choosing the pruned neurons.
    pub criterion: SelectionCriterion,
}

impl Default for NeuronMergingOptions {
    fn default() -> Self {
        NeuronMergingOptions {
            threshold: 0.0,
            lambda: 0.5,
            criterion: SelectionCriterion::L1Norm,
        }
    }
}

/// Effective (bias-augmented, BN-folded) neuron `i`: `(weights, bias)`.
fn effective(weights: &SiteWeights, i: usize) -> (Vec<f64>, f64) {
    let f = weights.filter(i);
    let bias = weights.bias.as_ref().map_or(0.0, |b| b[i] as f64);
    match &weights.batch_norm {
        Some((scale, shift)) => {
            let s = scale[i] as f64;
            (
                f.iter().map(|&v| v as f64 * s).collect(),
                bias * s + shift[i] as f64,
            )
        }
        None => (f.iter().map(|&v| v as f64).collect(), bias),
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Chooses the kept neurons by magnitude and the merge partner and scale of every pruned one.
pub fn select(
    weights: &SiteWeights,
    keep: usize,
    options: &NeuronMergingOptions,
) -> Result<Selection> {
    if !(options.threshold.is_finite() && (-1.0..=1.0).contains(&options.threshold)) {
        return Err(CompressionError::Config(format!(
            "neuron merging threshold must lie in [-1, 1], got {}",
            options.threshold
        )));
    }
    if !(options.lambda.is_finite() && options.lambda >= 0.0) {
        return Err(CompressionError::Config(format!(
            "neuron merging lambda must be a non-negative number, got {}",
            options.lambda
        )));
    }
    let norms = filter_norms(weights, options.criterion);
    let kept = top_k(&norms, keep);
    let mut is_kept = vec![false; weights.width];
    for &k in &kept {
        is_kept[k] = true;
    }
    let neurons: Vec<(Vec<f64>, f64)> = (0..weights.width).map(|i| effective(weights, i)).collect();
    let weight_norm: Vec<f64> = neurons.iter().map(|(w, _)| dot(w, w).sqrt()).collect();
    let has_bn = weights.batch_norm.is_some();
    let mut merges = Vec::new();
    for n in (0..weights.width).filter(|&n| !is_kept[n]) {
        let (wn, bn) = &neurons[n];
        if weight_norm[n] == 0.0 {
            continue; // a zero filter contributes a constant; nothing to merge.
        }
        // (position in kept, cosine, score to minimise)
        let mut best: Option<(usize, f64, f64)> = None;
        for (pos, &p) in kept.iter().enumerate() {
            let (wp, bp) = &neurons[p];
            if weight_norm[p] == 0.0 {
                continue;
            }
            let cos_weights = dot(wn, wp) / (weight_norm[n] * weight_norm[p]);
            let (cosine, score) = if has_bn {
                let bias_gap = bn / weight_norm[n] - bp / weight_norm[p];
                (
                    cos_weights,
                    (2.0 - 2.0 * cos_weights) + options.lambda * bias_gap * bias_gap,
                )
            } else {
                let aug_n = (weight_norm[n].powi(2) + bn * bn).sqrt();
                let aug_p = (weight_norm[p].powi(2) + bp * bp).sqrt();
                let cos_aug = (dot(wn, wp) + bn * bp) / (aug_n * aug_p);
                (cos_aug, -cos_aug)
            };
            if best.is_none_or(|(_, _, s)| score < s) {
                best = Some((pos, cosine, score));
            }
        }
        if let Some((pos, cosine, _)) = best
            && cosine >= options.threshold
            && cosine > 0.0
        {
            let scale = weight_norm[n] / weight_norm[kept[pos]];
            merges.push((n, pos, scale as f32));
        }
    }
    Ok(Selection { keep: kept, merges })
}
