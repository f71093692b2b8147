//! Optimizers over candle `Var`s: SGD with momentum and coupled (PyTorch-style) weight decay,
//! and AdamW (decoupled weight decay, candle-nn's implementation). Variables without a
//! gradient in a step (batch-norm running statistics, unused branches) are left alone.

use candle_core::{Result, Tensor, Var, backprop::GradStore};
use candle_nn::optim::Optimizer as _;
use serde::{Deserialize, Serialize};

/// Which optimizer, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    Sgd { momentum: f64, weight_decay: f64 },
    AdamW { weight_decay: f64 },
}

impl OptimizerConfig {
    /// A message when a hyper-parameter is out of range.
    pub fn check(&self) -> std::result::Result<(), String> {
        let wd = match self {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
            } => {
                if !(momentum.is_finite() && (0.0..1.0).contains(momentum)) {
                    return Err("momentum must lie in [0, 1)".into());
                }
                weight_decay
            }
            OptimizerConfig::AdamW { weight_decay } => weight_decay,
        };
        if !(wd.is_finite() && (0.0..=1.0).contains(wd)) {
            return Err("weight decay must lie in [0, 1]".into());
        }
        Ok(())
    }

    pub fn build(&self, vars: Vec<Var>) -> Result<Optimizer> {
        Ok(match self {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
            } => Optimizer::Sgd(Sgd::new(vars, *momentum, *weight_decay)),
            OptimizerConfig::AdamW { weight_decay } => {
                Optimizer::AdamW(Box::new(candle_nn::AdamW::new(
                    vars,
                    candle_nn::ParamsAdamW {
                        lr: 1e-3,
                        weight_decay: *weight_decay,
                        ..Default::default()
                    },
                )?))
            }
        })
    }
}

/// SGD with momentum: `g += wd * w; v = momentum * v + g; w -= lr * v` (PyTorch's rule).
pub struct Sgd {
    vars: Vec<Var>,
    velocity: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    pub fn new(vars: Vec<Var>, momentum: f64, weight_decay: f64) -> Self {
        let velocity = vec![None; vars.len()];
        Sgd {
            vars,
            velocity,
            momentum,
            weight_decay,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (var, vel) in self.vars.iter().zip(self.velocity.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let weight = var.as_tensor().detach();
            let grad = if self.weight_decay > 0.0 {
                (grad + weight.affine(self.weight_decay, 0.0)?)?
            } else {
                grad.clone()
            };
            let update = match vel.take() {
                Some(v) if self.momentum > 0.0 => (v.affine(self.momentum, 0.0)? + grad)?,
                _ => grad,
            };
            var.set(&(weight - update.affine(lr, 0.0)?)?)?;
            *vel = Some(update);
        }
        Ok(())
    }
}

/// A built optimizer.
pub enum Optimizer {
    Sgd(Sgd),
    AdamW(Box<candle_nn::AdamW>),
}

impl Optimizer {
    /// One update with learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd(s) => s.step(grads, lr),
            Optimizer::AdamW(a) => {
                a.set_learning_rate(lr);
                a.step(grads)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_momentum_by_hand() {
        // w = 1, loss = w^2 (grad 2w), lr 0.1, momentum 0.9, wd 0.
        // step 1: v = 2, w = 0.8; step 2: g = 1.6, v = 1.8 + 1.6 = 3.4, w = 0.8 - 0.34 = 0.46.
        let w = Var::new(&[1f32], &candle_core::Device::Cpu).unwrap();
        let mut opt = OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        }
        .build(vec![w.clone()])
        .unwrap();
        for _ in 0..2 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - 0.46).abs() < 1e-6, "{got}");
    }

    #[test]
    fn adamw_first_step_is_lr_sized() {
        // Adam's first update is lr * g / (|g| + eps) = lr * sign(g); decoupled decay
        // multiplies w by (1 - lr * wd) first: 1 * (1 - 0.01) - 0.1 = 0.89.
        let w = Var::new(&[1f32], &candle_core::Device::Cpu).unwrap();
        let mut opt = OptimizerConfig::AdamW { weight_decay: 0.1 }
            .build(vec![w.clone()])
            .unwrap();
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - 0.89).abs() < 1e-5, "{got}");
    }

    #[test]
    fn bad_hyper_parameters_are_refused() {
        assert!(
            OptimizerConfig::Sgd {
                momentum: 1.0,
                weight_decay: 0.0
            }
            .check()
            .is_err()
        );
        assert!(
            OptimizerConfig::AdamW {
                weight_decay: f64::NAN
            }
            .check()
            .is_err()
        );
    }
}
