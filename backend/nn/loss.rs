//! Losses on soft targets (mixed labels are probability vectors, not class indices).

use candle_core::{D, Result, Tensor};

/// Mean over the batch of `-sum_c t_c log softmax(z)_c`; equal to the usual cross-entropy
/// when `targets` are one-hot.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (log_p * targets)?.sum(D::Minus1)?.neg()?.mean_all()
}

/// GuidedMixup's code loss: binary cross-entropy between softmax(z) and the soft target,
/// summed over classes and averaged over the batch. Probabilities are clamped to
/// `[1e-7, 1 - 1e-7]` so the logarithms stay finite.
pub fn soft_bce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax(logits, D::Minus1)?.clamp(1e-7f32, 1.0 - 1e-7)?;
    let one_minus_t = targets.affine(-1.0, 1.0)?;
    let one_minus_p = p.affine(-1.0, 1.0)?;
    let per = ((targets * p.log()?)? + (one_minus_t * one_minus_p.log()?)?)?;
    per.sum(D::Minus1)?.neg()?.mean_all()
}

/// One-hot rows for `labels` (u32) over `classes` classes.
pub fn one_hot(labels: &[u32], classes: usize) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        if (l as usize) < classes {
            v[i * classes + l as usize] = 1.0;
        }
    }
    Tensor::from_vec(v, (labels.len(), classes), &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_losses_by_hand() {
        let dev = candle_core::Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let targets = Tensor::new(&[[0f32, 0.5, 0.5], [1.0, 0.0, 0.0]], &dev).unwrap();
        // Row 1: log-softmax of (1,2,3) = (x - 3.40760596); row 2: -ln 3.
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let row1 = -(0.5 * (2.0 - lse) + 0.5 * (3.0 - lse));
        let row2 = 3f64.ln();
        let got = soft_cross_entropy(&logits, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - (row1 + row2) / 2.0).abs() < 1e-5, "{got}");
        // The one-hot case equals candle's own cross-entropy.
        let hard = one_hot(&[2, 0], 3).unwrap();
        let labels = Tensor::new(&[2u32, 0], &dev).unwrap();
        let a = soft_cross_entropy(&logits, &hard)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-6);
        // BCE of row 2 (p = 1/3 each, t = (1,0,0)): -(ln(1/3) + 2 ln(2/3)).
        let t2 = Tensor::new(&[[1f32, 0.0, 0.0]], &dev).unwrap();
        let z2 = Tensor::new(&[[0f32, 0.0, 0.0]], &dev).unwrap();
        let bce = soft_bce(&z2, &t2).unwrap().to_scalar::<f32>().unwrap() as f64;
        let want = -((1.0f64 / 3.0).ln() + 2.0 * (2.0f64 / 3.0).ln());
        assert!((bce - want).abs() < 1e-5, "{bce} vs {want}");
    }
}
