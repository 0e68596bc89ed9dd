//! The exit codes of `serve` and `seal`: one table. `serve --help`'s "Exit codes" section and
//! `seal --help`'s note are generated from it, every refusal maps to its row here, and a test
//! checks that README's table says the same.
//!
//! Why one table: scripts and orchestrators branch on these numbers (`seal verify` and
//! `serve --verify-only` exit alike on purpose), so a code must never mean two things.

use crate::bundle::{TrustKeyError, VerifyError};
use crate::remote::RemoteError;
use crate::trust::TrustConfigError;

/// Why a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Success,
    Internal,
    Config,
    Device,
    Load,
    Serve,
    Harden,
    Malformed,
    Digest,
    Manifest,
    Signature,
    PublicKey,
    Untrusted,
    DevSigned,
    Unsigned,
    NotPinned,
    Binding,
    Fetch,
}

impl Exit {
    /// Every code, in table order.
    pub const ALL: [Exit; 18] = [
        Exit::Success,
        Exit::Internal,
        Exit::Config,
        Exit::Device,
        Exit::Load,
        Exit::Serve,
        Exit::Harden,
        Exit::Malformed,
        Exit::Digest,
        Exit::Manifest,
        Exit::Signature,
        Exit::PublicKey,
        Exit::Untrusted,
        Exit::DevSigned,
        Exit::Unsigned,
        Exit::NotPinned,
        Exit::Binding,
        Exit::Fetch,
    ];

    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Internal => 1,
            Exit::Config => 2,
            Exit::Device => 3,
            Exit::Load => 4,
            Exit::Serve => 5,
            Exit::Harden => 6,
            Exit::Malformed => 10,
            Exit::Digest => 11,
            Exit::Manifest => 12,
            Exit::Signature => 13,
            Exit::PublicKey => 14,
            Exit::Untrusted => 15,
            Exit::DevSigned => 16,
            Exit::Unsigned => 17,
            Exit::NotPinned => 18,
            Exit::Binding => 19,
            Exit::Fetch => 20,
        }
    }

    /// What the code means, as `serve --help` and README say it.
    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success (clean shutdown, or --verify-only passed)",
            Exit::Internal => "internal error",
            Exit::Config => "configuration error (bad flag or environment variable)",
            Exit::Device => {
                "requested device unavailable (e.g. --device cuda without a usable GPU)"
            }
            Exit::Load => "model could not be loaded or warmed up",
            Exit::Serve => "could not bind the listening address, or the server failed",
            Exit::Harden => {
                "hardening could not be applied, or a tracer (debugger, strace) is attached at start-up (--harden strict or basic)"
            }
            Exit::Malformed => {
                "bundle malformed, unreadable, or not in exactly one place (a second bundle marker in the file)"
            }
            Exit::Digest => "an embedded file does not match its MANIFEST digest",
            Exit::Manifest => "MANIFEST (or sealserve.json) invalid or not covering the bundle",
            Exit::Signature => "signature over MANIFEST invalid",
            Exit::PublicKey => "embedded public key invalid",
            Exit::Untrusted => "bundle signed by a key that is not trusted (--trusted-key, --trusted-keys-dir)",
            Exit::DevSigned => "bundle is dev-signed but trusted keys are configured",
            Exit::Unsigned => "bundle carries no signature",
            Exit::NotPinned => {
                "no trusted key configured (pin with --trusted-key or --trusted-keys-dir, or waive with --allow-unpinned)"
            }
            Exit::Binding => {
                "bundle is not the model or MANIFEST this deployment expects (--expect-model, --expect-manifest)"
            }
            Exit::Fetch => {
                "the --model-url bundle could not be fetched (network, TLS, access denied, not found)"
            }
        }
    }

    /// The exit code for an error that reached `seal`'s or `serve`'s edge: a bundle refusal
    /// keeps its own code, a bad trust anchor is a configuration error, anything else internal.
    pub fn of(error: &anyhow::Error) -> Exit {
        if let Some(refusal) = error.downcast_ref::<VerifyError>() {
            return Exit::from(refusal);
        }
        if let Some(trust) = error.downcast_ref::<TrustConfigError>() {
            return Exit::from(trust);
        }
        if error.downcast_ref::<TrustKeyError>().is_some() {
            return Exit::Config;
        }
        if let Some(remote) = error.downcast_ref::<RemoteError>() {
            return Exit::from(remote);
        }
        Exit::Internal
    }
}

