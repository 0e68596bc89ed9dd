//! Fail closed (issue 11) on the real binaries: no pin, no start; empty pins are configuration
//! errors; a mounted keys folder pins; a deployment can be bound to one model and MANIFEST; an
//! attacker's re-signed bundle never starts without the operator's waiver; the waiver is loud.

mod common;

use common::binary::{outcome, release_signed_copy, seal_with, serve_verify_only};
use common::server::Server;
use sealserve::signature::SecretKey;
use std::path::Path;
use std::process::Command;

const SERVE: &str = env!("CARGO_BIN_EXE_serve");

/// serve --verify-only and seal verify on `binary` with the same flags and environment: both
/// must exit with `code`, and a refusal is one line containing `mentions`.
fn both_exit(binary: &Path, args: &[&str], env: &[(&str, &str)], code: i32, mentions: &str) {
    let mut seal_args = vec!["verify", binary.to_str().unwrap()];
    seal_args.extend_from_slice(args);
    for (what, output) in [
        ("serve --verify-only", serve_verify_only(binary, args, env)),
        ("seal verify", seal_with(&seal_args, env)),
    ] {
        let (status, stderr) = outcome(&output);
        println!(
            "{what} {args:?} {env:?}: exit {status:?}: {}",
            stderr.trim()
        );
        assert_eq!(status, Some(code), "{what} {args:?} {env:?}: {stderr}");
        if code != 0 {
            assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
            assert!(
                stderr.contains(mentions),
                "{what}: {stderr:?} lacks {mentions:?}"
            );
        }
    }
}

/// Both accept.
fn both_accept(binary: &Path, args: &[&str], env: &[(&str, &str)]) {
    both_exit(binary, args, env, 0, "")
}

/// What `seal inspect --json` reports for a binary.
fn inspect(binary: &Path) -> serde_json::Value {
    let output = seal_with(&["inspect", "--json", binary.to_str().unwrap()], &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("inspect JSON")
}

#[test]
fn without_a_pin_or_the_waiver_nothing_starts_and_the_line_says_how_to_pin() {
    both_exit(Path::new(SERVE), &[], &[], 18, "--trusted-key");
    // Plain serve (not --verify-only) refuses before binding anything.
    let output = Command::new(SERVE)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env_remove("SEALSERVE_TRUSTED_KEYS")
        .env_remove("SEALSERVE_TRUSTED_KEYS_DIR")
        .env_remove("SEALSERVE_ALLOW_UNPINNED")
        .output()
        .unwrap();
    let (status, stderr) = outcome(&output);
    assert_eq!(status, Some(18), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("serve: no trusted key configured")
            && stderr.contains("--trusted-keys-dir")
            && stderr.contains("--allow-unpinned"),
        "{stderr}"
    );
    // The waiver, by flag or by variable.
    both_accept(Path::new(SERVE), &["--allow-unpinned"], &[]);
    both_accept(Path::new(SERVE), &[], &[("SEALSERVE_ALLOW_UNPINNED", "1")]);
}

#[test]
fn empty_or_blank_pins_are_configuration_errors_never_unpinned() {
    let binary = Path::new(SERVE);
    for (args, env) in [
        (&["--trusted-key", ""][..], &[][..]),
        (&["--trusted-key", ","], &[]),
        (&[], &[("SEALSERVE_TRUSTED_KEYS", "")]),
        (&[], &[("SEALSERVE_TRUSTED_KEYS", " ")]),
        // The waiver does not turn an empty pin into "unpinned".
        (&["--trusted-key", ""], &[("SEALSERVE_ALLOW_UNPINNED", "1")]),
        (
            &["--expect-model", ""],
            &[("SEALSERVE_ALLOW_UNPINNED", "1")],
        ),
    ] {
        both_exit(binary, args, env, 2, "empty");
    }
    for (args, env) in [
        (&["--trusted-keys-dir", ""][..], &[][..]),
        (&[], &[("SEALSERVE_TRUSTED_KEYS_DIR", "")]),
        // The waiver takes yes/no values only: anything else is an error, not a waiver.
        (&[], &[("SEALSERVE_ALLOW_UNPINNED", "maybe")]),
        (&[], &[("SEALSERVE_ALLOW_UNPINNED", "")]),
    ] {
        let mut seal_args = vec!["verify", SERVE];
        seal_args.extend_from_slice(args);
        for output in [
            serve_verify_only(binary, args, env),
            seal_with(&seal_args, env),
        ] {
            let (status, stderr) = outcome(&output);
            assert_eq!(status, Some(2), "{args:?} {env:?}: {stderr}");
        }
    }
}

#[test]
fn a_mounted_keys_folder_pins_and_an_empty_or_missing_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("trust");
    std::fs::create_dir(&keys).unwrap();
    std::fs::create_dir(keys.join("..data")).unwrap();
    let keys_arg = keys.to_str().unwrap().to_string();
    // Empty (only a hidden entry), and missing: exit 2 either way, never unpinned.
    for (path, mentions) in [
        (keys_arg.clone(), "holds no key file"),
        (format!("{keys_arg}/missing"), "cannot list"),
    ] {
        both_exit(
            Path::new(SERVE),
            &["--trusted-keys-dir", &path],
            &[],
            2,
            mentions,
        );
        both_exit(
            Path::new(SERVE),
            &[],
            &[("SEALSERVE_TRUSTED_KEYS_DIR", path.as_str())],
            2,
            mentions,
        );
    }
    // A Secret-style mount of a release key: pinned, so this dev build is refused (16) and a
    // release build signed by another key would be too (15, see tests/tamper.rs).
    let release = SecretKey::generate().public_key();
    std::fs::write(keys.join("..data/release.pub"), release.to_pem()).unwrap();
    std::os::unix::fs::symlink("..data/release.pub", keys.join("release.pub")).unwrap();
    both_exit(
        Path::new(SERVE),
        &["--trusted-keys-dir", &keys_arg],
        &[],
        16,
        "dev-signed",
    );
    both_exit(
        Path::new(SERVE),
        &[],
        &[("SEALSERVE_TRUSTED_KEYS_DIR", keys_arg.as_str())],
        16,
        "dev-signed",
    );
    // A file in it that is no key: exit 2 naming the file.
    std::fs::write(keys.join("notes.txt"), "rotate in May\n").unwrap();
    both_exit(
        Path::new(SERVE),
        &["--trusted-keys-dir", &keys_arg],
        &[],
        2,
        "notes.txt",
    );
}

