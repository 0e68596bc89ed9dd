//! Start-up hardening (`harden::detach`, `harden::restrict_startup`): the steps that must run
//! while the process has a single thread.
//!
//! libtest runs every test on a thread of its own, so this suite has its own `main`
//! (`harness = false` in Cargo.toml). Each scenario re-executes this binary as child processes
//! (`SEALSERVE_STARTUP_ROLE=<role>`) that drop to uid/gid 65534 when run as root (CI does) and
//! report `SEALSERVE_HARDEN_RESULT <json>` lines, like tests/harden.rs.
//!
//! `cargo test --test harden_startup [-- <name filter>]` runs every scenario (or those whose
//! name contains the filter) and fails on the first failing one.

mod common;

use std::fs;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::child::{drop_to_nobody, emit, next_result};
use sealserve::harden::{self, FsAllow, HardenLevel};
use serde_json::{json, Value};

const ROLE_ENV: &str = "SEALSERVE_STARTUP_ROLE";
const BUF_LEN: usize = 64;

type Scenario = (&'static str, fn());

const SCENARIOS: &[Scenario] = &[
    (
        "descriptor_opened_before_the_fork_does_not_reach_the_server",
        descriptor_opened_before_the_fork_does_not_reach_the_server,
    ),
    (
        "landlock_at_startup_covers_every_thread_started_later",
        landlock_at_startup_covers_every_thread_started_later,
    ),
];

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        match role.as_str() {
            "target" => target(),
            "attacker" => attacker(),
            "inherit" => inherit(),
            other => panic!("unknown role {other}"),
        }
        // Exit here: the forked server must not fall back into the scenario runner.
        std::process::exit(0);
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut ran = 0;
    for (name, scenario) in SCENARIOS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        scenario();
        println!("test {name} ... ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed; 0 failed");
}

/// This binary as a child in `role`.
fn child(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("spawn child");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Running {
            child,
            stdin,
            stdout,
        }
    }

    fn next(&mut self) -> Value {
        next_result(&mut self.stdout)
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush to child");
    }

    /// Closes stdin, reads the last result, waits; asserts a clean exit.
    fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let last = self.next();
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let status = self.child.wait().expect("wait child");
        assert!(status.success(), "child failed ({status}): {rest}");
        last
    }
}

fn read_line_from_stdin() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read stdin");
    line.trim().to_owned()
}

fn get_i64(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("`{key}` missing or not an integer in {v}"))
}

// ---------------------------------------------------------------------------------------------
// The start-up window
// ---------------------------------------------------------------------------------------------