impl From<&TrustConfigError> for Exit {
    fn from(error: &TrustConfigError) -> Self {
        match error {
            TrustConfigError::NotPinned => Exit::NotPinned,
            _ => Exit::Config,
        }
    }
}

impl From<&RemoteError> for Exit {
    fn from(error: &RemoteError) -> Self {
        match error {
            RemoteError::Config(_) => Exit::Config,
            RemoteError::Fetch(_) => Exit::Fetch,
            RemoteError::Refused(refusal) => Exit::from(refusal),
            RemoteError::Memory(_) => Exit::Internal,
        }
    }
}

impl From<&VerifyError> for Exit {
    fn from(refusal: &VerifyError) -> Self {
        match refusal {
            VerifyError::Malformed(_) => Exit::Malformed,
            VerifyError::DigestMismatch { .. } => Exit::Digest,
            VerifyError::Manifest(_) => Exit::Manifest,
            VerifyError::Signature { .. } => Exit::Signature,
            VerifyError::PublicKey { .. } => Exit::PublicKey,
            VerifyError::Untrusted { .. } => Exit::Untrusted,
            VerifyError::DevSigned { .. } => Exit::DevSigned,
            VerifyError::MissingSignature => Exit::Unsigned,
            VerifyError::Binding { .. } => Exit::Binding,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

// The codes as plain integers, for call sites that carry an `i32` (serve's `Fatal`).
/// [`Exit::Internal`].
pub const INTERNAL: i32 = Exit::Internal.code() as i32;
/// [`Exit::Config`].
pub const CONFIG: i32 = Exit::Config.code() as i32;
/// [`Exit::Device`].
pub const DEVICE: i32 = Exit::Device.code() as i32;
/// [`Exit::Load`].
pub const LOAD: i32 = Exit::Load.code() as i32;
/// [`Exit::Serve`].
pub const SERVE: i32 = Exit::Serve.code() as i32;
/// [`Exit::Harden`].
pub const HARDEN: i32 = Exit::Harden.code() as i32;

/// The "Exit codes" section of `serve --help`.
pub fn help() -> String {
    let mut out = String::from("Exit codes:");
    for exit in Exit::ALL {
        out.push_str(&format!("\n  {:>2}  {}", exit.code(), exit.meaning()));
    }
    out
}

/// The sentence `seal --help` ends with: which codes `seal verify` shares with `serve`.
pub fn seal_help() -> String {
    let refusals: Vec<u8> = Exit::ALL
        .iter()
        .map(|e| e.code())
        .filter(|c| (Exit::Malformed.code()..=Exit::Unsigned.code()).contains(c))
        .collect();
    format!(
        "`seal verify` exits with the same codes as `serve` ({}-{} for a refused bundle, {} without a trust anchor, {} for a bundle other than the expected one, {} for a bad trust setting, {} for anything else); see `serve --help`.",
        refusals.first().copied().unwrap_or_default(),
        refusals.last().copied().unwrap_or_default(),
        Exit::NotPinned.code(),
        Exit::Binding.code(),
        Exit::Config.code(),
        Exit::Internal.code()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_table_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted, "ALL lists each code once, ascending");
    }

    /// README's exit-code table is this table: same codes, same meanings, same order.
    #[test]
    fn readme_table_matches() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let section = readme
            .split("### Exit codes")
            .nth(1)
            .expect("README has an Exit codes section");
        let rows: Vec<(u8, String)> = section
            .lines()
            .skip_while(|l| !l.starts_with("| code"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].parse().expect("code"), cells[1].replace('`', ""))
            })
            .collect();
        let expected: Vec<(u8, String)> = Exit::ALL
            .iter()
            .map(|e| (e.code(), e.meaning().to_string()))
            .collect();
        assert_eq!(rows, expected);
    }
}