#[test]
fn a_deployment_bound_to_one_model_and_manifest_refuses_any_other() {
    let binary = Path::new(SERVE);
    let report = inspect(binary);
    let model = format!(
        "{}@{}",
        report["model_id"].as_str().unwrap(),
        report["revision"].as_str().unwrap()
    );
    let manifest = report["manifest_sha256"].as_str().unwrap().to_string();
    let other_revision = format!(
        "{}@{}",
        report["model_id"].as_str().unwrap(),
        "0".repeat(40)
    );
    let other_manifest = "ab".repeat(32);
    let waiver = ("SEALSERVE_ALLOW_UNPINNED", "1");

    both_accept(
        binary,
        &["--expect-model", &model, "--expect-manifest", &manifest],
        &[waiver],
    );
    both_accept(
        binary,
        &[],
        &[
            waiver,
            ("SEALSERVE_EXPECT_MODEL", model.as_str()),
            (
                "SEALSERVE_EXPECT_MANIFEST",
                &format!("sha256:{}", manifest.to_uppercase()),
            ),
        ],
    );
    both_exit(
        binary,
        &["--expect-model", &other_revision],
        &[waiver],
        19,
        "--expect-model",
    );
    both_exit(
        binary,
        &["--expect-manifest", &other_manifest],
        &[waiver],
        19,
        "--expect-manifest",
    );
    both_exit(
        binary,
        &[],
        &[waiver, ("SEALSERVE_EXPECT_MODEL", other_revision.as_str())],
        19,
        "--expect-model",
    );
    // Malformed bindings are configuration errors.
    both_exit(
        binary,
        &["--expect-model", "repo@main"],
        &[waiver],
        2,
        "40-hex",
    );
    both_exit(
        binary,
        &["--expect-manifest", "abc"],
        &[waiver],
        2,
        "64-hex",
    );
}

/// Issue 11, rows 1 and 3: an attacker swaps the embedded key and re-signs everything (here
/// even relabelling the build as a release). Without a pin it no longer starts; pinned to the
/// release key it is refused; only the explicit waiver runs it, and says so.
#[test]
fn an_attacker_resigned_binary_needs_a_pin_to_be_refused_and_never_starts_silently() {
    let dir = tempfile::tempdir().unwrap();
    // The attacker's sealserve.json even says "release"; MANIFEST and signature follow it.
    let (copy, attacker) = release_signed_copy(dir.path(), "serve.attacked");

    let release = SecretKey::generate().public_key().fingerprint();
    // Today's default: refused for want of a pin (it used to start with one WARN line).
    both_exit(&copy, &[], &[], 18, "no trusted key configured");
    // Pinned to the release key: untrusted.
    both_exit(
        &copy,
        &["--trusted-key", &release],
        &[],
        15,
        &attacker.public_key().fingerprint(),
    );
    // The waiver runs it (integrity only, as documented), naming the attacker's key.
    let waived = serve_verify_only(&copy, &["--allow-unpinned"], &[]);
    let (status, stderr) = outcome(&waived);
    assert_eq!(status, Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&waived.stdout);
    assert!(
        stdout.contains(&attacker.public_key().fingerprint()) && stdout.contains("(unpinned)"),
        "{stdout}"
    );
    assert!(stderr.contains("running UNPINNED"), "{stderr}");
}

