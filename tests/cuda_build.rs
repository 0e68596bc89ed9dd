//! The CUDA build's recipe, checked without building it (the build itself takes ~30 min on two
//! cores, so it runs as the opt-in CI step `SEALSERVE_CI_CUDA=1`, see scripts/build-cuda):
//!
//! - `scripts/build-cuda --prepare-only` still finds what it patches in the candle sources
//!   pinned by Cargo.lock (a candle upgrade that moves them fails here, not 30 minutes in);
//! - `scripts/check-cuda-needed` accepts a binary without CUDA in NEEDED and rejects one with;
//! - `scripts/check-glibc-floor` rejects a binary that needs a newer glibc than the floor.
//!
//! python3, readelf, objdump and cc are required (.ci/run installs them): a missing tool fails.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a shell command line and fails the test with its stderr if it fails.
fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is required (.ci/run installs it)");
}

#[test]
fn build_cuda_patches_apply_to_the_pinned_candle_sources() {
    require("python3");
    let build = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-cuda"))
        .arg("--prepare-only")
        .env("SEALSERVE_CUDA_BUILD_DIR", build.path())
        .output()
        .expect("run scripts/build-cuda");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "build-cuda --prepare-only failed:\n{log}"
    );

    let patched = build.path().join("patched");
    let find = |prefix: &str| {
        std::fs::read_dir(&patched)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .unwrap_or_else(|| panic!("no {prefix}* in {}:\n{log}", patched.display()))
    };
    let core = std::fs::read_to_string(find("candle-core-").join("Cargo.toml")).unwrap();
    assert!(core.contains("\"dynamic-loading\""), "cudarc not switched");
    assert!(
        !core.contains("\"dynamic-linking\""),
        "dynamic-linking left"
    );
    let kernels = std::fs::read_to_string(find("candle-kernels-").join("build.rs")).unwrap();
    assert!(kernels.contains("cudart_static"));
    assert!(
        kernels.contains("rustc-link-lib=static=moe\""),
        "libmoe.a not linked as static"
    );
    assert!(!kernels.contains("rustc-link-lib=dylib=cudart\""));

    let patch = std::fs::read_to_string(build.path().join("patch.toml")).unwrap();
    assert!(patch.contains("[patch.crates-io]"));
    assert!(
        patch.contains("candle-core = { path = ") && patch.contains("candle-kernels = { path = ")
    );
    for entry in ["Cargo.toml", "build.rs", "src", "crates", "tests"] {
        assert!(build.path().join("ws").join(entry).exists(), "ws/{entry}");
    }
    // Cargo can read the shadow workspace, members included (a member left out of ws/ once
    // broke every CUDA build while this test still passed).
    let metadata = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(build.path().join("ws/Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        metadata.status.success(),
        "cargo metadata on the shadow workspace failed:\n{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let members = String::from_utf8_lossy(&metadata.stdout);
    assert!(members.contains("\"name\":\"seal-core\""), "{members}");
    // The repository's own Cargo.lock is not what the patched build writes to.
    assert!(build.path().join("ws/Cargo.lock").exists());
}

#[test]
fn check_cuda_needed_rejects_cuda_in_needed_and_accepts_serve() {
    require("readelf");
    let script = repo().join("scripts/check-cuda-needed");
    let ok = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_serve"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );

    require("cc");
    // A program with DT_NEEDED libcudart.so.13 (against an empty stand-in library).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!(
        "printf 'int x;\\n' > {d}/fake.c && \
             cc -shared -fPIC -o {d}/libcudart.so -Wl,-soname,libcudart.so.13 {d}/fake.c && \
             printf 'int main(void){{return 0;}}\\n' > {d}/main.c && \
             cc -o {d}/prog {d}/main.c -L{d} -Wl,--no-as-needed -lcudart"
    ));
    let bad = Command::new("bash")
        .arg(&script)
        .arg(dir.path().join("prog"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(text.contains("libcudart.so.13"), "{text}");
}

#[test]
fn check_glibc_floor_rejects_a_binary_that_needs_a_newer_glibc() {
    require("objdump");
    require("cc");
    let script = repo().join("scripts/check-glibc-floor");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Linked against this machine's glibc (>= 2.34: __libc_start_main@GLIBC_2.34).
    sh(&format!(
        "printf 'int main(void){{return 0;}}\\n' > {d}/main.c && cc -o {d}/prog {d}/main.c"
    ));
    let check = |binary: &std::path::Path, floor: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(binary)
            .arg(floor)
            .output()
            .unwrap()
    };
    let prog = dir.path().join("prog");
    let too_new = check(&prog, "2.28");
    assert_eq!(
        too_new.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&too_new.stderr)
    );
    assert!(String::from_utf8_lossy(&too_new.stderr).contains("newer than the floor 2.28"));
    let fine = check(&prog, "9.99");
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    // A static binary imports no glibc symbol at all: not what the CUDA build must be.
    let static_serve = check(std::path::Path::new(env!("CARGO_BIN_EXE_serve")), "2.28");
    assert_eq!(static_serve.status.code(), Some(1));
}
