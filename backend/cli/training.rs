//! `elite train --recipe ...`: a training experiment (recipes x seeds) run in this process,
//! with a progress bar over all steps, printed as a table or as JSON. It builds the same
//! [`ExperimentSpec`] the page and the API store, and runs the same [`run_one`].

use super::progress_bar;
use crate::compression::sources::DataSource;
use crate::nn::fit::TrainEvent;
use crate::training::experiment::{ExperimentSpec, RecipeSummary, RunResult, run_one, summarise};
use crate::training::{LossKind, Recipe, Result, TrainingError};

/// What the command line asks for (unset values keep the defaults of [`ExperimentSpec::new`]).
pub struct TrainArgs {
    pub recipes: Vec<String>,
    pub seeds: Vec<u64>,
    pub data: String,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub width: Option<f64>,
    pub train_fraction: Option<f64>,
    pub fgsm_epsilon: Option<f32>,
    pub bce: bool,
}

/// The checked specification of `args`.
pub fn specification(args: &TrainArgs) -> Result<ExperimentSpec> {
    let recipes = args
        .recipes
        .iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::parse::<Recipe>)
        .collect::<Result<Vec<_>>>()?;
    let mut spec = ExperimentSpec::new(recipes);
    if !args.seeds.is_empty() {
        spec.seeds = args.seeds.clone();
    }
    spec.data = args.data.parse::<DataSource>()?;
    if let Some(v) = args.epochs {
        spec.epochs = v;
    }
    if let Some(v) = args.batch_size {
        spec.batch_size = v;
    }
    spec.learning_rate = args.learning_rate;
    if let Some(v) = args.width {
        spec.width = v;
    }
    if let Some(v) = args.train_fraction {
        spec.train_fraction = v;
    }
    if let Some(v) = args.fgsm_epsilon {
        spec.fgsm_epsilon = v;
    }
    if args.bce {
        spec.mix.loss = LossKind::Bce;
    }
    spec.checked()
}

/// Runs every (recipe, seed) of `spec` one after another; returns the runs and the table.
pub fn run(spec: &ExperimentSpec) -> Result<(Vec<RunResult>, Vec<RecipeSummary>)> {
    let (train, test) = spec.data.load()?;
    if train.shape() != [3, 32, 32] {
        return Err(TrainingError::Config(
            "training recipes need 3x32x32 images (use `digits`, not `digits:64`)".into(),
        ));
    }
    let per_run = spec.steps(train.len()) as u64;
    let total = per_run * (spec.recipes.len() * spec.seeds.len()) as u64;
    let bar = progress_bar(total, "training");
    let mut runs = Vec::new();
    for &seed in &spec.seeds {
        for &recipe in &spec.recipes {
            bar.set_message(format!("{recipe}, seed {seed}"));
            let on_event = |event: TrainEvent| {
                if let TrainEvent::BatchFinished { .. } = event {
                    bar.inc(1);
                }
            };
            runs.push(run_one(spec, recipe, seed, &train, &test, &on_event)?);
        }
    }
    bar.finish_and_clear();
    let summary = summarise(spec, &runs);
    Ok((runs, summary))
}

/// The table as text.
pub fn describe(summary: &[RecipeSummary]) -> String {
    let mut out = format!(
        "{:<18} {:>5} {:>16} {:>10} {:>8} {:>9} {:>8} {:>8}\n",
        "recipe", "seeds", "top-1 %", "corrupt %", "FGSM %", "ms/step", "ratio", "entropy"
    );
    for s in summary {
        let acc = match s.accuracy_sd {
            Some(sd) => format!("{:.2} ± {:.2}", s.accuracy_mean * 100.0, sd * 100.0),
            None => format!("{:.2}", s.accuracy_mean * 100.0),
        };
        out.push_str(&format!(
            "{:<18} {:>5} {:>16} {:>10.2} {:>8.2} {:>9.1} {:>8} {:>8}\n",
            s.recipe,
            s.seeds,
            acc,
            s.corrupted_mean * 100.0,
            s.fgsm_mean * 100.0,
            s.seconds_per_step * 1000.0,
            s.step_time_ratio
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_default(),
            s.filter_entropy
                .map(|e| format!("{e:.4}"))
                .unwrap_or_default(),
        ));
    }
    out
}
