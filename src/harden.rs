//! Self-hardening of the `serve` process against fileless attacks.
//!
//! # Threat
//!
//! Someone with a shell in a neighbouring container of the same pod (a CML session pod) runs,
//! usually, as the same uid as the server. Without hardening that is enough to:
//!
//! * overwrite the server's code or data through `/proc/<pid>/mem` (the DDexec technique: write
//!   shellcode over a running process and never touch the filesystem),
//! * `ptrace(2)` it, or read/write its memory with `process_vm_readv(2)`/`process_vm_writev(2)`
//!   (model weights, request data, keys),
//! * and, once it has code running inside the server, keep going from there: load a second stage
//!   with `memfd_create(2)` + `execveat(2)`, fork a shell, open an `io_uring` (which bypasses
//!   seccomp), write files, load BPF, mount things.
//!
//! # What this module does
//!
//! Applied by the server after the model is verified, loaded and warmed up, before it serves:
//!
//! 1. [`set_not_dumpable`]: `prctl(PR_SET_DUMPABLE, 0)`. The kernel then refuses `ptrace`,
//!    `process_vm_readv/writev` and opening `/proc/<pid>/mem` (and most other `/proc/<pid>/*`
//!    files, which become owned by root) to every other process without `CAP_SYS_PTRACE`, even
//!    one of the same uid. This is what stops a neighbour from attacking us.
//! 2. [`install_seccomp_all_threads`]: a seccomp filter on every thread that makes `execve`,
//!    `execveat`, `memfd_create`, `fork`/`vfork`/`clone` of a new process, `ptrace`,
//!    `process_vm_*`, `io_uring_*`, `bpf`, `userfaultfd`, namespaces, mounts, keyrings and kernel
//!    modules fail with `EPERM` (see [`seccomp_denied_syscalls`]). It also sets `no_new_privs`.
//!    This limits what injected code can do *from inside* the process: no new program, no child
//!    process, no fileless executable.
//! 3. [`restrict_filesystem`]: a Landlock domain that denies every filesystem write and every
//!    read except the paths the running server still needs ([`default_readable_paths`]).
//!
//! [`apply`] does all three according to a [`HardenLevel`] and [`report`] tells what is in force
//! (for the startup log and `/info`).
//!
//! # What this does not protect
//!
//! * **Other processes in the pod.** An attacker with a shell next to us can still do anything
//!   their own uid allows to *their* processes and to files in shared volumes. Use a runtime image
//!   without a shell or package manager, a pod-level seccomp profile (`RuntimeDefault` or
//!   stricter), `allowPrivilegeEscalation: false`, dropped capabilities, a read-only root
//!   filesystem, and RBAC that does not grant `pods/exec` or `pods/attach` to session users.
//! * **Root or `CAP_SYS_PTRACE` in the same user namespace.** Such a neighbour can still ptrace us;
//!   the container must not run privileged or with `SYS_PTRACE` added.
//! * **The time before hardening.** Loading and warm-up run unhardened except for
//!   `PR_SET_DUMPABLE`, which `main` sets first thing. Keep that window short.
//! * **Network access.** Seccomp and Landlock as configured here do not restrict sockets; use a
//!   NetworkPolicy.
//! * **Threads created before Landlock.** Landlock only covers the calling thread and threads it
//!   creates afterwards. The server applies it on the main thread before the tokio runtime starts,
//!   so the runtime's worker threads are covered; inference threads created earlier (during
//!   loading and warm-up) are covered by seccomp and the dumpable flag only, unless the engine
//!   calls [`restrict_filesystem`] on those threads too (that is safe, see its docs).
//!
//! Everything here is Linux-only. The seccomp filter is defined for x86_64, aarch64 and riscv64;
//! other architectures get [`HardenError::UnsupportedArch`].

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// How much hardening `serve` applies (`--harden strict|basic|off`, default `strict`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HardenLevel {
    /// Not dumpable + Landlock (no writes, reads only where needed) + seccomp. The default:
    /// nothing the server does after warm-up needs more.
    #[default]
    Strict,
    /// Not dumpable + seccomp, no Landlock. For deployments that read files after start-up
    /// which are not known in advance, or kernels where Landlock gets in the way.
    Basic,
    /// Nothing (a warning is logged). For debugging only: a neighbour of the same uid can then
    /// read and rewrite the server's memory.
    Off,
}