/// Plays the server: publishes a buffer of `A`s, waits for "go" (the attacker has opened
/// `/proc/<pid>/mem` by then, while the process is still dumpable, as the review's racer did),
/// then hardens its start the way `serve` does (`detach`) or, as the control, only sets the
/// dumpable flag (today's code before this change). Reports from the process that continues
/// (the forked server), waits until stdin closes, and reports the buffer.
fn target() {
    let ids = drop_to_nobody();
    let fork = std::env::var("SEALSERVE_STARTUP_FORK").as_deref() == Ok("1");
    let buf: &'static mut [u8; BUF_LEN] = Box::leak(Box::new([b'A'; BUF_LEN]));
    emit(json!({
        "ids": ids,
        // SAFETY: getpid has no preconditions.
        "pid": unsafe { libc::getpid() },
        "addr": buf.as_ptr() as usize,
    }));
    assert_eq!(read_line_from_stdin(), "go");
    if fork {
        let detached = harden::detach(HardenLevel::Strict).expect("detach");
        assert!(detached.supervisor.is_some(), "strict forks");
    } else {
        harden::set_not_dumpable().expect("not dumpable");
    }
    emit(json!({
        // SAFETY: getpid/getppid have no preconditions.
        "pid": unsafe { libc::getpid() },
        "ppid": unsafe { libc::getppid() },
        "dumpable": common::child::get_dumpable(),
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

/// Plays the racing neighbour: opens `/proc/<pid>/mem` read-write while the target is still
/// dumpable, reports, then on "write" writes `MEMWRITE` through that descriptor at the
/// buffer's address and reads it back through the same descriptor.
fn attacker() {
    let ids = drop_to_nobody();
    let var = |k: &str| std::env::var(k).expect(k).parse::<u64>().expect(k);
    let pid = var("SEALSERVE_STARTUP_PID");
    let addr = var("SEALSERVE_STARTUP_ADDR");
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"));
    emit(
        json!({ "ids": ids, "open_errno": mem.as_ref().err().and_then(|e| e.raw_os_error()).unwrap_or(0) }),
    );
    let Ok(mem) = mem else { return };
    assert_eq!(read_line_from_stdin(), "write");
    let written = match mem.write_at(b"MEMWRITE", addr) {
        Ok(n) => json!(n),
        Err(e) => json!(-e.raw_os_error().unwrap_or(-1)),
    };
    let mut back = [0u8; 8];
    let read_back = match mem.read_at(&mut back, addr) {
        Ok(_) => json!(String::from_utf8_lossy(&back)),
        Err(e) => json!(-e.raw_os_error().unwrap_or(-1)),
    };
    emit(json!({ "written": written, "read_back": read_back }));
}

struct WindowOutcome {
    launched_pid: i64,
    serving: Value,
    attack: Value,
    buffer: String,
}

fn race_the_start(fork: bool) -> WindowOutcome {
    let mut cmd = child("target");
    cmd.env("SEALSERVE_STARTUP_FORK", if fork { "1" } else { "0" });
    let mut target = Running::spawn(cmd);
    let ready = target.next();

    let mut cmd = child("attacker");
    cmd.env("SEALSERVE_STARTUP_PID", get_i64(&ready, "pid").to_string())
        .env(
            "SEALSERVE_STARTUP_ADDR",
            get_i64(&ready, "addr").to_string(),
        );
    let mut attacker = Running::spawn(cmd);
    let opened = attacker.next();
    assert_eq!(
        opened["open_errno"], 0,
        "the attacker must win the window (open /proc/<pid>/mem while dumpable): {opened}"
    );
    assert_eq!(
        ready["ids"]["uid"], opened["ids"]["uid"],
        "target and attacker run as the same uid"
    );

    target.say("go");
    let serving = target.next();
    attacker.say("write");
    let attack = attacker.finish();
    let done = target.finish();
    WindowOutcome {
        launched_pid: get_i64(&ready, "pid"),
        serving,
        attack,
        buffer: done["buffer"].as_str().unwrap_or_default().to_owned(),
    }
}

fn descriptor_opened_before_the_fork_does_not_reach_the_server() {
    let untouched = "A".repeat(BUF_LEN);

    // Control: without the fork (the code before this change), the descriptor opened in the
    // window writes straight into the serving process, as the review showed.
    let c = race_the_start(false);
    println!(
        "control (no fork): serving {}, attack {}, buffer {}",
        c.serving, c.attack, c.buffer
    );
    assert_eq!(get_i64(&c.serving, "pid"), c.launched_pid);
    assert_eq!(
        c.attack["written"], 8,
        "control: the old descriptor still writes"
    );
    assert!(
        c.buffer.starts_with("MEMWRITE"),
        "control: the write must land in the serving process: {}",
        c.buffer
    );

    // With `detach`: the descriptor still works, but on the supervisor's memory; the server
    // (a new memory map, non-dumpable from birth) is untouched.
    let r = race_the_start(true);
    println!(
        "detach: serving {}, attack {}, buffer {}",
        r.serving, r.attack, r.buffer
    );
    let server = get_i64(&r.serving, "pid");
    assert_ne!(server, r.launched_pid, "the server is a forked child");
    assert_eq!(
        get_i64(&r.serving, "ppid"),
        r.launched_pid,
        "supervised by the launched process"
    );
    assert_eq!(r.serving["dumpable"], 0, "non-dumpable from birth");
    assert_eq!(
        r.attack["written"], 8,
        "the descriptor still writes (the supervisor's copy)"
    );
    assert_eq!(
        r.attack["read_back"], "MEMWRITE",
        "and reads back what it wrote there"
    );
    assert_eq!(r.buffer, untouched, "the serving process's memory changed");
}

// ---------------------------------------------------------------------------------------------
// Landlock from start-up
// ---------------------------------------------------------------------------------------------

fn errno_of<T>(result: std::io::Result<T>) -> i32 {
    result.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1))
}

/// What one thread may do: read the file outside the allow-list, create a file.
fn probe(dir: &Path, label: &str) -> Value {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let name = fs::read_to_string("/proc/thread-self/comm")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("<{e}>"));
    json!({
        "label": label,
        "tid": tid,
        "comm": name,
        "read_secret": errno_of(fs::read(dir.join("secret.txt"))),
        "create": errno_of(fs::write(dir.join(format!("created-by-{tid}")), b"x")),
        "read_allowed": errno_of(fs::read(dir.join("allowed/readable.txt"))),
    })
}

/// Applies the start-up domain on the only thread, then starts threads the way the server does
/// (a plain thread, rayon's global pool, candle's barrier pool) and probes each; finally checks
/// that both start-up steps refuse to run once more than one thread exists.
fn inherit() {
    let ids = drop_to_nobody();
    let dir = PathBuf::from(std::env::var("SEALSERVE_STARTUP_DIR").expect("dir"));
    let before = errno_of(fs::write(dir.join("before.txt"), b"x"));
    let _ = fs::remove_file(dir.join("before.txt"));
    let threads_at_start = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
    });

    let mut allow = FsAllow::cpu();
    allow.read.push(dir.join("allowed"));
    let status = harden::restrict_startup(HardenLevel::Strict, &allow).expect("restrict_startup");

    let mut probes = vec![probe(&dir, "main")];
    let d = dir.clone();
    probes.push(
        std::thread::spawn(move || probe(&d, "thread"))
            .join()
            .expect("thread"),
    );
    let d = dir.clone();
    probes.extend(rayon::broadcast(move |_| probe(&d, "rayon")));
    let sink = std::sync::Mutex::new(Vec::new());
    candle_core::utils::barrier_pool().execute(|_| {
        let p = probe(&dir, "candle-bp");
        sink.lock().expect("sink").push(p);
    });
    probes.extend(sink.into_inner().expect("sink"));

    let again = harden::restrict_startup(HardenLevel::Strict, &allow)
        .err()
        .map(|e| e.to_string());
    let detach = harden::detach(HardenLevel::Strict)
        .err()
        .map(|e| e.to_string());
    emit(json!({
        "ids": ids,
        "threads_at_start": threads_at_start,
        "write_before": before,
        "landlock": status,
        "probes": probes,
        "restrict_startup_with_threads": again,
        "detach_with_threads": detach,
    }));
}

