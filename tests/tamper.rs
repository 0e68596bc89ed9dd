//! Every way of altering a sealed bundle is refused with its own error and exit code, and the
//! message names what was altered: first on a tiny bundle built here, then on the real `serve`
//! binary with one byte flipped inside each embedded entry.

use sealserve::bundle::{
    self, Bundle, TrustPolicy, VerifyError, MANIFEST_FILE, PUBLIC_KEY_FILE,
    PUBLIC_KEY_MINISIGN_FILE, SIGNATURE_MINISIGN_FILE, SIGNATURE_RAW_FILE,
};
use sealserve::exit::Exit;
use sealserve::manifest::sha256_hex;
use sealserve::signature::{PublicKey, SecretKey};
use sealserve::spec::{ModelSpec, METADATA_FILE};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const WEIGHTS: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";
const CONFIG: &str = "config.json";

type Entries = Vec<(String, Vec<u8>)>;

/// The model files of the tiny bundle and the spec pinning them.
fn tiny_model() -> (ModelSpec, Entries) {
    let files: Entries = vec![
        (
            WEIGHTS.into(),
            b"\x08\0\0\0\0\0\0\0{}      fake weights".to_vec(),
        ),
        (
            TOKENIZER.into(),
            br#"{"model":{"type":"WordPiece"}}"#.to_vec(),
        ),
        (CONFIG.into(), br#"{"hidden_size":4}"#.to_vec()),
    ];
    let mut text = String::from(
        "[model]\nid = \"test/tiny\"\nrevision = \"0123456789abcdef0123456789abcdef01234567\"\n\
         family = \"bert\"\npooling = \"mean\"\nnormalize = true\nmax_seq_length = 8\n",
    );
    for ((name, bytes), role) in files.iter().zip(["weights", "tokenizer", "config"]) {
        text.push_str(&format!(
            "\n[[files]]\nname = \"{name}\"\nrole = \"{role}\"\nsize = {}\nsha256 = \"{}\"\n",
            bytes.len(),
            sha256_hex(bytes)
        ));
    }
    let spec = ModelSpec::parse(&text, "tiny model.toml").expect("tiny spec");
    (spec, files)
}

/// Entries exactly as build.rs lays them out: files, sealserve.json, then the signing entries.
/// `signer` signs the MANIFEST; `embedded` is the public key put in the bundle.
fn tiny_entries(signer: &SecretKey, embedded: &PublicKey) -> Entries {
    let (spec, mut entries) = tiny_model();
    let manifest = spec.manifest_bytes();
    let signature = signer.sign(&manifest, MANIFEST_FILE, 1_700_000_000);
    entries.push((METADATA_FILE.into(), spec.metadata().to_canonical_bytes()));
    entries.extend(bundle::signing_entries(&manifest, &signature, embedded));
    entries
}

fn assemble(entries: &Entries, dev_signed: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    bundle::write_bundle(&mut bytes, dev_signed, entries).expect("write bundle");
    bytes
}

/// The process exit code a refusal gets (`sealserve::exit`).
fn code_of(err: &VerifyError) -> i32 {
    i32::from(Exit::from(err).code())
}

fn check(bytes: &[u8], policy: &TrustPolicy) -> Result<(), VerifyError> {
    Bundle::parse(bytes)?
        .verify(policy, &mut |_| {})
        .map(|_| ())
}

fn entry_mut<'a>(entries: &'a mut Entries, name: &str) -> &'a mut Vec<u8> {
    entries
        .iter_mut()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no entry {name}"))
}

/// Index of the first ASCII letter at or after `from`: toggling its case changes a base64
/// payload while keeping it valid base64, so the tamper reaches the cryptography.
fn letter_at_or_after(bytes: &[u8], from: usize) -> usize {
    (from..bytes.len())
        .find(|&i| bytes[i].is_ascii_alphabetic())
        .unwrap_or_else(|| panic!("no letter after {from}"))
}

/// Offset of the start of line `n` (0-based).
fn line_start(bytes: &[u8], n: usize) -> usize {
    let mut start = 0;
    for _ in 0..n {
        start += bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("line")
            + 1;
    }
    start
}

