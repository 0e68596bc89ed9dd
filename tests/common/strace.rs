//! Reading an `strace -f` trace of `serve` for the no-disk tests (tests/startup.rs,
//! tests/remote_no_disk.rs): stopping the traced `serve`, and the calls that wrote to the
//! filesystem or made a memory-backed file. Included as `#[path = "common/strace.rs"] mod strace;`
//! by those tests only.
#![allow(dead_code)]

use std::process::Child;

/// System calls that open, create, write or name files, or make memory-backed files: the `-e`
/// filter the tests trace.
pub const TRACED: &str = "trace=open,openat,openat2,creat,memfd_create,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link,linkat,symlink,symlinkat,truncate,ftruncate";

/// Stops `serve`, the traced child of `strace` (`child`), with SIGTERM; strace exits when its
/// tracee does. Returns strace's exit status.
pub fn stop_traced_serve(child: &mut Child) -> std::process::ExitStatus {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .expect("strace's children");
    let serve_pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("serve pid");
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(serve_pid, libc::SIGTERM) };
    child.wait().expect("strace exits after serve")
}

/// Every traced line that wrote to the filesystem or made a memfd: an open that succeeded with
/// a write, create, truncate or O_TMPFILE flag (but /dev/null), and any call that creates,
/// renames, removes, links or truncates a file, or creates a memfd, whether it succeeded or not.
pub fn disk_writes(trace: &str) -> Vec<&str> {
    trace
        .lines()
        .filter(|line| {
            let opens_for_write = line.contains("open")
                && !line.contains("= -1")
                && ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_TMPFILE"]
                    .iter()
                    .any(|flag| line.contains(flag))
                && !line.contains("\"/dev/null\"");
            let other = [
                "memfd_create(",
                "creat(",
                "mkdir",
                "rename",
                "unlink",
                "link(",
                "linkat(",
                "symlink",
                "truncate(",
            ]
            .iter()
            .any(|call| line.contains(call));
            opens_for_write || other
        })
        .collect()
}
