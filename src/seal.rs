//! What the `seal` command does, as functions: make a release key pair, compute the MANIFEST a
//! release signer signs offline, sign it (and release files such as the `serve` binary itself),
//! verify, inspect or export the bundle inside a built `serve` binary (or an exported copy),
//! publish a bundle folder to S3 or an OCI registry, and verify a published bundle where it lives.
//!
//! Every subcommand that reads a binary finds its bundle with `placement::locate`, the rule
//! `serve` applies to its own executable: the `.sealserve` section, and refused if the bundle
//! marker occurs anywhere else in the file. So what `seal` reports is what `serve` runs.
//!
//! Why a library module: `src/bin/seal.rs` only parses flags and prints, so every rule here
//! (which files a MANIFEST covers, key file permissions, which exit code a refusal gets) is tested
//! without spawning processes. Verification itself is not reimplemented: binaries and exported
//! folders both go through `Bundle::verify`, the code `serve` runs at startup.

pub mod pin;

use crate::bundle::{
    self, Bundle, HeapCopies, TrustPolicy, VerifiedBundle, MANIFEST_FILE, PUBLIC_KEY_FILE,
    PUBLIC_KEY_MINISIGN_FILE, SIGNATURE_MINISIGN_FILE, SIGNATURE_RAW_FILE, SIGNING_FILES,
};
use crate::exit::Exit;
use crate::manifest::{is_plain_file_name, sha256_hex, Manifest};
use crate::placement::{self, Placement};
use crate::remote;
use crate::signature::{signing_timestamp, PublicKey, SecretKey};
use crate::source::read_optional;
use crate::spec::{BuildInfo, BundleMetadata, ModelSpec, METADATA_FILE};
use crate::trust::TrustArgs;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The private key file `seal keygen` writes; never embedded, never needed by the build.
pub const SECRET_KEY_FILE: &str = "model.key";

/// The sealserve version a release MANIFEST names (`sealserve.json`'s `sealserve_version`): the
/// version of this `seal`, which must be the version of the `serve` build it signs for.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The error chain on one line: stderr gets exactly one line per failure, even when a cause
/// (a TOML parse error, say) spans several.
pub fn error_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A freshly written key pair.
#[derive(Debug)]
pub struct KeyPair {
    pub fingerprint: String,
    pub key_id: String,
    pub written: Vec<PathBuf>,
}

/// Writes `model.key` (PKCS#8 PEM, created 0600 so it is never readable by others, not even
/// briefly), `model.pub` (PKIX PEM, for openssl/cosign) and `model.pub.minisign`. Refuses to
/// replace an existing pair unless `force`: losing a release key is not undoable.
pub fn keygen(out: &Path, force: bool) -> Result<KeyPair> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let secret_path = out.join(SECRET_KEY_FILE);
    let pem_path = out.join(PUBLIC_KEY_FILE);
    let minisign_path = out.join(PUBLIC_KEY_MINISIGN_FILE);
    let paths = [&secret_path, &pem_path, &minisign_path];
    if !force {
        if let Some(existing) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
            bail!(
                "{} already exists; pass --force to replace the key pair (the old key is lost)",
                existing.display()
            );
        }
    }
    let secret = SecretKey::generate();
    let public = secret.public_key();
    write_secret(&secret_path, secret.to_pkcs8_pem().as_bytes(), force)?;
    for (path, text) in [
        (&pem_path, public.to_pem()),
        (&minisign_path, public.to_minisign()),
    ] {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(KeyPair {
        fingerprint: public.fingerprint(),
        key_id: public.key_id_hex(),
        written: paths.iter().map(|p| p.to_path_buf()).collect(),
    })
}