/// Where to flip one byte of an entry so that the alteration reaches the check meant to catch
/// it, and what verification must then say: (byte index, xor mask, exit code, text the message
/// must contain).
fn flip_plan(name: &str, bytes: &[u8]) -> (usize, u8, i32, &'static str) {
    match name {
        MANIFEST_FILE => (0, 0x01, 13, "MANIFEST"),
        SIGNATURE_RAW_FILE => (letter_at_or_after(bytes, 10), 0x20, 13, "MANIFEST"),
        // Line 2 holds "Ed" + key id + signature; past byte 20 it is signature bytes.
        SIGNATURE_MINISIGN_FILE => (
            letter_at_or_after(bytes, line_start(bytes, 1) + 40),
            0x20,
            13,
            "MANIFEST",
        ),
        // The PEM body's tail is the raw key; the minisign line's tail too.
        PUBLIC_KEY_FILE => (
            letter_at_or_after(bytes, line_start(bytes, 1) + 30),
            0x20,
            14,
            "public key",
        ),
        PUBLIC_KEY_MINISIGN_FILE => (
            letter_at_or_after(bytes, line_start(bytes, 1) + 30),
            0x20,
            14,
            "public key",
        ),
        WEIGHTS => (bytes.len() / 2, 0xff, 11, WEIGHTS),
        TOKENIZER => (bytes.len() / 2, 0xff, 11, TOKENIZER),
        CONFIG => (bytes.len() / 2, 0xff, 11, CONFIG),
        METADATA_FILE => (bytes.len() / 2, 0xff, 11, METADATA_FILE),
        other => panic!("no tamper plan for entry {other}"),
    }
}

#[test]
fn untouched_tiny_bundle_verifies_with_and_without_a_pinned_key() {
    let key = SecretKey::generate();
    let bytes = assemble(&tiny_entries(&key, &key.public_key()), false);
    check(&bytes, &TrustPolicy::unpinned()).expect("untouched bundle verifies");
    let pinned = TrustPolicy::pinned([key.public_key().fingerprint()]);
    let verified = Bundle::parse(&bytes)
        .unwrap()
        .verify(&pinned, &mut |_| {})
        .expect("release bundle verifies against its pinned key");
    assert!(!verified.dev_signed);
    assert_eq!(verified.files.len(), 4);
    assert_eq!(verified.metadata.model_id, "test/tiny");
}

#[test]
fn one_flipped_byte_in_any_entry_is_refused_naming_it() {
    let key = SecretKey::generate();
    let pristine = tiny_entries(&key, &key.public_key());
    let fingerprint = key.public_key().fingerprint();
    let mut seen = Vec::new();
    for (name, original) in &pristine {
        let (at, mask, code, names) = flip_plan(name, original);
        let mut entries = pristine.clone();
        entry_mut(&mut entries, name)[at] ^= mask;
        let err = check(&assemble(&entries, false), &TrustPolicy::unpinned())
            .expect_err(&format!("flipped byte {at} of {name} was accepted"));
        let message = err.to_string();
        println!("{name}: exit {} — {message}", code_of(&err));
        assert_eq!(code_of(&err), code, "{name}: {message}");
        assert!(
            message.contains(names),
            "{name}: {message:?} lacks {names:?}"
        );
        match (code, &err) {
            (11, VerifyError::DigestMismatch { name: got, .. }) => assert_eq!(got, name),
            (13, VerifyError::Signature { .. }) | (14, VerifyError::PublicKey { .. }) => {}
            _ => panic!("{name}: unexpected variant {err:?}"),
        }
        if code == 13 && name != MANIFEST_FILE {
            // A signature that no longer verifies names the key it was checked with.
            assert!(message.contains(&fingerprint), "{name}: {message}");
        }
        seen.push(name.clone());
    }
    assert_eq!(seen.len(), 9, "every entry was tampered: {seen:?}");
}

