//! A remote bundle obeys the embedded bundle's trust rules, with the same exit codes: a tampered,
//! missing or extra object, a wrong signature, an untrusted or dev key, and no pin at all are each
//! refused with one clear line, before anything listens; and the trust decision is taken before
//! a byte of payload is downloaded.

mod common;
#[path = "common/remote.rs"]
mod remote;

use remote::{last_line, serve_refuses, FileServer, Moto, Refusal, Release};
use sealserve::bundle::{MANIFEST_FILE, SIGNATURE_MINISIGN_FILE, SIGNATURE_RAW_FILE};
use sealserve::remote::s3::S3Store;
use sealserve::signature::SecretKey;
use sealserve::spec::METADATA_FILE;
use std::collections::HashMap;

const WEIGHTS: &str = "model.safetensors";

fn refuse(url: &str, pin: Option<&str>, env: &[(String, String)]) -> Refusal {
    let mut args = vec!["--model-url", url];
    if let Some(pin) = pin {
        args.extend(["--trusted-key", pin]);
    }
    serve_refuses(&args, env)
}

fn assert_refused(refusal: &Refusal, code: i32, says: &[&str]) {
    let line = last_line(&refusal.stderr);
    assert_eq!(refusal.code, code, "{}", refusal.stderr);
    assert!(line.starts_with("serve: "), "{line}");
    for part in says {
        assert!(line.contains(part), "{line:?} does not say {part:?}");
    }
}

fn flip_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Replaces the signatures with ones by another key over the same MANIFEST.
fn sign_with_other_key(release: &Release) {
    let manifest = std::fs::read(release.path(MANIFEST_FILE)).unwrap();
    let other = SecretKey::generate();
    let signature = other.sign(&manifest, MANIFEST_FILE, 1_700_000_000);
    std::fs::write(
        release.path(SIGNATURE_RAW_FILE),
        signature.to_raw_base64().unwrap(),
    )
    .unwrap();
    std::fs::write(
        release.path(SIGNATURE_MINISIGN_FILE),
        signature.to_minisign().unwrap(),
    )
    .unwrap();
}

#[test]
fn every_trust_rule_holds_for_a_bundle_in_a_folder() {
    let release = Release::tiny();
    let url = release.file_url();
    let pin = release.fingerprint.clone();

    // No pin: nothing is fetched, exit 18 and how to pin.
    assert_refused(
        &refuse(&url, None, &[]),
        18,
        &["no trusted key configured", "--trusted-key"],
    );
    // Another key pinned.
    let stranger = SecretKey::generate().public_key().fingerprint();
    assert_refused(
        &refuse(&url, Some(&stranger), &[]),
        15,
        &[&release.fingerprint, "not among the trusted keys"],
    );
    // An extra file beside the bundle.
    std::fs::write(release.path("notes.txt"), "not signed").unwrap();
    assert_refused(
        &refuse(&url, Some(&pin), &[]),
        12,
        &["notes.txt", "MANIFEST does not cover"],
    );
    std::fs::remove_file(release.path("notes.txt")).unwrap();
    // A missing one.
    let config = std::fs::read(release.path("config.json")).unwrap();
    std::fs::remove_file(release.path("config.json")).unwrap();
    assert_refused(
        &refuse(&url, Some(&pin), &[]),
        12,
        &["config.json", "does not carry"],
    );
    std::fs::write(release.path("config.json"), config).unwrap();
    // A tampered one.
    let weights = std::fs::read(release.path(WEIGHTS)).unwrap();
    flip_byte(&release.path(WEIGHTS));
    assert_refused(
        &refuse(&url, Some(&pin), &[]),
        11,
        &[WEIGHTS, "sha256 mismatch"],
    );
    std::fs::write(release.path(WEIGHTS), &weights).unwrap();
    // A dev build (its signed sealserve.json says so) while a key is pinned, though this very
    // key signed it.
    let metadata = std::fs::read_to_string(release.path(METADATA_FILE)).unwrap();
    let mut dev: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    dev["dev_signed"] = serde_json::Value::Bool(true);
    std::fs::write(release.path(METADATA_FILE), dev.to_string()).unwrap();
    release.resign();
    assert_refused(&refuse(&url, Some(&pin), &[]), 16, &["dev-signed"]);
    std::fs::write(release.path(METADATA_FILE), metadata).unwrap();
    release.resign();
    // Signed by another key than the one it carries.
    sign_with_other_key(&release);
    assert_refused(
        &refuse(&url, Some(&pin), &[]),
        13,
        &["signature over MANIFEST rejected"],
    );
    // No MANIFEST at all: the URL is wrong, exit 20.
    let empty = tempfile::tempdir().unwrap();
    let empty_url = format!("file://{}/", empty.path().display());
    assert_refused(
        &refuse(&empty_url, Some(&pin), &[]),
        20,
        &["MANIFEST", "not found", "seal publish"],
    );
    // A URL that is not one: configuration error.
    assert_refused(
        &refuse("ftp://host/x/", Some(&pin), &[]),
        2,
        &["unknown scheme"],
    );
}

