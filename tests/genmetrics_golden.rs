//! Integration tests of `genmetrics`: the public golden data, metric properties, an outlier
//! case, bad inputs, and reader round trips through the public API.

use std::path::PathBuf;

use elite::genmetrics::{
    AllScores, Embeddings, GenMetricsError, Params, evaluate, load_embeddings, p_precision_recall,
    prdc, read_npy, write_csv, write_npy, write_raw_f32, write_safetensors,
};
use proptest::prelude::*;

fn data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ppr"))
}

// ---------------------------------------------------------------------------------------------
// Golden data
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_cases_match_reference() {
    let dir = data_dir();
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let defaults = &expected["defaults"];
    let params = Params {
        a: defaults["a"].as_f64().unwrap(),
        k: defaults["k"].as_u64().unwrap() as usize,
        prdc_k: defaults["prdc_k"].as_u64().unwrap() as usize,
    };
    let cases = expected["cases"].as_object().unwrap();
    assert!(!cases.is_empty());
    for (name, case) in cases {
        let load = |file: &str, shape: &serde_json::Value| {
            let dim = shape[1].as_u64().unwrap() as usize;
            let set =
                load_embeddings(&dir.join(case[file].as_str().unwrap()), Some(dim), None).unwrap();
            assert_eq!(set.rows as u64, shape[0].as_u64().unwrap());
            set
        };
        let real = load("real", &case["real_shape"]);
        let fake = load("fake", &case["fake_shape"]);
        let scores = evaluate(&real, &fake, &params, None).unwrap();
        let want = |key: &str| case[key].as_f64().unwrap();
        let want_prdc = |key: &str| case["prdc_k5"][key].as_f64().unwrap();
        let close = |got: f64, want: f64, tol: f64, what: &str| {
            assert!(
                (got - want).abs() <= tol,
                "{name}: {what} = {got}, expected {want} (tolerance {tol})"
            );
        };
        close(
            scores.ppr.p_precision,
            want("p_precision"),
            1e-6,
            "P-precision",
        );
        close(scores.ppr.p_recall, want("p_recall"), 1e-6, "P-recall");
        let n = real.rows.min(fake.rows) as f64;
        close(
            scores.prdc.precision,
            want_prdc("precision"),
            2.0 / n,
            "precision",
        );
        close(scores.prdc.recall, want_prdc("recall"), 2.0 / n, "recall");
        close(
            scores.prdc.coverage,
            want_prdc("coverage"),
            2.0 / n,
            "coverage",
        );
        close(scores.prdc.density, want_prdc("density"), 1e-3, "density");

        // The single-family entry points agree with the combined one.
        let alone = p_precision_recall(&real, &fake, params.a, params.k).unwrap();
        close(alone.p_precision, scores.ppr.p_precision, 1e-12, "PP alone");
        close(alone.p_recall, scores.ppr.p_recall, 1e-12, "PR alone");
        assert_eq!(prdc(&real, &fake, params.prdc_k).unwrap(), scores.prdc);
    }
}

#[test]
fn progress_reaches_total() {
    let real = gaussian(700, 8, 0.0, 1);
    let fake = gaussian(500, 8, 0.3, 2);
    let last = std::sync::Mutex::new((0u64, 0u64));
    let calls = std::sync::atomic::AtomicU64::new(0);
    let callback = |done: u64, total: u64| {
        assert!(done <= total);
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut l = last.lock().unwrap();
        if done >= l.0 {
            *l = (done, total);
        }
    };
    evaluate(&real, &fake, &Params::default(), Some(&callback)).unwrap();
    let (done, total) = *last.lock().unwrap();
    assert_eq!(done, total);
    assert!(total >= 700 * 500);
    assert!(calls.load(std::sync::atomic::Ordering::Relaxed) > 3);
}

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

/// SplitMix64 with Box-Muller normals.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn gaussian(rows: usize, dim: usize, mean: f64, seed: u64) -> Embeddings {
    let mut rng = Rng(seed);
    let data = (0..rows * dim)
        .map(|_| (mean + rng.normal()) as f32)
        .collect();
    Embeddings::new(rows, dim, data).unwrap()
}

fn with_row(set: &Embeddings, row: &[f32]) -> Embeddings {
    let mut data = set.data.clone();
    data.extend_from_slice(row);
    Embeddings::new(set.rows + 1, set.dim, data).unwrap()
}

