//! Borrowing the f32 values of CPU tensors, for the custom ops of this kit.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The values of a contiguous f32 CPU storage under `layout`.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("the training ops support f32 only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("the training ops need contiguous tensors"),
    }
}

/// Runs `f` on the values of `t` (an f32 CPU tensor, made contiguous if it is not)
/// without copying them.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout)?),
        _ => candle_core::bail!("the training ops run on the CPU only"),
    }
}
