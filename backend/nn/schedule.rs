//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// Learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    /// Cosine annealing from the base rate to 0 over all steps.
    Cosine,
    /// Linear warm-up from 0 over the first `warmup_epochs` epochs, then cosine annealing to
    /// 0 over the remaining steps (the ViT recipes).
    WarmupCosine {
        warmup_epochs: usize,
    },
    /// Multiply by `gamma` at each milestone epoch (0-based epoch index where it applies).
    Step {
        milestones: Vec<usize>,
        gamma: f64,
    },
}

impl LrSchedule {
    /// Learning rate at `step` (0-based) of `total_steps` in epoch `epoch`, for a base rate
    /// `base` and `steps_per_epoch` steps per epoch.
    pub fn rate(
        &self,
        base: f64,
        epoch: usize,
        step: usize,
        total_steps: usize,
        steps_per_epoch: usize,
    ) -> f64 {
        let cosine = |t: f64| base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => cosine(step as f64 / total_steps.max(1) as f64),
            LrSchedule::WarmupCosine { warmup_epochs } => {
                let warm = (warmup_epochs * steps_per_epoch).min(total_steps);
                if step < warm {
                    base * (step + 1) as f64 / warm as f64
                } else {
                    cosine((step - warm) as f64 / (total_steps - warm).max(1) as f64)
                }
            }
            LrSchedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= epoch).count();
                base * gamma.powi(passed as i32)
            }
        }
    }

    /// A message when the schedule's own numbers are out of range.
    pub fn check(&self) -> Result<(), String> {
        match self {
            LrSchedule::Step { gamma, milestones } => {
                if !(gamma.is_finite() && *gamma > 0.0) {
                    return Err("step schedule gamma must be a positive number".into());
                }
                if milestones.len() > 64 {
                    return Err("at most 64 step-schedule milestones".into());
                }
                Ok(())
            }
            LrSchedule::WarmupCosine { warmup_epochs } if *warmup_epochs > 10_000 => {
                Err("at most 10000 warm-up epochs".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_by_hand() {
        let c = LrSchedule::Cosine;
        assert!((c.rate(1.0, 0, 0, 100, 10) - 1.0).abs() < 1e-12);
        assert!((c.rate(1.0, 5, 50, 100, 10) - 0.5).abs() < 1e-12);
        let s = LrSchedule::Step {
            milestones: vec![2, 4],
            gamma: 0.1,
        };
        assert!((s.rate(1.0, 3, 0, 1, 1) - 0.1).abs() < 1e-12);
        assert!((s.rate(1.0, 4, 0, 1, 1) - 0.01).abs() < 1e-12);
        // 2 warm-up epochs of 5 steps: rates 0.1, 0.2, ... 1.0, then cosine over 90 steps.
        let w = LrSchedule::WarmupCosine { warmup_epochs: 2 };
        assert!((w.rate(1.0, 0, 0, 100, 5) - 0.1).abs() < 1e-12);
        assert!((w.rate(1.0, 1, 9, 100, 5) - 1.0).abs() < 1e-12);
        assert!((w.rate(1.0, 2, 10, 100, 5) - 1.0).abs() < 1e-12);
        assert!((w.rate(1.0, 11, 55, 100, 5) - 0.5).abs() < 1e-12);
    }
}
