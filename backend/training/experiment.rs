//! One experiment = recipes x seeds on one network family and one data set. [`run_one`]
//! trains one recipe with one seed and measures it (test top-1, the corrupted copies, FGSM,
//! time per step, filter-use evenness for CNNs, the position-term correlation for ViTs);
//! [`summarise`] turns the runs into mean ± sd per recipe with time-per-step ratios against
//! the family's baseline and the published figures beside ours where the setting matches.
//!
//! Step times are wall-clock measurements (`std::time::Instant`) of the whole step (recipe
//! preparation, forward, backward, update); they are the only clock reads in this area.

use std::time::Instant;

use candle_core::Var;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::preact::PreActResNet18;
use super::recipe::{Family, MixSettings, Recipe, loss, prepare};
use super::robustness;
use super::vit::{PeVariant, Vit, VitConfig};
use super::{Classifier, Result, TrainingError};
use crate::compression::Dataset;
use crate::compression::sources::DataSource;
use crate::nn::fit::{EpochLoop, StepOutput, TrainEvent};
use crate::nn::{LrSchedule, OptimizerConfig, count_correct};

/// Most seeds, recipes, epochs per experiment (bounded before anything runs).
pub const MAX_SEEDS: usize = 10;
pub const MAX_EPOCHS: usize = 500;
pub const MAX_BATCH: usize = 1024;
/// Largest seed: 2^53, so that seeds survive JSON readers that hold numbers as doubles and
/// the database's signed 64-bit column.
pub const MAX_SEED: u64 = 1 << 53;

/// Size of the small ViT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct VitSize {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub patch: usize,
    pub mlp_ratio: usize,
}

impl Default for VitSize {
    /// The spec's CPU check: 4 layers, dim 64, 4 heads, patch 4, MLP ratio 2.
    fn default() -> Self {
        VitSize {
            dim: 64,
            depth: 4,
            heads: 4,
            patch: 4,
            mlp_ratio: 2,
        }
    }
}

/// Everything an experiment needs; stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSpec {
    pub recipes: Vec<Recipe>,
    pub seeds: Vec<u64>,
    pub data: DataSource,
    /// Fraction of the training set used (stratified, seeded by the run's seed); 1.0 = all,
    /// 0.1 = the reduced-data setting.
    pub train_fraction: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Base learning rate; `None` = the family's default (SGD 0.1 for the CNN, AdamW 6e-4
    /// for the ViT, the papers' rates).
    pub learning_rate: Option<f64>,
    /// PreAct-ResNet-18 width multiplier (1.0 = 64..512 channels).
    pub width: f64,
    pub vit: VitSize,
    pub mix: MixSettings,
    /// FGSM step in [0, 1] pixel units.
    pub fgsm_epsilon: f32,
}

impl ExperimentSpec {
    /// A CPU-sized default for `recipes` on the digits.
    pub fn new(recipes: Vec<Recipe>) -> Self {
        ExperimentSpec {
            recipes,
            seeds: vec![0, 1, 2],
            data: DataSource::Digits {
                form: crate::compression::DigitsForm::Image32,
            },
            train_fraction: 1.0,
            epochs: 10,
            batch_size: 64,
            learning_rate: None,
            width: 0.125,
            vit: VitSize::default(),
            mix: MixSettings::default(),
            fgsm_epsilon: 2.0 / 255.0,
        }
    }

    /// The family every recipe belongs to.
    pub fn family(&self) -> Result<Family> {
        let first = self
            .recipes
            .first()
            .ok_or_else(|| TrainingError::Config("choose at least one recipe".into()))?;
        if self.recipes.iter().any(|r| r.family() != first.family()) {
            return Err(TrainingError::Config(
                "mixing recipes (CNN) and ViT variants run in separate experiments".into(),
            ));
        }
        Ok(first.family())
    }

