//! Landlock: which files the server may still open, and on which threads that holds.
//!
//! Landlock binds a domain to the calling thread and to the threads it creates *afterwards*.
//! A thread that already exists keeps whatever domain it had. So the server restricts its
//! main thread twice:
//!
//! 1. [`restrict_startup`], before any other thread exists (right after the verify inputs, such
//!    as key files, are read): every thread created later (candle's compute pools, the inference
//!    thread, tokio's workers, a GPU driver's own threads) inherits this domain, including ones
//!    nobody knows about. The model is already in memory, so the list of what loading, warm-up
//!    and serving read is known at that point ([`FsAllow::cpu`], [`FsAllow::cuda`]).
//! 2. After warm-up, [`super::apply_on`] stacks a second, narrower domain on the main thread and
//!    on every pool it can reach (defence in depth: the server's per-thread list), and, where the
//!    kernel supports `LANDLOCK_RESTRICT_SELF_TSYNC` (ABI 8), on every thread at once.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, RestrictSelfAttr, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{HardenError, HardenLevel, LandlockStatus};

/// The Landlock ABI whose filesystem access rights are requested (best effort: a kernel with an
/// older ABI enforces what it knows and the status is [`LandlockStatus::PartiallyEnforced`]).
///
/// ABI 9 is the first whose rights cover everything filesystem-shaped that writes: files,
/// directories, special files, links, renames (`Refer`, v2), truncation (v3), device ioctls (v5)
/// and connecting to pathname UNIX sockets (`ResolveUnix`, v9, e.g. a container runtime's socket
/// in a shared volume).
pub const LANDLOCK_ABI: ABI = ABI::V9;

/// What a Landlock domain leaves open; every other filesystem access is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsAllow {
    /// Files, and folders with everything below them, that may be read (folders also listed).
    /// Nothing here is writable or executable.
    pub read: Vec<PathBuf>,
    /// Device nodes (or folders of them) that may be opened read-write and receive ioctls: the
    /// GPU's `/dev/nvidia*`. Empty on CPU.
    pub devices: Vec<PathBuf>,
    /// Folders beneath which files may be opened for writing and truncated: `/proc/self/task`
    /// at start-up on CUDA, where the driver names the threads it starts
    /// (`/proc/self/task/<tid>/comm`, opened for writing with truncation); `cuInit` fails with
    /// CUDA_ERROR_OPERATING_SYSTEM without it (measured on an H200, driver 580, 2026-11-30,
    /// `scripts/gpu_probe_landlock.py`). Never in an after-warm-up domain, which stacks on the
    /// start-up one: from then on no thread we run may write there (`task/<tid>/mem` included).
    pub thread_names: Vec<PathBuf>,
}

impl FsAllow {
    /// Read-only access to `read`, no devices.
    pub fn read_only(read: &[PathBuf]) -> Self {
        Self {
            read: read.to_vec(),
            devices: Vec::new(),
            thread_names: Vec::new(),
        }
    }

    /// What a CPU server reads from start-up on: [`default_readable_paths`].
    pub fn cpu() -> Self {
        Self::read_only(&default_readable_paths())
    }

