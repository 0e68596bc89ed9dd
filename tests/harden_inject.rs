//! Probes **every thread** of a running `serve` from the inside, the way the 2026-11-29 review
//! did: a ptrace injector stops one thread at a time and makes it execute raw syscalls, so that
//! thread's own seccomp filter and Landlock domain decide. Landlock binds per thread, and the
//! review found one (`candle-bp-0`, candle's barrier pool) that could read and create any file,
//! steal a sibling's descriptor and open its memory.
//!
//! For each thread of the serving process (and the supervisor's one thread) the injector tries:
//! read a file outside the allow-list, create a file in a world-writable folder, open a
//! same-uid sibling's `/proc/<pid>/mem` read-write, `pidfd_getfd` one of the sibling's
//! descriptors, `prctl(PR_SET_DUMPABLE, 1)`, an RWX `mmap` and an RW -> RX `mprotect`. Against
//! `--harden strict` all must fail; against `--harden off` (the control, which shows the
//! injector works) the file read, file creation, dumpable flag, RWX mapping and mprotect succeed.
//!
//! Needs `CAP_SYS_PTRACE` (root; CI runs as root): the hardened server is not dumpable. The
//! server and the sibling run as root too, like the injector: neither Landlock nor seccomp makes
//! an exception for root, so the denials below hold for any uid (and the server binary need not
//! be reachable by another uid in a fresh clone under a private home). x86_64 only (registers
//! and `syscall`).
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::server::Server;
use serde_json::{json, Value};

/// The address of a `syscall` instruction (`0f 05`) in the target's executable text.
fn syscall_instruction(pid: u32, mem: &File) -> u64 {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("r-x") || !line.ends_with("serve") {
            continue;
        }
        let (start, end) = range.split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("start");
        let end = u64::from_str_radix(end, 16).expect("end");
        let mut text = vec![0u8; (end - start).min(1 << 20) as usize];
        mem.read_exact_at(&mut text, start).expect("read text");
        if let Some(at) = text.windows(2).position(|w| w == [0x0f, 0x05]) {
            return start + at as u64;
        }
    }
    panic!("no syscall instruction found in the executable mapping of {pid}");
}

fn ptrace(request: libc::c_uint, tid: i32, addr: usize, data: usize) -> libc::c_long {
    // SAFETY: the requests used here take integers or pointers to a live user_regs_struct.
    unsafe {
        libc::ptrace(
            request,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

/// Waits for `tid` to stop; returns the stop signal.
fn wait_stop(tid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on a thread we are tracing (__WALL: it is not our child).
    let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    assert_eq!(
        rc,
        tid,
        "waitpid {tid}: {}",
        std::io::Error::last_os_error()
    );
    assert!(libc::WIFSTOPPED(status), "thread {tid}: status {status:#x}");
    libc::WSTOPSIG(status)
}

/// One thread, stopped under ptrace, running syscalls of our choosing.
struct Injected {
    tid: i32,
    saved: libc::user_regs_struct,
    syscall_at: u64,
}

impl Injected {
    fn seize(tid: i32, syscall_at: u64) -> Self {
        let rc = ptrace(libc::PTRACE_SEIZE, tid, 0, 0);
        assert_eq!(
            rc,
            0,
            "PTRACE_SEIZE {tid}: {} (this test needs root / CAP_SYS_PTRACE; CI runs as root)",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
            0,
            "PTRACE_INTERRUPT"
        );
        wait_stop(tid);
        // SAFETY: plain data, filled in by the kernel.
        let mut saved: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        assert_eq!(
            ptrace(libc::PTRACE_GETREGS, tid, 0, &mut saved as *mut _ as usize),
            0
        );
        Injected {
            tid,
            saved,
            syscall_at,
        }
    }

    /// Executes syscall `nr` on the thread; returns its raw result (`-errno` on failure).
    fn syscall(&self, nr: libc::c_long, args: [u64; 6]) -> i64 {
        let mut regs = self.saved;
        regs.rax = nr as u64;
        // No restart logic for whatever syscall the thread was stopped in.
        regs.orig_rax = u64::MAX;
        regs.rip = self.syscall_at;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        assert_eq!(
            ptrace(
                libc::PTRACE_SETREGS,
                self.tid,
                0,
                &regs as *const _ as usize
            ),
            0
        );
        assert_eq!(ptrace(libc::PTRACE_SINGLESTEP, self.tid, 0, 0), 0);
        let signal = wait_stop(self.tid);
        assert_eq!(signal, libc::SIGTRAP, "single step of thread {}", self.tid);
        // SAFETY: plain data, filled in by the kernel.
        let mut after: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        assert_eq!(
            ptrace(
                libc::PTRACE_GETREGS,
                self.tid,
                0,
                &mut after as *mut _ as usize
            ),
            0
        );
        after.rax as i64
    }

    /// Closes `fd` in the target if a probe opened one.
    fn close_if_open(&self, fd: i64) {
        if fd >= 0 {
            self.syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
        }
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        // Restores the interrupted state (including a syscall to restart) and lets it go.
        ptrace(
            libc::PTRACE_SETREGS,
            self.tid,
            0,
            &self.saved as *const _ as usize,
        );
        ptrace(libc::PTRACE_DETACH, self.tid, 0, 0);
    }
}

/// Scratch memory in the target for path strings, written through `/proc/<pid>/mem`.
struct Scratch<'a> {
    mem: &'a File,
    base: u64,
}

impl Scratch<'_> {
    fn c_string(&self, slot: u64, text: &str) -> u64 {
        let at = self.base + slot * 512;
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        assert!(bytes.len() <= 512, "path too long: {text}");
        self.mem.write_all_at(&bytes, at).expect("write scratch");
        at
    }
}

struct Paths<'a> {
    secret: &'a Path,
    writable: &'a Path,
    sibling: u32,
}

