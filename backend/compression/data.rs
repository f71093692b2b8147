//! Image data sets for training and evaluation: images stored normalised (`(x/255 - mean) /
//! std` per channel) in `N x C x H x W` layout (3 x 32 x 32 for every source but the digits'
//! vector form), with integer labels.
//!
//! Sources:
//! - the CIFAR-10 / CIFAR-100 binary releases (`data_batch_1..5.bin` + `test_batch.bin`;
//!   `train.bin` + `test.bin` with coarse and fine labels), checked for truncation and
//!   out-of-range labels;
//! - image folders `root/<class>/<image>` (png, jpeg, webp, gif, bmp), resized to 32x32;
//! - a seeded synthetic 10-class set generated in memory (5 shapes x 2 textures, with random
//!   colours, positions, sizes, backgrounds and noise), for tests and offline demos;
//! - the 1,797 real 8x8 handwritten digits built into the binary ([`load_digits`]; UCI
//!   "Optical Recognition of Handwritten Digits", CC BY 4.0, as shipped by scikit-learn),
//!   upsampled to 3 x 32 x 32 for the CNNs or kept as 1 x 8 x 8 (64 values) for an MLP.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CompressionError, Result};

/// Side of the square images handled here.
pub const IMAGE_SIDE: usize = 32;
/// Values per image (`3 * 32 * 32`).
pub const IMAGE_LEN: usize = 3 * IMAGE_SIDE * IMAGE_SIDE;

/// Per-channel normalisation `(x / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// The CIFAR-10/100 normalisation of the Neuron Merging authors' code (mean of CIFAR-10,
    /// the widespread std (0.2023, 0.1994, 0.2010)); their checkpoints expect it.
    pub const NEURON_MERGING_CIFAR: Normalization = Normalization {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2023, 0.1994, 0.2010],
    };
}

impl Default for Normalization {
    /// The usual CIFAR-10 training-set statistics.
    fn default() -> Self {
        Normalization {
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
        }
    }
}

/// A labelled set of normalised images of one shape.
#[derive(Debug, Clone)]
pub struct Dataset {
    images: Vec<f32>,
    /// `[channels, height, width]` of every image.
    shape: [usize; 3],
    /// Whether a horizontal flip keeps an image's class (false for digits).
    flip_invariant: bool,
    labels: Vec<u32>,
    num_classes: usize,
    class_names: Vec<String>,
    normalization: Normalization,
}

