//! Helpers for the deployment tests (tests/deploy_*.rs): the repository's deployment files as
//! JSON values, the external tools that consume them, and the route and environment lists taken
//! from the server itself. Included with `#[path = "common/deploy.rs"] mod deploy;`.
#![allow(dead_code)]

use clap::CommandFactory;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `runtime-image/<rel>`.
pub fn runtime_image(rel: &str) -> PathBuf {
    repo().join("runtime-image").join(rel)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of a text, as JSON values (serde-saphyr); empty documents dropped.
pub fn yaml_docs_str(text: &str, what: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

pub fn yaml_docs(path: &Path) -> Vec<Value> {
    yaml_docs_str(&read(path), &path.display().to_string())
}

/// The single document of a YAML file.
pub fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

/// A tool CI installs (.ci/run): its absence is a failure, never a skip.
pub fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed; .ci/run installs it (run `bash .ci/run` or install it the same way)"
    );
    Command::new(name)
}

/// Runs a command and returns its output, with stdout+stderr in the panic message on failure.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kubectl kustomize DIR` (kustomize 5 built into kubectl), as documents. Overlays under
/// runtime-image/zarf load files from the parent folders, as Zarf's kustomizeAllowAnyDirectory does.
pub fn kustomize(dir: &Path) -> Vec<Value> {
    let output = run_ok(
        tool("kubectl")
            .arg("kustomize")
            .arg("--load-restrictor")
            .arg("LoadRestrictionsNone")
            .arg(dir),
    );
    yaml_docs_str(
        &String::from_utf8_lossy(&output.stdout),
        &format!("kustomize {}", dir.display()),
    )
}

/// The first object of a kind (and name, when given).
pub fn find<'a>(docs: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("no {kind} {name:?} among the documents"))
}

/// A string at a JSON pointer, or a panic naming it.
pub fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

/// Paths the server serves, from its own OpenAPI document (not a copy of the route table).
pub fn served_paths() -> BTreeSet<String> {
    let document =
        serde_json::to_value(sealserve::http::openapi_document()).expect("OpenAPI as JSON");
    document["paths"]
        .as_object()
        .expect("OpenAPI paths")
        .keys()
        .cloned()
        .collect()
}

/// Environment variables `serve` reads, from its clap definition (ServeArgs).
pub fn serve_env_names() -> BTreeSet<String> {
    sealserve::config::ServeArgs::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// Where deployments mount the trust anchor (contracts.md).
pub const TRUST_DIR: &str = "/etc/sealserve/trust";

/// A fresh P-256 public key in PEM, as `cosign generate-key-pair` writes cosign.pub (openssl).
pub fn p256_public_key_pem(dir: &Path) -> String {
    let key = dir.join("cosign.key.pem");
    run_ok(
        tool("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(&key),
    );
    let public = run_ok(tool("openssl").args(["ec", "-pubout", "-in"]).arg(&key));
    String::from_utf8(public.stdout).expect("PEM is ASCII")
}

/// Shell-style glob as sigstore policy-controller and Kyverno use it on image references:
/// `*` matches within one path segment, `**` across segments.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    fn rec(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=t.len()).any(|i| rec(rest, &t[i..])),
            [b'*', rest @ ..] => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != b'/')
                .any(|i| rec(rest, &t[i..])),
            [c, rest @ ..] => t.first() == Some(c) && rec(rest, &t[1..]),
        }
    }
    rec(pattern.as_bytes(), text.as_bytes())
}

/// `ENV` keys set in a Dockerfile's stages (continuation lines joined; `KEY=value` form).
pub fn dockerfile_env_keys(path: &Path) -> BTreeSet<String> {
    let joined = read(path).replace("\\\n", " ");
    let mut keys = BTreeSet::new();
    for line in joined.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for word in rest.split_whitespace() {
                if let Some((key, _)) = word.split_once('=') {
                    if key
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    {
                        keys.insert(key.to_string());
                    }
                }
            }
        }
    }
    keys
}
