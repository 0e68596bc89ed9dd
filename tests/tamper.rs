//! Every way of altering a sealed bundle is refused with its own error and exit code, and the
//! message names what was altered: first on tiny bundles built here (every attack of issue 11
//! and every case that held in the review, kept), then on the real `serve` binary: one byte
//! flipped inside each embedded entry, a second bundle planted before or after serve's own, a
//! corrupted section next to an appended copy, a header one byte too long, a relabelled dev
//! flag, each refused alike by `seal verify`, `seal inspect`, `seal export` and `serve`.

mod common;

use common::binary::{
    bundle_of, outcome, read_at, seal, serve_copy, serve_verify_only, text, write_at,
};
use sealserve::bundle::{
    self, Bundle, HeapCopies, TrustPolicy, VerifyError, MANIFEST_FILE, PUBLIC_KEY_FILE,
    PUBLIC_KEY_MINISIGN_FILE, SIGNATURE_MINISIGN_FILE, SIGNATURE_RAW_FILE,
};
use sealserve::exit::Exit;
use sealserve::manifest::sha256_hex;
use sealserve::signature::{PublicKey, SecretKey, Signature};
use sealserve::spec::{BuildInfo, ModelSpec, METADATA_FILE};
use sealserve::trust::ModelRef;
use std::path::Path;

const WEIGHTS: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";
const CONFIG: &str = "config.json";
const REVISION_A: &str = "0123456789abcdef0123456789abcdef01234567";
const REVISION_B: &str = "89abcdef0123456789abcdef0123456789abcdef";

type Entries = Vec<(String, Vec<u8>)>;

/// The model files of the tiny bundle and the spec pinning them at `revision`.
fn tiny_model(revision: &str) -> (ModelSpec, Entries) {
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
    let mut text = format!(
        "[model]\nid = \"test/tiny\"\nrevision = \"{revision}\"\n\
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

fn build(dev_signed: bool) -> BuildInfo {
    if dev_signed {
        BuildInfo::dev("0.0.0-test")
    } else {
        BuildInfo::release("0.0.0-test")
    }
}

/// Entries exactly as build.rs lays them out: files, sealserve.json, then the signing entries.
/// `signer` signs the MANIFEST; `embedded` is the public key put in the bundle.
fn entries_for(
    signer: &SecretKey,
    embedded: &PublicKey,
    revision: &str,
    dev_signed: bool,
) -> Entries {
    let (spec, mut entries) = tiny_model(revision);
    let build = build(dev_signed);
    let manifest = spec.manifest_bytes(&build);
    let signature = signer.sign(&manifest, MANIFEST_FILE, 1_700_000_000);
    entries.push((
        METADATA_FILE.into(),
        spec.metadata(&build).to_canonical_bytes(),
    ));
    entries.extend(bundle::signing_entries(&manifest, &signature, embedded));
    entries
}

/// A release bundle's entries, signed by `key`.
fn tiny_entries(signer: &SecretKey, embedded: &PublicKey) -> Entries {
    entries_for(signer, embedded, REVISION_A, false)
}

fn assemble(entries: &Entries) -> Vec<u8> {
    let mut bytes = Vec::new();
    bundle::write_bundle(&mut bytes, entries).expect("write bundle");
    bytes
}

/// The process exit code a refusal gets (`sealserve::exit`).
fn code_of(err: &VerifyError) -> i32 {
    i32::from(Exit::from(err).code())
}

fn check(bytes: &[u8], policy: &TrustPolicy) -> Result<(), VerifyError> {
    let copies = HeapCopies::default();
    Bundle::parse(bytes)?
        .verify(policy, &mut &copies)
        .map(|_| ())
}

fn refusal(bytes: &[u8], policy: &TrustPolicy) -> (i32, String) {
    let err = check(bytes, policy).expect_err("the bundle was accepted");
    (code_of(&err), err.to_string())
}

fn entry_mut<'a>(entries: &'a mut Entries, name: &str) -> &'a mut Vec<u8> {
    entries
        .iter_mut()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no entry {name}"))
}

