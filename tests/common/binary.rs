//! Running the real `serve` and `seal` binaries, and altering copies of `serve` in place.

use sealserve::bundle::{self, Bundle, Entry, MANIFEST_FILE, SIGNATURE_MINISIGN_FILE};
use sealserve::manifest::{sha256_hex, Manifest};
use sealserve::placement::{self, Placement};
use sealserve::signature::{SecretKey, Signature};
use sealserve::spec::METADATA_FILE;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every variable that changes how `serve`/`seal verify` trust a bundle: cleared before each run,
/// so a test sets exactly the ones it means.
pub const TRUST_ENV: [&str; 5] = [
    "SEALSERVE_TRUSTED_KEYS",
    "SEALSERVE_TRUSTED_KEYS_DIR",
    "SEALSERVE_ALLOW_UNPINNED",
    "SEALSERVE_EXPECT_MODEL",
    "SEALSERVE_EXPECT_MANIFEST",
];

/// Output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command; a freshly written executable can be briefly "busy" (ETXTBSY) while a
/// concurrent fork still holds the writer's descriptor, so that is retried.
pub fn run_patiently(command: &mut Command) -> Output {
    for _ in 0..50 {
        match command.output() {
            Ok(output) => return output,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("cannot run {command:?}: {e}"),
        }
    }
    panic!("{command:?} stayed busy");
}

fn clean(command: &mut Command) -> &mut Command {
    for var in TRUST_ENV {
        command.env_remove(var);
    }
    command.env_remove("RUST_LOG")
}

/// `<binary> --verify-only <args>` with text logs and `env` set (trust variables cleared first).
pub fn serve_verify_only(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary);
    clean(&mut command)
        .arg("--verify-only")
        .args(args)
        .env("SEALSERVE_LOG_FORMAT", "text");
    for (key, value) in env {
        command.env(key, value);
    }
    run_patiently(&mut command)
}

/// The built `seal` with these arguments and `env` (trust variables cleared first).
pub fn seal_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seal"));
    clean(&mut command).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    run_patiently(&mut command)
}

/// The built `seal` with these arguments.
pub fn seal(args: &[&str]) -> Output {
    seal_with(args, &[])
}

/// A copy of the built `serve` in `dir`, executable.
pub fn serve_copy(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(env!("CARGO_BIN_EXE_serve"), &copy).expect("copy the serve binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Where the bundle lies in a serve binary, and its entries (offsets relative to the bundle).
pub fn bundle_of(binary: &Path) -> (Placement, Vec<Entry>) {
    let file = std::fs::File::open(binary).expect("open binary");
    let placement = placement::locate(&file).expect("the binary holds one bundle");
    let entries = Bundle::read(placement.source(&file))
        .expect("parse the bundle")
        .entries()
        .to_vec();
    (placement, entries)
}

/// Writes `bytes` at `offset` of `path`.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

/// Reads `len` bytes at `offset` of `path`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The exit code and the one stderr line, for assertions.
pub fn outcome(output: &Output) -> (Option<i32>, String) {
    (output.status.code(), text(&output.stderr))
}

/// Re-signs the bundle inside the serve binary at `binary`, in place, with `key`, and marks it a
/// release build (`"dev_signed":false`) in its signed sealserve.json: what an attacker who
/// swaps the key produces, and also what a release build looks like to everything that checks
/// it, so tests can pin a key without a second (release) build. The new bundle must fill
/// serve's section exactly; `false` (nothing written) when it does not, because this key's
/// encodings are longer or shorter than the original's: the caller tries another key.
pub fn resign_in_place(binary: &Path, key: &SecretKey) -> bool {
    let (placement, entries) = bundle_of(binary);
    let section = read_at(binary, placement.offset, placement.len as usize);
    let read = |name: &str| {
        let entry = entries.iter().find(|e| e.name == name).expect(name);
        section[entry.offset as usize..(entry.offset + entry.len) as usize].to_vec()
    };
    // Same length as the canonical `"dev_signed": true`, and still valid JSON.
    let metadata = String::from_utf8(read(METADATA_FILE))
        .expect("sealserve.json is text")
        .replace("\"dev_signed\": true", "\"dev_signed\":false");
    let mut manifest = Manifest::parse(&read(MANIFEST_FILE)).expect("MANIFEST");
    manifest.insert(METADATA_FILE, sha256_hex(metadata.as_bytes()));
    let manifest = manifest.to_bytes();
    // The original trusted comment's timestamp, so the minisig keeps its length.
    let original = Signature::parse(&read(SIGNATURE_MINISIGN_FILE)).expect("minisig");
    let timestamp: u64 = original
        .trusted
        .as_ref()
        .and_then(|t| t.text.strip_prefix("timestamp:"))
        .and_then(|t| t.split('\t').next())
        .and_then(|t| t.parse().ok())
        .expect("timestamp in the trusted comment");
    let signature = key.sign(&manifest, MANIFEST_FILE, timestamp);
    let signing = bundle::signing_entries(&manifest, &signature, &key.public_key());
    let forged: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|e| {
            let bytes = if e.name == METADATA_FILE {
                metadata.clone().into_bytes()
            } else if let Some((_, new)) = signing.iter().find(|(n, _)| *n == e.name) {
                new.clone()
            } else {
                read(&e.name)
            };
            (e.name.clone(), bytes)
        })
        .collect();
    let mut image = Vec::new();
    bundle::write_bundle(&mut image, &forged).expect("write bundle");
    if image.len() != section.len() {
        return false;
    }
    Bundle::parse(&image).expect("a well-formed bundle");
    write_at(binary, placement.offset, &image);
    true
}

/// A copy of the built serve at `dir/name`, re-signed by a fresh key as a release build (see
/// [`resign_in_place`]); returns the key.
pub fn release_signed_copy(dir: &Path, name: &str) -> (PathBuf, SecretKey) {
    let copy = serve_copy(dir, name);
    for _ in 0..64 {
        let key = SecretKey::generate();
        if resign_in_place(&copy, &key) {
            return (copy, key);
        }
    }
    panic!("no key of 64 gave a bundle of the original length");
}

/// The generation build of `serve` (`SEALSERVE_MODEL=smollm2-135m-instruct`), which the
/// generation tests run: `$SEALSERVE_LLM_SERVE`, as `scripts/build-llm-serve` prints it. It is a
/// second build of the whole package (build.rs embeds another model), which is why the default
/// test run does not make it and its tests run with `SEALSERVE_LLM_TESTS=1` (`.ci/run` sets both).
pub fn llm_serve() -> PathBuf {
    built_serve("SEALSERVE_LLM_SERVE", "scripts/build-llm-serve")
}

/// The qwen3 family fixture's build of `serve` (its pin tests/data/family-pins/qwen3, its files
/// tests/data/families/qwen3), which tests/family_serve.rs runs: `$SEALSERVE_FAMILY_SERVE`, as
/// `scripts/build-model-serve` prints it; like [`llm_serve`], a second build of the package, run
/// with `SEALSERVE_FAMILY_TESTS=1` (`.ci/run` sets both).
pub fn family_serve() -> PathBuf {
    built_serve(
        "SEALSERVE_FAMILY_SERVE",
        "scripts/build-model-serve tests/data/family-pins/qwen3 tests/data/families/qwen3",
    )
}

/// The `serve` binary the variable `var` names, which the command `build` makes and prints.
fn built_serve(var: &str, build: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} must name a build of serve: export {var}=\"$({build})\""));
    assert!(
        path.is_file(),
        "{var}={} is not a file: run {build}",
        path.display()
    );
    path
}