    /// Bounds every size before anything is allocated; adds the family's baseline recipe
    /// when missing (every comparison is against it) and drops duplicates.
    pub fn checked(mut self) -> Result<Self> {
        let bad = |m: String| Err(TrainingError::Config(m));
        let family = self.family()?;
        let baseline = Recipe::baseline(family);
        if !self.recipes.contains(&baseline) {
            self.recipes.insert(0, baseline);
        }
        let mut seen = Vec::new();
        self.recipes.retain(|r| {
            let new = !seen.contains(r);
            seen.push(*r);
            new
        });
        let mut seen_seeds = Vec::new();
        self.seeds.retain(|s| {
            let new = !seen_seeds.contains(s);
            seen_seeds.push(*s);
            new
        });
        if self.seeds.is_empty() || self.seeds.len() > MAX_SEEDS {
            return bad(format!("between 1 and {MAX_SEEDS} seeds"));
        }
        if let Some(seed) = self.seeds.iter().find(|&&s| s > MAX_SEED) {
            return bad(format!("seed {seed} is larger than {MAX_SEED}"));
        }
        if self.epochs == 0 || self.epochs > MAX_EPOCHS {
            return bad(format!("between 1 and {MAX_EPOCHS} epochs"));
        }
        if self.batch_size < 2 || self.batch_size > MAX_BATCH {
            return bad(format!("a batch size between 2 and {MAX_BATCH}"));
        }
        if !(self.train_fraction.is_finite()
            && self.train_fraction > 0.0
            && self.train_fraction <= 1.0)
        {
            return bad("the training fraction must lie in (0, 1]".into());
        }
        if let Some(lr) = self.learning_rate
            && !(lr.is_finite() && lr > 0.0 && lr <= 10.0)
        {
            return bad("the learning rate must lie in (0, 10]".into());
        }
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 1.0) {
            return bad("the width multiplier must lie in (0, 1]".into());
        }
        if !(self.fgsm_epsilon.is_finite() && (0.0..=0.5).contains(&self.fgsm_epsilon)) {
            return bad("the FGSM epsilon must lie in [0, 0.5]".into());
        }
        self.mix.check()?;
        // The ViT's own checks (divisibility, bounds) run on a config with 10 classes.
        self.vit_config(10, PeVariant::Gap).validate()?;
        Ok(self)
    }

    fn vit_config(&self, num_classes: usize, variant: PeVariant) -> VitConfig {
        VitConfig {
            image_side: 32,
            channels: 3,
            patch: self.vit.patch,
            dim: self.vit.dim,
            depth: self.vit.depth,
            heads: self.vit.heads,
            mlp_ratio: self.vit.mlp_ratio,
            num_classes,
            variant,
        }
    }

    fn optimizer(&self, family: Family) -> (OptimizerConfig, LrSchedule, f64) {
        match family {
            // The mixup papers' CIFAR protocol (SGD 0.1, momentum 0.9, wd 1e-4), cosine.
            Family::Cnn => (
                OptimizerConfig::Sgd {
                    momentum: 0.9,
                    weight_decay: 1e-4,
                },
                LrSchedule::Cosine,
                self.learning_rate.unwrap_or(0.1),
            ),
            // MPVG's ViT-Lite protocol: AdamW 6e-4, wd 0.06, warm-up then cosine (warm-up
            // scaled to a tenth of the epochs as 10 of their ~300).
            Family::Vit => (
                OptimizerConfig::AdamW { weight_decay: 0.06 },
                LrSchedule::WarmupCosine {
                    warmup_epochs: (self.epochs / 10).max(if self.epochs > 1 { 1 } else { 0 }),
                },
                self.learning_rate.unwrap_or(6e-4),
            ),
        }
    }

    /// Number of optimisation steps one run takes on a training set of `n` images.
    pub fn steps(&self, n: usize) -> usize {
        let n = ((n as f64 * self.train_fraction).round() as usize).max(1);
        n.div_ceil(self.batch_size) * self.epochs
    }
}

/// A stratified, seeded subset holding `fraction` of each class (at least one image each).
pub fn reduce(data: &Dataset, fraction: f64, seed: u64) -> Result<Dataset> {
    if fraction >= 1.0 {
        return Ok(data.clone());
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_F4AC);
    let mut keep = Vec::new();
    for class in 0..data.num_classes() as u32 {
        let mut members: Vec<usize> = (0..data.len())
            .filter(|&i| data.labels()[i] == class)
            .collect();
        members.shuffle(&mut rng);
        let n = ((members.len() as f64 * fraction).round() as usize).clamp(1, members.len().max(1));
        keep.extend(members.into_iter().take(n));
    }
    keep.sort_unstable();
    Ok(data.subset(&keep)?)
}

/// Accuracy on one corrupted copy of the test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CorruptedAccuracy {
    pub corruption: String,
    pub accuracy: f64,
}

/// Evenness of filter use after one stage of the CNN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FilterUse {
    pub stage: usize,
    pub channels: usize,
    /// Normalised entropy of the per-channel mean activation norms (1 = perfectly even).
    pub entropy: f64,
    pub gini: f64,
}

