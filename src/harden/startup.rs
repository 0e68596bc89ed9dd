//! The process start: close the window between `execve` and `PR_SET_DUMPABLE(0)`.
//!
//! # The window
//!
//! A freshly exec'd process is dumpable until its first instructions make it not so. A process
//! of the same uid that opens `/proc/<pid>/mem` (or `PTRACE_SEIZE`s it) inside that window keeps
//! the descriptor (or the attachment) afterwards: the kernel checks at open time, and the
//! descriptor stays bound to the process's memory map. The 2026-11-29 review won that race 1 in
//! 9–24 launches and kept read-write access to the serving process for its whole life.
//!
//! # What [`detach`] does
//!
//! After `PR_SET_DUMPABLE(0)` the process refuses to start while a tracer is attached
//! (`TracerPid` in `/proc/self/status`), then forks once. The child continues as the server: it
//! has a *new* memory map, non-dumpable from birth, so a descriptor opened on the parent's map
//! (or a ptrace attachment to the parent) does not reach it. The parent becomes a small
//! supervisor that holds no secret (it forks before the API key file, key files or sockets are
//! opened) and does nothing but:
//!
//! * forward `SIGTERM`, `SIGINT`, `SIGHUP`, `SIGQUIT`, `SIGUSR1` and `SIGUSR2` to the server,
//!   so `kill <pid>`, `docker stop`, Kubernetes and CML stopping the process all reach it (the
//!   server treats a repeated `SIGINT`, e.g. from a terminal that signals the whole process
//!   group and from the forwarding, like one);
//! * wait for it and exit with its exit code, or die of the same signal (as PID 1 of a
//!   container, where the kernel ignores a self-sent fatal signal, exit with 128 + signal number
//!   like a shell), and reap any other child handed to it as PID 1;
//! * harden itself as well (seccomp, and with `strict` a Landlock domain that allows no file).
//!
//! The server gets `PR_SET_PDEATHSIG(SIGKILL)`: if the supervisor is killed outright
//! (`SIGKILL` cannot be forwarded) the server goes with it and frees the port at once, as a
//! single process would have.
//!
//! # What remains
//!
//! * Whoever wins the race still reads the supervisor's memory: the command line and the
//!   environment (`SEALSERVE_API_KEY` if set there, which is why `--api-key-file` is the
//!   recommended way), nothing loaded later. They can also `kill` both processes.
//! * A tracer attached in the window can follow the fork (`PTRACE_O_TRACEFORK`) and fake the
//!   `TracerPid` check, since it controls the process it is tracing. The check stops an
//!   accidental debugger or a naive attacker, not a determined one.
//! * The real fix is to run the server under a uid no other workload (notebook, shell, sidecar)
//!   uses, in an image without a shell: then no neighbour can race it at all.

use std::io;

use super::{HardenError, HardenLevel};

/// Signals the supervisor passes on to the server.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Where the calling process stands after [`detach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detached {
    /// The supervisor's pid when this process is the forked server; `None` with `--harden off`,
    /// which does not fork.
    pub supervisor: Option<libc::pid_t>,
}