    /// What a CUDA server reads from start-up on, before the driver is initialised:
    /// [`default_readable_paths`], the dynamic loader's cache and folders (`dlopen` of the CUDA
    /// libraries by name, and libcuda's own lazy `dlopen` of its JIT compiler), `lib_dirs` (the
    /// folders `cuda_libs` searches: `--cuda-lib-dirs`, the driver and toolkit folders, pip
    /// wheels), the driver's `/proc/driver/nvidia` and `/sys` views of the PCI devices, and the
    /// `/dev/nvidia*` nodes read-write with ioctls, and writes beneath `/proc/self/task` (see
    /// [`FsAllow::thread_names`]).
    ///
    /// Not granted: the driver's JIT cache (`~/.nv/ComputeCache`, a write), so PTX kernels are
    /// compiled afresh at every start; `nvidia-modprobe` (an exec), so the device nodes must
    /// exist before the server starts, as the NVIDIA container runtime makes them. Only paths
    /// that exist are kept.
    pub fn cuda(lib_dirs: &[PathBuf]) -> Self {
        let mut read = default_readable_paths();
        let fixed = [
            "/etc/ld.so.cache",
            "/lib",
            "/lib64",
            "/usr/lib",
            "/usr/lib64",
            "/usr/local/lib",
            "/proc/driver/nvidia",
            "/proc/sys/vm/mmap_min_addr",
            "/proc/cpuinfo",
            "/proc/meminfo",
            "/sys/bus/pci",
            "/sys/devices",
            "/sys/module/nvidia",
        ];
        let loader_path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
        let candidates = fixed
            .iter()
            .map(PathBuf::from)
            .chain(std::env::split_paths(&loader_path))
            .chain(lib_dirs.iter().cloned());
        for path in candidates {
            if path.is_absolute() && path.exists() && !read.contains(&path) {
                read.push(path);
            }
        }
        Self {
            read,
            devices: nvidia_device_nodes(Path::new("/dev")),
            thread_names: ["/proc/self/task"]
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect(),
        }
    }
}

/// `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`, `/dev/nvidia<N>` and the
/// `/dev/nvidia-caps` folder (MIG), those that exist under `dev`.
fn nvidia_device_nodes(dev: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dev)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_nvidia_compute_node)
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

fn is_nvidia_compute_node(name: &str) -> bool {
    let numbered = name
        .strip_prefix("nvidia")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numbered || ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps"].contains(&name)
}

/// What a running server still reads, for [`restrict_filesystem`]:
///
/// * `/proc/self`: `status` for [`super::report`]; `maps` for the embedded-page release; `cgroup`,
///   `mountinfo` for the CPU count (`std::thread::available_parallelism`, which tokio uses when
///   it starts).
/// * `/sys/fs/cgroup`: the cgroup CPU quota (`cpu.max`) behind that CPU count.
/// * `/sys/devices/system/cpu`: CPU topology, online CPUs and cache sizes (gemm sizes its
///   blocks from them).
/// * `/dev/urandom`, `/dev/random`: fallback of the `getrandom` crate when the `getrandom(2)`
///   syscall is missing.
///
/// Only paths that exist are returned. `/proc/self` is resolved when the rule is made, so a
/// process that forks must build its rules after the fork.
pub fn default_readable_paths() -> Vec<PathBuf> {
    [
        "/proc/self",
        "/sys/fs/cgroup",
        "/sys/devices/system/cpu",
        "/dev/urandom",
        "/dev/random",
    ]
    .into_iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect()
}

/// Rights granted on readable directories: list them and read the files below. Not `Execute`:
/// nothing may be executed (dynamic libraries are `mmap`ed, which `Execute` does not govern).
fn read_dir_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Rights granted on a readable regular (or special) file.
fn read_file_access() -> BitFlags<AccessFs> {
    BitFlags::from(AccessFs::ReadFile)
}

/// Rights granted on a GPU device node: open it read-write and send it ioctls (ABI 5; older
/// kernels do not restrict ioctls at all).
fn device_access(is_dir: bool) -> BitFlags<AccessFs> {
    let file = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    if is_dir {
        file | AccessFs::ReadDir
    } else {
        file
    }
}

/// How a domain is applied.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Enforce {
    /// Also scope signals and abstract UNIX sockets to the domain (ABI 6): code inside cannot
    /// signal processes outside it or connect to their abstract sockets. Only for the start-up
    /// domain: applied to nested per-thread domains, it would stop threads of one process that
    /// sit in different domains from signalling each other (Landlock erratum 2 on older kernels).
    pub scopes: bool,
    /// Ask the kernel to apply the domain to every thread of the process at once
    /// (`LANDLOCK_RESTRICT_SELF_TSYNC`, ABI 8); silently only the calling thread before that.
    pub all_threads: bool,
}

