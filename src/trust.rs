//! Where trust anchors come from: the trust flags `serve` and `seal verify` share
//! (`--trusted-key`, `--trusted-keys-dir`, `--allow-unpinned`, `--expect-*`), turned into the
//! byte-level policy of `seal_core::trust`. Key files are read here, so the policy itself never
//! touches the filesystem.
//!
//! Fail closed: with no anchor and no explicit waiver there is no policy at all
//! ([`TrustConfigError::NotPinned`], its own exit code), and an empty or blank value is a
//! configuration error, never "unpinned".

use crate::bundle::{TrustKeyError, TrustPolicy};
use clap::Args;
pub use seal_core::trust::ModelRef;
use seal_core::trust::{fingerprints_in_file, parse_sha256};
use std::path::{Path, PathBuf};

/// The trust gauge's name (kept with the other metric names in `telemetry`).
pub use crate::telemetry::TRUST as TRUST_METRIC;

/// The trust flags, flattened into `serve`'s and `seal verify`'s arguments.
// The field docs are `--help` text, where placeholders like `<repo>` are meant literally.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Trusted signing keys: 64-hex fingerprints or PEM/minisign public key files (or files of fingerprints), comma separated; any other key, and every dev-signed bundle, is refused
    #[arg(
        long = "trusted-key",
        env = "SEALSERVE_TRUSTED_KEYS",
        value_delimiter = ','
    )]
    pub trusted_keys: Vec<String>,

    /// Folder of trusted keys, e.g. a mounted Kubernetes Secret or ConfigMap: every regular, non-hidden file is a public key or a list of fingerprints
    #[arg(long, env = "SEALSERVE_TRUSTED_KEYS_DIR")]
    pub trusted_keys_dir: Option<PathBuf>,

    /// Start without a pinned key: accept any correctly self-signed bundle (warns on every start; meant for local dev builds)
    #[arg(
        long,
        env = "SEALSERVE_ALLOW_UNPINNED",
        // The variable takes 1/0, true/false, yes/no, on/off; anything else is an error, never
        // a silent waiver.
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unpinned: bool,

    /// Refuse any bundle but this model at this revision: <repo>@<40-hex commit>
    #[arg(long, env = "SEALSERVE_EXPECT_MODEL")]
    pub expect_model: Option<String>,

    /// Refuse any bundle whose MANIFEST has another sha256 (as `seal inspect` and --verify-only print it)
    #[arg(long, env = "SEALSERVE_EXPECT_MANIFEST")]
    pub expect_manifest: Option<String>,
}

