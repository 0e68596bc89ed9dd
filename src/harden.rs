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
//!   with `memfd_create(2)` + `execveat(2)` or an RWX mapping, fork a shell, open an `io_uring`
//!   (which bypasses seccomp), write files, load BPF, mount things, steal descriptors from other
//!   processes (`pidfd_getfd`), or simply make the server dumpable again.
//!
//! # What this module does
//!
//! In the order `serve` applies it:
//!
//! 1. [`set_not_dumpable`] first thing in `main`: `prctl(PR_SET_DUMPABLE, 0)`. The kernel then
//!    refuses `ptrace`, `process_vm_readv/writev` and opening `/proc/<pid>/mem` (and most other
//!    `/proc/<pid>/*` files, which become owned by root) to every other process without
//!    `CAP_SYS_PTRACE`, even one of the same uid. This is what stops a neighbour from attacking
//!    us.
//! 2. [`detach`] right after: refuse to start under a tracer, fork once, serve from the child
//!    (a fresh memory map, non-dumpable from birth), supervise from the parent. This closes the
//!    window between `execve` and step 1; see [`startup`](mod@startup).
//! 3. [`restrict_startup`] once the configuration files are read and before any thread exists:
//!    a Landlock domain that denies every filesystem write and every read except what loading,
//!    warm-up and serving need ([`FsAllow`]). Every thread started afterwards inherits it.
//! 4. [`apply_on`] after warm-up: a second, narrower Landlock domain on the main thread and on
//!    every thread pool the server knows ([`ThreadRunner`]); W^X for the whole process
//!    ([`refuse_exec_gain`], `PR_SET_MDWE`: no writable-and-executable memory, no making
//!    written memory executable); and the seccomp filter on every thread
//!    ([`install_seccomp_all_threads`], see [`seccomp_denied_syscalls`]), which also sets
//!    `no_new_privs` and stops the dumpable flag from being set again.
//!
//! [`report`] tells what is in force (for the startup log and `/info`).
//!
//! # What this does not protect
//!
//! * **Other processes in the pod.** An attacker with a shell next to us can still do anything
//!   their own uid allows to *their* processes and to files in shared volumes. Use a runtime image
//!   without a shell or package manager, a pod-level seccomp profile (`RuntimeDefault` or
//!   stricter), `allowPrivilegeEscalation: false`, dropped capabilities, a read-only root
//!   filesystem, and RBAC that does not grant `pods/exec` or `pods/attach` to session users.
//!   With `--harden basic` (no Landlock), code injected into the server can also still open
//!   `/proc/<pid>/mem` of a *dumpable* same-uid process and write to it: a seccomp filter cannot
//!   tell that `openat` from any other. `strict` stops it (Landlock's ptrace scoping).
//! * **Root or `CAP_SYS_PTRACE` in the same user namespace.** Such a neighbour can still ptrace us;
//!   the container must not run privileged or with `SYS_PTRACE` added.
//! * **The start-up race, in part.** See [`startup`](mod@startup): the supervisor's memory
//!   (command line, environment) stays readable to whoever wins it. Run under a dedicated uid.
//! * **Network access.** Seccomp and Landlock as configured here do not restrict sockets; use a
//!   NetworkPolicy.
//!
//! Everything here is Linux-only. The seccomp filter is defined for x86_64, aarch64 and riscv64;
//! other architectures get [`HardenError::UnsupportedArch`].

mod filesystem;
mod seccomp;
pub mod startup;
mod threads;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::sync::Mutex;

pub use filesystem::{
    default_readable_paths, restrict_filesystem, restrict_startup, FsAllow, LANDLOCK_ABI,
};
pub use seccomp::{install_seccomp_all_threads, seccomp_denied_syscalls};
pub use startup::{detach, Detached};
pub use threads::{CandleBarrierPool, RayonGlobalPool, ThreadRunner, ThreadTask};

