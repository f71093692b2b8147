//! Model inversion: images synthesised from a trained classifier without its data.
//!
//! - [`loss`]: the loss terms (total variation, L2, batch-norm statistics, Adaptive
//!   DeepInversion's competition);
//! - [`generator`]: NaturalInversion's generator, Feature Transfer Pyramid and Adaptive
//!   Channel Scaling;
//! - [`synth`]: one batch of DeepInversion or NaturalInversion, with progress and cancel;
//! - [`images`]: PNGs and the encoders that embed images for PP&PR.
//!
//! The teacher is a [`crate::compression::Network`] with batch norm (VGG or ResNet), so the
//! same checkpoint can be inverted and then pruned and repaired on its own synthesised
//! images. Everything here is pure computation: no database, no printing.

pub mod generator;
pub mod images;
pub mod loss;
pub mod synth;

pub use images::{Encoder, embed, to_png};
pub use synth::{BatchOutcome, InversionSettings, LossTerms, Method, Progress, invert_batch};