impl HardenLevel {
    /// The spelling used on the command line, in logs and in `/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            HardenLevel::Strict => "strict",
            HardenLevel::Basic => "basic",
            HardenLevel::Off => "off",
        }
    }
}

impl fmt::Display for HardenLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HardenLevel {
    type Err = HardenError;

    /// Accepts `strict`, `basic` or `off` (ASCII case-insensitive, surrounding blanks ignored),
    /// so that an environment variable written as `STRICT` does not stop the server.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        [HardenLevel::Strict, HardenLevel::Basic, HardenLevel::Off]
            .into_iter()
            .find(|level| t.eq_ignore_ascii_case(level.as_str()))
            .ok_or_else(|| HardenError::InvalidLevel {
                value: s.to_owned(),
            })
    }
}

/// Why hardening could not be applied. Every message says what failed and what to do about it.
///
/// The server should refuse to start on any of these rather than serve half-hardened: a kernel
/// that merely lacks Landlock is *not* an error (see [`LandlockStatus::NotEnforced`]).
#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    /// `--harden` got something other than `strict`, `basic` or `off`.
    #[error("unknown hardening level `{value}`: expected `strict` (default), `basic` or `off`")]
    InvalidLevel {
        /// What was given.
        value: String,
    },

    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error(
        "prctl(PR_SET_DUMPABLE, 0) failed: {0}; without it any process of the same uid can \
         ptrace this server or rewrite its memory through /proc/<pid>/mem. This prctl exists on \
         every Linux since 2.3.20: check that the binary really runs on Linux and is not under a \
         seccomp profile that denies prctl"
    )]
    Dumpable(#[source] io::Error),

    /// The seccomp filter has no syscall numbers for this CPU architecture.
    #[error(
        "no seccomp filter is defined for CPU architecture `{arch}` (only x86_64, aarch64 and \
         riscv64); run on one of those, or start with `--harden off` knowing that nothing then \
         stops exec or fork from inside the server"
    )]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },

    /// seccompiler rejected the filter: a bug in the rules below, not in the environment.
    #[error(
        "building the seccomp filter failed: {0}. This is a bug in sealserve's filter \
         definition (src/harden.rs), not in the environment; please report it. `--harden off` \
         runs without the filter meanwhile"
    )]
    SeccompBuild(#[source] seccompiler::BackendError),

    /// The kernel refused to install the filter.
    #[error(
        "installing the seccomp filter on all threads failed: {0}. The kernel needs \
         CONFIG_SECCOMP_FILTER (and TSYNC, Linux >= 3.17); a container runtime's own seccomp \
         profile may also deny seccomp(2) or prctl(PR_SET_NO_NEW_PRIVS): allow them in the pod's \
         profile. A thread that installed its own filter makes TSYNC fail: install this filter \
         before such threads start"
    )]
    SeccompInstall(#[source] seccompiler::Error),

    /// A path to keep readable under Landlock could not be opened.
    #[error(
        "cannot open {} to keep it readable under Landlock: {source}. Remove it from the list of \
         readable paths if the server does not need it, or fix the path (it must exist when \
         hardening is applied)",
        path.display()
    )]
    LandlockPath {
        /// The path from the `readable` list.
        path: PathBuf,
        /// Why opening it (`O_PATH`) failed.
        #[source]
        source: io::Error,
    },

    /// A Landlock system call failed although the kernel supports Landlock.
    #[error(
        "Landlock failed to {step}: {source}. If this kernel's Landlock is unusable here (for \
         example more than 16 nested Landlock domains on this thread), start with \
         `--harden basic`, which keeps seccomp and the dumpable protection"
    )]
    Landlock {
        /// Which step failed (declare access rights, create the ruleset, add a rule, restrict).
        step: &'static str,
        /// The error from the landlock crate.
        #[source]
        source: landlock::RulesetError,
    },
}