#[test]
fn an_untrusted_bundle_over_https_is_refused_before_its_payload_is_downloaded() {
    let release = Release::tiny();
    let server = FileServer::start(release.dir.path(), None);
    let stranger = SecretKey::generate().public_key().fingerprint();
    assert_refused(
        &refuse(&server.base, Some(&stranger), &[]),
        15,
        &["not among the trusted keys"],
    );
    let seen = server.faults.seen();
    assert!(seen.iter().any(|r| r == "GET MANIFEST"), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|r| r.contains(WEIGHTS) || r.contains("config.json")),
        "payload requested although the key was refused: {seen:?}"
    );

    // A listed file the server does not have (HTTP has no listing: the 404 says it).
    std::fs::remove_file(release.path("tokenizer.json")).unwrap();
    assert_refused(
        &refuse(&server.base, Some(&release.fingerprint), &[]),
        12,
        &["tokenizer.json", "does not carry"],
    );
}

fn s3_store(moto: &Moto, prefix: &str) -> S3Store {
    let env: HashMap<String, String> = moto.env().into_iter().collect();
    let client = sealserve::remote::tls::Roots::load(None)
        .unwrap()
        .http_client(std::time::Duration::from_secs(10))
        .unwrap();
    S3Store::with_env("models", prefix, client, &env).unwrap()
}

/// Uploads every file of the folder (but `skip`) as it is, tampered or not.
fn upload(moto: &Moto, prefix: &str, release: &Release, skip: &str) {
    let store = s3_store(moto, prefix);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for entry in std::fs::read_dir(release.dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != skip {
            runtime.block_on(store.put(&name, &entry.path())).unwrap();
        }
    }
}

#[test]
fn tampered_missing_and_extra_objects_in_s3_are_refused_with_sigv4_enforced() {
    let moto = Moto::start(&["models"]);
    let release = Release::tiny();
    let pin = release.fingerprint.clone();

    upload(&moto, "good/", &release, "");
    // Credentials with a wrong secret: moto checks the signature, 403 at once.
    let mut wrong = moto.env();
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let started = std::time::Instant::now();
    assert_refused(
        &refuse("s3://models/good/", Some(&pin), &wrong),
        20,
        &["access denied", "403", "AWS_ACCESS_KEY_ID"],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "a 403 must not be retried: {:?}",
        started.elapsed()
    );

    upload(&moto, "missing/", &release, "config.json");
    assert_refused(
        &refuse("s3://models/missing/", Some(&pin), &moto.env()),
        12,
        &["config.json", "does not carry"],
    );

    upload(&moto, "extra/", &release, "");
    let extra = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(extra.path(), "unsigned").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(s3_store(&moto, "extra/").put("extra.bin", extra.path()))
        .unwrap();
    assert_refused(
        &refuse("s3://models/extra/", Some(&pin), &moto.env()),
        12,
        &["extra.bin", "MANIFEST does not cover"],
    );

    flip_byte(&release.path(WEIGHTS));
    upload(&moto, "tampered/", &release, "");
    assert_refused(
        &refuse("s3://models/tampered/", Some(&pin), &moto.env()),
        11,
        &[WEIGHTS, "sha256 mismatch"],
    );
}
