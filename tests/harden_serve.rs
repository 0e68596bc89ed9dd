//! The real `serve` binary's start-up hardening: it serves from a process forked after
//! `PR_SET_DUMPABLE(0)` and supervised by the launched one, refuses to start under a tracer,
//! and takes its API key from a file.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::Value;

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{key} missing in /proc/{pid}/status"))
}

/// `curl` GET: (status, body).
fn get(url: &str, headers: &[&str]) -> (u16, String) {
    common::server::curl("GET", url, None, headers)
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2) of a process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

#[test]
fn strict_serve_runs_in_a_forked_hardened_child_and_exits_with_its_status() {
    let server = Server::start(&[], &[]);
    let supervisor = server.child.id();
    let serving = server.serving_pid();
    assert_ne!(serving, supervisor, "serve forked at start-up");
    assert_eq!(status_field(serving, "PPid"), supervisor.to_string());
    assert_eq!(status_field(serving, "TracerPid"), "0");
    for pid in [serving, supervisor] {
        assert_eq!(status_field(pid, "Seccomp"), "2", "seccomp filter on {pid}");
        assert_eq!(
            status_field(pid, "NoNewPrivs"),
            "1",
            "no_new_privs on {pid}"
        );
    }

    let (code, body) = get(&server.url("/info"), &[]);
    assert_eq!(code, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("/info JSON");
    let h = &info["hardening"];
    println!("hardening: {h:#}");
    assert_eq!(h["forked_at_startup"], true);
    assert_eq!(h["dumpable"], false);
    for key in ["landlock_startup", "landlock"] {
        assert!(
            h[key] == "FullyEnforced" || h[key] == "PartiallyEnforced",
            "{key}: {}",
            h[key]
        );
    }
    assert_eq!(h["w_xor_x"], "Enforced");
    let pools: Vec<&str> = h["landlock_threads"]
        .as_array()
        .expect("landlock_threads")
        .iter()
        .filter_map(|p| p["pool"].as_str())
        .collect();
    assert_eq!(pools, ["engine", "rayon", "candle-bp"]);

    // SIGTERM to the launched process reaches the server, which drains and exits 0; the
    // supervisor exits with that status.
    server.terminate();
    let mut server = server;
    let status = server.child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit passed through: {status:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{serving}")).exists(),
        "the supervisor reaped the server before exiting"
    );
}

#[test]
fn supervisor_dies_of_the_signal_that_killed_the_server() {
    let mut server = Server::start(&[], &[]);
    kill(server.serving_pid(), libc::SIGKILL);
    let status = server.child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn killing_the_supervisor_takes_the_server_down_and_frees_the_port() {
    let mut server = Server::start(&[], &[]);
    let serving = server.serving_pid();
    kill(server.child.id(), libc::SIGKILL);
    server.child.wait().expect("wait supervisor");
    // PR_SET_PDEATHSIG(SIGKILL): the server dies with it (then is reaped by whoever adopts it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || {
        std::fs::read_to_string(format!("/proc/{serving}/stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    };
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the server outlived its supervisor");
    // The leader turns zombie while its other threads still exit; the listening socket closes
    // with the last of them.
    let listening = || std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok();
    while listening() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!listening(), "the port is free again");
}

/// Runs `serve <args>` under ptrace (`PTRACE_TRACEME`, as `strace` or `gdb` would), lets it run,
/// and returns its exit code and stderr.
// clippy cannot see the `waitpid` below, which reaps the child (ptrace stops need it, not `wait`).
#[allow(clippy::zombie_processes)]
fn run_traced(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(common::server::serve_binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: PTRACE_TRACEME in the forked child before exec: async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            ) == 0
            {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().expect("spawn traced serve");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        let mut status = 0;
        // SAFETY: waitpid on our own traced child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == 0 {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("traced serve neither refused nor finished within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
        if libc::WIFEXITED(status) {
            break libc::WEXITSTATUS(status);
        }
        assert!(
            libc::WIFSTOPPED(status),
            "unexpected wait status {status:#x}"
        );
        // The exec stop (SIGTRAP) is swallowed; any other signal is passed on, as strace does.
        let signal = match libc::WSTOPSIG(status) {
            libc::SIGTRAP => 0,
            other => other,
        };
        // SAFETY: resuming our own tracee.
        unsafe {
            libc::ptrace(
                libc::PTRACE_CONT,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                signal as usize as *mut libc::c_void,
            )
        };
    };
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stderr)
}

#[test]
fn serve_refuses_to_start_under_a_tracer() {
    let (code, stderr) = run_traced(&["--host", "127.0.0.1", "--port", "0"]);
    println!("strict under ptrace: exit {code}: {stderr}");
    assert_eq!(code, 6, "exit code 6 (hardening) under a tracer: {stderr}");
    assert!(
        stderr.contains("tracer (pid") && stderr.contains("--harden off"),
        "{stderr}"
    );
    // Control: the same tracing with `--harden off` (what a debugging session uses) starts.
    let (code, stderr) = run_traced(&["--harden", "off", "--verify-only", "--allow-unpinned"]);
    assert_eq!(code, 0, "--harden off under a tracer: {stderr}");
}

fn key_file(dir: &std::path::Path, contents: &str) -> std::path::PathBuf {
    let path = dir.join("api-key");
    std::fs::write(&path, contents).expect("write key file");
    path
}

const ARGV_WARNING: &str = "the API key was given on the command line";

#[test]
fn api_key_file_is_used_and_an_empty_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");

    let empty = key_file(dir.path(), "\n");
    let out = Command::new(common::server::serve_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--api-key-file"])
        .arg(&empty)
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "empty key file: {stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");

    let path = key_file(dir.path(), "s3cret-from-file\n");
    let server = Server::start(&["--api-key-file", path.to_str().expect("utf-8 path")], &[]);
    assert_eq!(get(&server.url("/info"), &[]).0, 401, "key required");
    let auth = ["Authorization: Bearer s3cret-from-file"];
    assert_eq!(get(&server.url("/info"), &auth).0, 200, "key from the file");
    let wrong = ["Authorization: Bearer s3cret-from-fil"];
    assert_eq!(get(&server.url("/info"), &wrong).0, 401);
    assert!(
        !server.drain_logs().iter().any(|l| l.contains(ARGV_WARNING)),
        "no argv warning for a key file"
    );
}

#[test]
fn api_key_on_the_command_line_is_warned_about() {
    let server = Server::start(&["--api-key", "s3cret-on-argv"], &[]);
    let warned = server
        .drain_logs()
        .into_iter()
        .filter(|l| l.contains(ARGV_WARNING))
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "one warning: {warned:?}");
    assert!(warned[0].contains("--api-key-file"), "{}", warned[0]);
    let auth = ["Authorization: Bearer s3cret-on-argv"];
    assert_eq!(get(&server.url("/info"), &auth).0, 200);
}
