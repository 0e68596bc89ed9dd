//! runtime-image/sign.sh against a stub `cosign` that records its command lines (cosign itself
//! cannot be installed here; README documents the real calls), and `verify-binary` against a real
//! release directory checked with the real minisign, sha256sum and seal.
//!
//! What must hold: only digests are signed, taken from the build's metadata; KMS/HSM references
//! pass through to cosign; verification never uses the file lying beside the private key; the SBOM
//! and SLSA v1 provenance are attested and verified; cosign v3 gets the flags that keep the v2
//! signature format; an unknown cosign is refused.

#[path = "common/deploy.rs"]
mod deploy;

#[allow(dead_code)]
#[path = "common/binary.rs"]
mod binary;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use deploy::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIGEST: &str = "sha256:4f2a5e1c9b8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f";
const REPO: &str = "registry.example.internal/sealserve/serve";

struct Stub {
    dir: tempfile::TempDir,
}

impl Stub {
    /// A `cosign` that reports `version` as given and logs every call, one per line, args
    /// separated by a unit separator.
    fn new(version: &str) -> Stub {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = format!(
            "#!/bin/sh\n\
             if [ \"$1\" = version ]; then echo 'GitVersion:    {version}'; exit 0; fi\n\
             (IFS=$(printf '\\037'); printf '%s\\n' \"$*\") >> \"{log}\"\n",
            log = dir.path().join("calls").display()
        );
        let path = dir.path().join("cosign");
        std::fs::write(&path, script).expect("write stub");
        run_ok(Command::new("chmod").arg("+x").arg(&path));
        for file in ["cosign.key", "sbom.cdx.json", "provenance.json"] {
            std::fs::write(dir.path().join(file), "{}").expect("write");
        }
        Stub { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sign(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(runtime_image("sign.sh"))
            .args(args)
            .env("COSIGN", self.path("cosign"))
            .current_dir(self.dir.path())
            .output()
            .expect("run sign.sh")
    }

    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\u{1f}').map(str::to_string).collect())
            .collect()
    }
}

fn metadata_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join("build.json");
    let metadata = serde_json::json!({
        "containerimage.digest": DIGEST,
        "image.name": name,
        "buildx.build.ref": "builder/builder0/xyz"
    });
    std::fs::write(&path, metadata.to_string()).expect("write");
    path
}

fn has(call: &[String], args: &[&str]) -> bool {
    args.iter().all(|a| call.iter().any(|c| c == a))
}

#[test]
fn images_are_signed_and_attested_by_the_digest_the_build_recorded() {
    for version in ["v2.6.1", "v3.1.2"] {
        let stub = Stub::new(version);
        let meta = metadata_file(stub.dir.path(), &format!("{REPO}:0.1.0"));
        let out = stub.sign(&[
            "image",
            "--metadata-file",
            meta.to_str().unwrap(),
            "--key",
            "cosign.key",
            "--pub",
            "cosign.pub",
            "--sbom",
            "sbom.cdx.json",
            "--provenance",
            "provenance.json",
        ]);
        assert!(out.status.success(), "{version}: {}", text(&out));
        let reference = format!("{REPO}@{DIGEST}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().last(),
            Some(reference.as_str())
        );
        let calls = stub.calls();
        let verbs: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(
            verbs,
            [
                "sign",
                "attest",
                "attest",
                "verify",
                "verify-attestation",
                "verify-attestation"
            ],
            "{version}"
        );
        for call in &calls {
            assert_eq!(
                call.last(),
                Some(&reference),
                "{version}: {call:?} is not by digest"
            );
        }
        let legacy = ["--new-bundle-format=false", "--use-signing-config=false"];
        for call in &calls[..3] {
            assert!(
                has(call, &["--key", "cosign.key", "--tlog-upload=false"]),
                "{call:?}"
            );
            assert_eq!(
                has(call, &legacy),
                version.starts_with("v3"),
                "{version}: {call:?}"
            );
        }
        assert!(has(
            &calls[1],
            &["--type", "cyclonedx", "--predicate", "sbom.cdx.json"]
        ));
        assert!(has(
            &calls[2],
            &[
                "--type",
                "slsaprovenance1",
                "--predicate",
                "provenance.json"
            ]
        ));
        for call in &calls[3..] {
            assert!(
                has(
                    call,
                    &["--key", "cosign.pub", "--insecure-ignore-tlog=true"]
                ),
                "{call:?}"
            );
            assert!(
                !call.iter().any(|a| a == "cosign.key"),
                "verified with the private key file: {call:?}"
            );
        }
    }
}

