//! Startup properties of the real `serve`: nothing is written to the filesystem or to a memfd
//! (the model is loaded from the embedded bytes only), and the resident set stays within 1.6× the
//! embedded weight bytes after warm-up and a request.

mod common;
#[path = "common/strace.rs"]
mod strace;

use common::server::Server;
use std::process::Command;
use std::time::Duration;

const WEIGHT_BYTES: u64 = 90_868_376;

fn status_field(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/pid/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("{field} missing"))
}

fn embed(base: &str) {
    let body = serde_json::json!({"inputs": (0..32).map(|i| format!("{i} {}", "memory check ".repeat(40))).collect::<Vec<_>>()});
    let response = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-XPOST",
            &format!("{base}/embed"),
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ])
        .output()
        .expect("curl (install it: apt-get install -y curl)");
    assert_eq!(String::from_utf8_lossy(&response.stdout), "200");
}

#[test]
fn peak_resident_memory_stays_within_1_6x_the_weights() {
    let server = Server::start(&[], &[]);
    embed(&server.base);
    let peak = status_field(server.serving_pid(), "VmHWM:");
    let rss = status_field(server.serving_pid(), "VmRSS:");
    let ratio = peak as f64 / WEIGHT_BYTES as f64;
    println!(
        "peak RSS {:.1} MiB, RSS {:.1} MiB, weights {:.1} MiB, peak/weights {ratio:.2}",
        peak as f64 / 1048576.0,
        rss as f64 / 1048576.0,
        WEIGHT_BYTES as f64 / 1048576.0
    );
    // Issue 11's goal. The verified copies put every weight byte in anonymous memory once;
    // loaded tensors release their source pages, and the word-embedding table (half of MiniLM)
    // is paged out after loading and read back verified per page (memory::PagedCopy). Without
    // that paging the peak here was 1.61×.
    assert!(
        ratio <= 1.6,
        "peak RSS is {ratio:.2}× the embedded weights (limit 1.6×)"
    );
}

#[test]
fn startup_and_serving_write_no_file_and_no_memfd() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "strace is required for this test: apt-get install -y strace"
    );
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", strace::TRACED, "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_serve"))
        // `strict` and `basic` refuse to start under a tracer; and with Landlock in force an
        // attempted write would fail with EACCES, which this test would not count.
        .args(["--harden", "off"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("SEALSERVE_ALLOW_UNPINNED", "1") // dev-signed build: nothing to pin
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strace");
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..400 {
        let probe = Command::new("curl")
            .args(["-sf", &format!("{base}/ready")])
            .output()
            .expect("curl");
        if probe.status.success() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "serve under strace never became ready");
    embed(&base);
    // Stop serve itself (strace's child); strace exits when its tracee does.
    let status = strace::stop_traced_serve(&mut child);
    assert!(
        status.success(),
        "serve exited cleanly under strace: {status:?}"
    );
    let text = std::fs::read_to_string(&trace).expect("read trace");
    assert!(
        text.lines().count() > 5,
        "trace recorded the process's opens:\n{text}"
    );
    let violations = strace::disk_writes(&text);
    assert!(
        violations.is_empty(),
        "serve wrote to the filesystem or a memfd:\n{}",
        violations.join("\n")
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("trace")],
        "nothing appeared in the working directory"
    );
}