/// The start-up step of `--harden strict|basic`; call it first thing in `main`, before any
/// thread exists and before reading any secret. See the module docs.
///
/// Returns in the forked server only: the supervisor never returns (it exits with the server's
/// status). `Off` does nothing. Errors: [`HardenError::Dumpable`] (the flag cannot be set),
/// [`HardenError::Traced`] (a tracer is attached, before or after the fork),
/// [`HardenError::Threads`] (another thread already exists: fork would copy only this one),
/// [`HardenError::Fork`].
pub fn detach(level: HardenLevel) -> Result<Detached, HardenError> {
    if level == HardenLevel::Off {
        return Ok(Detached { supervisor: None });
    }
    super::set_not_dumpable()?;
    refuse_tracer()?;
    let count = super::thread_count()?;
    if count != 1 {
        return Err(HardenError::Threads {
            count,
            step: "fork the serving process",
        });
    }

    // Block the forwarded signals and SIGCHLD before forking, so none is lost or acted on by
    // default between the fork and the supervisor's wait loop. SIGCHLD must not be ignored
    // (an inherited SIG_IGN would make the kernel reap the server and hide its exit status).
    let mut wait_set = empty_sigset();
    for signal in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
        // SAFETY: `wait_set` is an initialised sigset_t and `signal` a valid signal number.
        unsafe { libc::sigaddset(&mut wait_set, *signal) };
    }
    let mut previous = empty_sigset();
    // SAFETY: valid sigset pointers; SIG_DFL is always a valid disposition for SIGCHLD.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &wait_set, &mut previous);
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }

    // SAFETY: getpid has no preconditions.
    let supervisor = unsafe { libc::getpid() };
    // SAFETY: the process has exactly one thread (checked above), so the child is a complete
    // copy and may keep running Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            let error = io::Error::last_os_error();
            // SAFETY: restores the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
            Err(HardenError::Fork(error))
        }
        0 => {
            // SAFETY: plain prctl/getppid/raise/sigmask calls with valid arguments.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                );
                // The supervisor died before PDEATHSIG was armed: go the same way.
                if libc::getppid() != supervisor {
                    libc::raise(libc::SIGKILL);
                }
                libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
            }
            // A tracer that followed the fork (PTRACE_O_TRACEFORK) is attached to us now.
            refuse_tracer()?;
            super::record_supervisor(supervisor);
            Ok(Detached {
                supervisor: Some(supervisor),
            })
        }
        server => supervise(level, server, &wait_set),
    }
}

/// `TracerPid` of this process, from `/proc/self/status`.
pub fn tracer_pid() -> Result<libc::pid_t, HardenError> {
    let status = super::read_status().map_err(HardenError::Status)?;
    Ok(super::status_field(&status, "TracerPid").unwrap_or(0) as libc::pid_t)
}

/// [`HardenError::Traced`] when a tracer (debugger, strace, or an attacker who won the start-up
/// race) is attached.
fn refuse_tracer() -> Result<(), HardenError> {
    match tracer_pid()? {
        0 => Ok(()),
        pid => Err(HardenError::Traced { pid }),
    }
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// The supervisor: hardens itself, forwards signals to `server`, reaps children, and ends the
/// way `server` ended.
fn supervise(level: HardenLevel, server: libc::pid_t, wait_set: &libc::sigset_t) -> ! {
    if let Err(error) = harden_supervisor(level) {
        // Not fatal: the server hardens itself and fails on the same error if it is real.
        tracing::warn!(%error, "the supervisor process could not harden itself");
    }
    loop {
        // SAFETY: siginfo_t is plain data filled in by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `wait_set` holds only blocked signals; `info` is a valid out-pointer.
        let signal = unsafe { libc::sigwaitinfo(wait_set, &mut info) };
        if signal < 0 {
            continue; // EINTR: a signal outside the set (e.g. SIGCONT) interrupted the wait.
        }
        if signal != libc::SIGCHLD {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(server, signal) };
            continue;
        }
        // One SIGCHLD may stand for several exits; reap them all.
        loop {
            let mut status = 0;
            // SAFETY: valid out-pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid == server {
                end_like(status);
            }
            if pid <= 0 {
                break;
            }
        }
    }
}

/// The supervisor's own hardening: the same seccomp filter as the server, W^X, and with
/// `strict` a Landlock domain that allows no file at all (it only waits and signals).
fn harden_supervisor(level: HardenLevel) -> Result<(), HardenError> {
    if level == HardenLevel::Strict {
        super::filesystem::restrict(&super::FsAllow::default(), Default::default())?;
    }
    super::refuse_exec_gain()?;
    super::install_seccomp_all_threads()
}

/// Exits with the server's exit code, or dies of the signal that killed it.
fn end_like(status: libc::c_int) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let signal = libc::WTERMSIG(status);
    let mut only = empty_sigset();
    // SAFETY: restoring the default action and unblocking one valid signal, then raising it.
    unsafe {
        libc::sigaddset(&mut only, signal);
        libc::signal(signal, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signal);
    }
    // Still here: PID 1 of a PID namespace ignores its own fatal signals.
    std::process::exit(128 + signal)
}