impl Dataset {
    /// Builds a data set from raw `u8` pixels in CHW order (`N * 3072` bytes).
    pub fn from_u8_images(
        pixels: &[u8],
        labels: Vec<u32>,
        class_names: Vec<String>,
        normalization: Normalization,
    ) -> Result<Dataset> {
        if pixels.len() != labels.len() * IMAGE_LEN {
            return Err(CompressionError::Dataset(format!(
                "{} pixel bytes do not hold {} images of 3x32x32",
                pixels.len(),
                labels.len()
            )));
        }
        if normalization
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(CompressionError::Dataset(
                "normalisation std must be positive".into(),
            ));
        }
        let num_classes = class_names.len();
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
            return Err(CompressionError::Dataset(format!(
                "label {bad} out of range for {num_classes} classes"
            )));
        }
        let plane = IMAGE_SIDE * IMAGE_SIDE;
        let images = pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = (i % IMAGE_LEN) / plane;
                (p as f32 / 255.0 - normalization.mean[c]) / normalization.std[c]
            })
            .collect();
        Ok(Dataset {
            images,
            shape: [3, IMAGE_SIDE, IMAGE_SIDE],
            flip_invariant: true,
            labels,
            num_classes,
            class_names,
            normalization,
        })
    }

    /// Builds a data set from already normalised values (`N * C * H * W`, CHW per image).
    pub fn from_normalized(
        images: Vec<f32>,
        shape: [usize; 3],
        labels: Vec<u32>,
        class_names: Vec<String>,
        normalization: Normalization,
        flip_invariant: bool,
    ) -> Result<Dataset> {
        let len: usize = shape.iter().product();
        if len == 0 || images.len() != labels.len() * len {
            return Err(CompressionError::Dataset(format!(
                "{} values do not hold {} images of {shape:?}",
                images.len(),
                labels.len()
            )));
        }
        if images.iter().any(|v| !v.is_finite()) {
            return Err(CompressionError::Dataset("non-finite pixel value".into()));
        }
        let num_classes = class_names.len();
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
            return Err(CompressionError::Dataset(format!(
                "label {bad} out of range for {num_classes} classes"
            )));
        }
        Ok(Dataset {
            images,
            shape,
            flip_invariant,
            labels,
            num_classes,
            class_names,
            normalization,
        })
    }

    /// The same images under another normalisation (undo this one, apply `to`), for
    /// 3-channel sets; other shapes are refused.
    pub fn renormalized(&self, to: Normalization) -> Result<Dataset> {
        if self.shape[0] != 3 || to.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(CompressionError::Dataset(format!(
                "cannot renormalise images of {:?} to {to:?}",
                self.shape
            )));
        }
        let plane = self.shape[1] * self.shape[2];
        let len = self.image_len();
        let from = self.normalization;
        let images = self
            .images
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i % len) / plane;
                let raw = v * from.std[c] + from.mean[c];
                (raw - to.mean[c]) / to.std[c]
            })
            .collect();
        Ok(Dataset {
            images,
            normalization: to,
            ..self.clone()
        })
    }

    /// `[channels, height, width]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether a horizontal flip keeps an image's class.
    pub fn flip_invariant(&self) -> bool {
        self.flip_invariant
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// Normalised image `i` (CHW, [`Dataset::image_len`] values), or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let len = self.image_len();
        self.images.get(i * len..(i + 1) * len)
    }

    /// Image `i` for indices already checked against `len()`.
    pub(crate) fn image_checked(&self, i: usize) -> Result<&[f32]> {
        self.image(i).ok_or_else(|| {
            CompressionError::Dataset(format!("index {i} out of range for {} images", self.len()))
        })
    }

    /// All images as an `N x C x H x W` tensor.
    pub fn images_tensor(&self) -> Result<Tensor> {
        let [c, h, w] = self.shape;
        Ok(Tensor::from_vec(
            self.images.clone(),
            (self.len(), c, h, w),
            &Device::Cpu,
        )?)
    }

    /// All labels as a `u32` tensor of length N.
    pub fn labels_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.labels.clone(),
            self.len(),
            &Device::Cpu,
        )?)
    }

    /// Images and labels of the given indices, as tensors.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor)> {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image_checked(i)?);
            labels.push(self.labels[i]);
        }
        let [c, h, w] = self.shape;
        Ok((
            Tensor::from_vec(images, (indices.len(), c, h, w), &Device::Cpu)?,
            Tensor::from_vec(labels, indices.len(), &Device::Cpu)?,
        ))
    }

    /// The images at `indices`, as a new data set with the same classes.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image_checked(i)?);
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            images,
            shape: self.shape,
            flip_invariant: self.flip_invariant,
            labels,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            normalization: self.normalization,
        })
    }

    /// The first `n` images (all if `n` exceeds the size).
    pub fn take(&self, n: usize) -> Result<Dataset> {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }
}

// ----- CIFAR --------------------------------------------------------------------------------

/// Which label of a CIFAR-100 record to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cifar100Label {
    /// The 20 super-classes.
    Coarse,
    /// The 100 classes.
    Fine,
}

/// Record layout of a CIFAR binary file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarLayout {
    /// `<label byte><3072 pixel bytes>`, labels 0..10.
    Cifar10,
    /// `<coarse byte><fine byte><3072 pixel bytes>`, coarse 0..20, fine 0..100.
    Cifar100(Cifar100Label),
}

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Reads one CIFAR binary file into raw CHW pixels and labels.
pub fn read_cifar_file(path: &Path, layout: CifarLayout) -> Result<(Vec<u8>, Vec<u32>)> {
    let bytes = std::fs::read(path).map_err(|e| CompressionError::io(path, e))?;
    let (header, label_limit, label_offset) = match layout {
        CifarLayout::Cifar10 => (1usize, 10u32, 0usize),
        CifarLayout::Cifar100(Cifar100Label::Coarse) => (2, 20, 0),
        CifarLayout::Cifar100(Cifar100Label::Fine) => (2, 100, 1),
    };
    let record = header + IMAGE_LEN;
    let corrupt = |reason: String| CompressionError::CorruptCifar {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    if bytes.len() % record != 0 {
        return Err(corrupt(format!(
            "{} bytes is not a whole number of {record}-byte records (truncated or wrong format)",
            bytes.len()
        )));
    }
    let count = bytes.len() / record;
    let mut pixels = Vec::with_capacity(count * IMAGE_LEN);
    let mut labels = Vec::with_capacity(count);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[label_offset] as u32;
        if label >= label_limit {
            return Err(corrupt(format!(
                "record {i} has label {label}, expected below {label_limit}"
            )));
        }
        if header == 2 && rec[0] >= 20 {
            return Err(corrupt(format!(
                "record {i} has coarse label {}, expected below 20",
                rec[0]
            )));
        }
        labels.push(label);
        pixels.extend_from_slice(&rec[header..]);
    }
    Ok((pixels, labels))
}

