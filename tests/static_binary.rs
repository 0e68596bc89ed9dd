//! The CPU `serve` binary is fully static: no ELF interpreter, no shared-library dependency,
//! and it verifies its embedded bundle with an empty environment from an empty directory.
//!
//! `.cargo/config.toml` links the package's executables with `+crt-static` in every profile
//! (scripts/rustc-crt-static), so the binary under test here — the debug one from `cargo test` —
//! is static just like `cargo build --release`'s. Builds that are dynamic on purpose are
//! checked differently: with the `cuda` feature (scripts/build-cuda) the binary must be
//! glibc-dynamic with no CUDA library in NEEDED. (Building with `RUSTC_WORKSPACE_WRAPPER=`
//! turns the static link off, and this test fails on purpose.)

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn read_at(file: &mut File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut buf).unwrap();
    buf
}

/// Reads the linkage of a 64-bit little-endian ELF file (x86_64, aarch64) without external tools.
fn elf_linkage(path: &Path) -> ElfLinkage {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const PT_LOAD: u32 = 1;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;

    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = read_at(&mut file, 0, 64);
    assert_eq!(&header[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(header[4], 2, "64-bit ELF expected");
    assert_eq!(header[5], 1, "little-endian ELF expected");
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36) as usize,
        u16_at(&header, 0x38) as usize,
    );
    let phdrs = read_at(&mut file, phoff, phentsize * phnum);
    let mut interpreter = None;
    let mut dynamic = None;
    let mut loads = Vec::new(); // (vaddr, offset, filesz) to map DT_STRTAB's address to a file offset
    for i in 0..phnum {
        let ph = &phdrs[i * phentsize..(i + 1) * phentsize];
        let (kind, offset, vaddr, filesz) = (
            u32_at(ph, 0),
            u64_at(ph, 0x08),
            u64_at(ph, 0x10),
            u64_at(ph, 0x20),
        );
        match kind {
            PT_INTERP => {
                let raw = read_at(&mut file, offset, filesz as usize);
                interpreter = Some(
                    String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap()).into_owned(),
                );
            }
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            _ => {}
        }
    }
    let mut needed = Vec::new();
    if let Some((offset, size)) = dynamic {
        let raw = read_at(&mut file, offset, size as usize);
        let entries: Vec<(u64, u64)> = raw
            .chunks_exact(16)
            .map(|e| (u64_at(e, 0), u64_at(e, 8)))
            .take_while(|(tag, _)| *tag != DT_NULL)
            .collect();
        let strtab = entries.iter().find(|(t, _)| *t == DT_STRTAB).map(|e| e.1);
        for (_, name_offset) in entries.iter().filter(|(t, _)| *t == DT_NEEDED) {
            let addr = strtab.expect("DT_NEEDED without DT_STRTAB") + name_offset;
            let (vaddr, off, _) = loads
                .iter()
                .find(|(v, _, sz)| addr >= *v && addr < v + sz)
                .expect("DT_STRTAB inside a PT_LOAD segment");
            let raw = read_at(&mut file, addr - vaddr + off, 256);
            needed
                .push(String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap()).into_owned());
        }
    }
    ElfLinkage {
        interpreter,
        needed,
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
    // Both tools are optional on a build machine; the ELF check above is the authority.
    match Command::new("file").arg("-L").arg(SERVE).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("static-pie linked") || text.contains("statically linked"),
                "file says: {text}"
            );
        }
        _ => eprintln!("`file` not available; skipped"),
    }
    match Command::new("ldd").arg(SERVE).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // glibc's ldd: "not a dynamic executable" for static, "statically linked" for
            // static-pie; never a list of "lib... => ..." lines.
            assert!(
                text.contains("not a dynamic executable") || text.contains("statically linked"),
                "ldd says: {text}"
            );
        }
        Err(_) => eprintln!("`ldd` not available; skipped"),
    }
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
