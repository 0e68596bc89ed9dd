//! Finds and loads the CUDA runtime libraries before cudarc asks for them.
//!
//! Why: the CUDA build links no CUDA library (cudarc loads them with dlopen), so the same binary
//! starts on CPU-only machines. But cudarc *panics* when a library is missing, and only searches
//! the loader path. We dlopen each library ourselves — first by soname through the loader path,
//! then by absolute path in `SEALSERVE_CUDA_LIB_DIRS`, the usual driver/toolkit folders and pip
//! `nvidia/*/lib` folders — with RTLD_GLOBAL. cudarc's later dlopen by soname then finds the
//! already-loaded object. When something is missing we report every path tried instead.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The libraries candle's CUDA backend needs at run time, each with the sonames tried in order.
pub const REQUIRED: &[(&str, &[&str])] = &[
    ("CUDA driver", &["libcuda.so.1", "libcuda.so"]),
    ("cuBLAS", &["libcublas.so.13", "libcublas.so"]),
    ("cuBLASLt", &["libcublasLt.so.13", "libcublasLt.so"]),
    ("cuRAND", &["libcurand.so.10", "libcurand.so"]),
];

/// Folders searched after the loader path, in order.
const WELL_KNOWN_DIRS: &[&str] = &[
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib/wsl/lib",
];

/// Roots under which pip-installed NVIDIA wheels (`site-packages/nvidia/<pkg>/lib`) are looked for.
const PYTHON_ROOTS: &[&str] = &[
    "/opt",
    "/usr/local/lib",
    "/usr/lib",
    "/home/cdsw/.local/lib",
];

/// Libraries that could not be loaded, with every place tried.
#[derive(Debug, thiserror::Error)]
#[error("CUDA libraries not found: {}. Tried: {}. Install the NVIDIA driver / CUDA 13 libraries or point SEALSERVE_CUDA_LIB_DIRS at the folders holding them", missing.join(", "), tried.join(", "))]
pub struct CudaLibError {
    pub missing: Vec<String>,
    pub tried: Vec<String>,
}

/// What was loaded and from where.
#[derive(Clone, Debug, Default)]
pub struct CudaLibraries {
    pub loaded: Vec<(String, String)>,
}

/// Every folder searched, in order: `extra` (from `SEALSERVE_CUDA_LIB_DIRS`), well-known driver
/// and toolkit folders, then pip wheel folders.
pub fn candidate_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    dirs.extend(WELL_KNOWN_DIRS.iter().map(PathBuf::from));
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        dirs.extend(pip_nvidia_dirs(Path::new(&venv)));
    }
    for root in PYTHON_ROOTS {
        dirs.extend(pip_nvidia_dirs(Path::new(root)));
    }
    dirs.dedup();
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// `.../site-packages/nvidia/*/lib` (and `nvidia/cu13/lib`) folders under `root`, three levels deep
/// at most so the search stays cheap.
fn pip_nvidia_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut frontier = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = frontier.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name();
            if name == "site-packages" || name == "dist-packages" {
                let nvidia = path.join("nvidia");
                if let Ok(pkgs) = std::fs::read_dir(&nvidia) {
                    found.extend(pkgs.filter_map(Result::ok).map(|p| p.path().join("lib")));
                }
            } else if depth < 4 {
                frontier.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Loads every required library or reports all that are missing.
pub fn preload(extra_dirs: &[PathBuf]) -> Result<CudaLibraries, CudaLibError> {
    let dirs = candidate_dirs(extra_dirs);
    let mut loaded = CudaLibraries::default();
    let mut missing = Vec::new();
    let mut tried = Vec::new();
    for (label, sonames) in REQUIRED {
        match load_one(sonames, &dirs, &mut tried) {
            Some(origin) => loaded.loaded.push((label.to_string(), origin)),
            None => missing.push(format!("{label} ({})", sonames[0])),
        }
    }
    if missing.is_empty() {
        Ok(loaded)
    } else {
        Err(CudaLibError { missing, tried })
    }
}

fn load_one(sonames: &[&str], dirs: &[PathBuf], tried: &mut Vec<String>) -> Option<String> {
    for soname in sonames {
        if dlopen_global(soname) {
            return Some(format!("{soname} (loader path)"));
        }
        tried.push(format!("{soname} (loader path)"));
    }
    for dir in dirs {
        for soname in sonames {
            let path = dir.join(soname);
            if !path.exists() {
                continue;
            }
            let shown = path.display().to_string();
            if dlopen_global(&shown) {
                return Some(shown);
            }
            tried.push(shown);
        }
    }
    tried.extend(dirs.iter().map(|d| format!("{}/", d.display())));
    None
}

/// dlopen with RTLD_NOW | RTLD_GLOBAL; the handle is kept for the life of the process.
fn dlopen_global(name: &str) -> bool {
    let Ok(c_name) = CString::new(name) else {
        return false;
    };
    // SAFETY: dlopen with a valid NUL-terminated string; the handle is intentionally leaked so
    // the library stays loaded for cudarc.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}
