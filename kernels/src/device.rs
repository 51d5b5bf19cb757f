//! Where tensors live and kernels run.
//!
//! The CPU is always available. CUDA devices are named now (`cuda`, `cuda:N`) so configs and error messages
//! are stable; the CUDA backend (cudarc + NVRTC-compiled `.cu` sources next to each op) plugs in behind
//! [`Device::Cuda`] and [`Device::ensure_available`].

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
            Device::Cuda(_) => Err(DeviceError::Unavailable {
                device: self,
                reason: "this build has no CUDA backend yet; use device: cpu".into(),
            }),
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
        assert!(Device::Cuda(0).ensure_available().is_err());
    }
}
