//! The `SEALSERVE_MODEL=none` build: a `serve` with no embedded model, which carries nothing it
//! could be tricked with (no bundle, no bundle marker, no key of any kind), refuses to start
//! without `--model-url`, and serves a remote bundle like any other build.
//!
//! Only compiled in that build (`cfg(sealserve_model_none)`, set by build.rs); run it with
//! `SEALSERVE_MODEL=none cargo test --test remote_none` (.ci/run does, after the main suite).
#![cfg(sealserve_model_none)]

mod common;
#[path = "common/remote.rs"]
mod remote;

use common::server::Server;
use remote::{serve_refuses, Release};

#[test]
fn the_model_less_build_carries_no_bundle_and_no_key() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_serve")).expect("read serve");
    let file = std::fs::File::open(env!("CARGO_BIN_EXE_serve")).expect("open serve");
    let located = sealserve::placement::locate(&file);
    assert!(
        located.is_err(),
        "seal would find a bundle in the model-less serve"
    );
    let marker = sealserve::bundle::marker();
    assert!(
        !binary.windows(marker.len()).any(|w| w == marker),
        "the model-less serve holds the bundle marker"
    );
    // An embedded PEM public key (dev or release) starts with the Ed25519 SPKI header.
    let pem_key = b"MCowBQYDK2VwAyEA";
    assert!(
        !binary.windows(pem_key.len()).any(|w| w == pem_key),
        "the model-less serve holds a public key"
    );
    assert_eq!(env!("SEALSERVE_BUILD_MODEL"), "none");
}

#[test]
fn without_a_model_url_it_refuses_to_start_and_says_why() {
    let refusal = serve_refuses(&[], &[]);
    assert_eq!(refusal.code, 2, "{}", refusal.stderr);
    let line = remote::last_line(&refusal.stderr);
    assert!(
        line.contains("built without a model") && line.contains("--model-url"),
        "{line}"
    );
}

#[test]
fn it_serves_a_pinned_remote_bundle() {
    let release = Release::tiny();
    let url = release.file_url();
    let server = Server::start(
        &["--trusted-key", &release.fingerprint, "--model-url", &url],
        &[],
    );
    let status = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST"])
        .arg(server.url("/embed"))
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"inputs":"hello world"}"#,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200");
}