#[test]
fn garbled_signature_encodings_are_refused_naming_the_file() {
    let key = SecretKey::generate();
    let pristine = tiny_entries(&key, &key.public_key());

    let mut entries = pristine.clone();
    entry_mut(&mut entries, SIGNATURE_RAW_FILE)[5] = b'!';
    let err = check(&assemble(&entries, false), &TrustPolicy::unpinned()).unwrap_err();
    assert_eq!(code_of(&err), 13, "{err}");
    assert!(err.to_string().contains(SIGNATURE_RAW_FILE), "{err}");

    // The trusted comment is covered by the global signature.
    let mut entries = pristine.clone();
    let minisig = entry_mut(&mut entries, SIGNATURE_MINISIGN_FILE);
    let at = line_start(minisig, 2) + "trusted comment: timestamp:".len();
    minisig[at] ^= 0x01;
    let err = check(&assemble(&entries, false), &TrustPolicy::unpinned()).unwrap_err();
    assert_eq!(code_of(&err), 13, "{err}");
    assert!(err.to_string().contains("trusted comment"), "{err}");

    // The key id in the minisign signature must match the embedded minisign key.
    let mut entries = pristine;
    let minisig = entry_mut(&mut entries, SIGNATURE_MINISIGN_FILE);
    let at = letter_at_or_after(minisig, line_start(minisig, 1) + 4);
    minisig[at] ^= 0x20;
    let err = check(&assemble(&entries, false), &TrustPolicy::unpinned()).unwrap_err();
    assert_eq!(code_of(&err), 13, "{err}");
    assert!(err.to_string().contains("key id"), "{err}");
}

#[test]
fn signed_by_another_key_than_the_embedded_one_is_refused() {
    let embedded = SecretKey::generate();
    let signer = SecretKey::generate();
    let entries = tiny_entries(&signer, &embedded.public_key());
    let err = check(&assemble(&entries, false), &TrustPolicy::unpinned()).unwrap_err();
    assert!(matches!(err, VerifyError::Signature { .. }), "{err:?}");
    assert_eq!(code_of(&err), 13);
    assert!(
        err.to_string()
            .contains(&embedded.public_key().fingerprint()),
        "{err}"
    );
}

#[test]
fn bundle_without_any_signature_is_refused() {
    let key = SecretKey::generate();
    let entries: Entries = tiny_entries(&key, &key.public_key())
        .into_iter()
        .filter(|(n, _)| n != SIGNATURE_RAW_FILE && n != SIGNATURE_MINISIGN_FILE)
        .collect();
    let err = check(&assemble(&entries, false), &TrustPolicy::unpinned()).unwrap_err();
    assert!(matches!(err, VerifyError::MissingSignature), "{err:?}");
    assert_eq!(code_of(&err), 17);
    assert!(err.to_string().contains("no signature"), "{err}");
}

#[test]
fn bundle_signed_by_a_key_that_is_not_pinned_is_refused() {
    let key = SecretKey::generate();
    let other = SecretKey::generate().public_key().fingerprint();
    let bytes = assemble(&tiny_entries(&key, &key.public_key()), false);
    let err = check(&bytes, &TrustPolicy::pinned([other.clone()])).unwrap_err();
    assert!(matches!(err, VerifyError::Untrusted { .. }), "{err:?}");
    assert_eq!(code_of(&err), 15);
    let message = err.to_string();
    assert!(
        message.contains(&key.public_key().fingerprint()),
        "{message}"
    );
    assert!(message.contains(&other), "{message}");
}

#[test]
fn dev_signed_bundle_is_refused_once_any_key_is_pinned() {
    let key = SecretKey::generate();
    let fingerprint = key.public_key().fingerprint();
    let bytes = assemble(&tiny_entries(&key, &key.public_key()), true);
    check(&bytes, &TrustPolicy::unpinned()).expect("dev-signed is fine without pinning");
    // Even pinning the dev key itself does not let a dev build through.
    for pinned in [
        fingerprint.clone(),
        SecretKey::generate().public_key().fingerprint(),
    ] {
        let err = check(&bytes, &TrustPolicy::pinned([pinned])).unwrap_err();
        assert!(matches!(err, VerifyError::DevSigned { .. }), "{err:?}");
        assert_eq!(code_of(&err), 16);
        assert!(err.to_string().contains(&fingerprint), "{err}");
    }
}

