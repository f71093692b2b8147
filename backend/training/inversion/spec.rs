//! What an inversion set is made of: a teacher (trained here or loaded), the data it was
//! trained on (for its normalisation, flips and, later, the real images PP&PR compares
//! against and the test split pruned networks are scored on), the method's settings, how
//! many batches and the seed. Shared by the jobs and `elite invert`.

use serde::{Deserialize, Serialize};

use super::synth::InversionSettings;
use crate::compression::sources::{DataSource, ModelSource};
use crate::compression::{Dataset, Network, TrainConfig, TrainEvent, VggConfig, evaluate, train};
use crate::training::{Result, TrainingError};

/// Most batches in one set.
pub const MAX_BATCHES: usize = 100;
/// Most epochs a teacher trained here may take.
pub const MAX_TEACHER_EPOCHS: usize = 200;

/// The teacher to invert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TeacherSource {
    /// Trained here on the data's training split: a VGG-11 with batch norm at `width` (the
    /// spec's small VGG teacher for CPU checks).
    Trained {
        epochs: usize,
        width: f64,
        seed: u64,
    },
    /// A compression checkpoint (admins: a server path).
    #[schema(value_type = Object)]
    Model(ModelSource),
}

impl TeacherSource {
    pub fn label(&self) -> String {
        match self {
            TeacherSource::Trained { epochs, width, .. } => {
                format!("VGG-11-BN x{width} trained here ({epochs} epochs)")
            }
            TeacherSource::Model(m) => m.label(),
        }
    }
}

/// A whole set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InversionSpec {
    pub teacher: TeacherSource,
    #[schema(value_type = Object)]
    pub data: DataSource,
    pub settings: InversionSettings,
    pub batches: usize,
    pub seed: u64,
    /// Adaptive DeepInversion's student: the teacher L1-pruned at this ratio (the network a
    /// data-free repair would fine-tune).
    pub student_ratio: f64,
}

impl InversionSpec {
    pub fn check(&self) -> Result<()> {
        self.settings.check().map_err(TrainingError::Config)?;
        if !(1..=MAX_BATCHES).contains(&self.batches) {
            return Err(TrainingError::Config(format!(
                "batches must be 1..={MAX_BATCHES}"
            )));
        }
        if self.seed > crate::training::experiment::MAX_SEED {
            return Err(TrainingError::Config("seed too large".into()));
        }
        if !(self.student_ratio.is_finite() && (0.0..0.95).contains(&self.student_ratio)) {
            return Err(TrainingError::Config(
                "student_ratio must lie in [0, 0.95)".into(),
            ));
        }
        if let TeacherSource::Trained { epochs, width, .. } = &self.teacher {
            if !(1..=MAX_TEACHER_EPOCHS).contains(epochs) {
                return Err(TrainingError::Config(format!(
                    "teacher epochs must be 1..={MAX_TEACHER_EPOCHS}"
                )));
            }
            if !(width.is_finite() && (0.03..=1.0).contains(width)) {
                return Err(TrainingError::Config(
                    "teacher width must lie in [0.03, 1]".into(),
                ));
            }
        }
        Ok(())
    }

    /// Images in the whole set.
    pub fn images(&self) -> usize {
        self.batches * self.settings.batch_size
    }
}

/// Loads the data (train, test) and loads or trains the teacher; returns the teacher with
/// its accuracy on the test split.
pub fn prepare_teacher(
    spec: &InversionSpec,
    progress: &dyn Fn(TrainEvent),
) -> Result<(Network, Dataset, Dataset, f64)> {
    let (train_set, test_set) = spec.data.load()?;
    let teacher = match &spec.teacher {
        TeacherSource::Trained {
            epochs,
            width,
            seed,
        } => {
            let net = Network::vgg_cifar(
                &VggConfig::vgg11(),
                *width,
                train_set.num_classes().max(2),
                *seed,
            )?;
            let config = TrainConfig {
                epochs: *epochs,
                batch_size: 64,
                learning_rate: 0.05,
                seed: *seed,
                ..TrainConfig::default()
            };
            train(&net, &train_set, &config, progress)?
        }
        TeacherSource::Model(source) => source.load(&train_set, progress)?,
    };
    super::synth::check_teacher(&teacher)?;
    if teacher.input_size != train_set.shape() {
        return Err(TrainingError::Config(format!(
            "the teacher takes {:?} but the data hold {:?}",
            teacher.input_size,
            train_set.shape()
        )));
    }
    let accuracy = evaluate(&teacher, &test_set, 256)?;
    Ok((teacher, train_set, test_set, accuracy))
}

/// The student Adaptive DeepInversion competes against: the teacher L1-pruned at `ratio`.
pub fn student_of(teacher: &Network, ratio: f64) -> Result<Network> {
    let options = crate::compression::PruneOptions::new(crate::compression::PruneMethod::L1, ratio);
    Ok(crate::compression::prune(teacher, &options)?)
}

/// The synthesised images as a data set (for fine-tuning): `images` normalised like the
/// teacher's data.
pub fn synthetic_dataset(
    images: Vec<f32>,
    shape: [usize; 3],
    labels: Vec<u32>,
    classes: usize,
    normalization: crate::compression::Normalization,
    flip_invariant: bool,
) -> Result<Dataset> {
    let names = (0..classes).map(|c| c.to_string()).collect();
    Ok(Dataset::from_normalized(
        images,
        shape,
        labels,
        names,
        normalization,
        flip_invariant,
    )?)
}