/// Replaces the MANIFEST with `manifest` and signs it again with `key` (an attacker who holds
/// the key the bundle carries).
fn resign(entries: &mut Entries, key: &SecretKey, manifest: &[u8]) {
    let signature = key.sign(manifest, MANIFEST_FILE, 1_700_000_000);
    for (name, bytes) in bundle::signing_entries(manifest, &signature, &key.public_key()) {
        *entry_mut(entries, &name) = bytes;
    }
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

// ---- tiny bundles ---------------------------------------------------------------------------

#[test]
fn untouched_tiny_bundle_verifies_pinned_and_under_the_waiver() {
    let key = SecretKey::generate();
    let bytes = assemble(&tiny_entries(&key, &key.public_key()));
    check(&bytes, &TrustPolicy::unpinned()).expect("untouched bundle verifies");
    let copies = HeapCopies::default();
    let pinned = TrustPolicy::pinned([key.public_key().fingerprint()]);
    let verified = Bundle::parse(&bytes)
        .unwrap()
        .verify(&pinned, &mut &copies)
        .expect("release bundle verifies against its pinned key");
    assert!(!verified.dev_signed);
    assert_eq!(verified.trust, sealserve::bundle::TrustState::Pinned);
    assert_eq!(verified.files.len(), 4);
    assert_eq!(verified.metadata.model_id, "test/tiny");
    assert_eq!(verified.metadata.sealserve_version, "0.0.0-test");
    // What the loader gets is the heap copy, not the bundle bytes.
    let weights = verified.file(WEIGHTS).unwrap();
    let range = bytes.as_ptr_range();
    assert!(
        !range.contains(&weights.as_ptr()),
        "verified bytes are a copy"
    );
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
        let err = check(&assemble(&entries), &TrustPolicy::unpinned())
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
            // A signature that no longer verifies names the key it was checked with; the
            // other signature file still verifies, and one bad of two is enough to refuse.
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
    let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
    assert_eq!(code, 13, "{message}");
    assert!(message.contains(SIGNATURE_RAW_FILE), "{message}");

    // The trusted comment is covered by the global signature.
    let mut entries = pristine.clone();
    let minisig = entry_mut(&mut entries, SIGNATURE_MINISIGN_FILE);
    let at = line_start(minisig, 2) + "trusted comment: timestamp:".len();
    minisig[at] ^= 0x01;
    let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
    assert_eq!(code, 13, "{message}");
    assert!(message.contains("trusted comment"), "{message}");

    // Like minisign, a .minisig without its trusted comment and global signature is refused,
    // even though the main signature in it is valid.
    let mut entries = pristine.clone();
    let minisig = entry_mut(&mut entries, SIGNATURE_MINISIGN_FILE);
    let cut = line_start(minisig, 2);
    minisig.truncate(cut);
    let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
    assert_eq!(code, 13, "{message}");
    assert!(message.contains("trusted comment"), "{message}");

    // The key id in the minisign signature must match the embedded minisign key.
    let mut entries = pristine;
    let minisig = entry_mut(&mut entries, SIGNATURE_MINISIGN_FILE);
    let at = letter_at_or_after(minisig, line_start(minisig, 1) + 4);
    minisig[at] ^= 0x20;
    let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
    assert_eq!(code, 13, "{message}");
    assert!(message.contains("key id"), "{message}");
}

/// s + L (the group order) in little-endian: the same signature in a malleable encoding.
fn add_group_order(s: &[u8]) -> [u8; 32] {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(L[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

#[test]
fn malleable_and_mixed_order_signatures_are_refused_by_strict_verification() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = SecretKey::generate();
    let pristine = tiny_entries(&key, &key.public_key());
    let manifest = pristine
        .iter()
        .find(|(n, _)| n == MANIFEST_FILE)
        .unwrap()
        .1
        .clone();
    let raw_entry = &pristine
        .iter()
        .find(|(n, _)| n == SIGNATURE_RAW_FILE)
        .unwrap()
        .1;
    let signature = Signature::parse(raw_entry).unwrap();
    let raw = signature.bytes;

    // S + L: verifies under a lax check, not under verify_strict.
    let mut malleated = raw;
    malleated[32..].copy_from_slice(&add_group_order(&raw[32..]));
    // R + a point of order 2: a mixed-order R.
    let r = curve25519_dalek::edwards::CompressedEdwardsY(raw[..32].try_into().unwrap())
        .decompress()
        .expect("R decompresses");
    let mixed_r = (r + curve25519_dalek::constants::EIGHT_TORSION[4]).compress();
    let mut mixed = raw;
    mixed[..32].copy_from_slice(mixed_r.as_bytes());

    for (what, bytes) in [("S+L", malleated), ("mixed-order R", mixed)] {
        let mut entries: Entries = pristine
            .iter()
            .filter(|(n, _)| n != SIGNATURE_MINISIGN_FILE)
            .cloned()
            .collect();
        *entry_mut(&mut entries, SIGNATURE_RAW_FILE) = format!("{}\n", b64.encode(bytes)).into();
        let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
        assert_eq!(code, 13, "{what}: {message}");
        assert!(
            Signature::parse(format!("{}\n", b64.encode(bytes)).as_bytes())
                .unwrap()
                .verify(&manifest, &key.public_key())
                .is_err(),
            "{what}"
        );
    }
}

#[test]
fn small_order_and_mismatched_public_keys_are_refused() {
    use base64::Engine as _;
    let key = SecretKey::generate();
    // The identity point (y = 1) as a PKIX PEM: a small-order key that would let (R = identity,
    // s = 0) "verify" anything.
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 0x01,
    ];
    der.extend_from_slice(&[0u8; 31]);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let mut entries: Entries = tiny_entries(&key, &key.public_key())
        .into_iter()
        .filter(|(n, _)| n != PUBLIC_KEY_MINISIGN_FILE)
        .collect();
    *entry_mut(&mut entries, PUBLIC_KEY_FILE) = pem.into_bytes();
    let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
    assert_eq!(code, 14, "{message}");
    assert!(message.contains("small-order"), "{message}");

    // model.pub and model.pub.minisign holding different keys.
    let other = SecretKey::generate().public_key();
    let mut entries = tiny_entries(&key, &key.public_key());
    *entry_mut(&mut entries, PUBLIC_KEY_MINISIGN_FILE) = other.to_minisign().into_bytes();
    let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
    assert_eq!(code, 14, "{message}");
    assert!(message.contains("different key"), "{message}");
}

#[test]
fn signed_by_another_key_than_the_embedded_one_is_refused() {
    let embedded = SecretKey::generate();
    let signer = SecretKey::generate();
    let entries = tiny_entries(&signer, &embedded.public_key());
    let err = check(&assemble(&entries), &TrustPolicy::unpinned()).unwrap_err();
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
    let err = check(&assemble(&entries), &TrustPolicy::unpinned()).unwrap_err();
    assert!(matches!(err, VerifyError::MissingSignature), "{err:?}");
    assert_eq!(code_of(&err), 17);
    assert!(err.to_string().contains("no signature"), "{err}");
}

/// Issue 11, row 1: an attacker replaces the embedded key and re-signs. Only a pin stops it; an
/// empty pin list accepts nothing.
#[test]
fn bundle_signed_by_a_key_that_is_not_pinned_is_refused() {
    let release = SecretKey::generate().public_key().fingerprint();
    let attacker = SecretKey::generate();
    let bytes = assemble(&tiny_entries(&attacker, &attacker.public_key()));
    for policy in [
        TrustPolicy::pinned([release.clone()]),
        TrustPolicy::pinned(Vec::new()),
    ] {
        let err = check(&bytes, &policy).unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted { .. }), "{err:?}");
        assert_eq!(code_of(&err), 15);
        let message = err.to_string();
        assert!(
            message.contains(&attacker.public_key().fingerprint()),
            "{message}"
        );
    }
    let message = check(&bytes, &TrustPolicy::pinned([release.clone()]))
        .unwrap_err()
        .to_string();
    assert!(message.contains(&release), "{message}");
}

