//! Real clients, written by others, against the real `serve` binary: the official `openai`
//! client, `huggingface_hub.InferenceClient`, and schemathesis fuzzing every route from
//! /openapi.json with all its checks. Versions are pinned in tests/clients/requirements.txt and
//! installed by scripts/install-test-clients (which CI runs).
//!
//! These tests fail, never skip, when Python or a package is missing: the interface they check
//! is what users' code calls. The interpreter is `$SEALSERVE_CLIENTS_PYTHON`, else `python3`.

mod common;

use common::server::Server;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("SEALSERVE_CLIENTS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs the interpreter with `args` in `cwd`; panics with its output unless it exits 0.
fn run_python(args: &[&str], cwd: &Path) -> String {
    let output = Command::new(python())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Python 3 and the pinned clients with \
                 scripts/install-test-clients",
                python()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        python(),
        output.status
    );
    text
}

/// Checks the pinned packages, then runs one client script against a fresh server.
fn run_client_script(script: &str) {
    run_python(&["check_versions.py"], &clients_dir());
    let server = Server::start(&[], &[]);
    let reference = common::reference_dir();
    let out = run_python(
        &[script, &server.base, &reference.display().to_string()],
        &clients_dir(),
    );
    println!("{out}");
}

#[test]
fn openai_client_embeds_and_lists_models() {
    run_client_script("openai_client.py");
}

#[test]
fn huggingface_hub_inference_client_uses_the_tei_routes() {
    run_client_script("hf_client.py");
}

#[test]
fn schemathesis_finds_no_failure_with_all_checks() {
    run_python(&["check_versions.py"], &clients_dir());
    let server = Server::start(&[], &[]);
    // Hypothesis and schemathesis keep state in the working directory: keep it out of the repo.
    let scratch = tempfile::tempdir().expect("temp dir");
    let schema = server.url("/openapi.json");
    let out = run_python(
        &[
            "-c",
            "import sys; from schemathesis.cli import schemathesis; \
             sys.argv[0] = 'schemathesis'; schemathesis()",
            "run",
            &schema,
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--workers",
            "2",
            "--seed",
            "20261129",
            "--generation-deterministic",
        ],
        scratch.path(),
    );
    assert!(out.contains(" passed"), "{out}");
    println!("{out}");
}
