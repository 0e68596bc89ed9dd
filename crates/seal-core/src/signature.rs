//! Ed25519 keys and detached signatures in the encodings users already verify with.
//!
//! Why several encodings of one signature: operators check our bundles with the tools they trust.
//! - raw: base64 of the 64-byte signature over the exact MANIFEST bytes, with a PKIX PEM public key;
//!   that is what `cosign verify-blob --key model.pub --signature MANIFEST.sig` and
//!   `openssl pkeyutl -verify -rawin` check.
//! - minisign: the `.minisig` text format with a trusted comment and a global signature, either
//!   legacy ("Ed", signs the message) or prehashed ("ED", signs BLAKE2b-512 of the message).
//!
//! This module parses and produces bytes; it never reads files itself.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use blake2::{Blake2b512, Digest as _};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::Sha256;

const MINISIGN_ALG_LEGACY: [u8; 2] = *b"Ed";
const MINISIGN_ALG_PREHASHED: [u8; 2] = *b"ED";
const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";

/// Why a key or signature was rejected. Each message says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("public key is not an Ed25519 key in PEM (SubjectPublicKeyInfo), minisign or base64 form: {0}")]
    BadPublicKey(String),
    #[error("private key is not an unencrypted Ed25519 PKCS#8 PEM key: {0}. Make one with `seal keygen` or `openssl genpkey -algorithm ed25519`")]
    BadPrivateKey(String),
    #[error("signature is not a minisign signature, base64 of 64 bytes, or 64 raw bytes: {0}")]
    BadSignatureEncoding(String),
    #[error("signature was made by minisign key id {signature_key_id}, but the public key has id {public_key_id}")]
    KeyIdMismatch {
        signature_key_id: String,
        public_key_id: String,
    },
    #[error("signature does not verify with public key {fingerprint}: the signed data or the signature was altered, or it was signed by another key")]
    Invalid { fingerprint: String },
    #[error("minisign trusted comment signature does not verify with public key {fingerprint}: the trusted comment was altered")]
    TrustedCommentInvalid { fingerprint: String },
    #[error("holds a different key than {other}")]
    KeyMismatch { other: &'static str },
}

/// Parses a detached signature and a public key (any accepted encodings) and checks that the
/// signature verifies `message`. This is the release-build check build.rs runs on
/// `SEALSERVE_SIGNATURE` + `SEALSERVE_PUBLIC_KEY`, so a bad pair fails the build, not the rollout.
pub fn verify_detached(
    signature: &[u8],
    public_key: &[u8],
    message: &[u8],
) -> Result<(Signature, PublicKey), SignatureError> {
    let signature = Signature::parse(signature)?;
    let key = PublicKey::parse(public_key)?;
    signature.verify(message, &key)?;
    Ok((signature, key))
}

/// An Ed25519 public key plus the minisign key id it is known by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// Set when the key came from a minisign file (minisign key ids are random); otherwise derived.
    minisign_key_id: Option<[u8; 8]>,
}

impl PublicKey {
    /// Wraps raw key bytes; fails for points that are not valid Ed25519 keys.
    pub fn from_raw(raw: &[u8; 32]) -> Result<Self, SignatureError> {
        let key = VerifyingKey::from_bytes(raw)
            .map_err(|e| SignatureError::BadPublicKey(format!("invalid Ed25519 point: {e}")))?;
        if key.is_weak() {
            return Err(SignatureError::BadPublicKey(
                "weak (small-order) Ed25519 key".into(),
            ));
        }
        Ok(Self {
            key,
            minisign_key_id: None,
        })
    }

