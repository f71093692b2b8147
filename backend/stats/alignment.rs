//! Evaluator alignment: how well an automatic evaluator's verdicts and scores match the human
//! (majority) label on the same items.
//!
//! Labels are binary with `true` = unsafe = the positive class. Ratios that are undefined on
//! the data (a zero denominator) are `None`, where scikit-learn would return its
//! `zero_division` value; the non-`None` values equal scikit-learn's. Everything is
//! `O(n log n)` or better.

use serde::{Deserialize, Serialize};

/// What [`majority_label`] does when the human labels are split evenly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TieRule {
    /// A tie counts as unsafe (`true`): conservative for a safety benchmark. The default.
    #[default]
    Unsafe,
    /// A tie counts as safe (`false`).
    Safe,
    /// A tie has no majority: the item is dropped (`None`).
    Drop,
}

/// Majority of binary human labels (`true` = unsafe), with `tie` deciding even splits.
///
/// `None` for no labels at all, or for a tie under [`TieRule::Drop`].
pub fn majority_label(labels: &[bool], tie: TieRule) -> Option<bool> {
    if labels.is_empty() {
        return None;
    }
    let unsafe_votes = labels.iter().filter(|&&l| l).count();
    let safe_votes = labels.len() - unsafe_votes;
    match unsafe_votes.cmp(&safe_votes) {
        std::cmp::Ordering::Greater => Some(true),
        std::cmp::Ordering::Less => Some(false),
        std::cmp::Ordering::Equal => match tie {
            TieRule::Unsafe => Some(true),
            TieRule::Safe => Some(false),
            TieRule::Drop => None,
        },
    }
}

