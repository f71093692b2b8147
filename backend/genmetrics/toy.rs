//! The paper's toy demonstrations on generated Gaussians, as pure functions: how PP&PR and
//! the k-NN baselines respond to an outlier, to a shift of the fake distribution, and to a
//! change of its spread. Each returns one series of scores over the swept parameter.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Embeddings, Params, Result, evaluate};

/// Which demonstration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToyExperiment {
    /// Real ~ N(0, I), fake ~ N(1, I) (a shift of 1 per dimension), plus one real outlier at
    /// 1 + x e1 (beyond the fake cloud) and one fake outlier at -x e1 (beyond the real cloud)
    /// for a growing x. An outlier's k-NN ball is huge and swallows the other cloud, so k-NN
    /// precision and recall jump; PP&PR use one mean radius per set and barely move.
    Outlier,
    /// Fake ~ N(s/sqrt(d) * 1, I) for a growing shift s: fidelity and diversity both fall.
    Shift,
    /// Fake ~ N(0, sigma^2 I): sigma < 1 lowers diversity (recall), sigma > 1 fidelity (precision).
    Std,
}

impl ToyExperiment {
    pub const ALL: [ToyExperiment; 3] = [
        ToyExperiment::Outlier,
        ToyExperiment::Shift,
        ToyExperiment::Std,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ToyExperiment::Outlier => "outlier",
            ToyExperiment::Shift => "shift",
            ToyExperiment::Std => "std",
        }
    }

    pub fn x_label(self) -> &'static str {
        match self {
            ToyExperiment::Outlier => "outlier offset x",
            ToyExperiment::Shift => "shift of the fake mean (norm)",
            ToyExperiment::Std => "standard deviation of the fake set",
        }
    }

    fn sweep(self) -> Vec<f64> {
        match self {
            ToyExperiment::Outlier => vec![0.0, 2.5, 5.0, 10.0, 20.0, 40.0],
            ToyExperiment::Shift => (0..=8).map(|i| i as f64 * 0.5).collect(),
            ToyExperiment::Std => (0..=10).map(|i| 0.5 + i as f64 * 0.1).collect(),
        }
    }
}

impl std::str::FromStr for ToyExperiment {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ToyExperiment::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown toy experiment {s:?}: expected outlier, shift or std"))
    }
}

/// Size and seed of a toy run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToyParams {
    pub samples: usize,
    pub dim: usize,
    pub seed: u64,
    pub a: f64,
    pub k: usize,
    pub prdc_k: usize,
}

impl Default for ToyParams {
    fn default() -> Self {
        ToyParams {
            samples: 1000,
            dim: 64,
            seed: 0,
            a: 1.2,
            k: 4,
            prdc_k: 5,
        }
    }
}

/// All six scores at one value of the swept parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToyPoint {
    pub x: f64,
    pub p_precision: f64,
    pub p_recall: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

fn gaussian(rng: &mut StdRng, rows: usize, dim: usize, mean: f64, std: f64) -> Vec<f32> {
    (0..rows * dim)
        .map(|_| {
            // Box-Muller: exact standard normals from two uniforms.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mean + std * z) as f32
        })
        .collect()
}

/// Run one demonstration; `progress(done, total)` after each point of the sweep.
pub fn run_toy(
    experiment: ToyExperiment,
    params: &ToyParams,
    progress: &dyn Fn(u64, u64),
) -> Result<Vec<ToyPoint>> {
    let (n, d) = (params.samples, params.dim);
    let metric_params = Params {
        a: params.a,
        k: params.k,
        prdc_k: params.prdc_k,
    };
    let sweep = experiment.sweep();
    let mut rng = StdRng::seed_from_u64(params.seed);
    let real_base = gaussian(&mut rng, n, d, 0.0, 1.0);
    let noise = gaussian(&mut rng, n, d, 0.0, 1.0);
    let mut points = Vec::with_capacity(sweep.len());
    for (i, &x) in sweep.iter().enumerate() {
        let mut real = real_base.clone();
        let fake: Vec<f32> = match experiment {
            ToyExperiment::Outlier => {
                let mut fake: Vec<f32> = noise.iter().map(|v| v + 1.0).collect();
                if x > 0.0 {
                    // Replace the first sample of each set by its outlier.
                    real[..d].iter_mut().for_each(|v| *v = 1.0);
                    real[0] = 1.0 + x as f32;
                    fake[..d].iter_mut().for_each(|v| *v = 0.0);
                    fake[0] = -(x as f32);
                }
                fake
            }
            ToyExperiment::Shift => {
                let offset = (x / (d as f64).sqrt()) as f32;
                noise.iter().map(|v| v + offset).collect()
            }
            ToyExperiment::Std => noise.iter().map(|v| v * x as f32).collect(),
        };
        let real = Embeddings::new(n, d, real)?;
        let fake = Embeddings::new(n, d, fake)?;
        let scores = evaluate(&real, &fake, &metric_params, None)?;
        points.push(ToyPoint {
            x,
            p_precision: scores.ppr.p_precision,
            p_recall: scores.ppr.p_recall,
            precision: scores.prdc.precision,
            recall: scores.prdc.recall,
            density: scores.prdc.density,
            coverage: scores.prdc.coverage,
        });
        progress(i as u64 + 1, sweep.len() as u64);
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ToyParams {
        ToyParams {
            samples: 400,
            dim: 16,
            ..ToyParams::default()
        }
    }

    #[test]
    fn pp_pr_shrug_off_an_outlier_while_knn_scores_jump() {
        let params = ToyParams {
            samples: 1000,
            dim: 16,
            ..ToyParams::default()
        };
        let points = run_toy(ToyExperiment::Outlier, &params, &|_, _| {}).unwrap();
        let clean = points[0];
        let far = points[3]; // x = 10
        assert_eq!(far.x, 10.0);
        assert!(
            (clean.p_precision - far.p_precision).abs() < 0.01,
            "{clean:?} {far:?}"
        );
        assert!(
            (clean.p_recall - far.p_recall).abs() < 0.01,
            "{clean:?} {far:?}"
        );
        assert!(far.precision - clean.precision > 0.1, "{clean:?} {far:?}");
        assert!(far.recall - clean.recall > 0.1, "{clean:?} {far:?}");
    }

    #[test]
    fn shift_lowers_both_and_spread_trades_fidelity_for_diversity() {
        let shift = run_toy(ToyExperiment::Shift, &small(), &|_, _| {}).unwrap();
        assert!(shift.last().unwrap().p_precision < shift[0].p_precision);
        assert!(shift.last().unwrap().p_recall < shift[0].p_recall);
        let std = run_toy(ToyExperiment::Std, &small(), &|_, _| {}).unwrap();
        let narrow = std[0];
        let wide = *std.last().unwrap();
        assert!(narrow.p_recall < wide.p_recall, "{narrow:?} {wide:?}");
        assert!(wide.p_precision < narrow.p_precision, "{narrow:?} {wide:?}");
        // Deterministic for a seed.
        assert_eq!(
            run_toy(ToyExperiment::Std, &small(), &|_, _| {}).unwrap(),
            std
        );
    }
}
