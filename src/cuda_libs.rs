//! Finds and loads the CUDA libraries before cudarc asks for them.
//!
//! Why: the CUDA build links no CUDA library (cudarc loads them with dlopen; see
//! scripts/build-cuda), so the same binary starts on CPU-only machines. But cudarc *panics* when
//! a library is missing, and only searches the loader path. So when CUDA is requested we dlopen
//! each library ourselves with `RTLD_GLOBAL`, in this order:
//!
//! 1. the folders in `SEALSERVE_CUDA_LIB_DIRS` / `--cuda-lib-dirs` (explicit configuration wins),
//! 2. the dynamic loader's own search (`LD_LIBRARY_PATH`, `/etc/ld.so.cache`, system folders),
//! 3. the usual driver and toolkit folders ([`WELL_KNOWN_DIRS`]),
//! 4. pip-installed NVIDIA wheels: `<prefix>/lib*/python3*/{site,dist}-packages/nvidia/*/lib`
//!    for the active virtualenv/conda env, `~/.local`, `/usr/local`, `/usr` and `/opt/*`.
//!
//! cudarc's later `dlopen("libcublas.so.13")` then finds the already-loaded object by its
//! soname. When something is missing, the error names every library missing and every folder
//! searched (marking those that do not exist) plus every file that existed but failed to load,
//! with the loader's reason — one line, for `serve`'s exit code 3.
//!
//! Only the loading itself ([`preload`]) calls dlopen; the search ([`SearchPlan`]) is plain
//! file-system work, compiled and tested without the `cuda` feature.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};

/// The libraries candle's CUDA backend needs at run time: a label and the sonames accepted,
/// in load order (cuBLASLt before cuBLAS, which needs it).
///
/// Only versioned sonames of the CUDA 13 toolkit libraries: an unversioned `libcublas.so` may be
/// another major version, whose ABI cudarc (built against 13.0) does not match.
pub const REQUIRED: &[(&str, &[&str])] = &[
    ("CUDA driver", &["libcuda.so.1"]),
    ("cuBLASLt", &["libcublasLt.so.13"]),
    ("cuBLAS", &["libcublas.so.13"]),
    ("cuRAND", &["libcurand.so.10"]),
];

/// Driver and toolkit folders searched after the loader path, in order.
pub const WELL_KNOWN_DIRS: &[&str] = &[
    // NVIDIA container runtime / GPU operator (driver libraries injected here)
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    // CUDA toolkit installs
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda/targets/sbsa-linux/lib",
    // distribution driver packages (usually also in ld.so.cache)
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib64/nvidia",
    // WSL2
    "/usr/lib/wsl/lib",
];

/// Environment variable with extra folders, colon separated (also `serve --cuda-lib-dirs`).
pub const LIB_DIRS_ENV: &str = "SEALSERVE_CUDA_LIB_DIRS";

/// Where to look, in order. [`SearchPlan::from_env`] is what `serve` uses; tests build their own.
#[derive(Clone, Debug, Default)]
pub struct SearchPlan {
    /// Folders tried first (`SEALSERVE_CUDA_LIB_DIRS`).
    pub explicit: Vec<PathBuf>,
    /// Try each soname through the dynamic loader's own search after `explicit`.
    pub loader_path: bool,
    /// Driver/toolkit folders tried after the loader path.
    pub well_known: Vec<PathBuf>,
    /// Python prefixes (venvs, `/usr/local`, ...) whose `nvidia/*/lib` wheel folders come last.
    pub python_prefixes: Vec<PathBuf>,
}

impl SearchPlan {
    /// The production plan: `extra` first, then the loader path, [`WELL_KNOWN_DIRS`] and the pip
    /// wheel folders of the usual Python prefixes.
    pub fn from_env(extra: &[PathBuf]) -> Self {
        Self {
            explicit: extra.to_vec(),
            loader_path: true,
            well_known: WELL_KNOWN_DIRS.iter().map(PathBuf::from).collect(),
            python_prefixes: default_python_prefixes(),
        }
    }

