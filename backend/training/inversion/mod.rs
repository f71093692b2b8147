//! Model inversion: images synthesised from a trained classifier without its data.
//!
//! - [`loss`]: the loss terms (total variation, L2, batch-norm statistics, Adaptive
//!   DeepInversion's competition);
//! - [`generator`]: NaturalInversion's generator, Feature Transfer Pyramid and Adaptive
//!   Channel Scaling;
//! - [`synth`]: one batch of DeepInversion or NaturalInversion, with progress and cancel;
//! - [`images`]: PNGs and the encoders that embed images for PP&PR;
//! - [`spec`]: a whole set (teacher, data, settings, batches, seed) and the teacher's
//!   preparation, shared by the jobs and `elite invert`;
//! - [`store`] and [`jobs`]: sets, batches, images and scores in PostgreSQL; the
//!   `inversion.teacher`, `inversion.batch` and `inversion.score` jobs; the data-free repair
//!   queued as compression experiments. The only parts that touch the database.
//!
//! The teacher is a [`crate::compression::Network`] with batch norm (VGG or ResNet), so the
//! same checkpoint can be inverted and then pruned and repaired on its own synthesised
//! images. Apart from the storage and jobs, everything here is pure computation: no
//! database, no printing.

pub mod generator;
pub mod images;
pub mod jobs;
pub mod loss;
pub mod spec;
pub mod store;
pub mod synth;

pub use images::{Encoder, embed, to_png};
pub use spec::{InversionSpec, TeacherSource};
pub use synth::{BatchOutcome, InversionSettings, LossTerms, Method, Progress, invert_batch};
