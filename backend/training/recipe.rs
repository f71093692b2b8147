//! The recipes: what one training step does to a batch before the update. Mixing
//! augmentations (Vanilla, Input Mixup, CutMix, SaliencyMix, Manifold Mixup, GuidedMixup with
//! spectral-residual or gradient saliency, Catch-up Mix) run on a CNN; the position-embedding
//! variants of the MPVG paper are plain training of the small ViT.
//!
//! Mixing at the input works on plain `f32` buffers with the pure functions of
//! [`super::mixing`]; mixing of hidden activations (Manifold Mixup, Catch-up Mix) is done
//! with tensor operations so that gradients reach the layers before the mixing point.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::vit::PeVariant;
use super::{Classifier, Result, TrainingError, mixing, saliency};
use crate::nn::loss::{one_hot, soft_bce, soft_cross_entropy};

/// A training recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recipe {
    Vanilla,
    Mixup,
    CutMix,
    SaliencyMix,
    ManifoldMixup,
    /// GuidedMixup with spectral-residual saliency and the greedy single-cycle pairing.
    GuidedSr,
    /// The pairing ablation: GuidedMixup's SR masks with a random permutation.
    GuidedSrRandom,
    /// GuidedMixup with gradient saliency (one extra forward/backward per step).
    GuidedAp,
    CatchupMix,
    /// The small ViT with one position-embedding variant.
    Vit(PeVariant),
}

/// The mixing recipes, in the order pages and tables show them.
pub const MIXING: [Recipe; 9] = [
    Recipe::Vanilla,
    Recipe::Mixup,
    Recipe::CutMix,
    Recipe::SaliencyMix,
    Recipe::ManifoldMixup,
    Recipe::GuidedSr,
    Recipe::GuidedSrRandom,
    Recipe::GuidedAp,
    Recipe::CatchupMix,
];

/// Which network a recipe trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// PreAct-ResNet-18 and the mixing recipes.
    Cnn,
    /// The small ViT and the position-embedding variants.
    Vit,
}

impl Recipe {
    pub fn name(&self) -> String {
        match self {
            Recipe::Vanilla => "vanilla".into(),
            Recipe::Mixup => "mixup".into(),
            Recipe::CutMix => "cutmix".into(),
            Recipe::SaliencyMix => "saliencymix".into(),
            Recipe::ManifoldMixup => "manifold_mixup".into(),
            Recipe::GuidedSr => "guided_sr".into(),
            Recipe::GuidedSrRandom => "guided_sr_random".into(),
            Recipe::GuidedAp => "guided_ap".into(),
            Recipe::CatchupMix => "catchup_mix".into(),
            Recipe::Vit(v) => format!("vit_{}", v.name()),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Recipe::Vit(_) => Family::Vit,
            _ => Family::Cnn,
        }
    }

    /// Every recipe, mixing ones first.
    pub fn all() -> Vec<Recipe> {
        let mut all = MIXING.to_vec();
        all.extend(PeVariant::all().into_iter().map(Recipe::Vit));
        all
    }

    /// The recipe a family's comparisons are made against (time-per-step ratios, "A beats
    /// B"): Vanilla for the CNN, the class-token ViT for the ViT.
    pub fn baseline(family: Family) -> Recipe {
        match family {
            Family::Cnn => Recipe::Vanilla,
            Family::Vit => Recipe::Vit(PeVariant::ClassToken),
        }
    }

    /// The paper a recipe belongs to, for labels.
    pub fn paper(&self) -> &'static str {
        match self {
            Recipe::GuidedSr | Recipe::GuidedSrRandom | Recipe::GuidedAp => {
                "GuidedMixup (AAAI 2023)"
            }
            Recipe::CatchupMix => "Catch-up Mix (AAAI 2024)",
            Recipe::Vit(_) => "MPVG (AAAI 2025)",
            _ => "baseline",
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Recipe {
    type Err = TrainingError;
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Recipe::all()
            .into_iter()
            .find(|r| r.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<String> = Recipe::all().iter().map(|r| r.name()).collect();
                TrainingError::Config(format!(
                    "unknown recipe {:?} (expected one of: {})",
                    s.chars().take(60).collect::<String>(),
                    names.join(", ")
                ))
            })
    }
}

impl Serialize for Recipe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Recipe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The loss on soft targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Soft-target cross-entropy (default).
    #[default]
    CrossEntropy,
    /// Binary cross-entropy of the softmax against the soft target (GuidedMixup's code).
    Bce,
}