#[test]
fn uncovered_or_missing_payload_and_broken_index_are_refused() {
    let key = SecretKey::generate();
    let pristine = tiny_entries(&key, &key.public_key());

    let mut extra = pristine.clone();
    extra.insert(0, ("extra.bin".into(), b"smuggled".to_vec()));
    let err = check(&assemble(&extra, false), &TrustPolicy::unpinned()).unwrap_err();
    assert_eq!(code_of(&err), 12, "{err}");
    assert!(err.to_string().contains("extra.bin"), "{err}");

    let dropped: Entries = pristine
        .iter()
        .filter(|(n, _)| n != CONFIG)
        .cloned()
        .collect();
    let err = check(&assemble(&dropped, false), &TrustPolicy::unpinned()).unwrap_err();
    assert_eq!(code_of(&err), 12, "{err}");
    assert!(err.to_string().contains(CONFIG), "{err}");

    let mut bytes = assemble(&pristine, false);
    bytes[70] ^= 0x01; // inside the JSON index
    let err = check(&bytes, &TrustPolicy::unpinned()).unwrap_err();
    assert!(matches!(err, VerifyError::Malformed(_)), "{err:?}");
    assert_eq!(code_of(&err), 10);
}

#[test]
fn every_refusal_has_its_own_exit_code() {
    use sealserve::signature::SignatureError;
    let all = [
        VerifyError::Malformed(String::new()),
        VerifyError::DigestMismatch {
            name: String::new(),
            expected: String::new(),
            actual: String::new(),
        },
        VerifyError::Manifest(String::new()),
        VerifyError::Signature {
            file: "MANIFEST.sig",
            source: SignatureError::Invalid {
                fingerprint: String::new(),
            },
        },
        VerifyError::PublicKey {
            file: "model.pub",
            source: SignatureError::BadPublicKey(String::new()),
        },
        VerifyError::Untrusted {
            fingerprint: String::new(),
            trusted: String::new(),
        },
        VerifyError::DevSigned {
            fingerprint: String::new(),
        },
        VerifyError::MissingSignature,
    ];
    let codes: Vec<i32> = all.iter().map(code_of).collect();
    assert_eq!(codes, (10..=17).collect::<Vec<_>>());
}

// ---- the real binary ----------------------------------------------------------------------

fn run_patiently(command: &mut Command) -> Output {
    // A freshly written executable can be briefly "busy" (ETXTBSY) if a concurrent fork still
    // holds the writer's descriptor; retry instead of failing on that race.
    for _ in 0..50 {
        match command.output() {
            Ok(output) => return output,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("cannot run {command:?}: {e}"),
        }
    }
    panic!("{command:?} stayed busy");
}

fn serve_verify_only(binary: &Path, extra: &[&str]) -> Output {
    run_patiently(
        Command::new(binary)
            .arg("--verify-only")
            .args(extra)
            .env_remove("SEALSERVE_TRUSTED_KEYS")
            .env_remove("RUST_LOG")
            .env("SEALSERVE_LOG_FORMAT", "text"),
    )
}

