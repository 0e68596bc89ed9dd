//! Which device and dtype the model runs on, and why (the reason is logged and shown in /info).
//!
//! `auto` means CUDA when this binary was built with it and a GPU with its libraries is usable,
//! else CPU. An explicit `cuda[:N]` that cannot be honoured is an error listing what was tried —
//! never a panic (cudarc panics on missing libraries; we load them first and guard the rest).

use candle_core::{DType, Device};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DTypeRequest {
    /// f32 on CPU (exact match with the reference), f16 on CUDA (tensor cores).
    #[default]
    Auto,
    #[value(alias = "float32")]
    F32,
    #[value(alias = "float16", alias = "half")]
    F16,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl FromStr for DTypeRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| format!("unknown dtype {s:?}; expected auto, f32, f16 or bf16"))
    }
}

/// The kind of device the model runs on (shown by /info, logged, used to pick hardening rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    /// The kind of a candle device.
    pub fn of(device: &Device) -> Self {
        if device.is_cuda() {
            Self::Cuda
        } else {
            Self::Cpu
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// The dtype the model computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDType {
    F32,
    F16,
    Bf16,
}

impl ComputeDType {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl fmt::Display for ComputeDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl DTypeRequest {
    /// The concrete dtype for a device.
    pub fn resolve(self, device: &Device) -> ComputeDType {
        match self {
            Self::Auto if device.is_cuda() => ComputeDType::F16,
            Self::Auto | Self::F32 => ComputeDType::F32,
            Self::F16 => ComputeDType::F16,
            Self::Bf16 => ComputeDType::Bf16,
        }
    }
}

/// The device could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device {requested} asked for CUDA, but this binary was built without the `cuda` feature; build it with scripts/build-cuda or use --device cpu")]
    NotBuiltWithCuda { requested: DeviceRequest },
    #[error("--device {requested}: {reason}")]
    CudaUnavailable {
        requested: DeviceRequest,
        reason: String,
    },
}

/// A device plus a sentence saying why it was chosen.
pub struct ChosenDevice {
    pub device: Device,
    pub reason: String,
    /// Folders the CUDA libraries were loaded from (empty on CPU); hardening keeps them readable.
    pub library_dirs: Vec<PathBuf>,
}

/// Picks the device; `cuda_lib_dirs` are extra folders to find CUDA libraries in.
pub fn choose(
    request: DeviceRequest,
    cuda_lib_dirs: &[PathBuf],
) -> Result<ChosenDevice, DeviceError> {
    match request {
        DeviceRequest::Cpu => Ok(cpu("--device cpu")),
        DeviceRequest::Auto => Ok(match open_cuda(0, cuda_lib_dirs) {
            Ok(chosen) => chosen,
            Err(reason) => cpu(&format!("--device auto: CUDA not used ({reason})")),
        }),
        DeviceRequest::Cuda(ordinal) => {
            if !cfg!(feature = "cuda") {
                return Err(DeviceError::NotBuiltWithCuda { requested: request });
            }
            open_cuda(ordinal, cuda_lib_dirs).map_err(|reason| DeviceError::CudaUnavailable {
                requested: request,
                reason,
            })
        }
    }
}

fn cpu(why: &str) -> ChosenDevice {
    ChosenDevice {
        device: Device::Cpu,
        library_dirs: Vec::new(),
        reason: format!(
            "{why}; running on CPU with {} threads",
            candle_core::utils::get_num_threads()
        ),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize, _dirs: &[PathBuf]) -> Result<ChosenDevice, String> {
    Err("this binary was built without the `cuda` feature".into())
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, dirs: &[PathBuf]) -> Result<ChosenDevice, String> {
    let libraries = crate::cuda_libs::preload(dirs).map_err(|e| e.to_string())?;
    // cudarc panics instead of returning errors in a few driver paths (no device, driver too old);
    // keep the panic message out of stderr and turn it into an error.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(previous_hook);
    match opened {
        Ok(Ok(device)) => Ok(ChosenDevice {
            device,
            library_dirs: libraries.dirs(),
            reason: format!(
                "CUDA device {ordinal} opened (libraries: {})",
                libraries
                    .loaded
                    .iter()
                    .map(|(name, from)| format!("{name} from {from}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        Ok(Err(e)) => Err(format!("CUDA device {ordinal} could not be opened: {e}")),
        Err(panic) => Err(format!(
            "CUDA device {ordinal} could not be opened: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA runtime panicked".into())
        )),
    }
}

/// Folders CUDA libraries may be loaded from after startup (hardening keeps them readable):
/// the search folders plus `loaded`, where [`choose`] found them ([`ChosenDevice::library_dirs`]).
pub fn cuda_library_dirs(extra: &[PathBuf], loaded: &[PathBuf]) -> Vec<PathBuf> {
    #[cfg(feature = "cuda")]
    {
        crate::cuda_libs::candidate_dirs(extra, loaded)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (extra, loaded);
        Vec::new()
    }
}
