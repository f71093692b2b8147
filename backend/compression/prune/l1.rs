//! L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017):
//! in every site keep the filters with the largest sum of absolute weights ("smaller norm,
//! less important") and drop the rest together with their batch-norm entries and the
//! matching input channels of the next layer. The norm is taken on the raw producer weights
//! (not batch-norm folded), as in the paper; ties go to the lower channel index.

use super::{Selection, SelectionCriterion, SiteWeights, filter_norms, top_k};

/// Keeps the `keep` filters with the largest L1 norm.
pub fn select(weights: &SiteWeights, keep: usize) -> Selection {
    let norms = filter_norms(weights, SelectionCriterion::L1Norm);
    Selection::keep_only(top_k(&norms, keep))
}