/// Mixing hyper-parameters (the papers' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MixSettings {
    /// Beta(alpha, alpha) for Input and Manifold Mixup and Catch-up Mix.
    pub alpha: f32,
    /// Probability that a GuidedMixup step mixes (else it trains on the clean batch);
    /// `None` = the paper's default (0.5 for SR, 0.8 for AP).
    pub guided_mix_prob: Option<f32>,
    /// Deepest hidden state Manifold Mixup mixes at (0 = input; the usual {0, 1, 2}).
    pub manifold_max_stage: usize,
    /// Deepest hidden state Catch-up Mix mixes at (0 = CutMix on the input; 5 = after the
    /// last stage of PreAct-ResNet-18).
    pub catchup_max_stage: usize,
    pub loss: LossKind,
}

impl Default for MixSettings {
    fn default() -> Self {
        MixSettings {
            alpha: 1.0,
            guided_mix_prob: None,
            manifold_max_stage: 2,
            catchup_max_stage: 5,
            loss: LossKind::CrossEntropy,
        }
    }
}

impl MixSettings {
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainingError::Config(m.to_string()));
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 100.0) {
            return bad("alpha must lie in (0, 100]");
        }
        if let Some(p) = self.guided_mix_prob
            && !(p.is_finite() && (0.0..=1.0).contains(&p))
        {
            return bad("the mixing probability must lie in [0, 1]");
        }
        if self.manifold_max_stage > 16 || self.catchup_max_stage > 16 {
            return bad("mixing stages must be at most 16");
        }
        Ok(())
    }
}

/// A batch prepared by a recipe: the logits of the (mixed) batch in training mode and the
/// soft targets they are scored against.
pub struct Prepared {
    pub logits: Tensor,
    pub targets: Tensor,
}

fn buffer(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn image_tensor(values: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, like.dims(), &Device::Cpu)?)
}

fn targets(labels: &[u32], partner: &[usize], lambdas: &[f32], classes: usize) -> Result<Tensor> {
    let v = mixing::soft_targets(labels, partner, lambdas, classes);
    Ok(Tensor::from_vec(v, (labels.len(), classes), &Device::Cpu)?)
}

/// The pairing's permutation as an index tensor.
fn index(partner: &[usize]) -> Result<Tensor> {
    let p: Vec<u32> = partner.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(p, partner.len(), &Device::Cpu)?)
}

