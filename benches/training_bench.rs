//! Training-recipe benchmark (not part of CI) on the built-in real handwritten digits, on the
//! CPU.
//!
//! Two experiments, each on the same seeds and epochs: PreAct-ResNet-18 at reduced width with
//! every mixing recipe (Vanilla, Input Mixup, CutMix, SaliencyMix, Manifold Mixup,
//! GuidedMixup SR / SR with random pairing / AP, Catch-up Mix), and the small ViT (4 layers,
//! dim 64, patch 4) with the position-embedding variants (class token, GAP, LaPE + GAP, PVG,
//! MPVG, MPVG with the PE inside the last LN). Per recipe: test top-1 (mean ± sd over the
//! seeds), mean accuracy over the corrupted copies, FGSM accuracy, time per step and its ratio
//! to the family's baseline, filter-use evenness (CNN) and the per-layer position-term
//! correlation (ViT). Then one line per paper: does the direction of its claim hold here?
//!
//! Environment overrides: `ELITE_BENCH_SEEDS` (default 3), `ELITE_BENCH_EPOCHS` (CNN,
//! default 8), `ELITE_BENCH_VIT_EPOCHS` (default 30), `ELITE_BENCH_WIDTH` (PreAct width
//! multiplier, default 0.125), `ELITE_BENCH_BATCH` (default 64), `ELITE_BENCH_FRACTION` (training fraction, default 1.0;
//! 0.1 = the reduced-data setting), `ELITE_BENCH_FAMILIES` (`cnn,vit`).
//!
//! Run: `cargo bench --bench training_bench` (or `cargo test --release --bench
//! training_bench`). candle allocates every intermediate tensor afresh; with glibc's default
//! thresholds the multi-megabyte ones are mapped and unmapped per operation, so
//! `MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296` makes steps
//! faster (about 1.5x on the ViT here) for every recipe alike.

use std::str::FromStr;
use std::time::Instant;

