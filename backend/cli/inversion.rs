//! `elite invert`: a DeepInversion or NaturalInversion set synthesised in this process, with
//! a progress bar over all iterations. It builds the same [`InversionSpec`] the page and the
//! API store and runs the same [`invert_batch`] per batch; the images go to a folder as
//! PNGs (one subfolder per class), `images.safetensors` (the raw `N x C x H x W` tensor in
//! the teacher's normalised input space, and the labels) and `summary.json`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::progress_bar;
use crate::compression::sources::{DataSource, ModelSource};
use crate::training::inversion::spec::{InversionSpec, TeacherSource, prepare_teacher, student_of};
use crate::training::inversion::synth::{BatchOutcome, InversionSettings, Method, invert_batch};
use crate::training::inversion::to_png;
use crate::training::{Result, TrainingError};

/// What the command line asks for.
pub struct InvertArgs {
    /// `trained`, `trained:EPOCHS`, or a checkpoint written by `elite train --arch` / `elite
    /// prune`.
    pub teacher: String,
    pub method: String,
    pub images: usize,
    pub batch_size: usize,
    pub iterations: usize,
    pub data: String,
    pub seed: u64,
    pub bn_weight: Option<f64>,
    pub competition_weight: Option<f64>,
    pub out: PathBuf,
}

/// What `--json` prints and `summary.json` holds.
#[derive(Debug, Serialize)]
pub struct InvertSummary {
    pub method: String,
    pub teacher: String,
    pub teacher_accuracy: f64,
    pub images: usize,
    /// Share of the images the teacher assigns to their labels.
    pub teacher_accuracy_on_images: f64,
    pub seconds: f64,
    pub seconds_per_iteration: f64,
    pub batches: Vec<BatchOutcome>,
    pub out: PathBuf,
}

/// The checked specification of `args` (batches of `batch_size`; the last one may be
/// smaller, see [`run`]).
pub fn specification(args: &InvertArgs) -> Result<InversionSpec> {
    let method: Method = args.method.parse()?;
    let mut settings = InversionSettings::paper(method);
    settings.batch_size = args.batch_size.min(args.images.max(1));
    settings.iterations = args.iterations;
    if let Some(w) = args.bn_weight {
        settings.bn_weight = w;
    }
    if let Some(w) = args.competition_weight {
        settings.competition_weight = w;
    }
    let teacher = match args.teacher.trim() {
        "trained" => TeacherSource::Trained {
            epochs: 6,
            width: 0.25,
            seed: args.seed,
        },
        t if t.starts_with("trained:") => TeacherSource::Trained {
            epochs: t["trained:".len()..]
                .parse()
                .map_err(|_| TrainingError::Config(format!("{t}: expected trained:EPOCHS")))?,
            width: 0.25,
            seed: args.seed,
        },
        path => TeacherSource::Model(ModelSource::parse(path)?),
    };
    if args.images == 0 || args.images > crate::training::inversion::spec::MAX_BATCHES * 256 {
        return Err(TrainingError::Config("--images must be 1..=25600".into()));
    }
    let spec = InversionSpec {
        teacher,
        data: args.data.parse::<DataSource>()?,
        batches: args.images.div_ceil(settings.batch_size),
        settings,
        seed: args.seed,
        student_ratio: 0.5,
    };
    spec.check()?;
    Ok(spec)
}

fn io(path: &Path, e: std::io::Error) -> TrainingError {
    TrainingError::Config(format!("{}: {e}", path.display()))
}

/// Runs the whole set and writes it to `args.out`.
pub fn run(args: &InvertArgs, spec: &InversionSpec) -> Result<InvertSummary> {
    let started = std::time::Instant::now();
    let (teacher, train, _, teacher_accuracy) = prepare_teacher(spec, &|_| {})?;
    let student = if spec.settings.competition_weight > 0.0 {
        Some(student_of(&teacher, spec.student_ratio)?)
    } else {
        None
    };
    let total = (spec.batches * spec.settings.iterations) as u64;
    let bar = progress_bar(total, &format!("{} ", spec.settings.method.title()));
    let mut batches = Vec::new();
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut remaining = args.images;
    for b in 0..spec.batches {
        let mut settings = spec.settings.clone();
        settings.batch_size = settings.batch_size.min(remaining);
        remaining -= settings.batch_size;
        let done = (b * spec.settings.iterations) as u64;
        let outcome = invert_batch(
            &teacher,
            student.as_ref(),
            &settings,
            train.flip_invariant(),
            spec.seed,
            b,
            &mut |p| {
                bar.set_position(done + p.iteration as u64);
                bar.set_message(format!(
                    "{} batch {}/{}: loss {:.3}",
                    settings.method.title(),
                    b + 1,
                    spec.batches,
                    p.terms.total
                ));
                true
            },
        )?;
        values.extend_from_slice(&outcome.images);
        labels.extend_from_slice(&outcome.labels);
        batches.push(outcome);
    }
    bar.finish_and_clear();
    let shape = teacher.input_size;
    let len: usize = shape.iter().product();
    std::fs::create_dir_all(&args.out).map_err(|e| io(&args.out, e))?;
    let norm = train.normalization();
    for (i, (img, label)) in values.chunks(len).zip(&labels).enumerate() {
        let dir = args.out.join(format!("class{label}"));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join(format!("{i:05}.png"));
        std::fs::write(&path, to_png(img, shape, &norm)?).map_err(|e| io(&path, e))?;
    }
    let n = labels.len();
    let images = candle_core::Tensor::from_vec(
        values,
        (n, shape[0], shape[1], shape[2]),
        &candle_core::Device::Cpu,
    )?;
    let label_tensor = candle_core::Tensor::from_vec(
        labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
        n,
        &candle_core::Device::Cpu,
    )?;
    let path = args.out.join("images.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            ("images".to_string(), images),
            ("labels".to_string(), label_tensor),
        ]),
        &path,
    )?;
    let hits: f64 = batches
        .iter()
        .map(|o| o.teacher_accuracy * o.labels.len() as f64)
        .sum();
    let iterations: usize = batches.iter().map(|o| o.iterations).sum();
    let compute: f64 = batches.iter().map(|o| o.seconds).sum();
    let summary = InvertSummary {
        method: spec.settings.method.name().into(),
        teacher: spec.teacher.label(),
        teacher_accuracy,
        images: n,
        teacher_accuracy_on_images: hits / n.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        seconds_per_iteration: compute / iterations.max(1) as f64,
        batches,
        out: args.out.clone(),
    };
    let json =
        serde_json::to_string_pretty(&summary).map_err(|e| TrainingError::Config(e.to_string()))?;
    let path = args.out.join("summary.json");
    std::fs::write(&path, json).map_err(|e| io(&path, e))?;
    Ok(summary)
}

/// A short human-readable report.
pub fn describe(summary: &InvertSummary) -> String {
    format!(
        "{} images with {} from {} (real test accuracy {:.2}%)\n\
         teacher assigns {:.1}% of the images to their labels\n\
         {:.1} ms per iteration, {:.1} s in all; written to {}\n",
        summary.images,
        summary.method,
        summary.teacher,
        summary.teacher_accuracy * 100.0,
        summary.teacher_accuracy_on_images * 100.0,
        summary.seconds_per_iteration * 1000.0,
        summary.seconds,
        summary.out.display()
    )
}
