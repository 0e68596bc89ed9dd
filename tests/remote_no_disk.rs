//! No disk staging: `serve --model-url` fetches, verifies and loads the real MiniLM from S3
//! (moto) and from HTTPS (private CA) without creating, writing or renaming any file, and without
//! a memfd, from exec until it has answered a request (strace -f over every thread).

mod common;
#[path = "common/remote.rs"]
mod remote;
#[path = "common/strace.rs"]
mod strace;

use remote::{free_port, FileServer, Moto, Pki, Release};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs serve under `strace -f` until it answered one /embed, then stops it and returns every
/// traced call that wrote to the filesystem or created a memfd.
fn writes_during_load_and_first_request(args: &[&str], env: &[(String, String)]) -> Vec<String> {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "strace is required for this test: apt-get install -y strace"
    );
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let port = free_port();
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", strace::TRACED, "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_serve"))
        // `strict` and `basic` refuse to start under a tracer; and with Landlock in force an
        // attempted write would fail with EACCES, which this test would not count.
        .args(["--harden", "off"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .env("HOME", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().cloned())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strace");
    sealserve::remote::tls::install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = (0..1200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        client
            .get(format!("{base}/ready"))
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    assert!(ready, "serve under strace never became ready");
    let response = client
        .post(format!("{base}/embed"))
        .json(&serde_json::json!({"inputs": ["no byte on disk"]}))
        .send()
        .expect("POST /embed");
    assert!(response.status().is_success());
    assert!(strace::stop_traced_serve(&mut child).success());
    let text = std::fs::read_to_string(&trace).expect("read trace");
    assert!(
        text.lines().count() > 5,
        "the trace recorded opens:\n{text}"
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "only the trace appeared in the working directory"
    );
    strace::disk_writes(&text)
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[test]
fn minilm_from_s3_and_https_is_loaded_without_touching_the_disk() {
    let release = Release::minilm();
    let moto = Moto::start(&["models"]);
    let published = Command::new(env!("CARGO_BIN_EXE_seal"))
        .args([
            "publish",
            "--trusted-key",
            &release.fingerprint,
            &release.dir.path().display().to_string(),
            "s3://models/minilm/",
        ])
        .env("HOME", "/nonexistent")
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let violations = writes_during_load_and_first_request(
        &[
            "--trusted-key",
            &release.fingerprint,
            "--model-url",
            "s3://models/minilm/",
        ],
        &moto.env(),
    );
    assert!(
        violations.is_empty(),
        "S3 load wrote:\n{}",
        violations.join("\n")
    );

    let pki = Pki::new();
    let files = FileServer::start(release.dir.path(), Some(&pki));
    let ca = pki.ca.display().to_string();
    let violations = writes_during_load_and_first_request(
        &[
            "--trusted-key",
            &release.fingerprint,
            "--model-url",
            &files.base,
            "--ca-file",
            &ca,
        ],
        &[],
    );
    assert!(
        violations.is_empty(),
        "HTTPS load wrote:\n{}",
        violations.join("\n")
    );
}
