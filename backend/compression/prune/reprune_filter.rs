//! REPrune v1, filter pruning via representative election (Park, Kim & Kim, arXiv
//! 2007.06932, 2020): instead of keeping the largest filters, cluster a layer's filters by
//! similarity and elect one representative per cluster, so the kept set spans the whole
//! range of filters and several large, mutually similar ("adjacent") filters are not all
//! kept.
//!
//! # Variant implemented
//! As read in the paper (its public description): cluster the filters of a layer and keep
//! one representative per cluster, so that several large, similar filters are not all kept;
//! uniform per-layer ratios. The platform's choices, where the description is silent:
//! - **Features**: each filter flattened to a vector (`in * kh * kw` raw weights; not
//!   batch-norm folded, like the norm-based baselines).
//! - **Clustering**: agglomerative, Ward linkage on Euclidean distance (see
//!   [`super::clustering`]), cut into exactly as many clusters as the layer keeps filters.
//!   Ward is the linkage of the authors' follow-up (AAAI 2024) and minimises the
//!   within-cluster variance, which suits "one representative per cluster".
//! - **Election** (one filter per cluster): by default the member closest (Euclidean) to the
//!   cluster centroid — the filter that best represents its cluster; ties go to the larger
//!   L2 norm, then to the lower index. `Election::LargestNorm` elects the largest member
//!   instead (a norm-flavoured variant kept for comparison).
//! - Singleton clusters elect their only filter, so outliers are always kept.

use serde::{Deserialize, Serialize};

use super::clustering::{centroids, squared_distance, ward_clusters};
use super::{Selection, SelectionCriterion, SiteWeights, filter_norms};
use crate::compression::Result;

/// How the representative of a cluster is elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Election {
    /// The member nearest to the cluster centroid.
    #[default]
    ClosestToCentroid,
    /// The member with the largest L2 norm.
    LargestNorm,
}

/// Options of REPrune v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RepruneFilterOptions {
    pub election: Election,
}

/// Clusters the filters into `keep` groups and elects one filter from each.
pub fn select(
    weights: &SiteWeights,
    keep: usize,
    options: &RepruneFilterOptions,
) -> Result<Selection> {
    let n = weights.width;
    let labels = ward_clusters(&weights.filters, n, weights.dim, keep);
    let clusters = labels.iter().copied().max().map_or(0, |m| m + 1);
    let centers = centroids(&weights.filters, weights.dim, &labels, clusters);
    let norms = filter_norms(weights, SelectionCriterion::L2Norm);
    // (best member, distance to centroid)
    let mut elected: Vec<Option<(usize, f64)>> = vec![None; clusters];
    for i in 0..n {
        let c = labels[i];
        let center = &centers[c * weights.dim..(c + 1) * weights.dim];
        let score = match options.election {
            Election::ClosestToCentroid => squared_distance(weights.filter(i), center),
            Election::LargestNorm => -(norms[i] as f64),
        };
        let better = match elected[c] {
            None => true,
            Some((j, s)) => score < s || (score == s && norms[i] > norms[j]),
        };
        if better {
            elected[c] = Some((i, score));
        }
    }
    Ok(Selection::keep_only(
        elected.into_iter().flatten().map(|(i, _)| i).collect(),
    ))
}
