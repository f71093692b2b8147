//! Pruning benchmark (not part of CI) on the built-in real handwritten digits, on the CPU.
//!
//! For every model (VGG-16 of the Neuron Merging authors at width 1.0 and 0.25, ResNet-56)
//! and every seed: train the model from scratch on the digits upsampled to 32x32, then
//! prune it with every method at 30/50/70% (uniform layer ratios; REPrune kernel with its
//! gamma-quantile allocation) and, for VGG-16, at the "pruned-A" widths; measure top-1
//! accuracy without and with fine-tuning, parameters, MACs and time per method. Then
//! LeNet-300-100 on the 64-d digits at 50/60/70/80%: plain pruning (L1) against Neuron
//! Merging, no fine-tuning (the paper's MLP experiment). Every figure is mean +/- sample
//! standard deviation over the seeds.
//!
//! Environment overrides: `ELITE_BENCH_MODELS` (comma-separated from `lenet`, `vgg16:W`,
//! `resnet56`, and `tiny:W`, the three-conv VGG for quick runs; default
//! `lenet,vgg16:0.25,vgg16:1.0,resnet56`), `ELITE_BENCH_SEEDS` (number
//! of seeds, default 5), `ELITE_BENCH_FIRST_SEED` (default 0: a run cut short can go on from
//! the next seed, its per-seed lines merged by hand), `ELITE_BENCH_EPOCHS` (base training epochs, default 15),
//! `ELITE_BENCH_FT_EPOCHS` (fine-tuning epochs, default 2), `ELITE_BENCH_RATIOS`
//! (default 0.3,0.5,0.7), `ELITE_BENCH_DATA` (a data source as typed in the experiment
//! form, default `digits`; the CNNs need 32x32 images), `ELITE_BENCH_SETTINGS` (only the
//! CNN settings with these labels, comma-separated as printed, e.g. `reprune-kernel,l1
//! (REPrune widths)`; default all).
//!
//! Measured tables: `benches/prune_bench.md`.
//!
//! Run: `cargo bench --bench prune_bench` (or, without a release build of the
//! dependencies, `cargo test --release --bench prune_bench`; the debug profile compiles the
//! dependencies optimised, so `cargo test --bench prune_bench` works too, more slowly).

use std::str::FromStr;
use std::time::Instant;

use elite::compression::sources::DataSource;
use elite::compression::table::Stat;
use elite::compression::*;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
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

fn stat(values: &[f64], decimals: usize) -> String {
    Stat::of(values).map_or("-".into(), |s| s.percent(decimals))
}

fn seconds(values: &[f64]) -> String {
    match Stat::of(values) {
        Some(Stat {
            mean, sd: Some(sd), ..
        }) => format!("{mean:.2} ± {sd:.2}"),
        Some(Stat { mean, .. }) => format!("{mean:.2}"),
        None => "-".into(),
    }
}

/// One pruning setting of a model: a method at a ratio with its layer ratios.
#[derive(Clone)]
struct Setting {
    label: String,
    options: PruneOptions,
}

fn settings(ratios: &[f64], vgg: bool) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut ratios_with_a: Vec<(f64, LayerRatios, &str)> = ratios
        .iter()
        .map(|&r| (r, LayerRatios::Uniform, ""))
        .collect();
    if vgg {
        ratios_with_a.push((0.5, LayerRatios::PaperDefault, " (pruned-A)"));
    }
    for (ratio, layer_ratios, suffix) in ratios_with_a {
        if layer_ratios == LayerRatios::Uniform {
            // The baseline at REPrune's (gamma-quantile) widths, for an equal-size comparison.
            out.push(Setting {
                label: "l1 (REPrune widths)".into(),
                options: PruneOptions {
                    method: PruneMethod::L1,
                    ratio,
                    layer_ratios: LayerRatios::GammaQuantile,
                },
            });
        }
        for method in PruneMethod::all_defaults() {
            let layer_ratios = if layer_ratios == LayerRatios::Uniform {
                prune::paper_layer_ratios(&method)
            } else {
                layer_ratios.clone()
            };
            out.push(Setting {
                label: format!("{}{suffix}", method.name()),
                options: PruneOptions {
                    method,
                    ratio,
                    layer_ratios,
                },
            });
        }
    }
    out
}