fn seal(args: &[&str]) -> Output {
    run_patiently(
        Command::new(env!("CARGO_BIN_EXE_seal"))
            .args(args)
            .env_remove("SEALSERVE_TRUSTED_KEYS"),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn flip_in_file(path: &Path, at: u64, value: u8) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_at(&[value], at).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn real_serve_binary_refuses_each_altered_entry_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("serve");
    std::fs::copy(env!("CARGO_BIN_EXE_serve"), &copy).expect("copy the serve binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy_arg = copy.to_str().unwrap();

    let image = std::fs::read(&copy).unwrap();
    let bundle = Bundle::locate(&image).expect("the serve binary carries a bundle");
    let base = image.as_ptr() as usize;
    let bundle_offset = bundle.bytes().as_ptr() as usize - base;
    let fingerprint = bundle
        .verify(&TrustPolicy::unpinned(), &mut |_| {})
        .expect("the built bundle verifies")
        .key_fingerprint;

    // Untouched: exits 0 and reports how long hashing took.
    let ok = serve_verify_only(&copy, &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let summary = text(&ok.stdout);
    let hash_ms = summary
        .split("hashed in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .unwrap_or("?");
    println!("untouched: {}", summary.trim());
    println!("hashing time of the real bundle (serve --verify-only): {hash_ms} ms (target: under 150 ms)");
    let seal_ok = seal(&["verify", copy_arg]);
    assert_eq!(seal_ok.status.code(), Some(0), "{}", text(&seal_ok.stderr));

    // A pinned key refuses this build: dev builds never run pinned; a release build signed by
    // another key is untrusted.
    let other = SecretKey::generate().public_key().fingerprint();
    let (pinned_code, pinned_text) = if bundle.dev_signed() {
        (16, "dev-signed")
    } else {
        (15, "not among the trusted keys")
    };
    let pinned = serve_verify_only(&copy, &["--trusted-key", &other]);
    let stderr = text(&pinned.stderr);
    println!(
        "--trusted-key {other}: exit {:?}: {}",
        pinned.status.code(),
        stderr.trim()
    );
    assert_eq!(pinned.status.code(), Some(pinned_code), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(pinned_text) && stderr.contains(&fingerprint),
        "{stderr}"
    );
    let sealed = seal(&["verify", copy_arg, "--trusted-key", &other]);
    assert_eq!(
        sealed.status.code(),
        Some(pinned_code),
        "{}",
        text(&sealed.stderr)
    );

    // One byte flipped per entry (and one in the index), restored after each run.
    let mut plans: Vec<(String, u64, u8, i32, String)> = bundle
        .entries()
        .map(|(name, bytes)| {
            let (at, mask, code, names) = flip_plan(name, bytes);
            let offset = (bytes.as_ptr() as usize - base + at) as u64;
            (name.to_string(), offset, mask, code, names.to_string())
        })
        .collect();
    plans.push((
        "bundle index".into(),
        (bundle_offset + 70) as u64,
        0x01,
        10,
        "malformed".into(),
    ));
    assert_eq!(plans.len(), 10, "9 entries + the index");
    for (what, offset, mask, code, names) in &plans {
        let original = image[*offset as usize];
        flip_in_file(&copy, *offset, original ^ mask);
        let refused = serve_verify_only(&copy, &[]);
        let via_seal = seal(&["verify", copy_arg]);
        let inspected = (what == WEIGHTS).then(|| seal(&["inspect", copy_arg]));
        flip_in_file(&copy, *offset, original);

        let stderr = text(&refused.stderr);
        println!(
            "{what}: serve exit {:?}: {}",
            refused.status.code(),
            stderr.trim()
        );
        assert_eq!(refused.status.code(), Some(*code), "{what}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{what}: stderr is one line: {stderr}"
        );
        assert!(
            stderr.starts_with("serve: refusing to start: "),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains(names.as_str()),
            "{what}: {stderr:?} lacks {names:?}"
        );
        assert!(refused.stdout.is_empty(), "{what}: nothing on stdout");

        let seal_err = text(&via_seal.stderr);
        assert_eq!(
            via_seal.status.code(),
            Some(*code),
            "seal verify, {what}: {seal_err}"
        );
        assert_eq!(seal_err.lines().count(), 1, "{seal_err}");
        assert!(
            seal_err.contains(names.as_str()),
            "seal verify, {what}: {seal_err}"
        );

        if let Some(inspected) = inspected {
            let report = text(&inspected.stdout);
            assert_eq!(
                inspected.status.code(),
                Some(0),
                "{}",
                text(&inspected.stderr)
            );
            assert!(
                report.contains("verified:        no (") && report.contains("exit code 11"),
                "{report}"
            );
        }
    }

    // Every flip was undone: the copy is byte-identical and verifies again.
    assert_eq!(std::fs::read(&copy).unwrap(), image);
    let again = serve_verify_only(&copy, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
}
