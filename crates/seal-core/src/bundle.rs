//! The sealed bundle: model files + MANIFEST + signature + public key in one aligned blob, and
//! the startup verification that refuses anything altered or signed by an untrusted key.
//!
//! Layout (all integers little-endian; offsets relative to the first byte of the bundle):
//! ```text
//!  0..16   marker  "SEALSERVE-BUNDLE" (see `marker()`)
//! 16..20   u32     format version (2)
//! 20..24   u32     index length in bytes
//! 24..32   u64     total bundle length in bytes (a multiple of 64)
//! 32..64   [u8;32] sha256 of the index
//! 64..     index   JSON {"entries": [{"name","offset","len"}...]}
//!          entries follow each other in index order, each on the next 64-byte boundary;
//!          every byte between and after them is zero, up to `total`
//! ```
//! The layout is canonical: one list of entries has exactly one byte image, so a bundle has no
//! room for bytes nobody checks. Parsing insists on it. The index and its checksum are not
//! signed and carry nothing security-relevant (names and offsets); authenticity comes from
//! MANIFEST, its signature and the trust policy, and whether a build is dev-signed is part of
//! the signed `sealserve.json`.
//!
//! Verification copies every payload file into memory the caller provides ([`Copies`]) and
//! hashes the copy, so what the rest of the program reads is exactly what was hashed, whatever
//! happens to the file afterwards. Knows nothing about model formats; which keys may sign is
//! the `trust` module's business, where a bundle sits in a binary is `placement`'s.

use crate::manifest::{is_plain_file_name, sha256_hex, Manifest, ManifestError};
use crate::signature::{PublicKey, Signature, SignatureError};
use crate::spec::{BundleMetadata, METADATA_FILE};
pub use crate::trust::{TrustKeyError, TrustPolicy, TrustState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bundle format written and read by this version.
pub const FORMAT_VERSION: u32 = 2;
/// Alignment of every entry and of the bundle's total length, so tensors can be read in place,
/// cache lines are not split, and an embedded bundle fills its aligned section exactly.
pub const ALIGN: usize = 64;
/// Bytes before the index.
pub const HEADER_LEN: usize = 64;
/// The ELF section of `serve` that holds its bundle.
pub const SECTION: &str = ".sealserve";

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

/// The signing entries (what signs the payload, not part of it).
pub const SIGNING_FILES: [&str; 5] = [
    MANIFEST_FILE,
    SIGNATURE_RAW_FILE,
    SIGNATURE_MINISIGN_FILE,
    PUBLIC_KEY_FILE,
    PUBLIC_KEY_MINISIGN_FILE,
];

const MARKER_MASK: u8 = 0xa5;
const MARKER_MASKED: [u8; 16] = mask(*b"SEALSERVE-BUNDLE");

const fn mask(mut bytes: [u8; 16]) -> [u8; 16] {
    let mut i = 0;
    while i < bytes.len() {
        bytes[i] ^= MARKER_MASK;
        i += 1;
    }
    bytes
}

/// The 16 bytes every bundle starts with, `SEALSERVE-BUNDLE`.
///
/// Why a function: the marker is stored masked and unmasked at run time through `black_box`, so
/// the compiler cannot fold it back into a constant. A built `serve` therefore holds these bytes
/// in exactly one place, the first bytes of its bundle, and `seal` and `serve` can refuse any
/// file that holds them anywhere else (a planted or appended second bundle).
pub fn marker() -> [u8; 16] {
    let mask = std::hint::black_box(MARKER_MASK);
    MARKER_MASKED.map(|b| b ^ mask)
}

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
    #[error("bundle is signed by key {fingerprint}, which is not among the trusted keys ({trusted}); rebuild with a trusted key or pin this one")]
    Untrusted {
        fingerprint: String,
        trusted: String,
    },
    #[error("bundle is dev-signed (ephemeral build key {fingerprint}) but trusted keys are configured; build with SEALSERVE_SIGNATURE and SEALSERVE_PUBLIC_KEY")]
    DevSigned { fingerprint: String },
    #[error("bundle carries no signature ({SIGNATURE_RAW_FILE} or {SIGNATURE_MINISIGN_FILE}); refusing to run an unsigned model")]
    MissingSignature,
    #[error("bundle's {what} is {actual}, but this deployment expects {expected} ({flag}); it is bound to another model or build")]
    Binding {
        what: &'static str,
        flag: &'static str,
        expected: String,
        actual: String,
    },
}

