//! Tests for `sealserve::harden`.
//!
//! Hardening cannot be undone and applies to the whole process, so every scenario runs in a
//! fresh child: the test re-executes its own binary (`--exact <test> --nocapture
//! --test-threads=1`) with `SEALSERVE_HARDEN_CHILD=<role>`. The child first drops to
//! uid/gid 65534 when it runs as root (CI does), as an attacker in a neighbouring container
//! would not be root either, then hardens itself, performs its checks and prints one line
//! `SEALSERVE_HARDEN_RESULT <json>` that the parent asserts on. Errno values are recorded in the
//! JSON and echoed by the parent (run with `--nocapture` to see them).

use std::ffi::CString;
use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

use common::child::{drop_to_nobody, emit, errno, get_dumpable, next_result, result_json};
use sealserve::harden::{self, HardenLevel, LandlockStatus};
use serde_json::{json, Value};

const CHILD_ENV: &str = "SEALSERVE_HARDEN_CHILD";

// ---------------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------------

fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// A command that re-runs exactly `test_name` of this binary as `role`.
fn child_command(test_name: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A null `void *` for variadic pointer arguments.
fn null() -> *mut libc::c_void {
    std::ptr::null_mut()
}

/// Runs a child to completion, asserts it passed, returns its (last) result line.
fn run_child(mut cmd: Command) -> Value {
    let out = cmd.output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .rev()
        .find_map(result_json)
        .map(|l| serde_json::from_str(l).expect("result line is JSON"))
        .unwrap_or_else(|| {
            panic!("child printed no result line:\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        })
}

fn errno_name(e: i64) -> &'static str {
    match e as i32 {
        0 => "none",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EFAULT => "EFAULT",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EROFS => "EROFS",
        _ => "other",
    }
}

fn get_i64(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("`{key}` missing or not an integer in {v}"))
}

/// `Seccomp:` and `NoNewPrivs:` of a `/proc/.../status` file, parsed independently of the
/// library.
fn status_fields(path: &str) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |key: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    json!({ "seccomp": field("Seccomp"), "no_new_privs": field("NoNewPrivs") })
}

fn landlock_enforced(status: &Value) -> bool {
    status == "FullyEnforced" || status == "PartiallyEnforced"
}

// ---------------------------------------------------------------------------------------------
// (a) seccomp + dumpable
// ---------------------------------------------------------------------------------------------

/// Child: harden at `level`, then try everything the filter must stop.
fn seccomp_child(level: HardenLevel) {
    let ids = drop_to_nobody();
    let report = harden::apply(level, &harden::default_readable_paths()).expect("apply");

    // SAFETY: every call below gets valid pointers; the ones expected to fail are harmless if
    // they succeed (the child process is thrown away), and a successful execve would simply
    // leave the parent without a result line.
    let (execve, memfd, fork, clone3, ptrace, vm_read, io_uring, unshare) = unsafe {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let execve = errno();

        let fd = libc::syscall(
            libc::SYS_memfd_create,
            c"payload".as_ptr(),
            0 as libc::c_uint,
        );
        let memfd = if fd >= 0 { 0 } else { errno() };

        let pid = libc::fork();
        let fork = match pid {
            0 => libc::_exit(0),
            p if p > 0 => {
                libc::waitpid(p, std::ptr::null_mut(), 0);
                0
            }
            _ => errno(),
        };

        // clone3(NULL, 0) is EINVAL when allowed; the filter answers ENOSYS first.
        let rc = libc::syscall(libc::SYS_clone3, null(), 0 as libc::size_t);
        let clone3 = if rc >= 0 { 0 } else { errno() };

        let rc = libc::ptrace(libc::PTRACE_TRACEME, 0 as libc::pid_t, null(), null());
        let ptrace = if rc >= 0 { 0 } else { errno() };

        let mut local_buf = [0u8; 8];
        let source = [7u8; 8];
        let local = libc::iovec {
            iov_base: local_buf.as_mut_ptr().cast(),
            iov_len: local_buf.len(),
        };
        let remote = libc::iovec {
            iov_base: source.as_ptr() as *mut libc::c_void,
            iov_len: source.len(),
        };
        let rc = libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid(),
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        let vm_read = if rc >= 0 { 0 } else { errno() };

        let mut params = [0u64; 16];
        let rc = libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            params.as_mut_ptr(),
        );
        let io_uring = if rc >= 0 { 0 } else { errno() };

        let rc = libc::unshare(libc::CLONE_NEWUSER);
        let unshare = if rc == 0 { 0 } else { errno() };

        (
            execve, memfd, fork, clone3, ptrace, vm_read, io_uring, unshare,
        )
    };

    // x32 ABI getpid (39 | __X32_SYSCALL_BIT): the guard filter answers EPERM; without it the
    // kernel says ENOSYS (no x32) or runs it.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: getpid takes no arguments.
    let x32 = unsafe {
        let rc = libc::syscall(0x4000_0000 | libc::SYS_getpid);
        if rc >= 0 {
            0
        } else {
            errno()
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let x32 = libc::EPERM;

    let round2 = seccomp_round2_probes();
    let w_xor_x = w_xor_x_probes();

    let command = match Command::new("/bin/true").status() {
        Ok(status) => json!(format!("ran: {status}")),
        Err(e) => json!(e.raw_os_error().unwrap_or(-1)),
    };

    // Threads still work (clone3 → ENOSYS → clone with CLONE_THREAD), nested too.
    let threads = std::thread::spawn(|| std::thread::spawn(|| 6 * 7).join().unwrap_or(0))
        .join()
        .unwrap_or(0);

    emit(json!({
        "ids": ids,
        "report": report,
        "execve": execve,
        "command": command,
        "memfd_create": memfd,
        "fork": fork,
        "clone3": clone3,
        "ptrace_traceme": ptrace,
        "process_vm_readv_self": vm_read,
        "io_uring_setup": io_uring,
        "unshare_newuser": unshare,
        "x32_getpid": x32,
        "threads": threads,
        "round2": round2,
        "w_xor_x": w_xor_x,
        "status": status_fields("/proc/self/status"),
        "thread_status": status_fields("/proc/thread-self/status"),
        "dumpable": get_dumpable(),
    }));
}

/// `0` when `rc` is a success, else errno.
fn rc_errno(rc: libc::c_long) -> i32 {
    if rc >= 0 {
        0
    } else {
        errno()
    }
}

/// The calls the 2026-11-29 review made from inside a hardened server that succeeded, and their
/// controls. Run after hardening; every value is `0` (allowed) or errno.
fn seccomp_round2_probes() -> Value {
    // SAFETY: each call gets valid (or NULL, where the kernel checks it) pointers; the ones that
    // succeed only touch this throwaway child process.
    unsafe {
        let prctl = |option: u64, arg2: u64| {
            rc_errno(libc::syscall(
                libc::SYS_prctl,
                option,
                arg2,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ))
        };
        let set_dumpable_1 = prctl(libc::PR_SET_DUMPABLE as u64, 1);
        let set_dumpable_2 = prctl(libc::PR_SET_DUMPABLE as u64, 2);
        // The kernel reads `option` as an int: junk in the high half is still PR_SET_DUMPABLE.
        let set_dumpable_high_option = prctl(0xdead_0000_0000 | libc::PR_SET_DUMPABLE as u64, 1);
        // ...and `arg2` as an unsigned long: 1 << 32 is "not 0" (EINVAL if it got through).
        let set_dumpable_high_arg = prctl(libc::PR_SET_DUMPABLE as u64, 1 << 32);
        let set_dumpable_0 = prctl(libc::PR_SET_DUMPABLE as u64, 0);
        let get_dumpable_rc = prctl(libc::PR_GET_DUMPABLE as u64, 0);

        // A pidfd of this very process: access to oneself always passes the kernel's ptrace
        // check, so an EPERM can only come from the filter (the review used a sibling).
        let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0 as libc::c_uint);
        let pidfd_open = rc_errno(pidfd);
        let pidfd_getfd = rc_errno(libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd as libc::c_int,
            1 as libc::c_int,
            0 as libc::c_uint,
        ));
        let mut page = [0u8; 4096];
        let iov = libc::iovec {
            iov_base: page.as_mut_ptr().cast(),
            iov_len: page.len(),
        };
        let process_madvise = rc_errno(libc::syscall(
            libc::SYS_process_madvise,
            pidfd as libc::c_int,
            &iov as *const libc::iovec,
            1 as libc::size_t,
            libc::MADV_COLD,
            0 as libc::c_uint,
        ));
        // NULL attr: EFAULT when the call is allowed (what the review saw), EPERM when denied.
        let perf_event_open = rc_errno(libc::syscall(
            libc::SYS_perf_event_open,
            null(),
            0 as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            0 as libc::c_ulong,
        ));
        const KCMP_VM: libc::c_int = 1;
        let kcmp = rc_errno(libc::syscall(
            libc::SYS_kcmp,
            libc::getpid(),
            libc::getpid(),
            KCMP_VM,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ));
        json!({
            "set_dumpable_1": set_dumpable_1,
            "set_dumpable_2": set_dumpable_2,
            "set_dumpable_high_option": set_dumpable_high_option,
            "set_dumpable_high_arg": set_dumpable_high_arg,
            "set_dumpable_0": set_dumpable_0,
            "get_dumpable_errno": get_dumpable_rc,
            "dumpable_after": get_dumpable(),
            "pidfd_open": pidfd_open,
            "pidfd_getfd": pidfd_getfd,
            "process_madvise": process_madvise,
            "perf_event_open": perf_event_open,
            "kcmp": kcmp,
        })
    }
}

