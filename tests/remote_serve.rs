//! `serve --model-url` end to end against real protocol servers on 127.0.0.1: the real MiniLM
//! published with `seal publish` to S3 (moto, SigV4 enforced) and to an OCI registry
//! (docker-registry, htpasswd auth, TLS from a private CA), and the tiny bundle over HTTPS with
//! that CA given by `--ca-file`. Each serves answers equal to the golden file (MiniLM) or to the
//! same bundle loaded in-process (tiny), and loading writes nothing to disk.

mod common;
#[path = "common/remote.rs"]
mod remote;

use common::server::Server;
use common::{golden, max_abs_diff};
use remote::{Moto, Pki, Registry, Release};
use std::process::{Command, Output};

const TOLERANCE: f32 = 1e-4;

fn seal(args: &[&str], env: &[(String, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seal"));
    command.args(args).env("HOME", "/nonexistent");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run seal")
}

/// `seal publish DIR DEST` and the `--model-url` it printed.
fn publish(dir: &str, destination: &str, extra: &[&str], env: &[(String, String)]) -> String {
    let mut args = vec!["publish", dir, destination];
    args.extend_from_slice(extra);
    let output = seal(&args, env);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "seal publish failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .split("--model-url ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no --model-url in {stdout}"))
        .to_string()
}

fn start(args: &[&str], env: &[(String, String)]) -> Server {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("HOME", "/nonexistent"));
    env.push(("AWS_EC2_METADATA_DISABLED", "true"));
    Server::start(args, &env)
}

fn client() -> reqwest::blocking::Client {
    sealserve::remote::tls::install_crypto_provider();
    reqwest::blocking::Client::new()
}

fn post_embed(base: &str, texts: &[String]) -> Vec<Vec<f32>> {
    let response = client()
        .post(format!("{base}/embed"))
        .json(&serde_json::json!({ "inputs": texts }))
        .send()
        .expect("POST /embed");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().expect("embeddings")
}

fn info(base: &str) -> serde_json::Value {
    client()
        .get(format!("{base}/info"))
        .send()
        .expect("GET /info")
        .json()
        .expect("info json")
}

/// The served MiniLM answers every golden input within tolerance, and /info says where the
/// bundle came from and what loading it cost.
fn assert_golden(server: &Server, url: &str, model_bytes: u64) {
    let texts: Vec<String> = golden().inputs.iter().map(|i| i.text.clone()).collect();
    let vectors = post_embed(&server.base, &texts);
    assert_eq!(vectors.len(), texts.len());
    for (vector, input) in vectors.iter().zip(&golden().inputs) {
        let diff = max_abs_diff(vector, &input.embedding);
        assert!(diff <= TOLERANCE, "input {}: max diff {diff}", input.index);
    }
    let info = info(&server.base);
    let load = &info["bundle_load"];
    assert_eq!(load["source"], url, "{info}");
    assert_eq!(load["bytes"], model_bytes, "{info}");
    assert!(
        load["throughput_mib_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{info}"
    );
    assert_eq!(info["trusted_keys_pinned"], true);
}

#[test]
fn minilm_published_to_s3_is_served_with_golden_answers() {
    let moto = Moto::start(&["models"]);
    let release = Release::minilm();
    let dir = release.dir.path().display().to_string();
    let url = publish(
        &dir,
        "s3://models/minilm/v1/",
        &["--trusted-key", &release.fingerprint],
        &moto.env(),
    );
    assert_eq!(url, "s3://models/minilm/v1/");

    // `seal verify` checks it where it lives, with serve's rules.
    let verified = seal(
        &["verify", "--trusted-key", &release.fingerprint, &url],
        &moto.env(),
    );
    let line = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{line}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        line.starts_with("s3://models/minilm/v1/: OK sentence-transformers/all-MiniLM-L6-v2"),
        "{line}"
    );

    let server = start(
        &["--trusted-key", &release.fingerprint, "--model-url", &url],
        &moto.env(),
    );
    assert_golden(&server, &url, release.payload_bytes());
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("\"bundle verified\""), "{logs}");
    assert!(logs.contains("\"throughput_mib_s\""), "{logs}");
}

