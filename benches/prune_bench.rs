//! Pruning benchmark (not part of CI): trains a small VGG-16 (batch norm, width 1/8) on the
//! synthetic 10-class set on the CPU, prunes it at 30/50/70% with every method (uniform
//! layer ratios), and prints accuracy without and with fine-tuning, parameters, MACs and
//! wall time per method.
//!
//! When `ELITE_CIFAR10_DIR` points at the CIFAR-10 binary release, the same bench runs on
//! CIFAR-10 (subsampled by default so it finishes on a laptop; see the variables below).
//!
//! Environment overrides: `ELITE_BENCH_WIDTH` (width multiplier, default 0.125),
//! `ELITE_BENCH_EPOCHS` (base training epochs), `ELITE_BENCH_FT_EPOCHS` (fine-tuning
//! epochs, default 1), `ELITE_BENCH_TRAIN_LIMIT` / `ELITE_BENCH_TEST_LIMIT` (images used),
//! `ELITE_BENCH_RATIOS` (comma-separated, default 0.3,0.5,0.7), `ELITE_BENCH_SEED`,
//! `ELITE_BENCH_LAYER_RATIOS` (`paper`, the default: Li et al.'s VGG-16 scheme used by the
//! Neuron Merging paper, which prunes conv 1 and convs 8-13; or `uniform`: every conv),
//! `ELITE_BENCH_FT_LR` (default 0.02), `ELITE_BENCH_BASE` (a safetensors path: loaded as
//! the base model when it exists, written after training otherwise).
//!
//! Run: `cargo bench --bench prune_bench`.

use std::path::PathBuf;
use std::time::Instant;

use elite::compression::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("prune_bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let seed: u64 = env_or("ELITE_BENCH_SEED", 0);
    let width: f64 = env_or("ELITE_BENCH_WIDTH", 0.125);
    let ft_epochs: usize = env_or("ELITE_BENCH_FT_EPOCHS", 1);
    let ratios: Vec<f64> = std::env::var("ELITE_BENCH_RATIOS")
        .unwrap_or_else(|_| "0.3,0.5,0.7".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();

    let cifar_dir = std::env::var_os("ELITE_CIFAR10_DIR").map(PathBuf::from);
    let (data_name, train_full, test_full, default_train, default_test, default_epochs) =
        match &cifar_dir {
            Some(dir) => {
                let (train, test) = load_cifar10(dir)?;
                ("CIFAR-10".to_string(), train, test, 10_000, 2_000, 15)
            }
            None => {
                let train = synthetic_dataset(&SyntheticConfig {
                    images_per_class: 200,
                    seed: seed + 1,
                    noise: 0.08,
                })?;
                let test = synthetic_dataset(&SyntheticConfig {
                    images_per_class: 100,
                    seed: seed + 1_000,
                    noise: 0.08,
                })?;
                (
                    "synthetic shapes".to_string(),
                    train,
                    test,
                    2_000,
                    1_000,
                    12,
                )
            }
        };
    let train_set = train_full.take(env_or("ELITE_BENCH_TRAIN_LIMIT", default_train))?;
    let test_set = test_full.take(env_or("ELITE_BENCH_TEST_LIMIT", default_test))?;
    let epochs: usize = env_or("ELITE_BENCH_EPOCHS", default_epochs);

    let layer_ratios = match std::env::var("ELITE_BENCH_LAYER_RATIOS").as_deref() {
        Ok("uniform") => LayerRatios::Uniform,
        _ => LayerRatios::PaperDefault,
    };
    let ft_lr: f64 = env_or("ELITE_BENCH_FT_LR", 0.02);
    let base_path = std::env::var_os("ELITE_BENCH_BASE").map(PathBuf::from);
    let base = Network::vgg16_bn_cifar(width, train_set.num_classes(), seed)?;
    let train_config = TrainConfig {
        epochs,
        batch_size: 32,
        learning_rate: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine,
        augment: true,
        seed,
    };
    println!(
        "data: {data_name}, {} train / {} test images; model: vgg16_bn_cifar width {width}",
        train_set.len(),
        test_set.len()
    );
    let started = Instant::now();
    let cached = match &base_path {
        Some(p) if p.exists() => Some(base.with_weights_from(p)?),
        _ => None,
    };
    let was_cached = cached.is_some();
    let trained = match cached {
        Some(net) => net,
        None => train(&base, &train_set, &train_config, &|e| {
            if let TrainEvent::EpochFinished {
                epoch,
                epochs,
                mean_loss,
                train_accuracy,
            } = e
            {
                eprintln!(
                    "  base epoch {}/{epochs}: loss {mean_loss:.3}, train acc {:.1}%",
                    epoch + 1,
                    train_accuracy * 100.0
                );
            }
        })?,
    };
    if let (Some(p), false) = (&base_path, was_cached) {
        trained.save_safetensors(p)?;
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let base_accuracy = evaluate(&trained, &test_set, 250)?;
    let cost = count_cost(&trained, 32, 32)?;
    let origin = if was_cached {
        "loaded from ELITE_BENCH_BASE".to_string()
    } else {
        format!("trained {epochs} epochs in {train_seconds:.1}s")
    };
    println!(
        "base: {} params, {} MACs, top-1 {:.2}%, {origin}",
        cost.params,
        cost.macs,
        base_accuracy * 100.0
    );
    let fine_tune = TrainConfig {
        epochs: ft_epochs,
        learning_rate: ft_lr,
        ..train_config.clone()
    };
    println!(
        "layer ratios: {layer_ratios:?}; fine-tuning: {ft_epochs} epoch(s), lr {ft_lr} cosine; \
         accuracy is top-1 on the test set\n"
    );
    println!(
        "| {:<15} | {:>5} | {:>9} | {:>7} | {:>10} | {:>7} | {:>9} | {:>9} | {:>8} | {:>8} |",
        "method",
        "ratio",
        "params",
        "-params",
        "MACs",
        "-MACs",
        "acc noFT",
        "acc FT",
        "prune s",
        "FT s"
    );
    println!(
        "|{:-<17}|{:-<7}|{:-<11}|{:-<9}|{:-<12}|{:-<9}|{:-<11}|{:-<11}|{:-<10}|{:-<10}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for &ratio in &ratios {
        for method in PruneMethod::all_defaults() {
            let config = ExperimentConfig {
                prune: PruneOptions {
                    method: method.clone(),
                    ratio,
                    layer_ratios: layer_ratios.clone(),
                },
                fine_tune: (ft_epochs > 0).then(|| fine_tune.clone()),
                schedule: PruneSchedule::OneShot,
                eval_batch_size: 250,
                baseline_accuracy: Some(base_accuracy),
            };
            let outcome = run_experiment(&trained, &train_set, &test_set, &config, &|_| {})?;
            let r = outcome.result;
            println!(
                "| {:<15} | {:>5.2} | {:>9} | {:>6.1}% | {:>10} | {:>6.1}% | {:>8.2}% | {:>8} | {:>8.3} | {:>8.1} |",
                r.method,
                r.ratio,
                r.params_after,
                r.param_reduction * 100.0,
                r.macs_after,
                r.mac_reduction * 100.0,
                r.accuracy_pruned * 100.0,
                r.accuracy_fine_tuned
                    .map_or("-".to_string(), |a| format!("{:.2}%", a * 100.0)),
                r.prune_seconds,
                r.fine_tune_seconds
            );
        }
    }
    println!("\ntotal wall time {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