    /// Every place searched, in order: explicit folders, the loader path (when enabled), then the
    /// other folders; no folder twice. Folders that do not exist are included (they are reported
    /// as such when a library is missing).
    pub fn places(&self) -> Vec<Place> {
        let mut seen = HashSet::new();
        let mut places: Vec<Place> = self
            .explicit
            .iter()
            .filter(|d| !d.as_os_str().is_empty() && seen.insert((*d).clone()))
            .cloned()
            .map(Place::Dir)
            .collect();
        if self.loader_path {
            places.push(Place::LoaderPath);
        }
        places.extend(
            self.well_known
                .iter()
                .cloned()
                .chain(pip_nvidia_lib_dirs(&self.python_prefixes))
                .filter(|d| seen.insert(d.clone()))
                .map(Place::Dir),
        );
        places
    }

    /// The folders of [`SearchPlan::places`], in order.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.places()
            .into_iter()
            .filter_map(|p| match p {
                Place::Dir(d) => Some(d),
                Place::LoaderPath => None,
            })
            .collect()
    }
}

/// One place a library is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// `dlopen(soname)`: `LD_LIBRARY_PATH`, `/etc/ld.so.cache`, the system folders.
    LoaderPath,
    /// `dlopen(<folder>/<soname>)` when that file exists.
    Dir(PathBuf),
}

/// Folders CUDA libraries may be loaded from, existing ones only (for Landlock's read rules).
/// `loaded` are the folders [`preload`] actually loaded from ([`CudaLibraries::dirs`]), which may
/// be loader-path folders not named anywhere else; the caller passes them on rather than this
/// module remembering them in a global.
pub fn candidate_dirs(extra: &[PathBuf], loaded: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = SearchPlan::from_env(extra)
        .dirs()
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    for dir in loaded {
        if !dirs.contains(dir) {
            dirs.push(dir.clone());
        }
    }
    dirs
}

/// Python installation prefixes whose wheel folders are searched.
fn default_python_prefixes() -> Vec<PathBuf> {
    let mut prefixes = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            prefixes.push(PathBuf::from(value));
        }
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        prefixes.push(Path::new(&home).join(".local"));
    }
    prefixes.push(PathBuf::from("/home/cdsw/.local")); // CML sessions' `pip install --user`
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    // /opt/<name>, /opt/<name>/{.venv,venv,env} (e.g. /opt/torch/.venv), /opt/conda.
    let mut opt: Vec<PathBuf> = read_dir_sorted(Path::new("/opt"));
    opt.retain(|p| p.is_dir());
    for dir in opt {
        for venv in [".venv", "venv", "env"] {
            let candidate = dir.join(venv);
            if candidate.is_dir() {
                prefixes.push(candidate);
            }
        }
        prefixes.push(dir);
    }
    prefixes
}

/// `<prefix>/{lib,lib64}/python*/{site,dist}-packages/nvidia/*/lib` folders that exist, sorted
/// within each prefix, prefixes in the given order. One `read_dir` per level: cheap enough to
/// run at every CUDA start.
pub fn pip_nvidia_lib_dirs(prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            for python in read_dir_sorted(&prefix.join(lib)) {
                let is_python = python
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python"));
                if !is_python {
                    continue;
                }
                for packages in ["site-packages", "dist-packages"] {
                    let nvidia = python.join(packages).join("nvidia");
                    for package in read_dir_sorted(&nvidia) {
                        let lib_dir = package.join("lib");
                        if lib_dir.is_dir() {
                            found.push(lib_dir);
                        }
                    }
                }
            }
        }
    }
    found
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// One library that could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub label: String,
    pub sonames: Vec<String>,
}

/// Libraries that could not be loaded, with every place tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaLibError {
    pub missing: Vec<Missing>,
    /// Every place searched, in order: folders (with " (absent)" for those that do not exist)
    /// and, where it came in the order, the dynamic loader's own search.
    pub searched: Vec<String>,
    /// Files (or loader-path sonames) that were found but failed to load, with the reason.
    pub failed: Vec<String>,
}

impl std::error::Error for CudaLibError {}