/// Whether the Landlock filesystem sandbox is in force on the thread that requested it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LandlockStatus {
    /// Every access right requested ([`LANDLOCK_ABI`]) is enforced.
    FullyEnforced,
    /// The kernel supports Landlock but an older ABI than [`LANDLOCK_ABI`]: writes and reads
    /// outside the allowed paths are denied, but newer rights are not (for example, on kernels
    /// before Landlock ABI 9, connecting to pathname UNIX sockets is still allowed).
    PartiallyEnforced,
    /// Landlock is not in force. The server continues (seccomp and the dumpable flag still
    /// apply) and logs `reason`.
    NotEnforced {
        /// Why: kernel without Landlock, Landlock not enabled at boot, ...
        reason: String,
    },
    /// Landlock was not asked for (`--harden basic` or `off`).
    NotRequested,
}

impl fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LandlockStatus::FullyEnforced => f.write_str("fully enforced"),
            LandlockStatus::PartiallyEnforced => f.write_str("partially enforced"),
            LandlockStatus::NotEnforced { reason } => write!(f, "not enforced ({reason})"),
            LandlockStatus::NotRequested => f.write_str("not requested"),
        }
    }
}

/// What is in force, for the startup log and `/info`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HardenReport {
    /// The requested [`HardenLevel`] (`strict`, `basic`, `off`).
    pub level: String,
    /// `prctl(PR_GET_DUMPABLE) != 0`. `false` is what keeps same-uid neighbours out.
    pub dumpable: bool,
    /// `Seccomp:` from `/proc/self/status`: 0 none, 1 strict mode, 2 filter. Note that 2 may
    /// also come from the container runtime's profile; `seccomp_denied_syscalls` is only
    /// non-empty when *our* filter was installed.
    pub seccomp_mode: u32,
    /// `NoNewPrivs:` from `/proc/self/status` (set by seccomp and Landlock installation).
    pub no_new_privs: bool,
    /// Landlock status of the thread that applied it (not visible in `/proc`, so reported by
    /// whoever called [`restrict_filesystem`]).
    pub landlock: LandlockStatus,
    /// What our seccomp filter denies, empty if it was not installed by this process.
    pub seccomp_denied_syscalls: Vec<&'static str>,
}

/// The Landlock ABI whose filesystem access rights are requested (best effort: a kernel with an
/// older ABI enforces what it knows and the status is [`LandlockStatus::PartiallyEnforced`]).
///
/// ABI 9 is the first whose rights cover everything filesystem-shaped that writes: files,
/// directories, special files, links, renames (`Refer`, v2), truncation (v3), device ioctls (v5)
/// and connecting to pathname UNIX sockets (`ResolveUnix`, v9, e.g. a container runtime's socket
/// in a shared volume).
pub const LANDLOCK_ABI: ABI = ABI::V9;

/// Rights granted on readable directories: list them and read the files below. Not `Execute`:
/// nothing may be executed (dynamic libraries are `mmap`ed, which `Execute` does not govern).
fn read_dir_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Rights granted on a readable regular (or special) file.
fn read_file_access() -> BitFlags<AccessFs> {
    BitFlags::from(AccessFs::ReadFile)
}

