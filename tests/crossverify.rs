//! Our signatures check out with other people's tools, theirs with ours, the offline release
//! flow (`seal keygen` → `seal manifest` → `seal sign` → release build) produces a signature the
//! build accepts and `serve` trusts, and `scripts/release-sign` signs the `serve` binary itself
//! so that the real `minisign` and `openssl` check a download.
//!
//! Needs `minisign`, `openssl` and `sha256sum` on PATH (CI: `apt-get install -y minisign openssl
//! coreutils`). A missing tool fails the test: skipping would let the cross-checks rot unnoticed.

mod common;

use base64::Engine as _;
use sealserve::bundle::{
    self, Bundle, HeapCopies, TrustPolicy, VerifyError, MANIFEST_FILE, PUBLIC_KEY_FILE,
    PUBLIC_KEY_MINISIGN_FILE, SIGNATURE_MINISIGN_FILE, SIGNATURE_RAW_FILE,
};
use sealserve::signature::{PublicKey, Signature, SignatureAlgorithm};
use sealserve::spec::{BuildInfo, BundleMetadata, ModelSpec, METADATA_FILE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn require(tool: &str) {
    if let Err(e) = Command::new(tool).arg("--help").output() {
        panic!(
            "`{tool}` is needed to cross-check signatures and could not be run ({e}). \
             Install it: apt-get install -y minisign openssl coreutils"
        );
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command and fails the test, showing its output, unless it succeeds.
fn ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({:?}):\n{}{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

fn seal_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seal"));
    command.args(args);
    for var in common::binary::TRUST_ENV {
        command.env_remove(var);
    }
    command
}

fn seal(args: &[&str]) -> Output {
    seal_command(args).output().expect("run seal")
}

fn seal_ok(args: &[&str]) -> Output {
    ok(&mut seal_command(args))
}

/// The release build this `seal` signs for.
fn release_build() -> BuildInfo {
    BuildInfo::release(sealserve::seal::VERSION)
}

/// A temp dir holding the MANIFEST `seal manifest models/all-MiniLM-L6-v2` would print.
fn model_manifest_in_tempdir() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = ModelSpec::load(&model_dir())
        .unwrap()
        .manifest_bytes(&release_build());
    std::fs::write(dir.path().join(MANIFEST_FILE), &manifest).unwrap();
    (dir, manifest)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

fn real_bundle_bytes() -> Vec<u8> {
    std::fs::read(env!("SEALSERVE_BUNDLE_PATH")).expect("read the bundle build.rs wrote")
}

/// What build.rs's `signature_for` does with the contents of SEALSERVE_SIGNATURE and
/// SEALSERVE_PUBLIC_KEY: parse both, and refuse the build unless the signature verifies the
/// MANIFEST computed from model.toml.
fn build_rs_accepts(
    manifest: &[u8],
    signature: &[u8],
    key: &[u8],
) -> Result<(Signature, PublicKey), String> {
    let signature = Signature::parse(signature).map_err(|e| format!("SEALSERVE_SIGNATURE: {e}"))?;
    let key = PublicKey::parse(key).map_err(|e| format!("SEALSERVE_PUBLIC_KEY: {e}"))?;
    signature
        .verify(manifest, &key)
        .map_err(|e| format!("SEALSERVE_SIGNATURE does not verify: {e}"))?;
    Ok((signature, key))
}

/// The release bundle build.rs would write for the pinned model with this signature and key:
/// the real model files and sealserve.json, then the signing entries, not dev-signed.
fn release_bundle(signature: &Signature, key: &PublicKey) -> Vec<u8> {
    let spec = ModelSpec::load(&model_dir()).expect("model.toml");
    let real = real_bundle_bytes();
    let real = Bundle::parse(&real).expect("real bundle");
    let mut entries: Vec<(String, Vec<u8>)> = spec
        .files
        .iter()
        .map(|f| {
            let bytes = real.read_entry(&f.name).unwrap().expect("model file");
            (f.name.clone(), bytes)
        })
        .collect();
    entries.push((
        METADATA_FILE.to_string(),
        spec.metadata(&release_build()).to_canonical_bytes(),
    ));
    entries.extend(bundle::signing_entries(
        &spec.manifest_bytes(&release_build()),
        signature,
        key,
    ));
    let mut out = Vec::new();
    bundle::write_bundle(&mut out, &entries).expect("write bundle");
    out
}

fn verify_pinned(bytes: &[u8], key: &PublicKey) -> Result<(), VerifyError> {
    let policy = TrustPolicy::pinned([key.fingerprint()]);
    let copies = HeapCopies::default();
    let verified = Bundle::parse(bytes)?.verify(&policy, &mut &copies)?;
    assert!(!verified.dev_signed);
    assert_eq!(verified.key_fingerprint, key.fingerprint());
    Ok(())
}

#[test]
fn seal_manifest_of_the_model_is_what_a_release_build_embeds() {
    let out = seal_ok(&["manifest", path_str(&model_dir())]);
    let spec = ModelSpec::load(&model_dir()).unwrap();
    assert_eq!(
        text(&out.stdout),
        text(&spec.manifest_bytes(&release_build())),
        "`seal manifest` must print exactly the MANIFEST a release build embeds, or offline signatures fail the build"
    );
    // This test build is a dev build: its MANIFEST differs only in sealserve.json, which says
    // it is dev-signed, under the signature.
    let real = real_bundle_bytes();
    let real = Bundle::parse(&real).unwrap();
    let embedded = real.read_entry(MANIFEST_FILE).unwrap().expect("MANIFEST");
    let printed = text(&out.stdout);
    let embedded = text(&embedded);
    let differing: Vec<&str> = printed
        .lines()
        .zip(embedded.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a[66..])
        .collect();
    assert_eq!(differing, [METADATA_FILE], "{printed}\n{embedded}");
    let metadata =
        BundleMetadata::from_bytes(&real.read_entry(METADATA_FILE).unwrap().unwrap()).unwrap();
    assert!(metadata.dev_signed);
    assert_eq!(metadata.sealserve_version, sealserve::seal::VERSION);
}

#[test]
fn seal_signatures_verify_with_minisign_and_openssl() {
    require("minisign");
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seal_ok(&["keygen", "--out", path_str(d)]);
    let manifest = d.join(MANIFEST_FILE);
    seal_ok(&[
        "manifest",
        path_str(&model_dir()),
        "--out",
        path_str(&manifest),
    ]);
    seal_ok(&[
        "sign",
        "--key",
        path_str(&d.join("model.key")),
        path_str(&manifest),
    ]);

    let minisign = ok(Command::new("minisign")
        .current_dir(d)
        .args(["-Vm", "MANIFEST", "-p", "model.pub.minisign", "-x"])
        .arg(SIGNATURE_MINISIGN_FILE));
    assert!(
        text(&minisign.stdout).contains("Signature and comment signature verified"),
        "{}",
        text(&minisign.stdout)
    );

    let raw = B64
        .decode(
            std::fs::read_to_string(d.join(SIGNATURE_RAW_FILE))
                .unwrap()
                .trim(),
        )
        .expect("MANIFEST.sig is base64");
    std::fs::write(d.join("sig.bin"), raw).unwrap();
    let openssl = ok(Command::new("openssl").current_dir(d).args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "model.pub",
        "-rawin",
        "-in",
        "MANIFEST",
        "-sigfile",
        "sig.bin",
    ]));
    assert!(
        text(&openssl.stdout).contains("Signature Verified Successfully"),
        "{}",
        text(&openssl.stdout)
    );

    // OpenSSL 3.0 reads the private key `seal keygen` wrote (PKCS#8 v1): it derives the same
    // public key, and signs the MANIFEST to the same bytes (Ed25519 is deterministic).
    let derived =
        ok(Command::new("openssl")
            .current_dir(d)
            .args(["pkey", "-in", "model.key", "-pubout"]));
    assert_eq!(
        text(&derived.stdout),
        std::fs::read_to_string(d.join(PUBLIC_KEY_FILE)).unwrap()
    );
    ok(Command::new("openssl").current_dir(d).args([
        "pkeyutl",
        "-sign",
        "-inkey",
        "model.key",
        "-rawin",
        "-in",
        "MANIFEST",
        "-out",
        "openssl.sig",
    ]));
    assert_eq!(
        std::fs::read(d.join("openssl.sig")).unwrap(),
        std::fs::read(d.join("sig.bin")).unwrap()
    );

    // The tools really check: an altered MANIFEST fails both.
    let mut altered = std::fs::read(&manifest).unwrap();
    altered[0] ^= 0x01;
    std::fs::write(d.join("ALTERED"), altered).unwrap();
    let minisign = Command::new("minisign")
        .current_dir(d)
        .args(["-Vm", "ALTERED", "-p", "model.pub.minisign", "-x"])
        .arg(SIGNATURE_MINISIGN_FILE)
        .output()
        .unwrap();
    assert!(
        !minisign.status.success(),
        "minisign accepted an altered file"
    );
    let openssl = Command::new("openssl")
        .current_dir(d)
        .args([
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "model.pub",
            "-rawin",
            "-in",
            "ALTERED",
            "-sigfile",
            "sig.bin",
        ])
        .output()
        .unwrap();
    assert!(
        !openssl.status.success(),
        "openssl accepted an altered file"
    );
}

#[test]
fn minisign_signatures_legacy_and_prehashed_pass_the_build_check_and_serve_verification() {
    require("minisign");
    let (dir, manifest) = model_manifest_in_tempdir();
    let d = dir.path();
    ok(Command::new("minisign")
        .current_dir(d)
        .args(["-G", "-W", "-p", "mini.pub", "-s", "mini.key"]));
    ok(Command::new("minisign").current_dir(d).args([
        "-S",
        "-l",
        "-s",
        "mini.key",
        "-m",
        "MANIFEST",
        "-x",
        "legacy.minisig",
    ]));
    ok(Command::new("minisign").current_dir(d).args([
        "-S",
        "-s",
        "mini.key",
        "-m",
        "MANIFEST",
        "-x",
        "prehashed.minisig",
    ]));
    let public = std::fs::read(d.join("mini.pub")).unwrap();

    for (file, algorithm) in [
        ("legacy.minisig", SignatureAlgorithm::Pure),
        ("prehashed.minisig", SignatureAlgorithm::Prehashed),
    ] {
        let sig_bytes = std::fs::read(d.join(file)).unwrap();
        let (signature, key) = build_rs_accepts(&manifest, &sig_bytes, &public)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(signature.algorithm, algorithm, "{file}");
        assert!(signature.trusted.is_some(), "{file}: trusted comment kept");
        // Same key id as minisign printed in the public key file.
        let header = text(&public);
        assert!(header.contains(&key.key_id_hex()), "{file}: {header}");
        verify_pinned(&release_bundle(&signature, &key), &key)
            .unwrap_or_else(|e| panic!("{file}: release bundle refused: {e}"));
        // And the check is real: another MANIFEST is refused.
        let mut other = manifest.clone();
        other[0] ^= 0x01;
        assert!(
            build_rs_accepts(&other, &sig_bytes, &public).is_err(),
            "{file}"
        );
    }
}

#[test]
fn openssl_keys_and_signatures_pass_the_build_check_and_serve_verification() {
    require("openssl");
    let (dir, manifest) = model_manifest_in_tempdir();
    let d = dir.path();
    ok(Command::new("openssl").current_dir(d).args([
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        "k.pem",
    ]));
    ok(Command::new("openssl")
        .current_dir(d)
        .args(["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"]));
    ok(Command::new("openssl").current_dir(d).args([
        "pkeyutl", "-sign", "-inkey", "k.pem", "-rawin", "-in", "MANIFEST", "-out", "sig.bin",
    ]));
    let raw = std::fs::read(d.join("sig.bin")).unwrap();
    assert_eq!(raw.len(), 64);
    let public = std::fs::read(d.join("k.pub")).unwrap();

    let b64 = format!("{}\n", B64.encode(&raw));
    for (what, sig_bytes) in [("base64", b64.as_bytes()), ("raw 64 bytes", &raw[..])] {
        let (signature, key) = build_rs_accepts(&manifest, sig_bytes, &public)
            .unwrap_or_else(|e| panic!("openssl signature, {what}: {e}"));
        assert_eq!(signature.algorithm, SignatureAlgorithm::Pure);
        verify_pinned(&release_bundle(&signature, &key), &key)
            .unwrap_or_else(|e| panic!("openssl signature, {what}: release bundle refused: {e}"));
    }

    // `seal sign` takes an openssl key, and its signature is the one openssl would make
    // (Ed25519 is deterministic).
    let out = seal_ok(&[
        "sign",
        "--key",
        path_str(&d.join("k.pem")),
        path_str(&d.join(MANIFEST_FILE)),
        "--out-dir",
        path_str(&d.join("sealed")),
    ]);
    let key = PublicKey::parse(&public).unwrap();
    assert!(
        text(&out.stdout).contains(&key.fingerprint()),
        "{}",
        text(&out.stdout)
    );
    let ours = std::fs::read_to_string(d.join("sealed").join(SIGNATURE_RAW_FILE)).unwrap();
    assert_eq!(ours, b64);
}

#[test]
fn release_flow_keygen_manifest_sign_is_accepted_by_the_build_and_trusted_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("keys");
    let out = seal_ok(&["keygen", "--out", path_str(&keys)]);
    let stdout = text(&out.stdout);
    let key_pem = std::fs::read(keys.join(PUBLIC_KEY_FILE)).unwrap();
    let fingerprint = PublicKey::parse(&key_pem).unwrap().fingerprint();
    assert!(
        stdout.contains(&fingerprint),
        "keygen prints the fingerprint: {stdout}"
    );

    // `seal manifest models/all-MiniLM-L6-v2 > MANIFEST`
    let manifest = seal_ok(&["manifest", path_str(&model_dir())]).stdout;
    std::fs::write(d.join(MANIFEST_FILE), &manifest).unwrap();
    let out = seal_ok(&[
        "sign",
        "--key",
        path_str(&keys.join("model.key")),
        path_str(&d.join(MANIFEST_FILE)),
    ]);
    assert!(text(&out.stdout).contains(&fingerprint));

    // build.rs computes the MANIFEST from model.toml and checks the given pair against it; both
    // signature encodings and both key encodings are accepted.
    let build_manifest = ModelSpec::load(&model_dir())
        .unwrap()
        .manifest_bytes(&release_build());
    assert_eq!(build_manifest, manifest);
    let mut accepted = None;
    for sig_file in [SIGNATURE_MINISIGN_FILE, SIGNATURE_RAW_FILE] {
        for key_file in [PUBLIC_KEY_FILE, PUBLIC_KEY_MINISIGN_FILE] {
            let sig = std::fs::read(d.join(sig_file)).unwrap();
            let key = std::fs::read(keys.join(key_file)).unwrap();
            let (signature, key) = build_rs_accepts(&build_manifest, &sig, &key)
                .unwrap_or_else(|e| panic!("{sig_file} + {key_file}: {e}"));
            assert_eq!(key.fingerprint(), fingerprint);
            if sig_file == SIGNATURE_MINISIGN_FILE && key_file == PUBLIC_KEY_FILE {
                accepted = Some((signature, key));
            }
        }
    }

    // The bundle a release build writes with that pair (the documented
    // SEALSERVE_SIGNATURE=MANIFEST.minisig SEALSERVE_PUBLIC_KEY=model.pub): serve trusts it when
    // pinned to the keygen key, by fingerprint or by key file, and refuses other pins.
    let (signature, key) = accepted.expect("minisig + model.pub accepted");
    let release = release_bundle(&signature, &key);
    let release_path = d.join("release.bundle");
    std::fs::write(&release_path, &release).unwrap();
    let release_arg = path_str(&release_path);
    let out = seal_ok(&["verify", release_arg, "--trusted-key", &fingerprint]);
    // Without any pin (and without the waiver) seal verify refuses, like serve.
    let unpinned = seal(&["verify", release_arg]);
    assert_eq!(
        unpinned.status.code(),
        Some(18),
        "{}",
        text(&unpinned.stderr)
    );
    let line = text(&out.stdout);
    assert!(
        line.contains("OK ") && !line.contains("DEV-SIGNED"),
        "{line}"
    );
    seal_ok(&[
        "verify",
        release_arg,
        "--trusted-key",
        path_str(&keys.join(PUBLIC_KEY_MINISIGN_FILE)),
    ]);
    let other = sealserve::signature::SecretKey::generate()
        .public_key()
        .fingerprint();
    let refused = seal(&["verify", release_arg, "--trusted-key", &other]);
    assert_eq!(refused.status.code(), Some(15), "{}", text(&refused.stderr));

    let inspected = seal_ok(&["inspect", "--json", release_arg]);
    let report: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(report["dev_signed"], false);
    assert_eq!(report["verified"], true);
    assert_eq!(report["key_fingerprint"], fingerprint.as_str());
    assert_eq!(report["model_id"], "sentence-transformers/all-MiniLM-L6-v2");
    // Both signature encodings are in the bundle: cosign/openssl and minisign users alike.
    let names: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(names.contains(&SIGNATURE_RAW_FILE) && names.contains(&SIGNATURE_MINISIGN_FILE));
}

