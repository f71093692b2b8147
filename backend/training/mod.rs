//! Training recipes from the lab's papers: the pure computational core of the training area.
//!
//! This module owns
//! - [`saliency`]: spectral-residual saliency (FFT via rustfft), Gaussian blur, gradient
//!   saliency maps; everything on plain `f32` slices;
//! - [`mixing`]: the mixing augmentations as pure functions on batches (Input Mixup, CutMix,
//!   SaliencyMix boxes, GuidedMixup's greedy single-cycle pairing and pixel-wise masks,
//!   Catch-up Mix's channel choice);
//! - [`preact`]: PreAct-ResNet-18 (width scalable) built on candle-nn, with a forward pass that
//!   can stop and resume at any stage (what Manifold Mixup and Catch-up Mix need);
//! - [`vit`]: a small ViT with the five position-embedding variants of the MPVG paper;
//! - [`robustness`]: the corrupted test copy, FGSM and the filter-use evenness measure;
//! - [`recipe`]: what one step of each recipe does to a batch;
//! - [`experiment`]: one recipe with one seed trained and measured, and the per-recipe
//!   summary (mean ± sd, time-per-step ratio to the baseline, published figures);
//! - [`inversion`]: DeepInversion and NaturalInversion, images synthesised from a trained
//!   classifier without its data, with their storage, jobs and uses (PP&PR scoring,
//!   data-free repair of pruned networks);
//! - [`store`] and [`jobs`]: experiments and their runs in PostgreSQL and the
//!   `training.run` job, the only parts that touch the database.
//!
//! Nothing here prints, touches a database or reads the clock except where a measurement
//! is a time (the recipe runner times steps and says so).

pub mod experiment;
pub mod inversion;
pub mod jobs;
pub mod mixing;
pub mod preact;
pub mod recipe;
pub mod robustness;
pub mod saliency;
pub mod store;
pub mod vit;

pub use experiment::{ExperimentSpec, RecipeSummary, RunResult, run_one, summarise};
pub use recipe::{Family, LossKind, MixSettings, Recipe};

use candle_core::Tensor;
use candle_nn::VarMap;

/// Errors of the training core. Messages name the offending value.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Compression(#[from] crate::compression::CompressionError),
    #[error("cancelled")]
    Cancelled,
}

/// Result alias of the training core.
pub type Result<T> = std::result::Result<T, TrainingError>;

/// A classifier made of `stages()` consecutive blocks `f_1 .. f_S`; the last block ends in the
/// logits. "Hidden state k" is the output after `k` blocks (k = 0 is the input), which is
/// where Manifold Mixup and Catch-up Mix mix.
pub trait Classifier: Send {
    /// Number of blocks `S`.
    fn stages(&self) -> usize;
    /// Applies blocks `from + 1 ..= to` to hidden state `from`. `train` selects batch
    /// statistics (and updates the running averages of batch norm) or running averages.
    fn forward_range(&self, x: &Tensor, from: usize, to: usize, train: bool) -> Result<Tensor>;
    /// All parameters (and batch-norm running statistics, which never receive gradients).
    fn varmap(&self) -> &VarMap;
    /// Logits of a batch.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_range(x, 0, self.stages(), train)
    }
}

/// Parameters created from one seeded generator, so that a seed fixes a network's initial
/// weights (candle's own initialisers draw from an unseeded generator on the CPU). Every
/// tensor is registered in a [`VarMap`] under its PyTorch-style name.
pub struct Params {
    map: VarMap,
    rng: rand::rngs::StdRng,
}

impl Params {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Params {
            map: VarMap::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn insert(&mut self, name: &str, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let tensor = Tensor::from_vec(values, shape, &candle_core::Device::Cpu)?;
        let var = candle_core::Var::from_tensor(&tensor)?;
        let t = var.as_tensor().clone();
        let mut data = self.map.data().lock().expect("var map lock");
        if data.insert(name.to_string(), var).is_some() {
            return Err(TrainingError::Config(format!(
                "parameter {name} created twice"
            )));
        }
        Ok(t)
    }

    /// Normal(mean, std) values.
    pub fn normal(&mut self, name: &str, shape: &[usize], mean: f32, std: f32) -> Result<Tensor> {
        use rand_distr::Distribution;
        let n: usize = shape.iter().product();
        let dist = rand_distr::Normal::new(mean, std.max(0.0))
            .map_err(|e| TrainingError::Config(format!("normal({mean}, {std}): {e}")))?;
        let values = (0..n).map(|_| dist.sample(&mut self.rng)).collect();
        self.insert(name, values, shape)
    }

    /// Uniform values in `[-bound, bound]`.
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f32) -> Result<Tensor> {
        use rand::Rng;
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|_| self.rng.random_range(-bound..=bound))
            .collect();
        self.insert(name, values, shape)
    }

    /// A constant tensor (batch-norm and layer-norm scales and shifts, running statistics).
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        self.insert(name, vec![value; n], shape)
    }

    /// The generator, for anything else a constructor draws.
    pub fn rng(&mut self) -> &mut rand::rngs::StdRng {
        &mut self.rng
    }

    pub fn into_varmap(self) -> VarMap {
        self.map
    }
}

/// Number of trainable scalars in `map`: everything except batch-norm running statistics.
pub fn count_parameters(map: &VarMap) -> usize {
    let data = map.data().lock().expect("var map lock");
    data.iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, v)| v.as_tensor().elem_count())
        .sum()
}
