//! Which device a local model runs on: the spec's `device` ("cpu", "cuda" or
//! "cuda:N"), or by default the first CUDA GPU in a `--features cuda` build
//! when one is present, else the CPU. Remote models ignore it.

use candle_core::Device;

use super::InferenceError;

/// A device a spec may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
}

/// Largest GPU ordinal a spec may name (bounds the value before any use).
pub const MAX_CUDA_ORDINAL: usize = 63;

/// Parses a spec's device name.
pub fn parse(name: &str) -> Result<DeviceChoice, InferenceError> {
    let bad = || {
        InferenceError::InvalidSpec(format!(
            "device {name:?} is not \"cpu\", \"cuda\" or \"cuda:N\" (N at most {MAX_CUDA_ORDINAL})"
        ))
    };
    match name.trim() {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        other => {
            let n: usize = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?;
            if n > MAX_CUDA_ORDINAL {
                return Err(bad());
            }
            Ok(DeviceChoice::Cuda(n))
        }
    }
}

/// The default device: the first CUDA GPU when this build has CUDA and one is
/// present, else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(device) = Device::cuda_if_available(0) {
            return device;
        }
    }
    Device::Cpu
}

/// The device for a spec's `device` field.
pub fn select(name: Option<&str>) -> Result<Device, InferenceError> {
    let Some(name) = name else {
        return Ok(default_device());
    };
    match parse(name)? {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => cuda(n),
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device, InferenceError> {
    Device::new_cuda(n)
        .map_err(|e| InferenceError::Load(format!("cannot open CUDA device {n}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device, InferenceError> {
    Err(InferenceError::Load(format!(
        "the model asks for cuda:{n}, but this elite was built without CUDA \
         (build with `cargo build --release --features cuda`)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_refused() {
        assert_eq!(parse("cpu").unwrap(), DeviceChoice::Cpu);
        assert_eq!(parse("cuda").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(parse("cuda:3").unwrap(), DeviceChoice::Cuda(3));
        for bad in [
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:99999999999999999999",
            "cuda:64",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(select(Some("cpu")).unwrap(), Device::Cpu));
    }
}
