//! Random filter pruning (baseline): every site keeps a uniformly random subset of its
//! filters of the resolved width. One seeded generator is consumed site after site, so a
//! seed fixes the whole pruned network.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;

use super::{Selection, SiteWeights};

/// The generator used for a whole network.
pub(crate) fn site_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Keeps `keep` filters drawn uniformly without replacement.
pub fn select(weights: &SiteWeights, keep: usize, rng: &mut StdRng) -> Selection {
    Selection::keep_only(sample(rng, weights.width, keep).into_vec())
}