/// W^X from inside: an RWX mapping, RW → RX, and whether W^X can be switched off again.
fn w_xor_x_probes() -> Value {
    let len = 4096;
    // SAFETY: anonymous mappings of one page, unmapped again; nothing is executed.
    unsafe {
        let rwx = libc::mmap(
            null(),
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let mmap_rwx = if rwx == libc::MAP_FAILED {
            errno()
        } else {
            libc::munmap(rwx, len);
            0
        };
        let rw = libc::mmap(
            null(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(rw, libc::MAP_FAILED, "a plain RW mapping must work");
        let mprotect_rx = if libc::mprotect(rw, len, libc::PROT_READ | libc::PROT_EXEC) == 0 {
            0
        } else {
            errno()
        };
        libc::munmap(rw, len);
        let clear = libc::prctl(
            libc::PR_SET_MDWE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        let clear_mdwe = if clear == 0 { 0 } else { errno() };
        const PR_GET_MDWE: libc::c_int = 66;
        let mdwe = libc::prctl(
            PR_GET_MDWE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        json!({
            "mmap_rwx": mmap_rwx,
            "mprotect_rw_to_rx": mprotect_rx,
            "clear_mdwe": clear_mdwe,
            "get_mdwe": mdwe,
        })
    }
}

fn check_round2(r: &Value) {
    let eperm = i64::from(libc::EPERM);
    let round2 = &r["round2"];
    for key in [
        "set_dumpable_1",
        "set_dumpable_2",
        "set_dumpable_high_option",
        "set_dumpable_high_arg",
        "pidfd_getfd",
        "process_madvise",
        "perf_event_open",
        "kcmp",
    ] {
        assert_eq!(
            get_i64(round2, key),
            eperm,
            "{key} should fail with EPERM, got {}",
            errno_name(get_i64(round2, key))
        );
    }
    // Controls: the filter matches by argument, not the whole syscall.
    assert_eq!(
        round2["set_dumpable_0"], 0,
        "PR_SET_DUMPABLE 0 stays allowed"
    );
    assert_eq!(
        round2["get_dumpable_errno"], 0,
        "PR_GET_DUMPABLE stays allowed"
    );
    assert_eq!(round2["dumpable_after"], 0, "still not dumpable");
    assert_eq!(round2["pidfd_open"], 0, "pidfd_open itself is allowed");

    let eacces = i64::from(libc::EACCES);
    let wx = &r["w_xor_x"];
    assert_eq!(r["report"]["w_xor_x"], "Enforced", "W^X on this kernel");
    assert_eq!(get_i64(wx, "mmap_rwx"), eacces, "RWX mmap must fail");
    assert_eq!(
        get_i64(wx, "mprotect_rw_to_rx"),
        eacces,
        "RW -> RX mprotect must fail"
    );
    assert_eq!(
        get_i64(wx, "clear_mdwe"),
        eperm,
        "W^X cannot be switched off"
    );
    assert_eq!(get_i64(wx, "get_mdwe"), 1, "PR_GET_MDWE = REFUSE_EXEC_GAIN");
}

fn check_seccomp_result(r: &Value, level: HardenLevel) {
    println!("{level}: {r:#}");
    let eperm = i64::from(libc::EPERM);
    for key in [
        "execve",
        "memfd_create",
        "fork",
        "ptrace_traceme",
        "process_vm_readv_self",
        "io_uring_setup",
        "unshare_newuser",
        "x32_getpid",
        "command",
    ] {
        assert_eq!(
            get_i64(r, key),
            eperm,
            "{key} should fail with EPERM, got {} ({})",
            r[key],
            errno_name(get_i64(r, key))
        );
    }
    assert_eq!(get_i64(r, "clone3"), i64::from(libc::ENOSYS), "clone3");
    assert_eq!(get_i64(r, "threads"), 42, "threads must still work");
    for status in ["status", "thread_status"] {
        assert_eq!(r[status]["seccomp"], 2, "{status}: Seccomp");
        assert_eq!(r[status]["no_new_privs"], 1, "{status}: NoNewPrivs");
    }
    assert_eq!(get_i64(r, "dumpable"), 0, "PR_GET_DUMPABLE");
    check_round2(r);

    let report = &r["report"];
    assert_eq!(report["level"], level.to_string());
    assert_eq!(report["dumpable"], false);
    assert_eq!(report["seccomp_mode"], 2);
    assert_eq!(report["no_new_privs"], true);
    let denied: Vec<&str> = report["seccomp_denied_syscalls"]
        .as_array()
        .expect("denied list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "execve",
        "execveat",
        "memfd_create",
        "ptrace",
        "process_vm_writev",
        "bpf",
        "pidfd_getfd",
        "process_madvise",
        "perf_event_open",
        "kcmp",
        "prctl(PR_SET_DUMPABLE, non-zero)",
    ] {
        assert!(denied.contains(&name), "{name} not in {denied:?}");
    }
    match level {
        HardenLevel::Basic => assert_eq!(report["landlock"], "NotRequested"),
        _ => assert!(
            landlock_enforced(&report["landlock"]) || report["landlock"]["NotEnforced"].is_object(),
            "landlock: {}",
            report["landlock"]
        ),
    }
}

#[test]
fn strict_blocks_exec_fork_memfd_and_keeps_threads() {
    if child_role().is_some() {
        return seccomp_child(HardenLevel::Strict);
    }
    let r = run_child(child_command(
        "strict_blocks_exec_fork_memfd_and_keeps_threads",
        "seccomp",
    ));
    check_seccomp_result(&r, HardenLevel::Strict);
}

#[test]
fn basic_blocks_exec_fork_memfd_and_keeps_threads() {
    if child_role().is_some() {
        return seccomp_child(HardenLevel::Basic);
    }
    let r = run_child(child_command(
        "basic_blocks_exec_fork_memfd_and_keeps_threads",
        "seccomp",
    ));
    check_seccomp_result(&r, HardenLevel::Basic);
}

// ---------------------------------------------------------------------------------------------
// (b) a sibling process of the same uid cannot touch the server's memory
// ---------------------------------------------------------------------------------------------

const SIBLING_TEST: &str = "sibling_of_same_uid_cannot_open_mem_or_write_memory";
const BUF_LEN: usize = 64;

/// Child playing the server: optionally hardened (strict, like `serve`), holding a buffer of
/// `A`s whose address it publishes, waiting until stdin closes, then reporting the buffer.
fn sibling_target(hardened: bool) {
    let ids = drop_to_nobody();
    let report = hardened.then(|| {
        harden::apply(HardenLevel::Strict, &harden::default_readable_paths()).expect("apply")
    });
    let buf = Box::new([b'A'; BUF_LEN]);
    let addr = buf.as_ptr() as usize;
    emit(json!({
        "ids": ids,
        // SAFETY: getpid has no preconditions.
        "pid": unsafe { libc::getpid() },
        "addr": addr,
        "dumpable": get_dumpable(),
        "report": report,
    }));
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink).expect("read stdin");
    let after: Vec<u8> = (0..BUF_LEN)
        // SAFETY: in bounds of the live buffer; volatile because another process may have
        // written it behind the compiler's back.
        .map(|i| unsafe { std::ptr::read_volatile(buf.as_ptr().add(i)) })
        .collect();
    emit(json!({ "buffer": String::from_utf8_lossy(&after) }));
}

/// Child playing the neighbour: same uid, not hardened, tries the DDexec route
/// (`/proc/<pid>/mem`), `process_vm_writev` and `ptrace`. In its result, `pwrite_mem` and
/// `process_vm_writev` are byte counts when the call succeeded and `-errno` when it failed.
fn sibling_attacker(pid: libc::pid_t, addr: usize) {
    let ids = drop_to_nobody();
    let mem = CString::new(format!("/proc/{pid}/mem")).expect("path");
    let payload = b"MEMWRITE";
    let vm_payload = b"VMWRITE!";
    // SAFETY: valid C strings, buffers and iovecs; the remote address is only dereferenced by
    // the kernel on the target's side.
    let (open, pwrite, vm_write, seize) = unsafe {
        let fd = libc::open(mem.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        let (open, pwrite) = if fd >= 0 {
            let n = libc::pwrite(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                addr as libc::off_t,
            );
            let pwrite = if n >= 0 { json!(n) } else { json!(-errno()) };
            libc::close(fd);
            (0, pwrite)
        } else {
            (errno(), Value::Null)
        };

        let local = libc::iovec {
            iov_base: vm_payload.as_ptr() as *mut libc::c_void,
            iov_len: vm_payload.len(),
        };
        let remote = libc::iovec {
            iov_base: (addr + 16) as *mut libc::c_void,
            iov_len: vm_payload.len(),
        };
        let n = libc::syscall(
            libc::SYS_process_vm_writev,
            pid,
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        let vm_write = if n >= 0 { json!(n) } else { json!(-errno()) };

        // PTRACE_SEIZE does not stop the target; exiting detaches.
        let rc = libc::ptrace(libc::PTRACE_SEIZE, pid, null(), null());
        let seize = if rc == 0 { 0 } else { errno() };
        (open, pwrite, vm_write, seize)
    };
    emit(json!({
        "ids": ids,
        "open_mem_rdwr_errno": open,
        "pwrite_mem": pwrite,
        "process_vm_writev": vm_write,
        "ptrace_seize_errno": seize,
    }));
}

struct Attack {
    target: Value,
    attacker: Value,
    buffer_after: String,
}

fn attack(hardened: bool) -> Attack {
    let mut cmd = child_command(SIBLING_TEST, "sibling_target");
    cmd.env(
        "SEALSERVE_HARDEN_TARGET_HARDENED",
        if hardened { "1" } else { "0" },
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut target: Child = cmd.spawn().expect("spawn target");
    let mut reader = BufReader::new(target.stdout.take().expect("target stdout"));
    let ready = next_result(&mut reader);

    let mut cmd = child_command(SIBLING_TEST, "sibling_attacker");
    cmd.env(
        "SEALSERVE_HARDEN_TARGET_PID",
        get_i64(&ready, "pid").to_string(),
    )
    .env(
        "SEALSERVE_HARDEN_TARGET_ADDR",
        get_i64(&ready, "addr").to_string(),
    );
    let attacker = run_child(cmd);

    drop(target.stdin.take()); // lets the target report its buffer and exit
    let done = next_result(&mut reader);
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let status = target.wait().expect("wait target");
    assert!(status.success(), "target failed ({status}): {rest}");
    Attack {
        target: ready,
        attacker,
        buffer_after: done["buffer"].as_str().unwrap_or_default().to_owned(),
    }
}

#[test]
fn sibling_of_same_uid_cannot_open_mem_or_write_memory() {
    match child_role().as_deref() {
        Some("sibling_target") => {
            let hardened = std::env::var("SEALSERVE_HARDEN_TARGET_HARDENED").as_deref() == Ok("1");
            return sibling_target(hardened);
        }
        Some("sibling_attacker") => {
            let var = |k: &str| std::env::var(k).expect(k).parse::<i64>().expect(k);
            return sibling_attacker(
                var("SEALSERVE_HARDEN_TARGET_PID") as libc::pid_t,
                var("SEALSERVE_HARDEN_TARGET_ADDR") as usize,
            );
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
    let untouched = "A".repeat(BUF_LEN);

    // The real assertion: a hardened server.
    let a = attack(true);
    println!(
        "hardened: target {}\nattacker {}\nbuffer after: {}",
        a.target, a.attacker, a.buffer_after
    );
    assert_eq!(get_i64(&a.target, "dumpable"), 0);
    assert_eq!(a.target["ids"]["uid"], a.attacker["ids"]["uid"], "same uid");
    let open = get_i64(&a.attacker, "open_mem_rdwr_errno");
    assert_eq!(
        open,
        i64::from(libc::EACCES),
        "open(/proc/<pid>/mem, O_RDWR) must fail with EACCES, got {open} ({})",
        errno_name(open)
    );
    let vm = get_i64(&a.attacker, "process_vm_writev");
    assert!(vm < 0, "process_vm_writev must fail, wrote {vm} bytes");
    println!(
        "hardened: open /proc/<pid>/mem → {}, process_vm_writev → errno {} ({}), PTRACE_SEIZE → {}",
        errno_name(open),
        -vm,
        errno_name(-vm),
        errno_name(get_i64(&a.attacker, "ptrace_seize_errno"))
    );
    assert_ne!(
        get_i64(&a.attacker, "ptrace_seize_errno"),
        0,
        "ptrace must fail"
    );
    assert_eq!(
        a.buffer_after, untouched,
        "hardened target's memory changed"
    );

    // Positive control: the same attack on an unhardened (dumpable) target of the same uid.
    let scope = fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .map(|s| s.trim().to_owned());
    let c = attack(false);
    println!(
        "control: yama ptrace_scope {scope:?}\ntarget {}\nattacker {}\nbuffer after: {}",
        c.target, c.attacker, c.buffer_after
    );
    if scope.as_deref().is_some_and(|s| s != "0") {
        println!(
            "positive control not meaningful: yama ptrace_scope={} forbids same-uid ptrace \
             anyway; skipping only the control",
            scope.as_deref().unwrap_or_default()
        );
        return;
    }
    assert_eq!(get_i64(&c.target, "dumpable"), 1);
    assert_eq!(
        get_i64(&c.attacker, "open_mem_rdwr_errno"),
        0,
        "control: an unhardened target's /proc/<pid>/mem should open for writing"
    );
    assert_eq!(
        c.attacker["pwrite_mem"], 8,
        "control: pwrite into /proc/<pid>/mem"
    );
    assert_eq!(
        c.attacker["process_vm_writev"], 8,
        "control: process_vm_writev"
    );
    assert!(
        c.buffer_after.starts_with("MEMWRITE") && c.buffer_after[16..].starts_with("VMWRITE!"),
        "control: both writes should have landed: {}",
        c.buffer_after
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Landlock
// ---------------------------------------------------------------------------------------------

fn write_errno(path: &Path) -> i32 {
    match fs::write(path, b"x") {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn landlock_child(dir: PathBuf) {
    let ids = drop_to_nobody();
    // Control: before Landlock the same kind of write works, so a later EACCES is Landlock's.
    let probe = dir.join("before.txt");
    let before = write_errno(&probe);
    let _ = fs::remove_file(&probe);

    let allowed = dir.join("allowed");
    let status = harden::restrict_filesystem(std::slice::from_ref(&allowed)).expect("landlock");
    if let LandlockStatus::NotEnforced { reason } = &status {
        emit(json!({ "ids": ids, "landlock": status, "reason": reason }));
        return;
    }
    let read_errno = |p: &Path| match fs::read_to_string(p) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    let open_write_errno = |p: &Path| match fs::OpenOptions::new().write(true).open(p) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    // Outside the test's directory, unique to this child; the parent removes it if it appears.
    let outside =
        std::env::temp_dir().join(format!("sealserve-harden-probe-{}", std::process::id()));
    let in_thread = {
        let dir = dir.clone();
        std::thread::spawn(move || write_errno(&dir.join("from-thread.txt")))
            .join()
            .unwrap_or(-1)
    };
    emit(json!({
        "ids": ids,
        "landlock": status,
        "write_before": before,
        "create_in_tempdir": write_errno(&dir.join("new.txt")),
        "create_in_tmp": write_errno(&outside),
        "outside_path": outside,
        "open_allowed_for_write": open_write_errno(&allowed.join("readable.txt")),
        "read_allowed": fs::read_to_string(allowed.join("readable.txt")).map_err(|e| e.to_string()),
        "read_not_allowed": read_errno(&dir.join("secret.txt")),
        "mkdir": fs::create_dir(dir.join("sub")).err().and_then(|e| e.raw_os_error()).unwrap_or(0),
        "remove_allowed": fs::remove_file(allowed.join("readable.txt"))
            .err().and_then(|e| e.raw_os_error()).unwrap_or(0),
        "create_from_later_thread": in_thread,
    }));
}

#[test]
fn landlock_denies_writes_and_unlisted_reads() {
    if child_role().is_some() {
        let dir = std::env::var("SEALSERVE_HARDEN_DIR").expect("SEALSERVE_HARDEN_DIR");
        return landlock_child(PathBuf::from(dir));
    }
    // Created here (possibly as root) and opened up so that only Landlock, not file modes,
    // can stop uid 65534.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let allowed = dir.join("allowed");
    fs::create_dir(&allowed).unwrap();
    fs::write(allowed.join("readable.txt"), "hello").unwrap();
    fs::write(dir.join("secret.txt"), "secret").unwrap();
    for (path, mode) in [
        (dir.to_path_buf(), 0o777),
        (allowed.clone(), 0o777),
        (allowed.join("readable.txt"), 0o666),
        (dir.join("secret.txt"), 0o666),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    let mut cmd = child_command("landlock_denies_writes_and_unlisted_reads", "landlock");
    cmd.env("SEALSERVE_HARDEN_DIR", dir);
    let r = run_child(cmd);
    println!("landlock: {r:#}");
    if let Some(outside) = r["outside_path"].as_str() {
        let _ = fs::remove_file(outside);
    }
    if let Some(reason) = r["landlock"]["NotEnforced"]["reason"].as_str() {
        println!("SKIPPED: this kernel cannot enforce Landlock: {reason}");
        return;
    }
    assert!(
        landlock_enforced(&r["landlock"]),
        "status {}",
        r["landlock"]
    );
    assert_eq!(r["write_before"], 0, "control write before Landlock failed");
    let eacces = i64::from(libc::EACCES);
    for key in [
        "create_in_tempdir",
        "create_in_tmp",
        "open_allowed_for_write",
        "read_not_allowed",
        "mkdir",
        "remove_allowed",
        "create_from_later_thread",
    ] {
        assert_eq!(
            get_i64(&r, key),
            eacces,
            "{key}: expected EACCES, got {}",
            errno_name(get_i64(&r, key))
        );
    }
    assert_eq!(r["read_allowed"]["Ok"], "hello", "reading an allowed path");
    assert!(!dir.join("new.txt").exists());
}

// ---------------------------------------------------------------------------------------------
// (d) levels and `off`
// ---------------------------------------------------------------------------------------------

#[test]
fn harden_level_parses_displays_and_defaults_to_strict() {
    assert_eq!(HardenLevel::default(), HardenLevel::Strict);
    for level in [HardenLevel::Strict, HardenLevel::Basic, HardenLevel::Off] {
        assert_eq!(level.to_string().parse::<HardenLevel>().unwrap(), level);
    }
    assert_eq!(
        "strict".parse::<HardenLevel>().unwrap(),
        HardenLevel::Strict
    );
    assert_eq!("basic".parse::<HardenLevel>().unwrap(), HardenLevel::Basic);
    assert_eq!("off".parse::<HardenLevel>().unwrap(), HardenLevel::Off);
    assert_eq!("OFF".parse::<HardenLevel>().unwrap(), HardenLevel::Off);
    let err = "paranoid".parse::<HardenLevel>().unwrap_err().to_string();
    assert!(
        err.contains("paranoid") && err.contains("strict") && err.contains("basic"),
        "{err}"
    );
}

fn off_child() {
    let ids = drop_to_nobody();
    let report = harden::apply(HardenLevel::Off, &[]).expect("apply off");
    // SAFETY: fork in a test child; the grandchild exits at once.
    let fork = unsafe {
        match libc::fork() {
            0 => libc::_exit(0),
            p if p > 0 => {
                libc::waitpid(p, std::ptr::null_mut(), 0);
                0
            }
            _ => errno(),
        }
    };
    // Before the probes, which end with PR_SET_DUMPABLE 0.
    let dumpable = get_dumpable();
    let round2 = seccomp_round2_probes();
    let w_xor_x = w_xor_x_probes();
    emit(json!({
        "ids": ids,
        "report": report,
        "status": status_fields("/proc/self/status"),
        "dumpable": dumpable,
        "fork": fork,
        "round2": round2,
        "w_xor_x": w_xor_x,
    }));
}

#[test]
fn off_changes_nothing() {
    if child_role().is_some() {
        return off_child();
    }
    let r = run_child(child_command("off_changes_nothing", "off"));
    println!("off: {r:#}");
    // Whatever the test runner itself runs under (a container's seccomp profile, say) is
    // inherited; `off` must add nothing to it. Here that is Seccomp: 0, NoNewPrivs: 0.
    let parent = status_fields("/proc/self/status");
    assert_eq!(r["status"], parent, "off changed Seccomp/NoNewPrivs");
    assert_eq!(r["report"]["seccomp_mode"], parent["seccomp"]);
    assert_eq!(r["report"]["level"], "off");
    assert_eq!(r["report"]["dumpable"], true);
    assert_eq!(r["report"]["landlock"], "NotRequested");
    assert_eq!(r["report"]["seccomp_denied_syscalls"], json!([]));
    assert_eq!(r["dumpable"], 1);
    assert_eq!(r["fork"], 0, "fork must work without hardening");
    // Controls for the hardened children: without hardening none of these is EPERM, and W^X
    // is off, so the EPERMs and EACCESes there come from `harden`.
    let round2 = &r["round2"];
    assert_eq!(round2["set_dumpable_1"], 0, "control: PR_SET_DUMPABLE 1");
    // The kernel reads prctl's option as an int: junk in the high half still sets the flag,
    // which is why the filter compares only the low half.
    assert_eq!(
        round2["set_dumpable_high_option"], 0,
        "control: PR_SET_DUMPABLE with a junk high half"
    );
    assert_eq!(round2["pidfd_getfd"], 0, "control: pidfd_getfd on oneself");
    for key in ["process_madvise", "perf_event_open", "kcmp"] {
        assert_ne!(
            get_i64(round2, key),
            i64::from(libc::EPERM),
            "control: {key} is not EPERM without hardening"
        );
    }
    assert_eq!(r["w_xor_x"]["mmap_rwx"], 0, "control: RWX mmap without W^X");
    assert_eq!(r["w_xor_x"]["mprotect_rw_to_rx"], 0, "control: RW -> RX");
    assert_eq!(
        r["report"]["w_xor_x"]["NotRequested"]["reason"],
        "--harden off"
    );
}