/// How much hardening `serve` applies (`--harden strict|basic|off`, default `strict`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HardenLevel {
    /// Everything: not dumpable, the start-up fork, Landlock from start-up on (no writes, reads
    /// only where needed), W^X and seccomp. The default: nothing the server does after start-up
    /// needs more.
    #[default]
    Strict,
    /// Not dumpable, the start-up fork, W^X and seccomp; no Landlock. For deployments that read
    /// files after start-up which are not known in advance, or kernels where Landlock gets in
    /// the way. Code injected into the server can then still read files, and write other
    /// dumpable same-uid processes' memory through `/proc/<pid>/mem`.
    Basic,
    /// Nothing (a warning is logged). For debugging only: a neighbour of the same uid can then
    /// read and rewrite the server's memory. Also what a debugger or `strace` needs: the other
    /// levels refuse to start under a tracer.
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
/// that merely lacks Landlock or `PR_SET_MDWE` is *not* an error (see
/// [`LandlockStatus::NotEnforced`], [`WxorX::NotSupported`]).
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

    /// A tracer is attached to the process at start-up.
    #[error(
        "a tracer (pid {pid}) is attached to this process; refusing to start, because a process \
         attached before hardening keeps full access to the server's memory. Detach the \
         debugger or strace, or, to debug on purpose, start with `--harden off`"
    )]
    Traced {
        /// `TracerPid` from `/proc/self/status`.
        pid: libc::pid_t,
    },

    /// A start-up step that must run while the process has a single thread found more.
    #[error(
        "cannot {step}: the process already runs {count} threads, and this step only covers \
         threads started after it. This is a bug in the start-up order of `serve` (src/bin/\
         serve.rs); please report it. `--harden off` starts without hardening meanwhile"
    )]
    Threads {
        /// `Threads:` from `/proc/self/status`.
        count: u32,
        /// What could not be done.
        step: &'static str,
    },

    /// `fork(2)` failed at start-up.
    #[error(
        "cannot fork the serving process: {0}. The process or its cgroup may be at its limit of \
         processes (`ulimit -u`, pids.max): raise it, or start with `--harden off`"
    )]
    Fork(#[source] io::Error),

    /// `/proc/self/status` could not be read.
    #[error(
        "cannot read /proc/self/status: {0}. Hardening checks the tracer and the thread count \
         there: mount /proc in the container"
    )]
    Status(#[source] io::Error),

    /// `prctl(PR_SET_MDWE)` failed for another reason than "not supported".
    #[error(
        "prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) failed: {0}. A seccomp profile of the \
         container runtime may deny it: allow prctl, or start with `--harden off`"
    )]
    Mdwe(#[source] io::Error),

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
         definition (src/harden/seccomp.rs), not in the environment; please report it. \
         `--harden off` runs without the filter meanwhile"
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
        path: std::path::PathBuf,
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

    /// Restricting the threads of one pool failed.
    #[error("hardening the {pool} threads failed: {message}")]
    PerThread {
        /// [`ThreadRunner::name`].
        pool: &'static str,
        /// The first failure.
        message: String,
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

/// Whether W^X (`PR_SET_MDWE` with `PR_MDWE_REFUSE_EXEC_GAIN`) is in force.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum WxorX {
    /// No new writable-and-executable mapping, and no making a mapping executable that was not,
    /// for the rest of the process's life (it cannot be switched off again).
    Enforced,
    /// The kernel does not have `PR_SET_MDWE` (Linux < 6.3).
    NotSupported {
        /// Why.
        reason: String,
    },
    /// Not asked for: `--harden off`, or a device where it was not validated.
    NotRequested {
        /// Why.
        reason: String,
    },
}

/// Landlock applied per thread on one pool after warm-up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolCoverage {
    /// [`ThreadRunner::name`].
    pub pool: String,
    /// On how many threads the domain was applied (candle's barrier pool also runs the task on
    /// the calling thread, which is counted).
    pub threads: usize,
}

/// What is in force, for the startup log and `/info`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HardenReport {
    /// The requested [`HardenLevel`] (`strict`, `basic`, `off`).
    pub level: String,
    /// `prctl(PR_GET_DUMPABLE) != 0`. `false` is what keeps same-uid neighbours out.
    pub dumpable: bool,
    /// Whether this process is the server forked at start-up by a supervisor ([`detach`]).
    pub forked_at_startup: bool,
    /// `Seccomp:` from `/proc/self/status`: 0 none, 1 strict mode, 2 filter. Note that 2 may
    /// also come from the container runtime's profile; `seccomp_denied_syscalls` is only
    /// non-empty when *our* filter was installed.
    pub seccomp_mode: u32,
    /// `NoNewPrivs:` from `/proc/self/status` (set by seccomp and Landlock installation).
    pub no_new_privs: bool,
    /// The Landlock domain applied before any thread existed ([`restrict_startup`]), which
    /// every thread inherits.
    pub landlock_startup: LandlockStatus,
    /// Landlock status of the domain the main thread stacked after warm-up (not visible in
    /// `/proc`, so reported by whoever applied it).
    pub landlock: LandlockStatus,
    /// The thread pools that stacked the after-warm-up domain too.
    pub landlock_threads: Vec<PoolCoverage>,
    /// W^X.
    pub w_xor_x: WxorX,
    /// What our seccomp filter denies, empty if it was not installed by this process.
    pub seccomp_denied_syscalls: Vec<&'static str>,
}