fn first_existing_dir(dir: &Path, nested: &str, probe: &str) -> PathBuf {
    let inner = dir.join(nested);
    if !dir.join(probe).exists() && inner.join(probe).exists() {
        inner
    } else {
        dir.to_path_buf()
    }
}

fn read_names(path: &Path, expected: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (names.len() == expected).then_some(names)
}

fn read_cifar_files(files: &[PathBuf], layout: CifarLayout) -> Result<(Vec<u8>, Vec<u32>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let (p, l) = read_cifar_file(f, layout)?;
        pixels.extend(p);
        labels.extend(l);
    }
    Ok((pixels, labels))
}

/// Loads CIFAR-10 (binary version) from `dir` or `dir/cifar-10-batches-bin`:
/// `(train: data_batch_1..5.bin, test: test_batch.bin)`, normalised with the CIFAR-10
/// statistics. Class names come from `batches.meta.txt` when present.
pub fn load_cifar10(dir: &Path) -> Result<(Dataset, Dataset)> {
    let dir = first_existing_dir(dir, "cifar-10-batches-bin", "test_batch.bin");
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    let test_files = vec![dir.join("test_batch.bin")];
    for f in train_files.iter().chain(&test_files) {
        if !f.exists() {
            return Err(CompressionError::MissingFile(f.clone()));
        }
    }
    let names = read_names(&dir.join("batches.meta.txt"), 10)
        .unwrap_or_else(|| CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    let (p, l) = read_cifar_files(&train_files, CifarLayout::Cifar10)?;
    let train = Dataset::from_u8_images(&p, l, names.clone(), Normalization::default())?;
    let (p, l) = read_cifar_files(&test_files, CifarLayout::Cifar10)?;
    let test = Dataset::from_u8_images(&p, l, names, Normalization::default())?;
    Ok((train, test))
}

/// Loads CIFAR-100 (binary version) from `dir` or `dir/cifar-100-binary`:
/// `(train.bin, test.bin)` with the chosen label. Class names come from
/// `fine_label_names.txt` / `coarse_label_names.txt` when present.
pub fn load_cifar100(dir: &Path, label: Cifar100Label) -> Result<(Dataset, Dataset)> {
    let dir = first_existing_dir(dir, "cifar-100-binary", "test.bin");
    let (train_file, test_file) = (dir.join("train.bin"), dir.join("test.bin"));
    for f in [&train_file, &test_file] {
        if !f.exists() {
            return Err(CompressionError::MissingFile(f.clone()));
        }
    }
    let (count, names_file) = match label {
        Cifar100Label::Coarse => (20, "coarse_label_names.txt"),
        Cifar100Label::Fine => (100, "fine_label_names.txt"),
    };
    let names = read_names(&dir.join(names_file), count)
        .unwrap_or_else(|| (0..count).map(|i| format!("class_{i}")).collect());
    // CIFAR-100 training-set statistics.
    let norm = Normalization {
        mean: [0.5071, 0.4865, 0.4409],
        std: [0.2673, 0.2564, 0.2762],
    };
    let layout = CifarLayout::Cifar100(label);
    let (p, l) = read_cifar_file(&train_file, layout)?;
    let train = Dataset::from_u8_images(&p, l, names.clone(), norm)?;
    let (p, l) = read_cifar_file(&test_file, layout)?;
    let test = Dataset::from_u8_images(&p, l, names, norm)?;
    Ok((train, test))
}

// ----- image folders ------------------------------------------------------------------------

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CompressionError::io(dir, e))? {
        let entry = entry.map_err(|e| CompressionError::io(dir, e))?;
        entries.push(entry.path());
    }
    entries.sort();
    Ok(entries)
}

