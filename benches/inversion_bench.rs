//! Inversion benchmark (not part of CI) on the built-in real handwritten digits, on the CPU.
//!
//! A VGG-11 with batch norm (width 0.25) is trained on the digits' training split as the
//! teacher. Per seed, DeepInversion and NaturalInversion each synthesise the same number of
//! batches at the same number of iterations; per method the table reports the share of
//! images the teacher assigns to their labels, PP&PR and the k-NN baselines (density,
//! coverage) of the images against the real training digits in the `pixels` space (the
//! digits' own 8x8 resolution), and the time per iteration. Then the teacher is L1-pruned
//! by half and its accuracy on the real test split is measured with no fine-tuning and
//! after fine-tuning on the real training data, on the DeepInversion images and on the
//! NaturalInversion images (same number of SGD steps, batch 64, learning rate 0.01: a small
//! synthesised set takes more epochs than the real split). Means ± sd over the seeds, and
//! whether the paper's direction (NaturalInversion ahead of DeepInversion on fidelity,
//! diversity and repair) holds on the mean and on most seeds.
//!
//! Environment overrides: `ELITE_BENCH_SEEDS` (default 3), `ELITE_BENCH_BATCHES` (default
//! 10), `ELITE_BENCH_BATCH` (images per batch, default 64), `ELITE_BENCH_ITERATIONS`
//! (default 300), `ELITE_BENCH_TEACHER_EPOCHS` (default 8), `ELITE_BENCH_FT_EPOCHS`
//! (default 5), `ELITE_BENCH_BN_WEIGHT` (default: the methods' CIFAR-10 setting, 10).
//!
//! Run: `MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 cargo bench
//! --bench inversion_bench` (see training_bench for the allocator settings).

use std::str::FromStr;

use elite::compression::sources::DataSource;
use elite::compression::{
    Dataset, Network, PruneMethod, PruneOptions, TrainConfig, VggConfig, evaluate, prune, train,
};
use elite::training::experiment::mean_sd;
use elite::training::inversion::spec::synthetic_dataset;
use elite::training::inversion::{Encoder, InversionSettings, Method, embed, invert_batch};

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("inversion_bench failed: {e}");
        std::process::exit(1);
    }
}

/// One method's measurements for one seed.
#[derive(Default, Clone)]
struct Row {
    teacher_accuracy: f64,
    p_precision: f64,
    p_recall: f64,
    density: f64,
    coverage: f64,
    ms_per_iteration: f64,
    repaired: f64,
}

/// Reads one measurement off a row.
type Column = fn(&Row) -> f64;