#[test]
fn export_of_the_real_binary_rechecks_with_sha256sum_minisign_and_openssl() {
    require("sha256sum");
    require("minisign");
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("bundle");
    let out = seal_ok(&["export", env!("CARGO_BIN_EXE_serve"), path_str(&export)]);
    let stdout = text(&out.stdout);
    let commands: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("re-check with:"))
        .skip(1)
        .map(str::trim)
        .collect();
    assert!(commands[0].starts_with("cd "), "{stdout}");
    assert!(commands.contains(&"sha256sum -c MANIFEST"), "{stdout}");

    // Run every printed command as printed, in the export folder (cosign only where installed).
    let mut ran = 0;
    for command in &commands[1..] {
        let tool = command.split_whitespace().next().unwrap_or_default();
        if tool == "cosign" && Command::new("cosign").arg("version").output().is_err() {
            println!("cosign not installed; not run: {command}");
            continue;
        }
        let output = ok(Command::new("sh")
            .current_dir(&export)
            .args(["-c", command]));
        println!("passed: {command}\n{}", text(&output.stdout).trim());
        ran += 1;
    }
    assert!(
        ran >= 3,
        "sha256sum, minisign and openssl checks ran: {commands:?}"
    );

    // Our own verify of the folder agrees, and `seal manifest` of it reproduces MANIFEST (the
    // openssl step's MANIFEST.sig.bin is not part of it).
    seal_ok(&["verify", path_str(&export), "--allow-unpinned"]);
    // The export of a dev build says so in its signed sealserve.json, and a pinned check
    // refuses it as serve would.
    let metadata =
        BundleMetadata::from_bytes(&std::fs::read(export.join(METADATA_FILE)).unwrap()).unwrap();
    assert!(metadata.dev_signed);
    let fingerprint =
        sealserve::signature::PublicKey::parse(&std::fs::read(export.join("model.pub")).unwrap())
            .unwrap()
            .fingerprint();
    let pinned = seal(&["verify", path_str(&export), "--trusted-key", &fingerprint]);
    assert_eq!(pinned.status.code(), Some(16), "{}", text(&pinned.stderr));
    let manifest = seal_ok(&["manifest", path_str(&export)]).stdout;
    assert_eq!(manifest, std::fs::read(export.join(MANIFEST_FILE)).unwrap());

    // An altered file fails sha256sum and `seal verify` alike.
    let tokenizer = export.join("tokenizer.json");
    let mut bytes = std::fs::read(&tokenizer).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&tokenizer, bytes).unwrap();
    let sha = Command::new("sha256sum")
        .current_dir(&export)
        .args(["-c", "MANIFEST"])
        .output()
        .unwrap();
    assert!(!sha.status.success());
    assert!(
        text(&sha.stdout).contains("tokenizer.json: FAILED"),
        "{}",
        text(&sha.stdout)
    );
    let refused = seal(&["verify", path_str(&export), "--allow-unpinned"]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("tokenizer.json"), "{stderr}");
}

