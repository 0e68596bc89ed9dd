//! Misconfiguration: `serve` exits non-zero with one line on stderr that says what to do.

use std::process::Command;

fn serve(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_serve"));
    // The dev-signed build has no release key to pin; these cases are about other settings.
    command
        .args(args)
        .env_remove("CDSW_APP_PORT")
        .env("SEALSERVE_ALLOW_UNPINNED", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run serve");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn assert_one_line(code: Option<i32>, stderr: &str, expected_code: i32, mentions: &str) {
    assert_eq!(code, Some(expected_code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("serve: "), "{stderr}");
    assert!(lines[0].contains(mentions), "{mentions:?} not in {stderr}");
}

#[test]
fn bad_flag_values_are_one_line_exit_2() {
    let (code, err) = serve(&["--device", "tpu"], &[]);
    assert_one_line(code, &err, 2, "unknown device");
    let (code, err) = serve(
        &["--max-batch-size", "0", "--log-format", "json"],
        &[("RUST_LOG", "off")],
    );
    assert_one_line(code, &err, 2, "--max-batch-size");
    assert!(err.contains("must be at least 1"), "{err}");
    let (code, err) = serve(&[], &[("SEALSERVE_HARDEN", "maximum")]);
    assert_one_line(code, &err, 2, "maximum");
    let (code, err) = serve(
        &["--trusted-key", "/nonexistent/key.pub"],
        &[("RUST_LOG", "off")],
    );
    assert_one_line(code, &err, 2, "--trusted-key");
    let (code, err) = serve(&[], &[("CDSW_APP_PORT", "not-a-port")]);
    assert_one_line(code, &err, 2, "not-a-port");
    // A generation-only flag on this (embedding) bundle is refused, not ignored.
    let (code, err) = serve(
        &[
            "--max-batch-total-tokens",
            "1000",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        &[("RUST_LOG", "off")],
    );
    assert_one_line(code, &err, 2, "--max-batch-total-tokens");
}

#[test]
fn cuda_on_a_cpu_build_is_one_line_exit_3() {
    if cfg!(feature = "cuda") {
        return; // the CUDA build's own behaviour is covered by scripts/gpu-check
    }
    let (code, err) = serve(&["--device", "cuda", "--port", "0"], &[("RUST_LOG", "off")]);
    assert_one_line(code, &err, 3, "built without the `cuda` feature");
}

#[test]
fn port_in_use_is_one_line_exit_5() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = serve(
        &["--host", "127.0.0.1", "--port", &port],
        &[("RUST_LOG", "off")],
    );
    assert_one_line(code, &err, 5, "cannot listen on 127.0.0.1");
}