fn all_images(data: &Dataset) -> Vec<f32> {
    (0..data.len())
        .flat_map(|i| data.image(i).unwrap_or_default().to_vec())
        .collect()
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = env_or("ELITE_BENCH_SEEDS", 3);
    let batches: usize = env_or("ELITE_BENCH_BATCHES", 10);
    let batch: usize = env_or("ELITE_BENCH_BATCH", 64);
    let iterations: usize = env_or("ELITE_BENCH_ITERATIONS", 300);
    let teacher_epochs: usize = env_or("ELITE_BENCH_TEACHER_EPOCHS", 8);
    let ft_epochs: usize = env_or("ELITE_BENCH_FT_EPOCHS", 5);
    let bn_weight: Option<f64> = std::env::var("ELITE_BENCH_BN_WEIGHT")
        .ok()
        .and_then(|v| v.parse().ok());
    let data: DataSource = "digits".parse()?;
    let (train_set, test_set) = data.load()?;
    println!(
        "# inversion_bench: digits 32x32, {} train / {} test; {seeds} seeds, {batches} batches of \
         {batch} per method, {iterations} iterations, fine-tuning {ft_epochs} epochs of the real split \
         (the same number of steps on the synthesised sets)\n",
        train_set.len(),
        test_set.len()
    );
    let teacher = train(
        &Network::vgg_cifar(&VggConfig::vgg11(), 0.25, 10, 0)?,
        &train_set,
        &TrainConfig {
            epochs: teacher_epochs,
            batch_size: 64,
            learning_rate: 0.05,
            ..TrainConfig::default()
        },
        &|_| {},
    )?;
    let teacher_test = evaluate(&teacher, &test_set, 256)?;
    println!(
        "teacher: VGG-11-BN x0.25, {teacher_epochs} epochs, real test top-1 {:.2}%",
        teacher_test * 100.0
    );
    let norm = train_set.normalization();
    let real = embed(
        Encoder::Pixels,
        &teacher,
        &all_images(&train_set),
        train_set.shape(),
        &norm,
    )?;
    let pruned = prune(&teacher, &PruneOptions::new(PruneMethod::L1, 0.5))?;
    let no_ft = evaluate(&pruned, &test_set, 256)?;
    // The same number of SGD steps on every fine-tuning set: a set smaller than the real
    // training split takes proportionally more epochs (at most 200).
    let real_steps = ft_epochs * train_set.len().div_ceil(64);
    let fine_tune = |data: &Dataset, seed: u64| -> Result<f64, Box<dyn std::error::Error>> {
        let epochs = real_steps.div_ceil(data.len().div_ceil(64)).clamp(1, 200);
        let config = TrainConfig {
            epochs,
            batch_size: 64,
            learning_rate: 0.01,
            seed,
            ..TrainConfig::default()
        };
        let net = train(&pruned, data, &config, &|_| {})?;
        Ok(evaluate(&net, &test_set, 256)?)
    };
    let methods = [Method::Deep, Method::Natural];
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); methods.len()];
    let mut real_ft = Vec::new();
    for seed in 0..seeds {
        real_ft.push(fine_tune(&train_set, seed)?);
        for (m, &method) in methods.iter().enumerate() {
            let mut settings = InversionSettings::paper(method);
            settings.batch_size = batch;
            settings.iterations = iterations;
            settings.flips = false;
            if let Some(w) = bn_weight {
                settings.bn_weight = w;
            }
            let mut images = Vec::new();
            let mut labels = Vec::new();
            let (mut hits, mut seconds) = (0.0, 0.0);
            for b in 0..batches {
                let out = invert_batch(&teacher, None, &settings, false, seed, b, &mut |_| true)?;
                hits += out.teacher_accuracy * out.labels.len() as f64;
                seconds += out.seconds;
                images.extend_from_slice(&out.images);
                labels.extend_from_slice(&out.labels);
                eprintln!(
                    "seed {seed} {} batch {b}: teacher says label {:.1}%, best loss {:.3} at {}",
                    method.title(),
                    out.teacher_accuracy * 100.0,
                    out.best.total,
                    out.best_iteration
                );
            }
            let n = labels.len();
            let fake = embed(
                Encoder::Pixels,
                &teacher,
                &images,
                teacher.input_size,
                &norm,
            )?;
            let scores = elite::genmetrics::evaluate(&real, &fake, &Default::default(), None)?;
            let synthetic = synthetic_dataset(images, teacher.input_size, labels, 10, norm, false)?;
            rows[m].push(Row {
                teacher_accuracy: hits / n as f64,
                p_precision: scores.ppr.p_precision,
                p_recall: scores.ppr.p_recall,
                density: scores.prdc.density,
                coverage: scores.prdc.coverage,
                ms_per_iteration: seconds * 1000.0 / (batches * iterations) as f64,
                repaired: fine_tune(&synthetic, seed)?,
            });
        }
    }
    let show = |values: &[f64], scale: f64, digits: usize| {
        let scaled: Vec<f64> = values.iter().map(|v| v * scale).collect();
        match mean_sd(&scaled) {
            (m, Some(sd)) => format!("{m:.digits$} ± {sd:.digits$}"),
            (m, None) => format!("{m:.digits$}"),
        }
    };
    println!(
        "\n| method | teacher says label % | P-precision | P-recall | density | coverage | ms / iteration | 50% L1 pruned, fine-tuned on its images % |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (m, method) in methods.iter().enumerate() {
        let col = |f: Column| rows[m].iter().map(f).collect::<Vec<f64>>();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            method.title(),
            show(&col(|r| r.teacher_accuracy), 100.0, 1),
            show(&col(|r| r.p_precision), 1.0, 4),
            show(&col(|r| r.p_recall), 1.0, 4),
            show(&col(|r| r.density), 1.0, 4),
            show(&col(|r| r.coverage), 1.0, 4),
            show(&col(|r| r.ms_per_iteration), 1.0, 1),
            show(&col(|r| r.repaired), 100.0, 2),
        );
    }
    println!(
        "\n50% L1-pruned teacher on the real test split: no fine-tuning {:.2}%, fine-tuned on the real data {}%",
        no_ft * 100.0,
        show(&real_ft, 100.0, 2)
    );
    let claims: [(&str, Column); 4] = [
        ("P-precision (fidelity)", |r| r.p_precision),
        ("P-recall (diversity)", |r| r.p_recall),
        ("coverage", |r| r.coverage),
        ("repaired accuracy", |r| r.repaired),
    ];
    println!();
    for (name, f) in claims {
        let di: Vec<f64> = rows[0].iter().map(f).collect();
        let ni: Vec<f64> = rows[1].iter().map(f).collect();
        let wins = di.iter().zip(&ni).filter(|(d, n)| n > d).count();
        let mean_ahead = mean_sd(&ni).0 > mean_sd(&di).0;
        let verdict = if mean_ahead && wins * 2 > di.len() {
            "holds"
        } else if !mean_ahead && wins * 2 < di.len() {
            "does not hold"
        } else {
            "mixed"
        };
        println!(
            "NaturalInversion ahead of DeepInversion on {name}: {verdict} (ahead on {wins} of {} seeds)",
            di.len()
        );
    }
    let repaired_ni = mean_sd(&rows[1].iter().map(|r| r.repaired).collect::<Vec<_>>()).0;
    println!(
        "Data-free repair beats no fine-tuning (NaturalInversion): {}",
        if repaired_ni > no_ft {
            "holds"
        } else {
            "does not hold"
        }
    );
    Ok(())
}
