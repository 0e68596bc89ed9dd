//! The sealed bundle: model files + MANIFEST + signature + public key in one aligned blob, and
//! the startup verification that refuses anything altered or signed by an untrusted key.
//!
//! Layout (all integers little-endian; offsets relative to the first byte of the bundle):
//! ```text
//!  0..16   marker  b"SEALSERVE-BUNDLE"
//! 16..20   u32     format version (1)
//! 20..24   u32     index length in bytes
//! 24..32   u64     total bundle length in bytes
//! 32..64   [u8;32] sha256 of the index
//! 64..     index   JSON {"dev_signed": bool, "entries": [{"name","offset","len"}...]}
//!          entries each start on a 64-byte boundary
//! ```
//! `seal` finds a bundle inside a binary by scanning for the marker and accepting the first
//! candidate whose header and index checksum are consistent; the index checksum is for locating
//! and diagnostics only, security comes from MANIFEST + signature.
//!
//! Knows nothing about model formats. Which keys may sign is the `trust` module's business.

use crate::manifest::{is_plain_file_name, sha256_hex, Manifest, ManifestError};
use crate::signature::{PublicKey, Signature, SignatureError};
use crate::spec::{BundleMetadata, METADATA_FILE};
pub use crate::trust::{TrustKeyError, TrustPolicy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The documented marker at the start of every bundle.
pub const MARKER: &[u8; 16] = b"SEALSERVE-BUNDLE";
/// Bundle format written by this version.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of every entry (and of the bundle itself when embedded), so tensors can be read in
/// place and cache lines are not split.
pub const ALIGN: usize = 64;
const HEADER_LEN: usize = 64;

/// Entry names with a fixed meaning.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Raw Ed25519 signature, base64 (cosign verify-blob / openssl).
pub const SIGNATURE_RAW_FILE: &str = "MANIFEST.sig";
/// minisign signature.
pub const SIGNATURE_MINISIGN_FILE: &str = "MANIFEST.minisig";
/// Public key, PKIX PEM.
pub const PUBLIC_KEY_FILE: &str = "model.pub";
/// Public key, minisign format (carries the minisign key id).
pub const PUBLIC_KEY_MINISIGN_FILE: &str = "model.pub.minisign";

/// Written beside an exported dev-signed bundle (the dev flag lives in the index, which an
/// export does not carry).
pub const DEV_SIGNED_MARKER: &str = "DEV-SIGNED";

/// The signing entries (what signs the payload, not part of it).
pub const SIGNING_FILES: [&str; 5] = [
    MANIFEST_FILE,
    SIGNATURE_RAW_FILE,
    SIGNATURE_MINISIGN_FILE,
    PUBLIC_KEY_FILE,
    PUBLIC_KEY_MINISIGN_FILE,
];

/// Why a bundle was refused. Each variant has its own process exit code (sealserve's `exit`
/// table).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    #[error("{name}: sha256 mismatch: MANIFEST says {expected}, embedded bytes hash to {actual}; the file was altered after signing")]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("MANIFEST rejected: {0}")]
    Manifest(String),
    #[error("{file}: signature over MANIFEST rejected: {source}")]
    Signature {
        file: &'static str,
        source: SignatureError,
    },
    #[error("{file}: embedded public key rejected: {source}")]
    PublicKey {
        file: &'static str,
        source: SignatureError,
    },
    #[error("bundle is signed by key {fingerprint}, which is not among the trusted keys ({trusted}); rebuild with a trusted key or add it to --trusted-key")]
    Untrusted {
        fingerprint: String,
        trusted: String,
    },
    #[error("bundle is dev-signed (ephemeral build key {fingerprint}) but trusted keys are configured; build with SEALSERVE_SIGNATURE and SEALSERVE_PUBLIC_KEY")]
    DevSigned { fingerprint: String },
    #[error("bundle carries no signature ({SIGNATURE_RAW_FILE} or {SIGNATURE_MINISIGN_FILE}); refusing to run an unsigned model")]
    MissingSignature,
}