/// Denies every filesystem write, and every read outside `readable`, to the calling thread and
/// to the threads it creates afterwards (Landlock).
///
/// `readable` may name directories (whole trees become readable) and files. Nothing becomes
/// writable or executable, not even inside `readable`. Each path must exist now (it is opened
/// with `O_PATH`); symlinks are followed, so `/proc/self` grants this process's `/proc/<pid>`.
///
/// Already open file descriptors (stdout, stderr, sockets, the model mapping) keep working:
/// Landlock checks at open time. Sockets are not restricted.
///
/// # Threads
///
/// Landlock restricts only the calling thread and its future children; see the module docs for
/// how the server covers every thread. Calling this on any thread is safe: every call builds its
/// own ruleset and stacks one more Landlock domain on the calling thread only; no process-wide
/// state is touched. The kernel allows at most 16 stacked domains per thread.
///
/// # Returns
///
/// The enforcement status. A kernel without Landlock (or with Landlock disabled at boot) is
/// not an error: the result is [`LandlockStatus::NotEnforced`] with the reason, which the
/// caller logs.
pub fn restrict_filesystem(readable: &[PathBuf]) -> Result<LandlockStatus, HardenError> {
    restrict(&FsAllow::read_only(readable), Enforce::default())
}

/// [`restrict_filesystem`] with devices and enforcement options.
pub(super) fn restrict(allow: &FsAllow, how: Enforce) -> Result<LandlockStatus, HardenError> {
    let landlock_err = |step: &'static str| move |source| HardenError::Landlock { step, source };

    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(landlock_err("declare the handled filesystem access rights"))?;
    if how.scopes {
        ruleset = ruleset
            .scope(Scope::from_all(ABI::V6))
            .map_err(landlock_err(
                "declare the signal and abstract-socket scopes",
            ))?;
    }
    let mut ruleset = ruleset.create().map_err(landlock_err("create a ruleset"))?;

    for path in &allow.read {
        let (fd, is_dir) = open_path(path)?;
        let access = if is_dir {
            read_dir_access()
        } else {
            read_file_access()
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(landlock_err("add a read-only rule"))?;
    }
    for path in &allow.devices {
        let (fd, is_dir) = open_path(path)?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, device_access(is_dir)))
            .map_err(landlock_err("add a device rule"))?;
    }
    for path in &allow.thread_names {
        let (fd, _) = open_path(path)?;
        let access = read_dir_access() | AccessFs::WriteFile | AccessFs::Truncate;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(landlock_err("add a thread-name rule"))?;
    }
    if how.all_threads {
        ruleset = ruleset
            .all_threads(true)
            .map_err(landlock_err("ask for all threads"))?;
    }

    let status = ruleset
        .restrict_self()
        .map_err(landlock_err("restrict the calling thread"))?;

    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockStatus::PartiallyEnforced,
        RulesetStatus::NotEnforced => LandlockStatus::NotEnforced {
            reason: not_enforced_reason(&status.landlock),
        },
    })
}

/// Start-up step of `--harden strict`: applies Landlock with `allow` to the calling thread while
/// it is the process's only thread, so that every thread started later inherits the domain.
///
/// Call it after reading every file the server needs that `allow` does not cover (key files,
/// the API key file) and before anything starts a thread (loading, warm-up, the engine, tokio).
/// `Basic` and `Off` do nothing and return [`LandlockStatus::NotRequested`]. Fails with
/// [`HardenError::Threads`] when another thread already exists: a domain applied then would
/// miss it, which is the gap this step closes.
pub fn restrict_startup(
    level: HardenLevel,
    allow: &FsAllow,
) -> Result<LandlockStatus, HardenError> {
    if level != HardenLevel::Strict {
        return Ok(LandlockStatus::NotRequested);
    }
    let count = super::thread_count()?;
    if count != 1 {
        return Err(HardenError::Threads {
            count,
            step: "apply Landlock before any thread starts",
        });
    }
    let status = restrict(
        allow,
        Enforce {
            scopes: true,
            all_threads: false,
        },
    )?;
    super::record_startup_landlock(&status);
    if let LandlockStatus::NotEnforced { reason } = &status {
        tracing::warn!(
            %reason,
            "Landlock not enforced: filesystem writes and reads are not restricted; \
             seccomp and the dumpable protection still apply"
        );
    } else {
        tracing::debug!(
            landlock = %status,
            readable = ?allow.read,
            devices = ?allow.devices,
            "Landlock in force before any thread started: every later thread inherits it"
        );
    }
    Ok(status)
}

