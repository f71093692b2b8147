//! Structured pruning of convolutional networks: the pure computational core of the
//! compression area.
//!
//! This module owns
//! - [`model`]: a weight-level representation of CNNs ([`Network`]: a sequence of conv /
//!   batch-norm / ReLU / pool / linear layers and residual basic blocks holding plain candle
//!   tensors), its forward pass, safetensors load/save with PyTorch parameter names, and
//!   constructors for CIFAR VGG (with batch norm; the Neuron Merging authors' VGG-16 with a
//!   `BatchNorm1d` classifier), CIFAR ResNet-20/56/110 (option A or B shortcuts), ResNet-18,
//!   the bottleneck ResNet-50 and LeNet-300-100;
//! - [`count`]: exact parameter and multiply-accumulate (MAC) counts;
//! - [`mod@prune`]: the pruning methods, each a pure function from a network and
//!   [`PruneOptions`] to a smaller network with the same input/output interface
//!   (L1 / L2 norm, geometric median, random, Neuron Merging (official and exact variants),
//!   REPrune filter clustering, REPrune kernel clustering; each module says which points
//!   follow the paper as read and which are the platform's choice);
//! - [`data`]: CIFAR-10/100 binary batches, image folders, the built-in real handwritten
//!   digits (as 32x32 images or 64-d vectors) and a seeded synthetic 10-class set;
//! - [`mod@train`]: SGD training and top-1 evaluation on the CPU;
//! - [`experiment`]: one method at one ratio on a model and a data set, measured;
//! - [`table`]: the paper-style summary (mean +/- sd over runs, published numbers beside
//!   ours where the setting matches).
//!
//! - [`sources`]: where an experiment's model and data come from (checkpoint or demo model;
//!   CIFAR, image folder or synthetic data);
//! - [`store`] and [`jobs`]: experiment rows (ours and imported ones) and the
//!   `compression.experiment` job, the only parts that touch the database.
//!
//! The computational modules never print, touch a database or the network: callers (CLI, server, benches)
//! present the results. User input never panics; it yields a [`CompressionError`].

pub mod count;
pub mod data;
pub mod experiment;
pub mod jobs;
pub mod model;
pub mod prune;
pub mod sources;
pub mod store;
pub mod table;
pub mod train;

use std::path::PathBuf;

pub use count::{LayerCost, ModelCost, count_cost};
pub use data::{
    Cifar100Label, CifarLayout, Dataset, DigitsForm, Normalization, SyntheticConfig, load_cifar10,
    load_cifar100, load_digits, load_image_folder, read_cifar_file, synthetic_dataset,
};
pub use experiment::{
    ExperimentConfig, ExperimentOutcome, ExperimentResult, PruneSchedule, run_experiment,
};
pub use model::{
    BasicBlock, BatchNorm, CifarShortcut, Conv2d, Layer, Linear, Network, ResNetStem, Shortcut,
    Topology, VggConfig, VggItem,
};
pub use prune::{
    Election, LayerRatios, MergeVariant, NeuronMergingOptions, PruneMethod, PruneOptions,
    PruneSite, RepruneFilterOptions, RepruneKernelOptions, SelectionCriterion, prune, prune_sites,
    resolve_keep_counts,
};
pub use train::{LrSchedule, TrainConfig, TrainEvent, evaluate, train, train_epochs};

/// Errors of the compression core. Messages name the offending file, layer or value.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("missing file: {0}")]
    MissingFile(PathBuf),
    #[error("invalid pruning ratio {0}: it must lie in [0, 1)")]
    InvalidRatio(f64),
    #[error(
        "unknown pruning method '{0}' (expected one of: l1, l2, geometric-median, random, neuron-merging, neuron-merging-exact, reprune-filter, reprune-kernel)"
    )]
    UnknownMethod(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("corrupt CIFAR file {path}: {reason}")]
    CorruptCifar { path: PathBuf, reason: String },
    #[error("cannot read image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("invalid safetensors checkpoint: {0}")]
    Checkpoint(String),
    #[error("invalid data set: {0}")]
    Dataset(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias of the compression core.
pub type Result<T> = std::result::Result<T, CompressionError>;

impl CompressionError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            CompressionError::MissingFile(path)
        } else {
            CompressionError::Io { path, source }
        }
    }
}