impl fmt::Display for CudaLibError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing: Vec<String> = self
            .missing
            .iter()
            .map(|m| format!("{} ({})", m.label, m.sonames.join(" or ")))
            .collect();
        write!(f, "CUDA libraries not found: {}. ", missing.join(", "))?;
        write!(f, "Searched, in order: {}", self.searched.join(", "))?;
        if !self.failed.is_empty() {
            write!(f, ". Found but failed to load: {}", self.failed.join("; "))?;
        }
        write!(
            f,
            ". Install an NVIDIA driver for CUDA 13 (R580+) and the CUDA 13 cuBLAS/cuRAND \
             libraries, or set {LIB_DIRS_ENV} (colon separated) to the folders holding them"
        )
    }
}

/// What was loaded and from where.
#[derive(Clone, Debug, Default)]
pub struct CudaLibraries {
    /// (label, full path of the loaded object, or how it was asked for when unknown).
    pub loaded: Vec<(String, String)>,
}

impl CudaLibraries {
    /// Folders the libraries were loaded from.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (_, path) in &self.loaded {
            if let Some(dir) = Path::new(path).parent().filter(|d| d.is_absolute()) {
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                }
            }
        }
        dirs
    }
}

/// Loads every required library (production search plan) or reports all that are missing.
pub fn preload(extra_dirs: &[PathBuf]) -> Result<CudaLibraries, CudaLibError> {
    preload_with(&SearchPlan::from_env(extra_dirs))
}

/// Loads every required library following `plan`, or reports all that are missing.
pub fn preload_with(plan: &SearchPlan) -> Result<CudaLibraries, CudaLibError> {
    preload_libraries(REQUIRED, plan)
}