#[test]
fn minilm_pushed_to_an_oci_registry_is_pulled_by_digest_and_served() {
    let pki = Pki::new();
    let registry = Registry::start(&pki);
    let release = Release::minilm();
    let dir = release.dir.path().display().to_string();
    let ca = pki.ca.display().to_string();
    let destination = format!("oci://{}/sealserve/minilm:v1", registry.host);
    let url = publish(
        &dir,
        &destination,
        &["--ca-file", &ca, "--trusted-key", &release.fingerprint],
        &registry.env(),
    );
    assert!(
        url.starts_with(&format!("oci://{}/sealserve/minilm@sha256:", registry.host)),
        "{url}"
    );
    // Publishing the same bundle again gives the same artifact.
    assert_eq!(
        publish(
            &dir,
            &destination,
            &["--ca-file", &ca, "--trusted-key", &release.fingerprint],
            &registry.env()
        ),
        url
    );

    let server = start(
        &[
            "--trusted-key",
            &release.fingerprint,
            "--model-url",
            &url,
            "--ca-file",
            &ca,
        ],
        &registry.env(),
    );
    assert_golden(&server, &url, release.payload_bytes());
    drop(server);

    // The registry requires the login: without it, serve stops with one clear line.
    let refusal = remote::serve_refuses(
        &[
            "--trusted-key",
            &release.fingerprint,
            "--model-url",
            &url,
            "--ca-file",
            &ca,
        ],
        &[],
    );
    assert_eq!(refusal.code, 20, "{}", refusal.stderr);
    assert!(
        remote::last_line(&refusal.stderr).contains("access denied"),
        "{}",
        refusal.stderr
    );
}

#[test]
fn tiny_bundle_over_https_with_a_private_ca_answers_like_the_same_bundle_loaded_locally() {
    let pki = Pki::new();
    let release = Release::tiny();
    let files = remote::FileServer::start(release.dir.path(), Some(&pki));
    let ca = pki.ca.display().to_string();

    // Without the CA the TLS handshake fails, and the line says what to do.
    let refusal = remote::serve_refuses(
        &[
            "--trusted-key",
            &release.fingerprint,
            "--model-url",
            &files.base,
        ],
        &[],
    );
    assert_eq!(refusal.code, 20, "{}", refusal.stderr);
    let line = remote::last_line(&refusal.stderr);
    assert!(
        line.contains("TLS error") && line.contains("--ca-file"),
        "{line}"
    );

    let server = start(
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
    let texts = vec![
        "hello world".to_string(),
        "the cat sat on the mat".to_string(),
    ];
    let served = post_embed(&server.base, &texts);

    // The same folder, fetched in-process through file:// and loaded on CPU.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let policy = sealserve::bundle::TrustPolicy::pinned([release.fingerprint.clone()]);
    let url: sealserve::remote::ModelUrl = release.file_url().parse().unwrap();
    let fetched = runtime
        .block_on(sealserve::remote::fetch(&url, &policy, &Default::default()))
        .unwrap();
    let config = sealserve::engine::EngineConfig {
        device: "cpu".parse().unwrap(),
        ..Default::default()
    };
    let local = sealserve::engine::load(&fetched.verified, &config).unwrap();
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoded = local.tokenizer.encode(&inputs, true).unwrap();
    let ids: Vec<Vec<u32>> = encoded.into_iter().map(|e| e.ids).collect();
    let expected = local.embedder.embed(&ids).unwrap();
    for (got, want) in served.iter().zip(&expected) {
        let norm: f32 = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        let want: Vec<f32> = want.iter().map(|x| x / norm).collect();
        assert!(max_abs_diff(got, &want) <= 1e-5, "{got:?} vs {want:?}");
    }
    // Files were fetched with ranged GETs after HEADs sized them.
    let seen = files.faults.seen();
    assert!(
        seen.iter().any(|r| r.starts_with("HEAD model.safetensors")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.starts_with("GET model.safetensors bytes=0-")),
        "{seen:?}"
    );
}