fn build(model: &str, classes: usize, seed: u64) -> Result<Network> {
    if let Some(width) = model.strip_prefix("vgg16:") {
        let width: f64 = width
            .parse()
            .map_err(|_| CompressionError::Config(format!("bad width in {model}")))?;
        Network::vgg16_nm_cifar(width, classes, seed)
    } else if let Some(width) = model.strip_prefix("tiny:") {
        let width: f64 = width
            .parse()
            .map_err(|_| CompressionError::Config(format!("bad width in {model}")))?;
        Network::vgg_cifar(&VggConfig::tiny(), width, classes, seed)
    } else if model == "resnet56" {
        Network::resnet_cifar(56, 1.0, classes, seed)
    } else {
        Err(CompressionError::Config(format!(
            "unknown bench model {model}"
        )))
    }
}

fn run() -> Result<()> {
    let models: Vec<String> = std::env::var("ELITE_BENCH_MODELS")
        .unwrap_or_else(|_| "lenet,vgg16:0.25,vgg16:1.0,resnet56".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let seeds: u64 = env_or("ELITE_BENCH_SEEDS", 5);
    let first: u64 = env_or("ELITE_BENCH_FIRST_SEED", 0);
    let epochs: usize = env_or("ELITE_BENCH_EPOCHS", 15);
    let ft_epochs: usize = env_or("ELITE_BENCH_FT_EPOCHS", 2);
    let ratios: Vec<f64> = std::env::var("ELITE_BENCH_RATIOS")
        .unwrap_or_else(|_| "0.3,0.5,0.7".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let only: Vec<String> = std::env::var("ELITE_BENCH_SETTINGS")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let data: DataSource = std::env::var("ELITE_BENCH_DATA")
        .unwrap_or_else(|_| "digits".into())
        .parse()?;
    let started = Instant::now();
    for model in &models {
        if model == "lenet" {
            lenet(first..first + seeds, epochs)?;
        } else {
            cnn(
                model,
                &data,
                first..first + seeds,
                epochs,
                ft_epochs,
                &ratios,
                &only,
            )?;
        }
    }
    println!("\ntotal wall time {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn lenet(seeds: std::ops::Range<u64>, epochs: usize) -> Result<()> {
    let (train_set, test_set) = load_digits(DigitsForm::Vector64)?;
    let ratios = [0.5, 0.6, 0.7, 0.8];
    let mut base = Vec::new();
    let mut pruned = vec![Vec::new(); ratios.len()];
    let mut merged = vec![Vec::new(); ratios.len()];
    let mut params = vec![0u64; ratios.len()];
    for seed in seeds.clone() {
        let net = Network::lenet_300_100([1, 8, 8], 10, seed)?;
        let config = TrainConfig {
            epochs,
            batch_size: 32,
            learning_rate: 0.05,
            weight_decay: 1e-4,
            augment: false,
            seed,
            ..Default::default()
        };
        let trained = train(&net, &train_set, &config, &|_| {})?;
        base.push(evaluate(&trained, &test_set, 512)?);
        for (i, &ratio) in ratios.iter().enumerate() {
            let l1 = prune(&trained, &PruneOptions::new(PruneMethod::L1, ratio))?;
            let nm = prune(
                &trained,
                &PruneOptions::new(PruneMethod::NeuronMerging(Default::default()), ratio),
            )?;
            params[i] = count_cost(&nm, 8, 8)?.params;
            pruned[i].push(evaluate(&l1, &test_set, 512)?);
            merged[i].push(evaluate(&nm, &test_set, 512)?);
        }
    }
    println!(
        "\n## LeNet-300-100 on digits (64-d), {} seeds, {epochs} epochs: unpruned {}%\n",
        base.len(),
        stat(&base, 2)
    );
    println!("| ratio | params | prune (L1) % | merge (official, t = 0.45) % | merge - prune |");
    println!("|---|---|---|---|---|");
    for (i, ratio) in ratios.iter().enumerate() {
        let diff: Vec<f64> = merged[i]
            .iter()
            .zip(&pruned[i])
            .map(|(m, p)| m - p)
            .collect();
        println!(
            "| {ratio:.1} | {} | {} | {} | {} |",
            params[i],
            stat(&pruned[i], 2),
            stat(&merged[i], 2),
            stat(&diff, 2)
        );
    }
    Ok(())
}

fn cnn(
    model: &str,
    data: &DataSource,
    seeds: std::ops::Range<u64>,
    epochs: usize,
    ft_epochs: usize,
    ratios: &[f64],
    only: &[String],
) -> Result<()> {
    let (train_set, test_set) = data.load()?;
    let mut settings = settings(ratios, model.starts_with("vgg16"));
    if !only.is_empty() {
        settings.retain(|s| only.contains(&s.label));
        if settings.is_empty() {
            return Err(CompressionError::Config(format!(
                "ELITE_BENCH_SETTINGS matches no setting: {only:?}"
            )));
        }
    }
    // [setting] -> (no FT, FT, params, MACs, prune s)
    let mut no_ft = vec![Vec::new(); settings.len()];
    let mut ft = vec![Vec::new(); settings.len()];
    let mut param_red = vec![Vec::new(); settings.len()];
    let mut mac_red = vec![Vec::new(); settings.len()];
    let mut prune_s = vec![Vec::new(); settings.len()];
    let mut sizes = vec![(0u64, 0u64); settings.len()];
    let mut base = Vec::new();
    let mut base_cost = (0, 0);
    let mut train_s = Vec::new();
    for seed in seeds.clone() {
        let net = build(model, train_set.num_classes(), seed)?;
        let config = TrainConfig {
            epochs,
            batch_size: 32,
            learning_rate: 0.05,
            augment: true,
            seed,
            ..Default::default()
        };
        let t = Instant::now();
        let trained = train(&net, &train_set, &config, &|_| {})?;
        train_s.push(t.elapsed().as_secs_f64());
        let accuracy = evaluate(&trained, &test_set, 256)?;
        base.push(accuracy);
        let cost = count_cost(&trained, 32, 32)?;
        base_cost = (cost.params, cost.macs);
        eprintln!(
            "{model} seed {seed}: top-1 {:.2}% (trained in {:.0} s)",
            accuracy * 100.0,
            train_s.last().unwrap_or(&0.0)
        );
        for (i, s) in settings.iter().enumerate() {
            let config = ExperimentConfig {
                prune: s.options.clone(),
                fine_tune: (ft_epochs > 0).then(|| TrainConfig {
                    epochs: ft_epochs,
                    learning_rate: 0.01,
                    ..config.clone()
                }),
                schedule: PruneSchedule::OneShot,
                eval_batch_size: 256,
                baseline_accuracy: Some(accuracy),
            };
            let t = Instant::now();
            let r = run_experiment(&trained, &train_set, &test_set, &config, &|_| {})?.result;
            // One line per setting and seed, so a run stopped early still leaves its figures.
            eprintln!(
                "{model} seed {seed} | {} | {:.2} | no FT {:.2}% | FT {} | {:.1} s | params {} ({:.1}% fewer) | MACs {} ({:.1}% fewer) | widths {:?}",
                s.label,
                s.options.ratio,
                r.accuracy_pruned * 100.0,
                r.accuracy_fine_tuned
                    .map_or("-".into(), |a| format!("{:.2}%", a * 100.0)),
                t.elapsed().as_secs_f64(),
                r.params_after,
                r.param_reduction * 100.0,
                r.macs_after,
                r.mac_reduction * 100.0,
                r.widths_after.iter().map(|(_, w)| w).collect::<Vec<_>>(),
            );
            no_ft[i].push(r.accuracy_pruned);
            if let Some(a) = r.accuracy_fine_tuned {
                ft[i].push(a);
            }
            param_red[i].push(r.param_reduction);
            mac_red[i].push(r.mac_reduction);
            prune_s[i].push(r.prune_seconds);
            sizes[i] = (r.params_after, r.macs_after);
        }
    }
    println!(
        "\n## {model} on {}, {} seeds, {epochs} epochs (train {} s): {} params, {} MACs, top-1 {}%; fine-tuning {ft_epochs} epoch(s)\n",
        data.label(),
        base.len(),
        seconds(&train_s),
        base_cost.0,
        base_cost.1,
        stat(&base, 2)
    );
    println!(
        "| method | ratio | params (last seed) | params ↓ % | MACs (last seed) | MACs ↓ % | no FT % | FT % | prune s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, s) in settings.iter().enumerate() {
        println!(
            "| {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            s.options.ratio,
            sizes[i].0,
            stat(&param_red[i], 1),
            sizes[i].1,
            stat(&mac_red[i], 1),
            stat(&no_ft[i], 2),
            stat(&ft[i], 2),
            seconds(&prune_s[i])
        );
    }
    Ok(())
}
