//! The seccomp filter: what code running inside the server may no longer ask the kernel for.

use std::collections::BTreeMap;
use std::sync::Mutex;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::HardenError;

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
/// * `ptrace`, `process_vm_readv/writev`, `pidfd_getfd`, `process_madvise`, `kcmp`: no reaching
///   into another process's memory, descriptors or layout. `pidfd_getfd` steals an open file
///   from a same-uid process (the review did it from an unrestricted thread); `kcmp` compares
///   kernel objects across processes (a KASLR / descriptor oracle).
/// * `perf_event_open`: hardware counters and kernel tracing, a classic side-channel and kernel
///   attack surface the server never needs.
/// * `io_uring_*`: io_uring performs I/O without going through the syscalls filtered here.
/// * `bpf`, `userfaultfd`, `personality`: kernel attack surface / exploitation helpers.
/// * `unshare`, `setns`, `mount`, `umount2` and the new mount API (`open_tree`, `move_mount`,
///   `fs*`, `mount_setattr`): no new namespaces (a user namespace would hand out capabilities)
///   and no mounts.
/// * `keyctl`, `add_key`, `request_key`, `init_module`, `finit_module`: keyrings, kernel modules.
///
/// What this list does **not** stop, with `--harden basic` (no Landlock): opening
/// `/proc/<pid>/mem` of another *dumpable* process of the same uid and writing to it is an
/// `openat` + `pwrite`, which a syscall filter cannot tell from ordinary file I/O. Only
/// Landlock (`strict`) scopes that away.
const DENIED_COMMON: &[Denied] = denied![
    execve => libc::SYS_execve,
    execveat => libc::SYS_execveat,
    memfd_create => libc::SYS_memfd_create,
    ptrace => libc::SYS_ptrace,
    process_vm_readv => libc::SYS_process_vm_readv,
    process_vm_writev => libc::SYS_process_vm_writev,
    pidfd_getfd => libc::SYS_pidfd_getfd,
    process_madvise => libc::SYS_process_madvise,
    kcmp => libc::SYS_kcmp,
    perf_event_open => libc::SYS_perf_event_open,
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

pub(super) const CLONE_LABEL: &str = "clone (without CLONE_THREAD)";
const CLONE3_LABEL: &str = "clone3 (ENOSYS, libc falls back to clone)";
pub(super) const DUMPABLE_LABEL: &str = "prctl(PR_SET_DUMPABLE, non-zero)";
#[cfg(target_arch = "x86_64")]
const X32_LABEL: &str = "all x32-ABI syscalls";

/// What [`install_seccomp_all_threads`] denies, as listed in [`super::HardenReport`].
pub fn seccomp_denied_syscalls() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = DENIED_COMMON
        .iter()
        .chain(DENIED_ARCH)
        .map(|d| d.name)
        .collect();
    names.push(CLONE_LABEL);
    names.push(DUMPABLE_LABEL);
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
/// thread) and `prctl(PR_SET_DUMPABLE, x)` for any `x` other than 0, so that code running
/// inside the server cannot make it dumpable again and open it to same-uid neighbours
/// (`PR_SET_DUMPABLE, 0` stays allowed: it is idempotent). `clone3` returns `ENOSYS` instead,
/// because its flags live in a struct that seccomp cannot inspect; glibc then falls back to
/// `clone`, whose flags we can check, so threads keep working.
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

pub(super) fn seccomp_installed() -> bool {
    *SECCOMP_INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn build_seccomp_programs() -> Result<Vec<BpfProgram>, HardenError> {
    let arch_name = std::env::consts::ARCH;
    let arch = TargetArch::try_from(arch_name)
        .map_err(|_| HardenError::UnsupportedArch { arch: arch_name })?;
    let build = HardenError::SeccompBuild;

    let mut deny = BTreeMap::new();
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
    // prctl(option, arg2, ...): the kernel declares `option` as an int, so only its low 32 bits
    // count (Dword: a value with junk in the high half cannot slip past); `arg2` is an unsigned
    // long compared in full (Qword: the kernel rejects any value but 0 and 1, and a high-half
    // bit must not make "1" look like "not 1"). Both conditions must hold (AND).
    let set_dumpable = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::PR_SET_DUMPABLE as u64,
    )
    .map_err(build)?;
    let non_zero =
        SeccompCondition::new(1, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0).map_err(build)?;
    deny.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![set_dumpable, non_zero]).map_err(build)?],
    );
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let deny = SeccompFilter::new(deny, SeccompAction::Allow, eperm, arch).map_err(build)?;

    let mut clone3 = BTreeMap::new();
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