    /// Accepts a PKIX PEM (`-----BEGIN PUBLIC KEY-----`), a minisign public key file, or the
    /// base64 of the 32 raw bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| SignatureError::BadPublicKey("not UTF-8 text".into()))?
            .trim();
        if text.starts_with("-----BEGIN") {
            return Self::from_pem(text);
        }
        if text.starts_with(UNTRUSTED_PREFIX) || text.starts_with("RW") {
            return Self::from_minisign(text);
        }
        let raw = B64
            .decode(text)
            .map_err(|e| SignatureError::BadPublicKey(format!("not base64: {e}")))?;
        let raw: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| {
            SignatureError::BadPublicKey(format!("expected 32 bytes, got {}", v.len()))
        })?;
        Self::from_raw(&raw)
    }

    fn from_pem(text: &str) -> Result<Self, SignatureError> {
        let key = VerifyingKey::from_public_key_pem(text).map_err(|e| {
            SignatureError::BadPublicKey(format!(
                "{e} (only Ed25519 keys are supported; ECDSA/RSA cosign keys are not)"
            ))
        })?;
        Self::from_raw(key.as_bytes())
    }

    fn from_minisign(text: &str) -> Result<Self, SignatureError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with(UNTRUSTED_PREFIX))
            .ok_or_else(|| SignatureError::BadPublicKey("minisign key has no key line".into()))?;
        let blob = B64
            .decode(line)
            .map_err(|e| SignatureError::BadPublicKey(format!("minisign key line: {e}")))?;
        if blob.len() != 42 || blob[..2] != MINISIGN_ALG_LEGACY {
            return Err(SignatureError::BadPublicKey(
                "minisign key line must decode to 42 bytes starting with \"Ed\"".into(),
            ));
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&blob[2..10]);
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&blob[10..42]);
        let mut key = Self::from_raw(&raw)?;
        key.minisign_key_id = Some(key_id);
        Ok(key)
    }

    /// The 32 raw bytes.
    pub fn raw(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Stable identity shown to operators and accepted by `--trusted-key`: lowercase hex sha256 of
    /// the 32 raw key bytes.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.raw()))
    }

    /// The minisign key id: the one from the minisign file, else the first 8 bytes of sha256(key).
    pub fn key_id(&self) -> [u8; 8] {
        self.minisign_key_id
            .unwrap_or_else(|| derived_key_id(self.raw()))
    }

    /// Key id as minisign prints it in its key files (uppercase hex of the little-endian u64, no
    /// zero padding).
    pub fn key_id_hex(&self) -> String {
        key_id_text(self.key_id())
    }

    /// PKIX PEM, as cosign and openssl read it.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|e| unreachable!("encoding a valid key cannot fail: {e}"))
    }

    /// minisign public key file text.
    pub fn to_minisign(&self) -> String {
        let mut blob = Vec::with_capacity(42);
        blob.extend_from_slice(&MINISIGN_ALG_LEGACY);
        blob.extend_from_slice(&self.key_id());
        blob.extend_from_slice(self.raw());
        format!(
            "{UNTRUSTED_PREFIX}minisign public key {}\n{}\n",
            self.key_id_hex(),
            B64.encode(blob)
        )
    }

    fn verify_raw(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.key
            .verify_strict(message, &sig)
            .map_err(|_| SignatureError::Invalid {
                fingerprint: self.fingerprint(),
            })
    }
}

/// A minisign key id as minisign prints it: uppercase hex of the little-endian u64, unpadded.
fn key_id_text(id: [u8; 8]) -> String {
    format!("{:X}", u64::from_le_bytes(id))
}

fn derived_key_id(raw: &[u8; 32]) -> [u8; 8] {
    let digest = Sha256::digest(raw);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// The time a new signature's minisign trusted comment records: `$SOURCE_DATE_EPOCH` when it is
/// set to a number (reproducible builds and releases), else now. The one place either is read,
/// for build.rs's dev signature and `seal sign` alike.
pub fn signing_timestamp() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(unix_now)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An Ed25519 private key. Never embedded, never needed by build.rs for release builds.
pub struct SecretKey {
    key: SigningKey,
}

impl SecretKey {
    /// A fresh key from the OS random source.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Reads an unencrypted PKCS#8 PEM (`seal keygen`, `openssl genpkey -algorithm ed25519`).
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, SignatureError> {
        let key = SigningKey::from_pkcs8_pem(text.trim())
            .map_err(|e| SignatureError::BadPrivateKey(e.to_string()))?;
        Ok(Self { key })
    }

    /// PKCS#8 PEM text; the caller writes it with mode 0600. Version 1 (RFC 8410, the seed
    /// only), the form `openssl genpkey -algorithm ed25519` writes: OpenSSL 3.0 refuses the
    /// version-2 encoding that carries the public key too.
    pub fn to_pkcs8_pem(&self) -> String {
        let v1 = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_else(|e| unreachable!("encoding a 32-byte seed cannot fail: {e}"))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            minisign_key_id: None,
        }
    }

    /// Signs `message` (legacy, non-prehashed Ed25519, so the same 64 bytes serve cosign, openssl
    /// and minisign) and wraps it with a minisign trusted comment naming `file_name`.
    pub fn sign(&self, message: &[u8], file_name: &str, timestamp: u64) -> Signature {
        let sig = self.key.sign(message).to_bytes();
        let trusted_comment = format!("timestamp:{timestamp}\tfile:{file_name}");
        let global = self.global_signature(&sig, &trusted_comment);
        Signature {
            algorithm: SignatureAlgorithm::Pure,
            key_id: Some(self.public_key().key_id()),
            bytes: sig,
            trusted: Some(TrustedComment {
                text: trusted_comment,
                signature: global,
            }),
        }
    }

    fn global_signature(&self, sig: &[u8; 64], trusted_comment: &str) -> [u8; 64] {
        let mut signed = sig.to_vec();
        signed.extend_from_slice(trusted_comment.as_bytes());
        self.key.sign(&signed).to_bytes()
    }
}

