//! `elite ppr` and `elite embed`: PP&PR and the baselines from embedding files or image
//! folders, and image folders to `.npy` embeddings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use super::progress_bar;
use crate::genmetrics::encoders::{self, Encoder, EncoderKind};
use crate::genmetrics::{self, Embeddings, GenMetricsError, Params};

/// Where a set comes from.
pub enum SetSource {
    File {
        path: PathBuf,
        dim: Option<usize>,
        tensor: Option<String>,
    },
    Images {
        dir: PathBuf,
    },
}

/// The encoder for image-folder sources.
pub struct EncoderChoice {
    pub kind: EncoderKind,
    pub weights: PathBuf,
    pub batch_size: usize,
}

/// `elite ppr --json` prints exactly this object.
#[derive(Debug, Serialize)]
pub struct PprReport {
    pub p_precision: f64,
    pub p_recall: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    pub n_real: usize,
    pub n_fake: usize,
    pub dim: usize,
    pub a: f64,
    pub k: usize,
    pub prdc_k: usize,
    pub seconds: f64,
}

impl PprReport {
    pub fn table(&self) -> String {
        format!(
            "metric        value\n\
             P-precision   {:.6}\nP-recall      {:.6}\nprecision     {:.6}\nrecall        {:.6}\n\
             density       {:.6}\ncoverage      {:.6}\n\
             ({} real, {} fake, dim {}, a = {}, k = {}, prdc k = {}, {:.2} s)",
            self.p_precision,
            self.p_recall,
            self.precision,
            self.recall,
            self.density,
            self.coverage,
            self.n_real,
            self.n_fake,
            self.dim,
            self.a,
            self.k,
            self.prdc_k,
            self.seconds
        )
    }
}

/// Large inputs get a progress bar (pairs of samples to compare).
const PROGRESS_THRESHOLD: u64 = 50_000_000;

fn load_source(
    source: &SetSource,
    encoder: Option<&Encoder>,
) -> Result<Embeddings, GenMetricsError> {
    match source {
        SetSource::File { path, dim, tensor } => {
            genmetrics::load_embeddings(path, *dim, tensor.as_deref())
        }
        SetSource::Images { dir } => {
            let encoder = encoder.ok_or_else(|| {
                GenMetricsError::Encoder("image folders need --encoder and --weights".into())
            })?;
            embed_with_bar(encoder, dir, 32)
        }
    }
}

fn embed_with_bar(
    encoder: &Encoder,
    dir: &Path,
    batch_size: usize,
) -> Result<Embeddings, GenMetricsError> {
    let bar = progress_bar(0, &format!("embedding {}", dir.display()));
    let result = encoders::embed_folder(encoder, dir, batch_size, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    result
}

/// Compute PP&PR and the baselines of two sets.
pub fn ppr(
    real: &SetSource,
    fake: &SetSource,
    encoder: Option<&EncoderChoice>,
    params: Params,
) -> Result<PprReport, GenMetricsError> {
    let encoder = match encoder {
        Some(choice) => Some(Encoder::load(choice.kind, &choice.weights, &Device::Cpu)?),
        None => None,
    };
    let real = load_source(real, encoder.as_ref())?;
    let fake = load_source(fake, encoder.as_ref())?;
    let started = Instant::now();
    let pairs =
        (real.rows as u64) * (real.rows as u64 + 2 * fake.rows as u64) + (fake.rows as u64).pow(2);
    let bar = (pairs >= PROGRESS_THRESHOLD).then(|| progress_bar(pairs, "comparing"));
    let callback = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let scores = genmetrics::evaluate(&real, &fake, &params, Some(&callback))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(PprReport {
        p_precision: scores.ppr.p_precision,
        p_recall: scores.ppr.p_recall,
        precision: scores.prdc.precision,
        recall: scores.prdc.recall,
        density: scores.prdc.density,
        coverage: scores.prdc.coverage,
        n_real: scores.real_count,
        n_fake: scores.fake_count,
        dim: scores.dim,
        a: params.a,
        k: params.k,
        prdc_k: params.prdc_k,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Embed an image folder and write the matrix as `.npy` (f32); returns (rows, dim).
pub fn embed(
    images: &Path,
    choice: &EncoderChoice,
    out: &Path,
) -> Result<(usize, usize), GenMetricsError> {
    let encoder = Encoder::load(choice.kind, &choice.weights, &Device::Cpu)?;
    let set = embed_with_bar(&encoder, images, choice.batch_size)?;
    genmetrics::write_npy(out, &set)?;
    Ok((set.rows, set.dim))
}
