//! Magnitude filter pruning. L1 (Li et al., "Pruning Filters for Efficient ConvNets",
//! ICLR 2017): in every site keep the filters with the largest sum of absolute weights
//! ("smaller norm, less important") and drop the rest together with their batch-norm
//! entries and the matching input channels of the next layer. The same rule with the L2
//! norm, and the L2 geometric median (FPGM: remove the filters with the smallest summed
//! distance to all others first), are the other baselines of the Neuron Merging code. Norms
//! are taken on the raw producer weights (not batch-norm folded), as in the papers; ties go
//! to the lower channel index.

use super::{Selection, SelectionCriterion, SiteWeights, filter_scores, top_k};

/// Keeps the `keep` filters ranked highest by `criterion`.
pub fn select(weights: &SiteWeights, keep: usize, criterion: SelectionCriterion) -> Selection {
    Selection::keep_only(top_k(&filter_scores(weights, criterion), keep))
}