/// Why the trust flags do not make a policy.
#[derive(Debug, thiserror::Error)]
pub enum TrustConfigError {
    /// No anchor and no waiver.
    #[error("no trusted key configured: pin the release key with --trusted-key <fingerprint|key file> or --trusted-keys-dir <folder> (SEALSERVE_TRUSTED_KEYS / SEALSERVE_TRUSTED_KEYS_DIR), or run a local dev build knowingly with --allow-unpinned (SEALSERVE_ALLOW_UNPINNED=1)")]
    NotPinned,
    /// A flag or variable was given an empty or blank value.
    #[error("{0} is set but empty; give a value or leave it unset")]
    Blank(&'static str),
    #[error(transparent)]
    Key(#[from] TrustKeyError),
    #[error("--trusted-keys-dir {dir}: {reason}")]
    Dir { dir: String, reason: String },
    #[error("--expect-model / SEALSERVE_EXPECT_MODEL: {0}")]
    ExpectModel(String),
    #[error("--expect-manifest / SEALSERVE_EXPECT_MANIFEST {0:?} is not a 64-hex sha256")]
    ExpectManifest(String),
}

const TRUSTED_KEYS: &str = "--trusted-key / SEALSERVE_TRUSTED_KEYS";
const TRUSTED_KEYS_DIR: &str = "--trusted-keys-dir / SEALSERVE_TRUSTED_KEYS_DIR";
const EXPECT_MODEL: &str = "--expect-model / SEALSERVE_EXPECT_MODEL";
const EXPECT_MANIFEST: &str = "--expect-manifest / SEALSERVE_EXPECT_MANIFEST";

fn non_blank<'a>(value: &'a str, name: &'static str) -> Result<&'a str, TrustConfigError> {
    let value = value.trim();
    if value.is_empty() {
        Err(TrustConfigError::Blank(name))
    } else {
        Ok(value)
    }
}

/// True when the environment variable is set to nothing but whitespace: clap may treat an empty
/// variable as absent, but a deployment that sets one meant to pin something.
fn blank_env(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v.to_string_lossy().trim().is_empty())
}

impl TrustArgs {
    /// The policy these flags ask for, with every key file and folder read.
    pub fn policy(&self) -> Result<TrustPolicy, TrustConfigError> {
        for (unset, var, name) in [
            (
                self.trusted_keys.is_empty(),
                "SEALSERVE_TRUSTED_KEYS",
                TRUSTED_KEYS,
            ),
            (
                self.trusted_keys_dir.is_none(),
                "SEALSERVE_TRUSTED_KEYS_DIR",
                TRUSTED_KEYS_DIR,
            ),
            (
                self.expect_model.is_none(),
                "SEALSERVE_EXPECT_MODEL",
                EXPECT_MODEL,
            ),
            (
                self.expect_manifest.is_none(),
                "SEALSERVE_EXPECT_MANIFEST",
                EXPECT_MANIFEST,
            ),
        ] {
            if unset && blank_env(var) {
                return Err(TrustConfigError::Blank(name));
            }
        }
        let mut fingerprints = Vec::new();
        for value in &self.trusted_keys {
            fingerprints.extend(trusted_key(non_blank(value, TRUSTED_KEYS)?)?);
        }
        if let Some(dir) = &self.trusted_keys_dir {
            non_blank(&dir.to_string_lossy(), TRUSTED_KEYS_DIR)?;
            fingerprints.extend(trusted_keys_dir(dir)?);
        }
        let expect_model = self
            .expect_model
            .as_deref()
            .map(|v| {
                non_blank(v, EXPECT_MODEL)?
                    .parse::<ModelRef>()
                    .map_err(TrustConfigError::ExpectModel)
            })
            .transpose()?;
        let expect_manifest = self
            .expect_manifest
            .as_deref()
            .map(|v| {
                let v = non_blank(v, EXPECT_MANIFEST)?;
                parse_sha256(v).ok_or_else(|| TrustConfigError::ExpectManifest(v.to_string()))
            })
            .transpose()?;
        let anchored = !self.trusted_keys.is_empty() || self.trusted_keys_dir.is_some();
        let mut policy = match (anchored, self.allow_unpinned) {
            (true, _) => TrustPolicy::pinned(fingerprints),
            (false, true) => TrustPolicy::unpinned(),
            (false, false) => return Err(TrustConfigError::NotPinned),
        };
        if let Some(model) = expect_model {
            policy = policy.expecting_model(model);
        }
        if let Some(sha256) = expect_manifest {
            policy = policy.expecting_manifest(sha256);
        }
        Ok(policy)
    }
}

/// One `--trusted-key` value: a fingerprint, else a key (or fingerprint list) file.
fn trusted_key(value: &str) -> Result<Vec<String>, TrustKeyError> {
    if let Some(fingerprint) = parse_sha256(value) {
        return Ok(vec![fingerprint]);
    }
    let origin = format!("--trusted-key {value:?}");
    let bytes = std::fs::read(value).map_err(|e| TrustKeyError {
        origin: origin.clone(),
        reason: format!("not a 64-hex key fingerprint and not a readable key file ({e})"),
    })?;
    fingerprints_in_file(&origin, &bytes)
}

/// Every regular, non-hidden file of `dir` (symlinks followed: a Kubernetes Secret mount shows
/// `name -> ..data/name`, and its `..data`/`..<timestamp>` entries are hidden), each a key or a
/// list of fingerprints. An empty or unreadable folder is an error: a mount that did not happen
/// must not read as "nothing to pin".
fn trusted_keys_dir(dir: &Path) -> Result<Vec<String>, TrustConfigError> {
    let dir_error = |reason: String| TrustConfigError::Dir {
        dir: dir.display().to_string(),
        reason,
    };
    let listing = std::fs::read_dir(dir).map_err(|e| dir_error(format!("cannot list it: {e}")))?;
    let mut names: Vec<std::ffi::OsString> = listing
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| dir_error(format!("cannot list it: {e}")))?;
    names.sort();
    let mut fingerprints = Vec::new();
    let mut files = 0;
    for name in names
        .iter()
        .filter(|n| !n.to_string_lossy().starts_with('.'))
    {
        let path = dir.join(name);
        let metadata =
            std::fs::metadata(&path).map_err(|e| dir_error(format!("{}: {e}", path.display())))?;
        if !metadata.is_file() {
            continue;
        }
        let bytes =
            std::fs::read(&path).map_err(|e| dir_error(format!("{}: {e}", path.display())))?;
        fingerprints.extend(fingerprints_in_file(&path.display().to_string(), &bytes)?);
        files += 1;
    }
    if files == 0 {
        return Err(dir_error(
            "holds no key file (hidden names such as ..data are skipped); mount the trusted keys there"
                .into(),
        ));
    }
    Ok(fingerprints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::TrustState;
    use clap::Parser;
    use seal_core::signature::SecretKey;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        trust: TrustArgs,
    }