/// Confusion counts of predictions against the truth (positive = `true` = unsafe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Truth positive, predicted positive.
    pub tp: usize,
    /// Truth negative, predicted positive.
    pub fp: usize,
    /// Truth negative, predicted negative.
    pub tn: usize,
    /// Truth positive, predicted negative (serialised as `fn`).
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl Confusion {
    /// Counts over all items.
    ///
    /// # Panics
    /// If `truth` and `predicted` have different lengths.
    pub fn new(truth: &[bool], predicted: &[bool]) -> Self {
        assert_eq!(
            truth.len(),
            predicted.len(),
            "truth/predicted lengths differ"
        );
        let mut c = Confusion::default();
        for (&t, &p) in truth.iter().zip(predicted) {
            c.add(t, p);
        }
        c
    }

    /// Counts over the items at `indices` (repeats count again), for resampling.
    pub(crate) fn at(truth: &[bool], predicted: &[bool], indices: &[usize]) -> Self {
        let mut c = Confusion::default();
        for &i in indices {
            c.add(truth[i], predicted[i]);
        }
        c
    }

    fn add(&mut self, t: bool, p: bool) {
        match (t, p) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }

    /// Number of items.
    pub fn n(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// Items whose truth is positive.
    pub fn positives(&self) -> usize {
        self.tp + self.fn_
    }

    /// `(tp + tn) / n`; `None` for no items.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.tp + self.tn, self.n())
    }

    /// `tp / (tp + fp)`; `None` when nothing was predicted positive.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`; `None` when no item is truly positive.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2tp / (2tp + fp + fn)` (scikit-learn's definition, which is 0 rather than undefined
    /// when precision or recall alone is undefined); `None` when `tp + fp + fn = 0`.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// `max(positives, negatives) / n`: accuracy of always predicting the majority class.
    pub fn majority_baseline(&self) -> Option<f64> {
        let pos = self.positives();
        ratio(pos.max(self.n() - pos), self.n())
    }
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Classification metrics of binary predictions against the truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Classification {
    /// Number of items.
    pub n: usize,
    /// Items whose truth is positive (unsafe).
    pub positives: usize,
    /// The confusion counts behind the ratios.
    pub confusion: Confusion,
    /// `(tp + tn) / n`; `None` for no items.
    pub accuracy: Option<f64>,
    /// `tp / (tp + fp)`; `None` when nothing was predicted positive.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`; `None` when no item is truly positive.
    pub recall: Option<f64>,
    /// `2tp / (2tp + fp + fn)`; `None` when that denominator is 0.
    pub f1: Option<f64>,
    /// Accuracy of always predicting the majority class, `max(pos, neg) / n`.
    pub majority_baseline: Option<f64>,
}

/// Accuracy, precision, recall, F1 and the majority baseline of `predicted` against `truth`.
///
/// # Panics
/// If `truth` and `predicted` have different lengths.
pub fn classification(truth: &[bool], predicted: &[bool]) -> Classification {
    Confusion::new(truth, predicted).into()
}

impl From<Confusion> for Classification {
    fn from(c: Confusion) -> Self {
        Classification {
            n: c.n(),
            positives: c.positives(),
            confusion: c,
            accuracy: c.accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            majority_baseline: c.majority_baseline(),
        }
    }
}

/// `(truth, score)` of the items with a non-NaN score, sorted by score ascending. `-0.0` is
/// folded into `0.0` so equal scores compare equal.
fn sorted_scored(truth: &[bool], score: &[f64]) -> Vec<(f64, bool)> {
    assert_eq!(truth.len(), score.len(), "truth/score lengths differ");
    let mut v: Vec<(f64, bool)> = score
        .iter()
        .zip(truth)
        .filter(|(s, _)| !s.is_nan())
        .map(|(&s, &t)| (s + 0.0, t))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Area under the ROC curve of `score` (higher = more unsafe) against `truth`.
///
/// The Mann–Whitney statistic: the probability that a random positive scores higher than a
/// random negative, ties counting one half. Equals scikit-learn's `roc_auc_score`.
/// Items whose score is NaN are skipped (scikit-learn would reject the input). `None` when,
/// after that, either class is missing.
///
/// Worked example: truth `[T, F, T, F]`, score `[.9, .1, .5, .5]`: of the 4 positive/negative
/// pairs, 3 are ordered correctly and 1 is tied, so AUROC = 3.5/4 = 0.875.
///
/// # Panics
/// If `truth` and `score` have different lengths.
pub fn auroc(truth: &[bool], score: &[f64]) -> Option<f64> {
    auroc_sorted(&sorted_scored(truth, score))
}

/// AUROC of `(score, truth)` pairs sorted by score, via average ranks.
pub(crate) fn auroc_sorted(v: &[(f64, bool)]) -> Option<f64> {
    let pos = v.iter().filter(|p| p.1).count();
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Sum of (1-based, tie-averaged) ranks of the positives, doubled to stay in integers.
    let mut twice_rank_sum: u128 = 0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        let mut group_pos = 0u128;
        while j < v.len() && v[j].0 == v[i].0 {
            group_pos += u128::from(v[j].1);
            j += 1;
        }
        // Ranks i+1..=j average to (i+1+j)/2.
        twice_rank_sum += group_pos * (i + 1 + j) as u128;
        i = j;
    }
    let p = pos as u128;
    let u_twice = twice_rank_sum - p * (p + 1);
    Some(u_twice as f64 / (2.0 * pos as f64 * neg as f64))
}

/// One point of a ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    /// Items with `score >= threshold` are predicted positive. The first point's threshold is
    /// `+inf` (serialised by `serde_json` as `null`).
    pub threshold: f64,
    /// False positive rate at this threshold.
    pub fpr: f64,
    /// True positive rate at this threshold.
    pub tpr: f64,
}

/// The ROC curve: like scikit-learn's `roc_curve(drop_intermediate=False)`.
///
/// Starts at `(fpr, tpr) = (0, 0)` with threshold `+inf`, then one point per distinct score in
/// descending order, predicting positive when `score >= threshold`; ends at `(1, 1)`. NaN
/// scores are skipped. Empty when either class is missing (rates undefined).
///
/// # Panics
/// If `truth` and `score` have different lengths.
pub fn roc_curve(truth: &[bool], score: &[f64]) -> Vec<RocPoint> {
    let counts = roc_counts(&sorted_scored(truth, score));
    let Some(&(_, p, n)) = counts.last() else {
        return Vec::new();
    };
    if p == 0 || n == 0 {
        return Vec::new();
    }
    counts
        .iter()
        .map(|&(threshold, tp, fp)| RocPoint {
            threshold,
            fpr: fp as f64 / n as f64,
            tpr: tp as f64 / p as f64,
        })
        .collect()
}