/// Opens `path` with `O_PATH` (no read permission needed, nothing read) and says whether it is a
/// directory, which decides which rights the rule may carry.
fn open_path(path: &Path) -> Result<(File, bool), HardenError> {
    let with_path = |source: io::Error| HardenError::LandlockPath {
        path: path.to_owned(),
        source,
    };
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(with_path)?;
    let is_dir = fd.metadata().map_err(with_path)?.is_dir();
    Ok((fd, is_dir))
}

fn not_enforced_reason(status: &landlock::LandlockStatus) -> String {
    match status {
        landlock::LandlockStatus::NotImplemented => {
            "the kernel has no Landlock (needs Linux >= 5.13 built with CONFIG_SECURITY_LANDLOCK)"
                .to_owned()
        }
        landlock::LandlockStatus::NotEnabled => "Landlock is built into the kernel but not \
             enabled: add `landlock` to the `lsm=` boot parameter"
            .to_owned(),
        landlock::LandlockStatus::Available { effective_abi, .. } => format!(
            "the kernel's Landlock ABI ({effective_abi:?}) supports none of the requested rights"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_nodes_are_the_compute_ones() {
        for name in [
            "nvidia0",
            "nvidia15",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia-caps",
        ] {
            assert!(is_nvidia_compute_node(name), "{name}");
        }
        for name in ["nvidia", "nvidia-modeset", "nvidiax", "null", "nvidia0a"] {
            assert!(!is_nvidia_compute_node(name), "{name}");
        }
    }

    #[test]
    fn cuda_allow_list_extends_the_cpu_one_with_existing_paths_only() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let allow = FsAllow::cuda(&[dir.path().to_path_buf(), missing.clone()]);
        for path in default_readable_paths() {
            assert!(allow.read.contains(&path), "{path:?}");
        }
        assert!(allow.read.contains(&dir.path().to_path_buf()));
        assert!(!allow.read.contains(&missing));
        assert!(allow.read.iter().all(|p| p.exists()));
        assert!(FsAllow::cpu().devices.is_empty());
    }

    /// The CUDA driver names its threads through `/proc/self/task/<tid>/comm`: a start-up
    /// domain of `FsAllow::cuda` lets a thread do that, the CPU one does not.
    #[test]
    fn cuda_start_up_domain_lets_threads_be_named() {
        let name_self = |allow: FsAllow| {
            std::thread::spawn(move || {
                let status = restrict(
                    &allow,
                    Enforce {
                        scopes: false,
                        all_threads: false,
                    },
                )
                .expect("restricted");
                let tid = unsafe { libc::gettid() };
                let comm = format!("/proc/self/task/{tid}/comm");
                let wrote = std::fs::write(&comm, "sealserve-t\n");
                (status, wrote.map_err(|e| e.kind()))
            })
            .join()
            .expect("thread")
        };
        let (status, wrote) = name_self(FsAllow::cpu());
        if matches!(status, LandlockStatus::NotEnforced { .. }) {
            return; // no Landlock on this kernel: nothing to check
        }
        assert_eq!(wrote, Err(io::ErrorKind::PermissionDenied));
        let cuda = FsAllow {
            thread_names: FsAllow::cuda(&[]).thread_names,
            ..FsAllow::cpu()
        };
        assert_eq!(cuda.thread_names, [PathBuf::from("/proc/self/task")]);
        let (_, wrote) = name_self(cuda);
        assert_eq!(wrote, Ok(()));
    }
}