/// Loads `root/<class>/<image>` (classes = sub-directories in sorted order; images with
/// extensions png, jpg, jpeg, webp, gif, bmp in sorted order), converted to RGB and resized
/// to 32x32 (bilinear, aspect ratio not kept). An unreadable image is an error naming it.
pub fn load_image_folder(root: &Path, normalization: Normalization) -> Result<Dataset> {
    if !root.is_dir() {
        return Err(CompressionError::MissingFile(root.to_path_buf()));
    }
    let class_dirs: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.len() < 2 {
        return Err(CompressionError::Dataset(format!(
            "{} needs at least two class sub-directories, found {}",
            root.display(),
            class_dirs.len()
        )));
    }
    let mut files = Vec::new();
    let mut class_names = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        class_names.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for f in sorted_entries(dir)? {
            let ext = f
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if f.is_file() && IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                files.push((f, label as u32));
            }
        }
    }
    if files.is_empty() {
        return Err(CompressionError::Dataset(format!(
            "no images found under {}",
            root.display()
        )));
    }
    let decoded: Vec<Result<Vec<u8>>> = files.par_iter().map(|(f, _)| decode_image(f)).collect();
    let mut pixels = Vec::with_capacity(files.len() * IMAGE_LEN);
    for d in decoded {
        pixels.extend(d?);
    }
    let labels = files.iter().map(|(_, l)| *l).collect();
    Dataset::from_u8_images(&pixels, labels, class_names, normalization)
}

/// Decodes one image file into 32x32 CHW bytes.
fn decode_image(path: &Path) -> Result<Vec<u8>> {
    let img = image::open(path).map_err(|e| CompressionError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let side = IMAGE_SIDE as u32;
    let rgb = if img.width() == side && img.height() == side {
        img.to_rgb8()
    } else {
        img.resize_exact(side, side, image::imageops::FilterType::Triangle)
            .to_rgb8()
    };
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    let mut chw = vec![0u8; IMAGE_LEN];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px.0[c];
        }
    }
    Ok(chw)
}

// ----- digits -------------------------------------------------------------------------------

/// The built-in digits: 1,797 rows `label,p0..p63` (pixels 0-16, row-major 8x8).
const DIGITS_CSV: &str = include_str!("../../tests/data/digits/digits.csv");

/// Number of images in the built-in digits set.
pub const DIGITS_COUNT: usize = 1797;

/// How the 8x8 digits are presented to a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DigitsForm {
    /// 3 x 32 x 32: every pixel becomes a 4x4 block (nearest-neighbour upsampling), the
    /// grey value repeated in the three channels, for the CIFAR-sized CNNs.
    #[default]
    Image32,
    /// 1 x 8 x 8 (64 values), for an MLP such as LeNet-300-100.
    Vector64,
}

/// Parses the built-in CSV into `(pixels 0-16, labels)`.
fn parse_digits() -> Result<(Vec<u8>, Vec<u32>)> {
    let bad = |line: usize, what: &str| {
        CompressionError::Dataset(format!("built-in digits, line {}: {what}", line + 1))
    };
    let mut pixels = Vec::with_capacity(DIGITS_COUNT * 64);
    let mut labels = Vec::with_capacity(DIGITS_COUNT);
    for (line, row) in DIGITS_CSV.lines().enumerate().skip(1) {
        if row.trim().is_empty() {
            continue;
        }
        let mut fields = row.split(',');
        let label: u32 = fields
            .next()
            .and_then(|f| f.trim().parse().ok())
            .filter(|l| *l < 10)
            .ok_or_else(|| bad(line, "label must be 0-9"))?;
        let before = pixels.len();
        for f in fields {
            let v: u8 = f
                .trim()
                .parse()
                .ok()
                .filter(|v| *v <= 16)
                .ok_or_else(|| bad(line, "pixels must be 0-16"))?;
            pixels.push(v);
        }
        if pixels.len() - before != 64 {
            return Err(bad(line, "expected 64 pixels"));
        }
        labels.push(label);
    }
    Ok((pixels, labels))
}

