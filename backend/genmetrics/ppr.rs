//! P-precision and P-recall (Park & Kim, ICCV 2023).
//!
//! What it owns: the score type and the public entry point for PP&PR alone, and the step from
//! the real x fake pass's log-sums to the scores. With R_X = a * mean_i rho(x_i) (rho = distance
//! to the k-th nearest other real) and R_Y likewise for the fakes:
//!
//! ```text
//! PP = mean_j [ 1 - prod_i (1 - f(d(x_i, y_j), R_X)) ],  PR = mean_i [ 1 - prod_j (1 - f(d(x_i, y_j), R_Y)) ]
//! ```
//!
//! with f(d, R) = 1 - d/R for d < R, else 0. Products are accumulated as sums of ln(d / R);
//! a distance of exactly 0 makes the product 0 (score 1).

use serde::{Deserialize, Serialize};

use super::cross::{CrossRequest, CrossTotals, PprRadii, hit_probability, order_independent_mean};
use super::evaluate::{Pipeline, check_a};
use super::{Embeddings, Result};

/// P-precision and P-recall, with the parameters that produced them (results are sensitive to
/// `a`, so keep them together).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PprScores {
    /// Mean over fakes of the probability of lying in the real support.
    pub p_precision: f64,
    /// Mean over reals of the probability of lying in the fake support.
    pub p_recall: f64,
    /// Radius scale `a`.
    pub a: f64,
    /// Neighbour rank `k` of the radii.
    pub k: usize,
    /// R_X = a * mean k-NN distance of the reals.
    pub real_radius: f64,
    /// R_Y = a * mean k-NN distance of the fakes.
    pub fake_radius: f64,
}

/// P-precision and P-recall of `fake` against `real` (defaults in the paper: a = 1.2, k = 4).
pub fn p_precision_recall(
    real: &Embeddings,
    fake: &Embeddings,
    a: f64,
    k: usize,
) -> Result<PprScores> {
    check_a(a)?;
    let pipeline = Pipeline::new(real, fake, &[k], None, None)?;
    let (real_lists, fake_lists) = pipeline.neighbours(k);
    let radii = PprRadii::from_lists(a, k, &real_lists, &fake_lists);
    drop((real_lists, fake_lists));
    let totals = pipeline.cross(&CrossRequest {
        ppr: Some(radii),
        prdc: None,
    });
    Ok(finish_ppr(&totals, radii, a, k))
}

/// Turns the pass's log-sums into the scores.
pub(crate) fn finish_ppr(totals: &CrossTotals, radii: PprRadii, a: f64, k: usize) -> PprScores {
    let mean = |logs: &[i128], zeros: &[bool]| {
        let scores = logs
            .iter()
            .zip(zeros)
            .map(|(l, z)| hit_probability(*l, *z))
            .collect();
        order_independent_mean(scores).clamp(0.0, 1.0)
    };
    PprScores {
        p_precision: mean(&totals.fake_log, &totals.fake_zero),
        p_recall: mean(&totals.real_log, &totals.real_zero),
        a,
        k,
        real_radius: radii.real,
        fake_radius: radii.fake,
    }
}
