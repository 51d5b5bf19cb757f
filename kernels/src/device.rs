//! Where tensors live and kernels run.
//!
//! The CPU is always available. A CUDA device (`cuda`, `cuda:N`) is checked by [`Device::ensure_available`]
//! through [`crate::cuda::probe`]: the driver library, the device and NVRTC must all be present, and their
//! absence is an error in words, never a panic.

use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU (rayon-parallel kernels).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The string is not a device name.
    #[error("unknown device `{0}`: valid choices are cpu, cuda, cuda:N")]
    Unknown(String),
    /// The device is valid but this build or machine cannot run it.
    #[error("device `{device}` is not available: {reason}")]
    Unavailable {
        /// The requested device.
        device: Device,
        /// Why not.
        reason: String,
    },
}

impl Device {
    /// Parses `cpu`, `cuda`, `cuda:N` (also `gpu`, and a bare ordinal `0` as Ultralytics accepts).
    pub fn parse(s: &str) -> Result<Device, DeviceError> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => {
                let ord = t.strip_prefix("cuda:").unwrap_or(&t);
                ord.parse::<usize>().map(Device::Cuda).map_err(|_| DeviceError::Unknown(s.to_string()))
            }
        }
    }

    /// Checks that kernels can run on this device before anything is allocated on it.
    pub fn ensure_available(self) -> Result<(), DeviceError> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => {
                let unavailable = |reason: String| DeviceError::Unavailable { device: self, reason };
                let info = crate::cuda::probe(n).map_err(unavailable)?;
                if !crate::cuda::probe::nvrtc_present() {
                    return Err(unavailable(crate::cuda::compile::CompileFailure::NoNvrtc.to_string()));
                }
                // An NVRTC that compiles for no architecture this GPU runs stops the run here, not at its first
                // kernel.
                crate::cuda::compile::Target::for_device(info.compute_capability)
                    .map_err(|e| unavailable(e.to_string()))?;
                Ok(())
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("CUDA").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
        assert_eq!(Device::parse("1").unwrap(), Device::Cuda(1));
        assert!(Device::parse("tpu").is_err());
        // Without a driver the error says so; with a GPU, cuda:0 is available.
        match Device::Cuda(0).ensure_available() {
            Err(e) => assert!(e.to_string().contains("no CUDA"), "{e}"),
            Ok(()) => assert!(crate::cuda::probe(0).is_ok()),
        }
    }
}