/// Creates the file with mode 0600 from the start. An existing file is removed first (only with
/// `force`) because the mode given at open applies to newly created files only.
fn write_secret(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The MANIFEST for `dir`: for a model folder (one holding model.toml) the one a release build
/// of this sealserve version embeds, from the pins alone; for any other folder (an exported bundle, a release staging
/// folder) the sha256 of every regular file, leaving out signing material so the MANIFEST never
/// has to cover its own signature.
pub fn manifest_for_dir(dir: &Path) -> Result<Vec<u8>> {
    if dir.join("model.toml").is_file() {
        return Ok(ModelSpec::load(dir)?.manifest_bytes(&BuildInfo::release(VERSION)));
    }
    let mut manifest = Manifest::new();
    let listing =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in listing {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let file_type = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if !file_type.is_file() {
            continue;
        }
        let name = entry.file_name();
        let name = name
            .to_str()
            .filter(|n| is_plain_file_name(n))
            .ok_or_else(|| {
                anyhow!(
                    "{}: a MANIFEST can only list plain file names (letters, digits, '.', '_', '-'); rename or move it",
                    entry.path().display()
                )
            })?;
        if is_signing_material(name) {
            continue;
        }
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("cannot read {}", entry.path().display()))?;
        manifest.insert_bytes(name, &bytes);
    }
    if manifest.is_empty() {
        bail!("{} holds no files to list", dir.display());
    }
    Ok(manifest.to_bytes())
}

/// MANIFEST*, signatures, public keys and private keys: what signs the files, not what is
/// signed.
fn is_signing_material(name: &str) -> bool {
    name.starts_with(MANIFEST_FILE)
        || name.ends_with(".sig")
        || name.ends_with(".minisig")
        || name.contains(".pub")
        || name.ends_with(".key")
}

/// What `seal sign` wrote.
#[derive(Debug)]
pub struct Signed {
    pub fingerprint: String,
    pub key_id: String,
    pub written: Vec<PathBuf>,
}

/// Signs a MANIFEST with a PKCS#8 key, writing `MANIFEST.sig` (raw base64: cosign, openssl) and
/// `MANIFEST.minisig` (minisign legacy, with trusted comment) next to it or into `out_dir`.
/// Refuses a MANIFEST that is not canonical: `serve` would refuse it anyway, after the release.
pub fn sign(
    key_path: &Path,
    manifest_path: &Path,
    out_dir: Option<&Path>,
    timestamp: Option<u64>,
) -> Result<Signed> {
    let key = read_secret_key(key_path)?;
    let manifest = std::fs::read(manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    Manifest::parse(&manifest)
        .with_context(|| format!("{}: refusing to sign", manifest_path.display()))?;
    let out_dir = out_dir.map_or_else(|| parent_dir(manifest_path), Path::to_path_buf);
    let written = write_signatures(
        &key,
        &manifest,
        manifest_path,
        &out_dir,
        [SIGNATURE_RAW_FILE, SIGNATURE_MINISIGN_FILE].map(String::from),
        timestamp,
    )?;
    Ok(signed_by(&key, written))
}

/// Signs release files (the `serve` and `seal` binaries, `SHA256SUMS`) with a PKCS#8 key,
/// writing `<file>.sig` (raw Ed25519, base64: `cosign verify-blob`, openssl) and
/// `<file>.minisig` (minisign) next to each file or into `out_dir`.
pub fn sign_files(
    key_path: &Path,
    files: &[PathBuf],
    out_dir: Option<&Path>,
    timestamp: Option<u64>,
) -> Result<Signed> {
    let key = read_secret_key(key_path)?;
    let mut written = Vec::new();
    for path in files {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = file_name(path)?;
        let out_dir = out_dir.map_or_else(|| parent_dir(path), Path::to_path_buf);
        written.extend(write_signatures(
            &key,
            &bytes,
            path,
            &out_dir,
            [format!("{name}.sig"), format!("{name}.minisig")],
            timestamp,
        )?);
    }
    Ok(signed_by(&key, written))
}

fn read_secret_key(path: &Path) -> Result<SecretKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    SecretKey::from_pkcs8_pem(&text).with_context(|| path.display().to_string())
}

fn file_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))
}

fn signed_by(key: &SecretKey, written: Vec<PathBuf>) -> Signed {
    let public = key.public_key();
    Signed {
        fingerprint: public.fingerprint(),
        key_id: public.key_id_hex(),
        written,
    }
}

