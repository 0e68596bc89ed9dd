//! Which signing keys a bundle may be signed by: the trust policy `serve` and `seal verify`
//! apply after the signature itself checks out.
//!
//! Works on values and bytes only. Reading key files, folders and environment variables is the
//! caller's job (sealserve's `trust` module), so this policy is the same whether the anchors came
//! from a flag, a mounted Secret or a test.

use crate::bundle::VerifyError;
use crate::manifest::is_lower_hex;
use crate::signature::PublicKey;

/// A trust anchor that is neither a fingerprint nor a usable key file.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct TrustKeyError {
    /// Where the value came from (`--trusted-key "x"`, a file path).
    pub origin: String,
    pub reason: String,
}

/// Which signing keys may sign the bundle.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    fingerprints: Vec<String>,
}

impl TrustPolicy {
    /// No key pinned: any correctly self-signed bundle is accepted (integrity only). Meant for an
    /// operator's explicit waiver, never as a default.
    pub fn unpinned() -> Self {
        Self {
            fingerprints: Vec::new(),
        }
    }

    /// Pins the keys with these fingerprints (lowercase hex sha256 of the raw key, see
    /// [`PublicKey::fingerprint`]).
    pub fn pinned(fingerprints: impl IntoIterator<Item = String>) -> Self {
        let mut fingerprints: Vec<String> = fingerprints.into_iter().collect();
        fingerprints.sort();
        fingerprints.dedup();
        Self { fingerprints }
    }

    /// True when at least one key is pinned.
    pub fn is_pinned(&self) -> bool {
        !self.fingerprints.is_empty()
    }

    /// Refuses a key that is not pinned, and any dev-signed bundle once something is pinned.
    pub(crate) fn check(&self, key: &PublicKey, dev_signed: bool) -> Result<(), VerifyError> {
        let fingerprint = key.fingerprint();
        if !self.is_pinned() {
            return Ok(());
        }
        // A pinned deployment never runs a dev build, whatever key it carries.
        if dev_signed {
            return Err(VerifyError::DevSigned { fingerprint });
        }
        if self.fingerprints.contains(&fingerprint) {
            return Ok(());
        }
        Err(VerifyError::Untrusted {
            fingerprint,
            trusted: self.fingerprints.join(", "),
        })
    }
}

/// A key fingerprint as operators write it: 64 hex digits, either case, optionally prefixed with
/// `sha256:`. Returns the canonical lowercase form, `None` for anything else.
pub fn parse_fingerprint(value: &str) -> Option<String> {
    let value = value.trim();
    let hex = value.strip_prefix("sha256:").unwrap_or(value);
    let lower = hex.to_ascii_lowercase();
    is_lower_hex(&lower, 64).then_some(lower)
}

/// The fingerprints a trust file pins, from its bytes: a public key (PKIX PEM, minisign, base64
/// of the raw key) pins that key; otherwise every non-empty line that is not a `#` comment must
/// be a fingerprint. `origin` names the file in errors.
pub fn fingerprints_in_file(origin: &str, bytes: &[u8]) -> Result<Vec<String>, TrustKeyError> {
    let error = |reason: String| TrustKeyError {
        origin: origin.to_string(),
        reason,
    };
    let key_error = match PublicKey::parse(bytes) {
        Ok(key) => return Ok(vec![key.fingerprint()]),
        Err(e) => e,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| error(format!("neither a public key nor text ({key_error})")))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() {
        return Err(error(
            "holds no key and no fingerprint; expected a PEM or minisign public key, or lines of 64-hex fingerprints".into(),
        ));
    }
    lines
        .iter()
        .map(|line| {
            parse_fingerprint(line).ok_or_else(|| {
                error(format!(
                    "{line:?} is not a 64-hex key fingerprint, and the file is not a public key ({key_error})"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::SecretKey;

    #[test]
    fn fingerprints_are_read_in_every_accepted_form() {
        let fp = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&fp), Some("ab".repeat(32)));
        assert_eq!(
            parse_fingerprint(&format!(" sha256:{fp} ")),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_fingerprint(&"ab".repeat(31)), None);
        assert_eq!(parse_fingerprint(&format!("{}zz", "ab".repeat(31))), None);
        assert_eq!(parse_fingerprint(""), None);
    }

    #[test]
    fn trust_files_hold_a_key_or_fingerprint_lines() {
        let key = SecretKey::generate().public_key();
        for text in [key.to_pem(), key.to_minisign()] {
            assert_eq!(
                fingerprints_in_file("k", text.as_bytes()).unwrap(),
                vec![key.fingerprint()]
            );
        }
        let other = "cd".repeat(32);
        let list = format!("# release keys\n{}\n\n sha256:{other}\n", key.fingerprint());
        assert_eq!(
            fingerprints_in_file("list", list.as_bytes()).unwrap(),
            vec![key.fingerprint(), other]
        );
        for bad in ["", "# only a comment\n", "not a key\n"] {
            let err = fingerprints_in_file("bad.pub", bad.as_bytes()).unwrap_err();
            assert!(err.to_string().starts_with("bad.pub: "), "{err}");
        }
    }
}
