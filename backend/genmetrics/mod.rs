//! Generative-model metrics over embedding matrices.
//!
//! What it owns:
//! - P-precision / P-recall (Park & Kim, ICCV 2023) in [`ppr`], and the k-NN baselines of the
//!   `prdc` package (precision, recall, density, coverage; Naeem et al. 2020) in [`prdc`](mod@prdc);
//! - the combined [`evaluate()`] that computes all six with three distance passes and reports
//!   progress;
//! - embedding matrices and their files (`.npy`, `.safetensors`, CSV, raw f32) in
//!   [`embeddings`].
//!
//! - feature extraction: image folders to embeddings with candle encoders ([`encoders`]);
//! - the toy demonstrations of the paper on generated Gaussians ([`toy`]);
//! - storage of sets, results and toy runs ([`store`]) and the job handlers ([`jobs`]), the
//!   only parts that touch the database.
//!
//! The metric code is pure computation: no I/O other than the embedding readers and writers,
//! no clock, no printing. Distances are Euclidean and exact to f64 rounding: the private
//! distance engine (`distance.rs`) finds candidate pairs with blocked f32 SIMD arithmetic and
//! a proven error bound, then recomputes in f64 every pair that can fall inside a radius, so
//! no comparison depends on f32 rounding. No N x M matrix is ever held; memory is linear in
//! N + M. Results are deterministic: they do not depend on the thread count or on the order of
//! the samples (sums are fixed-point or taken in sorted order).

mod cross;
mod distance;
pub mod embeddings;
pub mod encoders;
mod evaluate;
pub mod jobs;
pub mod knn;
pub mod ppr;
pub mod prdc;
pub mod store;
pub mod toy;

pub use distance::{Isa, ProgressFn};
pub use embeddings::{
    Embeddings, encode_npy, load_embeddings, parse_csv, parse_npy, parse_raw_f32,
    parse_safetensors, read_csv, read_npy, read_raw_f32, read_safetensors, write_csv, write_npy,
    write_raw_f32, write_safetensors,
};
pub use evaluate::{AllScores, Params, evaluate};
pub use knn::knn_radii;
pub use ppr::{PprScores, p_precision_recall};
pub use prdc::{PrdcScores, prdc};

/// Result type of this module.
pub type Result<T> = std::result::Result<T, GenMetricsError>;

/// Everything that can go wrong when loading embeddings or computing a metric.
#[derive(Debug, thiserror::Error)]
pub enum GenMetricsError {
    /// A set with no samples or no dimensions.
    #[error("the embedding set is empty ({rows} rows of dimension {dim})")]
    Empty { rows: usize, dim: usize },

    /// `data.len()` disagrees with `rows * dim`.
    #[error(
        "embedding data holds {len} values, but {rows} rows of dimension {dim} need rows * dim"
    )]
    LengthMismatch { rows: usize, dim: usize, len: usize },

    /// A NaN or infinite value.
    #[error("non-finite value {value} at row {row}, column {col}")]
    NonFinite { row: usize, col: usize, value: f32 },

    /// A set given to a metric failed validation; `set` is "real" or "fake".
    #[error("{set} embeddings: {source}")]
    InvalidSet {
        set: &'static str,
        #[source]
        source: Box<GenMetricsError>,
    },

    /// Real and fake embeddings of different widths.
    #[error("real embeddings have dimension {real} but fake embeddings have dimension {fake}")]
    DimMismatch { real: usize, fake: usize },

    /// Fewer than k + 2 samples in a set.
    #[error("the {set} set has {rows} samples, but k = {k} needs at least {needed} (k + 2)")]
    TooFewSamples {
        set: &'static str,
        rows: usize,
        k: usize,
        needed: usize,
    },

    /// A parameter out of range (k = 0, a <= 0, ...).
    #[error("invalid parameter: {0}")]
    InvalidParam(String),

    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A raw f32 file was given without its dimension.
    #[error("{path} is read as raw little-endian f32, which needs the dimension to be given")]
    MissingDim { path: String },

    /// A self-describing file whose dimension differs from the one asked for.
    #[error("{path} has dimension {found}, but dimension {expected} was asked for")]
    FileDimMismatch {
        path: String,
        expected: usize,
        found: usize,
    },

    /// A raw f32 file whose size is not a whole number of rows.
    #[error(
        "raw f32 data is truncated: {len} bytes is not a whole number of rows of {row_bytes} bytes"
    )]
    Truncated { len: usize, row_bytes: usize },

    /// A malformed `.npy` file.
    #[error("invalid .npy file: {0}")]
    Npy(String),

    /// A `.npy` array in column-major order.
    #[error(
        "the .npy array is stored in Fortran (column-major) order; save it in C order \
         (numpy.ascontiguousarray) and try again"
    )]
    NpyFortranOrder,

    /// An array that is not 2-D.
    #[error("expected a 2-D array (samples x dimensions), found shape {shape:?}")]
    NotMatrix { shape: Vec<usize> },

    /// An element type other than f16, bf16, f32, f64.
    #[error("unsupported element type {dtype}; expected f16, bf16, f32 or f64")]
    UnsupportedDtype { dtype: String },

    /// A malformed `.safetensors` file.
    #[error("invalid .safetensors file: {0}")]
    Safetensors(String),

    /// The named tensor is absent.
    #[error("no tensor named '{name}' in the .safetensors file; it holds {names:?}")]
    TensorNotFound { name: String, names: Vec<String> },

    /// Several tensors and no name given.
    #[error("the .safetensors file holds several tensors {names:?}; name the one to use")]
    AmbiguousTensor { names: Vec<String> },

    /// A CSV syntax error.
    #[error("invalid CSV: {0}")]
    Csv(String),

    /// A CSV cell that is not a number.
    #[error("CSV line {line}, column {column}: '{text}' is not a number")]
    CsvCell {
        line: usize,
        column: usize,
        text: String,
    },

    /// An image encoder could not be loaded or run.
    #[error("{0}")]
    Encoder(String),

    /// A CSV line with a different number of cells than the first.
    #[error("CSV line {line} has {found} cells, but earlier lines have {expected}")]
    CsvRagged {
        line: usize,
        expected: usize,
        found: usize,
    },
}

/// Validates a set handed to a metric, naming it in the error.
pub(crate) fn check_set(set: &Embeddings, name: &'static str) -> Result<()> {
    set.validate().map_err(|e| GenMetricsError::InvalidSet {
        set: name,
        source: Box::new(e),
    })
}

/// Validates a real/fake pair for neighbourhood sizes `ks`: both sets valid, same dimension,
/// and at least k + 2 samples in each for the largest k.
pub(crate) fn check_pair(real: &Embeddings, fake: &Embeddings, ks: &[usize]) -> Result<()> {
    check_set(real, "real")?;
    check_set(fake, "fake")?;
    if real.dim != fake.dim {
        return Err(GenMetricsError::DimMismatch {
            real: real.dim,
            fake: fake.dim,
        });
    }
    for &k in ks {
        check_k(k)?;
    }
    let k = ks.iter().copied().max().unwrap_or(1);
    check_rows(real, "real", k)?;
    check_rows(fake, "fake", k)
}

pub(crate) fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(GenMetricsError::InvalidParam(
            "k must be at least 1".to_string(),
        ));
    }
    Ok(())
}

pub(crate) fn check_rows(set: &Embeddings, name: &'static str, k: usize) -> Result<()> {
    let needed = k.saturating_add(2);
    if set.rows < needed {
        return Err(GenMetricsError::TooFewSamples {
            set: name,
            rows: set.rows,
            k,
            needed,
        });
    }
    Ok(())
}