/// The built-in digits as (train, test): a fixed split where every fifth image (index
/// `i % 5 == 4`, 359 images) is a test image and the other 1,438 train. Pixels are scaled
/// to `[0, 1]` (`/16`) and standardised with the training images' mean and standard
/// deviation (one value for all channels, recorded as the normalisation).
pub fn load_digits(form: DigitsForm) -> Result<(Dataset, Dataset)> {
    let (pixels, labels) = parse_digits()?;
    let n = labels.len();
    let scaled: Vec<f32> = pixels.iter().map(|&p| p as f32 / 16.0).collect();
    let is_test = |i: usize| i % 5 == 4;
    let train_values: Vec<f32> = (0..n)
        .filter(|&i| !is_test(i))
        .flat_map(|i| scaled[i * 64..(i + 1) * 64].iter().copied())
        .collect();
    let count = train_values.len().max(1) as f64;
    let mean = train_values.iter().map(|&v| v as f64).sum::<f64>() / count;
    let var = train_values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / count;
    let std = var.sqrt().max(1e-6);
    let normalization = Normalization {
        mean: [mean as f32; 3],
        std: [std as f32; 3],
    };
    let (shape, upsample) = match form {
        DigitsForm::Image32 => ([3, IMAGE_SIDE, IMAGE_SIDE], IMAGE_SIDE / 8),
        DigitsForm::Vector64 => ([1, 8, 8], 1),
    };
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let build = |test: bool| {
        let mut images = Vec::new();
        let mut ls = Vec::new();
        for i in (0..n).filter(|&i| is_test(i) == test) {
            let img = &scaled[i * 64..(i + 1) * 64];
            for _ in 0..shape[0] {
                for y in 0..shape[1] {
                    for x in 0..shape[2] {
                        let v = img[(y / upsample) * 8 + x / upsample] as f64;
                        images.push(((v - mean) / std) as f32);
                    }
                }
            }
            ls.push(labels[i]);
        }
        Dataset::from_normalized(images, shape, ls, names.clone(), normalization, false)
    };
    Ok((build(false)?, build(true)?))
}

// ----- synthetic set ------------------------------------------------------------------------

/// Parameters of the synthetic data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    pub images_per_class: usize,
    pub seed: u64,
    /// Standard deviation of the per-pixel noise, in `[0, 1]` intensity units.
    pub noise: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            images_per_class: 100,
            seed: 0,
            noise: 0.08,
        }
    }
}

const SHAPES: [&str; 5] = ["disk", "square", "triangle", "ring", "cross"];
const TEXTURES: [&str; 2] = ["solid", "striped"];
const PALETTE: [[f32; 3]; 6] = [
    [0.95, 0.25, 0.2],
    [0.2, 0.85, 0.3],
    [0.25, 0.4, 0.95],
    [0.95, 0.85, 0.2],
    [0.85, 0.3, 0.9],
    [0.2, 0.9, 0.9],
];

/// Class names of the synthetic set: `<shape>-<texture>`, class `c` having shape `c % 5`
/// and texture `c / 5`.
pub fn synthetic_class_names() -> Vec<String> {
    (0..10)
        .map(|c| format!("{}-{}", SHAPES[c % 5], TEXTURES[c / 5]))
        .collect()
}

/// Generates the seeded synthetic 10-class set (classes interleaved: image `i` has class
/// `i % 10`). Class = shape (disk, square, triangle, ring, cross) x texture (solid,
/// striped); colour (6 hues, jittered), position, size, stripe orientation and phase,
/// background colour and pixel noise vary freely. The same config always yields the same
/// images, independent of thread count.
pub fn synthetic_dataset(config: &SyntheticConfig) -> Result<Dataset> {
    if config.images_per_class == 0 {
        return Err(CompressionError::Dataset(
            "images_per_class must be at least 1".into(),
        ));
    }
    if !(config.noise.is_finite() && (0.0..=1.0).contains(&config.noise)) {
        return Err(CompressionError::Dataset(format!(
            "noise must lie in [0, 1], got {}",
            config.noise
        )));
    }
    let n = config.images_per_class * 10;
    let images: Vec<Vec<u8>> = (0..n)
        .into_par_iter()
        .map(|i| synthetic_image(config, i))
        .collect();
    let pixels: Vec<u8> = images.into_iter().flatten().collect();
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    Dataset::from_u8_images(
        &pixels,
        labels,
        synthetic_class_names(),
        Normalization::default(),
    )
}