/// Makes this process non-dumpable: `prctl(PR_SET_DUMPABLE, 0)`.
///
/// Call it first thing in `main`, before loading anything secret. Afterwards, processes without
/// `CAP_SYS_PTRACE` (including ones of our own uid) can no longer `ptrace` us, use
/// `process_vm_readv/writev` on us, or open `/proc/<pid>/mem`, `/proc/<pid>/environ` and similar
/// (the kernel makes them root-owned). It also disables core dumps, which would contain the
/// model and request data.
///
/// The flag is process-wide and inherited by a forked child. The kernel resets it when the
/// process changes uid/gid (to `fs.suid_dumpable`, normally 0) or execs (which the seccomp filter
/// forbids), so call it again after any privilege drop; it is idempotent.
pub fn set_not_dumpable() -> Result<(), HardenError> {
    // Open /proc/self/status now, while every path is still readable, so that `report` works
    // after Landlock even if the caller's readable list omits /proc/self.
    let _ = with_status_file(|_| Ok(()));
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

/// W^X for the whole process: `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`.
///
/// Afterwards `mmap` refuses `PROT_WRITE|PROT_EXEC` and `mprotect` refuses to add `PROT_EXEC` to
/// a mapping that lacks it (both `EACCES`), so injected code cannot write a second stage into
/// memory and run it (the review ran a syscall from a fresh RWX page). It cannot be undone, and
/// forked children inherit it. Apply it after warm-up: a JIT (candle has none on CPU) needs it
/// off. A kernel before 6.3 answers `EINVAL`: reported as [`WxorX::NotSupported`].
pub fn refuse_exec_gain() -> Result<WxorX, HardenError> {
    // SAFETY: PR_SET_MDWE takes a flag word; the remaining arguments must be 0.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_MDWE,
            libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        return Ok(WxorX::Enforced);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL) => Ok(WxorX::NotSupported {
            reason: format!("the kernel has no PR_SET_MDWE (Linux >= 6.3): {error}"),
        }),
        _ => Err(HardenError::Mdwe(error)),
    }
}

/// What [`apply_on`] puts in force after warm-up.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The after-warm-up Landlock domain (`strict` only).
    pub allow: FsAllow,
    /// Set W^X ([`refuse_exec_gain`]); `None` to leave it off, with the reason to report.
    pub w_xor_x: Option<String>,
}

/// Applies `level` with `readable` as the Landlock read list, W^X, and no thread pools:
/// [`apply_on`] for callers (and tests) that have no pools to reach.
pub fn apply(
    level: HardenLevel,
    readable: &[std::path::PathBuf],
) -> Result<HardenReport, HardenError> {
    let plan = Plan {
        allow: FsAllow::read_only(readable),
        w_xor_x: None,
    };
    apply_on(level, &plan, &[])
}

/// What the engine runs on, for [`after_warm_up`].
pub struct EngineThreads<'a> {
    /// The engine's own thread(s), reached through its runner.
    pub engine: &'a dyn ThreadRunner,
    /// True when the model runs on an NVIDIA GPU.
    pub cuda: bool,
    /// CUDA library folders the driver loads from lazily after start-up (empty on CPU).
    pub cuda_library_dirs: Vec<std::path::PathBuf>,
}