#[test]
fn tags_unknown_cosign_and_keys_without_a_verification_key_are_refused() {
    /// Runs `sign.sh image REF KEYS... --sbom .. --provenance ..`, expects a refusal naming why
    /// and no cosign call at all.
    fn refused(version: &str, reference: &str, keys: &[&str], why: &str) {
        let stub = Stub::new(version);
        let mut args = vec!["image", reference];
        args.extend_from_slice(keys);
        args.extend(["--sbom", "sbom.cdx.json", "--provenance", "provenance.json"]);
        let out = stub.sign(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).contains(why), "{args:?}: {}", text(&out));
        assert!(
            stub.calls().is_empty(),
            "cosign was called: {:?}",
            stub.calls()
        );
    }
    let pinned = format!("{REPO}@{DIGEST}");
    let key_pair = ["--key", "cosign.key", "--pub", "cosign.pub"];
    // A tag: the digest must come from the build, not from whatever the tag points to now.
    refused(
        "v3.1.2",
        &format!("{REPO}:0.1.0"),
        &key_pair,
        "refusing to sign or verify a tag",
    );
    // A key file and no --pub: never fall back to the .pub lying beside the private key.
    refused(
        "v3.1.2",
        &pinned,
        &["--key", "cosign.key"],
        "never the file beside the private key",
    );
    // A cosign whose major version is unknown would sign in an unknown format.
    refused("devel", &pinned, &key_pair, "major version");
}

#[test]
fn kms_and_hsm_references_go_to_cosign_unchanged() {
    for key in [
        "awskms:///alias/sealserve-release",
        "hashivault://sealserve",
        "pkcs11:token=bank;object=release",
    ] {
        let stub = Stub::new("v2.6.1");
        std::fs::write(stub.path("digest"), format!("{DIGEST}\n")).expect("write");
        let out = stub.sign(&[
            "image",
            "--digest-file",
            "digest",
            REPO,
            "--key",
            key,
            "--sbom",
            "sbom.cdx.json",
            "--provenance",
            "provenance.json",
        ]);
        assert!(out.status.success(), "{key}: {}", text(&out));
        let calls = stub.calls();
        assert_eq!(calls.len(), 6);
        // Signed and verified with the same reference: the private key never leaves the KMS/HSM.
        for call in &calls {
            assert!(has(call, &["--key", key]), "{call:?}");
        }
    }
}

#[test]
fn zarf_arguments_and_provenance_come_from_the_digest() {
    let stub = Stub::new("v2.6.1");
    let reference = format!("{REPO}@{DIGEST}");
    let out = stub.sign(&["zarf-args", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let hex = DIGEST.trim_start_matches("sha256:");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "--set IMAGE={reference} --set SIGNATURE={REPO}:sha256-{hex}.sig --set ATTESTATIONS={REPO}:sha256-{hex}.att"
        )
    );
    // zarf.yaml packages exactly these three.
    let package = yaml_doc(&runtime_image("zarf.yaml"));
    let images = &package["components"][0]["images"];
    assert_eq!(
        images,
        &serde_json::json!([
            "###ZARF_PKG_TMPL_IMAGE###",
            "###ZARF_PKG_TMPL_SIGNATURE###",
            "###ZARF_PKG_TMPL_ATTESTATIONS###"
        ])
    );

    let out = Command::new("bash")
        .arg(runtime_image("sign.sh"))
        .args([
            "provenance",
            &reference,
            "--dockerfile",
            "runtime-image/Dockerfile",
            "--build-arg",
            "CUDA_COMPUTE_CAP=80",
        ])
        .args(["--builder-id", "https://ci.example.internal/sealserve"])
        .current_dir(repo())
        .output()
        .expect("sign.sh provenance");
    assert!(out.status.success(), "{}", text(&out));
    let predicate: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("provenance JSON");
    let definition = &predicate["buildDefinition"];
    assert_eq!(
        definition["externalParameters"]["image"],
        reference.as_str()
    );
    assert_eq!(
        definition["externalParameters"]["buildArgs"]["CUDA_COMPUTE_CAP"],
        "80"
    );
    assert_eq!(
        predicate["runDetails"]["builder"]["id"],
        "https://ci.example.internal/sealserve"
    );
    let deps: Vec<String> = definition["resolvedDependencies"]
        .as_array()
        .expect("resolvedDependencies")
        .iter()
        .map(|d| d["uri"].as_str().expect("uri").to_string())
        .collect();
    for base in [
        "pkg:docker/docker.io/library/rust:1.95-bookworm",
        "pkg:docker/gcr.io/distroless/cc-debian12:nonroot",
    ] {
        assert!(deps.iter().any(|d| d == base), "{base} not among {deps:?}");
    }
}