fn preload_libraries(
    required: &[(&str, &[&str])],
    plan: &SearchPlan,
) -> Result<CudaLibraries, CudaLibError> {
    let places = plan.places();
    let mut loaded = CudaLibraries::default();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    for (label, sonames) in required {
        match places
            .iter()
            .find_map(|place| try_place(place, sonames, &mut failed))
        {
            Some(origin) => loaded.loaded.push((label.to_string(), origin)),
            None => missing.push(Missing {
                label: label.to_string(),
                sonames: sonames.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
    if missing.is_empty() {
        return Ok(loaded);
    }
    let searched = places
        .iter()
        .map(|place| match place {
            Place::Dir(d) if d.is_dir() => d.display().to_string(),
            Place::Dir(d) => format!("{} (absent)", d.display()),
            Place::LoaderPath => loader_path_description(),
        })
        .collect();
    Err(CudaLibError {
        missing,
        searched,
        failed,
    })
}

fn loader_path_description() -> String {
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(path) if !path.is_empty() => format!(
            "the dynamic loader path (LD_LIBRARY_PATH={path}, /etc/ld.so.cache, system folders)"
        ),
        _ => "the dynamic loader path (LD_LIBRARY_PATH unset, /etc/ld.so.cache, system folders)"
            .into(),
    }
}

/// Tries each soname at one place; returns where the library was loaded from.
fn try_place(place: &Place, sonames: &[&str], failed: &mut Vec<String>) -> Option<String> {
    sonames.iter().find_map(|soname| match place {
        Place::LoaderPath => match dlopen_global(soname) {
            Ok(origin) => Some(origin.unwrap_or_else(|| format!("{soname} (loader path)"))),
            Err(reason) => {
                // "<soname>: cannot open shared object file" only means it is not on the loader
                // path; anything else (a dependency missing, a wrong ELF class) is worth telling.
                if !reason.starts_with(&format!("{soname}: cannot open shared object file")) {
                    failed.push(format!("{soname} (loader path): {reason}"));
                }
                None
            }
        },
        Place::Dir(dir) => {
            let path = dir.join(soname);
            if !path.exists() {
                return None;
            }
            let shown = path.display().to_string();
            match dlopen_global(&shown) {
                Ok(origin) => Some(origin.unwrap_or(shown)),
                Err(reason) => {
                    failed.push(format!("{shown}: {reason}"));
                    None
                }
            }
        }
    })
}

/// `dlopen(name, RTLD_NOW | RTLD_GLOBAL)`. The handle is kept for the life of the process (the
/// library must stay loaded for cudarc). Returns the loaded object's full path when the loader
/// can tell, or the loader's error.
fn dlopen_global(name: &str) -> Result<Option<String>, String> {
    let c_name = CString::new(name).map_err(|_| "name contains a NUL byte".to_string())?;
    // SAFETY: dlopen with a valid NUL-terminated string. Initialisers of the CUDA libraries run
    // here; they are what cudarc would run anyway.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(last_dl_error());
    }
    Ok(loaded_path(handle))
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call on
    // this thread; it is copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The path the loader mapped `handle` from (glibc's `link_map::l_name`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn loaded_path(handle: *mut libc::c_void) -> Option<String> {
    /// The leading, ABI-stable fields of glibc's `struct link_map` (<link.h>).
    #[repr(C)]
    struct LinkMap {
        _l_addr: usize,
        l_name: *const libc::c_char,
    }
    let mut map: *const LinkMap = std::ptr::null();
    // SAFETY: RTLD_DI_LINKMAP stores a `struct link_map *` for a valid handle into `map`.
    let rc = unsafe {
        libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            (&mut map as *mut *const LinkMap).cast(),
        )
    };
    if rc != 0 || map.is_null() {
        return None;
    }
    // SAFETY: glibc keeps the link map (and its name) alive while the object is loaded, which
    // is for the rest of the process since the handle is never closed.
    let name = unsafe { (*map).l_name };
    if name.is_null() {
        return None;
    }
    // SAFETY: l_name is a NUL-terminated string owned by the loader.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    Some(name).filter(|n| n.starts_with('/'))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn loaded_path(_handle: *mut libc::c_void) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn plan(explicit: &[&Path], well_known: &[&Path], prefixes: &[&Path]) -> SearchPlan {
        SearchPlan {
            explicit: explicit.iter().map(|p| p.to_path_buf()).collect(),
            loader_path: false,
            well_known: well_known.iter().map(|p| p.to_path_buf()).collect(),
            python_prefixes: prefixes.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    #[test]
    fn explicit_dirs_come_first_then_loader_path_then_the_rest_without_duplicates() {
        let (a, b, c) = (Path::new("/a"), Path::new("/b"), Path::new("/c"));
        let mut plan = plan(&[a, b, a, Path::new("")], &[c, a], &[]);
        plan.loader_path = true;
        assert_eq!(
            plan.places(),
            vec![
                Place::Dir(a.into()),
                Place::Dir(b.into()),
                Place::LoaderPath,
                Place::Dir(c.into()),
            ]
        );
        assert_eq!(plan.dirs(), vec![a.to_path_buf(), b.into(), c.into()]);
    }

    #[test]
    fn production_plan_puts_the_configured_dirs_first() {
        let extra = tempfile::tempdir().unwrap();
        let plan = SearchPlan::from_env(&[extra.path().to_path_buf()]);
        assert_eq!(plan.places()[0], Place::Dir(extra.path().to_path_buf()));
        assert_eq!(plan.places()[1], Place::LoaderPath);
        assert!(plan
            .dirs()
            .contains(&PathBuf::from("/usr/local/nvidia/lib64")));
        assert!(plan
            .dirs()
            .contains(&PathBuf::from("/usr/local/cuda/lib64")));
        // candidate_dirs keeps existing folders only, in the same order.
        assert_eq!(
            candidate_dirs(&[extra.path().to_path_buf()], &[])[0],
            extra.path()
        );
        let nope = extra.path().join("nope");
        assert!(!candidate_dirs(std::slice::from_ref(&nope), &[]).contains(&nope));
    }

    #[test]
    fn pip_wheel_lib_dirs_are_found_under_python_prefixes() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("opt/torch/.venv");
        let site = venv.join("lib/python3.12/site-packages/nvidia");
        for lib in ["cu13/lib", "cublas/lib", "curand/lib"] {
            fs::create_dir_all(site.join(lib)).unwrap();
        }
        fs::create_dir_all(site.join("no_lib_here")).unwrap();
        let user = root.path().join("home/.local");
        fs::create_dir_all(user.join("lib/python3.11/dist-packages/nvidia/cu12/lib")).unwrap();
        fs::create_dir_all(user.join("lib/not-python/site-packages/nvidia/x/lib")).unwrap();
        let dirs = pip_nvidia_lib_dirs(&[venv.clone(), user.clone(), root.path().join("none")]);
        assert_eq!(
            dirs,
            vec![
                site.join("cu13/lib"),
                site.join("cublas/lib"),
                site.join("curand/lib"),
                user.join("lib/python3.11/dist-packages/nvidia/cu12/lib"),
            ]
        );
        // ... and they are part of the plan, after the well-known folders.
        let plan = plan(&[], &[Path::new("/well/known")], &[&venv]);
        assert_eq!(plan.dirs()[0], PathBuf::from("/well/known"));
        assert_eq!(plan.dirs()[1], site.join("cu13/lib"));
    }

    #[test]
    fn missing_libraries_report_every_place_tried() {
        let empty = tempfile::tempdir().unwrap();
        let absent = empty.path().join("does-not-exist");
        let wheels = tempfile::tempdir().unwrap();
        let wheel_lib = wheels
            .path()
            .join("lib/python3.12/site-packages/nvidia/cu13/lib");
        fs::create_dir_all(&wheel_lib).unwrap();
        let plan = plan(&[empty.path(), &absent], &[], &[wheels.path()]);
        let err = preload_with(&plan).expect_err("nothing to load in empty folders");
        let labels: Vec<&str> = err.missing.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["CUDA driver", "cuBLASLt", "cuBLAS", "cuRAND"]);
        assert!(err.failed.is_empty());
        let message = err.to_string();
        assert!(!message.contains('\n'), "one line: {message}");
        for expected in [
            empty.path().display().to_string(),
            format!("{} (absent)", absent.display()),
            wheel_lib.display().to_string(),
            "libcuda.so.1".into(),
            "libcublas.so.13".into(),
            "libcublasLt.so.13".into(),
            "libcurand.so.10".into(),
            LIB_DIRS_ENV.into(),
        ] {
            assert!(message.contains(&expected), "{expected:?} not in {message}");
        }
        assert!(
            !message.contains("dynamic loader path"),
            "loader path was off"
        );
        let mut with_loader = plan.clone();
        with_loader.loader_path = true;
        if let Err(err) = preload_with(&with_loader) {
            // In search order: the explicit folders, then the loader, then the rest.
            let at = |needle: &str| err.searched.iter().position(|s| s.contains(needle));
            let loader = at("dynamic loader path").expect("loader path listed");
            assert!(at(&empty.path().display().to_string()).unwrap() < loader);
            assert!(loader < at(&wheel_lib.display().to_string()).unwrap());
        }
    }

    #[test]
    fn a_file_that_fails_to_load_is_reported_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("libcurand.so.10");
        fs::write(&bogus, b"not an ELF object").unwrap();
        let err = preload_with(&plan(&[dir.path()], &[], &[])).unwrap_err();
        assert_eq!(err.failed.len(), 1, "{:?}", err.failed);
        assert!(err.failed[0].starts_with(&format!("{}: ", bogus.display())));
        assert!(err.to_string().contains("Found but failed to load"));
    }

    #[test]
    fn a_library_in_an_explicit_dir_is_loaded_and_its_folder_returned() {
        // Stand-in for a CUDA library: the system libm under another soname.
        let Some(libm) = [
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
            "/lib/aarch64-linux-gnu/libm.so.6",
            "/usr/lib64/libm.so.6",
            "/lib64/libm.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists()) else {
            eprintln!("no system libm.so.6 found; skipping");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(libm, dir.path().join("libstandin.so.1")).unwrap();
        let plan = plan(&[Path::new("/nonexistent"), dir.path()], &[], &[]);
        let loaded = preload_libraries(&[("stand-in", &["libstandin.so.1"])], &plan)
            .expect("loads through the symlink");
        assert_eq!(loaded.loaded.len(), 1);
        let (label, origin) = &loaded.loaded[0];
        assert_eq!(label, "stand-in");
        assert!(
            Path::new(origin).is_absolute() && Path::new(origin).exists(),
            "{origin}"
        );
        assert!(!loaded.dirs().is_empty());
        for dir in loaded.dirs() {
            assert!(
                candidate_dirs(&[], &loaded.dirs()).contains(&dir),
                "{} passed on",
                dir.display()
            );
        }
    }
}
