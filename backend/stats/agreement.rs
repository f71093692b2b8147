//! Inter-annotator agreement over a ratings table.
//!
//! A ratings table is `&[Vec<Option<u32>>]`: one row per item, one column per annotator, `None`
//! where that annotator did not label the item. Categories are `u32` codes. Rows may have
//! different lengths; missing trailing columns count as `None`. The number of annotators is the
//! length of the longest row.
//!
//! Every statistic comes back as an [`Agreement`] carrying the number of items and ratings it
//! was computed from, so a UI can show `n` next to the value. `value` is `None` when the
//! statistic is undefined (no usable items, or chance agreement is already perfect, e.g. every
//! rating is the same category).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A statistic together with the amount of data behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// The statistic, or `None` when it is undefined on this data.
    pub value: Option<f64>,
    /// Items (units) that contributed: for multi-rater statistics, items with at least two
    /// ratings; for Cohen's kappa, items both annotators labelled.
    pub items: usize,
    /// Ratings (individual labels) inside those items.
    pub ratings: usize,
}

impl Agreement {
    fn undefined(items: usize, ratings: usize) -> Self {
        Agreement {
            value: None,
            items,
            ratings,
        }
    }
}

/// Cohen's kappa for one pair of annotators (column indices into the ratings table, `a < b`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairKappa {
    /// First annotator's column.
    pub a: usize,
    /// Second annotator's column.
    pub b: usize,
    /// Their kappa over the items both labelled.
    pub kappa: Agreement,
}

/// Level of measurement for Krippendorff's alpha: decides the distance between two categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Categories are unordered labels: distance 0 if equal, 1 otherwise.
    Nominal,
    /// Categories are ranks: Krippendorff's ordinal distance from the coincidence marginals.
    Ordinal,
    /// Categories are numbers on an interval scale: squared difference of the codes.
    Interval,
}

/// Sorted `(category, count)` pairs of the labels present in one row.
fn row_counts(row: &[Option<u32>]) -> Vec<(u32, usize)> {
    let mut labels: Vec<u32> = row.iter().flatten().copied().collect();
    labels.sort_unstable();
    let mut out: Vec<(u32, usize)> = Vec::new();
    for l in labels {
        match out.last_mut() {
            Some((c, k)) if *c == l => *k += 1,
            _ => out.push((l, 1)),
        }
    }
    out
}

/// Rows with at least two ratings, as `(counts per category, number of ratings)`.
fn pairable(rows: &[Vec<Option<u32>>]) -> Vec<(Vec<(u32, usize)>, usize)> {
    rows.iter()
        .map(|r| {
            let c = row_counts(r);
            let m = c.iter().map(|&(_, k)| k).sum();
            (c, m)
        })
        .filter(|&(_, m)| m >= 2)
        .collect()
}

/// Mean pairwise percent agreement.
///
/// For every item with at least two labels, the share of its (unordered) label pairs that
/// agree, `Σ_c n_c(n_c−1) / (n(n−1))`; the result is the mean of that share over those items.
/// Items with fewer than two labels are ignored. Always in `[0, 1]`; `None` without usable items.
///
/// Worked example: items `[1,1,1]`, `[1,1,2]`, `[2,2,2]` give shares 1, 1/3, 1, mean 7/9.
pub fn percent_agreement(rows: &[Vec<Option<u32>>]) -> Agreement {
    let items = pairable(rows);
    let ratings = items.iter().map(|&(_, m)| m).sum();
    if items.is_empty() {
        return Agreement::undefined(0, 0);
    }
    let total: f64 = items
        .iter()
        .map(|(counts, m)| {
            let agree: usize = counts.iter().map(|&(_, k)| k * (k - 1)).sum();
            agree as f64 / (m * (m - 1)) as f64
        })
        .sum();
    Agreement {
        value: Some(total / items.len() as f64),
        items: items.len(),
        ratings,
    }
}

