//! The static `serve` binary on CPUs older than the one it runs on here: under qemu-user's
//! `-cpu Haswell` (AVX2 + FMA, no AVX-512) and `-cpu Nehalem` (SSE4.2, no AVX at all) it starts,
//! verifies its bundle and answers /embed with vectors equal to the reference within the golden
//! tolerance.
//!
//! Why: the binary is built for baseline x86-64 and its dependencies (gemm, sha2, the GGUF
//! kernels) choose AVX-512, AVX2 or portable code at run time. An instruction that leaked out of
//! that dispatch would only crash on an older CPU, which the CI machine (AVX-512) cannot show.
//! qemu-user 7.2 refuses instructions the emulated CPU model lacks (a VEX-encoded AVX add under
//! `-cpu Nehalem` dies with SIGILL), so these tests fail if one leaks.
//!
//! Needs `qemu-x86_64` (Debian package `qemu-user`, installed by .ci/run); without it the tests
//! fail. `--harden off`: qemu-user runs its own threads inside the process, which the fork step of
//! `--harden strict` refuses by design, and seccomp/Landlock are not what is tested here.
//! `SEALSERVE_TEST_SERVE=path` tests another build of `serve` (e.g. the release binary).

mod common;

use common::server::Server;
use common::{golden, max_abs_diff};
use serde_json::{json, Value};
use std::time::Duration;

const TOLERANCE: f32 = 1e-4;
/// Inputs sent: the shortest few, in one request (emulated forwards are slow).
const INPUTS: usize = 4;

fn qemu() -> &'static str {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("qemu-x86_64").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "qemu-x86_64 is not installed: `apt-get install qemu-user` (Debian; .ci/run does this)"
    );
    "qemu-x86_64"
}

/// Starts serve under `qemu-x86_64 -cpu <cpu>`, embeds the shortest reference inputs and
/// compares them with the golden vectors.
fn embeds_golden_vectors_under(cpu: &str) {
    let server = Server::start_under(
        &[qemu(), "-cpu", cpu],
        &["--harden", "off", "--device", "cpu"],
        &[],
        Duration::from_secs(900),
    );
    let mut inputs: Vec<_> = golden().inputs.iter().collect();
    inputs.sort_by_key(|i| i.num_tokens);
    inputs.truncate(INPUTS);
    let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body: Value = runtime.block_on(async {
        // reqwest's TLS is rustls without a built-in provider (src/remote/tls.rs): install ring's.
        sealserve::remote::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()
            .expect("client");
        let response = client
            .post(server.url("/embed"))
            .json(&json!({ "inputs": texts }))
            .send()
            .await
            .expect("POST /embed");
        assert_eq!(response.status(), 200, "{cpu}: /embed status");
        response.json().await.expect("JSON body")
    });
    let vectors: Vec<Vec<f32>> = serde_json::from_value(body).expect("array of float arrays");
    assert_eq!(vectors.len(), inputs.len(), "{cpu}: one vector per input");
    for (vector, input) in vectors.iter().zip(&inputs) {
        let diff = max_abs_diff(vector, &input.embedding);
        assert!(
            diff <= TOLERANCE,
            "{cpu}: input {} differs from the reference by {diff}",
            input.index
        );
    }
}

#[test]
fn serve_embeds_golden_vectors_on_a_cpu_without_avx512() {
    embeds_golden_vectors_under("Haswell");
}

#[test]
fn serve_embeds_golden_vectors_on_a_cpu_without_avx() {
    embeds_golden_vectors_under("Nehalem");
}
