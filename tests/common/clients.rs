//! Running the pinned Python clients (tests/clients, installed by scripts/install-test-clients):
//! they fail, never skip, when Python or a package is missing. The interpreter is
//! `$SEALSERVE_CLIENTS_PYTHON`, else `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn python() -> String {
    std::env::var("SEALSERVE_CLIENTS_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs the interpreter with `args` in `cwd`; panics with its output unless it exits 0.
pub fn run_python(args: &[&str], cwd: &Path) -> String {
    let output = Command::new(python())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Python 3 and the pinned clients with \
                 scripts/install-test-clients",
                python()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        python(),
        output.status
    );
    text
}

/// schemathesis with all its checks against the OpenAPI document at `schema` (a URL); panics
/// unless every check passes. Returns its report.
pub fn schemathesis(schema: &str) -> String {
    run_python(&["check_versions.py"], &clients_dir());
    // Hypothesis and schemathesis keep state in the working directory: keep it out of the repo.
    let scratch = tempfile::tempdir().expect("temp dir");
    let out = run_python(
        &[
            "-c",
            "import sys; from schemathesis.cli import schemathesis; \
             sys.argv[0] = 'schemathesis'; schemathesis()",
            "run",
            schema,
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--workers",
            "2",
            "--seed",
            "20261129",
            "--generation-deterministic",
        ],
        scratch.path(),
    );
    assert!(out.contains(" passed"), "{out}");
    out
}
