//! Percentile-bootstrap confidence intervals over items, with a seeded RNG, and the combined
//! evaluator [`AlignmentReport`] (point estimates plus intervals) the platform sends as JSON.
//!
//! Resampling draws `n` item indices with replacement from `rand::rngs::StdRng` seeded with
//! `seed`, so an interval is reproducible for a given seed and `rand` version (the `rand`
//! crate does not promise `StdRng`'s stream across its major versions).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::alignment::{Confusion, auroc_sorted};

/// Confidence level used by [`alignment_with_ci`].
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// The `q`-quantile (`q` in `[0, 1]`) of ascending `sorted` values by linear interpolation
/// between closest ranks, NumPy's default (`numpy.percentile(values, 100 * q)`). `None` for
/// no values or `q` outside `[0, 1]`.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let last = sorted.len() - 1;
    let h = q * last as f64;
    let lo = (h.floor() as usize).min(last);
    let hi = (lo + 1).min(last);
    let t = h - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    // NumPy's _lerp: interpolate from whichever end is nearer, for accuracy.
    Some(if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    })
}

/// Percentile bootstrap interval `(lo, hi)` of a statistic over `n` items.
///
/// Draws `resamples` resamples of `n` item indices with replacement (seeded with `seed`),
/// evaluates `statistic` on each index list (an index may repeat), and returns the
/// `(1 − confidence)/2` and `(1 + confidence)/2` quantiles of the values (linear interpolation,
/// as NumPy). Resamples where the statistic is `None` or NaN are skipped. `None` when `n` or
/// `resamples` is 0, `confidence` is not in `(0, 1)`, or fewer than half the resamples give a
/// value. Deterministic: the same arguments always give the same interval, and two calls with
/// the same `n` and `seed` see the same resamples.
pub fn bootstrap_ci<F>(
    n: usize,
    resamples: usize,
    seed: u64,
    confidence: f64,
    mut statistic: F,
) -> Option<(f64, f64)>
where
    F: FnMut(&[usize]) -> Option<f64>,
{
    if n == 0 || resamples == 0 || !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n);
        }
        if let Some(v) = statistic(&idx).filter(|v| !v.is_nan()) {
            values.push(v);
        }
    }
    if values.len() * 2 < resamples {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Some((quantile(&values, tail)?, quantile(&values, 1.0 - tail)?))
}

/// A point estimate with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The statistic on all items; `None` when undefined.
    pub value: Option<f64>,
    /// Lower end of the interval; `None` when no interval could be formed.
    pub lo: Option<f64>,
    /// Upper end of the interval; `None` when no interval could be formed.
    pub hi: Option<f64>,
}

impl Estimate {
    fn new(value: Option<f64>, ci: Option<(f64, f64)>) -> Self {
        Estimate {
            value,
            lo: ci.map(|c| c.0),
            hi: ci.map(|c| c.1),
        }
    }
}

/// Evaluator-vs-human alignment with 95% percentile-bootstrap intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AlignmentReport {
    /// Number of items.
    pub n: usize,
    /// Items whose human label is positive (unsafe).
    pub positives: usize,
    /// Accuracy of always predicting the majority human label.
    pub majority_baseline: Option<f64>,
    /// Share of items where the evaluator's verdict matches the human label.
    pub accuracy: Estimate,
    /// Of the items the evaluator flags unsafe, the share humans call unsafe.
    pub precision: Estimate,
    /// Of the items humans call unsafe, the share the evaluator flags.
    pub recall: Estimate,
    /// Harmonic mean of precision and recall (`2tp / (2tp + fp + fn)`).
    pub f1: Estimate,
    /// AUROC of the evaluator's score; `value: None` when no score was given.
    pub auroc: Estimate,
    /// Confidence level of the intervals.
    pub confidence: f64,
    /// Bootstrap resamples drawn.
    pub resamples: usize,
    /// RNG seed of the resampling.
    pub seed: u64,
}

/// Accuracy, precision, recall, F1 and AUROC of an evaluator against human labels, each with a
/// 95% percentile-bootstrap interval over items, plus the majority baseline, `n` and positives.
///
/// `truth` is the human (majority) label, `predicted` the evaluator's verdict and `score` its
/// optional continuous score (higher = more unsafe; NaN scores are skipped for AUROC). Every
/// metric is resampled with the same seed, hence on the same resamples.
///
/// # Panics
/// If `predicted` or `score` differ in length from `truth`.
pub fn alignment_with_ci(
    truth: &[bool],
    predicted: &[bool],
    score: Option<&[f64]>,
    resamples: usize,
    seed: u64,
) -> AlignmentReport {
    let all = Confusion::new(truth, predicted);
    if let Some(s) = score {
        assert_eq!(truth.len(), s.len(), "truth/score lengths differ");
    }
    let n = truth.len();
    let ci = |metric: fn(&Confusion) -> Option<f64>| {
        let ci = bootstrap_ci(n, resamples, seed, DEFAULT_CONFIDENCE, |idx| {
            metric(&Confusion::at(truth, predicted, idx))
        });
        Estimate::new(metric(&all), ci)
    };
    let auroc = match score {
        None => Estimate::new(None, None),
        Some(score) => {
            let mut buf: Vec<(f64, bool)> = Vec::with_capacity(n);
            let mut sorted_at = |idx: &mut dyn Iterator<Item = usize>| {
                buf.clear();
                buf.extend(
                    idx.filter(|&i| !score[i].is_nan())
                        .map(|i| (score[i] + 0.0, truth[i])),
                );
                buf.sort_by(|a, b| a.0.total_cmp(&b.0));
                auroc_sorted(&buf)
            };
            let value = sorted_at(&mut (0..n));
            let ci = bootstrap_ci(n, resamples, seed, DEFAULT_CONFIDENCE, |idx| {
                sorted_at(&mut idx.iter().copied())
            });
            Estimate::new(value, ci)
        }
    };
    AlignmentReport {
        n,
        positives: all.positives(),
        majority_baseline: all.majority_baseline(),
        accuracy: ci(Confusion::accuracy),
        precision: ci(Confusion::precision),
        recall: ci(Confusion::recall),
        f1: ci(Confusion::f1),
        auroc,
        confidence: DEFAULT_CONFIDENCE,
        resamples,
        seed,
    }
}

