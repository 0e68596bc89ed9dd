//! Child processes of the hardening tests: hardening cannot be undone and applies to a whole
//! process, so each scenario runs in a fresh child that reports one JSON line per stage
//! (`SEALSERVE_HARDEN_RESULT <json>`), as an unprivileged neighbour would run (uid/gid 65534).

use std::io::{BufRead, BufReader, Read, Write};

use serde_json::{json, Value};

/// Marks a result line on a child's stdout.
pub const RESULT_PREFIX: &str = "SEALSERVE_HARDEN_RESULT ";

/// Prints one result line and flushes it.
pub fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{RESULT_PREFIX}{value}").expect("write result");
    out.flush().expect("flush result");
}

/// The JSON after the marker. libtest prints `test <name> ... ` without a newline before
/// running the test, so the marker need not start the line.
pub fn result_json(line: &str) -> Option<&str> {
    let at = line.find(RESULT_PREFIX)?;
    Some(line[at + RESULT_PREFIX.len()..].trim_end())
}

/// Reads lines from a running child until the next result line.
pub fn next_result<R: Read>(reader: &mut BufReader<R>) -> Value {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read child stdout");
        assert!(
            n > 0,
            "child exited before printing a result; its output:\n{seen}"
        );
        if let Some(json) = result_json(&line) {
            return serde_json::from_str(json).expect("result line is JSON");
        }
        seen.push_str(&line);
    }
}

/// uid and gid the hardening tests drop to when they run as root (CI does).
pub const NOBODY: u32 = 65534;

/// errno of the last failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Drops to uid/gid 65534 with no supplementary groups when running as root, the way an
/// unprivileged neighbour runs. Must happen before any hardening: a uid change resets the
/// dumpable flag.
///
/// A uid change also leaves the process non-dumpable (`fs.suid_dumpable`, normally 0). A server
/// started directly as an unprivileged user is dumpable, so that is restored here; otherwise
/// the tests would credit `harden` with what the uid change did.
pub fn drop_to_nobody() -> Value {
    // SAFETY: plain libc calls with valid arguments.
    unsafe {
        // No child may hang the parent: SIGALRM's default action ends it after a minute, and
        // the parent then sees EOF instead of waiting forever.
        libc::alarm(60);
        let was_root = libc::geteuid() == 0;
        if was_root {
            assert_eq!(
                libc::setgroups(0, std::ptr::null()),
                0,
                "setgroups: {}",
                errno()
            );
            assert_eq!(
                libc::setresgid(NOBODY, NOBODY, NOBODY),
                0,
                "setresgid: {}",
                errno()
            );
            assert_eq!(
                libc::setresuid(NOBODY, NOBODY, NOBODY),
                0,
                "setresuid: {}",
                errno()
            );
            assert_eq!((libc::getuid(), libc::geteuid()), (NOBODY, NOBODY));
            assert_eq!((libc::getgid(), libc::getegid()), (NOBODY, NOBODY));
        }
        let rc = libc::prctl(
            libc::PR_SET_DUMPABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        assert_eq!(rc, 0, "PR_SET_DUMPABLE 1: {}", errno());
        json!({ "dropped_from_root": was_root, "uid": libc::getuid(), "gid": libc::getgid() })
    }
}

/// `PR_GET_DUMPABLE`.
pub fn get_dumpable() -> i32 {
    // SAFETY: PR_GET_DUMPABLE takes no arguments.
    unsafe {
        libc::prctl(
            libc::PR_GET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    }
}