/// The serving process's after-warm-up hardening: which paths stay readable, whether W^X is
/// set, and which thread pools get the per-thread Landlock domain (the engine's, rayon's global
/// pool, candle's barrier pool on CPU). `serve` only says what its engine runs on; the
/// choreography lives here, next to what it protects.
pub fn after_warm_up(
    level: HardenLevel,
    threads: &EngineThreads<'_>,
) -> Result<HardenReport, HardenError> {
    let mut readable = default_readable_paths();
    if threads.cuda {
        // Libraries loaded lazily by name after startup need the loader cache and their folders.
        readable.push("/etc/ld.so.cache".into());
        readable.extend(threads.cuda_library_dirs.iter().cloned());
    }
    let plan = Plan {
        allow: FsAllow::read_only(&readable),
        // Not validated with the CUDA driver (no GPU where this was written): the driver and
        // its JIT may need to create executable memory after warm-up.
        w_xor_x: threads
            .cuda
            .then(|| "not validated with the CUDA driver".to_owned()),
    };
    // The start-up domain already covers every thread; these add the narrower after-warm-up
    // domain to each pool we know of (defence in depth). candle's barrier pool exists on CPU
    // only (on CUDA, asking for it would start it).
    let mut runners: Vec<&dyn ThreadRunner> = vec![threads.engine, &RayonGlobalPool];
    if !threads.cuda {
        runners.push(&CandleBarrierPool);
    }
    apply_on(level, &plan, &runners)
}

/// Applies `level` after warm-up, before serving:
///
/// * `Strict`: [`set_not_dumpable`]; the Landlock domain of `plan.allow` on every thread of each
///   of `runners`, then on the calling thread (asking for all threads at once where the kernel
///   supports it); W^X unless `plan.w_xor_x` says why not; then [`install_seccomp_all_threads`].
///   Landlock goes before seccomp so that the filter is installed last, when nothing else is
///   left to set up.
/// * `Basic`: [`set_not_dumpable`], W^X (same rule) and [`install_seccomp_all_threads`];
///   `plan.allow` and `runners` are not used.
/// * `Off`: nothing; logs a warning.
///
/// Call it on the main thread after loading and warm-up and before starting the tokio runtime.
/// Logs what is in force and returns it. A kernel without Landlock or MDWE is logged, not an
/// error; any other failure is returned and the server should not serve.
pub fn apply_on(
    level: HardenLevel,
    plan: &Plan,
    runners: &[&dyn ThreadRunner],
) -> Result<HardenReport, HardenError> {
    let mut coverage = Vec::new();
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
            LandlockStatus::NotRequested
        }
        HardenLevel::Strict => {
            set_not_dumpable()?;
            for runner in runners {
                coverage.push(restrict_pool(*runner, &plan.allow)?);
            }
            let everyone = filesystem::Enforce {
                scopes: false,
                all_threads: true,
            };
            let landlock = filesystem::restrict(&plan.allow, everyone)?;
            if let LandlockStatus::NotEnforced { reason } = &landlock {
                tracing::warn!(
                    %reason,
                    "Landlock not enforced: filesystem writes and reads are not restricted; \
                     seccomp and the dumpable protection still apply"
                );
            }
            landlock
        }
    };
    let w_xor_x = match (level, &plan.w_xor_x) {
        (HardenLevel::Off, _) => WxorX::NotRequested {
            reason: "--harden off".to_owned(),
        },
        (_, Some(reason)) => WxorX::NotRequested {
            reason: reason.clone(),
        },
        (_, None) => refuse_exec_gain()?,
    };
    if level != HardenLevel::Off {
        install_seccomp_all_threads()?;
    }
    let mut report = report(level, landlock);
    report.landlock_threads = coverage;
    report.w_xor_x = w_xor_x;
    if level != HardenLevel::Off {
        tracing::info!(
            level = %report.level,
            dumpable = report.dumpable,
            forked_at_startup = report.forked_at_startup,
            seccomp_mode = report.seccomp_mode,
            no_new_privs = report.no_new_privs,
            landlock_startup = %report.landlock_startup,
            landlock = %report.landlock,
            landlock_threads = ?report.landlock_threads,
            w_xor_x = ?report.w_xor_x,
            readable = ?plan.allow.read,
            denied = ?report.seccomp_denied_syscalls,
            "process hardening in force"
        );
    }
    Ok(report)
}

/// Stacks the `allow` domain on every thread of `runner`.
fn restrict_pool(runner: &dyn ThreadRunner, allow: &FsAllow) -> Result<PoolCoverage, HardenError> {
    let pool = runner.name();
    let owned = allow.clone();
    let outcomes = threads::collect_on_each(runner, move || {
        filesystem::restrict(&owned, filesystem::Enforce::default()).map_err(|e| e.to_string())
    })
    .map_err(|message| HardenError::PerThread { pool, message })?;
    if let Some(Err(message)) = outcomes.iter().find(|o| o.is_err()) {
        return Err(HardenError::PerThread {
            pool,
            message: message.clone(),
        });
    }
    Ok(PoolCoverage {
        pool: pool.to_owned(),
        threads: outcomes.len(),
    })
}