impl From<ManifestError> for VerifyError {
    fn from(e: ManifestError) -> Self {
        VerifyError::Manifest(e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    entries: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    name: String,
    offset: u64,
    len: u64,
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Offsets of each entry and the total length, for entries of these lengths after an index of
/// `index_len` bytes: the one layout `write_bundle` produces and `Bundle::read` accepts.
fn layout(index_len: u64, lens: impl Iterator<Item = u64>) -> Option<(Vec<u64>, u64)> {
    let mut next = align_up(HEADER_LEN as u64 + index_len);
    let mut offsets = Vec::new();
    for len in lens {
        offsets.push(next);
        next = align_up(next.checked_add(len)?);
    }
    Some((offsets, next))
}

/// Writes a bundle. `entries` keep their order; names must be plain file names.
pub fn write_bundle(out: &mut impl Write, entries: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let lens = || entries.iter().map(|(_, b)| b.len() as u64);
    let mut index = Index {
        entries: entries
            .iter()
            .map(|(name, bytes)| IndexEntry {
                name: name.clone(),
                offset: 0,
                len: bytes.len() as u64,
            })
            .collect(),
    };
    // Offsets depend on the index length, which depends on the offsets' digits: iterate to a
    // fixed point (two passes in practice).
    let mut index_len = 0u64;
    let total = loop {
        let (offsets, total) = layout(index_len, lens())
            .ok_or_else(|| std::io::Error::other("bundle larger than 2^64 bytes"))?;
        for (entry, offset) in index.entries.iter_mut().zip(offsets) {
            entry.offset = offset;
        }
        let new_len = serde_json::to_vec(&index)?.len() as u64;
        if new_len == index_len {
            break total;
        }
        index_len = new_len;
    };
    let index_bytes = serde_json::to_vec(&index)?;
    let index_len = u32::try_from(index_bytes.len())
        .map_err(|_| std::io::Error::other("bundle index larger than 4 GiB"))?;
    let mut head = Vec::with_capacity(HEADER_LEN + index_bytes.len());
    head.extend_from_slice(&marker());
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&index_len.to_le_bytes());
    head.extend_from_slice(&total.to_le_bytes());
    head.extend_from_slice(&Sha256::digest(&index_bytes));
    head.extend_from_slice(&index_bytes);
    out.write_all(&head)?;
    let mut written = head.len() as u64;
    for ((_, bytes), entry) in entries.iter().zip(&index.entries) {
        out.write_all(&vec![0u8; (entry.offset - written) as usize])?;
        out.write_all(bytes)?;
        written = entry.offset + entry.len;
    }
    out.write_all(&vec![0u8; (total - written) as usize])
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

/// Where a bundle's bytes are read from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'s> {
    /// Bytes in memory: tests, build outputs, folders `seal verify` reassembles.
    Memory(&'s [u8]),
    /// A range of an open file (the `.sealserve` section of a `serve` binary), read with
    /// `pread`: nothing is mapped, so nothing can be re-read from the file behind our back.
    File {
        file: &'s File,
        offset: u64,
        len: u64,
    },
}

impl Source<'_> {
    /// Bytes in the bundle.
    pub fn len(&self) -> u64 {
        match self {
            Source::Memory(bytes) => bytes.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    /// True for an empty source.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from bundle offset `at`.
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), VerifyError> {
        let end = at
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len());
        let out_of_range = || {
            VerifyError::Malformed(format!(
                "{} bytes at offset {at} lie outside the {}-byte bundle",
                buf.len(),
                self.len()
            ))
        };
        end.ok_or_else(out_of_range)?;
        match self {
            Source::Memory(bytes) => {
                let start = at as usize;
                buf.copy_from_slice(&bytes[start..start + buf.len()]);
                Ok(())
            }
            Source::File { file, offset, .. } => file
                .read_exact_at(buf, offset + at)
                .map_err(|e| VerifyError::Malformed(format!("cannot read bundle bytes: {e}"))),
        }
    }

    fn read_vec(&self, at: u64, len: u64) -> Result<Vec<u8>, VerifyError> {
        let len = usize::try_from(len)
            .map_err(|_| VerifyError::Malformed(format!("entry of {len} bytes")))?;
        let mut buf = vec![0u8; len];
        self.read_at(at, &mut buf)?;
        Ok(buf)
    }
}

/// One entry of a parsed bundle: its name and where its bytes lie, relative to the bundle start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub offset: u64,
    pub len: u64,
}

/// A parsed (not yet verified) bundle: header, index and layout checked, no entry read yet.
#[derive(Debug)]
pub struct Bundle<'s> {
    source: Source<'s>,
    entries: Vec<Entry>,
}