/// Runs `recipe`'s forward pass on one batch (training mode). `images` is `B x C x H x W`,
/// `labels` `B` class indices.
pub fn prepare(
    recipe: Recipe,
    settings: &MixSettings,
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    classes: usize,
    rng: &mut StdRng,
) -> Result<Prepared> {
    let (b, c, h, w) = images.dims4()?;
    let label_vec = labels.to_vec1::<u32>()?;
    let stages = model.stages();
    let clean = |model: &dyn Classifier| -> Result<Prepared> {
        Ok(Prepared {
            logits: model.forward(images, true)?,
            targets: one_hot(&label_vec, classes)?,
        })
    };
    match recipe {
        Recipe::Vanilla | Recipe::Vit(_) => clean(model),
        Recipe::Mixup => {
            let lam = mixing::sample_beta(settings.alpha, rng);
            let partner = mixing::random_pairing(b, rng);
            let mixed = mixing::mixup(&buffer(images)?, &partner, lam);
            Ok(Prepared {
                logits: model.forward(&image_tensor(mixed, images)?, true)?,
                targets: targets(&label_vec, &partner, &vec![lam; b], classes)?,
            })
        }
        Recipe::CutMix => {
            let lam = rng.random::<f32>();
            let partner = mixing::random_pairing(b, rng);
            let cut = mixing::cutmix_box(h, w, lam, rng);
            let kept = 1.0 - cut.area_fraction(h, w);
            let mixed = mixing::paste_box(&buffer(images)?, c, h, w, &partner, &vec![cut; b]);
            Ok(Prepared {
                logits: model.forward(&image_tensor(mixed, images)?, true)?,
                targets: targets(&label_vec, &partner, &vec![kept; b], classes)?,
            })
        }
        Recipe::SaliencyMix => {
            let lam = rng.random::<f32>();
            let partner = mixing::random_pairing(b, rng);
            let pixels = buffer(images)?;
            let plane = c * h * w;
            // One box per image, centred on the most salient point of the image it takes
            // the patch from, pasted at the same place.
            let boxes: Vec<mixing::Box> = partner
                .iter()
                .map(|&j| {
                    let s =
                        saliency::guided_sr_saliency(&pixels[j * plane..(j + 1) * plane], c, h, w);
                    mixing::saliency_box(&s, h, w, lam)
                })
                .collect();
            let kept: Vec<f32> = boxes.iter().map(|x| 1.0 - x.area_fraction(h, w)).collect();
            let mixed = mixing::paste_box(&pixels, c, h, w, &partner, &boxes);
            Ok(Prepared {
                logits: model.forward(&image_tensor(mixed, images)?, true)?,
                targets: targets(&label_vec, &partner, &kept, classes)?,
            })
        }
        Recipe::ManifoldMixup => {
            let k = rng.random_range(0..=settings.manifold_max_stage.min(stages - 1));
            let lam = mixing::sample_beta(settings.alpha, rng);
            let partner = mixing::random_pairing(b, rng);
            let hidden = model.forward_range(images, 0, k, true)?;
            let other = hidden.index_select(&index(&partner)?, 0)?;
            let mixed = ((hidden * lam as f64)? + (other * (1.0 - lam as f64))?)?;
            Ok(Prepared {
                logits: model.forward_range(&mixed, k, stages, true)?,
                targets: targets(&label_vec, &partner, &vec![lam; b], classes)?,
            })
        }
        Recipe::GuidedSr | Recipe::GuidedSrRandom | Recipe::GuidedAp => {
            let p = settings.guided_mix_prob.unwrap_or(match recipe {
                Recipe::GuidedAp => 0.8,
                _ => 0.5,
            });
            if rng.random::<f32>() >= p {
                return clean(model);
            }
            let pixels = buffer(images)?;
            let plane = c * h * w;
            let maps: Vec<Vec<f32>> = if recipe == Recipe::GuidedAp {
                let grads = super::robustness::input_gradients(model, images, labels, true)?;
                let g = buffer(&grads)?;
                (0..b)
                    .map(|i| saliency::gradient_saliency(&g[i * plane..(i + 1) * plane], c, h, w))
                    .collect()
            } else {
                (0..b)
                    .map(|i| {
                        saliency::guided_sr_saliency(&pixels[i * plane..(i + 1) * plane], c, h, w)
                    })
                    .collect()
            };
            let partner = if recipe == Recipe::GuidedSrRandom {
                mixing::random_pairing(b, rng)
            } else {
                mixing::greedy_pairing(&maps)
            };
            let (masks, lambdas) = mixing::guided_masks(&maps, &partner);
            let mixed = mixing::mix_pixelwise(&pixels, c, h, w, &masks, &partner);
            Ok(Prepared {
                logits: model.forward(&image_tensor(mixed, images)?, true)?,
                targets: targets(&label_vec, &partner, &lambdas, classes)?,
            })
        }
        Recipe::CatchupMix => {
            let k = rng.random_range(0..=settings.catchup_max_stage.min(stages - 1));
            if k == 0 {
                return prepare(
                    Recipe::CutMix,
                    settings,
                    model,
                    images,
                    labels,
                    classes,
                    rng,
                );
            }
            let partner = mixing::random_pairing(b, rng);
            let lam = mixing::sample_beta(settings.alpha, rng);
            let hidden = model.forward_range(images, 0, k, true)?;
            let (_, ch, hh, ww) = hidden.dims4()?;
            let acts = buffer(&hidden.detach())?;
            let norms = mixing::channel_norms(&acts, b, ch, hh * ww);
            let rfi = mixing::relative_influence(&norms, b, ch, &partner);
            let keep = ((lam * ch as f32).floor() as usize).min(ch);
            let mask = mixing::catchup_keep(&rfi, b, ch, keep);
            let mask: Vec<f32> = mask.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, (b, ch, 1, 1), &Device::Cpu)?;
            let other = hidden.index_select(&index(&partner)?, 0)?;
            let inverse = mask.affine(-1.0, 1.0)?;
            let mixed = (hidden.broadcast_mul(&mask)? + other.broadcast_mul(&inverse)?)?;
            let kept = keep as f32 / ch as f32;
            Ok(Prepared {
                logits: model.forward_range(&mixed, k, stages, true)?,
                targets: targets(&label_vec, &partner, &vec![kept; b], classes)?,
            })
        }
    }
}

