//! The training kit shared by every area that trains networks (compression and training):
//! learning-rate schedules, optimizers, a convolution whose backward pass is fast on the CPU, over candle `Var`s, the standard CIFAR augmentation,
//! soft-target losses and the epoch loop. Pure: no printing, no database, no clock.

pub mod augment;
pub mod conv;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod schedule;

pub use augment::{augmented_batch, padding_values};
pub use conv::conv2d_gather;
pub use fit::{EpochLoop, StepOutput, count_correct};
pub use optim::{Optimizer, OptimizerConfig};
pub use schedule::LrSchedule;