/// Unweighted Cohen's kappa between two annotators, over the items both labelled.
///
/// `κ = 1 − n(n − agree) / (n² − Σ_c a_c b_c)`, i.e. `(p_o − p_e)/(1 − p_e)`, which is what
/// scikit-learn's `cohen_kappa_score` computes. `None` when no item is shared or when chance
/// agreement is perfect (`p_e = 1`: both annotators used one and the same category throughout,
/// where scikit-learn returns NaN).
///
/// Worked example (2×2): of 10 shared items, 4 both "yes", 4 both "no", 1 each way mixed.
/// `p_o = 8/10`, each annotator says "yes" 5 times so `p_e = .5·.5 + .5·.5 = .5`,
/// `κ = (.8 − .5)/(1 − .5) = 0.6`.
///
/// # Panics
/// If `a` and `b` have different lengths.
pub fn cohen_kappa(a: &[Option<u32>], b: &[Option<u32>]) -> Agreement {
    assert_eq!(a.len(), b.len(), "cohen_kappa: columns differ in length");
    let mut marg: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut n = 0u64;
    let mut agree = 0u64;
    for (x, y) in a.iter().zip(b) {
        if let (Some(x), Some(y)) = (x, y) {
            n += 1;
            agree += u64::from(x == y);
            marg.entry(*x).or_default().0 += 1;
            marg.entry(*y).or_default().1 += 1;
        }
    }
    let items = n as usize;
    if n == 0 {
        return Agreement::undefined(0, 0);
    }
    let chance: u128 = marg
        .values()
        .map(|&(ca, cb)| u128::from(ca) * u128::from(cb))
        .sum();
    let expected_disagree = u128::from(n) * u128::from(n) - chance;
    if expected_disagree == 0 {
        return Agreement::undefined(items, 2 * items);
    }
    let observed = (n as f64) * ((n - agree) as f64);
    Agreement {
        value: Some(1.0 - observed / expected_disagree as f64),
        items,
        ratings: 2 * items,
    }
}

/// Column `j` of the ratings table (`None` past a short row's end).
fn column(rows: &[Vec<Option<u32>>], j: usize) -> Vec<Option<u32>> {
    rows.iter().map(|r| r.get(j).copied().flatten()).collect()
}

/// Cohen's kappa for every annotator pair `(a, b)`, `a < b`, that shares at least one item,
/// in lexicographic order of `(a, b)`.
pub fn pairwise_cohen(rows: &[Vec<Option<u32>>]) -> Vec<PairKappa> {
    let annotators = rows.iter().map(Vec::len).max().unwrap_or(0);
    let cols: Vec<Vec<Option<u32>>> = (0..annotators).map(|j| column(rows, j)).collect();
    let mut out = Vec::new();
    for a in 0..annotators {
        for b in a + 1..annotators {
            let kappa = cohen_kappa(&cols[a], &cols[b]);
            if kappa.items > 0 {
                out.push(PairKappa { a, b, kappa });
            }
        }
    }
    out
}