/// The loss of a prepared batch.
pub fn loss(kind: LossKind, prepared: &Prepared) -> Result<Tensor> {
    let targets = prepared.targets.to_dtype(DType::F32)?;
    Ok(match kind {
        LossKind::CrossEntropy => soft_cross_entropy(&prepared.logits, &targets)?,
        LossKind::Bce => soft_bce(&prepared.logits, &targets)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::data::{DigitsForm, load_digits};
    use crate::nn::OptimizerConfig;
    use crate::training::preact::PreActResNet18;
    use crate::training::vit::{Vit, VitConfig};
    use candle_core::Var;
    use rand::SeedableRng;

    /// 40 real digits (the first of the test split, all ten classes present).
    fn batch() -> (Tensor, Tensor) {
        let (_, test) = load_digits(DigitsForm::Image32).unwrap();
        let idx: Vec<usize> = (0..40).collect();
        test.batch(&idx).unwrap()
    }

    fn model(recipe: Recipe) -> Box<dyn Classifier> {
        match recipe {
            Recipe::Vit(variant) => {
                let config = VitConfig {
                    image_side: 32,
                    channels: 3,
                    patch: 8,
                    dim: 32,
                    depth: 2,
                    heads: 2,
                    mlp_ratio: 2,
                    num_classes: 10,
                    variant,
                };
                Box::new(Vit::new(config, 3).unwrap())
            }
            _ => Box::new(PreActResNet18::new(0.0625, 10, 3).unwrap()),
        }
    }

    fn clean_loss(model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> f32 {
        let logits = model.forward(images, false).unwrap();
        let targets = one_hot(&labels.to_vec1::<u32>().unwrap(), 10).unwrap();
        soft_cross_entropy(&logits, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Every recipe's steps lower the plain cross-entropy of the batch it trains on: the
    /// mixed targets and the mixing itself point the update the right way.
    #[test]
    fn each_recipe_lowers_the_loss_on_real_digits() {
        let (images, labels) = batch();
        let settings = MixSettings::default();
        for recipe in Recipe::all() {
            let model = model(recipe);
            let vars: Vec<Var> = {
                let data = model.varmap().data().lock().unwrap();
                data.iter()
                    .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            let (config, lr) = match recipe.family() {
                Family::Cnn => (
                    OptimizerConfig::Sgd {
                        momentum: 0.9,
                        weight_decay: 0.0,
                    },
                    0.05,
                ),
                Family::Vit => (OptimizerConfig::AdamW { weight_decay: 0.0 }, 3e-3),
            };
            let mut optimizer = config.build(vars).unwrap();
            // Running statistics of batch norm follow the batch after a few steps in
            // training mode, so the "before" loss uses a model that has seen it once.
            let _ = model.forward(&images, true).unwrap();
            let before = clean_loss(model.as_ref(), &images, &labels);
            let mut rng = StdRng::seed_from_u64(11);
            for _ in 0..8 {
                let prepared = prepare(
                    recipe,
                    &settings,
                    model.as_ref(),
                    &images,
                    &labels,
                    10,
                    &mut rng,
                )
                .unwrap();
                assert_eq!(prepared.logits.dims(), &[40, 10], "{recipe}");
                let sums = prepared.targets.sum(1).unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
                    "{recipe}: soft targets sum to 1"
                );
                let l = loss(settings.loss, &prepared).unwrap();
                optimizer.step(&l.backward().unwrap(), lr).unwrap();
            }
            for _ in 0..3 {
                let _ = model.forward(&images, true).unwrap();
            }
            let after = clean_loss(model.as_ref(), &images, &labels);
            assert!(
                after < before,
                "{recipe}: loss {before:.4} -> {after:.4} did not fall"
            );
        }
    }

    /// Catch-up Mix at a hidden stage: each sample keeps floor(lam C) of its own channels,
    /// so its own label weighs the kept fraction and the partner's the rest.
    #[test]
    fn catchup_mix_labels_by_the_kept_channel_fraction() {
        let (images, labels) = batch();
        let model = PreActResNet18::new(0.0625, 10, 1).unwrap();
        let label_vec = labels.to_vec1::<u32>().unwrap();
        let settings = MixSettings {
            catchup_max_stage: 5,
            ..MixSettings::default()
        };
        let mut seen_hidden = false;
        for seed in 0..12 {
            let mut rng = StdRng::seed_from_u64(seed);
            let p = prepare(
                Recipe::CatchupMix,
                &settings,
                &model,
                &images,
                &labels,
                10,
                &mut rng,
            )
            .unwrap();
            let t = p.targets.to_vec2::<f32>().unwrap();
            // Every row weighs its own label by one value shared over the batch (the kept
            // fraction, a multiple of 1/C for hidden stages).
            let own: Vec<f32> = (0..40).map(|i| t[i][label_vec[i] as usize]).collect();
            let is_hidden = own.iter().all(|&w| {
                [8.0f32, 16.0, 32.0, 64.0]
                    .iter()
                    .any(|c| ((w * c).round() - w * c).abs() < 1e-3)
            });
            seen_hidden |= is_hidden;
            for row in &t {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        assert!(seen_hidden, "some draws mix a hidden stage");
    }
}
