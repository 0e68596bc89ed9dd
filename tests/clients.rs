//! Real clients, written by others, against the real `serve` binary: the official `openai`
//! client, `huggingface_hub.InferenceClient`, and schemathesis fuzzing every route from
//! /openapi.json with all its checks. Versions are pinned in tests/clients/requirements.txt and
//! installed by scripts/install-test-clients (which CI runs).
//!
//! These tests fail, never skip, when Python or a package is missing: the interface they check
//! is what users' code calls. The interpreter is `$SEALSERVE_CLIENTS_PYTHON`, else `python3`.

mod common;

use common::server::Server;
use common::{clients_dir, run_python};

/// Checks the pinned packages, then runs one client script against a fresh server.
fn run_client_script(script: &str) {
    let server = Server::start(&[], &[]);
    println!("{}", common::run_client(script, &server.base));
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