/// Makes this process non-dumpable: `prctl(PR_SET_DUMPABLE, 0)`.
///
/// Call it first thing in `main`, before loading anything secret. Afterwards, processes without
/// `CAP_SYS_PTRACE` (including ones of our own uid) can no longer `ptrace` us, use
/// `process_vm_readv/writev` on us, or open `/proc/<pid>/mem`, `/proc/<pid>/environ` and similar
/// (the kernel makes them root-owned). It also disables core dumps, which would contain the
/// model and request data.
///
/// The flag is process-wide. The kernel resets it when the process changes uid/gid (to
/// `fs.suid_dumpable`, normally 0) or execs (which the seccomp filter forbids), so call it again
/// after any privilege drop; it is idempotent.
pub fn set_not_dumpable() -> Result<(), HardenError> {
    // Open /proc/self/status now, while every path is still readable, so that `report` works
    // after Landlock even if the caller's readable list omits /proc/self.
    let _ = status_file();
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; the rest are ignored.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(HardenError::Dumpable(io::Error::last_os_error()));
    }
    Ok(())
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
/// Landlock restricts only the calling thread and its future children. The server calls this
/// on the main thread before the tokio runtime starts. Threads that already exist (inference
/// threads created during loading and warm-up) stay unrestricted unless they call this
/// themselves. That is safe: every call builds its own ruleset and stacks one more Landlock
/// domain on the calling thread only; no process-wide state is touched. The kernel allows at
/// most 16 stacked domains per thread.
///
/// On CUDA, warm every kernel before this call and add the driver's library directories (and
/// `/etc/ld.so.cache` for `dlopen` by soname) to `readable`: lazy loading of the driver's JIT
/// compiler was seen to fail after Landlock otherwise.
///
/// # Returns
///
/// The enforcement status. A kernel without Landlock (or with Landlock disabled at boot) is
/// not an error: the result is [`LandlockStatus::NotEnforced`] with the reason, which the
/// caller logs.
pub fn restrict_filesystem(readable: &[PathBuf]) -> Result<LandlockStatus, HardenError> {
    let landlock_err = |step: &'static str| move |source| HardenError::Landlock { step, source };

    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(landlock_err("declare the handled filesystem access rights"))?
        .create()
        .map_err(landlock_err("create a ruleset"))?;

    for path in readable {
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

/// Opens `path` with `O_PATH` (no read permission needed, nothing read) and says whether it is a
/// directory, which decides which rights the rule may carry.
fn open_path(path: &Path) -> Result<(File, bool), HardenError> {
    let with_path = |source| HardenError::LandlockPath {
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

/// One syscall that our filter denies with `EPERM` whatever its arguments.
struct Denied {
    name: &'static str,
    nr: libc::c_long,
}

/// `Denied { name: "execve", nr: libc::SYS_execve }` from `execve`.
macro_rules! denied {
    ($($name:ident => $nr:path),* $(,)?) => {
        &[$(Denied { name: stringify!($name), nr: $nr }),*]
    };
}

/// Syscalls denied unconditionally with `EPERM`, and why:
///
/// * `execve`, `execveat`, `memfd_create`: no new program, in particular no fileless one
///   (`memfd_create` + `execveat(AT_EMPTY_PATH)`); the server never execs.
/// * `fork`, `vfork` (and `clone` without `CLONE_THREAD`, below): no child process; threads
///   still work.
/// * `ptrace`, `process_vm_readv/writev`: no attacking other processes from ours.
/// * `io_uring_*`: io_uring performs I/O without going through the syscalls filtered here.
/// * `bpf`, `userfaultfd`, `personality`: kernel attack surface / exploitation helpers.
/// * `unshare`, `setns`, `mount`, `umount2` and the new mount API (`open_tree`, `move_mount`,
///   `fs*`, `mount_setattr`): no new namespaces (a user namespace would hand out capabilities)
///   and no mounts.
/// * `keyctl`, `add_key`, `request_key`, `init_module`, `finit_module`: keyrings, kernel modules.
const DENIED_COMMON: &[Denied] = denied![
    execve => libc::SYS_execve,
    execveat => libc::SYS_execveat,
    memfd_create => libc::SYS_memfd_create,
    ptrace => libc::SYS_ptrace,
    process_vm_readv => libc::SYS_process_vm_readv,
    process_vm_writev => libc::SYS_process_vm_writev,
    personality => libc::SYS_personality,
    io_uring_setup => libc::SYS_io_uring_setup,
    io_uring_enter => libc::SYS_io_uring_enter,
    io_uring_register => libc::SYS_io_uring_register,
    bpf => libc::SYS_bpf,
    userfaultfd => libc::SYS_userfaultfd,
    unshare => libc::SYS_unshare,
    setns => libc::SYS_setns,
    mount => libc::SYS_mount,
    umount2 => libc::SYS_umount2,
    open_tree => libc::SYS_open_tree,
    move_mount => libc::SYS_move_mount,
    fsopen => libc::SYS_fsopen,
    fsconfig => libc::SYS_fsconfig,
    fsmount => libc::SYS_fsmount,
    fspick => libc::SYS_fspick,
    mount_setattr => libc::SYS_mount_setattr,
    keyctl => libc::SYS_keyctl,
    add_key => libc::SYS_add_key,
    request_key => libc::SYS_request_key,
    init_module => libc::SYS_init_module,
    finit_module => libc::SYS_finit_module,
];

/// `fork` and `vfork` exist as syscalls on x86_64 only; elsewhere libc forks with `clone`.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[Denied] = denied![fork => libc::SYS_fork, vfork => libc::SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[Denied] = &[];

const CLONE_LABEL: &str = "clone (without CLONE_THREAD)";
const CLONE3_LABEL: &str = "clone3 (ENOSYS, libc falls back to clone)";
#[cfg(target_arch = "x86_64")]
const X32_LABEL: &str = "all x32-ABI syscalls";

/// What [`install_seccomp_all_threads`] denies, as listed in [`HardenReport`].
pub fn seccomp_denied_syscalls() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = DENIED_COMMON
        .iter()
        .chain(DENIED_ARCH)
        .map(|d| d.name)
        .collect();
    names.push(CLONE_LABEL);
    names.push(CLONE3_LABEL);
    #[cfg(target_arch = "x86_64")]
    names.push(X32_LABEL);
    names
}

/// Whether this process installed our seccomp filter (guarded so that a second call does not
/// stack the same filters again).
static SECCOMP_INSTALLED: Mutex<bool> = Mutex::new(false);

/// Installs the seccomp filter on every thread of the process (seccomp TSYNC), which also sets
/// `no_new_privs`.
///
/// Default action: allow. Denied with `EPERM`: the syscalls in [`seccomp_denied_syscalls`],
/// including `clone` whenever its flags lack `CLONE_THREAD` (that is: a new process, not a
/// thread). `clone3` returns `ENOSYS` instead, because its flags live in a struct that seccomp
/// cannot inspect; glibc then falls back to `clone`, whose flags we can check, so threads keep
/// working.
///
/// Three filters are installed, because seccompiler gives one match action per filter: the
/// `EPERM` filter (which also kills the process for any syscall made through a foreign ABI such
/// as 32-bit `int 0x80`, whose numbers differ), the `clone3` → `ENOSYS` filter, and on x86_64
/// a hand-written one returning `EPERM` for every x32-ABI syscall (numbers with bit 30 set),
/// which would otherwise slip past the number-based rules on kernels with `CONFIG_X86_X32_ABI`.
/// The kernel runs all filters and takes the most restrictive result.
///
/// A filter cannot be removed. Install it after warm-up: anything that needs one of the denied
/// calls (spawning a helper, a JIT that forks) must already be done. Calling this again after a
/// success does nothing.
pub fn install_seccomp_all_threads() -> Result<(), HardenError> {
    let mut installed = SECCOMP_INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if *installed {
        return Ok(());
    }

    // Build everything before installing anything, so that a build error leaves the process
    // untouched.
    let programs = build_seccomp_programs()?;
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(HardenError::SeccompInstall)?;
    }
    *installed = true;
    Ok(())
}

fn seccomp_installed() -> bool {
    *SECCOMP_INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn build_seccomp_programs() -> Result<Vec<BpfProgram>, HardenError> {
    let arch_name = std::env::consts::ARCH;
    let arch = TargetArch::try_from(arch_name)
        .map_err(|_| HardenError::UnsupportedArch { arch: arch_name })?;
    let build = HardenError::SeccompBuild;

    let mut deny = std::collections::BTreeMap::new();
    for d in DENIED_COMMON.iter().chain(DENIED_ARCH) {
        // An empty rule list means "whatever the arguments".
        deny.insert(d.nr, Vec::new());
    }
    // clone(flags, ...): flags is argument 0 on x86_64, aarch64 and riscv64. Matches (→ EPERM)
    // when (flags & CLONE_THREAD) == 0, i.e. a new process rather than a thread.
    let clone_thread = libc::CLONE_THREAD as u64;
    let new_process = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(clone_thread),
        0,
    )
    .map_err(build)?;
    deny.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![new_process]).map_err(build)?],
    );
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let deny = SeccompFilter::new(deny, SeccompAction::Allow, eperm, arch).map_err(build)?;

    let mut clone3 = std::collections::BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, enosys, arch).map_err(build)?;

    #[allow(unused_mut)]
    let mut programs = vec![
        BpfProgram::try_from(deny).map_err(build)?,
        BpfProgram::try_from(clone3).map_err(build)?,
    ];
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_guard());
    Ok(programs)
}

