//! REPrune (Park et al., "REPrune: Channel Pruning via Kernel Representative Selection",
//! AAAI 2024): emulate kernel pruning with channel pruning. Within every input channel the
//! layer's `k x k` kernels are clustered; the filters to keep are those that together cover
//! the most kernel clusters (a maximum cluster coverage problem).
//!
//! # Variant implemented
//! - **Clustering**: for each input channel `c`, the `n` kernels `W[:, c]` (each flattened
//!   to `kh * kw` values) are clustered agglomeratively with **Ward linkage** on Euclidean
//!   distance (the paper's choice) and the dendrogram is cut at **as many clusters as the
//!   layer keeps filters** ("clusters formed in accordance with the target channel
//!   sparsity"), unless `clusters_per_channel` overrides that count. Channels are
//!   clustered in parallel.
//! - **Maximum cluster coverage (greedy)**: the universe is the set of (channel, cluster)
//!   pairs; filter `f` covers, in every channel, the cluster of its kernel. Repeatedly pick
//!   the filter covering the most not-yet-covered pairs until the layer's budget is met
//!   (the standard `1 - 1/e` greedy). Ties (and every pick once all pairs are covered) go to
//!   the filter whose kernels lie closest to their cluster centroids in total — the most
//!   representative kernels — then to the lower index.
//! - Linear producers are treated as convolutions with `1 x 1` kernels (one scalar per
//!   input feature).
//! - **Schedule**: the paper prunes progressively while training. The selection here is a
//!   pure one-shot function; the progressive schedule lives in
//!   [`crate::compression::experiment`] (`PruneSchedule::Progressive`), which calls this
//!   selection at increasing widths between training epochs.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::clustering::{centroids, squared_distance, ward_clusters};
use super::{Selection, SiteWeights};
use crate::compression::{CompressionError, Result};

/// Options of REPrune (kernel clustering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RepruneKernelOptions {
    /// Clusters per input channel; `None` uses the layer's kept width (the paper's rule).
    pub clusters_per_channel: Option<usize>,
}

/// Clusters kernels per channel and picks filters by greedy maximum cluster coverage.
pub fn select(
    weights: &SiteWeights,
    keep: usize,
    options: &RepruneKernelOptions,
) -> Result<Selection> {
    let n = weights.width;
    let (channels, area) = weights.kernel_layout;
    if channels * area != weights.dim {
        return Err(CompressionError::Shape(format!(
            "site {}: filters of size {} do not split into {channels} kernels of {area}",
            weights.producer, weights.dim
        )));
    }
    let clusters = match options.clusters_per_channel {
        Some(0) => {
            return Err(CompressionError::Config(
                "clusters_per_channel must be at least 1".into(),
            ));
        }
        Some(k) => k.min(n),
        None => keep,
    };
    // Per channel: labels of the n kernels and each kernel's distance to its centroid.
    let per_channel: Vec<(Vec<usize>, Vec<f64>)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let mut kernels = Vec::with_capacity(n * area);
            for f in 0..n {
                kernels.extend_from_slice(&weights.filter(f)[c * area..(c + 1) * area]);
            }
            let labels = ward_clusters(&kernels, n, area, clusters);
            let k = labels.iter().copied().max().map_or(0, |m| m + 1);
            let centers = centroids(&kernels, area, &labels, k);
            let dist = (0..n)
                .map(|f| {
                    let l = labels[f];
                    squared_distance(
                        &kernels[f * area..(f + 1) * area],
                        &centers[l * area..(l + 1) * area],
                    )
                })
                .collect();
            (labels, dist)
        })
        .collect();
    let representativeness: Vec<f64> = (0..n)
        .map(|f| per_channel.iter().map(|(_, d)| d[f]).sum())
        .collect();
    let mut covered: Vec<Vec<bool>> = vec![vec![false; clusters]; channels];
    let mut chosen = vec![false; n];
    let mut keep_list = Vec::with_capacity(keep);
    for _ in 0..keep {
        let mut best: Option<(usize, usize)> = None; // (filter, gain)
        for f in (0..n).filter(|&f| !chosen[f]) {
            let gain = per_channel
                .iter()
                .enumerate()
                .filter(|(c, (labels, _))| !covered[*c][labels[f]])
                .count();
            let better = match best {
                None => true,
                Some((g, best_gain)) => {
                    gain > best_gain
                        || (gain == best_gain && representativeness[f] < representativeness[g])
                }
            };
            if better {
                best = Some((f, gain));
            }
        }
        let Some((f, _)) = best else { break };
        chosen[f] = true;
        keep_list.push(f);
        for (c, (labels, _)) in per_channel.iter().enumerate() {
            covered[c][labels[f]] = true;
        }
    }
    Ok(Selection::keep_only(keep_list))
}
