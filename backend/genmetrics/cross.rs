//! The real x fake pass shared by P-precision/P-recall and the prdc baselines.
//!
//! What it owns: one tiled pass over all (real i, fake j) pairs that accumulates, from exact
//! distances, everything the six metrics need:
//! - PP&PR: per fake column the sum of ln(d / R_X) over reals with d < R_X, per real row the
//!   sum of ln(d / R_Y) over fakes with d < R_Y, and whether a distance of exactly 0 occurred;
//! - prdc: per fake column whether some real ball contains it and how many (`d < r_X[i]`), per
//!   real row whether some fake ball contains it (`d < r_Y[j]`) and whether some fake lies
//!   inside its own ball (coverage; "nearest fake closer than `r_X[i]`" is the same test).
//!
//! Each rayon worker accumulates into its own arrays (linear in N + M); they are summed at the
//! end.

use super::distance::{Frame, Isa, Packed, PairVisitor, Progress, cross_pass};
use super::knn::KnnLists;

/// The radii of PP&PR: one per set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PprRadii {
    /// R_X = a * mean k-NN distance of the reals.
    pub(crate) real: f64,
    /// R_Y = a * mean k-NN distance of the fakes.
    pub(crate) fake: f64,
    /// ln R_X.
    pub(crate) real_ln: f64,
    /// ln R_Y.
    pub(crate) fake_ln: f64,
}

impl PprRadii {
    /// `a` times the mean distance to the k-th nearest other sample, per set.
    pub(crate) fn from_lists(a: f64, k: usize, real: &KnnLists, fake: &KnnLists) -> Self {
        let real = a * order_independent_mean(real.radii(k));
        let fake = a * order_independent_mean(fake.radii(k));
        Self {
            real,
            fake,
            real_ln: real.ln(),
            fake_ln: fake.ln(),
        }
    }
}

/// The squared per-sample radii of prdc.
pub(crate) struct PrdcRadii {
    pub(crate) real_sq: Vec<f64>,
    pub(crate) fake_sq: Vec<f64>,
}

impl PrdcRadii {
    /// Squared distance to the k-th nearest other sample, per sample.
    pub(crate) fn from_lists(k: usize, real: &KnnLists, fake: &KnnLists) -> Self {
        Self {
            real_sq: real.kth_sq_all(k),
            fake_sq: fake.kth_sq_all(k),
        }
    }
}

/// What the pass computes.
pub(crate) struct CrossRequest<'r> {
    pub(crate) ppr: Option<PprRadii>,
    pub(crate) prdc: Option<&'r PrdcRadii>,
}

/// Scale of the fixed-point log-sums: a term `v` is added as `v * 2^64` truncated (see
/// [`to_fixed`]). Integer sums are exact, so the result does not depend on how the pairs were
/// split between threads, and the error is below `2^-64` per term.
const LOG_SCALE: f64 = 18_446_744_073_709_551_616.0;

/// `v * 2^64` truncated towards zero, for `|v| < 2^31` (log terms are above -800), with two
/// native f64 -> i64 conversions instead of the slow f64 -> i128 one.
#[inline(always)]
fn to_fixed(v: f64) -> i128 {
    const HALF: f64 = 4_294_967_296.0; // 2^32
    let scaled = v * HALF;
    let high = scaled.trunc();
    // `scaled - high` is exact and lies in (-1, 1); times 2^32 it fits an i64.
    let low = ((scaled - high) * HALF) as i64;
    (i128::from(high as i64) << 32) + i128::from(low)
}

/// Per-sample results of the pass.
pub(crate) struct CrossTotals {
    /// Per fake: sum of ln(d / R_X) over reals with 0 < d < R_X, in units of 2^-64.
    pub(crate) fake_log: Vec<i128>,
    /// Per fake: some real at distance exactly 0.
    pub(crate) fake_zero: Vec<bool>,
    /// Per real: sum of ln(d / R_Y) over fakes with 0 < d < R_Y, in units of 2^-64.
    pub(crate) real_log: Vec<i128>,
    /// Per real: some fake at distance exactly 0.
    pub(crate) real_zero: Vec<bool>,
    /// Per fake: number of reals i with `d < r_X[i]`.
    pub(crate) fake_in_real_balls: Vec<u32>,
    /// Per real: some fake j with `d < r_Y[j]`.
    pub(crate) real_in_fake_ball: Vec<bool>,
    /// Per real: some fake with `d < r_X[i]`.
    pub(crate) real_ball_has_fake: Vec<bool>,
}

impl CrossTotals {
    fn new(reals: usize, fakes: usize) -> Self {
        Self {
            fake_log: vec![0; fakes],
            fake_zero: vec![false; fakes],
            real_log: vec![0; reals],
            real_zero: vec![false; reals],
            fake_in_real_balls: vec![0; fakes],
            real_in_fake_ball: vec![false; reals],
            real_ball_has_fake: vec![false; reals],
        }
    }

