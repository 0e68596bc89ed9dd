//! One model-family fixture through the whole sealed path, as a user would take it: the qwen3
//! fixture (tests/data/families/qwen3: `Qwen3Model`, causal attention, last-token pooling, a
//! Normalize module, instruction prompts) pinned by the real `seal pin` into
//! tests/data/family-pins/qwen3/model.toml, sealed into `serve` by build.rs from
//! `SEALSERVE_MODEL_DIR` (scripts/build-model-serve), run as that binary and asked over HTTP; its
//! answers equal sentence-transformers' reference within 1e-5, and it refuses to start when a byte
//! of the sealed weights is altered.
//!
//! The pin test always runs. The binary tests run when SEALSERVE_FAMILY_TESTS=1, with
//! SEALSERVE_FAMILY_SERVE naming the binary scripts/build-model-serve printed (.ci/run sets both):
//! the fixture's build is a second build of the whole package (another model embedded).

mod common;

use common::binary::{self, bundle_of, family_serve, outcome, read_at, write_at};
use common::families::{self, floats};
use common::server::{curl, Server};
use serde_json::{json, Value};

const FIXTURE: &str = "qwen3";
/// The committed pin, relative to the package root (where `cargo test` runs tests).
const PIN: &str = "tests/data/family-pins/qwen3/model.toml";
/// The fixture's folder as `seal pin` was given it (the pin's header comment names it).
const SNAPSHOT: &str = "tests/data/families/qwen3";
const REPO: &str = "test/qwen3";
/// A fixture has no hub commit; the same placeholder tests/seal_pin.rs pins with.
const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";
/// f32 on CPU against `transformers`; 1e-4 would let a tanh-approximated activation through.
const TOLERANCE: f32 = 1e-5;

fn enabled() -> bool {
    let on = std::env::var("SEALSERVE_FAMILY_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!(
            "family binary tests run with SEALSERVE_FAMILY_TESTS=1 and SEALSERVE_FAMILY_SERVE \
             (.ci/run sets both)"
        );
    }
    on
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `POST path` with a JSON body on the server: the parsed 200 answer.
fn post(server: &Server, path: &str, body: &Value) -> Value {
    let (code, text) = curl("POST", &server.url(path), Some(body), &[]);
    assert_eq!(code, 200, "{path} {body}: {text}");
    json_of(&text)
}

/// The vectors of a TEI `/embed` answer.
fn vectors(answer: &Value) -> Vec<Vec<f32>> {
    answer
        .as_array()
        .unwrap_or_else(|| panic!("not an array of vectors: {answer}"))
        .iter()
        .map(floats)
        .collect()
}

/// Asserts `got` is within [`TOLERANCE`] of `want` and returns the max abs difference.
fn close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: dimensions");
    let diff = common::max_abs_diff(got, want);
    assert!(diff <= TOLERANCE, "{what}: max abs diff {diff:e}");
    diff
}

#[test]
fn the_committed_pin_is_what_seal_pin_writes() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let out = scratch.path().join("model.toml");
    let output = binary::seal(&[
        "pin",
        SNAPSHOT,
        "--repo",
        REPO,
        "--revision",
        REVISION,
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(output.status.success(), "{}", binary::text(&output.stderr));
    let written = std::fs::read_to_string(&out).expect("model.toml written");
    let committed = std::fs::read_to_string(PIN).expect("the committed pin");
    assert_eq!(
        committed, written,
        "{PIN} is not what `seal pin` writes for the fixture now: regenerate it with \
         `seal pin {SNAPSHOT} --repo {REPO} --revision {REVISION} --out {PIN} --force`"
    );
}

#[test]
fn the_sealed_fixture_serves_sentence_transformers_embeddings() {
    if !enabled() {
        return;
    }
    let reference = families::reference(FIXTURE);
    let server = Server::start_binary(&family_serve(), &[], &[]);

    // /info: the pinned model, family and task, from the signed sealserve.json.
    let (code, body) = curl("GET", &server.url("/info"), None, &[]);
    assert_eq!(code, 200, "{body}");
    let info = json_of(&body);
    assert_eq!(
        (&info["model_id"], &info["revision"]),
        (&json!(REPO), &json!(REVISION)),
        "{info:#}"
    );
    assert_eq!(info["family"], "qwen3", "{info:#}");
    assert_eq!(info["model_type"], "embedding", "{info:#}");
    assert_eq!(info["pooling"], "last_token", "{info:#}");
    assert_eq!(info["normalize"], true, "{info:#}");
    assert_eq!(info["max_input_tokens"], families::MAX_SEQ, "{info:#}");
    assert_eq!(info["prompts"], reference["prompts"], "{info:#}");

    // /embed, all inputs in one request (padding-heavy, one truncated at 40 tokens, non-ASCII).
    let inputs = reference["inputs"].as_array().expect("inputs");
    let texts: Vec<&str> = inputs
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let want: Vec<Vec<f32>> = reference["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(floats)
        .collect();
    let batched = vectors(&post(&server, "/embed", &json!({ "inputs": texts })));
    assert_eq!(batched.len(), want.len());
    let mut worst = 0f32;
    for (i, (got, want)) in batched.iter().zip(&want).enumerate() {
        worst = worst.max(close(&format!("/embed input {i}"), got, want));
    }
    // One by one equals the batch.
    for (i, text) in texts.iter().enumerate() {
        let single = vectors(&post(&server, "/embed", &json!({ "inputs": text })));
        assert_eq!(single.len(), 1);
        close(&format!("/embed input {i} alone"), &single[0], &batched[i]);
    }
    // Instruction prompts by name, as sentence-transformers' `encode(prompt_name=...)`.
    for item in reference["prompted"].as_array().expect("prompted") {
        let body = json!({"inputs": item["text"], "prompt_name": item["prompt_name"]});
        let got = vectors(&post(&server, "/embed", &body));
        worst = worst.max(close(
            &format!("/embed prompted {}", item["text"]),
            &got[0],
            &floats(&item["embedding"]),
        ));
    }
    // The OpenAI route gives the same vectors.
    let openai = post(
        &server,
        "/v1/embeddings",
        &json!({"input": texts, "model": REPO}),
    );
    let data = openai["data"].as_array().expect("data");
    assert_eq!(data.len(), want.len(), "{openai}");
    for (i, (item, want)) in data.iter().zip(&want).enumerate() {
        worst = worst.max(close(
            &format!("/v1/embeddings input {i}"),
            &floats(&item["embedding"]),
            want,
        ));
    }
    println!("qwen3 sealed serve over HTTP: max abs diff {worst:e} (tolerance {TOLERANCE:e})");
}

#[test]
fn the_sealed_fixture_refuses_an_altered_weight_byte() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("serve-qwen3");
    std::fs::copy(family_serve(), &copy).expect("copy the fixture's serve");
    let verified = binary::serve_verify_only(&copy, &["--allow-unpinned"], &[]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        binary::text(&verified.stderr)
    );

    // One byte in the middle of the weights flipped: exit 11, naming the file.
    let (placement, entries) = bundle_of(&copy);
    let entry = entries
        .iter()
        .find(|e| e.name == "model.safetensors")
        .expect("weights entry");
    let at = placement.offset + entry.offset + entry.len / 2;
    let original = read_at(&copy, at, 1);
    write_at(&copy, at, &[original[0] ^ 0xff]);
    let (code, stderr) = outcome(&binary::serve_verify_only(
        &copy,
        &["--allow-unpinned"],
        &[],
    ));
    assert_eq!(code, Some(11), "{stderr}");
    assert!(stderr.contains("model.safetensors"), "{stderr}");
}