/// Signs `message` (the contents of `path`) and writes the raw and minisign encodings under
/// `names` into `out_dir`; the minisign trusted comment names the file.
fn write_signatures(
    key: &SecretKey,
    message: &[u8],
    path: &Path,
    out_dir: &Path,
    names: [String; 2],
    timestamp: Option<u64>,
) -> Result<Vec<PathBuf>> {
    let signature = key.sign(
        message,
        file_name(path)?,
        timestamp.unwrap_or_else(signing_timestamp),
    );
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let [raw_name, minisign_name] = names;
    let encodings = [
        (raw_name, signature.to_raw_base64()),
        (minisign_name, signature.to_minisign()),
    ];
    let mut written = Vec::new();
    for (name, text) in encodings {
        let text = text.ok_or_else(|| anyhow!("cannot encode the signature as {name}"))?;
        let path = out_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The fingerprint (what `--trusted-key` pins) of each key in a public key file (PEM, minisign,
/// base64), or each fingerprint a trust file lists: the value to pin, taken from the key file
/// itself and never from a binary being checked.
pub fn fingerprints(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(seal_core::trust::fingerprints_in_file(
        &path.display().to_string(),
        &bytes,
    )?)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A `serve` binary (or bundle file) opened, and where its one bundle lies.
fn open_bundle(path: &Path) -> Result<(File, Placement)> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let placement = placement::locate(&file).with_context(|| path.display().to_string())?;
    Ok((file, placement))
}

/// Verifies a `serve` binary (the bundle inside it), a bundle file or an exported bundle folder,
/// with the same checks, trust flags and exit codes as `serve` at startup. Returns the one-line
/// summary.
pub fn verify(target: &Path, trust: &TrustArgs) -> Result<String> {
    let policy = trust.policy()?;
    let copies = HeapCopies::default();
    let context = || target.display().to_string();
    let verified = if target.is_dir() {
        let bytes = bundle_from_dir(target)?;
        let bundle = Bundle::parse(&bytes).with_context(context)?;
        bundle.verify(&policy, &mut &copies).with_context(context)?
    } else {
        let (file, placement) = open_bundle(target)?;
        let bundle = Bundle::read(placement.source(&file)).with_context(context)?;
        bundle.verify(&policy, &mut &copies).with_context(context)?
    };
    Ok(format!("{}: {}", target.display(), summary(&verified)))
}

/// One line saying what a verified bundle carries and how long hashing took.
pub fn summary(verified: &VerifiedBundle) -> String {
    format!(
        "OK {} @ {}: {} files, {} MiB hashed in {:.1} ms, manifest sha256 {}, key {} ({}){}",
        verified.metadata.model_id,
        verified.metadata.revision,
        verified.files.len(),
        verified.bytes_hashed / (1 << 20),
        verified.hash_time.as_secs_f64() * 1000.0,
        verified.manifest_sha256,
        verified.key_fingerprint,
        verified.trust,
        if verified.dev_signed {
            " (DEV-SIGNED)"
        } else {
            ""
        }
    )
}

/// Reassembles an exported folder into bundle bytes so it is checked by `Bundle::verify` itself
/// rather than by a second implementation. Takes the signing files and exactly the files
/// MANIFEST lists (other files, like the `MANIFEST.sig.bin` the openssl check leaves, are not
/// part of the bundle); a listed file that is missing is reported by verification.
fn bundle_from_dir(dir: &Path) -> Result<Vec<u8>> {
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let path = dir.join(name);
        read_optional(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut entries = Vec::new();
    for name in SIGNING_FILES {
        if let Some(bytes) = read(name)? {
            entries.push((name.to_string(), bytes));
        }
    }
    // An unparsable MANIFEST contributes no files: verification then reports the signature or
    // the MANIFEST, in the same order as for a binary.
    let listed: Vec<String> = entries
        .iter()
        .find(|(name, _)| name == MANIFEST_FILE)
        .and_then(|(_, bytes)| Manifest::parse(bytes).ok())
        .map(|m| m.entries().map(|(name, _)| name.to_string()).collect())
        .unwrap_or_default();
    for name in listed {
        if let Some(bytes) = read(&name)? {
            entries.push((name, bytes));
        }
    }
    let mut out = Vec::new();
    bundle::write_bundle(&mut out, &entries)
        .with_context(|| format!("cannot assemble {}", dir.display()))?;
    Ok(out)
}

/// What `seal publish` did.
#[derive(Debug)]
pub struct Published {
    /// The `--model-url` that serves the published bundle.
    pub url: String,
    /// The folder's verification line.
    pub verified: String,
    pub files: usize,
}

/// Verifies a bundle folder exactly as `seal verify` does, then uploads it to S3 or pushes it as
/// an OCI artifact (see `remote::publish`). Nothing `serve` would refuse is published.
pub fn publish(
    dir: &Path,
    destination: &str,
    trust: &TrustArgs,
    ca_file: Option<&Path>,
) -> Result<Published> {
    let destination: remote::publish::Destination = destination.parse()?;
    if !dir.is_dir() {
        bail!("{} is not a folder; publish a folder made by `seal export` (or a signed release folder)", dir.display());
    }
    let verified = verify(dir, trust)?;
    let files = bundle_files(dir)?;
    let url = runtime()?.block_on(remote::publish::publish(&files, &destination, ca_file))?;
    Ok(Published {
        url,
        verified,
        files: files.len(),
    })
}

/// Fetches the bundle at `url` into memory and verifies it exactly as `serve --model-url` does
/// (same checks, same exit codes, same trust flags). Returns the one-line summary.
pub fn verify_url(url: &str, trust: &TrustArgs, options: &remote::FetchOptions) -> Result<String> {
    let url: remote::ModelUrl = url.parse().map_err(remote::RemoteError::from)?;
    let policy = trust.policy()?;
    let fetched = runtime()?.block_on(remote::fetch(&url, &policy, options))?;
    Ok(format!(
        "{url}: {} ({} MiB/s over {} connection(s), {} retries)",
        summary(&fetched.verified),
        fetched.report.throughput_mib_s,
        fetched.report.connections,
        fetched.report.retries
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The files of a verified bundle folder, by name: the signing files present and exactly what
/// MANIFEST lists.
fn bundle_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = std::fs::read(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&manifest)?;
    let signing = SIGNING_FILES
        .iter()
        .copied()
        .filter(|name| dir.join(name).is_file());
    let listed = manifest.entries().map(|(name, _)| name);
    Ok(signing
        .chain(listed)
        .map(|name| (name.to_string(), dir.join(name)))
        .collect())
}

/// One entry of an inspected bundle.
#[derive(Debug, Serialize)]
pub struct InspectedFile {
    pub name: String,
    pub size: u64,
    /// The digest MANIFEST records for it; `None` for signing material and for anything
    /// MANIFEST does not list.
    pub sha256: Option<String>,
}

/// What a bundle claims to be, read without trusting it; `verified` says whether the claims hold.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub model_id: Option<String>,
    pub revision: Option<String>,
    /// What the (signed) sealserve.json says; `None` when it cannot be read.
    pub dev_signed: Option<bool>,
    pub sealserve_version: Option<String>,
    pub key_fingerprint: Option<String>,
    pub minisign_key_id: Option<String>,
    pub manifest_sha256: Option<String>,
    pub files: Vec<InspectedFile>,
    pub verified: bool,
    /// Why verification failed, and the exit code `serve` would stop with.
    pub verify_error: Option<String>,
    pub verify_exit_code: Option<u8>,
}

/// Reads a binary's bundle for display. A file whose one bundle cannot be found is an error;
/// every other defect shows up as `verified: false` with its reason.
pub fn inspect(binary: &Path) -> Result<Inspection> {
    let (file, placement) = open_bundle(binary)?;
    let context = || binary.display().to_string();
    let bundle = Bundle::read(placement.source(&file)).with_context(context)?;
    let read = |name: &str| bundle.read_entry(name).with_context(context);
    let metadata = read(METADATA_FILE)?.and_then(|b| BundleMetadata::from_bytes(&b).ok());
    let manifest_bytes = read(MANIFEST_FILE)?;
    let manifest = manifest_bytes
        .as_deref()
        .and_then(|b| Manifest::parse(b).ok());
    let mut key = None;
    for name in [PUBLIC_KEY_MINISIGN_FILE, PUBLIC_KEY_FILE] {
        key = key.or(read(name)?.and_then(|b| PublicKey::parse(&b).ok()));
    }
    let files = bundle
        .entries()
        .iter()
        .map(|entry| InspectedFile {
            name: entry.name.clone(),
            size: entry.len,
            sha256: manifest
                .as_ref()
                .and_then(|m| m.digest(&entry.name))
                .map(str::to_string),
        })
        .collect();
    let copies = HeapCopies::default();
    let outcome = bundle.verify(&TrustPolicy::unpinned(), &mut &copies);
    Ok(Inspection {
        model_id: metadata.as_ref().map(|m| m.model_id.clone()),
        revision: metadata.as_ref().map(|m| m.revision.clone()),
        dev_signed: metadata.as_ref().map(|m| m.dev_signed),
        sealserve_version: metadata.as_ref().map(|m| m.sealserve_version.clone()),
        key_fingerprint: key.as_ref().map(PublicKey::fingerprint),
        minisign_key_id: key.as_ref().map(PublicKey::key_id_hex),
        manifest_sha256: manifest_bytes.as_deref().map(sha256_hex),
        files,
        verified: outcome.is_ok(),
        verify_exit_code: outcome.as_ref().err().map(|e| Exit::from(e).code()),
        verify_error: outcome.err().map(|e| e.to_string()),
    })
}

impl Inspection {
    /// The human-readable report `seal inspect` prints.
    pub fn to_text(&self) -> String {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unreadable)".into());
        let signed = match self.dev_signed {
            Some(true) => "dev-signed (ephemeral build key; not for production)",
            Some(false) => "release key",
            None => "(unreadable)",
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "model:           {}", or_unknown(&self.model_id));
        let _ = writeln!(out, "revision:        {}", or_unknown(&self.revision));
        let _ = writeln!(out, "signed:          {signed}");
        let _ = writeln!(
            out,
            "built by:        sealserve {}",
            or_unknown(&self.sealserve_version)
        );
        let _ = writeln!(
            out,
            "key fingerprint: {}",
            or_unknown(&self.key_fingerprint)
        );
        let _ = writeln!(
            out,
            "minisign key id: {}",
            or_unknown(&self.minisign_key_id)
        );
        let _ = writeln!(
            out,
            "manifest sha256: {}",
            or_unknown(&self.manifest_sha256)
        );
        out.push_str("files:\n");
        for file in &self.files {
            let digest = match &file.sha256 {
                Some(d) => d.as_str(),
                None if SIGNING_FILES.contains(&file.name.as_str()) => "(signing material)",
                None => "(not in MANIFEST)",
            };
            let _ = writeln!(out, "  {:>10}  {digest}  {}", file.size, file.name);
        }
        match (&self.verify_error, self.verify_exit_code) {
            (Some(reason), Some(code)) => {
                let _ = writeln!(out, "verified:        no ({reason}; exit code {code})");
            }
            _ => out.push_str(
                "verified:        yes (every digest and the signature check out; the key is not pinned here, compare the fingerprint)\n",
            ),
        }
        out
    }
}

/// What `seal export` wrote, and the commands that re-check it with other people's tools.
#[derive(Debug)]
pub struct Export {
    pub written: Vec<PathBuf>,
    pub commands: Vec<String>,
}

/// Writes every bundle entry of `binary` into `dir`. Export does not require the bundle to
/// verify: its purpose is letting others check it independently.
pub fn export(binary: &Path, dir: &Path) -> Result<Export> {
    let (file, placement) = open_bundle(binary)?;
    let bundle =
        Bundle::read(placement.source(&file)).with_context(|| binary.display().to_string())?;
    let written = bundle
        .export(dir)
        .with_context(|| format!("cannot export into {}", dir.display()))?;
    let has = |name: &str| bundle.entries().iter().any(|e| e.name == name);
    let mut commands = vec![
        format!("cd {}", dir.display()),
        format!("sha256sum -c {MANIFEST_FILE}"),
    ];
    if has(SIGNATURE_MINISIGN_FILE) && has(PUBLIC_KEY_MINISIGN_FILE) {
        commands.push(format!(
            "minisign -Vm {MANIFEST_FILE} -x {SIGNATURE_MINISIGN_FILE} -p {PUBLIC_KEY_MINISIGN_FILE}"
        ));
    }
    if has(SIGNATURE_RAW_FILE) && has(PUBLIC_KEY_FILE) {
        commands.push(format!(
            "base64 -d {SIGNATURE_RAW_FILE} > {SIGNATURE_RAW_FILE}.bin && openssl pkeyutl -verify -pubin -inkey {PUBLIC_KEY_FILE} -rawin -in {MANIFEST_FILE} -sigfile {SIGNATURE_RAW_FILE}.bin"
        ));
        commands.push(format!(
            "cosign verify-blob --key {PUBLIC_KEY_FILE} --signature {SIGNATURE_RAW_FILE} --insecure-ignore-tlog {MANIFEST_FILE}"
        ));
    }
    Ok(Export { written, commands })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::VerifyError;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_creates_a_private_key_only_the_owner_can_read_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let first = keygen(dir.path(), false).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "model.key mode {mode:o}");
        let pem = std::fs::read(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(
            PublicKey::parse(&pem).unwrap().fingerprint(),
            first.fingerprint
        );

        let refused = keygen(dir.path(), false).unwrap_err();
        assert!(error_line(&refused).contains("--force"), "{refused:#}");
        let still = std::fs::read(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(still, pem, "a refused keygen must leave the old pair alone");

        // A loose mode on the old file must not survive --force.
        std::fs::set_permissions(
            dir.path().join(SECRET_KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let second = keygen(dir.path(), true).unwrap();
        assert_ne!(second.fingerprint, first.fingerprint);
        let mode = std::fs::metadata(dir.path().join(SECRET_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "model.key mode after --force {mode:o}");
    }

    #[test]
    fn plain_folder_manifest_skips_signing_material_and_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("b.bin", "bee"),
            ("a.txt", "ay"),
            ("MANIFEST", "x"),
            ("MANIFEST.sig.bin", "x"),
            ("MANIFEST.sig", "x"),
            ("other.minisig", "x"),
            ("model.pub", "x"),
            ("model.pub.minisign", "x"),
            ("model.key", "x"),
        ] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let manifest = manifest_for_dir(dir.path()).unwrap();
        let expected = format!(
            "{}  a.txt\n{}  b.bin\n",
            sha256_hex(b"ay"),
            sha256_hex(b"bee")
        );
        assert_eq!(String::from_utf8(manifest).unwrap(), expected);

        std::fs::write(dir.path().join("bad name.txt"), "x").unwrap();
        let err = manifest_for_dir(dir.path()).unwrap_err();
        assert!(error_line(&err).contains("bad name.txt"), "{err:#}");
    }

    #[test]
    fn model_folder_manifest_is_the_one_build_rs_embeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
        let spec = ModelSpec::load(&dir).unwrap();
        let manifest = manifest_for_dir(&dir).unwrap();
        let release = BuildInfo::release(VERSION);
        assert_eq!(manifest, spec.manifest_bytes(&release));
        let parsed = Manifest::parse(&manifest).unwrap();
        assert_eq!(parsed.len(), spec.files.len() + 1);
        assert_eq!(
            parsed.digest(METADATA_FILE),
            Some(sha256_hex(&spec.metadata(&release).to_canonical_bytes()).as_str())
        );
    }

    #[test]
    fn sign_refuses_a_manifest_serve_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), false).unwrap();
        let manifest = dir.path().join(MANIFEST_FILE);
        std::fs::write(&manifest, "not a manifest\n").unwrap();
        let err = sign(&dir.path().join(SECRET_KEY_FILE), &manifest, None, Some(1)).unwrap_err();
        assert!(error_line(&err).contains("refusing to sign"), "{err:#}");
        assert!(!dir.path().join(SIGNATURE_RAW_FILE).exists());
    }

    #[test]
    fn refusals_keep_serves_exit_codes() {
        let refusal = anyhow::Error::new(VerifyError::MissingSignature).context("some/binary");
        assert_eq!(Exit::of(&refusal), Exit::Unsigned);
        let trust = |keys: &[&str]| TrustArgs {
            trusted_keys: keys.iter().map(|k| k.to_string()).collect(),
            ..TrustArgs::default()
        };
        let bad_key = trust(&["/nonexistent/key.pub"]).policy().unwrap_err();
        assert_eq!(Exit::of(&anyhow::Error::new(bad_key)), Exit::Config);
        let unpinned = trust(&[]).policy().unwrap_err();
        assert_eq!(Exit::of(&anyhow::Error::new(unpinned)), Exit::NotPinned);
        assert_eq!(Exit::of(&anyhow!("disk on fire")), Exit::Internal);
        let multi = anyhow!("line one\nline two").context("ctx");
        assert_eq!(error_line(&multi), "ctx: line one line two");
    }
}