#[cfg(test)]
mod tests {
    use super::super::alignment::{auroc, classification};
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Golden {
        percentiles: Vec<Percentiles>,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Percentiles {
        values: Vec<f64>,
        q: Vec<f64>,
        expected: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        truth: Vec<bool>,
        score: Vec<f64>,
        predicted: Vec<bool>,
    }

    fn golden() -> Golden {
        serde_json::from_str(include_str!("../../tests/data/stats/alignment.json"))
            .expect("alignment.json parses")
    }

    #[test]
    fn golden_quantiles_numpy() {
        for p in golden().percentiles {
            let mut sorted = p.values.clone();
            sorted.sort_by(f64::total_cmp);
            for (q, want) in p.q.iter().zip(&p.expected) {
                let got = quantile(&sorted, q / 100.0).unwrap();
                assert!((got - want).abs() < 1e-9, "q={q}: got {got}, want {want}");
            }
        }
    }

    #[test]
    fn hand_quantiles() {
        // numpy.percentile([1, 2, 3, 4], 25) = 1.75; 50 -> 2.5.
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.25), Some(1.75));
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert_eq!(quantile(&v, 1.0), Some(4.0));
        assert_eq!(quantile(&v, 1.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn report_point_estimates_match_alignment() {
        for c in golden().cases {
            let r = alignment_with_ci(&c.truth, &c.predicted, Some(&c.score), 300, 7);
            let cls = classification(&c.truth, &c.predicted);
            assert_eq!((r.n, r.positives), (cls.n, cls.positives));
            assert_eq!(r.majority_baseline, cls.majority_baseline);
            assert_eq!(r.accuracy.value, cls.accuracy);
            assert_eq!(r.precision.value, cls.precision);
            assert_eq!(r.recall.value, cls.recall);
            assert_eq!(r.f1.value, cls.f1);
            assert_eq!(r.auroc.value, auroc(&c.truth, &c.score));
            for e in [r.accuracy, r.recall, r.f1, r.auroc] {
                let (lo, hi) = (e.lo.unwrap(), e.hi.unwrap());
                let v = e.value.unwrap();
                assert!(lo <= v && v <= hi, "{}: {lo} <= {v} <= {hi}", c.name);
            }
            if c.predicted.iter().all(|p| !p) {
                // Nothing predicted positive in any resample: no precision, no interval.
                assert_eq!((r.precision.value, r.precision.lo), (None, None));
            }
            assert_eq!(
                r,
                alignment_with_ci(&c.truth, &c.predicted, Some(&c.score), 300, 7)
            );
        }
    }

    #[test]
    fn report_without_score_and_json_shape() {
        let truth = [true, false, true, false, true, true];
        let pred = [true, false, false, false, true, true];
        let r = alignment_with_ci(&truth, &pred, None, 200, 1);
        assert_eq!(r.auroc, Estimate::new(None, None));
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["n"], 6);
        assert_eq!(json["positives"], 4);
        assert!(json["accuracy"]["lo"].is_number());
        assert!(json["auroc"]["value"].is_null());
        let empty = alignment_with_ci(&[], &[], Some(&[]), 100, 1);
        assert_eq!(
            (empty.n, empty.accuracy.value, empty.accuracy.lo),
            (0, None, None)
        );
    }

    #[test]
    fn undefined_statistics() {
        assert_eq!(bootstrap_ci(0, 100, 1, 0.95, |_| Some(1.0)), None);
        assert_eq!(bootstrap_ci(10, 0, 1, 0.95, |_| Some(1.0)), None);
        assert_eq!(bootstrap_ci(10, 100, 1, 1.0, |_| Some(1.0)), None);
        assert_eq!(bootstrap_ci(10, 100, 1, 0.95, |_| None), None);
        assert_eq!(bootstrap_ci(10, 100, 1, 0.95, |_| Some(f64::NAN)), None);
        // Defined on at least half the resamples: an interval of those values.
        let mut k = 0;
        let half = bootstrap_ci(10, 100, 1, 0.95, |_| {
            k += 1;
            (k % 2 == 0).then_some(3.0)
        });
        assert_eq!(half, Some((3.0, 3.0)));
        let mut k = 0;
        let under = bootstrap_ci(10, 101, 1, 0.95, |_| {
            k += 1;
            (k % 2 == 0).then_some(3.0)
        });
        assert_eq!(under, None);
    }

    proptest! {
        #[test]
        fn bootstrap_is_ordered_and_deterministic(
            data in prop::collection::vec(-100.0f64..100.0, 1..50),
            seed in any::<u64>(),
            confidence in 0.5f64..0.99,
        ) {
            let mean = |idx: &[usize]| {
                Some(idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64)
            };
            let a = bootstrap_ci(data.len(), 200, seed, confidence, mean).unwrap();
            let b = bootstrap_ci(data.len(), 200, seed, confidence, mean).unwrap();
            prop_assert_eq!(a, b);
            prop_assert!(a.0 <= a.1);
            let min = data.iter().copied().fold(f64::INFINITY, f64::min);
            let max = data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(min - 1e-9 <= a.0 && a.1 <= max + 1e-9);
        }
    }
}
