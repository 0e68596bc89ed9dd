//! Running the real `serve` and `seal` binaries, and altering copies of `serve` in place.

use sealserve::bundle::{Bundle, Entry};
use sealserve::placement::{self, Placement};
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