/// Bytes read per step when copying, hashing or scanning: large enough for few system calls,
/// small enough that a copied chunk is still in cache when it is hashed.
pub const CHUNK: usize = 1 << 20;
/// Entries at least this large are copied one chunk ahead of the hashing on a second thread.
const PIPELINE_MIN: usize = 8 * CHUNK;
/// Chunks the copying thread may run ahead of the hashing one (bounded, so a copied chunk is
/// still in the shared cache when it is hashed).
const PIPELINE_DEPTH: usize = 2;

impl<'s> Bundle<'s> {
    /// Parses a bundle that fills `bytes` exactly.
    pub fn parse(bytes: &'s [u8]) -> Result<Self, VerifyError> {
        Self::read(Source::Memory(bytes))
    }

    /// Parses the bundle that fills `source` exactly, insisting on the canonical layout.
    pub fn read(source: Source<'s>) -> Result<Self, VerifyError> {
        let malformed = |m: String| VerifyError::Malformed(m);
        if source.len() < HEADER_LEN as u64 {
            return Err(malformed(format!(
                "{} bytes, shorter than a bundle header",
                source.len()
            )));
        }
        let mut header = [0u8; HEADER_LEN];
        source.read_at(0, &mut header)?;
        if header[..16] != marker() {
            return Err(malformed("missing bundle marker".into()));
        }
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let version = word(16);
        if version != FORMAT_VERSION {
            return Err(malformed(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let index_len = u64::from(word(20));
        let total = u64::from_le_bytes(header[24..32].try_into().unwrap_or_default());
        if total != source.len() {
            return Err(malformed(format!(
                "declared length {total} does not match the {} bytes it occupies",
                source.len()
            )));
        }
        if HEADER_LEN as u64 + index_len > total {
            return Err(malformed(format!(
                "declared index length {index_len} exceeds the data"
            )));
        }
        let index_bytes = source.read_vec(HEADER_LEN as u64, index_len)?;
        if Sha256::digest(&index_bytes).as_slice() != &header[32..64] {
            return Err(malformed("index checksum does not match".into()));
        }
        let index: Index = serde_json::from_slice(&index_bytes)
            .map_err(|e| malformed(format!("index is not valid: {e}")))?;
        let (offsets, expected_total) = layout(index_len, index.entries.iter().map(|e| e.len))
            .ok_or_else(|| malformed("entry lengths overflow".into()))?;
        let mut entries: Vec<Entry> = Vec::with_capacity(index.entries.len());
        for (entry, expected) in index.entries.into_iter().zip(offsets) {
            if !is_plain_file_name(&entry.name) {
                return Err(malformed(format!("entry {:?} has a bad name", entry.name)));
            }
            if entries.iter().any(|e| e.name == entry.name) {
                return Err(malformed(format!("entry {} appears twice", entry.name)));
            }
            if entry.offset != expected {
                return Err(malformed(format!(
                    "entry {} starts at {}, not at {expected} where the canonical layout puts it",
                    entry.name, entry.offset
                )));
            }
            entries.push(Entry {
                name: entry.name,
                offset: entry.offset,
                len: entry.len,
            });
        }
        if expected_total != total {
            return Err(malformed(format!(
                "entries end at {expected_total}, but the bundle is {total} bytes"
            )));
        }
        let bundle = Self { source, entries };
        bundle.check_padding(HEADER_LEN as u64 + index_len)?;
        Ok(bundle)
    }

    /// Every byte outside the header, index and entries must be zero: there is nowhere to hide
    /// anything in a bundle.
    fn check_padding(&self, index_end: u64) -> Result<(), VerifyError> {
        let mut gap_start = index_end;
        let ends = self
            .entries
            .iter()
            .map(|e| (e.offset, e.offset + e.len))
            .chain(std::iter::once((self.source.len(), self.source.len())));
        for (start, end) in ends {
            let gap = self.source.read_vec(gap_start, start - gap_start)?;
            if let Some(at) = gap.iter().position(|b| *b != 0) {
                return Err(VerifyError::Malformed(format!(
                    "non-zero byte at offset {} between entries; a bundle carries nothing outside its entries",
                    gap_start + at as u64
                )));
            }
            gap_start = end;
        }
        Ok(())
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.source.len()
    }

    /// True for an empty bundle (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// All entries in bundle order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// One entry's bytes, `None` when the bundle has no such entry.
    pub fn read_entry(&self, name: &str) -> Result<Option<Vec<u8>>, VerifyError> {
        self.entry(name)
            .map(|e| self.source.read_vec(e.offset, e.len))
            .transpose()
    }

    /// Writes every entry to `dir` so anyone can re-check it with sha256sum, minisign, openssl,
    /// cosign. Each file is created new: an existing name (a file, or a symlink planted to
    /// redirect the write) is an error, never written through. Returns the paths written.
    pub fn export(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for entry in &self.entries {
            let path = dir.join(&entry.name);
            // O_CREAT|O_EXCL: fails on any existing name and never follows a symlink.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{}: {e} (export writes new files only; use a new or empty folder)",
                            path.display()
                        ),
                    )
                })?;
            let mut buf = vec![0u8; CHUNK];
            let mut at = entry.offset;
            let end = entry.offset + entry.len;
            while at < end {
                let n = (end - at).min(CHUNK as u64) as usize;
                self.source
                    .read_at(at, &mut buf[..n])
                    .map_err(std::io::Error::other)?;
                file.write_all(&buf[..n])?;
                at += n as u64;
            }
            file.sync_all()?;
            written.push(path);
        }
        Ok(written)
    }

    /// Full verification: key parse → signature over MANIFEST → MANIFEST covers exactly the
    /// payload → `sealserve.json` (copied, hashed, parsed) → trust policy → every other file
    /// copied into `copies` and hashed there. Only hashed copies are handed out. The signing
    /// half and every rule about the payload are [`SignedManifest`]'s, the same code that
    /// judges a bundle fetched from a store (sealserve's `remote` module).
    pub fn verify<'v>(
        &self,
        policy: &TrustPolicy,
        copies: &mut dyn Copies<'v>,
    ) -> Result<VerifiedBundle<'v>, VerifyError> {
        let mut signing = BTreeMap::new();
        for name in SIGNING_FILES {
            if let Some(bytes) = self.read_entry(name)? {
                signing.insert(name, bytes);
            }
        }
        let signed = SignedManifest::verify(&|name| signing.get(name).map(Vec::as_slice))?;
        let payload: BTreeMap<&str, &Entry> = self
            .entries
            .iter()
            .filter(|e| !SIGNING_FILES.contains(&e.name.as_str()))
            .map(|e| (e.name.as_str(), e))
            .collect();
        signed.check_coverage(payload.keys().copied())?;
        let started = Instant::now();
        let mut files = BTreeMap::new();
        let mut bytes_hashed = 0u64;
        // sealserve.json first: it says what the bundle is (model, build, dev-signed), which the
        // trust policy needs before the large files are read.
        let metadata_entry = payload
            .get(METADATA_FILE)
            .ok_or_else(|| VerifyError::Manifest(format!("{METADATA_FILE} is not covered")))?;
        let metadata_copy = self.copy_verified(metadata_entry, &signed, copies)?;
        let accepted = signed.accept(policy, metadata_copy)?;
        bytes_hashed += metadata_copy.len() as u64;
        files.insert(METADATA_FILE.to_string(), metadata_copy);
        for entry in payload.values().filter(|e| e.name != METADATA_FILE) {
            let copy = self.copy_verified(entry, &signed, copies)?;
            bytes_hashed += copy.len() as u64;
            files.insert(entry.name.clone(), copy);
        }
        signed.into_verified(accepted, files, bytes_hashed, started.elapsed())
    }

    /// Copies one entry into fresh memory from `copies`, hashing each chunk after it is written,
    /// and hands the copy out only if the digest is the one MANIFEST records.
    fn copy_verified<'v>(
        &self,
        entry: &Entry,
        signed: &SignedManifest,
        copies: &mut dyn Copies<'v>,
    ) -> Result<&'v [u8], VerifyError> {
        let len = usize::try_from(entry.len)
            .map_err(|_| VerifyError::Malformed(format!("{} is too large", entry.name)))?;
        let copy = copies.allocate(len).map_err(|e| {
            VerifyError::Malformed(format!(
                "cannot allocate {len} bytes to verify {}: {e}",
                entry.name
            ))
        })?;
        let actual = hex::encode(self.copy_and_hash(entry.offset, copy)?);
        signed.check_digest(&entry.name, &actual)?;
        Ok(copies.seal(copy))
    }

    /// Fills `copy` from the entry at `offset` and returns the SHA-256 of what it wrote, hashing
    /// each chunk from the copy after it is written (never the source). A large entry is copied
    /// on a second thread one chunk ahead of the hashing: copying (system call, page faults on
    /// the fresh memory) and hashing then overlap instead of adding up, which is most of what
    /// verifying the embedded weights costs at start-up.
    fn copy_and_hash(&self, offset: u64, copy: &mut [u8]) -> Result<[u8; 32], VerifyError> {
        let mut hasher = Sha256::new();
        let parallel = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        if !parallel || copy.len() < PIPELINE_MIN {
            let mut at = offset;
            for chunk in copy.chunks_mut(CHUNK) {
                self.source.read_at(at, chunk)?;
                hasher.update(&*chunk);
                at += chunk.len() as u64;
            }
            return Ok(hasher.finalize().into());
        }
        let source = &self.source;
        let (written, filled) = std::sync::mpsc::sync_channel::<&[u8]>(PIPELINE_DEPTH);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || -> Result<(), VerifyError> {
                let mut at = offset;
                for chunk in copy.chunks_mut(CHUNK) {
                    source.read_at(at, chunk)?;
                    at += chunk.len() as u64;
                    let chunk: &[u8] = chunk;
                    if written.send(chunk).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            for chunk in filled.iter() {
                hasher.update(chunk);
            }
            reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        Ok(hasher.finalize().into())
    }
}

/// The signing half of verification, the same wherever a bundle's bytes come from (the bundle
/// embedded in `serve`, or one fetched from S3, HTTPS or an OCI registry): the public key parses
/// (and both encodings agree), every signature present verifies over MANIFEST, and MANIFEST is
/// canonical. The payload is then judged by [`Self::check_coverage`] and [`Self::check_digest`],
/// and the trust policy by [`Self::accept`] once `sealserve.json` is verified, so a remote bundle
/// can be refused before a byte of its weights is downloaded, by the rules `Bundle::verify`
/// applies.
#[derive(Debug)]
pub struct SignedManifest {
    key: PublicKey,
    manifest: Manifest,
    manifest_sha256: String,
}

/// What the trust policy accepted: the parsed `sealserve.json` and how the key was trusted.
#[derive(Debug)]
pub struct Accepted {
    metadata: BundleMetadata,
    trust: TrustState,
}

impl SignedManifest {
    /// Key parse → signatures → MANIFEST parse. `signing` returns the bytes of a signing file
    /// ([`SIGNING_FILES`]) by name, `None` when the bundle has no such file.
    pub fn verify<'b>(signing: &dyn Fn(&str) -> Option<&'b [u8]>) -> Result<Self, VerifyError> {
        let key = public_key(signing)?;
        let manifest_bytes = signing(MANIFEST_FILE)
            .ok_or_else(|| VerifyError::Malformed(format!("no {MANIFEST_FILE} entry")))?;
        verify_signatures(signing, manifest_bytes, &key)?;
        let manifest = Manifest::parse(manifest_bytes)?;
        Ok(Self {
            key,
            manifest,
            manifest_sha256: sha256_hex(manifest_bytes),
        })
    }

    /// The verified MANIFEST: which files to fetch and what they must hash to.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Refuses a payload MANIFEST does not cover exactly. `present` names every file the bundle
    /// carries apart from its signing files.
    pub fn check_coverage<'n>(
        &self,
        present: impl IntoIterator<Item = &'n str>,
    ) -> Result<(), VerifyError> {
        let present: std::collections::BTreeSet<&str> = present.into_iter().collect();
        if let Some((name, _)) = self
            .manifest
            .entries()
            .find(|(name, _)| !present.contains(name))
        {
            return Err(missing_file(name));
        }
        if let Some(extra) = present.iter().find(|n| self.manifest.digest(n).is_none()) {
            return Err(VerifyError::Manifest(format!(
                "the bundle carries {extra}, which MANIFEST does not cover"
            )));
        }
        Ok(())
    }

    /// Refuses a file whose bytes hash to anything but what MANIFEST records for it.
    pub fn check_digest(&self, name: &str, actual: &str) -> Result<(), VerifyError> {
        let expected = self.manifest.digest(name).ok_or_else(|| {
            VerifyError::Manifest(format!(
                "the bundle carries {name}, which MANIFEST does not cover"
            ))
        })?;
        if actual != expected {
            return Err(VerifyError::DigestMismatch {
                name: name.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Parses `sealserve.json` (bytes whose digest [`Self::check_digest`] accepted) and applies
    /// the trust policy: pinned keys, no dev build under a pin, the `expect` bindings.
    pub fn accept(&self, policy: &TrustPolicy, metadata: &[u8]) -> Result<Accepted, VerifyError> {
        let metadata = BundleMetadata::from_bytes(metadata)
            .map_err(|e| VerifyError::Manifest(format!("{METADATA_FILE} is invalid: {e}")))?;
        let trust = policy.check(&self.key, &metadata, &self.manifest_sha256)?;
        Ok(Accepted { metadata, trust })
    }

    /// The verified bundle, from the payload files whose digests were checked with
    /// [`Self::check_digest`] (their set is checked once more against MANIFEST here).
    pub fn into_verified<'v>(
        self,
        accepted: Accepted,
        files: BTreeMap<String, &'v [u8]>,
        bytes_hashed: u64,
        hash_time: Duration,
    ) -> Result<VerifiedBundle<'v>, VerifyError> {
        self.check_coverage(files.keys().map(String::as_str))?;
        Ok(VerifiedBundle {
            dev_signed: accepted.metadata.dev_signed,
            metadata: accepted.metadata,
            manifest_sha256: self.manifest_sha256,
            key_fingerprint: self.key.fingerprint(),
            key_id: self.key.key_id_hex(),
            trust: accepted.trust,
            files,
            bytes_hashed,
            hash_time,
        })
    }
}

/// The refusal for a file MANIFEST lists but the bundle does not carry (also what a store's
/// 404 for a listed file becomes).
pub fn missing_file(name: &str) -> VerifyError {
    VerifyError::Manifest(format!("it lists {name}, which the bundle does not carry"))
}

fn public_key<'b>(signing: &dyn Fn(&str) -> Option<&'b [u8]>) -> Result<PublicKey, VerifyError> {
    let key_error = |file, source| VerifyError::PublicKey { file, source };
    let pem = signing(PUBLIC_KEY_FILE).ok_or_else(|| {
        key_error(
            PUBLIC_KEY_FILE,
            SignatureError::BadPublicKey("the bundle has no such entry".into()),
        )
    })?;
    let key = PublicKey::parse(pem).map_err(|e| key_error(PUBLIC_KEY_FILE, e))?;
    match signing(PUBLIC_KEY_MINISIGN_FILE) {
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

fn verify_signatures<'b>(
    signing: &dyn Fn(&str) -> Option<&'b [u8]>,
    manifest: &[u8],
    key: &PublicKey,
) -> Result<(), VerifyError> {
    let mut found = false;
    for file in [SIGNATURE_RAW_FILE, SIGNATURE_MINISIGN_FILE] {
        if let Some(bytes) = signing(file) {
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

/// Memory that verified files are copied into. Verification writes each file into a fresh
/// allocation and hashes it there, so the bytes the rest of the program reads are exactly the
/// bytes that were hashed.
pub trait Copies<'v> {
    /// Writable room for `len` bytes (contents are overwritten).
    fn allocate(&mut self, len: usize) -> std::io::Result<&'v mut [u8]>;
    /// Called once a copy is complete and its digest matched; may make it read-only.
    fn seal(&mut self, copy: &'v mut [u8]) -> &'v [u8] {
        copy
    }
}

/// Verified copies on the heap, living as long as this arena: for `seal` and tests. (`serve`
/// uses page-aligned, read-only mappings instead; see sealserve's `memory` module.)
#[derive(Default)]
pub struct HeapCopies {
    arena: bumpalo::Bump,
}

impl<'v> Copies<'v> for &'v HeapCopies {
    fn allocate(&mut self, len: usize) -> std::io::Result<&'v mut [u8]> {
        let copies = *self;
        Ok(copies.arena.alloc_slice_fill_copy(len, 0u8))
    }
}

/// What verification established; the only way the rest of the program gets model bytes.
#[derive(Debug)]
pub struct VerifiedBundle<'v> {
    pub metadata: BundleMetadata,
    pub manifest_sha256: String,
    pub key_fingerprint: String,
    pub key_id: String,
    /// Signed at build time by an ephemeral key, as the signed `sealserve.json` says.
    pub dev_signed: bool,
    /// How the signing key was accepted: pinned, or only under an explicit waiver.
    pub trust: TrustState,
    /// Every file MANIFEST covers, by name: the hashed copies.
    pub files: BTreeMap<String, &'v [u8]>,
    pub bytes_hashed: u64,
    pub hash_time: Duration,
}

impl<'v> VerifiedBundle<'v> {
    /// A verified file by name.
    pub fn file(&self, name: &str) -> Option<&'v [u8]> {
        self.files.get(name).copied()
    }
}