    fn add(mut self, other: Self) -> Self {
        fn or(a: &mut [bool], b: &[bool]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x |= *y);
        }
        fn sum(a: &mut [i128], b: &[i128]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += *y);
        }
        sum(&mut self.fake_log, &other.fake_log);
        sum(&mut self.real_log, &other.real_log);
        or(&mut self.fake_zero, &other.fake_zero);
        or(&mut self.real_zero, &other.real_zero);
        or(&mut self.real_in_fake_ball, &other.real_in_fake_ball);
        or(&mut self.real_ball_has_fake, &other.real_ball_has_fake);
        self.fake_in_real_balls
            .iter_mut()
            .zip(&other.fake_in_real_balls)
            .for_each(|(x, y)| *x += *y);
        self
    }
}

/// Runs the pass (real rows x fake columns).
pub(crate) fn real_fake_pass(
    isa: Isa,
    real: &Packed,
    fake: &Packed,
    frame: &Frame,
    request: &CrossRequest,
    progress: &Progress,
) -> CrossTotals {
    let (n, m) = (real.rows(), fake.rows());
    let global_sq = request.ppr.map_or(f64::NEG_INFINITY, |r| {
        (r.real * r.real).max(r.fake * r.fake)
    });
    let row_bounds: Vec<f32> = (0..n)
        .map(|i| {
            let own = request.prdc.map_or(f64::NEG_INFINITY, |p| p.real_sq[i]);
            bound_or_none(frame, global_sq.max(own))
        })
        .collect();
    let col_bounds: Vec<f32> = (0..m)
        .map(|j| {
            bound_or_none(
                frame,
                request.prdc.map_or(f64::NEG_INFINITY, |p| p.fake_sq[j]),
            )
        })
        .collect();
    let make = || CrossVisitor {
        request,
        row_bounds: &row_bounds,
        col_bounds: &col_bounds,
        totals: CrossTotals::new(n, m),
    };
    cross_pass(isa, real, fake, make, CrossVisitor::merge, progress).totals
}

fn bound_or_none(frame: &Frame, d2: f64) -> f32 {
    if d2 == f64::NEG_INFINITY {
        f32::NEG_INFINITY
    } else {
        frame.bound(d2)
    }
}

struct CrossVisitor<'v> {
    request: &'v CrossRequest<'v>,
    row_bounds: &'v [f32],
    col_bounds: &'v [f32],
    totals: CrossTotals,
}

impl CrossVisitor<'_> {
    fn merge(mut self, other: Self) -> Self {
        self.totals = self.totals.add(other.totals);
        self
    }
}

impl PairVisitor for CrossVisitor<'_> {
    #[inline]
    fn row_bound(&self, i: usize) -> f32 {
        self.row_bounds[i]
    }

    #[inline]
    fn col_bound(&self, j: usize) -> f32 {
        self.col_bounds[j]
    }

    #[inline(always)]
    fn visit(&mut self, i: usize, j: usize, d2: f64) {
        let t = &mut self.totals;
        if let Some(r) = self.request.ppr {
            // d < R  <=>  d2 < R^2 up to one rounding, which the candidate bound covers; the
            // comparison itself is on d = sqrt(d2) as in the definition.
            let d = d2.sqrt();
            if d < r.real || d < r.fake {
                if d2 == 0.0 {
                    t.fake_zero[j] |= d < r.real;
                    t.real_zero[i] |= d < r.fake;
                } else {
                    // ln(d / R) = ln(d2) / 2 - ln R: one logarithm per pair.
                    let half_log = 0.5 * d2.ln();
                    if d < r.real {
                        t.fake_log[j] += to_fixed(half_log - r.real_ln);
                    }
                    if d < r.fake {
                        t.real_log[i] += to_fixed(half_log - r.fake_ln);
                    }
                }
            }
        }
        if let Some(p) = self.request.prdc {
            if d2 < p.real_sq[i] {
                t.fake_in_real_balls[j] += 1;
                t.real_ball_has_fake[i] = true;
            }
            if d2 < p.fake_sq[j] {
                t.real_in_fake_ball[i] = true;
            }
        }
    }
}

/// `1 - prod(d / R)` from the fixed-point log-sum, with an exact 0 distance giving 1.
/// No hit at all gives +0, not -0 (`0.0 - x` rather than `-x`), so reports and JSON never
/// show a score of "-0.0000".
pub(crate) fn hit_probability(log_sum: i128, zero: bool) -> f64 {
    if zero {
        1.0
    } else {
        0.0 - (log_sum as f64 / LOG_SCALE).exp_m1()
    }
}

/// Mean of `values` summed in sorted order, so that it does not depend on the order of the
/// samples.
pub(crate) fn order_independent_mean(mut values: Vec<f64>) -> f64 {
    let count = values.len() as f64;
    values.sort_by(f64::total_cmp);
    values.iter().sum::<f64>() / count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_matches_the_i128_cast() {
        for v in [
            0.0,
            -1e-30,
            -0.5,
            -1.0 / 3.0,
            -7.25,
            -123.456_789,
            -745.1,
            1e-3,
            2.5,
        ] {
            assert_eq!(to_fixed(v), (v * LOG_SCALE) as i128, "{v}");
        }
        assert_eq!(hit_probability(to_fixed(-2f64.ln()), false), 0.5);
        assert_eq!(hit_probability(0, true), 1.0);
        assert_eq!(hit_probability(0, false), 0.0);
        assert!(hit_probability(0, false).is_sign_positive());
    }
}