/// Fleiss' kappa.
///
/// Uses every item with at least two ratings; items may have different numbers of ratings
/// `n_i` (annotators who skipped an item simply do not count). With `n_ij` the number of
/// ratings of item `i` in category `j`:
///
/// * `P_i = (Σ_j n_ij² − n_i) / (n_i(n_i − 1))`, `P̄` = mean of `P_i` over items;
/// * `p_j = Σ_i n_ij / Σ_i n_i`, `P_e = Σ_j p_j²`;
/// * `κ = (P̄ − P_e) / (1 − P_e)`.
///
/// When every used item has the same `n` this is exactly Fleiss (1971), and equals statsmodels'
/// `fleiss_kappa(table, method="fleiss")`. `None` without usable items or when all ratings are
/// one category (`P_e = 1`).
///
/// Worked example: items `[1,1,1]`, `[1,1,2]`, `[2,2,2]`: `P = 1, 1/3, 1`, `P̄ = 7/9`;
/// `p = 5/9, 4/9`, `P_e = 41/81`; `κ = (63/81 − 41/81)/(40/81) = 0.55`.
pub fn fleiss_kappa(rows: &[Vec<Option<u32>>]) -> Agreement {
    let items = pairable(rows);
    let ratings: usize = items.iter().map(|&(_, m)| m).sum();
    if items.is_empty() {
        return Agreement::undefined(0, 0);
    }
    let mut totals: BTreeMap<u32, usize> = BTreeMap::new();
    let mut p_sum = 0.0;
    for (counts, m) in &items {
        let sq: usize = counts.iter().map(|&(_, k)| k * k).sum();
        p_sum += (sq - m) as f64 / (m * (m - 1)) as f64;
        for &(c, k) in counts {
            *totals.entry(c).or_default() += k;
        }
    }
    if totals.len() < 2 {
        return Agreement::undefined(items.len(), ratings);
    }
    let p_bar = p_sum / items.len() as f64;
    let p_e: f64 = totals
        .values()
        .map(|&t| {
            let p = t as f64 / ratings as f64;
            p * p
        })
        .sum();
    Agreement {
        value: Some((p_bar - p_e) / (1.0 - p_e)),
        items: items.len(),
        ratings,
    }
}

