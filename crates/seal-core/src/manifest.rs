//! `MANIFEST`: the list of every embedded file and its sha256, in `sha256sum` format.
//!
//! Why this format: it is what the signature covers, and an operator can check an exported bundle
//! with `sha256sum -c MANIFEST` without any of our tools. Lines are `<64 hex>  <name>\n`, sorted
//! by name, names are plain file names (no paths), so the bytes are canonical: the same files
//! always give the same MANIFEST, whoever builds it.
//!
//! Also the one home of the name and hex rules every other module applies (plain file names,
//! lowercase hex digests), so a MANIFEST line, a bundle entry and a model.toml pin can never
//! disagree about what a valid name or digest is. Knows nothing about keys or signatures.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Errors parsing a MANIFEST.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("MANIFEST is not UTF-8 text")]
    NotText,
    #[error("MANIFEST line {line}: expected `<64 hex sha256>  <file name>`, got {text:?}")]
    BadLine { line: usize, text: String },
    #[error("MANIFEST line {line}: {name} is listed twice")]
    Duplicate { line: usize, name: String },
    #[error("MANIFEST is not in canonical form (sorted lines, two spaces, trailing newline); it was not produced by `seal manifest` or sha256sum")]
    NotCanonical,
    #[error("MANIFEST is empty")]
    Empty,
}

/// A parsed MANIFEST: file name → lowercase hex sha256.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<String, String>,
}

impl Manifest {
    /// Starts an empty manifest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one entry with a digest already computed.
    pub fn insert(&mut self, name: impl Into<String>, sha256_hex: impl Into<String>) {
        self.entries.insert(name.into(), sha256_hex.into());
    }

    /// Adds one entry by hashing its bytes.
    pub fn insert_bytes(&mut self, name: impl Into<String>, bytes: &[u8]) {
        self.insert(name, sha256_hex(bytes));
    }

    /// The digest recorded for `name`.
    pub fn digest(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(String::as_str)
    }

    /// Entries in canonical (sorted) order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, d)| (n.as_str(), d.as_str()))
    }

    /// Number of files covered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Canonical bytes: what gets signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (name, digest) in &self.entries {
            out.push_str(digest);
            out.push_str("  ");
            out.push_str(name);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Parses MANIFEST bytes and insists they are canonical, so that a signature over them means
    /// exactly one set of (name, digest) pairs.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotText)?;
        let mut manifest = Manifest::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let bad = || ManifestError::BadLine {
                line: line_no,
                text: line.chars().take(120).collect(),
            };
            let (digest, name) = line.split_once("  ").ok_or_else(bad)?;
            if !is_lower_hex(digest, 64) || !is_plain_file_name(name) {
                return Err(bad());
            }
            if manifest.entries.contains_key(name) {
                return Err(ManifestError::Duplicate {
                    line: line_no,
                    name: name.to_string(),
                });
            }
            manifest.insert(name, digest);
        }
        if manifest.is_empty() {
            return Err(ManifestError::Empty);
        }
        if manifest.to_bytes() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }
}

/// Lowercase hex sha256 of a byte slice. sha2 picks the SHA-NI / AVX2 backend at run time, which
/// is what keeps verification of a 90 MB model well under 150 ms on one core.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// True for exactly `len` lowercase hex digits: the form of every digest and commit id we store.
pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Names that are safe as a single path component and in a sha256sum line.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