/// Everything measured for one recipe and one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunResult {
    #[schema(value_type = String)]
    pub recipe: Recipe,
    pub seed: u64,
    pub test_accuracy: f64,
    pub corrupted: Vec<CorruptedAccuracy>,
    /// Mean over the corrupted copies.
    pub corrupted_accuracy: f64,
    pub fgsm_epsilon: f32,
    pub fgsm_accuracy: f64,
    pub steps: usize,
    pub seconds_per_step: f64,
    pub train_seconds: f64,
    pub epoch_losses: Vec<f64>,
    pub parameters: usize,
    pub train_images: usize,
    pub test_images: usize,
    /// CNN runs: per stage.
    pub filter_use: Vec<FilterUse>,
    /// ViT runs: per layer, the correlation between the normalised tokens and the position
    /// term added there (`None` where none is added).
    pub counterbalance: Vec<Option<f64>>,
}

/// The network a recipe trains.
enum Model {
    Cnn(PreActResNet18),
    Vit(Vit),
}

impl Model {
    fn build(spec: &ExperimentSpec, recipe: Recipe, classes: usize, seed: u64) -> Result<Self> {
        Ok(match recipe {
            Recipe::Vit(variant) => Model::Vit(Vit::new(spec.vit_config(classes, variant), seed)?),
            _ => Model::Cnn(PreActResNet18::new(spec.width, classes, seed)?),
        })
    }

    fn classifier(&self) -> &dyn Classifier {
        match self {
            Model::Cnn(m) => m,
            Model::Vit(m) => m,
        }
    }
}

/// Trains `recipe` with `seed` on `train` and measures it on `test`. `progress` sees every
/// batch.
pub fn run_one(
    spec: &ExperimentSpec,
    recipe: Recipe,
    seed: u64,
    train: &Dataset,
    test: &Dataset,
    progress: &dyn Fn(TrainEvent),
) -> Result<RunResult> {
    if train.shape() != [3, 32, 32] || test.shape() != train.shape() {
        return Err(TrainingError::Config(
            "training recipes need 3x32x32 images (digits, CIFAR)".into(),
        ));
    }
    let classes = train.num_classes().max(2);
    let train = reduce(train, spec.train_fraction, seed)?;
    let family = recipe.family();
    let built = Model::build(spec, recipe, classes, seed)?;
    let model = built.classifier();
    let vars: Vec<Var> = {
        let data = model.varmap().data().lock().expect("var map lock");
        data.iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let parameters = super::count_parameters(model.varmap());
    let (optimizer, schedule, base_lr) = spec.optimizer(family);
    let mut optimizer = optimizer.build(vars)?;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5);
    let epoch_loop = EpochLoop {
        data: &train,
        batch_size: spec.batch_size,
        epochs: spec.epochs,
        base_lr,
        schedule: &schedule,
        augment: true,
    };
    let mut step_seconds = 0f64;
    let mut steps = 0usize;
    let epoch_losses = std::cell::RefCell::new(Vec::new());
    let on_event = |event: TrainEvent| {
        if let TrainEvent::EpochFinished { mean_loss, .. } = &event {
            epoch_losses.borrow_mut().push(*mean_loss);
        }
        progress(event);
    };
    epoch_loop.run(
        0..spec.epochs,
        &mut rng,
        &on_event,
        |images, labels, lr, rng| -> Result<StepOutput> {
            let started = Instant::now();
            let prepared = prepare(recipe, &spec.mix, model, images, labels, classes, rng)?;
            let loss = loss(spec.mix.loss, &prepared)?;
            optimizer.step(&loss.backward()?, lr)?;
            step_seconds += started.elapsed().as_secs_f64();
            steps += 1;
            Ok(StepOutput {
                loss: loss.to_scalar::<f32>()? as f64,
                correct: count_correct(&prepared.logits, labels)?,
            })
        },
        |loss, epoch, batch| {
            TrainingError::Config(format!(
                "training diverged (loss {loss}) at epoch {epoch}, batch {batch}; lower the \
                 learning rate"
            ))
        },
    )?;
    let eval_batch = 256;
    let test_accuracy = robustness::accuracy(model, test, eval_batch)?;
    let mut corrupted = Vec::new();
    for (kind, data) in robustness::corrupted_suite(test, seed)? {
        corrupted.push(CorruptedAccuracy {
            corruption: kind.to_string(),
            accuracy: robustness::accuracy(model, &data, eval_batch)?,
        });
    }
    let corrupted_accuracy =
        corrupted.iter().map(|c| c.accuracy).sum::<f64>() / corrupted.len().max(1) as f64;
    let fgsm_accuracy = robustness::fgsm_accuracy(model, test, spec.fgsm_epsilon, eval_batch)?;
    let filter_use = match family {
        Family::Cnn => robustness::filter_use(model, test, eval_batch)?
            .into_iter()
            .map(|u| FilterUse {
                stage: u.stage,
                channels: u.channels,
                entropy: u.entropy,
                gini: u.gini,
            })
            .collect(),
        Family::Vit => Vec::new(),
    };
    let counterbalance = match &built {
        Model::Vit(vit) => {
            let n = test.len().min(128);
            let (images, _) = test.batch(&(0..n).collect::<Vec<_>>())?;
            vit.counterbalance(&images)?
        }
        Model::Cnn(_) => Vec::new(),
    };
    Ok(RunResult {
        recipe,
        seed,
        test_accuracy,
        corrupted,
        corrupted_accuracy,
        fgsm_epsilon: spec.fgsm_epsilon,
        fgsm_accuracy,
        steps,
        seconds_per_step: step_seconds / steps.max(1) as f64,
        train_seconds: step_seconds,
        epoch_losses: epoch_losses.into_inner(),
        parameters,
        train_images: train.len(),
        test_images: test.len(),
        filter_use,
        counterbalance,
    })
}

