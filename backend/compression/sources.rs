//! Where an experiment's model and data come from: a safetensors checkpoint or a demo model
//! trained on the spot; CIFAR-10/100 binary folders, image folders, the built-in real digits
//! or the seeded synthetic set. Resolution reads files but computes nothing else.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    Cifar100Label, CompressionError, Dataset, DigitsForm, Network, Normalization, Result,
    SyntheticConfig, TrainConfig, TrainEvent, load_cifar10, load_cifar100, load_digits,
    load_image_folder, synthetic_dataset, train,
};

/// Most synthetic images per class (10 classes of 3x32x32 f32: about 250 MB at this bound).
pub const MAX_SYNTHETIC_PER_CLASS: usize = 2000;

/// A data set specification, as typed on the command line or in a form:
/// `digits` (the built-in real handwritten digits upsampled to 32x32), `digits:64` (the same
/// digits as 64-d vectors, for LeNet-300-100), `synthetic`, `synthetic:N` (N images per
/// class), `nm:SPEC` (SPEC under the Neuron Merging authors' CIFAR normalisation), or a
/// directory holding CIFAR-10 batches
/// (`data_batch_1.bin` ... `test_batch.bin`), CIFAR-100 (`train.bin`, `test.bin`), or images
/// as `class/xxx.png` (with `train/` and `test/` subfolders, or one folder used for both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    Synthetic {
        images_per_class: usize,
        seed: u64,
    },
    Digits {
        form: DigitsForm,
    },
    Cifar10 {
        dir: PathBuf,
    },
    Cifar100 {
        dir: PathBuf,
    },
    Folder {
        dir: PathBuf,
    },
    /// Another source under the Neuron Merging authors' CIFAR normalisation (`nm:SPEC`),
    /// for their checkpoints.
    AuthorsNormalized {
        inner: Box<DataSource>,
    },
}

impl FromStr for DataSource {
    type Err = CompressionError;
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix("nm:") {
            return Ok(DataSource::AuthorsNormalized {
                inner: Box::new(inner.parse()?),
            });
        }
        match text {
            "digits" | "digits:32" => {
                return Ok(DataSource::Digits {
                    form: DigitsForm::Image32,
                });
            }
            "digits:64" | "digits:mlp" => {
                return Ok(DataSource::Digits {
                    form: DigitsForm::Vector64,
                });
            }
            _ if text.starts_with("digits:") => {
                return Err(CompressionError::Config(format!(
                    "{text:?}: expected digits, digits:32 or digits:64"
                )));
            }
            _ => {}
        }
        if let Some(rest) = text.strip_prefix("synthetic") {
            let images_per_class = match rest.strip_prefix(':') {
                Some(n) => n.parse().map_err(|_| {
                    CompressionError::Config(format!(
                        "synthetic:{n}: expected a number of images per class"
                    ))
                })?,
                None if rest.is_empty() => 60,
                None => {
                    return Err(CompressionError::Config(format!(
                        "unknown data source {text:?}"
                    )));
                }
            };
            if !(1..=MAX_SYNTHETIC_PER_CLASS).contains(&images_per_class) {
                return Err(CompressionError::Config(format!(
                    "synthetic:{images_per_class}: between 1 and {MAX_SYNTHETIC_PER_CLASS} images per class"
                )));
            }
            return Ok(DataSource::Synthetic {
                images_per_class,
                seed: 0,
            });
        }
        let dir = PathBuf::from(text);
        if !dir.is_dir() {
            return Err(CompressionError::MissingFile(dir));
        }
        Ok(if dir.join("data_batch_1.bin").exists() {
            DataSource::Cifar10 { dir }
        } else if dir.join("train.bin").exists() && dir.join("test.bin").exists() {
            DataSource::Cifar100 { dir }
        } else {
            DataSource::Folder { dir }
        })
    }
}

