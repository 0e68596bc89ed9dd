//! Real clients, written by others, against the real `serve` binary: the official `openai`
//! client, `huggingface_hub.InferenceClient`, and schemathesis fuzzing every route from
//! /openapi.json with all its checks. Versions are pinned in tests/clients/requirements.txt and
//! installed by scripts/install-test-clients (which CI runs).
//!
//! These tests fail, never skip, when Python or a package is missing: the interface they check
//! is what users' code calls (`common::clients`).

mod common;

use common::server::Server;

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
    let server = Server::start(&[], &[]);
    let out = common::clients::schemathesis(&server.url("/openapi.json"));
    println!("{out}");
}