    fn parse(args: &[&str]) -> TrustArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parse").trust
    }

    #[test]
    fn no_anchor_and_no_waiver_is_not_pinned() {
        assert!(matches!(
            parse(&[]).policy(),
            Err(TrustConfigError::NotPinned)
        ));
        let waived = parse(&["--allow-unpinned"]).policy().unwrap();
        assert_eq!(waived.state(), TrustState::Unpinned);
    }

    #[test]
    fn empty_and_blank_values_are_configuration_errors_never_unpinned() {
        for args in [
            &["--trusted-key", ""][..],
            &["--trusted-key", ","],
            &["--trusted-key", " "],
            &["--trusted-key", "", "--allow-unpinned"],
            &["--expect-model", " ", "--allow-unpinned"],
            &["--expect-manifest", "", "--allow-unpinned"],
        ] {
            let err = parse(args).policy().unwrap_err();
            assert!(matches!(err, TrustConfigError::Blank(_)), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_keys_folder_pins_every_visible_file_and_skips_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            SecretKey::generate().public_key(),
            SecretKey::generate().public_key(),
        );
        // Like a Kubernetes Secret mount: visible names link into a hidden ..data folder.
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/release.pub"), a.to_pem()).unwrap();
        std::os::unix::fs::symlink("..data/release.pub", dir.path().join("release.pub")).unwrap();
        std::fs::write(
            dir.path().join("fingerprints"),
            format!("{}\n", b.fingerprint()),
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden"), "not a key").unwrap();
        let args = parse(&["--trusted-keys-dir", dir.path().to_str().unwrap()]);
        let policy = args.policy().unwrap();
        assert_eq!(policy.state(), TrustState::Pinned);
        assert_eq!(
            trusted_keys_dir(dir.path()).unwrap(),
            vec![b.fingerprint(), a.fingerprint()]
        );

        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join(".only-hidden"), "x").unwrap();
        for dir in [empty.path().to_path_buf(), empty.path().join("missing")] {
            let err = parse(&["--trusted-keys-dir", dir.to_str().unwrap()])
                .policy()
                .unwrap_err();
            assert!(matches!(err, TrustConfigError::Dir { .. }), "{err}");
        }
        std::fs::write(empty.path().join("junk"), "not a key\n").unwrap();
        let err = parse(&["--trusted-keys-dir", empty.path().to_str().unwrap()])
            .policy()
            .unwrap_err();
        assert!(matches!(err, TrustConfigError::Key(_)), "{err}");
    }

    #[test]
    fn expectations_must_be_well_formed() {
        let err = parse(&["--allow-unpinned", "--expect-model", "repo@main"])
            .policy()
            .unwrap_err();
        assert!(matches!(err, TrustConfigError::ExpectModel(_)), "{err}");
        let err = parse(&["--allow-unpinned", "--expect-manifest", "abc"])
            .policy()
            .unwrap_err();
        assert!(matches!(err, TrustConfigError::ExpectManifest(_)), "{err}");
    }
}
