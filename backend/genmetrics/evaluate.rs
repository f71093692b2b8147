//! All six metrics in one go.
//!
//! What it owns: the parameters and combined result types, and the pipeline that every entry
//! point runs: validate, pack both sets once, one k-NN pass per set (keeping max(k, prdc_k)
//! neighbours, so PP&PR and prdc share it), then one real x fake pass that feeds both metric
//! families. That is three O(N^2 D) passes in all, reported through an optional progress
//! callback.

use serde::{Deserialize, Serialize};

use super::cross::{CrossRequest, CrossTotals, PprRadii, PrdcRadii, real_fake_pass};
use super::distance::{
    Frame, Isa, Packed, Progress, ProgressFn, cross_pass_units, self_pass_units,
};
use super::knn::{KnnLists, knn_lists};
use super::ppr::{PprScores, finish_ppr};
use super::prdc::{PrdcScores, finish_prdc};
use super::{Embeddings, GenMetricsError, Result, check_pair};

/// Parameters of [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// PP&PR radius scale (default 1.2).
    pub a: f64,
    /// PP&PR neighbour rank (default 4).
    pub k: usize,
    /// prdc neighbour rank (default 5).
    pub prdc_k: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            a: 1.2,
            k: 4,
            prdc_k: 5,
        }
    }
}

/// PP&PR and the prdc baselines of one real/fake pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllScores {
    /// P-precision and P-recall.
    pub ppr: PprScores,
    /// k-NN precision, recall, density, coverage.
    pub prdc: PrdcScores,
    /// Number of real samples.
    pub real_count: usize,
    /// Number of fake samples.
    pub fake_count: usize,
    /// Embedding dimension.
    pub dim: usize,
}

/// Computes PP&PR and the prdc baselines with shared distance passes. `progress`, if given,
/// is called with `(done, total)` work units (distance pairs) as tiles complete, from worker
/// threads but one call at a time and with `done` strictly increasing, ending at
/// `(total, total)`.
pub fn evaluate(
    real: &Embeddings,
    fake: &Embeddings,
    params: &Params,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<AllScores> {
    evaluate_with(real, fake, params, progress, None)
}

/// [`evaluate`] with a forced kernel (`None` picks the best; tests compare kernels).
pub(crate) fn evaluate_with(
    real: &Embeddings,
    fake: &Embeddings,
    params: &Params,
    progress: Option<&ProgressFn<'_>>,
    isa: Option<Isa>,
) -> Result<AllScores> {
    check_a(params.a)?;
    let pipeline = Pipeline::new(real, fake, &[params.k, params.prdc_k], progress, isa)?;
    let (real_lists, fake_lists) = pipeline.neighbours(params.k.max(params.prdc_k));
    let ppr_radii = PprRadii::from_lists(params.a, params.k, &real_lists, &fake_lists);
    let prdc_radii = PrdcRadii::from_lists(params.prdc_k, &real_lists, &fake_lists);
    drop((real_lists, fake_lists));
    let totals = pipeline.cross(&CrossRequest {
        ppr: Some(ppr_radii),
        prdc: Some(&prdc_radii),
    });
    Ok(AllScores {
        ppr: finish_ppr(&totals, ppr_radii, params.a, params.k),
        prdc: finish_prdc(&totals, params.prdc_k),
        real_count: real.rows,
        fake_count: fake.rows,
        dim: real.dim,
    })
}

/// Checks the PP&PR radius scale.
pub(crate) fn check_a(a: f64) -> Result<()> {
    if a.is_finite() && a > 0.0 {
        Ok(())
    } else {
        Err(GenMetricsError::InvalidParam(format!(
            "a must be a positive finite number, got {a}"
        )))
    }
}

/// The validated and packed inputs of one computation, and its progress counter. Entry points
/// run [`Pipeline::neighbours`] and then [`Pipeline::cross`]: three O(N^2 D) passes.
pub(crate) struct Pipeline<'a> {
    isa: Isa,
    frame: Frame,
    real: Packed<'a>,
    fake: Packed<'a>,
    progress: Progress<'a>,
}

impl<'a> Pipeline<'a> {
    /// Validates the pair for every neighbour rank in `ks`, and packs both sets.
    pub(crate) fn new(
        real: &'a Embeddings,
        fake: &'a Embeddings,
        ks: &[usize],
        progress: Option<&'a ProgressFn<'a>>,
        isa: Option<Isa>,
    ) -> Result<Self> {
        check_pair(real, fake, ks)?;
        let frame = Frame::new(&[real, fake]);
        let total = self_pass_units(real.rows)
            + self_pass_units(fake.rows)
            + cross_pass_units(real.rows, fake.rows);
        Ok(Self {
            isa: isa.unwrap_or_else(Isa::detect),
            real: Packed::new(real, &frame),
            fake: Packed::new(fake, &frame),
            frame,
            progress: Progress::new(progress, total),
        })
    }

    /// The k nearest other samples of every real and every fake.
    pub(crate) fn neighbours(&self, k: usize) -> (KnnLists, KnnLists) {
        (
            knn_lists(self.isa, &self.real, &self.frame, k, &self.progress),
            knn_lists(self.isa, &self.fake, &self.frame, k, &self.progress),
        )
    }