#[test]
fn dev_signed_bundle_is_refused_once_any_key_is_pinned() {
    let key = SecretKey::generate();
    let fingerprint = key.public_key().fingerprint();
    let bytes = assemble(&entries_for(&key, &key.public_key(), REVISION_A, true));
    check(&bytes, &TrustPolicy::unpinned()).expect("dev-signed is accepted under the waiver");
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

/// Issue 11, row "dev_signed flipped": the dev mark is in the signed sealserve.json, so
/// relabelling a dev build as a release breaks a digest or the signature, and the index (which
/// is not signed) cannot carry the flag at all.
#[test]
fn relabelling_a_dev_build_as_a_release_is_refused() {
    let key = SecretKey::generate();
    let dev = entries_for(&key, &key.public_key(), REVISION_A, true);
    let pinned = TrustPolicy::pinned([key.public_key().fingerprint()]);

    // sealserve.json rewritten to say "release", MANIFEST kept.
    let release_metadata = entries_for(&key, &key.public_key(), REVISION_A, false)
        .into_iter()
        .find(|(n, _)| n == METADATA_FILE)
        .unwrap()
        .1;
    let mut relabelled = dev.clone();
    *entry_mut(&mut relabelled, METADATA_FILE) = release_metadata.clone();
    for policy in [&pinned, &TrustPolicy::unpinned()] {
        let (code, message) = refusal(&assemble(&relabelled), policy);
        assert_eq!(code, 11, "{message}");
        assert!(message.contains(METADATA_FILE), "{message}");
    }

    // ... and the MANIFEST recomputed too: the dev signature no longer matches it.
    let (spec, _) = tiny_model(REVISION_A);
    let mut entries = relabelled.clone();
    *entry_mut(&mut entries, MANIFEST_FILE) = spec.manifest_bytes(&build(false));
    let (code, message) = refusal(&assemble(&entries), &pinned);
    assert_eq!(code, 13, "{message}");

    // The old place of the flag, the unsigned index, is no longer accepted.
    let bytes = assemble(&dev);
    let index_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let index = std::str::from_utf8(&bytes[64..64 + index_len]).unwrap();
    let flagged = index.replacen('{', r#"{"dev_signed":false,"#, 1);
    let forged = forge_index(&bytes, flagged.as_bytes());
    let (code, message) = refusal(&forged, &pinned);
    assert_eq!(code, 10, "{message}");
}

/// The bundle with its index replaced (same length or not; the header's length and checksum
/// are fixed up, entries stay where they are), as a forger would write it.
fn forge_index(bytes: &[u8], index: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let old_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let mut out = bytes[..64].to_vec();
    out[20..24].copy_from_slice(&(index.len() as u32).to_le_bytes());
    out[32..64].copy_from_slice(&sha2::Sha256::digest(index));
    out.extend_from_slice(index);
    out.extend_from_slice(&bytes[64 + old_len..]);
    let total = out.len() as u64;
    out[24..32].copy_from_slice(&total.to_le_bytes());
    out
}

/// Issue 11, row "anything ever signed by the pinned key": a deployment bound with
/// `--expect-model`/`--expect-manifest` refuses an older revision signed by the same key.
#[test]
fn a_resigned_other_revision_is_refused_where_the_deployment_is_bound() {
    let key = SecretKey::generate();
    let a = assemble(&tiny_entries(&key, &key.public_key()));
    let b = assemble(&entries_for(&key, &key.public_key(), REVISION_B, false));
    let manifest_a = {
        let copies = HeapCopies::default();
        Bundle::parse(&a)
            .unwrap()
            .verify(&TrustPolicy::unpinned(), &mut &copies)
            .unwrap()
            .manifest_sha256
    };
    let pinned = || TrustPolicy::pinned([key.public_key().fingerprint()]);
    let model_a: ModelRef = format!("test/tiny@{REVISION_A}").parse().unwrap();
    for policy in [
        pinned().expecting_model(model_a.clone()),
        pinned().expecting_manifest(manifest_a.clone()),
        TrustPolicy::unpinned().expecting_model(model_a.clone()),
    ] {
        check(&a, &policy).expect("the bound revision is accepted");
        let (code, message) = refusal(&b, &policy);
        assert_eq!(code, 19, "{message}");
        assert!(
            message.contains(REVISION_B) || message.contains("MANIFEST sha256"),
            "{message}"
        );
    }
    // Unbound, the same key's other revision is accepted: binding is what the flags add.
    check(&b, &pinned()).expect("unbound deployments take any revision the key signed");
}

#[test]
fn uncovered_or_missing_payload_and_broken_index_are_refused() {
    let key = SecretKey::generate();
    let pristine = tiny_entries(&key, &key.public_key());

    let mut extra = pristine.clone();
    extra.insert(0, ("extra.bin".into(), b"smuggled".to_vec()));
    let (code, message) = refusal(&assemble(&extra), &TrustPolicy::unpinned());
    assert_eq!(code, 12, "{message}");
    assert!(message.contains("extra.bin"), "{message}");

    let dropped: Entries = pristine
        .iter()
        .filter(|(n, _)| n != CONFIG)
        .cloned()
        .collect();
    let (code, message) = refusal(&assemble(&dropped), &TrustPolicy::unpinned());
    assert_eq!(code, 12, "{message}");
    assert!(message.contains(CONFIG), "{message}");

    let mut bytes = assemble(&pristine);
    bytes[70] ^= 0x01; // inside the JSON index
    let err = check(&bytes, &TrustPolicy::unpinned()).unwrap_err();
    assert!(matches!(err, VerifyError::Malformed(_)), "{err:?}");
    assert_eq!(code_of(&err), 10);
}

/// The cases that held in the review stay refused: duplicate and `../` names in the index and
/// in a (re-signed) MANIFEST, a MANIFEST that covers signing material, a non-canonical MANIFEST.
#[test]
fn bad_names_and_non_canonical_manifests_are_refused() {
    let key = SecretKey::generate();
    let pristine = tiny_entries(&key, &key.public_key());
    let bytes = assemble(&pristine);
    let index_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let index = std::str::from_utf8(&bytes[64..64 + index_len]).unwrap();

    for (what, forged, expected) in [
        (
            "../ in the index",
            index.replacen(CONFIG, "../cfg.json", 1),
            "bad name",
        ),
        (
            // Same length, so every offset stays where the layout puts it.
            "duplicate in the index",
            index.replacen(METADATA_FILE, TOKENIZER, 1),
            "appears twice",
        ),
    ] {
        let (code, message) = refusal(
            &forge_index(&bytes, forged.as_bytes()),
            &TrustPolicy::unpinned(),
        );
        assert_eq!(code, 10, "{what}: {message}");
        assert!(message.contains(expected), "{what}: {message}");
    }

    let manifest = pristine
        .iter()
        .find(|(n, _)| n == MANIFEST_FILE)
        .unwrap()
        .1
        .clone();
    let manifest = String::from_utf8(manifest).unwrap();
    let first = manifest.lines().next().unwrap().to_string();
    let digest = &first[..64];
    for (what, forged) in [
        ("CRLF", manifest.replace('\n', "\r\n")),
        ("duplicate line", format!("{first}\n{manifest}")),
        ("../ name", format!("{digest}  ../escape.txt\n{manifest}")),
        (
            "signing file listed",
            format!("{manifest}{digest}  {PUBLIC_KEY_FILE}\n"),
        ),
    ] {
        let mut entries = pristine.clone();
        resign(&mut entries, &key, forged.as_bytes());
        let (code, message) = refusal(&assemble(&entries), &TrustPolicy::unpinned());
        assert_eq!(code, 12, "{what}: {message}");
    }
}

/// The layout is canonical: no bytes outside the entries, no entry moved, the declared length
/// exactly the length, an index no longer than the bundle.
#[test]
fn anything_outside_the_canonical_layout_is_refused() {
    let key = SecretKey::generate();
    let bytes = assemble(&tiny_entries(&key, &key.public_key()));
    let first = Bundle::parse(&bytes).unwrap().entries()[0].clone();

    let mut padded = bytes.clone();
    let gap = (first.offset + first.len) as usize;
    padded[gap] = b'!';
    let mut total_plus_one = bytes.clone();
    total_plus_one.push(0);
    let declared = bytes.len() as u64 + 1;
    total_plus_one[24..32].copy_from_slice(&declared.to_le_bytes());
    let mut huge_index = bytes.clone();
    huge_index[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut appended = bytes.clone();
    appended.extend_from_slice(&[0u8; 64]);
    let mut short = bytes.clone();
    short.truncate(bytes.len() - 64);

    for (what, forged, expected) in [
        ("a byte between entries", padded, "non-zero byte"),
        ("total one byte too large", total_plus_one, "entries end at"),
        ("index length 4 GiB", huge_index, "index length"),
        ("bytes after the bundle", appended, "declared length"),
        ("bundle cut short", short, "declared length"),
    ] {
        let (code, message) = refusal(&forged, &TrustPolicy::unpinned());
        assert_eq!(code, 10, "{what}: {message}");
        assert!(message.contains(expected), "{what}: {message}");
    }
}

#[test]
fn export_never_writes_through_an_existing_name_or_symlink() {
    let key = SecretKey::generate();
    let bytes = assemble(&tiny_entries(&key, &key.public_key()));
    let bundle = Bundle::parse(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink(&victim, out.join(CONFIG)).unwrap();
    let err = bundle.export(&out).unwrap_err();
    assert!(err.to_string().contains(CONFIG), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    let fresh = dir.path().join("fresh");
    let written = bundle.export(&fresh).unwrap();
    assert_eq!(written.len(), 9);
    assert_eq!(
        std::fs::read(fresh.join(CONFIG)).unwrap(),
        br#"{"hidden_size":4}"#
    );
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
        VerifyError::Binding {
            what: "model",
            flag: "--expect-model",
            expected: String::new(),
            actual: String::new(),
        },
    ];
    let codes: Vec<i32> = all.iter().map(code_of).collect();
    assert_eq!(codes, vec![10, 11, 12, 13, 14, 15, 16, 17, 19]);
}

// ---- the real binary ----------------------------------------------------------------------

/// What `serve --verify-only --allow-unpinned` and each `seal` subcommand say about a file:
/// all must refuse it with `code`, each with one line naming `names`.
fn refused_by_all(binary: &Path, code: i32, names: &str) {
    let arg = binary.to_str().unwrap();
    let export = binary.with_extension("export");
    let runs = [
        (
            "serve --verify-only",
            serve_verify_only(binary, &["--allow-unpinned"], &[]),
        ),
        ("seal verify", seal(&["verify", arg, "--allow-unpinned"])),
        ("seal inspect", seal(&["inspect", arg])),
        (
            "seal export",
            seal(&["export", arg, export.to_str().unwrap()]),
        ),
    ];
    for (what, output) in runs {
        let (status, stderr) = outcome(&output);
        println!("{what}: exit {status:?}: {}", stderr.trim());
        assert_eq!(status, Some(code), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.contains(names), "{what}: {stderr:?} lacks {names:?}");
        assert!(output.stdout.is_empty(), "{what}: nothing on stdout");
    }
    assert!(!export.exists(), "seal export wrote nothing");
}

#[test]
fn real_serve_binary_refuses_each_altered_entry_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let copy = serve_copy(dir.path(), "serve");
    let copy_arg = copy.to_str().unwrap();
    let image = std::fs::read(&copy).unwrap();
    let (placement, entries) = bundle_of(&copy);
    let fingerprint = {
        let inspected = seal(&["inspect", "--json", copy_arg]);
        let report: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
        report["key_fingerprint"].as_str().unwrap().to_string()
    };

    // Untouched: exits 0 under the waiver and reports how long hashing took.
    let ok = serve_verify_only(&copy, &["--allow-unpinned"], &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let summary = text(&ok.stdout);
    let hash_ms = summary
        .split("hashed in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .unwrap_or("?");
    println!("untouched: {}", summary.trim());
    println!("hashing time of the real bundle (serve --verify-only, copy + sha256): {hash_ms} ms");
    assert!(
        summary.contains("(unpinned)") && summary.contains("(DEV-SIGNED)"),
        "{summary}"
    );
    let seal_ok = seal(&["verify", copy_arg, "--allow-unpinned"]);
    assert_eq!(seal_ok.status.code(), Some(0), "{}", text(&seal_ok.stderr));
    // Both read the same bundle: same MANIFEST digest in both summaries.
    let digest = |s: &str| {
        s.split("manifest sha256 ")
            .nth(1)
            .map(|r| r[..64].to_string())
    };
    assert_eq!(digest(&summary), digest(&text(&seal_ok.stdout)));

    // A pinned key refuses this dev build, whichever key is pinned.
    let other = SecretKey::generate().public_key().fingerprint();
    for pin in [&other, &fingerprint] {
        let pinned = serve_verify_only(&copy, &["--trusted-key", pin], &[]);
        let stderr = text(&pinned.stderr);
        assert_eq!(pinned.status.code(), Some(16), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("dev-signed") && stderr.contains(&fingerprint),
            "{stderr}"
        );
        let sealed = seal(&["verify", copy_arg, "--trusted-key", pin]);
        assert_eq!(sealed.status.code(), Some(16), "{}", text(&sealed.stderr));
    }

    // One byte flipped per entry (and one in the index), restored after each run.
    let mut plans: Vec<(String, u64, u8, i32, String)> = entries
        .iter()
        .map(|entry| {
            let bytes = read_at(&copy, placement.offset + entry.offset, entry.len as usize);
            let (at, mask, code, names) = flip_plan(&entry.name, &bytes);
            let offset = placement.offset + entry.offset + at as u64;
            (entry.name.clone(), offset, mask, code, names.to_string())
        })
        .collect();
    plans.push((
        "bundle index".into(),
        placement.offset + 70,
        0x01,
        10,
        "malformed".into(),
    ));
    assert_eq!(plans.len(), 10, "9 entries + the index");
    for (what, offset, mask, code, names) in &plans {
        let original = image[*offset as usize];
        write_at(&copy, *offset, &[original ^ mask]);
        let refused = serve_verify_only(&copy, &["--allow-unpinned"], &[]);
        let via_seal = seal(&["verify", copy_arg, "--allow-unpinned"]);
        let inspected = (what == WEIGHTS).then(|| seal(&["inspect", copy_arg]));
        write_at(&copy, *offset, &[original]);

        let stderr = text(&refused.stderr);
        println!(
            "{what}: serve exit {:?}: {}",
            refused.status.code(),
            stderr.trim()
        );
        assert_eq!(refused.status.code(), Some(*code), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
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
    let again = serve_verify_only(&copy, &["--allow-unpinned"], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
}

/// Where to plant bytes before serve's bundle without changing what serve does at startup: the
/// `.gcc_except_table` section, the unwinding tables only read while a panic unwinds (serve
/// refuses the file long before anything could panic).
fn planting_site(image: &[u8], bundle_offset: u64, len: usize) -> usize {
    use object::{Object, ObjectSection};
    let elf = object::File::parse(image).expect("parse ELF");
    let (offset, size) = elf
        .section_by_name(".gcc_except_table")
        .and_then(|s| s.file_range())
        .expect("serve has unwinding tables");
    assert!(
        offset + len as u64 <= bundle_offset && size >= len as u64,
        "the site lies before the bundle and holds {len} bytes"
    );
    offset as usize
}

/// Issue 11, rows "split view", "appended copy", "corrupted slot + appended copy", "`total`
/// one byte too large", and a relabelled dev flag, on copies of the real binary: `serve` and
/// every `seal` subcommand refuse each one alike.
#[test]
fn a_second_bundle_or_a_bad_header_is_refused_by_serve_and_every_seal_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = serve_copy(dir.path(), "serve");
    let image = std::fs::read(&pristine).unwrap();
    let (placement, entries) = bundle_of(&pristine);
    let start = placement.offset as usize;
    let end = start + placement.len as usize;
    let bundle = &image[start..end];
    let index_len = u32::from_le_bytes(bundle[20..24].try_into().unwrap()) as usize;
    let header_and_index = &bundle[..64 + index_len];

    let variant = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    };

    // Split view: a valid header + index planted earlier in the file.
    let mut split = image.clone();
    let gap = planting_site(&image, placement.offset, header_and_index.len());
    split[gap..gap + header_and_index.len()].copy_from_slice(header_and_index);
    refused_by_all(&variant("split", &split), 10, "marker occurs 2 times");

    // A second, complete bundle appended after the ELF.
    let mut appended = image.clone();
    appended.extend_from_slice(bundle);
    refused_by_all(&variant("appended", &appended), 10, "marker occurs 2 times");

    // serve's own bundle corrupted, a good copy appended.
    let mut corrupted = appended.clone();
    corrupted[start + 70] ^= 0x01;
    refused_by_all(
        &variant("corrupted", &corrupted),
        10,
        "marker occurs 2 times",
    );
    // ... and corrupted alone: the section is what both read.
    let mut corrupted_only = image.clone();
    corrupted_only[start + 70] ^= 0x01;
    refused_by_all(
        &variant("corrupted-only", &corrupted_only),
        10,
        "index checksum",
    );

    // The header's total one byte larger than the section.
    let mut long = image.clone();
    let total = u64::from_le_bytes(bundle[24..32].try_into().unwrap()) + 1;
    long[start + 24..start + 32].copy_from_slice(&total.to_le_bytes());
    refused_by_all(&variant("total", &long), 10, "declared length");

    // The dev flag relabelled in sealserve.json (same length), MANIFEST and signature kept.
    let metadata = entries.iter().find(|e| e.name == METADATA_FILE).unwrap();
    let at = start + metadata.offset as usize;
    let json = &image[at..at + metadata.len as usize];
    let text_json = std::str::from_utf8(json).unwrap();
    let relabelled = text_json.replace("\"dev_signed\": true", "\"dev_signed\":false");
    assert_eq!(relabelled.len(), json.len(), "{text_json}");
    assert_ne!(relabelled, text_json, "the real build is dev-signed");
    let mut flipped = image.clone();
    flipped[at..at + json.len()].copy_from_slice(relabelled.as_bytes());
    let flipped = variant("relabelled", &flipped);
    let refused = serve_verify_only(&flipped, &["--allow-unpinned"], &[]);
    assert_eq!(refused.status.code(), Some(11), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains(METADATA_FILE));
    let arg = flipped.to_str().unwrap();
    let via_seal = seal(&["verify", arg, "--allow-unpinned"]);
    assert_eq!(
        via_seal.status.code(),
        Some(11),
        "{}",
        text(&via_seal.stderr)
    );
    let inspected = seal(&["inspect", "--json", arg]);
    let report: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(report["verified"], false, "{report}");
    assert_eq!(report["verify_exit_code"], 11, "{report}");
}