/// The probes on one thread; each value is the raw syscall result (>= 0 success, -errno).
fn probe_thread(tid: i32, comm: &str, syscall_at: u64, scratch: &Scratch, paths: &Paths) -> Value {
    let t = Injected::seize(tid, syscall_at);
    let at_fdcwd = libc::AT_FDCWD as i64 as u64;
    let cloexec = libc::O_CLOEXEC as u64;

    let secret = scratch.c_string(0, &paths.secret.display().to_string());
    let read_secret = t.syscall(
        libc::SYS_openat,
        [at_fdcwd, secret, libc::O_RDONLY as u64 | cloexec, 0, 0, 0],
    );
    t.close_if_open(read_secret);

    let created = paths.writable.join(format!("created-by-{tid}"));
    let create_path = scratch.c_string(1, &created.display().to_string());
    let create = t.syscall(
        libc::SYS_openat,
        [
            at_fdcwd,
            create_path,
            (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u64 | cloexec,
            0o600,
            0,
            0,
        ],
    );
    t.close_if_open(create);

    let sibling_mem = scratch.c_string(2, &format!("/proc/{}/mem", paths.sibling));
    let open_sibling_mem = t.syscall(
        libc::SYS_openat,
        [
            at_fdcwd,
            sibling_mem,
            libc::O_RDWR as u64 | cloexec,
            0,
            0,
            0,
        ],
    );
    t.close_if_open(open_sibling_mem);

    let pidfd = t.syscall(libc::SYS_pidfd_open, [paths.sibling as u64, 0, 0, 0, 0, 0]);
    let pidfd_getfd = if pidfd >= 0 {
        let fd = t.syscall(libc::SYS_pidfd_getfd, [pidfd as u64, 1, 0, 0, 0, 0]);
        t.close_if_open(fd);
        t.close_if_open(pidfd);
        fd
    } else {
        pidfd
    };

    let dumpable = t.syscall(
        libc::SYS_prctl,
        [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
    );
    if dumpable == 0 {
        t.syscall(
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, 0, 0, 0, 0, 0],
        );
    }

    // One anonymous page with `prot`, mapped by the injected thread.
    let map_page = |prot: libc::c_int| {
        t.syscall(
            libc::SYS_mmap,
            [
                0,
                4096,
                prot as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
    };
    let rwx = map_page(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
    let mmap_rwx = if rwx >= 0 {
        t.syscall(libc::SYS_munmap, [rwx as u64, 4096, 0, 0, 0, 0]);
        0
    } else {
        rwx
    };
    // RW, then RW -> RX: the other half of W^X (the review ran a syscall from such a page).
    let rw = map_page(libc::PROT_READ | libc::PROT_WRITE);
    let mprotect_rx = if rw >= 0 {
        let rx = t.syscall(
            libc::SYS_mprotect,
            [
                rw as u64,
                4096,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                0,
                0,
                0,
            ],
        );
        t.syscall(libc::SYS_munmap, [rw as u64, 4096, 0, 0, 0, 0]);
        rx
    } else {
        rw
    };
    drop(t);
    json!({
        "tid": tid,
        "comm": comm,
        "read_secret": read_secret.min(0),
        "create": create.min(0),
        "open_sibling_mem_rdwr": open_sibling_mem.min(0),
        "pidfd_getfd_sibling": pidfd_getfd.min(0),
        "set_dumpable_1": dumpable,
        "mmap_rwx": mmap_rwx,
        "mprotect_rx": mprotect_rx,
    })
}

/// Probes every thread of `pid`.
fn probe_process(pid: u32, paths: &Paths) -> Vec<Value> {
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open /proc/<pid>/mem (needs root)");
    let tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list tasks")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let syscall_at = syscall_instruction(pid, &mem);
    // Scratch page for the path strings, mapped by the first thread.
    let first = Injected::seize(tids[0], syscall_at);
    let base = first.syscall(
        libc::SYS_mmap,
        [
            0,
            4096,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    );
    assert!(base > 0, "scratch mmap in the target: {base}");
    drop(first);
    let scratch = Scratch {
        mem: &mem,
        base: base as u64,
    };
    let probes = tids
        .iter()
        .map(|&tid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default();
            probe_thread(tid, &comm, syscall_at, &scratch, paths)
        })
        .collect();
    let last = Injected::seize(tids[0], syscall_at);
    last.syscall(libc::SYS_munmap, [base as u64, 4096, 0, 0, 0, 0]);
    probes
}

struct Fixture {
    _dir: tempfile::TempDir,
    secret: std::path::PathBuf,
    writable: std::path::PathBuf,
    sibling: Child,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let secret = dir.path().join("secret.txt");
        fs::write(&secret, "not for the server").expect("write");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod");
        let writable = dir.path().join("writable");
        fs::create_dir(&writable).expect("mkdir");
        fs::set_permissions(&writable, fs::Permissions::from_mode(0o777)).expect("chmod");
        // A same-uid neighbour process with an open descriptor to steal.
        let sibling = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sibling");
        Fixture {
            _dir: dir,
            secret,
            writable,
            sibling,
        }
    }

    fn paths(&self) -> Paths<'_> {
        Paths {
            secret: &self.secret,
            writable: &self.writable,
            sibling: self.sibling.id(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.sibling.kill();
        let _ = self.sibling.wait();
    }
}

/// Starts `serve --harden <level>` with enough compute threads that candle's barrier pool
/// exists on any machine.
fn start(level: &str) -> Server {
    Server::start(&["--harden", level], &[("RAYON_NUM_THREADS", "3")])
}

fn get_i64(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

#[test]
fn every_thread_of_a_hardened_server_is_confined() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test injects syscalls into a non-dumpable server: run it as root (CI does)"
    );
    let fixture = Fixture::new();

    // Control: an unhardened server, same injector. File access, the dumpable flag and RWX
    // memory work from every thread, so a denial below is the hardening's doing.
    let control = start("off");
    let probes = probe_process(control.serving_pid(), &fixture.paths());
    println!("--harden off: {}", json!(probes));
    for p in &probes {
        assert!(get_i64(p, "read_secret") >= 0, "control read: {p}");
        assert!(get_i64(p, "create") >= 0, "control create: {p}");
        assert_eq!(get_i64(p, "set_dumpable_1"), 0, "control prctl: {p}");
        assert_eq!(get_i64(p, "mmap_rwx"), 0, "control RWX: {p}");
        assert_eq!(get_i64(p, "mprotect_rx"), 0, "control RW -> RX: {p}");
    }
    drop(control);
    for entry in fs::read_dir(&fixture.writable).expect("list") {
        fs::remove_file(entry.expect("entry").path()).expect("clean up control files");
    }

    let server = start("strict");
    let serving = server.serving_pid();
    let supervisor = server.child.id();
    assert_ne!(serving, supervisor);
    let mut probes = probe_process(serving, &fixture.paths());
    let supervisor_probes = probe_process(supervisor, &fixture.paths());
    println!("--harden strict, serving process: {}", json!(probes));
    println!("--harden strict, supervisor: {}", json!(supervisor_probes));
    let comms: Vec<String> = probes
        .iter()
        .filter_map(|p| p["comm"].as_str().map(str::to_owned))
        .collect();
    for expected in ["candle-bp-", "sealserve-engin", "sealserve-http"] {
        assert!(
            comms.iter().any(|c| c.starts_with(expected)),
            "no {expected}* thread among {comms:?}"
        );
    }
    probes.extend(supervisor_probes);
    let (eacces, eperm) = (-i64::from(libc::EACCES), -i64::from(libc::EPERM));
    for p in &probes {
        assert_eq!(
            get_i64(p, "read_secret"),
            eacces,
            "read outside the list: {p}"
        );
        assert_eq!(get_i64(p, "create"), eacces, "file creation: {p}");
        assert_eq!(
            get_i64(p, "open_sibling_mem_rdwr"),
            eacces,
            "sibling /proc/<pid>/mem: {p}"
        );
        assert!(
            [eacces, eperm].contains(&get_i64(p, "pidfd_getfd_sibling")),
            "pidfd_getfd on a sibling: {p}"
        );
        assert_eq!(
            get_i64(p, "set_dumpable_1"),
            eperm,
            "PR_SET_DUMPABLE 1: {p}"
        );
        assert_eq!(get_i64(p, "mmap_rwx"), eacces, "RWX mmap: {p}");
        assert_eq!(get_i64(p, "mprotect_rx"), eacces, "RW -> RX mprotect: {p}");
    }
    let created: Vec<_> = fs::read_dir(&fixture.writable)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(created.is_empty(), "files were created: {created:?}");

    // The server still serves after every thread was stopped and probed.
    let health = Command::new("curl")
        .args(["-sf", &server.url("/health")])
        .output()
        .expect("curl");
    assert!(health.status.success(), "server healthy after the probes");
}
