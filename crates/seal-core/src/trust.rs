//! Which signing keys a bundle may be signed by: the trust policy `serve` and `seal verify`
//! apply after the signature itself checks out.
//!
//! Works on values and bytes only. Reading key files, folders and environment variables is the
//! caller's job (sealserve's `trust` module), so this policy is the same whether the anchors came
//! from a flag, a mounted Secret or a test.

use crate::bundle::VerifyError;
use crate::manifest::is_lower_hex;
use crate::signature::PublicKey;
use crate::spec::BundleMetadata;
use std::fmt;
use std::str::FromStr;

/// A trust anchor that is neither a fingerprint nor a usable key file.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct TrustKeyError {
    /// Where the value came from (`--trusted-key "x"`, a file path).
    pub origin: String,
    pub reason: String,
}

/// How a verified bundle's signing key was accepted, for /info, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustState {
    /// The key is one the operator pinned.
    Pinned,
    /// Nothing was pinned and the operator waived that (`--allow-unpinned`): any correctly
    /// self-signed bundle would have been accepted.
    Unpinned,
}

impl fmt::Display for TrustState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrustState::Pinned => "pinned",
            TrustState::Unpinned => "unpinned",
        })
    }
}

/// A model at one revision, `<repo>@<40-hex commit>`: what `--expect-model` binds to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    pub model_id: String,
    pub revision: String,
}

impl FromStr for ModelRef {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (model_id, revision) = value.trim().rsplit_once('@').ok_or_else(|| {
            format!("{value:?} is not <repo>@<revision>, e.g. sentence-transformers/all-MiniLM-L6-v2@c9745ed1d9f207416be6d2e6f8de32d1f16199bf")
        })?;
        let revision = revision.to_ascii_lowercase();
        if model_id.is_empty() || model_id.chars().any(char::is_whitespace) {
            return Err(format!(
                "{value:?}: the repo id before '@' is empty or has spaces"
            ));
        }
        if !is_lower_hex(&revision, 40) {
            return Err(format!(
                "{value:?}: the revision must be the full 40-hex commit id the model is pinned to, not a branch, tag or short id"
            ));
        }
        Ok(Self {
            model_id: model_id.to_string(),
            revision,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.model_id, self.revision)
    }
}

/// Which signing keys may sign the bundle, and what the bundle must be.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// `None`: nothing pinned (an explicit waiver); `Some`: only these fingerprints, and an
    /// empty list accepts no key at all.
    pinned: Option<Vec<String>>,
    expect_model: Option<ModelRef>,
    expect_manifest: Option<String>,
}

impl TrustPolicy {
    /// No key pinned: any correctly self-signed bundle is accepted (integrity only). Meant for an
    /// operator's explicit waiver, never as a default.
    pub fn unpinned() -> Self {
        Self {
            pinned: None,
            expect_model: None,
            expect_manifest: None,
        }
    }

    /// Pins the keys with these fingerprints (lowercase hex sha256 of the raw key, see
    /// [`PublicKey::fingerprint`]). An empty list pins nothing and so accepts no key.
    pub fn pinned(fingerprints: impl IntoIterator<Item = String>) -> Self {
        let mut fingerprints: Vec<String> = fingerprints.into_iter().collect();
        fingerprints.sort();
        fingerprints.dedup();
        Self {
            pinned: Some(fingerprints),
            ..Self::unpinned()
        }
    }

    /// Also requires the bundle to carry this model at this revision.
    pub fn expecting_model(mut self, model: ModelRef) -> Self {
        self.expect_model = Some(model);
        self
    }

    /// Also requires the bundle's MANIFEST to have this sha256 (lowercase hex).
    pub fn expecting_manifest(mut self, sha256: String) -> Self {
        self.expect_manifest = Some(sha256);
        self
    }

    /// True when keys are pinned.
    pub fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// What a bundle accepted under this policy is trusted as.
    pub fn state(&self) -> TrustState {
        if self.is_pinned() {
            TrustState::Pinned
        } else {
            TrustState::Unpinned
        }
    }

    /// Applies the policy to a bundle whose signature and `sealserve.json` already verified:
    /// a pinned deployment never runs a dev build and only pinned keys; the `expect` bindings
    /// hold whether or not keys are pinned.
    pub(crate) fn check(
        &self,
        key: &PublicKey,
        metadata: &BundleMetadata,
        manifest_sha256: &str,
    ) -> Result<TrustState, VerifyError> {
        if let Some(pinned) = &self.pinned {
            let fingerprint = key.fingerprint();
            if metadata.dev_signed {
                return Err(VerifyError::DevSigned { fingerprint });
            }
            if !pinned.contains(&fingerprint) {
                return Err(VerifyError::Untrusted {
                    fingerprint,
                    trusted: pinned.join(", "),
                });
            }
        }
        if let Some(expected) = &self.expect_manifest {
            if expected != manifest_sha256 {
                return Err(VerifyError::Binding {
                    what: "MANIFEST sha256",
                    flag: "--expect-manifest",
                    expected: expected.clone(),
                    actual: manifest_sha256.to_string(),
                });
            }
        }
        if let Some(expected) = &self.expect_model {
            let actual = ModelRef {
                model_id: metadata.model_id.clone(),
                revision: metadata.revision.clone(),
            };
            if *expected != actual {
                return Err(VerifyError::Binding {
                    what: "model",
                    flag: "--expect-model",
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(self.state())
    }
}

/// A sha256 as operators write it (a key fingerprint, a MANIFEST digest): 64 hex digits, either
/// case, optionally prefixed with `sha256:`. Returns the canonical lowercase form, `None` for
/// anything else.
pub fn parse_sha256(value: &str) -> Option<String> {
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
            parse_sha256(line).ok_or_else(|| {
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
    fn sha256_values_are_read_in_every_accepted_form() {
        let fp = "AB".repeat(32);
        assert_eq!(parse_sha256(&fp), Some("ab".repeat(32)));
        assert_eq!(
            parse_sha256(&format!(" sha256:{fp} ")),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_sha256(&"ab".repeat(31)), None);
        assert_eq!(parse_sha256(&format!("{}zz", "ab".repeat(31))), None);
        assert_eq!(parse_sha256(""), None);
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

    #[test]
    fn model_refs_need_a_repo_and_a_full_commit() {
        let rev = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";
        let parsed: ModelRef = format!(
            "sentence-transformers/all-MiniLM-L6-v2@{}",
            rev.to_uppercase()
        )
        .parse()
        .unwrap();
        assert_eq!(parsed.model_id, "sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(parsed.revision, rev);
        assert_eq!(
            parsed.to_string(),
            format!("sentence-transformers/all-MiniLM-L6-v2@{rev}")
        );
        for bad in [
            "no-revision",
            "repo@main",
            "repo@c9745ed",
            &format!("@{rev}"),
            &format!("a b@{rev}"),
        ] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad}");
        }
    }
}