/// One far outlier barely moves PP&PR (its huge k-NN distance enters only the *mean* radius),
/// while the prdc scores jump: a fake outlier's own k-NN ball swallows reals (recall), a real
/// outlier's ball swallows fakes (precision). Real ~ N(0, I), fake ~ N(1, I), D = 64; each
/// outlier sits about 10 from the other cloud's centre and 13.6 from its own (typical norm 8).
#[test]
fn far_outliers_move_ppr_little_but_knn_scores_jump() {
    let dim = 64;
    let real = gaussian(2000, dim, 0.0, 11);
    let fake = gaussian(2000, dim, 1.0, 12);
    let params = Params::default();
    let base = evaluate(&real, &fake, &params, None).unwrap();
    let moved_by = |a: &AllScores| {
        (a.ppr.p_precision - base.ppr.p_precision)
            .abs()
            .max((a.ppr.p_recall - base.ppr.p_recall).abs())
    };

    let mut fake_outlier = vec![0f32; dim];
    fake_outlier[0] = -10.0;
    let with_fake_outlier =
        evaluate(&real, &with_row(&fake, &fake_outlier), &params, None).unwrap();
    assert!(
        moved_by(&with_fake_outlier) < 1e-3,
        "{base:?}\n{with_fake_outlier:?}"
    );
    assert!(
        with_fake_outlier.prdc.recall - base.prdc.recall > 0.3,
        "{base:?}\n{with_fake_outlier:?}"
    );

    let mut real_outlier = vec![1f32; dim];
    real_outlier[0] = 11.0;
    let with_real_outlier =
        evaluate(&with_row(&real, &real_outlier), &fake, &params, None).unwrap();
    assert!(
        moved_by(&with_real_outlier) < 1e-3,
        "{base:?}\n{with_real_outlier:?}"
    );
    assert!(
        with_real_outlier.prdc.precision - base.prdc.precision > 0.3,
        "{base:?}\n{with_real_outlier:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn small_set(max_rows: usize) -> impl Strategy<Value = (usize, Vec<f32>)> {
    (6usize..max_rows, 1usize..6).prop_flat_map(|(rows, dim)| {
        (
            Just(dim),
            prop::collection::vec(-100i32..100, rows * dim)
                .prop_map(|v| v.into_iter().map(|x| x as f32 * 0.05).collect::<Vec<f32>>()),
        )
    })
}

fn two_sets() -> impl Strategy<Value = (Embeddings, Embeddings)> {
    (7usize..60, 7usize..60, 1usize..6, any::<u64>()).prop_map(|(n, m, dim, seed)| {
        (
            gaussian(n, dim, 0.0, seed),
            gaussian(m, dim, 0.4, seed ^ 0xABCD),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn ppr_of_a_set_with_itself_is_one((dim, data) in small_set(80)) {
        let set = Embeddings::new(data.len() / dim, dim, data).unwrap();
        let s = p_precision_recall(&set, &set, 1.2, 4).unwrap();
        // A set of identical rows has radius 0 and scores 0 by the formula; skip it.
        prop_assume!(s.real_radius > 0.0);
        prop_assert_eq!(s.p_precision, 1.0);
        prop_assert_eq!(s.p_recall, 1.0);
    }

    #[test]
    fn precision_and_recall_swap_with_the_sets((x, y) in two_sets()) {
        let xy = p_precision_recall(&x, &y, 1.2, 4).unwrap();
        let yx = p_precision_recall(&y, &x, 1.2, 4).unwrap();
        // Exactly: the same pairs, radii and order-independent sums.
        prop_assert_eq!(xy.p_precision, yx.p_recall);
        prop_assert_eq!(xy.p_recall, yx.p_precision);
        let all = evaluate(&x, &y, &Params::default(), None).unwrap();
        for v in [all.ppr.p_precision, all.ppr.p_recall, all.prdc.precision, all.prdc.recall,
                  all.prdc.coverage] {
            prop_assert!((0.0..=1.0).contains(&v));
        }
        prop_assert!(all.prdc.density >= 0.0);
    }

    #[test]
    fn scores_ignore_row_order((x, y) in two_sets(), seed in any::<u64>()) {
        let permute = |set: &Embeddings, seed: u64| {
            let mut order: Vec<usize> = (0..set.rows).collect();
            let mut rng = Rng(seed);
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let data = order.iter().flat_map(|&i| set.row(i).to_vec()).collect();
            Embeddings::new(set.rows, set.dim, data).unwrap()
        };
        let a = evaluate(&x, &y, &Params::default(), None).unwrap();
        let b = evaluate(&permute(&x, seed), &permute(&y, !seed), &Params::default(), None)
            .unwrap();
        // Exactly: every sum in the pipeline is order-independent.
        prop_assert_eq!(a, b);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------------------------

#[test]
fn mismatched_dimensions_are_rejected() {
    let err = evaluate(
        &gaussian(10, 3, 0.0, 1),
        &gaussian(10, 4, 0.0, 2),
        &Params::default(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, GenMetricsError::DimMismatch { real: 3, fake: 4 }),
        "{err:?}"
    );
}

#[test]
fn non_finite_values_are_rejected_with_their_position() {
    let real = gaussian(10, 3, 0.0, 1);
    let mut fake = gaussian(10, 3, 0.0, 2);
    fake.data[3 * 4 + 2] = f32::NAN; // bypasses `Embeddings::new` through the public fields
    let err = p_precision_recall(&real, &fake, 1.2, 4).unwrap_err();
    match &err {
        GenMetricsError::InvalidSet { set, source } => {
            assert_eq!(*set, "fake");
            assert!(matches!(
                **source,
                GenMetricsError::NonFinite { row: 4, col: 2, .. }
            ));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("row 4, column 2"), "{err}");
}

#[test]
fn too_few_samples_are_rejected() {
    let err = evaluate(
        &gaussian(6, 3, 0.0, 1),
        &gaussian(20, 3, 0.0, 2),
        &Params::default(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            GenMetricsError::TooFewSamples {
                set: "real",
                rows: 6,
                k: 5,
                needed: 7
            }
        ),
        "{err:?}"
    );
    assert!(prdc(&gaussian(20, 3, 0.0, 1), &gaussian(6, 3, 0.0, 2), 5).is_err());
    assert!(p_precision_recall(&gaussian(6, 3, 0.0, 1), &gaussian(6, 3, 0.0, 2), 1.2, 4).is_ok());
    let bad_a = p_precision_recall(&gaussian(9, 3, 0.0, 1), &gaussian(9, 3, 0.0, 2), 0.0, 4);
    assert!(matches!(bad_a, Err(GenMetricsError::InvalidParam(_))));
}

#[test]
fn bad_files_give_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    std::fs::write(path("empty.f32"), b"").unwrap();
    assert!(matches!(
        load_embeddings(&path("empty.f32"), Some(4), None),
        Err(GenMetricsError::Empty { .. })
    ));
    std::fs::write(path("empty.csv"), b"").unwrap();
    assert!(matches!(
        load_embeddings(&path("empty.csv"), None, None),
        Err(GenMetricsError::Empty { .. })
    ));

    std::fs::write(path("short.f32"), vec![0u8; 4 * 7]).unwrap();
    let err = load_embeddings(&path("short.f32"), Some(4), None).unwrap_err();
    assert!(matches!(err, GenMetricsError::Truncated { .. }), "{err:?}");

    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n";
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(&[0u8; 16]);
    std::fs::write(path("f.npy"), npy).unwrap();
    let err = read_npy(&path("f.npy")).unwrap_err();
    assert!(matches!(err, GenMetricsError::NpyFortranOrder), "{err:?}");

    std::fs::write(path("bad.csv"), b"x,y\n1,2\n3,oops\n").unwrap();
    let err = load_embeddings(&path("bad.csv"), None, None).unwrap_err();
    assert!(
        matches!(err, GenMetricsError::CsvCell { line: 3, column: 2, ref text } if text == "oops"),
        "{err:?}"
    );
    assert!(err.to_string().contains("oops"));
}

// ---------------------------------------------------------------------------------------------
// Reader round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn every_format_round_trips() {
    let set = gaussian(33, 7, 0.1, 5);
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("e.npy");
    write_npy(&npy, &set).unwrap();
    assert_eq!(load_embeddings(&npy, None, None).unwrap(), set);
    let st = dir.path().join("e.safetensors");
    write_safetensors(&st, &set, "emb").unwrap();
    assert_eq!(load_embeddings(&st, None, None).unwrap(), set);
    let csv = dir.path().join("e.csv");
    write_csv(&csv, &set).unwrap();
    assert_eq!(load_embeddings(&csv, None, None).unwrap(), set);
    let raw = dir.path().join("e.bin");
    write_raw_f32(&raw, &set).unwrap();
    assert_eq!(load_embeddings(&raw, Some(7), None).unwrap(), set);
}
