//! The standard CIFAR augmentation: a random 32x32 crop of the image padded by 4 black pixels
//! and a random horizontal flip (skipped when the data set says flips change the class, as
//! for digits). Images of other shapes are returned unaugmented.

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand::rngs::StdRng;

use crate::compression::data::{Dataset, IMAGE_SIDE};

const CROP_PADDING: usize = 4;

/// Normalised value of a black pixel per channel (what PyTorch's zero padding becomes).
pub fn padding_values(data: &Dataset) -> [f32; 3] {
    let n = data.normalization();
    [
        -n.mean[0] / n.std[0],
        -n.mean[1] / n.std[1],
        -n.mean[2] / n.std[2],
    ]
}

/// The images `indices` of `data`, each cropped and flipped with draws from `rng`, and
/// their labels.
pub fn augmented_batch(
    data: &Dataset,
    indices: &[usize],
    pad_value: &[f32; 3],
    rng: &mut StdRng,
) -> Result<(Tensor, Tensor)> {
    let batch = |indices: &[usize]| {
        data.batch(indices)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    if data.shape() != [3, IMAGE_SIDE, IMAGE_SIDE] {
        return batch(indices);
    }
    let side = IMAGE_SIDE;
    let plane = side * side;
    let image_len = data.image_len();
    let mut images = vec![0f32; indices.len() * image_len];
    let mut labels = Vec::with_capacity(indices.len());
    for (b, &i) in indices.iter().enumerate() {
        let Some(src) = data.image(i) else {
            return Err(candle_core::Error::Msg(format!(
                "image index {i} out of range"
            )));
        };
        let dst = &mut images[b * image_len..(b + 1) * image_len];
        let oy = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
        let ox = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
        let flip = rng.random_bool(0.5) && data.flip_invariant();
        for c in 0..3 {
            for y in 0..side {
                let sy = y as isize + oy;
                for x in 0..side {
                    let xx = if flip { side - 1 - x } else { x };
                    let sx = xx as isize + ox;
                    let inside = sy >= 0 && sy < side as isize && sx >= 0 && sx < side as isize;
                    dst[c * plane + y * side + x] = if inside {
                        src[c * plane + sy as usize * side + sx as usize]
                    } else {
                        pad_value[c]
                    };
                }
            }
        }
        labels.push(data.labels()[i]);
    }
    Ok((
        Tensor::from_vec(images, (indices.len(), 3, side, side), &Device::Cpu)?,
        Tensor::from_vec(labels, indices.len(), &Device::Cpu)?,
    ))
}