    /// The real x fake pass; reports completion.
    pub(crate) fn cross(&self, request: &CrossRequest) -> CrossTotals {
        let totals = real_fake_pass(
            self.isa,
            &self.real,
            &self.fake,
            &self.frame,
            request,
            &self.progress,
        );
        self.progress.finish();
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definitions, computed directly in f64 (product form, full distance matrix).
    fn naive(real: &Embeddings, fake: &Embeddings, p: &Params) -> (f64, f64, [f64; 4]) {
        let dist = |x: &[f32], y: &[f32]| -> f64 {
            x.iter()
                .zip(y)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let kth = |set: &Embeddings, k: usize| -> Vec<f64> {
            (0..set.rows)
                .map(|i| {
                    let mut d: Vec<f64> = (0..set.rows)
                        .map(|j| dist(set.row(i), set.row(j)))
                        .collect();
                    d.sort_by(f64::total_cmp);
                    d[k]
                })
                .collect()
        };
        let (n, m) = (real.rows, fake.rows);
        let rx = p.a * kth(real, p.k).iter().sum::<f64>() / n as f64;
        let ry = p.a * kth(fake, p.k).iter().sum::<f64>() / m as f64;
        let d: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..m).map(|j| dist(real.row(i), fake.row(j))).collect())
            .collect();
        let f = |d: f64, r: f64| if d < r { 1.0 - d / r } else { 0.0 };
        let pp = (0..m)
            .map(|j| 1.0 - (0..n).map(|i| 1.0 - f(d[i][j], rx)).product::<f64>())
            .sum::<f64>()
            / m as f64;
        let pr = (0..n)
            .map(|i| 1.0 - (0..m).map(|j| 1.0 - f(d[i][j], ry)).product::<f64>())
            .sum::<f64>()
            / n as f64;
        let (r_real, r_fake) = (kth(real, p.prdc_k), kth(fake, p.prdc_k));
        let precision = (0..m)
            .filter(|&j| (0..n).any(|i| d[i][j] < r_real[i]))
            .count() as f64
            / m as f64;
        let recall = (0..n)
            .filter(|&i| (0..m).any(|j| d[i][j] < r_fake[j]))
            .count() as f64
            / n as f64;
        let density = (0..m)
            .map(|j| (0..n).filter(|&i| d[i][j] < r_real[i]).count())
            .sum::<usize>() as f64
            / (p.prdc_k * m) as f64;
        let coverage = (0..n)
            .filter(|&i| d[i].iter().copied().fold(f64::INFINITY, f64::min) < r_real[i])
            .count() as f64
            / n as f64;
        (pp, pr, [precision, recall, density, coverage])
    }

    fn set(rows: usize, dim: usize, seed: u64, shift: f32) -> Embeddings {
        let mut s = seed;
        let data = (0..rows * dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Coarse grid values: many exact ties and some duplicate rows.
                (s % 7) as f32 * 0.5 - 1.5 + shift
            })
            .collect();
        Embeddings::new(rows, dim, data).unwrap()
    }

    fn continuous(rows: usize, dim: usize, seed: u64, shift: f32) -> Embeddings {
        let mut s = seed;
        let data = (0..rows * dim)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 3.0 + shift
            })
            .collect();
        Embeddings::new(rows, dim, data).unwrap()
    }

    #[test]
    fn every_kernel_matches_the_definitions() {
        let params = Params {
            a: 1.2,
            k: 3,
            prdc_k: 4,
        };
        let cases = [
            (continuous(150, 5, 1, 0.0), continuous(170, 5, 2, 0.4)),
            (continuous(140, 70, 3, 0.0), continuous(260, 70, 4, 0.1)),
            (set(200, 3, 5, 0.0), set(150, 3, 6, 0.5)),
            (continuous(40, 300, 7, 100.0), continuous(45, 300, 8, 100.2)),
        ];
        for (real, fake) in &cases {
            let (pp, pr, baselines) = naive(real, fake, &params);
            for isa in Isa::all_supported() {
                let all = evaluate_with(real, fake, &params, None, Some(isa)).unwrap();
                let (ppr, prdc) = (all.ppr, all.prdc);
                let what = format!("{isa:?} {}x{}x{}", real.rows, fake.rows, real.dim);
                assert!(
                    (ppr.p_precision - pp).abs() < 1e-9,
                    "{what}: PP {ppr:?} vs {pp}"
                );
                assert!(
                    (ppr.p_recall - pr).abs() < 1e-9,
                    "{what}: PR {ppr:?} vs {pr}"
                );
                let got = [prdc.precision, prdc.recall, prdc.density, prdc.coverage];
                for (g, w) in got.iter().zip(&baselines) {
                    assert!((g - w).abs() < 1e-12, "{what}: {got:?} vs {baselines:?}");
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let real = continuous(900, 24, 11, 0.0);
        let fake = continuous(700, 24, 12, 0.3);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| evaluate(&real, &fake, &Params::default(), None).unwrap())
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn parameters_are_checked() {
        let real = continuous(20, 3, 1, 0.0);
        let fake = continuous(20, 3, 2, 0.0);
        for a in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let p = Params {
                a,
                ..Params::default()
            };
            assert!(matches!(
                evaluate(&real, &fake, &p, None),
                Err(GenMetricsError::InvalidParam(_))
            ));
        }
        let p = Params {
            k: 0,
            ..Params::default()
        };
        assert!(matches!(
            evaluate(&real, &fake, &p, None),
            Err(GenMetricsError::InvalidParam(_))
        ));
    }

    #[test]
    fn scores_serialize_with_their_parameters() {
        let real = continuous(30, 4, 1, 0.0);
        let fake = continuous(30, 4, 2, 0.2);
        let scores = evaluate(&real, &fake, &Params::default(), None).unwrap();
        let json = serde_json::to_value(scores).unwrap();
        assert_eq!(json["ppr"]["a"], 1.2);
        assert_eq!(json["ppr"]["k"], 4);
        assert_eq!(json["prdc"]["k"], 5);
        let back: AllScores = serde_json::from_value(json).unwrap();
        assert_eq!(back, scores);
    }
}
