//! Where trust anchors come from: the `--trusted-key` values of `serve` and `seal verify`,
//! turned into the byte-level policy of `seal_core::trust`. The key files named there are read
//! here, so the policy itself never touches the filesystem.

use crate::bundle::{TrustKeyError, TrustPolicy};
use seal_core::trust::{fingerprints_in_file, parse_fingerprint};

/// Builds the policy from `--trusted-key` values: 64-hex fingerprints (optionally `sha256:`
/// prefixed) or paths to PEM/minisign public key files (or files of fingerprints).
pub fn policy_from_values<S: AsRef<str>>(values: &[S]) -> Result<TrustPolicy, TrustKeyError> {
    let mut fingerprints = Vec::new();
    for value in values {
        let value = value.as_ref().trim();
        if value.is_empty() {
            continue;
        }
        if let Some(fingerprint) = parse_fingerprint(value) {
            fingerprints.push(fingerprint);
            continue;
        }
        let origin = format!("--trusted-key {value:?}");
        let bytes = std::fs::read(value).map_err(|e| TrustKeyError {
            origin: origin.clone(),
            reason: format!("not a 64-hex key fingerprint and not a readable key file ({e})"),
        })?;
        fingerprints.extend(fingerprints_in_file(&origin, &bytes)?);
    }
    Ok(if fingerprints.is_empty() {
        TrustPolicy::unpinned()
    } else {
        TrustPolicy::pinned(fingerprints)
    })
}
