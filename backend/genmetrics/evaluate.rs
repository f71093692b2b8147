//! All six metrics in one go.
//!
//! What it owns: the parameters and combined result types, and the pipeline that every entry
//! point runs: validate, pack both sets once, one k-NN pass per set (keeping max(k, prdc_k)
//! neighbours, so PP&PR and prdc share it), then one real x fake pass that feeds both metric
//! families. That is three O(N^2 D) passes in all, reported through an optional progress
//! callback.

use serde::{Deserialize, Serialize};

use super::cross::{CrossRequest, PprRadii, PrdcRadii, real_fake_pass};
use super::distance::{Frame, Isa, Packed, Progress, cross_pass_units, self_pass_units};
use super::knn::knn_lists;
use super::ppr::{PprScores, finish_ppr, unreachable_scores};
use super::prdc::{PrdcScores, finish_prdc};
use super::{Embeddings, GenMetricsError, Result, check_pair};

pub use super::distance::ProgressFn;

/// Parameters of [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// PP&PR radius scale (default 1.2).
    pub a: f64,
    /// PP&PR neighbour rank (default 4).
    pub k: usize,
    /// prdc neighbour rank (default 5).
    pub prdc_k: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            a: 1.2,
            k: 4,
            prdc_k: 5,
        }
    }
}

/// PP&PR and the prdc baselines of one real/fake pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllScores {
    /// P-precision and P-recall.
    pub ppr: PprScores,
    /// k-NN precision, recall, density, coverage.
    pub prdc: PrdcScores,
    /// Number of real samples.
    pub real_count: usize,
    /// Number of fake samples.
    pub fake_count: usize,
    /// Embedding dimension.
    pub dim: usize,
}

/// Computes PP&PR and the prdc baselines with shared distance passes. `progress`, if given,
/// is called from worker threads with `(done, total)` work units (distance pairs) as tiles
/// complete, and once more with `(total, total)` at the end.
pub fn evaluate(
    real: &Embeddings,
    fake: &Embeddings,
    params: &Params,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<AllScores> {
    let request = Request {
        ppr: Some((params.a, params.k)),
        prdc_k: Some(params.prdc_k),
    };
    let (ppr, prdc) = compute(real, fake, &request, progress, None)?;
    Ok(AllScores {
        ppr: ppr.ok_or_else(|| unreachable_scores("PP&PR"))?,
        prdc: prdc.ok_or_else(|| unreachable_scores("prdc"))?,
        real_count: real.rows,
        fake_count: fake.rows,
        dim: real.dim,
    })
}

/// Which metric families to compute.
pub(crate) struct Request {
    /// PP&PR with (a, k).
    pub(crate) ppr: Option<(f64, usize)>,
    /// prdc with this k.
    pub(crate) prdc_k: Option<usize>,
}

/// The pipeline behind every entry point; `isa` forces a kernel (tests), `None` picks the best.
pub(crate) fn compute(
    real: &Embeddings,
    fake: &Embeddings,
    request: &Request,
    progress: Option<&ProgressFn<'_>>,
    isa: Option<Isa>,
) -> Result<(Option<PprScores>, Option<PrdcScores>)> {
    let ks: Vec<usize> = request
        .ppr
        .map(|(_, k)| k)
        .into_iter()
        .chain(request.prdc_k)
        .collect();
    check_pair(real, fake, &ks)?;
    if let Some((a, _)) = request.ppr
        && !(a.is_finite() && a > 0.0)
    {
        return Err(GenMetricsError::InvalidParam(format!(
            "a must be a positive finite number, got {a}"
        )));
    }
    let k_max = ks.iter().copied().max().unwrap_or(1);
    let isa = isa.unwrap_or_else(Isa::detect);

    let frame = Frame::new(&[real, fake]);
    let packed_real = Packed::new(real, &frame);
    let packed_fake = Packed::new(fake, &frame);
    let total = self_pass_units(real.rows)
        + self_pass_units(fake.rows)
        + cross_pass_units(real.rows, fake.rows);
    let progress = Progress::new(progress, total);

    let real_lists = knn_lists(isa, &packed_real, &frame, k_max, &progress);
    let fake_lists = knn_lists(isa, &packed_fake, &frame, k_max, &progress);

    let ppr_radii = request.ppr.map(|(a, k)| {
        let mean_radius = |lists: &super::knn::KnnLists, rows: usize| {
            lists.radii(k).iter().sum::<f64>() / rows as f64
        };
        PprRadii {
            real: a * mean_radius(&real_lists, real.rows),
            fake: a * mean_radius(&fake_lists, fake.rows),
        }
    });
    let prdc_radii = request.prdc_k.map(|k| PrdcRadii {
        real_sq: real_lists.kth_sq_all(k),
        fake_sq: fake_lists.kth_sq_all(k),
    });
    drop((real_lists, fake_lists));

    let cross_request = CrossRequest {
        ppr: ppr_radii,
        prdc: prdc_radii.as_ref(),
    };
    let totals = real_fake_pass(
        isa,
        &packed_real,
        &packed_fake,
        &frame,
        &cross_request,
        &progress,
    );
    progress.finish();

    let ppr = request
        .ppr
        .zip(ppr_radii)
        .map(|((a, k), radii)| finish_ppr(&totals, radii, a, k));
    let prdc = request.prdc_k.map(|k| finish_prdc(&totals, k));
    Ok((ppr, prdc))
}