/// `EPERM` for every syscall made through the x32 ABI (x86_64 audit arch, number with
/// `__X32_SYSCALL_BIT`). x32 syscalls have their own numbers (x32 `execve` is 520 | bit 30),
/// so the number-based rules above would miss them.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // Offsets in struct seccomp_data.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let op = |code: u32| code as u16;
    let ld = op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
    let ret = op(libc::BPF_RET | libc::BPF_K);
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        /* 0 */ stmt(ld, ARCH),
        // Another audit arch: allow here; the EPERM filter kills the process for those.
        /* 1 */
        jump(
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
            AUDIT_ARCH_X86_64,
            0,
            3,
        ),
        /* 2 */ stmt(ld, NR),
        /* 3 */
        jump(
            op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K),
            X32_SYSCALL_BIT,
            0,
            1,
        ),
        /* 4 */ stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        /* 5 */ stmt(ret, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Applies `level`:
///
/// * `Strict`: [`set_not_dumpable`], then [`restrict_filesystem`]`(readable)` on the calling
///   thread, then [`install_seccomp_all_threads`]. Landlock goes before seccomp so that the
///   filter is installed last, when nothing else is left to set up.
/// * `Basic`: [`set_not_dumpable`] and [`install_seccomp_all_threads`]; `readable` is ignored.
/// * `Off`: nothing; logs a warning.
///
/// Call it on the main thread after loading and warm-up and before starting the tokio runtime
/// (see [`restrict_filesystem`] for why the thread matters). Logs what is in force and returns
/// it. A kernel without Landlock is logged, not an error; any other failure is returned and
/// the server should not serve.
pub fn apply(level: HardenLevel, readable: &[PathBuf]) -> Result<HardenReport, HardenError> {
    let landlock = match level {
        HardenLevel::Off => {
            tracing::warn!(
                "--harden off: the server is not hardened; any process of the same uid can \
                 ptrace it or rewrite its memory through /proc/<pid>/mem, and code injected \
                 into it can exec and fork freely"
            );
            LandlockStatus::NotRequested
        }
        HardenLevel::Basic => {
            set_not_dumpable()?;
            install_seccomp_all_threads()?;
            LandlockStatus::NotRequested
        }
        HardenLevel::Strict => {
            set_not_dumpable()?;
            let landlock = restrict_filesystem(readable)?;
            if let LandlockStatus::NotEnforced { reason } = &landlock {
                tracing::warn!(
                    %reason,
                    "Landlock not enforced: filesystem writes and reads are not restricted; \
                     seccomp and the dumpable protection still apply"
                );
            }
            install_seccomp_all_threads()?;
            landlock
        }
    };
    let report = report(level, landlock);
    if level != HardenLevel::Off {
        tracing::info!(
            level = %report.level,
            dumpable = report.dumpable,
            seccomp_mode = report.seccomp_mode,
            no_new_privs = report.no_new_privs,
            landlock = %report.landlock,
            readable = ?readable,
            denied = ?report.seccomp_denied_syscalls,
            "process hardening in force"
        );
    }
    Ok(report)
}

/// Reads what is in force: `Seccomp:` and `NoNewPrivs:` from `/proc/self/status`,
/// `PR_GET_DUMPABLE`, and the given Landlock status (which `/proc` does not show).
///
/// `/proc/self/status` is opened once, the first time this module is used (at the latest by
/// [`set_not_dumpable`]), and re-read from offset 0 afterwards, so this keeps working under
/// Landlock. If it cannot be read, a warning is logged and the fields read as 0/false.
pub fn report(level: HardenLevel, landlock: LandlockStatus) -> HardenReport {
    let (seccomp_mode, no_new_privs) = match read_status() {
        Ok(status) => (
            status_field(&status, "Seccomp").unwrap_or(0),
            status_field(&status, "NoNewPrivs").unwrap_or(0) != 0,
        ),
        Err(error) => {
            tracing::warn!(%error, "cannot read /proc/self/status; reporting seccomp and no_new_privs as off");
            (0, false)
        }
    };
    // SAFETY: PR_GET_DUMPABLE takes no arguments and returns the flag (0, 1 or 2) or -1.
    let dumpable = unsafe {
        libc::prctl(
            libc::PR_GET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } != 0;
    HardenReport {
        level: level.to_string(),
        dumpable,
        seccomp_mode,
        no_new_privs,
        landlock,
        seccomp_denied_syscalls: if seccomp_installed() {
            seccomp_denied_syscalls()
        } else {
            Vec::new()
        },
    }
}

/// `/proc/self/status`, opened once. `None` if it could not be opened then.
fn status_file() -> Option<&'static File> {
    static STATUS: OnceLock<Option<File>> = OnceLock::new();
    STATUS
        .get_or_init(|| File::open("/proc/self/status").ok())
        .as_ref()
}

fn read_status() -> io::Result<String> {
    let Some(file) = status_file() else {
        return std::fs::read_to_string("/proc/self/status");
    };
    // seq_file: a read at offset 0 regenerates the contents.
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = file.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn status_field(status: &str, key: &str) -> Option<u32> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What a running server still reads after hardening, for [`restrict_filesystem`]:
///
/// * `/proc/self`: `status` for [`report`]; `cgroup`, `mountinfo` for the CPU count
///   (`std::thread::available_parallelism`, which tokio uses when it starts).
/// * `/sys/fs/cgroup`: the cgroup CPU quota (`cpu.max`) behind that CPU count.
/// * `/sys/devices/system/cpu`: CPU topology and online CPUs (read by some runtimes).
/// * `/dev/urandom`: fallback of the `getrandom` crate when the `getrandom(2)` syscall is missing.
///
/// Only paths that exist are returned. On CUDA the caller appends the driver's library
/// directories and `/etc/ld.so.cache`.
pub fn default_readable_paths() -> Vec<PathBuf> {
    [
        "/proc/self",
        "/sys/fs/cgroup",
        "/sys/devices/system/cpu",
        "/dev/urandom",
    ]
    .into_iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_parses_and_displays() {
        for (text, level) in [
            ("strict", HardenLevel::Strict),
            ("basic", HardenLevel::Basic),
            ("off", HardenLevel::Off),
            (" Strict ", HardenLevel::Strict),
        ] {
            assert_eq!(text.parse::<HardenLevel>().unwrap(), level);
        }
        assert_eq!(HardenLevel::default(), HardenLevel::Strict);
        assert_eq!(HardenLevel::Basic.to_string(), "basic");
        let err = "none".parse::<HardenLevel>().unwrap_err().to_string();
        assert!(err.contains("`none`") && err.contains("strict"), "{err}");
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n";
        assert_eq!(status_field(s, "Seccomp"), Some(2));
        assert_eq!(status_field(s, "NoNewPrivs"), Some(1));
        assert_eq!(status_field(s, "Missing"), None);
    }

    #[test]
    fn seccomp_programs_build() {
        let programs = build_seccomp_programs().unwrap();
        assert!(programs.iter().all(|p| !p.is_empty()));
        let names = seccomp_denied_syscalls();
        for name in [
            "execve",
            "memfd_create",
            "ptrace",
            "process_vm_writev",
            CLONE_LABEL,
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
}