/// Issue 11 item 7: `scripts/release-sign` signs the `serve` binary itself, and the commands
/// README gives for checking a download succeed with the real minisign and openssl, and fail
/// for an altered binary.
#[test]
fn release_sign_signs_the_serve_binary_for_minisign_openssl_and_sha256sum() {
    require("minisign");
    require("openssl");
    require("sha256sum");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    seal_ok(&["keygen", "--out", path_str(&keys)]);
    let dist = dir.path().join("dist");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/release-sign");
    let run = |extra: &[&str]| {
        Command::new("bash")
            .arg(&script)
            .args(["--key", path_str(&keys.join("model.key"))])
            .args(["--out", path_str(&dist)])
            .args(["--serve", env!("CARGO_BIN_EXE_serve")])
            .args(["--seal", env!("CARGO_BIN_EXE_seal")])
            .args(extra)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .expect("run scripts/release-sign")
    };
    // This test build embeds a dev-signed model: a release of it is refused...
    let refused = run(&[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("dev-signed"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!dist.exists(), "nothing written for a refused release");
    // ... unless explicitly allowed, to try the flow.
    let signed = run(&["--allow-dev-bundle"]);
    assert!(
        signed.status.success(),
        "{}{}",
        text(&signed.stdout),
        text(&signed.stderr)
    );
    let fingerprint =
        text(&seal_ok(&["fingerprint", path_str(&keys.join(PUBLIC_KEY_FILE))]).stdout);
    assert!(
        text(&signed.stdout).contains(fingerprint.trim()),
        "{}",
        text(&signed.stdout)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "SHA256SUMS.minisig",
            "SHA256SUMS.sig",
            "seal",
            "serve",
            "serve.minisig",
            "serve.sig"
        ]
    );
    assert_eq!(
        std::fs::read(dist.join("serve")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_serve")).unwrap()
    );

    // README's checks of a download, as a user runs them beside the files, with the release
    // public key obtained separately.
    let pub_pem = path_str(&keys.join(PUBLIC_KEY_FILE)).to_string();
    let pub_minisign = path_str(&keys.join(PUBLIC_KEY_MINISIGN_FILE)).to_string();
    let checks = [
        format!("minisign -Vm serve -p {pub_minisign}"),
        format!(
            "base64 -d serve.sig > serve.sig.bin && openssl pkeyutl -verify -pubin -inkey {pub_pem} -rawin -in serve -sigfile serve.sig.bin"
        ),
        format!("minisign -Vm SHA256SUMS -p {pub_minisign} && sha256sum -c SHA256SUMS"),
    ];
    for check in &checks {
        let output = ok(Command::new("sh").current_dir(&dist).args(["-c", check]));
        println!("passed: {check}\n{}", text(&output.stdout).trim());
    }
    // The trusted comment names the file and the release time.
    let minisig = std::fs::read_to_string(dist.join("serve.minisig")).unwrap();
    assert!(
        minisig.contains("trusted comment: timestamp:1700000000\tfile:serve"),
        "{minisig}"
    );

    // An altered serve fails every check.
    let mut serve = std::fs::read(dist.join("serve")).unwrap();
    let middle = serve.len() / 2;
    serve[middle] ^= 0x01;
    std::fs::write(dist.join("serve"), &serve).unwrap();
    for check in &checks {
        let output = Command::new("sh")
            .current_dir(&dist)
            .args(["-c", check])
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{check} accepted an altered serve"
        );
    }
}
