//! The CPU `serve` binary is fully static: no ELF interpreter, no shared-library dependency,
//! and it verifies its embedded bundle with an empty environment from an empty directory.
//!
//! `.cargo/config.toml` links the package's executables with `+crt-static` in every profile
//! (scripts/rustc-crt-static), so the binary under test here — the debug one from `cargo test` —
//! is static just like `cargo build --release`'s. Builds that are dynamic on purpose are
//! checked differently: with the `cuda` feature (scripts/build-cuda) the binary must be
//! glibc-dynamic with no CUDA library in NEEDED. (Building with `RUSTC_WORKSPACE_WRAPPER=`
//! turns the static link off, and this test fails on purpose.)

use std::path::Path;
use std::process::Command;

const SERVE: &str = env!("CARGO_BIN_EXE_serve");

/// What the ELF program headers and dynamic section say.
#[derive(Debug)]
struct ElfLinkage {
    /// PT_INTERP present: the kernel starts the dynamic loader first.
    interpreter: Option<String>,
    /// DT_NEEDED entries.
    needed: Vec<String>,
}

/// `readelf -W ARGS PATH` (binutils; required, .ci/run installs it).
fn readelf(args: &[&str], path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-W")
        .args(args)
        .arg(path)
        .output()
        .expect("readelf is required (binutils; .ci/run installs it)");
    assert!(
        out.status.success(),
        "readelf {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text between `[` and `]` after `marker` on each line that has it.
fn bracketed(text: &str, marker: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(marker))
        .filter_map(|(_, rest)| {
            let start = rest.find('[')? + 1;
            let end = rest[start..].find(']')? + start;
            Some(rest[start..end].to_string())
        })
        .collect()
}

/// The linkage of an ELF file, as binutils' readelf reports it.
fn elf_linkage(path: &Path) -> ElfLinkage {
    let headers = readelf(&["--program-headers"], path);
    let dynamic = readelf(&["--dynamic"], path);
    ElfLinkage {
        // "[Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]"
        interpreter: headers.lines().find_map(|l| {
            let rest = l.split_once("Requesting program interpreter: ")?.1;
            Some(rest.trim_end().trim_end_matches(']').to_string())
        }),
        needed: bracketed(&dynamic, "(NEEDED)"),
    }
}

fn static_expected() -> bool {
    !cfg!(feature = "cuda") && cfg!(target_os = "linux")
}

#[test]
fn serve_has_no_interpreter_and_no_shared_library_dependency() {
    let linkage = elf_linkage(Path::new(SERVE));
    if !static_expected() {
        let cuda: Vec<&String> = linkage
            .needed
            .iter()
            .filter(|n| {
                ["libcuda", "libcudart", "libcublas", "libcurand", "libnvrtc"]
                    .iter()
                    .any(|c| n.starts_with(&format!("{c}.")))
            })
            .collect();
        assert!(
            cuda.is_empty(),
            "{SERVE} needs CUDA libraries at load time: {cuda:?} (NEEDED: {:?})",
            linkage.needed
        );
        eprintln!("dynamic build on purpose; NEEDED = {:?}", linkage.needed);
        return;
    }
    assert_eq!(
        linkage.interpreter, None,
        "{SERVE} has an ELF interpreter: it is dynamically linked (is .cargo/config.toml's \
         rustc-workspace-wrapper in effect?)"
    );
    assert!(
        linkage.needed.is_empty(),
        "{SERVE} needs shared libraries: {:?}",
        linkage.needed
    );
}

#[test]
fn file_and_ldd_agree_that_serve_is_static() {
    if !static_expected() {
        return;
    }
    // Both tools are required (.ci/run installs file; ldd comes with glibc).
    let out = Command::new("file")
        .arg("-L")
        .arg(SERVE)
        .output()
        .expect("`file` is required (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("static-pie linked") || text.contains("statically linked"),
        "file says: {text}"
    );
    let out = Command::new("ldd")
        .arg(SERVE)
        .output()
        .expect("`ldd` is required");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // glibc's ldd: "not a dynamic executable" for static, "statically linked" for static-pie;
    // never a list of "lib... => ..." lines.
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "ldd says: {text}"
    );
}

#[test]
fn serve_verifies_with_an_empty_environment_from_an_empty_directory() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(SERVE)
        .args(["--verify-only", "--allow-unpinned"]) // dev-signed build: nothing to pin
        .env_clear()
        .current_dir(empty.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SERVE}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "env -i serve --verify-only failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("OK "), "unexpected output: {stdout}");
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "serve --verify-only wrote into its working directory"
    );
}

#[test]
fn the_linkage_reader_sees_a_dynamic_executable() {
    // This test harness is linked dynamically (only the package's executables get +crt-static),
    // so the reader must report an interpreter and libc here, or the checks above prove nothing.
    let me = std::env::current_exe().expect("current_exe");
    let linkage = elf_linkage(&me);
    assert!(
        linkage
            .interpreter
            .as_deref()
            .is_some_and(|i| i.contains("ld-linux")),
        "{linkage:?}"
    );
    assert!(
        linkage.needed.iter().any(|n| n.starts_with("libc.so")),
        "{linkage:?}"
    );
}