fn synthetic_image(config: &SyntheticConfig, index: usize) -> Vec<u8> {
    let class = index % 10;
    let (shape, striped) = (class % 5, class >= 5);
    let mixed = config
        .seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut rng = StdRng::seed_from_u64(mixed);
    let mut fg = PALETTE[rng.random_range(0..PALETTE.len())];
    for v in &mut fg {
        *v = (*v + rng.random_range(-0.08..0.08f32)).clamp(0.0, 1.0);
    }
    let bg: [f32; 3] = [
        rng.random_range(0.0..0.35),
        rng.random_range(0.0..0.35),
        rng.random_range(0.0..0.35),
    ];
    let cx = 15.5 + rng.random_range(-4.0..4.0f32);
    let cy = 15.5 + rng.random_range(-4.0..4.0f32);
    let r = rng.random_range(7.0..11.0f32);
    let orientation = rng.random_range(0..3u8);
    let phase = rng.random_range(0..4u32);
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    let mut out = vec![0u8; IMAGE_LEN];
    for y in 0..IMAGE_SIDE {
        for x in 0..IMAGE_SIDE {
            let dx = x as f32 - cx;
            let dy = y as f32 - cy;
            let inside = match shape {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
                2 => dy >= -r && dy <= 0.8 * r && dx.abs() <= (dy + r) / 1.8,
                3 => {
                    let d2 = dx * dx + dy * dy;
                    d2 <= r * r && d2 >= (0.55 * r) * (0.55 * r)
                }
                _ => {
                    (dx.abs() <= 0.3 * r && dy.abs() <= r) || (dy.abs() <= 0.3 * r && dx.abs() <= r)
                }
            };
            let mut colour = bg;
            if inside {
                let lit = if striped {
                    let coord = match orientation {
                        0 => y as u32,
                        1 => x as u32,
                        _ => (x + y) as u32,
                    };
                    (coord + phase) % 4 < 2
                } else {
                    true
                };
                colour = if lit {
                    fg
                } else {
                    [fg[0] * 0.3, fg[1] * 0.3, fg[2] * 0.3]
                };
            }
            for c in 0..3 {
                let noise = if config.noise > 0.0 {
                    // Sum of two uniforms: cheap, bounded, roughly bell-shaped.
                    (rng.random::<f32>() + rng.random::<f32>() - 1.0) * config.noise * 1.7
                } else {
                    0.0
                };
                let v = (colour[c] + noise).clamp(0.0, 1.0);
                out[c * plane + y * IMAGE_SIDE + x] = (v * 255.0).round() as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_deterministic_and_balanced() {
        let cfg = SyntheticConfig {
            images_per_class: 3,
            seed: 7,
            noise: 0.05,
        };
        let a = synthetic_dataset(&cfg).unwrap();
        let b = synthetic_dataset(&cfg).unwrap();
        assert_eq!(a.len(), 30);
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels(), b.labels());
        for c in 0..10u32 {
            assert_eq!(a.labels().iter().filter(|&&l| l == c).count(), 3);
        }
        let other = synthetic_dataset(&SyntheticConfig { seed: 8, ..cfg }).unwrap();
        assert_ne!(a.images, other.images);
    }

    #[test]
    fn digits_split_shapes_and_values() {
        let (train, test) = load_digits(DigitsForm::Vector64).unwrap();
        assert_eq!(train.len() + test.len(), DIGITS_COUNT);
        // Indices 4, 9, ..., 1794: floor((1797 - 5) / 5) + 1 = 359 test images.
        assert_eq!(test.len(), 359);
        assert_eq!(train.shape(), [1, 8, 8]);
        assert!(!train.flip_invariant());
        // The first row of the CSV is a 0 whose first pixels are 0, 0, 5, 13.
        assert_eq!(train.labels()[0], 0);
        let n = train.normalization();
        let first = train.image(0).unwrap();
        let back = |v: f32| ((v * n.std[0] + n.mean[0]) * 16.0).round();
        assert_eq!(
            [
                back(first[0]),
                back(first[1]),
                back(first[2]),
                back(first[3])
            ],
            [0.0, 0.0, 5.0, 13.0]
        );
        let (big, _) = load_digits(DigitsForm::Image32).unwrap();
        assert_eq!(big.shape(), [3, 32, 32]);
        let img = big.image(0).unwrap();
        // Pixel (0, 2) of the 8x8 image covers rows 0-3, columns 8-11 of every channel.
        for c in 0..3 {
            for y in 0..4 {
                for x in 8..12 {
                    assert_eq!(img[c * 1024 + y * 32 + x], first[2]);
                }
            }
        }
        for c in 0..10u32 {
            assert!(train.labels().iter().filter(|&&l| l == c).count() > 120);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(
            Dataset::from_u8_images(
                &[0; 10],
                vec![0],
                vec!["a".into()],
                Normalization::default()
            )
            .is_err()
        );
        assert!(
            Dataset::from_u8_images(
                &[0; IMAGE_LEN],
                vec![3],
                vec!["a".into(), "b".into()],
                Normalization::default()
            )
            .is_err()
        );
        assert!(
            synthetic_dataset(&SyntheticConfig {
                images_per_class: 0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