/// Mean and sample standard deviation (`None` below two values).
pub fn mean_sd(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.len() > 1).then(|| {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
    });
    (mean, sd)
}

/// One recipe's row of the experiment table.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecipeSummary {
    pub recipe: String,
    pub paper: String,
    pub seeds: usize,
    pub accuracy_mean: f64,
    pub accuracy_sd: Option<f64>,
    pub corrupted_mean: f64,
    pub fgsm_mean: f64,
    pub seconds_per_step: f64,
    /// Mean time per step over the baseline's (Vanilla / class-token ViT) on the same net.
    pub step_time_ratio: Option<f64>,
    /// Mean over stages of the filter-use entropy (CNN runs).
    pub filter_entropy: Option<f64>,
    /// Mean over runs of each layer's position-term correlation (ViT runs).
    pub counterbalance: Vec<Option<f64>>,
    /// The paper's figure for this recipe, when the experiment's setting matches it.
    pub published: Option<Published>,
}

/// A published figure and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub top1: f64,
    pub setting: String,
}

/// MPVG's ViT-Lite figures on CIFAR-100 (the paper's table, as listed in the spec), shown
/// beside CIFAR-100 runs of the same variant. The GAP-only and MPVG-inside variants have no
/// figure in this setting. When our ViT is not ViT-Lite-7/4 (7 layers, dim 256, 4 heads,
/// patch 4, MLP ratio 2) the setting says so.
pub fn published(recipe: Recipe, spec: &ExperimentSpec) -> Option<Published> {
    if !matches!(spec.data, DataSource::Cifar100 { .. }) {
        return None;
    }
    let top1 = match recipe {
        Recipe::Vit(PeVariant::ClassToken) => 74.90,
        Recipe::Vit(PeVariant::LapeGap) => 75.52,
        Recipe::Vit(PeVariant::Pvg) => 76.67,
        Recipe::Vit(PeVariant::Mpvg) => 76.87,
        _ => return None,
    };
    let lite = VitSize {
        dim: 256,
        depth: 7,
        heads: 4,
        patch: 4,
        mlp_ratio: 2,
    };
    let mut setting = "MPVG paper: ViT-Lite-7/4 on CIFAR-100, 300+10 epochs".to_string();
    if spec.vit != lite {
        setting.push_str(&format!(
            "; ours is smaller ({} layers, dim {})",
            spec.vit.depth, spec.vit.dim
        ));
    }
    if spec.epochs < 300 {
        setting.push_str(&format!("; ours ran {} epochs", spec.epochs));
    }
    Some(Published { top1, setting })
}

