//! Every shell script of the deployment tooling passes shellcheck, and every Python entry point
//! CML runs compiles (both required: .ci/run installs the tools; a missing tool fails the test).

#[path = "common/deploy.rs"]
mod deploy;

use deploy::*;
use std::path::PathBuf;

/// Shell scripts under runtime-image/ and scripts/, recognised by their shebang.
fn shell_scripts() -> Vec<PathBuf> {
    let mut scripts = Vec::new();
    for dir in [repo().join("runtime-image"), repo().join("scripts")] {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let first = std::fs::read(&path).ok().and_then(|b| {
                b.split(|&c| c == b'\n')
                    .next()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
            });
            if first
                .is_some_and(|l| l.starts_with("#!") && (l.contains("bash") || l.ends_with("/sh")))
            {
                scripts.push(path);
            }
        }
    }
    scripts
}

#[test]
fn shellcheck_accepts_every_shell_script() {
    let scripts = shell_scripts();
    for name in [
        "sign.sh",
        "launch-app.sh",
        "build-cuda",
        "build-static",
        "check-glibc-floor",
        "sbom-serve",
    ] {
        assert!(
            scripts
                .iter()
                .any(|s| s.file_name().is_some_and(|f| f == name)),
            "{name} not found among {scripts:?}"
        );
    }
    let output = tool("shellcheck")
        .args(&scripts)
        .output()
        .expect("shellcheck");
    assert!(output.status.success(), "shellcheck:\n{}", text(&output));
}

#[test]
fn python_entry_points_compile() {
    for file in ["launch_app.py", "cml_model.py", "oci-artifact.py"] {
        let path = runtime_image(file);
        let out = tempfile::tempdir().expect("tempdir");
        run_ok(
            tool("python3")
                .args(["-c", "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)"])
                .arg(&path)
                .arg(out.path().join("out.pyc")),
        );
    }
}
