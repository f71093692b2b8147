//! The real x fake pass shared by P-precision/P-recall and the prdc baselines.
//!
//! What it owns: one tiled pass over all (real i, fake j) pairs that accumulates, from exact
//! distances, everything the six metrics need:
//! - PP&PR: per fake column the sum of ln(d / R_X) over reals with d < R_X, per real row the
//!   sum of ln(d / R_Y) over fakes with d < R_Y, and whether a distance of exactly 0 occurred;
//! - prdc: per fake column whether some real ball contains it and how many (`d < r_X[i]`), per
//!   real row whether some fake ball contains it (`d < r_Y[j]`) and whether some fake lies
//!   inside its own ball (coverage; "nearest fake closer than r_X[i]" is the same test).
//!
//! Each rayon worker accumulates into its own arrays (linear in N + M); they are summed at the
//! end.

use super::distance::{Frame, Isa, Packed, PairVisitor, Progress, cross_pass};

/// The radii of PP&PR: one per set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PprRadii {
    /// R_X = a * mean k-NN distance of the reals.
    pub(crate) real: f64,
    /// R_Y = a * mean k-NN distance of the fakes.
    pub(crate) fake: f64,
}

/// The squared per-sample radii of prdc.
pub(crate) struct PrdcRadii {
    pub(crate) real_sq: Vec<f64>,
    pub(crate) fake_sq: Vec<f64>,
}

/// What the pass computes.
pub(crate) struct CrossRequest<'r> {
    pub(crate) ppr: Option<PprRadii>,
    pub(crate) prdc: Option<&'r PrdcRadii>,
}

/// Per-sample results of the pass.
pub(crate) struct CrossTotals {
    /// Per fake: sum of ln(d / R_X) over reals with 0 < d < R_X.
    pub(crate) fake_log: Vec<f64>,
    /// Per fake: some real at distance exactly 0.
    pub(crate) fake_zero: Vec<bool>,
    /// Per real: sum of ln(d / R_Y) over fakes with 0 < d < R_Y.
    pub(crate) real_log: Vec<f64>,
    /// Per real: some fake at distance exactly 0.
    pub(crate) real_zero: Vec<bool>,
    /// Per fake: number of reals i with d < r_X[i].
    pub(crate) fake_in_real_balls: Vec<u32>,
    /// Per real: some fake j with d < r_Y[j].
    pub(crate) real_in_fake_ball: Vec<bool>,
    /// Per real: some fake with d < r_X[i].
    pub(crate) real_ball_has_fake: Vec<bool>,
}

impl CrossTotals {
    fn new(reals: usize, fakes: usize) -> Self {
        Self {
            fake_log: vec![0.0; fakes],
            fake_zero: vec![false; fakes],
            real_log: vec![0.0; reals],
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
        fn sum(a: &mut [f64], b: &[f64]) {
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
            let d = d2.sqrt();
            if d < r.real {
                if d == 0.0 {
                    t.fake_zero[j] = true;
                } else {
                    t.fake_log[j] += (d / r.real).ln();
                }
            }
            if d < r.fake {
                if d == 0.0 {
                    t.real_zero[i] = true;
                } else {
                    t.real_log[i] += (d / r.fake).ln();
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

/// `1 - prod(d / R)` from the log-sum, with an exact 0 distance giving 1.
pub(crate) fn hit_probability(log_sum: f64, zero: bool) -> f64 {
    if zero { 1.0 } else { -log_sum.exp_m1() }
}