impl From<ManifestError> for VerifyError {
    fn from(e: ManifestError) -> Self {
        VerifyError::Manifest(e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct Index {
    dev_signed: bool,
    entries: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    name: String,
    offset: u64,
    len: u64,
}

/// Writes a bundle. `entries` keep their order; names must be plain file names.
pub fn write_bundle(
    out: &mut impl Write,
    dev_signed: bool,
    entries: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    let index_len_estimate = |index: &Index| serde_json::to_vec(index).map(|v| v.len());
    // Offsets depend on the index length, which depends on the offsets' digits: iterate to a
    // fixed point (two passes in practice).
    let mut index = Index {
        dev_signed,
        entries: entries
            .iter()
            .map(|(name, bytes)| IndexEntry {
                name: name.clone(),
                offset: 0,
                len: bytes.len() as u64,
            })
            .collect(),
    };
    let mut index_len = 0usize;
    loop {
        let mut offset = align_up(HEADER_LEN + index_len);
        for entry in &mut index.entries {
            entry.offset = offset as u64;
            offset = align_up(offset + entry.len as usize);
        }
        let new_len = index_len_estimate(&index)?;
        if new_len == index_len {
            break;
        }
        index_len = new_len;
    }
    let index_bytes = serde_json::to_vec(&index)?;
    let total = index
        .entries
        .last()
        .map(|e| e.offset + e.len)
        .unwrap_or((HEADER_LEN + index_len) as u64);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MARKER);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(index_bytes.len() as u32).to_le_bytes());
    header.extend_from_slice(&total.to_le_bytes());
    header.extend_from_slice(&Sha256::digest(&index_bytes));
    out.write_all(&header)?;
    out.write_all(&index_bytes)?;
    let mut written = HEADER_LEN + index_bytes.len();
    for ((_, bytes), entry) in entries.iter().zip(&index.entries) {
        let pad = entry.offset as usize - written;
        out.write_all(&vec![0u8; pad])?;
        out.write_all(bytes)?;
        written = entry.offset as usize + bytes.len();
    }
    Ok(())
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The signing entries for a bundle: MANIFEST, each encoding of the signature that exists, and
/// the public key in PEM and minisign form.
pub fn signing_entries(
    manifest: &[u8],
    signature: &Signature,
    key: &PublicKey,
) -> Vec<(String, Vec<u8>)> {
    let mut entries = vec![(MANIFEST_FILE.to_string(), manifest.to_vec())];
    if let Some(raw) = signature.to_raw_base64() {
        entries.push((SIGNATURE_RAW_FILE.to_string(), raw.into_bytes()));
    }
    if let Some(minisig) = signature.to_minisign() {
        entries.push((SIGNATURE_MINISIGN_FILE.to_string(), minisig.into_bytes()));
    }
    entries.push((PUBLIC_KEY_FILE.to_string(), key.to_pem().into_bytes()));
    entries.push((
        PUBLIC_KEY_MINISIGN_FILE.to_string(),
        key.to_minisign().into_bytes(),
    ));
    entries
}

/// A parsed (not yet verified) bundle borrowing its bytes.
#[derive(Debug)]
pub struct Bundle<'a> {
    bytes: &'a [u8],
    dev_signed: bool,
    entries: Vec<(String, &'a [u8])>,
}

impl<'a> Bundle<'a> {
    /// Parses a bundle that starts at `bytes[0]` (what `serve` embeds).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, VerifyError> {
        let malformed = |m: String| VerifyError::Malformed(m);
        if bytes.len() < HEADER_LEN || &bytes[..16] != MARKER {
            return Err(malformed("missing SEALSERVE-BUNDLE marker".into()));
        }
        let version = u32::from_le_bytes(read_array(bytes, 16));
        if version != FORMAT_VERSION {
            return Err(malformed(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let index_len = u32::from_le_bytes(read_array(bytes, 20)) as usize;
        let total = u64::from_le_bytes(read_array(bytes, 24));
        let total = usize::try_from(total)
            .ok()
            .filter(|t| *t <= bytes.len() && *t >= HEADER_LEN + index_len)
            .ok_or_else(|| malformed(format!("declared length {total} exceeds the data")))?;
        let index_bytes = &bytes[HEADER_LEN..HEADER_LEN + index_len];
        if Sha256::digest(index_bytes).as_slice() != &bytes[32..64] {
            return Err(malformed("index checksum does not match".into()));
        }
        let index: Index = serde_json::from_slice(index_bytes)
            .map_err(|e| malformed(format!("index is not valid JSON: {e}")))?;
        let bytes = &bytes[..total];
        let mut entries = Vec::with_capacity(index.entries.len());
        for entry in index.entries {
            let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(entry.len).unwrap_or(usize::MAX));
            if !is_plain_file_name(&entry.name) || end > total || start < HEADER_LEN + index_len {
                return Err(malformed(format!(
                    "entry {:?} has a bad name or lies outside the bundle",
                    entry.name
                )));
            }
            if entries.iter().any(|(n, _)| n == &entry.name) {
                return Err(malformed(format!("entry {} appears twice", entry.name)));
            }
            entries.push((entry.name, &bytes[start..end]));
        }
        Ok(Self {
            bytes,
            dev_signed: index.dev_signed,
            entries,
        })
    }

    /// Finds the bundle inside a binary (or any file) by its marker.
    pub fn locate(haystack: &'a [u8]) -> Result<Self, VerifyError> {
        let mut last_error = None;
        for position in memchr::memmem::find_iter(haystack, MARKER) {
            match Self::parse(&haystack[position..]) {
                Ok(bundle) => return Ok(bundle),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            VerifyError::Malformed(
                "no SEALSERVE-BUNDLE marker found; is this a `serve` binary?".into(),
            )
        }))
    }

    /// The whole bundle's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether build.rs signed it with an ephemeral key (no release key was given).
    pub fn dev_signed(&self) -> bool {
        self.dev_signed
    }

    /// One entry's bytes.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bytes)| *bytes)
    }

    /// All entries in bundle order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &'a [u8])> {
        self.entries.iter().map(|(n, b)| (n.as_str(), *b))
    }