impl DataSource {
    /// A short name for tables: `synthetic`, `cifar10`, `cifar100`, or the folder's name.
    pub fn label(&self) -> String {
        match self {
            DataSource::Synthetic { .. } => "synthetic".into(),
            DataSource::Digits {
                form: DigitsForm::Image32,
            } => "digits".into(),
            DataSource::Digits {
                form: DigitsForm::Vector64,
            } => "digits-64".into(),
            DataSource::Cifar10 { .. } => "cifar10".into(),
            DataSource::AuthorsNormalized { inner } => inner.label(),
            DataSource::Cifar100 { .. } => "cifar100".into(),
            DataSource::Folder { dir } => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "images".into()),
        }
    }

    /// Load (train, test).
    pub fn load(&self) -> Result<(Dataset, Dataset)> {
        match self {
            DataSource::Synthetic {
                images_per_class,
                seed,
            } => {
                // Checked again here: a job stored before the bound existed must fail cleanly,
                // not abort the worker on an impossible allocation.
                if *images_per_class > MAX_SYNTHETIC_PER_CLASS {
                    return Err(CompressionError::Config(format!(
                        "synthetic:{images_per_class}: at most {MAX_SYNTHETIC_PER_CLASS} images per class"
                    )));
                }
                let make = |seed| {
                    synthetic_dataset(&SyntheticConfig {
                        images_per_class: *images_per_class,
                        seed,
                        ..Default::default()
                    })
                };
                // Disjoint seeds: the test images are never seen in training.
                Ok((make(*seed)?, make(seed.wrapping_add(1_000_003))?))
            }
            DataSource::Digits { form } => load_digits(*form),
            DataSource::AuthorsNormalized { inner } => {
                let (train, test) = inner.load()?;
                let to = Normalization::NEURON_MERGING_CIFAR;
                Ok((train.renormalized(to)?, test.renormalized(to)?))
            }
            DataSource::Cifar10 { dir } => load_cifar10(dir),
            DataSource::Cifar100 { dir } => load_cifar100(dir, Cifar100Label::Fine),
            DataSource::Folder { dir } => {
                let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
                if train_dir.is_dir() && test_dir.is_dir() {
                    let train = load_image_folder(&train_dir, Normalization::default())?;
                    let test = load_image_folder(&test_dir, Normalization::default())?;
                    Ok((train, test))
                } else {
                    let all = load_image_folder(dir, Normalization::default())?;
                    Ok((all.clone(), all))
                }
            }
        }
    }
}

/// Most epochs a demo model may train.
pub const MAX_DEMO_EPOCHS: usize = 200;

/// The model to prune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSource {
    /// A checkpoint written by `elite train` or `elite prune` (topology in its metadata).
    Checkpoint { path: PathBuf },
    /// A plain PyTorch-named checkpoint (e.g. from `scripts/convert_nm_checkpoint.py`) loaded
    /// into the named architecture (see `Network::by_name`); widths come from the file.
    Named { architecture: String, path: PathBuf },
    /// A model trained here for `epochs` on the experiment's training set: a narrow
    /// VGG-16-BN (width 1/8) for 32x32 images, LeNet-300-100 for other shapes (the digits'
    /// 64-d form).
    Demo { epochs: usize, seed: u64 },
}

impl ModelSource {
    /// `demo` / `demo:EPOCHS`, `ARCH=PATH` (a PyTorch-named checkpoint of a known
    /// architecture), or a checkpoint path.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("demo") {
            let epochs = match rest.strip_prefix(':') {
                Some(n) => n.parse().map_err(|_| {
                    CompressionError::Config(format!("demo:{n}: expected a number of epochs"))
                })?,
                None if rest.is_empty() => 4,
                None => return Err(CompressionError::Config(format!("unknown model {text:?}"))),
            };
            if epochs > MAX_DEMO_EPOCHS {
                return Err(CompressionError::Config(format!(
                    "demo:{epochs}: at most {MAX_DEMO_EPOCHS} epochs"
                )));
            }
            return Ok(ModelSource::Demo { epochs, seed: 0 });
        }
        if let Some((architecture, path)) = text.split_once('=') {
            return Ok(ModelSource::Named {
                architecture: architecture.trim().to_string(),
                path: PathBuf::from(path.trim()),
            });
        }
        Ok(ModelSource::Checkpoint {
            path: PathBuf::from(text),
        })
    }

    pub fn label(&self) -> String {
        match self {
            ModelSource::Checkpoint { path } => path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
            ModelSource::Named { architecture, path } => format!(
                "{architecture}: {}",
                path.file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            ),
            ModelSource::Demo { epochs, .. } => format!("demo model ({epochs} epochs)"),
        }
    }

    /// Load or train the network.
    pub fn load(&self, train_set: &Dataset, progress: &dyn Fn(TrainEvent)) -> Result<Network> {
        match self {
            ModelSource::Checkpoint { path } => load_checkpoint(path),
            ModelSource::Named { architecture, path } => {
                if !path.is_file() {
                    return Err(CompressionError::MissingFile(path.clone()));
                }
                let classes = train_set.num_classes().max(2);
                Network::by_name(architecture, 1.0, classes, train_set.shape(), 0)?
                    .with_weights_from(path)
            }
            ModelSource::Demo { epochs, seed } => {
                if *epochs > MAX_DEMO_EPOCHS {
                    return Err(CompressionError::Config(format!(
                        "demo:{epochs}: at most {MAX_DEMO_EPOCHS} epochs"
                    )));
                }
                let classes = train_set.num_classes().max(2);
                let network = if train_set.shape() == [3, 32, 32] {
                    Network::vgg16_bn_cifar(0.125, classes, *seed)?
                } else {
                    Network::lenet_300_100(train_set.shape(), classes, *seed)?
                };
                let config = TrainConfig {
                    epochs: *epochs,
                    batch_size: 64,
                    learning_rate: 0.05,
                    seed: *seed,
                    ..TrainConfig::default()
                };
                train(&network, train_set, &config, progress)
            }
        }
    }
}

fn load_checkpoint(path: &Path) -> Result<Network> {
    if !path.is_file() {
        return Err(CompressionError::MissingFile(path.to_path_buf()));
    }
    Network::load_safetensors(path)
}