/// A standalone release directory as scripts/release-sign lays it out, signed with a fresh
/// Ed25519 key (openssl signs with it) and a fresh minisign key. Its `serve` embeds a bundle
/// signed by the same Ed25519 key as a release (the test build is dev-signed, so the copy is
/// re-signed), which verify-binary pins.
fn release_dir(dir: &Path) {
    let release = dir.join("release");
    std::fs::create_dir(&release).expect("mkdir");
    let (_, key) = binary::release_signed_copy(&release, "serve");
    std::fs::write(dir.join("release.key"), key.to_pkcs8_pem()).expect("write key");
    run_ok(
        tool("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.join("release.key"))
            .arg("-out")
            .arg(dir.join("release.pub")),
    );
    run_ok(
        tool("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(dir.join("release.pub.minisign"))
            .arg("-s")
            .arg(dir.join("release.minisign.key")),
    );
    let sums = run_ok(tool("sha256sum").arg("serve").current_dir(&release));
    std::fs::write(release.join("SHA256SUMS"), &sums.stdout).expect("write sums");
    for file in ["serve", "SHA256SUMS"] {
        let signature = run_ok(
            tool("openssl")
                .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
                .arg(dir.join("release.key"))
                .arg("-in")
                .arg(release.join(file)),
        );
        let encoded = STANDARD.encode(&signature.stdout);
        std::fs::write(release.join(format!("{file}.sig")), encoded).expect("write sig");
        run_ok(
            tool("minisign")
                .args(["-S", "-s"])
                .arg(dir.join("release.minisign.key"))
                .arg("-m")
                .arg(release.join(file))
                .arg("-x")
                .arg(release.join(format!("{file}.minisig"))),
        );
    }
}

#[test]
fn verify_binary_checks_the_release_signatures_sums_and_bundle() {
    let stub = Stub::new("v3.1.2");
    release_dir(stub.dir.path());
    let seal = env!("CARGO_BIN_EXE_seal");
    let verify = |stub: &Stub| {
        Command::new("bash")
            .arg(runtime_image("sign.sh"))
            .args(["verify-binary", "release", "--release-pub", "release.pub"])
            .env("COSIGN", stub.path("cosign"))
            .env("SEAL", seal)
            .current_dir(stub.dir.path())
            .output()
            .expect("verify-binary")
    };
    let out = verify(&stub);
    assert!(out.status.success(), "{}", text(&out));
    let calls = stub.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (call, file) in calls.iter().zip(["SHA256SUMS", "serve"]) {
        assert_eq!(call[0], "verify-blob");
        assert!(
            has(
                call,
                &[
                    "--key",
                    "release.pub",
                    "--signature",
                    &format!("release/{file}.sig")
                ]
            ),
            "{call:?}"
        );
    }
    // The raw Ed25519 signature cosign would check is a real one: openssl verifies it.
    let sig = stub.path("sig-check.bin");
    let encoded = std::fs::read_to_string(stub.path("release/serve.sig")).expect("read sig");
    std::fs::write(&sig, STANDARD.decode(encoded.trim()).expect("base64")).expect("write");
    run_ok(
        tool("openssl")
            .args([
                "pkeyutl",
                "-verify",
                "-rawin",
                "-pubin",
                "-inkey",
                "release.pub",
                "-in",
                "release/serve",
                "-sigfile",
            ])
            .arg(&sig)
            .current_dir(stub.dir.path()),
    );

    // One changed byte in serve: minisign and sha256sum refuse it.
    let serve = stub.path("release/serve");
    let mut bytes = std::fs::read(&serve).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&serve, bytes).expect("write");
    let out = verify(&stub);
    assert!(
        !out.status.success(),
        "a modified serve passed verify-binary"
    );
}