/// The table of an experiment: one row per recipe that has runs, in the spec's order.
pub fn summarise(spec: &ExperimentSpec, runs: &[RunResult]) -> Vec<RecipeSummary> {
    let baseline = spec.family().ok().map(Recipe::baseline);
    let time_of = |recipe: Recipe| {
        let times: Vec<f64> = runs
            .iter()
            .filter(|r| r.recipe == recipe)
            .map(|r| r.seconds_per_step)
            .collect();
        (!times.is_empty()).then(|| mean_sd(&times).0)
    };
    let baseline_time = baseline.and_then(time_of);
    let mut rows = Vec::new();
    for &recipe in &spec.recipes {
        let mine: Vec<&RunResult> = runs.iter().filter(|r| r.recipe == recipe).collect();
        if mine.is_empty() {
            continue;
        }
        let field = |f: fn(&RunResult) -> f64| -> Vec<f64> { mine.iter().map(|r| f(r)).collect() };
        let (accuracy_mean, accuracy_sd) = mean_sd(&field(|r| r.test_accuracy));
        let seconds_per_step = mean_sd(&field(|r| r.seconds_per_step)).0;
        let entropies: Vec<f64> = mine
            .iter()
            .filter(|r| !r.filter_use.is_empty())
            .map(|r| mean_sd(&r.filter_use.iter().map(|u| u.entropy).collect::<Vec<_>>()).0)
            .collect();
        let layers = mine
            .iter()
            .map(|r| r.counterbalance.len())
            .max()
            .unwrap_or(0);
        let counterbalance = (0..layers)
            .map(|l| {
                let v: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.counterbalance.get(l).copied().flatten())
                    .collect();
                (!v.is_empty()).then(|| mean_sd(&v).0)
            })
            .collect();
        rows.push(RecipeSummary {
            recipe: recipe.name(),
            paper: recipe.paper().into(),
            seeds: mine.len(),
            accuracy_mean,
            accuracy_sd,
            corrupted_mean: mean_sd(&field(|r| r.corrupted_accuracy)).0,
            fgsm_mean: mean_sd(&field(|r| r.fgsm_accuracy)).0,
            seconds_per_step,
            step_time_ratio: baseline_time
                .filter(|t| *t > 0.0)
                .map(|t| seconds_per_step / t),
            filter_entropy: (!entropies.is_empty()).then(|| mean_sd(&entropies).0),
            counterbalance,
            published: published(recipe, spec),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::DigitsForm;
    use crate::compression::data::load_digits;

    #[test]
    fn checked_adds_the_baseline_first_drops_duplicates_and_bounds_sizes() {
        let mut spec = ExperimentSpec::new(vec![Recipe::GuidedSr, Recipe::Mixup, Recipe::GuidedSr]);
        spec.seeds = vec![3, 1, 3];
        let spec = spec.checked().unwrap();
        assert_eq!(
            spec.recipes,
            [Recipe::Vanilla, Recipe::GuidedSr, Recipe::Mixup]
        );
        assert_eq!(spec.seeds, [3, 1]);
        let vit = ExperimentSpec::new(vec![Recipe::Vit(PeVariant::Mpvg)])
            .checked()
            .unwrap();
        assert_eq!(vit.recipes[0], Recipe::Vit(PeVariant::ClassToken));

        let base = || ExperimentSpec::new(vec![Recipe::Mixup]);
        let mut bad = Vec::new();
        bad.push(ExperimentSpec::new(vec![]));
        bad.push(ExperimentSpec::new(vec![
            Recipe::Mixup,
            Recipe::Vit(PeVariant::Gap),
        ]));
        for f in [
            |s: &mut ExperimentSpec| s.epochs = 0,
            |s: &mut ExperimentSpec| s.epochs = MAX_EPOCHS + 1,
            |s: &mut ExperimentSpec| s.batch_size = 1,
            |s: &mut ExperimentSpec| s.batch_size = usize::MAX,
            |s: &mut ExperimentSpec| s.seeds = (0..11).collect(),
            |s: &mut ExperimentSpec| s.seeds = vec![],
            |s: &mut ExperimentSpec| s.seeds = vec![u64::MAX],
            |s: &mut ExperimentSpec| s.train_fraction = f64::NAN,
            |s: &mut ExperimentSpec| s.train_fraction = 1.5,
            |s: &mut ExperimentSpec| s.width = 0.0,
            |s: &mut ExperimentSpec| s.learning_rate = Some(f64::INFINITY),
            |s: &mut ExperimentSpec| s.fgsm_epsilon = -0.1,
            |s: &mut ExperimentSpec| s.mix.alpha = 0.0,
            |s: &mut ExperimentSpec| s.vit.heads = 3,
            |s: &mut ExperimentSpec| s.vit.depth = 10_000,
        ] {
            let mut s = base();
            f(&mut s);
            bad.push(s);
        }
        for s in bad {
            assert!(s.clone().checked().is_err(), "{s:?}");
        }
    }

    #[test]
    fn reduce_keeps_the_fraction_of_every_class_and_follows_the_seed() {
        let (train, _) = load_digits(DigitsForm::Image32).unwrap();
        let small = reduce(&train, 0.1, 7).unwrap();
        for class in 0..10u32 {
            let all = train.labels().iter().filter(|&&l| l == class).count();
            let kept = small.labels().iter().filter(|&&l| l == class).count();
            assert_eq!(
                kept,
                ((all as f64 * 0.1).round() as usize).max(1),
                "class {class}"
            );
        }
        let again = reduce(&train, 0.1, 7).unwrap();
        let other = reduce(&train, 0.1, 8).unwrap();
        let first = |d: &Dataset| d.image(0).unwrap().to_vec();
        assert_eq!(first(&small), first(&again));
        assert!((0..small.len()).any(|i| small.image(i).unwrap() != other.image(i).unwrap()));
        assert_eq!(reduce(&train, 1.0, 7).unwrap().len(), train.len());
    }

    fn run(recipe: Recipe, seed: u64, acc: f64, step: f64) -> RunResult {
        RunResult {
            recipe,
            seed,
            test_accuracy: acc,
            corrupted: vec![],
            corrupted_accuracy: acc / 2.0,
            fgsm_epsilon: 0.01,
            fgsm_accuracy: acc / 4.0,
            steps: 10,
            seconds_per_step: step,
            train_seconds: step * 10.0,
            epoch_losses: vec![],
            parameters: 1,
            train_images: 1,
            test_images: 1,
            filter_use: vec![
                FilterUse {
                    stage: 1,
                    channels: 4,
                    entropy: 0.5,
                    gini: 0.1,
                },
                FilterUse {
                    stage: 2,
                    channels: 4,
                    entropy: 0.7,
                    gini: 0.1,
                },
            ],
            counterbalance: vec![],
        }
    }

    #[test]
    fn summary_by_hand() {
        let spec = ExperimentSpec::new(vec![Recipe::Vanilla, Recipe::CutMix]);
        let runs = [
            run(Recipe::CutMix, 0, 0.80, 0.030),
            run(Recipe::Vanilla, 0, 0.70, 0.010),
            run(Recipe::Vanilla, 1, 0.90, 0.030),
            run(Recipe::CutMix, 1, 0.90, 0.030),
        ];
        let rows = summarise(&spec, &runs);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].recipe, "vanilla");
        assert!((rows[0].accuracy_mean - 0.80).abs() < 1e-12);
        // Sample sd of {0.7, 0.9} = 0.1 * sqrt(2).
        assert!((rows[0].accuracy_sd.unwrap() - 0.1 * 2f64.sqrt()).abs() < 1e-12);
        assert!((rows[1].accuracy_mean - 0.85).abs() < 1e-12);
        assert!((rows[1].corrupted_mean - 0.425).abs() < 1e-12);
        // CutMix 0.030 s per step against Vanilla's mean 0.020 s.
        assert!((rows[1].step_time_ratio.unwrap() - 1.5).abs() < 1e-12);
        assert!((rows[0].filter_entropy.unwrap() - 0.6).abs() < 1e-12);
        assert!(
            rows.iter().all(|r| r.published.is_none()),
            "digits have no paper figure"
        );
        assert_eq!(mean_sd(&[2.0]), (2.0, None));
    }

    #[test]
    fn published_figures_only_for_cifar100_and_say_how_we_differ() {
        let mut spec = ExperimentSpec::new(vec![Recipe::Vit(PeVariant::Mpvg)]);
        assert!(published(Recipe::Vit(PeVariant::Mpvg), &spec).is_none());
        spec.data = DataSource::Cifar100 {
            dir: "/data/cifar-100".into(),
        };
        let p = published(Recipe::Vit(PeVariant::Mpvg), &spec).unwrap();
        assert_eq!(p.top1, 76.87);
        assert!(p.setting.contains("ours is smaller"), "{}", p.setting);
        assert!(published(Recipe::Vit(PeVariant::Gap), &spec).is_none());
        assert!(published(Recipe::Mixup, &spec).is_none());
    }
}
