//! The k-NN baselines of the `prdc` package (Naeem et al., 2020): precision, recall, density
//! and coverage.
//!
//! What it owns: the score type, the public entry point for the baselines alone, and the step
//! from the real x fake pass's per-sample flags and counts to the scores. With `r_X[i]` the
//! distance from real i to its k-th nearest other real, `r_Y[j]` likewise for fakes, and strict
//! comparisons throughout:
//! precision = share of fakes inside some real ball, recall = share of reals inside some fake
//! ball, density = (1/k) mean over fakes of the number of real balls containing it, coverage =
//! share of reals whose ball contains some fake.

use serde::{Deserialize, Serialize};

use super::cross::{CrossRequest, CrossTotals, PrdcRadii};
use super::evaluate::Pipeline;
use super::{Embeddings, Result};

/// The four prdc scores and their `k`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrdcScores {
    /// Share of fakes within some real k-NN ball.
    pub precision: f64,
    /// Share of reals within some fake k-NN ball.
    pub recall: f64,
    /// Mean number of real balls containing a fake, over k (can exceed 1).
    pub density: f64,
    /// Share of reals whose k-NN ball contains a fake.
    pub coverage: f64,
    /// Neighbour rank `k` of the balls.
    pub k: usize,
}

/// The prdc scores of `fake` against `real` with `k` nearest neighbours (prdc's default: 5).
pub fn prdc(real: &Embeddings, fake: &Embeddings, k: usize) -> Result<PrdcScores> {
    let pipeline = Pipeline::new(real, fake, &[k], None, None)?;
    let (real_lists, fake_lists) = pipeline.neighbours(k);
    let radii = PrdcRadii::from_lists(k, &real_lists, &fake_lists);
    drop((real_lists, fake_lists));
    let totals = pipeline.cross(&CrossRequest {
        ppr: None,
        prdc: Some(&radii),
    });
    Ok(finish_prdc(&totals, k))
}

/// Turns the pass's flags and counts into the scores.
pub(crate) fn finish_prdc(totals: &CrossTotals, k: usize) -> PrdcScores {
    let n = totals.real_in_fake_ball.len() as f64;
    let m = totals.fake_in_real_balls.len() as f64;
    let share = |flags: &[bool], count: f64| flags.iter().filter(|f| **f).count() as f64 / count;
    let inside = totals.fake_in_real_balls.iter().filter(|c| **c > 0).count() as f64;
    let balls: u64 = totals
        .fake_in_real_balls
        .iter()
        .map(|c| u64::from(*c))
        .sum();
    PrdcScores {
        precision: inside / m,
        recall: share(&totals.real_in_fake_ball, n),
        density: balls as f64 / (k as f64 * m),
        coverage: share(&totals.real_ball_has_fake, n),
        k,
    }
}
