//! Finding a usable GPU without panicking.
//!
//! cudarc loads `libcuda` on the first driver call and panics when it cannot, so every entry point checks
//! [`driver_present`] first and asks the driver for the device count before a context is created.

use cudarc::driver::{result, sys};

/// What the driver reports about one device.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    /// The ordinal (`cuda:N`).
    pub ordinal: usize,
    /// The marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0).
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_mem: usize,
    /// Streaming multiprocessors (sizes grid-stride launches).
    pub multiprocessors: usize,
    /// Devices the driver sees in all.
    pub device_count: usize,
}

impl GpuInfo {
    /// The NVRTC virtual architecture of this device, e.g. `compute_90`.
    pub fn arch(&self) -> String {
        format!("compute_{}{}", self.compute_capability.0, self.compute_capability.1)
    }

    /// Whether this is tools/cuda-emu (the engine's kernels run on the CPU behind a stand-in driver), not a
    /// GPU: its results check correctness; its timings mean nothing.
    pub fn is_emulated(&self) -> bool {
        self.name.starts_with("cuda-emu")
    }
}

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names; nothing is called.
    unsafe { sys::is_culib_present() }
}

/// Whether the NVRTC library (`libnvrtc.so`) can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: as above, a dlopen attempt only.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Checks that `cuda:ordinal` exists and reads its properties, without creating a context.
pub fn probe(ordinal: usize) -> Result<GpuInfo, String> {
    if !driver_present() {
        return Err("no CUDA driver found (libcuda.so could not be loaded): this machine has no NVIDIA driver or \
                    GPU; use run.device: cpu"
            .into());
    }
    result::init().map_err(|e| format!("no CUDA device found: the CUDA driver did not initialise ({e:?})"))?;
    let count = result::device::get_count().map_err(|e| format!("no CUDA device found ({e:?})"))?.max(0) as usize;
    if count == 0 {
        return Err("no CUDA device found: the driver is installed but sees no GPU".into());
    }
    if ordinal >= count {
        return Err(format!(
            "cuda:{ordinal} does not exist: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{})",
            count - 1
        ));
    }
    let dev = result::device::get(ordinal as i32).map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    let attr = |a| {
        // SAFETY: `dev` came from cuDeviceGet above.
        unsafe { result::device::get_attribute(dev, a) }.map_err(|e| format!("cuda:{ordinal}: {e:?}"))
    };
    use sys::CUdevice_attribute_enum as A;
    let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    // SAFETY: as above.
    let total_mem = unsafe { result::device::total_mem(dev) }.map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown NVIDIA GPU".into());
    if major < 7 {
        return Err(format!(
            "cuda:{ordinal} ({name}) has compute capability {major}.{minor}; the kernels need 7.0 or newer"
        ));
    }
    Ok(GpuInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        total_mem,
        multiprocessors: sms.max(1) as usize,
        device_count: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a driver the probe reports it in words; with one it returns a sane device.
    #[test]
    fn probe_never_panics() {
        match probe(0) {
            Ok(info) => {
                assert!(info.compute_capability.0 >= 7 && info.total_mem > 0, "{info:?}");
                assert!(probe(info.device_count).unwrap_err().contains("does not exist"));
            }
            Err(msg) => assert!(msg.contains("no CUDA"), "{msg}"),
        }
    }
}