/// What the 64 signature bytes sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// The message itself (Ed25519 "pure"; minisign legacy "Ed"; cosign/openssl raw).
    Pure,
    /// BLAKE2b-512 of the message (minisign's default "ED").
    Prehashed,
}

/// A minisign trusted comment and its global signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedComment {
    pub text: String,
    pub signature: [u8; 64],
}

/// A detached signature in any of the accepted encodings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub algorithm: SignatureAlgorithm,
    /// minisign key id, when the encoding carries one.
    pub key_id: Option<[u8; 8]>,
    pub bytes: [u8; 64],
    pub trusted: Option<TrustedComment>,
}

impl Signature {
    /// Accepts a minisign `.minisig`, base64 of 64 bytes (cosign), or 64 raw bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        if bytes.len() == 64 {
            if let Ok(raw) = <[u8; 64]>::try_from(bytes) {
                if std::str::from_utf8(bytes).is_err() {
                    return Ok(Self::raw(raw));
                }
            }
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| SignatureError::BadSignatureEncoding("not text and not 64 bytes".into()))?
            .trim();
        if text.starts_with(UNTRUSTED_PREFIX) {
            return Self::parse_minisign(text);
        }
        let raw = B64
            .decode(text)
            .map_err(|e| SignatureError::BadSignatureEncoding(format!("not base64: {e}")))?;
        let raw: [u8; 64] = raw.try_into().map_err(|v: Vec<u8>| {
            SignatureError::BadSignatureEncoding(format!("expected 64 bytes, got {}", v.len()))
        })?;
        Ok(Self::raw(raw))
    }

    fn raw(bytes: [u8; 64]) -> Self {
        Self {
            algorithm: SignatureAlgorithm::Pure,
            key_id: None,
            bytes,
            trusted: None,
        }
    }

    fn parse_minisign(text: &str) -> Result<Self, SignatureError> {
        let bad = |m: &str| SignatureError::BadSignatureEncoding(format!("minisign: {m}"));
        let mut lines = text.lines().map(str::trim_end);
        let _untrusted = lines.next();
        let sig_line = lines.next().ok_or_else(|| bad("missing signature line"))?;
        let blob = B64
            .decode(sig_line.trim())
            .map_err(|e| bad(&format!("signature line: {e}")))?;
        if blob.len() != 74 {
            return Err(bad("signature line must decode to 74 bytes"));
        }
        let algorithm = match [blob[0], blob[1]] {
            MINISIGN_ALG_LEGACY => SignatureAlgorithm::Pure,
            MINISIGN_ALG_PREHASHED => SignatureAlgorithm::Prehashed,
            _ => return Err(bad("unknown signature algorithm (expected Ed or ED)")),
        };
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&blob[2..10]);
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&blob[10..74]);
        // minisign itself refuses a signature without its trusted comment and global signature,
        // so we do too: the trusted comment is what ties the signature to a file name and time.
        let comment = lines
            .next()
            .ok_or_else(|| bad("missing trusted comment line (minisign requires it)"))?;
        let text = comment
            .strip_prefix(TRUSTED_PREFIX)
            .ok_or_else(|| bad("third line must start with `trusted comment: `"))?;
        let global = lines
            .next()
            .ok_or_else(|| bad("missing global signature (minisign requires it)"))?;
        let global = B64
            .decode(global.trim())
            .map_err(|e| bad(&format!("global signature: {e}")))?;
        let signature: [u8; 64] = global
            .try_into()
            .map_err(|_| bad("global signature must be 64 bytes"))?;
        let trusted = Some(TrustedComment {
            text: text.to_string(),
            signature,
        });
        Ok(Self {
            algorithm,
            key_id: Some(key_id),
            bytes,
            trusted,
        })
    }

    /// Checks the signature (and, for minisign, the key id and trusted comment) against `message`.
    pub fn verify(&self, message: &[u8], key: &PublicKey) -> Result<(), SignatureError> {
        if let (Some(sig_id), Some(key_id)) = (self.key_id, key.minisign_key_id) {
            if sig_id != key_id {
                return Err(SignatureError::KeyIdMismatch {
                    signature_key_id: key_id_text(sig_id),
                    public_key_id: key.key_id_hex(),
                });
            }
        }
        match self.algorithm {
            SignatureAlgorithm::Pure => key.verify_raw(message, &self.bytes)?,
            SignatureAlgorithm::Prehashed => {
                key.verify_raw(&Blake2b512::digest(message), &self.bytes)?
            }
        }
        if let Some(trusted) = &self.trusted {
            let mut signed = self.bytes.to_vec();
            signed.extend_from_slice(trusted.text.as_bytes());
            key.verify_raw(&signed, &trusted.signature).map_err(|_| {
                SignatureError::TrustedCommentInvalid {
                    fingerprint: key.fingerprint(),
                }
            })?;
        }
        Ok(())
    }

    /// base64 of the 64 bytes, the form cosign verify-blob and openssl (after base64 -d) check.
    /// `None` for prehashed signatures, which those tools cannot check.
    pub fn to_raw_base64(&self) -> Option<String> {
        (self.algorithm == SignatureAlgorithm::Pure)
            .then(|| format!("{}\n", B64.encode(self.bytes)))
    }

    /// minisign `.minisig` text; `None` when there is no trusted comment to go with it (a raw
    /// signature cannot be turned into one without the private key).
    pub fn to_minisign(&self) -> Option<String> {
        let trusted = self.trusted.as_ref()?;
        let key_id = self.key_id?;
        let alg = match self.algorithm {
            SignatureAlgorithm::Pure => MINISIGN_ALG_LEGACY,
            SignatureAlgorithm::Prehashed => MINISIGN_ALG_PREHASHED,
        };
        let mut blob = Vec::with_capacity(74);
        blob.extend_from_slice(&alg);
        blob.extend_from_slice(&key_id);
        blob.extend_from_slice(&self.bytes);
        Some(format!(
            "{UNTRUSTED_PREFIX}signature from sealserve secret key\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            B64.encode(blob),
            trusted.text,
            B64.encode(trusted.signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_in_every_encoding() {
        let sk = SecretKey::generate();
        let pk = sk.public_key();
        let sig = sk.sign(b"hello", "MANIFEST", 1);
        let raw = Signature::parse(sig.to_raw_base64().unwrap().as_bytes()).unwrap();
        raw.verify(b"hello", &pk).unwrap();
        let mini = Signature::parse(sig.to_minisign().unwrap().as_bytes()).unwrap();
        mini.verify(b"hello", &pk).unwrap();
        let pk_from_pem = PublicKey::parse(pk.to_pem().as_bytes()).unwrap();
        let pk_from_mini = PublicKey::parse(pk.to_minisign().as_bytes()).unwrap();
        assert_eq!(pk_from_pem.fingerprint(), pk_from_mini.fingerprint());
        mini.verify(b"hello", &pk_from_mini).unwrap();
        assert!(matches!(
            raw.verify(b"hellO", &pk),
            Err(SignatureError::Invalid { .. })
        ));
    }

    #[test]
    fn altered_trusted_comment_is_refused() {
        let sk = SecretKey::generate();
        let mut sig = sk.sign(b"m", "MANIFEST", 1);
        if let Some(t) = sig.trusted.as_mut() {
            t.text.push('x');
        }
        assert!(matches!(
            sig.verify(b"m", &sk.public_key()),
            Err(SignatureError::TrustedCommentInvalid { .. })
        ));
    }

    #[test]
    fn minisign_signature_without_trusted_comment_is_refused_as_minisign_does() {
        let sk = SecretKey::generate();
        let full = sk.sign(b"m", "MANIFEST", 1).to_minisign().unwrap();
        let lines: Vec<&str> = full.lines().collect();
        for cut in [2, 3] {
            let truncated = lines[..cut].join("\n") + "\n";
            let err = Signature::parse(truncated.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("minisign requires it"), "{err}");
        }
    }

    #[test]
    fn private_key_is_pkcs8_version_1() {
        // RFC 8410 v1: SEQUENCE { INTEGER 0, AlgorithmIdentifier 1.3.101.112, OCTET STRING {
        // OCTET STRING seed } }: 48 bytes, version byte 0.
        let pem = SecretKey::generate().to_pkcs8_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = B64.decode(body).unwrap();
        assert_eq!(der.len(), 48, "{pem}");
        assert_eq!(
            &der[..16],
            b"\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20"
        );
    }

    #[test]
    fn key_id_is_printed_like_minisign_prints_it() {
        // minisign writes "%" PRIX64 (no zero padding) into its public key files.
        let text = "untrusted comment: minisign public key EAA7485D77BD5A0\nRWSg1XvXhXSqDl4R6VNx9J8BZpbU+Y5yHatFO5PvGKvuxzgZXYdk/DaU\n";
        let key = PublicKey::parse(text.as_bytes()).unwrap();
        assert_eq!(key.key_id_hex(), "EAA7485D77BD5A0");
        assert!(key
            .to_minisign()
            .starts_with("untrusted comment: minisign public key EAA7485D77BD5A0\n"));
    }

    #[test]
    fn private_key_pem_roundtrip() {
        let sk = SecretKey::generate();
        let again = SecretKey::from_pkcs8_pem(&sk.to_pkcs8_pem()).unwrap();
        assert_eq!(
            again.public_key().fingerprint(),
            sk.public_key().fingerprint()
        );
    }
}