/// Krippendorff's alpha via the coincidence matrix.
///
/// Items with fewer than two ratings are not pairable and are dropped. For each remaining item
/// with `m` ratings, every ordered pair of its ratings `(c, k)` adds `1/(m − 1)` to the
/// coincidence `o_ck`; `n_c = Σ_k o_ck`, `n = Σ_c n_c`. Then
/// `α = 1 − (n − 1) Σ o_ck δ²(c,k) / Σ n_c n_k δ²(c,k)` with
///
/// * nominal: `δ² = [c ≠ k]`;
/// * ordinal: `δ²(c,k) = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²` over the categories in rank order;
/// * interval: `δ²(c,k) = (c − k)²` on the codes themselves.
///
/// Matches `krippendorff.alpha(reliability_data=..., level_of_measurement=...)` from the
/// `krippendorff` Python package (annotators × items, NaN for missing). `None` when no item is
/// pairable or fewer than two categories occur in pairable items (the package raises then).
///
/// Worked example (nominal): items `[1,1,1]`, `[1,1,2]`, `[2,2,2]` give
/// `o = [[4,1],[1,3]]`, `n_1 = 5`, `n_2 = 4`, `n = 9`; `α = 1 − 8·2/(2·5·4) = 0.6`.
///
/// Cost: `O(Σ m_i log m_i + K²)` for `K` distinct categories.
pub fn krippendorff_alpha(rows: &[Vec<Option<u32>>], level: Level) -> Agreement {
    let items = pairable(rows);
    let ratings: usize = items.iter().map(|&(_, m)| m).sum();
    if items.is_empty() {
        return Agreement::undefined(0, 0);
    }
    let mut domain: Vec<u32> = items
        .iter()
        .flat_map(|(c, _)| c.iter().map(|&(v, _)| v))
        .collect();
    domain.sort_unstable();
    domain.dedup();
    let k = domain.len();
    if k < 2 {
        return Agreement::undefined(items.len(), ratings);
    }
    let index = |v: u32| domain.binary_search(&v).expect("category in domain");

    let mut o = vec![0.0f64; k * k];
    for (counts, m) in &items {
        let w = 1.0 / (m - 1) as f64;
        for &(c, kc) in counts {
            let ci = index(c);
            for &(d, kd) in counts {
                let di = index(d);
                let pairs = if ci == di { kc * (kc - 1) } else { kc * kd };
                o[ci * k + di] += pairs as f64 * w;
            }
        }
    }
    let n_v: Vec<f64> = (0..k).map(|c| o[c * k..(c + 1) * k].iter().sum()).collect();
    let n: f64 = n_v.iter().sum();
    // cum[i] = Σ_{g < i} n_g
    let mut cum = vec![0.0f64; k + 1];
    for i in 0..k {
        cum[i + 1] = cum[i] + n_v[i];
    }
    let delta = |c: usize, d: usize| -> f64 {
        if c == d {
            return 0.0;
        }
        match level {
            Level::Nominal => 1.0,
            Level::Ordinal => {
                let (lo, hi) = if c < d { (c, d) } else { (d, c) };
                let s = cum[hi + 1] - cum[lo] - (n_v[lo] + n_v[hi]) / 2.0;
                s * s
            }
            Level::Interval => {
                let diff = f64::from(domain[c]) - f64::from(domain[d]);
                diff * diff
            }
        }
    };
    let mut observed = 0.0;
    let mut expected = 0.0;
    for c in 0..k {
        for d in 0..k {
            if c == d {
                continue;
            }
            let dist = delta(c, d);
            observed += o[c * k + d] * dist;
            expected += n_v[c] * n_v[d] * dist;
        }
    }
    if expected <= 0.0 {
        return Agreement::undefined(items.len(), ratings);
    }
    Agreement {
        value: Some(1.0 - (n - 1.0) * observed / expected),
        items: items.len(),
        ratings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    const TOL: f64 = 1e-9;

    #[derive(Deserialize)]
    struct Golden {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        rows: Vec<Vec<Option<u32>>>,
        percent_agreement: Option<f64>,
        percent_agreement_items: usize,
        fleiss: Option<f64>,
        alpha_nominal: Option<f64>,
        alpha_ordinal: Option<f64>,
        alpha_interval: Option<f64>,
        pairwise_cohen: Vec<GoldenPair>,
    }

    #[derive(Deserialize)]
    struct GoldenPair {
        a: usize,
        b: usize,
        items: usize,
        kappa: Option<f64>,
    }

    fn golden() -> Golden {
        serde_json::from_str(include_str!("../../tests/data/stats/agreement.json"))
            .expect("agreement.json parses")
    }

    fn close(got: Option<f64>, want: Option<f64>, what: &str) {
        match (got, want) {
            (None, None) => {}
            (Some(g), Some(w)) => assert!((g - w).abs() < TOL, "{what}: got {g}, want {w}"),
            _ => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn golden_percent_agreement() {
        for c in golden().cases {
            let got = percent_agreement(&c.rows);
            close(got.value, c.percent_agreement, &c.name);
            assert_eq!(got.items, c.percent_agreement_items, "{}", c.name);
        }
    }

    #[test]
    fn golden_fleiss_statsmodels() {
        for c in golden().cases {
            close(fleiss_kappa(&c.rows).value, c.fleiss, &c.name);
        }
    }

    #[test]
    fn golden_krippendorff() {
        for c in golden().cases {
            let rows = &c.rows;
            close(
                krippendorff_alpha(rows, Level::Nominal).value,
                c.alpha_nominal,
                &format!("{} nominal", c.name),
            );
            close(
                krippendorff_alpha(rows, Level::Ordinal).value,
                c.alpha_ordinal,
                &format!("{} ordinal", c.name),
            );
            close(
                krippendorff_alpha(rows, Level::Interval).value,
                c.alpha_interval,
                &format!("{} interval", c.name),
            );
        }
    }

    #[test]
    fn golden_pairwise_cohen_sklearn() {
        for c in golden().cases {
            let got = pairwise_cohen(&c.rows);
            assert_eq!(got.len(), c.pairwise_cohen.len(), "{}", c.name);
            for (g, w) in got.iter().zip(&c.pairwise_cohen) {
                assert_eq!((g.a, g.b, g.kappa.items), (w.a, w.b, w.items), "{}", c.name);
                close(
                    g.kappa.value,
                    w.kappa,
                    &format!("{} ({},{})", c.name, w.a, w.b),
                );
            }
        }
    }

    #[test]
    fn golden_cases_cover_published_values() {
        // The published values quoted in the literature, to two/three/six decimals.
        let g = golden();
        let find = |n: &str| g.cases.iter().find(|c| c.name == n).expect(n);
        let wiki = find("wikipedia_fleiss");
        assert!((fleiss_kappa(&wiki.rows).value.unwrap() - 0.210).abs() < 5e-4);
        let doc = find("krippendorff_docstring");
        let nominal = krippendorff_alpha(&doc.rows, Level::Nominal).value.unwrap();
        let interval = krippendorff_alpha(&doc.rows, Level::Interval)
            .value
            .unwrap();
        assert!((nominal - 0.691358).abs() < 5e-7);
        assert!((interval - 0.810845).abs() < 5e-7);
        let ord = find("krippendorff_ordinal_example");
        let ordinal = krippendorff_alpha(&ord.rows, Level::Ordinal).value.unwrap();
        assert!((ordinal - 0.815).abs() < 5e-4);
    }

    fn s(v: &[u32]) -> Vec<Option<u32>> {
        v.iter().copied().map(Some).collect()
    }

    #[test]
    fn hand_cohen_2x2() {
        // 4 yes/yes, 1 yes/no, 1 no/yes, 4 no/no: p_o = .8, p_e = .5, kappa = .6.
        let a = s(&[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
        let b = s(&[1, 1, 1, 1, 0, 1, 0, 0, 0, 0]);
        let k = cohen_kappa(&a, &b);
        assert!((k.value.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!((k.items, k.ratings), (10, 20));
    }

    #[test]
    fn hand_cohen_skips_unshared_and_undefined() {
        let a = vec![Some(1), None, Some(1), Some(2)];
        let b = vec![Some(1), Some(2), None, None];
        // One shared item, both used category 1 only: p_e = 1, undefined.
        let k = cohen_kappa(&a, &b);
        assert_eq!((k.value, k.items), (None, 1));
        let k = cohen_kappa(&[None], &[Some(1)]);
        assert_eq!((k.value, k.items), (None, 0));
    }

    #[test]
    fn hand_three_item_example() {
        let rows = vec![s(&[1, 1, 1]), s(&[1, 1, 2]), s(&[2, 2, 2])];
        assert!((percent_agreement(&rows).value.unwrap() - 7.0 / 9.0).abs() < 1e-12);
        assert!((fleiss_kappa(&rows).value.unwrap() - 0.55).abs() < 1e-12);
        let alpha = krippendorff_alpha(&rows, Level::Nominal);
        assert!((alpha.value.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!((alpha.items, alpha.ratings), (3, 9));
        // Two categories only: ordinal and interval reduce to nominal.
        for level in [Level::Ordinal, Level::Interval] {
            let a = krippendorff_alpha(&rows, level).value.unwrap();
            assert!((a - 0.6).abs() < 1e-12);
        }
    }

    #[test]
    fn single_ratings_are_dropped() {
        let rows = vec![
            s(&[1, 1]),
            vec![Some(2), None],
            s(&[2, 2]),
            vec![],
            vec![None, None],
        ];
        let a = percent_agreement(&rows);
        assert_eq!((a.value, a.items, a.ratings), (Some(1.0), 2, 4));
        let f = fleiss_kappa(&rows);
        assert_eq!((f.value, f.items), (Some(1.0), 2));
        assert_eq!(krippendorff_alpha(&rows, Level::Nominal).value, Some(1.0));
        assert_eq!(percent_agreement(&[]).value, None);
        assert_eq!(fleiss_kappa(&[]).value, None);
        assert_eq!(krippendorff_alpha(&[], Level::Ordinal).value, None);
        assert!(pairwise_cohen(&[]).is_empty());
    }

    #[test]
    fn level_serde_names() {
        assert_eq!(
            serde_json::to_string(&Level::Ordinal).unwrap(),
            "\"ordinal\""
        );
        let l: Level = serde_json::from_str("\"interval\"").unwrap();
        assert_eq!(l, Level::Interval);
    }

    /// A ratings table of `items` × `raters` over categories `0..cats`, with ~20% missing.
    fn table() -> impl Strategy<Value = Vec<Vec<Option<u32>>>> {
        (1usize..6, 2u32..6).prop_flat_map(|(raters, cats)| {
            prop::collection::vec(
                prop::collection::vec(prop::option::weighted(0.8, 0..cats), raters),
                0..40,
            )
        })
    }

    /// One column with at least two distinct categories.
    fn varied_column() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(0u32..5, 2..60)
            .prop_filter("two categories", |v| v.iter().any(|&x| x != v[0]))
    }

    proptest! {
        #[test]
        fn identical_raters_agree_perfectly(col in varied_column(), raters in 2usize..6) {
            let rows: Vec<Vec<Option<u32>>> =
                col.iter().map(|&x| vec![Some(x); raters]).collect();
            let one = Some(1.0);
            prop_assert_eq!(percent_agreement(&rows).value, one);
            let f = fleiss_kappa(&rows).value.unwrap();
            prop_assert!((f - 1.0).abs() < 1e-12);
            for level in [Level::Nominal, Level::Ordinal, Level::Interval] {
                let a = krippendorff_alpha(&rows, level).value.unwrap();
                prop_assert!((a - 1.0).abs() < 1e-12, "{:?} {}", level, a);
            }
            let c: Vec<Option<u32>> = col.iter().copied().map(Some).collect();
            let k = cohen_kappa(&c, &c).value.unwrap();
            prop_assert!((k - 1.0).abs() < 1e-12);
        }

        #[test]
        fn cohen_is_symmetric(
            pairs in prop::collection::vec(
                (prop::option::weighted(0.9, 0u32..4), prop::option::weighted(0.9, 0u32..4)),
                0..60,
            )
        ) {
            let (a, b): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            let ab = cohen_kappa(&a, &b);
            let ba = cohen_kappa(&b, &a);
            prop_assert_eq!(ab.items, ba.items);
            match (ab.value, ba.value) {
                (None, None) => {}
                (Some(x), Some(y)) => {
                    prop_assert!((x - y).abs() < 1e-12);
                    prop_assert!(x <= 1.0 + 1e-12);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn percent_agreement_in_unit_interval(rows in table()) {
            if let Some(p) = percent_agreement(&rows).value {
                prop_assert!((0.0..=1.0).contains(&p));
            }
        }

        #[test]
        fn bounded_above_by_one(rows in table()) {
            for v in [
                fleiss_kappa(&rows).value,
                krippendorff_alpha(&rows, Level::Nominal).value,
                krippendorff_alpha(&rows, Level::Ordinal).value,
                krippendorff_alpha(&rows, Level::Interval).value,
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(v.is_finite() && v <= 1.0 + 1e-12, "{}", v);
            }
        }

        #[test]
        fn invariant_under_annotator_order(rows in table()) {
            let rev: Vec<Vec<Option<u32>>> =
                rows.iter().map(|r| r.iter().rev().copied().collect()).collect();
            let pairs = [
                (fleiss_kappa(&rows).value, fleiss_kappa(&rev).value),
                (
                    krippendorff_alpha(&rows, Level::Nominal).value,
                    krippendorff_alpha(&rev, Level::Nominal).value,
                ),
                (
                    krippendorff_alpha(&rows, Level::Ordinal).value,
                    krippendorff_alpha(&rev, Level::Ordinal).value,
                ),
            ];
            for (x, y) in pairs {
                match (x, y) {
                    (None, None) => {}
                    (Some(x), Some(y)) => prop_assert!((x - y).abs() < 1e-9),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
