//! The built-in real handwritten digits: the data source, LeNet-300-100 trained on them, and
//! the paper's MLP comparison (Neuron Merging against plain pruning without fine-tuning)
//! measured over five seeds and reported as mean +/- standard deviation (run with
//! `--nocapture` to see the table).

use elite::compression::sources::DataSource;
use elite::compression::*;

/// The seeds of every multi-seed comparison, fixed before any result was seen.
const SEEDS: [u64; 5] = [0, 1, 2, 3, 4];

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn train_lenet(seed: u64, train_set: &Dataset) -> Network {
    let net = Network::lenet_300_100([1, 8, 8], 10, seed).unwrap();
    let config = TrainConfig {
        epochs: 8,
        batch_size: 32,
        learning_rate: 0.05,
        weight_decay: 1e-4,
        augment: false,
        seed,
        ..Default::default()
    };
    train(&net, train_set, &config, &|_| {}).unwrap()
}

#[test]
fn digits_data_source_parses_and_loads() {
    let cnn: DataSource = "digits".parse().unwrap();
    let mlp: DataSource = "digits:64".parse().unwrap();
    assert_eq!(cnn.label(), "digits");
    assert_eq!(mlp.label(), "digits-64");
    assert!("digits:7".parse::<DataSource>().is_err());
    assert!("synthetic:0".parse::<DataSource>().is_err());
    let (train_set, test_set) = cnn.load().unwrap();
    assert_eq!(train_set.shape(), [3, 32, 32]);
    assert_eq!(train_set.len() + test_set.len(), 1797);
    let (train_set, _) = mlp.load().unwrap();
    assert_eq!(train_set.shape(), [1, 8, 8]);
    // A CNN cannot be evaluated on the 64-d form: a clear error, not a panic.
    let vgg = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
    assert!(matches!(
        evaluate(&vgg, &train_set, 64),
        Err(CompressionError::Config(_))
    ));
}

#[test]
fn lenet_300_100_prune_and_merge_on_real_digits_over_five_seeds() {
    let (train_set, test_set) = load_digits(DigitsForm::Vector64).unwrap();
    let ratios = [0.5, 0.7, 0.8];
    let mut base = Vec::new();
    // [ratio][seed]
    let mut pruned = vec![Vec::new(); ratios.len()];
    let mut merged = vec![Vec::new(); ratios.len()];
    for seed in SEEDS {
        let trained = train_lenet(seed, &train_set);
        base.push(evaluate(&trained, &test_set, 512).unwrap());
        for (i, &ratio) in ratios.iter().enumerate() {
            let l1 = prune(&trained, &PruneOptions::new(PruneMethod::L1, ratio)).unwrap();
            let nm = prune(
                &trained,
                &PruneOptions::new(PruneMethod::NeuronMerging(Default::default()), ratio),
            )
            .unwrap();
            assert_eq!(l1.layer_widths(), nm.layer_widths());
            pruned[i].push(evaluate(&l1, &test_set, 512).unwrap());
            merged[i].push(evaluate(&nm, &test_set, 512).unwrap());
        }
    }
    let (m, s) = mean_sd(&base);
    eprintln!("LeNet-300-100 on digits, 5 seeds: unpruned {m:.4} +/- {s:.4}");
    // Trained on real digits, the MLP is a real classifier (chance is 0.10).
    assert!(m > 0.9, "unpruned accuracy {m:.4}");
    let mut differences_at_all_ratios = Vec::new();
    for (i, ratio) in ratios.iter().enumerate() {
        let (pm, ps) = mean_sd(&pruned[i]);
        let (mm, ms) = mean_sd(&merged[i]);
        eprintln!(
            "ratio {ratio}: prune (L1) {pm:.4} +/- {ps:.4}, merge (official, t = 0.45) {mm:.4} +/- {ms:.4}"
        );
        let diffs: Vec<f64> = pruned[i]
            .iter()
            .zip(&merged[i])
            .map(|(p, q)| q - p)
            .collect();
        eprintln!("  merge - prune per seed: {diffs:.4?}");
        differences_at_all_ratios.extend(diffs);
    }
    // The paper's claim (merging keeps more accuracy than pruning without fine-tuning) was
    // to be checked here at two standard errors of the paired differences over 5 seeds x 3
    // ratios. Measured (seeds fixed beforehand): merging is ahead in the mean at every ratio
    // (+0.2, +0.5, +1.1 points at 50/70/80%) but the paired differences spread from -8 to
    // +17 points at 80%, so the claim is NOT established on this data and is not asserted.
    // The figures are printed for the record; only what is certain is checked.
    let (dm, ds) = mean_sd(&differences_at_all_ratios);
    let se = ds / (differences_at_all_ratios.len() as f64).sqrt();
    eprintln!("merge - prune: {dm:.4} +/- {ds:.4} (standard error {se:.4})");
    assert_eq!(differences_at_all_ratios.len(), SEEDS.len() * ratios.len());
    assert!(differences_at_all_ratios.iter().all(|d| d.is_finite()));
}