fn landlock_at_startup_covers_every_thread_started_later() {
    // Created here (possibly as root) and opened up so that only Landlock, not file modes,
    // can stop uid 65534.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    fs::create_dir(dir.join("allowed")).expect("mkdir");
    fs::write(dir.join("allowed/readable.txt"), "hello").expect("write");
    fs::write(dir.join("secret.txt"), "secret").expect("write");
    for (path, mode) in [
        (dir.to_path_buf(), 0o777),
        (dir.join("allowed"), 0o777),
        (dir.join("allowed/readable.txt"), 0o666),
        (dir.join("secret.txt"), 0o666),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let mut cmd = child("inherit");
    // Enough workers that candle's barrier pool has threads on a one-CPU machine too.
    cmd.env("SEALSERVE_STARTUP_DIR", dir)
        .env("RAYON_NUM_THREADS", "3")
        .stdin(Stdio::null());
    let r = Running::spawn(cmd).finish();
    println!("{r:#}");
    assert_eq!(r["threads_at_start"], "1");
    assert_eq!(
        r["write_before"], 0,
        "control: writing works before Landlock"
    );
    assert!(
        r["landlock"] == "FullyEnforced" || r["landlock"] == "PartiallyEnforced",
        "this kernel enforces Landlock: {}",
        r["landlock"]
    );
    let probes = r["probes"].as_array().expect("probes");
    let eacces = i64::from(libc::EACCES);
    for p in probes {
        assert_eq!(
            get_i64(p, "read_secret"),
            eacces,
            "read outside the list: {p}"
        );
        assert_eq!(get_i64(p, "create"), eacces, "file creation: {p}");
        assert_eq!(get_i64(p, "read_allowed"), 0, "read inside the list: {p}");
    }
    let comms: Vec<&str> = probes.iter().filter_map(|p| p["comm"].as_str()).collect();
    assert!(
        comms.iter().any(|c| c.starts_with("candle-bp-")),
        "candle's barrier pool was probed: {comms:?}"
    );
    let rayon = probes.iter().filter(|p| p["label"] == "rayon").count();
    assert_eq!(rayon, 3, "every rayon thread was probed");
    let created: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("created-by-"))
        .collect();
    assert!(created.is_empty(), "files were created: {created:?}");
    for key in ["restrict_startup_with_threads", "detach_with_threads"] {
        let err = r[key].as_str().unwrap_or_else(|| panic!("{key} must fail"));
        assert!(err.contains("threads"), "{key}: {err}");
    }
}