/// A release build pinned by its key file, folder or fingerprint starts; the same key's
/// signature over another bundle (here: the dev build's MANIFEST differs from this one's) is
/// refused where the deployment is bound to one MANIFEST (issue 11, "anything ever signed by
/// the pinned key").
#[test]
fn a_pinned_release_starts_and_a_binding_refuses_anything_else_that_key_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (release, key) = release_signed_copy(dir.path(), "serve.release");
    let public = key.public_key();
    let keys = dir.path().join("trust");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("model.pub"), public.to_pem()).unwrap();
    let keys_arg = keys.to_str().unwrap();
    let key_file = keys.join("model.pub");
    let fingerprint = public.fingerprint();
    both_accept(&release, &["--trusted-keys-dir", keys_arg], &[]);
    both_accept(
        &release,
        &["--trusted-key", key_file.to_str().unwrap()],
        &[],
    );
    both_accept(
        &release,
        &[],
        &[("SEALSERVE_TRUSTED_KEYS", fingerprint.as_str())],
    );
    let report = inspect(&release);
    assert_eq!(report["dev_signed"], false, "{report}");
    let this_manifest = report["manifest_sha256"].as_str().unwrap().to_string();
    let dev_manifest = inspect(Path::new(SERVE))["manifest_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(this_manifest, dev_manifest);
    both_accept(
        &release,
        &[
            "--trusted-keys-dir",
            keys_arg,
            "--expect-manifest",
            &this_manifest,
        ],
        &[],
    );
    both_exit(
        &release,
        &[
            "--trusted-keys-dir",
            keys_arg,
            "--expect-manifest",
            &dev_manifest,
        ],
        &[],
        19,
        &this_manifest,
    );
    // Another key in the folder instead: untrusted.
    std::fs::write(
        keys.join("model.pub"),
        SecretKey::generate().public_key().to_pem(),
    )
    .unwrap();
    both_exit(
        &release,
        &["--trusted-keys-dir", keys_arg],
        &[],
        15,
        &fingerprint,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiver_is_loud_in_the_log_and_the_metrics() {
    // reqwest's TLS is rustls without a built-in provider (src/remote/tls.rs): install ring's.
    sealserve::remote::tls::install_crypto_provider();
    let server = Server::start(&[], &[]);
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("running UNPINNED"), "{logs}");
    assert!(logs.contains("\"trust\":\"unpinned\""), "{logs}");
    let info: serde_json::Value = reqwest::get(server.url("/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["trust"], "unpinned", "{info}");
    assert_eq!(info["trusted_keys_pinned"], false, "{info}");
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(sealserve::trust::TRUST_METRIC))
        .unwrap_or_else(|| panic!("no {} in\n{metrics}", sealserve::trust::TRUST_METRIC));
    assert!(
        line.contains("state=\"unpinned\"")
            && line.contains("signature=\"dev-signed\"")
            && line.ends_with(" 1"),
        "{line}"
    );
}

/// RFC 7235: the scheme of `Authorization` is case-insensitive.
#[test]
fn bearer_scheme_is_case_insensitive() {
    use axum::http::{header, HeaderMap, HeaderValue};
    for (value, expected) in [
        ("Bearer k", Some("k")),
        ("bearer k", Some("k")),
        ("BEARER k", Some("k")),
        ("bEaReR  k ", Some("k")),
        ("Basic k", None),
        ("Bearerk", None),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        assert_eq!(sealserve::http::bearer_token(&headers), expected, "{value}");
    }
}

/// Issue 11, "README's pin recipe on a tampered binary": the recipe pins the fingerprint of the
/// release key file, and `seal fingerprint` refuses to read one out of a binary, so the value
/// pinned can never come from the binary being trusted.
#[test]
fn the_pin_recipe_reads_the_key_file_never_the_binary() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(r#"--trusted-key "$(target/release/seal fingerprint keys/model.pub)""#),
        "README's pin recipe changed"
    );
    for line in readme.lines().filter(|l| l.contains("--trusted-key")) {
        assert!(
            !line.contains("inspect") && !line.contains("key_fingerprint"),
            "README pins a value read from a binary: {line}"
        );
    }
    let refused = seal_with(&["fingerprint", SERVE], &[]);
    let (status, stderr) = outcome(&refused);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(refused.stdout.is_empty(), "no fingerprint printed");
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().public_key();
    std::fs::write(dir.path().join("model.pub"), key.to_pem()).unwrap();
    let printed = seal_with(
        &[
            "fingerprint",
            dir.path().join("model.pub").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        key.fingerprint()
    );
}