/// `(threshold, tp, fp)` for `+inf` and each distinct score descending, from ascending input.
fn roc_counts(v: &[(f64, bool)]) -> Vec<(f64, usize, usize)> {
    let mut out = vec![(f64::INFINITY, 0, 0)];
    let (mut tp, mut fp) = (0, 0);
    let mut j = v.len();
    while j > 0 {
        let s = v[j - 1].0;
        while j > 0 && v[j - 1].0 == s {
            if v[j - 1].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            j -= 1;
        }
        out.push((s, tp, fp));
    }
    out
}

/// A threshold and the value of the criterion it maximises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Optimum {
    /// Predict positive when `score >= threshold`.
    pub threshold: f64,
    /// The criterion's value at that threshold.
    pub value: f64,
}

/// Thresholds on the score that maximise F1 and Youden's J.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BestThresholds {
    /// Threshold with the highest F1 (`2tp / (2tp + fp + fn)`).
    pub max_f1: Optimum,
    /// Threshold with the highest Youden's J (`tpr − fpr`).
    pub max_youden: Optimum,
}

/// Best thresholds over the points of [`roc_curve`]; ties go to the highest threshold (the
/// first point reaching the maximum). `None` when either class is missing.
///
/// # Panics
/// If `truth` and `score` have different lengths.
pub fn best_thresholds(truth: &[bool], score: &[f64]) -> Option<BestThresholds> {
    let counts = roc_counts(&sorted_scored(truth, score));
    let &(_, p, n) = counts.last()?;
    if p == 0 || n == 0 {
        return None;
    }
    let mut best_f1 = Optimum {
        threshold: f64::NAN,
        value: f64::NEG_INFINITY,
    };
    let mut best_j = best_f1;
    for &(threshold, tp, fp) in &counts {
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (p - tp)) as f64;
        if f1 > best_f1.value {
            best_f1 = Optimum {
                threshold,
                value: f1,
            };
        }
        let j = tp as f64 / p as f64 - fp as f64 / n as f64;
        if j > best_j.value {
            best_j = Optimum {
                threshold,
                value: j,
            };
        }
    }
    Some(BestThresholds {
        max_f1: best_f1,
        max_youden: best_j,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::Value;

    const TOL: f64 = 1e-9;

    #[derive(Deserialize)]
    struct Golden {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        truth: Vec<bool>,
        score: Vec<f64>,
        predicted: Vec<bool>,
        n: usize,
        positives: usize,
        auroc: Option<f64>,
        roc: Vec<GoldenRoc>,
        accuracy: Option<f64>,
        precision: Option<f64>,
        recall: Option<f64>,
        f1: Option<f64>,
        cohen_kappa: Option<f64>,
        majority_baseline: f64,
        max_f1_threshold: Value,
        max_f1: f64,
        max_youden_threshold: Value,
        max_youden: f64,
    }

    #[derive(Deserialize)]
    struct GoldenRoc {
        threshold: Value,
        fpr: f64,
        tpr: f64,
    }

    fn golden() -> Golden {
        serde_json::from_str(include_str!("../../tests/data/stats/alignment.json"))
            .expect("alignment.json parses")
    }

    /// Thresholds are numbers, or the string "inf".
    fn threshold(v: &Value) -> f64 {
        match v {
            Value::String(s) if s == "inf" => f64::INFINITY,
            v => v.as_f64().expect("threshold"),
        }
    }

    fn close(got: Option<f64>, want: Option<f64>, what: &str) {
        match (got, want) {
            (None, None) => {}
            (Some(g), Some(w)) => assert!((g - w).abs() < TOL, "{what}: got {g}, want {w}"),
            _ => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }

    fn same_threshold(got: f64, want: f64, what: &str) {
        assert!(
            got == want || (got - want).abs() < TOL,
            "{what}: got {got}, want {want}"
        );
    }

    #[test]
    fn golden_classification_sklearn() {
        for c in golden().cases {
            let got = classification(&c.truth, &c.predicted);
            assert_eq!((got.n, got.positives), (c.n, c.positives), "{}", c.name);
            close(got.accuracy, c.accuracy, &format!("{} accuracy", c.name));
            close(got.precision, c.precision, &format!("{} precision", c.name));
            close(got.recall, c.recall, &format!("{} recall", c.name));
            close(got.f1, c.f1, &format!("{} f1", c.name));
            close(
                got.majority_baseline,
                Some(c.majority_baseline),
                &format!("{} baseline", c.name),
            );
        }
    }

    #[test]
    fn golden_cohen_of_evaluator_vs_truth_sklearn() {
        for c in golden().cases {
            let code = |v: &[bool]| -> Vec<Option<u32>> {
                v.iter().map(|&b| Some(u32::from(b))).collect()
            };
            let k = super::super::agreement::cohen_kappa(&code(&c.truth), &code(&c.predicted));
            close(k.value, c.cohen_kappa, &c.name);
        }
    }

    #[test]
    fn golden_auroc_sklearn() {
        for c in golden().cases {
            close(auroc(&c.truth, &c.score), c.auroc, &c.name);
        }
    }

    #[test]
    fn golden_roc_curve_sklearn() {
        for c in golden().cases {
            let got = roc_curve(&c.truth, &c.score);
            assert_eq!(got.len(), c.roc.len(), "{}", c.name);
            for (g, w) in got.iter().zip(&c.roc) {
                same_threshold(g.threshold, threshold(&w.threshold), &c.name);
                assert!((g.fpr - w.fpr).abs() < TOL, "{}", c.name);
                assert!((g.tpr - w.tpr).abs() < TOL, "{}", c.name);
            }
        }
    }

    #[test]
    fn golden_best_thresholds() {
        for c in golden().cases {
            let b = best_thresholds(&c.truth, &c.score).expect("both classes");
            same_threshold(b.max_f1.threshold, threshold(&c.max_f1_threshold), &c.name);
            assert!((b.max_f1.value - c.max_f1).abs() < TOL, "{}", c.name);
            same_threshold(
                b.max_youden.threshold,
                threshold(&c.max_youden_threshold),
                &c.name,
            );
            assert!(
                (b.max_youden.value - c.max_youden).abs() < TOL,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn majority_and_ties() {
        assert_eq!(
            majority_label(&[true, true, false], TieRule::Safe),
            Some(true)
        );
        assert_eq!(
            majority_label(&[false, false, true], TieRule::Unsafe),
            Some(false)
        );
        assert_eq!(
            majority_label(&[true, false], TieRule::default()),
            Some(true)
        );
        assert_eq!(majority_label(&[true, false], TieRule::Safe), Some(false));
        assert_eq!(majority_label(&[true, false], TieRule::Drop), None);
        assert_eq!(majority_label(&[], TieRule::Unsafe), None);
    }

    #[test]
    fn hand_classification() {
        // tp=2 fp=1 tn=3 fn=2: acc 5/8, precision 2/3, recall 1/2, f1 4/7, baseline 4/8.
        let truth = [true, true, true, true, false, false, false, false];
        let pred = [true, true, false, false, true, false, false, false];
        let c = classification(&truth, &pred);
        assert_eq!(
            c.confusion,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 3,
                fn_: 2
            }
        );
        assert_eq!(c.accuracy, Some(5.0 / 8.0));
        assert_eq!(c.precision, Some(2.0 / 3.0));
        assert_eq!(c.recall, Some(0.5));
        assert_eq!(c.f1, Some(4.0 / 7.0));
        assert_eq!(c.majority_baseline, Some(0.5));
        let json = serde_json::to_value(c.confusion).unwrap();
        assert_eq!(json["fn"], 2);
        // Undefined ratios are None rather than sklearn's zero_division value.
        let c = classification(&[false, false], &[false, false]);
        assert_eq!((c.precision, c.recall, c.f1), (None, None, None));
        assert_eq!(c.accuracy, Some(1.0));
        let c = classification(&[], &[]);
        assert_eq!((c.accuracy, c.majority_baseline), (None, None));
    }

    #[test]
    fn hand_auroc_with_ties_and_nan() {
        let truth = [true, false, true, false];
        assert_eq!(auroc(&truth, &[0.9, 0.1, 0.5, 0.5]), Some(0.875));
        // A NaN score drops its item: the remaining pairs are all ordered correctly.
        assert_eq!(auroc(&truth, &[0.9, 0.1, f64::NAN, 0.5]), Some(1.0));
        assert_eq!(auroc(&[true, true], &[0.1, 0.2]), None);
        assert_eq!(auroc(&truth, &[0.0, -0.0, 1.0, 1.0]), Some(0.5));
        let roc = roc_curve(&truth, &[0.9, 0.1, 0.5, 0.5]);
        let pts: Vec<(f64, f64, f64)> = roc.iter().map(|p| (p.threshold, p.fpr, p.tpr)).collect();
        assert_eq!(
            pts,
            vec![
                (f64::INFINITY, 0.0, 0.0),
                (0.9, 0.0, 0.5),
                (0.5, 0.5, 1.0),
                (0.1, 1.0, 1.0)
            ]
        );
        assert!(roc_curve(&[false], &[1.0]).is_empty());
        assert!(best_thresholds(&[false], &[1.0]).is_none());
    }

    fn labelled_scores() -> impl Strategy<Value = (Vec<bool>, Vec<f64>)> {
        prop::collection::vec((any::<bool>(), -20i32..20), 2..80)
            .prop_filter("both classes", |v| {
                v.iter().any(|p| p.0) && v.iter().any(|p| !p.0)
            })
            .prop_map(|v| {
                // Integer-valued scores scaled down: plenty of ties.
                v.into_iter().map(|(t, s)| (t, f64::from(s) / 4.0)).unzip()
            })
    }

    proptest! {
        #[test]
        fn auroc_of_perfect_and_reversed_scores(truth in prop::collection::vec(any::<bool>(), 2..80)) {
            prop_assume!(truth.iter().any(|&t| t) && truth.iter().any(|&t| !t));
            let perfect: Vec<f64> = truth.iter().map(|&t| if t { 1.0 } else { 0.0 }).collect();
            let reversed: Vec<f64> = perfect.iter().map(|s| -s).collect();
            prop_assert_eq!(auroc(&truth, &perfect), Some(1.0));
            prop_assert_eq!(auroc(&truth, &reversed), Some(0.0));
        }

        #[test]
        fn auroc_invariant_under_increasing_transforms((truth, score) in labelled_scores()) {
            let a = auroc(&truth, &score).unwrap();
            let lin: Vec<f64> = score.iter().map(|s| 3.0 * s + 1.0).collect();
            let exp: Vec<f64> = score.iter().map(|s| s.exp()).collect();
            prop_assert!((auroc(&truth, &lin).unwrap() - a).abs() < 1e-12);
            prop_assert!((auroc(&truth, &exp).unwrap() - a).abs() < 1e-12);
            prop_assert!((0.0..=1.0).contains(&a));
        }

        #[test]
        fn auroc_of_negated_score_is_complement((truth, score) in labelled_scores()) {
            let neg: Vec<f64> = score.iter().map(|s| -s).collect();
            let sum = auroc(&truth, &score).unwrap() + auroc(&truth, &neg).unwrap();
            prop_assert!((sum - 1.0).abs() < 1e-12);
        }

        #[test]
        fn auroc_is_trapezoid_area_of_roc((truth, score) in labelled_scores()) {
            let roc = roc_curve(&truth, &score);
            let area: f64 = roc
                .windows(2)
                .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
                .sum();
            prop_assert!((area - auroc(&truth, &score).unwrap()).abs() < 1e-12);
            let last = roc.last().unwrap();
            prop_assert_eq!((last.fpr, last.tpr), (1.0, 1.0));
            prop_assert!(roc.windows(2).all(|w| w[0].threshold > w[1].threshold));
        }

        #[test]
        fn classification_ratios_in_unit_interval(
            pairs in prop::collection::vec((any::<bool>(), any::<bool>()), 0..60)
        ) {
            let (truth, pred): (Vec<bool>, Vec<bool>) = pairs.into_iter().unzip();
            let c = classification(&truth, &pred);
            for v in [c.accuracy, c.precision, c.recall, c.f1].into_iter().flatten() {
                prop_assert!((0.0..=1.0).contains(&v));
            }
            if let Some(b) = c.majority_baseline {
                prop_assert!((0.5..=1.0).contains(&b));
            }
        }
    }
}
