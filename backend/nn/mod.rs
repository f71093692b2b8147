//! The training kit shared by every area that trains networks (compression and training):
//! learning-rate schedules, optimizers over candle `Var`s, the standard CIFAR augmentation,
//! soft-target losses, the epoch loop, and three custom ops with their own backward passes
//! (convolution, training-mode batch norm, max pooling) that are fast on the CPU and match
//! PyTorch's gradients. Pure: no printing, no database, no clock.

pub mod augment;
pub mod batch_norm;
pub mod conv;
mod cpu;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod schedule;

pub use augment::{augmented_batch, padding_values};
pub use batch_norm::{BatchNormOutput, batch_norm_train};
pub use conv::conv2d;
pub use fit::{EpochLoop, StepOutput, count_correct};
pub use optim::{Optimizer, OptimizerConfig};
pub use pool::max_pool2d;
pub use schedule::LrSchedule;