/// The start-up Landlock status, recorded by [`restrict_startup`] for [`report`].
static STARTUP_LANDLOCK: Mutex<Option<LandlockStatus>> = Mutex::new(None);

fn record_startup_landlock(status: &LandlockStatus) {
    *STARTUP_LANDLOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(status.clone());
}

/// The supervisor pid when [`detach`] forked this process.
static SUPERVISOR: Mutex<Option<libc::pid_t>> = Mutex::new(None);

fn record_supervisor(pid: libc::pid_t) {
    *SUPERVISOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(pid);
}

/// Reads what is in force: `Seccomp:` and `NoNewPrivs:` from `/proc/self/status`,
/// `PR_GET_DUMPABLE`, and the given Landlock status (which `/proc` does not show). W^X and the
/// per-thread coverage are filled in by [`apply_on`].
///
/// `/proc/self/status` is opened once per process, the first time this module is used (at the
/// latest by [`set_not_dumpable`]; again in the child after [`detach`]), and re-read from
/// offset 0 afterwards, so this keeps working under Landlock. If it cannot be read, a warning is
/// logged and the fields read as 0/false.
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
    let landlock_startup = STARTUP_LANDLOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
        .unwrap_or(LandlockStatus::NotRequested);
    let forked_at_startup = SUPERVISOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .is_some();
    HardenReport {
        level: level.to_string(),
        dumpable,
        forked_at_startup,
        seccomp_mode,
        no_new_privs,
        landlock_startup,
        landlock,
        landlock_threads: Vec::new(),
        w_xor_x: WxorX::NotRequested {
            reason: "not applied".to_owned(),
        },
        seccomp_denied_syscalls: if seccomp::seccomp_installed() {
            seccomp_denied_syscalls()
        } else {
            Vec::new()
        },
    }
}

/// `/proc/self/status` of the process that opened it. A forked child must not read its
/// parent's (the descriptor names the pid it was opened for), so it reopens when the pid changed.
static STATUS: Mutex<Option<(libc::pid_t, File)>> = Mutex::new(None);

fn with_status_file<T>(f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
    let mut slot = STATUS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if slot.as_ref().is_none_or(|(opened_by, _)| *opened_by != pid) {
        *slot = Some((pid, File::open("/proc/self/status")?));
    }
    match slot.as_ref() {
        Some((_, file)) => f(file),
        None => Err(io::Error::other("/proc/self/status is not open")),
    }
}

fn read_status() -> io::Result<String> {
    with_status_file(|file| {
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
    })
}

fn status_field(status: &str, key: &str) -> Option<u32> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `Threads:` from `/proc/self/status`.
fn thread_count() -> Result<u32, HardenError> {
    let status = read_status().map_err(HardenError::Status)?;
    status_field(&status, "Threads").ok_or_else(|| {
        HardenError::Status(io::Error::new(
            io::ErrorKind::InvalidData,
            "no Threads: line",
        ))
    })
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
        let s = "Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\nTracerPid:\t0\n";
        assert_eq!(status_field(s, "Seccomp"), Some(2));
        assert_eq!(status_field(s, "NoNewPrivs"), Some(1));
        assert_eq!(status_field(s, "TracerPid"), Some(0));
        assert_eq!(status_field(s, "Missing"), None);
    }

    #[test]
    fn this_process_reports_its_threads_and_no_tracer() {
        assert!(thread_count().unwrap() >= 1);
        assert_eq!(startup::tracer_pid().unwrap(), 0);
    }

    #[test]
    fn seccomp_programs_build() {
        let programs = seccomp::build_seccomp_programs().unwrap();
        assert!(programs.iter().all(|p| !p.is_empty()));
        let names = seccomp_denied_syscalls();
        for name in [
            "execve",
            "memfd_create",
            "ptrace",
            "process_vm_writev",
            "pidfd_getfd",
            "process_madvise",
            "perf_event_open",
            "kcmp",
            seccomp::CLONE_LABEL,
            seccomp::DUMPABLE_LABEL,
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
}
