//! Training speed on the CPU (not part of CI): seconds per step of SGD on a batch of 32
//! built-in digits (32x32, crops), elite's trainer (`compression::train`) beside PyTorch's
//! (`scripts/compression/train_parity.py speed`, the same networks and recipe), in one run.
//!
//! PyTorch runs under `ELITE_BENCH_PYTHON`, else `scripts/compression/.venv/bin/python`
//! (created by the script on first use); its column is "-" when neither has torch.
//! Environment overrides: `ELITE_BENCH_MODELS` (default `resnet56,vgg16:0.25,vgg16:1.0`),
//! `ELITE_BENCH_STEPS` (timed steps per model, default 10).
//!
//! Run: `cargo bench --bench train_step_bench`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use elite::compression::*;

fn main() {
    let models = std::env::var("ELITE_BENCH_MODELS")
        .unwrap_or_else(|_| "resnet56,vgg16:0.25,vgg16:1.0".into());
    let steps: usize = std::env::var("ELITE_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 1000);
    let theirs = pytorch(&models, steps);
    println!("| model | MACs per image | elite s/step | PyTorch s/step | elite / PyTorch |");
    println!("|---|---|---|---|---|");
    for model in models.split(',') {
        match ours(model, steps) {
            Ok((macs, seconds)) => {
                let torch = theirs.iter().find(|(m, _)| m == model).map(|(_, s)| *s);
                println!(
                    "| {model} | {macs} | {seconds:.3} | {} | {} |",
                    torch.map_or("-".into(), |t| format!("{t:.3}")),
                    torch.map_or("-".into(), |t| format!("{:.1}", seconds / t)),
                );
            }
            Err(e) => println!("| {model} | - | failed: {e} | - | - |"),
        }
    }
}

/// `(MACs per image, seconds per step)` of elite's trainer: two warm-up steps, then
/// `steps` timed ones, each on 32 images.
fn ours(model: &str, steps: usize) -> Result<(u64, f64)> {
    let net = if model == "resnet56" {
        Network::resnet_cifar(56, 1.0, 10, 0)?
    } else if let Some(w) = model.strip_prefix("vgg16:") {
        let w: f64 = w
            .parse()
            .map_err(|_| CompressionError::Config(format!("bad width in {model}")))?;
        Network::vgg16_nm_cifar(w, 10, 0)?
    } else {
        return Err(CompressionError::Config(format!("unknown model {model}")));
    };
    let (digits, _) = load_digits(DigitsForm::Image32)?;
    let subset = |n: usize| -> Result<Dataset> {
        let idx: Vec<usize> = (0..n).map(|i| i % digits.len()).collect();
        let (x, y) = digits.batch(&idx)?;
        Dataset::from_normalized(
            x.flatten_all()?.to_vec1()?,
            [3, 32, 32],
            y.to_vec1()?,
            (0..10).map(|c| c.to_string()).collect(),
            digits.normalization(),
            false,
        )
    };
    let config = |seed| TrainConfig {
        epochs: 1,
        batch_size: 32,
        learning_rate: 0.01,
        augment: true,
        seed,
        ..Default::default()
    };
    train(&net, &subset(64)?, &config(0), &|_| {})?;
    let data = subset(32 * steps)?;
    let start = Instant::now();
    train(&net, &data, &config(1), &|_| {})?;
    let macs = count_cost(&net, 32, 32)?.macs;
    Ok((macs, start.elapsed().as_secs_f64() / steps as f64))
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ELITE_BENCH_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compression/.venv/bin/python")
}

/// PyTorch's seconds per step per model, from the script's `RESULT` lines.
fn pytorch(models: &str, steps: usize) -> Vec<(String, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compression/train_parity.py");
    let output = Command::new(python())
        .arg(script)
        .args(["speed", "--models", models, "--steps", &steps.to_string()])
        .output();
    let Some(output) = output.ok().filter(|o| o.status.success()) else {
        eprintln!("PyTorch column skipped: no Python with torch (set ELITE_BENCH_PYTHON)");
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("RESULT\t")?.split('\t').collect();
            Some((f.first()?.to_string(), f.get(1)?.parse().ok()?))
        })
        .collect()
}