    /// Writes every entry to `dir` so anyone can re-check it with sha256sum, minisign, openssl,
    /// cosign; a dev-signed bundle also gets a [`DEV_SIGNED_MARKER`] file, so checks of the
    /// folder can refuse it as `serve --trusted-key` would. Returns the paths written.
    pub fn export(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (name, bytes) in self.entries() {
            let path = dir.join(name);
            std::fs::write(&path, bytes)?;
            written.push(path);
        }
        if self.dev_signed {
            let path = dir.join(DEV_SIGNED_MARKER);
            std::fs::write(
                &path,
                "This bundle was signed at build time by an ephemeral key (no release key).\n",
            )?;
            written.push(path);
        }
        Ok(written)
    }

    /// Full startup verification: key parse → trust → signature over MANIFEST → MANIFEST covers
    /// exactly the payload → every digest. `after_hash` sees each hashed chunk (serve uses it to
    /// drop the pages from its resident set).
    pub fn verify(
        &self,
        policy: &TrustPolicy,
        after_hash: &mut dyn FnMut(&'a [u8]),
    ) -> Result<VerifiedBundle<'a>, VerifyError> {
        let key = self.public_key()?;
        policy.check(&key, self.dev_signed)?;
        let manifest_bytes = self
            .get(MANIFEST_FILE)
            .ok_or_else(|| VerifyError::Malformed(format!("no {MANIFEST_FILE} entry")))?;
        self.verify_signatures(manifest_bytes, &key)?;
        let manifest = Manifest::parse(manifest_bytes)?;
        let payload = self.payload_matching(&manifest)?;
        let started = Instant::now();
        let mut bytes_hashed = 0u64;
        for (name, bytes) in &payload {
            let expected = manifest.digest(name).unwrap_or_default();
            let actual = hash_chunked(bytes, after_hash);
            bytes_hashed += bytes.len() as u64;
            if actual != expected {
                return Err(VerifyError::DigestMismatch {
                    name: name.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let hash_time = started.elapsed();
        let metadata_bytes = payload
            .get(METADATA_FILE)
            .ok_or_else(|| VerifyError::Manifest(format!("{METADATA_FILE} is not covered")))?;
        let metadata = BundleMetadata::from_bytes(metadata_bytes)
            .map_err(|e| VerifyError::Manifest(format!("{METADATA_FILE} is invalid: {e}")))?;
        Ok(VerifiedBundle {
            metadata,
            manifest_sha256: sha256_hex(manifest_bytes),
            key_fingerprint: key.fingerprint(),
            key_id: key.key_id_hex(),
            dev_signed: self.dev_signed,
            files: payload,
            bytes_hashed,
            hash_time,
        })
    }

    fn public_key(&self) -> Result<PublicKey, VerifyError> {
        let key_error = |file, source| VerifyError::PublicKey { file, source };
        let pem = self.get(PUBLIC_KEY_FILE).ok_or_else(|| {
            key_error(
                PUBLIC_KEY_FILE,
                SignatureError::BadPublicKey("the bundle has no such entry".into()),
            )
        })?;
        let key = PublicKey::parse(pem).map_err(|e| key_error(PUBLIC_KEY_FILE, e))?;
        match self.get(PUBLIC_KEY_MINISIGN_FILE) {
            None => Ok(key),
            Some(text) => {
                let mini =
                    PublicKey::parse(text).map_err(|e| key_error(PUBLIC_KEY_MINISIGN_FILE, e))?;
                if mini.raw() != key.raw() {
                    return Err(key_error(
                        PUBLIC_KEY_MINISIGN_FILE,
                        SignatureError::KeyMismatch {
                            other: PUBLIC_KEY_FILE,
                        },
                    ));
                }
                Ok(mini)
            }
        }
    }

    fn verify_signatures(&self, manifest: &[u8], key: &PublicKey) -> Result<(), VerifyError> {
        let mut found = false;
        for file in [SIGNATURE_RAW_FILE, SIGNATURE_MINISIGN_FILE] {
            if let Some(bytes) = self.get(file) {
                found = true;
                Signature::parse(bytes)
                    .and_then(|sig| sig.verify(manifest, key))
                    .map_err(|source| VerifyError::Signature { file, source })?;
            }
        }
        if found {
            Ok(())
        } else {
            Err(VerifyError::MissingSignature)
        }
    }

    fn payload_matching(
        &self,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, &'a [u8]>, VerifyError> {
        let payload: BTreeMap<String, &'a [u8]> = self
            .entries()
            .filter(|(name, _)| !SIGNING_FILES.contains(name))
            .map(|(name, bytes)| (name.to_string(), bytes))
            .collect();
        for (name, _) in manifest.entries() {
            if !payload.contains_key(name) {
                return Err(VerifyError::Manifest(format!(
                    "it lists {name}, which the bundle does not carry"
                )));
            }
        }
        if let Some(extra) = payload.keys().find(|n| manifest.digest(n).is_none()) {
            return Err(VerifyError::Manifest(format!(
                "the bundle carries {extra}, which MANIFEST does not cover"
            )));
        }
        Ok(payload)
    }
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

const HASH_CHUNK: usize = 8 << 20;

fn hash_chunked<'a>(bytes: &'a [u8], after_hash: &mut dyn FnMut(&'a [u8])) -> String {
    let mut hasher = Sha256::new();
    for chunk in bytes.chunks(HASH_CHUNK) {
        hasher.update(chunk);
        after_hash(chunk);
    }
    hex::encode(hasher.finalize())
}

/// What verification established; the only way the rest of the program gets model bytes.
#[derive(Debug)]
pub struct VerifiedBundle<'a> {
    pub metadata: BundleMetadata,
    pub manifest_sha256: String,
    pub key_fingerprint: String,
    pub key_id: String,
    pub dev_signed: bool,
    /// Every file MANIFEST covers, by name, digest-checked.
    pub files: BTreeMap<String, &'a [u8]>,
    pub bytes_hashed: u64,
    pub hash_time: Duration,
}

impl<'a> VerifiedBundle<'a> {
    /// A verified file by name.
    pub fn file(&self, name: &str) -> Option<&'a [u8]> {
        self.files.get(name).copied()
    }
}