use elite::compression::sources::DataSource;
use elite::training::experiment::{ExperimentSpec, RecipeSummary, mean_sd, run_one, summarise};
use elite::training::recipe::MIXING;
use elite::training::vit::PeVariant;
use elite::training::{Family, Recipe};

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("training_bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = env_or("ELITE_BENCH_SEEDS", 3);
    let fraction: f64 = env_or("ELITE_BENCH_FRACTION", 1.0);
    let families: String = env_or("ELITE_BENCH_FAMILIES", "cnn,vit".to_string());
    let data: DataSource = "digits".parse()?;
    let (train, test) = data.load()?;
    println!(
        "# training_bench: digits 32x32, {} train / {} test images, fraction {fraction}, {seeds} seeds\n",
        train.len(),
        test.len()
    );
    for family in families.split(',').map(str::trim) {
        let (recipes, epochs, family) = match family {
            "cnn" => (
                MIXING.to_vec(),
                env_or("ELITE_BENCH_EPOCHS", 8),
                Family::Cnn,
            ),
            "vit" => (
                PeVariant::all().into_iter().map(Recipe::Vit).collect(),
                env_or("ELITE_BENCH_VIT_EPOCHS", 30),
                Family::Vit,
            ),
            other => return Err(format!("unknown family {other:?} (cnn, vit)").into()),
        };
        let mut spec = ExperimentSpec::new(recipes);
        spec.seeds = (0..seeds).collect();
        spec.epochs = epochs;
        spec.train_fraction = fraction;
        spec.width = env_or("ELITE_BENCH_WIDTH", 0.125);
        spec.batch_size = env_or("ELITE_BENCH_BATCH", 64);
        let spec = spec.checked()?;
        let started = Instant::now();
        let mut runs = Vec::new();
        for &seed in &spec.seeds {
            for &recipe in &spec.recipes {
                let run = run_one(&spec, recipe, seed, &train, &test, &|_| {})?;
                eprintln!(
                    "{recipe:<18} seed {seed}: top-1 {:.2}%  {:.1} ms/step  ({:.0} s elapsed)",
                    run.test_accuracy * 100.0,
                    run.seconds_per_step * 1000.0,
                    started.elapsed().as_secs_f64()
                );
                runs.push(run);
            }
        }
        let summary = summarise(&spec, &runs);
        match family {
            Family::Cnn => println!(
                "## PreAct-ResNet-18, width {}, {} epochs, batch {}, SGD 0.1 cosine\n",
                spec.width, spec.epochs, spec.batch_size
            ),
            Family::Vit => println!(
                "## ViT {} layers, dim {}, {} heads, patch {}, {} epochs, AdamW 6e-4 warm-up + cosine\n",
                spec.vit.depth, spec.vit.dim, spec.vit.heads, spec.vit.patch, spec.epochs
            ),
        }
        print_table(&summary, family);
        print_directions(&summary, &runs, family);
        println!(
            "\n({} runs in {:.0} s)\n",
            runs.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn pm(mean: f64, sd: Option<f64>) -> String {
    match sd {
        Some(sd) => format!("{:.2} ± {:.2}", mean * 100.0, sd * 100.0),
        None => format!("{:.2}", mean * 100.0),
    }
}

fn print_table(summary: &[RecipeSummary], family: Family) {
    let extra = match family {
        Family::Cnn => "filter entropy",
        Family::Vit => "corr. per layer",
    };
    println!("| recipe | top-1 % | corrupted % | FGSM % | ms/step | vs baseline | {extra} |");
    println!("|---|---|---|---|---|---|---|");
    for s in summary {
        let last = match family {
            Family::Cnn => s
                .filter_entropy
                .map(|e| format!("{e:.4}"))
                .unwrap_or_default(),
            Family::Vit => s
                .counterbalance
                .iter()
                .map(|c| c.map_or("-".into(), |v| format!("{v:+.2}")))
                .collect::<Vec<_>>()
                .join(" "),
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {} | {} |",
            s.recipe,
            pm(s.accuracy_mean, s.accuracy_sd),
            s.corrupted_mean * 100.0,
            s.fgsm_mean * 100.0,
            s.seconds_per_step * 1000.0,
            s.step_time_ratio
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_default(),
            last
        );
    }
}

fn row(summary: &[RecipeSummary], recipe: Recipe) -> Option<&RecipeSummary> {
    summary.iter().find(|s| s.recipe == recipe.name())
}

/// "A ahead of B" over the seeds: the mean difference and how many seeds agree.
fn compare(
    runs: &[elite::training::RunResult],
    a: Recipe,
    b: Recipe,
    field: fn(&elite::training::RunResult) -> f64,
) -> String {
    let of = |r: Recipe| {
        let mut v: Vec<(u64, f64)> = runs
            .iter()
            .filter(|x| x.recipe == r)
            .map(|x| (x.seed, field(x)))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let (va, vb) = (of(a), of(b));
    let diffs: Vec<f64> = va
        .iter()
        .filter_map(|(s, x)| vb.iter().find(|(t, _)| t == s).map(|(_, y)| x - y))
        .collect();
    if diffs.is_empty() {
        return format!("{a} vs {b}: no paired seeds");
    }
    let (mean, sd) = mean_sd(&diffs);
    let wins = diffs.iter().filter(|d| **d > 0.0).count();
    format!(
        "{a} - {b}: {:+.2} points (sd {:.2}), ahead on {wins}/{} seeds -> {}",
        mean * 100.0,
        sd.unwrap_or(0.0) * 100.0,
        diffs.len(),
        if mean > 0.0 && 2 * wins > diffs.len() {
            "holds"
        } else if mean <= 0.0 && 2 * wins < diffs.len() {
            "does not hold"
        } else {
            "mixed (mean and seeds disagree)"
        }
    )
}

fn print_directions(
    summary: &[RecipeSummary],
    runs: &[elite::training::RunResult],
    family: Family,
) {
    let acc = |r: &elite::training::RunResult| r.test_accuracy;
    let corrupted = |r: &elite::training::RunResult| r.corrupted_accuracy;
    let fgsm = |r: &elite::training::RunResult| r.fgsm_accuracy;
    println!("\nDirections:");
    match family {
        Family::Cnn => {
            use Recipe::*;
            for b in [Vanilla, Mixup, CutMix] {
                println!(
                    "- GuidedMixup (SR) accuracy: {}",
                    compare(runs, GuidedSr, b, acc)
                );
            }
            println!(
                "- GuidedMixup (SR) corrupted: {}",
                compare(runs, GuidedSr, Vanilla, corrupted)
            );
            println!(
                "- Greedy vs random pairing: {}",
                compare(runs, GuidedSr, GuidedSrRandom, acc)
            );
            if let (Some(sr), Some(mixup), Some(ap)) = (
                row(summary, GuidedSr),
                row(summary, Mixup),
                row(summary, GuidedAp),
            ) {
                println!(
                    "- Overhead: GuidedMixup SR {:.2}x, Mixup {:.2}x, AP {:.2}x of Vanilla's step \
                     (paper: SR a few % over Mixup, AP about double)",
                    sr.step_time_ratio.unwrap_or(f64::NAN),
                    mixup.step_time_ratio.unwrap_or(f64::NAN),
                    ap.step_time_ratio.unwrap_or(f64::NAN)
                );
            }
            for b in [Vanilla, ManifoldMixup, CutMix] {
                println!(
                    "- Catch-up Mix accuracy: {}",
                    compare(runs, CatchupMix, b, acc)
                );
            }
            println!(
                "- Catch-up Mix FGSM: {}",
                compare(runs, CatchupMix, Vanilla, fgsm)
            );
            println!(
                "- Catch-up Mix filter-use entropy (mean over stages): {}",
                compare(runs, CatchupMix, Vanilla, |r| r
                    .filter_use
                    .iter()
                    .map(|u| u.entropy)
                    .sum::<f64>()
                    / r.filter_use.len().max(1) as f64)
            );
        }
        Family::Vit => {
            use PeVariant::*;
            for b in [ClassToken, Gap, LapeGap, Pvg] {
                println!(
                    "- MPVG accuracy: {}",
                    compare(runs, Recipe::Vit(Mpvg), Recipe::Vit(b), acc)
                );
            }
            println!(
                "- PVG accuracy: {}",
                compare(runs, Recipe::Vit(Pvg), Recipe::Vit(LapeGap), acc)
            );
            if let Some(m) = row(summary, Recipe::Vit(Mpvg)) {
                let deeper: Vec<f64> = m.counterbalance.iter().skip(1).filter_map(|c| *c).collect();
                println!(
                    "- Counterbalancing (MPVG): position-term correlation in layers 2.. = {:?} \
                     -> {}",
                    deeper
                        .iter()
                        .map(|v| format!("{v:+.2}"))
                        .collect::<Vec<_>>(),
                    if !deeper.is_empty() && deeper.iter().all(|v| *v < 0.0) {
                        "negative in every deeper layer (holds)"
                    } else {
                        "not negative in every deeper layer (does not hold)"
                    }
                );
            }
        }
    }
}
