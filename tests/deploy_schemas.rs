//! Custom resources and zarf.yaml against their upstream schemas.
//!
//! Every custom resource the repository ships (Kyverno, sigstore policy-controller, NeuVector,
//! KServe, Prometheus Operator) is validated against the openAPIV3Schema of its upstream CRD,
//! made strict the way a typo would matter (`additionalProperties: false` wherever the CRD lists
//! properties and does not preserve unknown fields: the API server prunes unknown fields, so a
//! misspelt `ignoreTlog` silently becomes "tlog required"); zarf.yaml against zarf's own JSON
//! Schema. A real P-256 key is substituted for the placeholders first, and a mutated field must
//! be rejected. The validator is `check-jsonschema` (PyPI; .ci/run installs it).
//!
//! The schemas are vendored in tests/data/schemas/ (one file per group/version/kind, written by
//! scripts/vendor-crd-schemas from the upstream CRD files at release tags; source, commit, tag
//! and licence of each in tests/data/schemas/SOURCES.md). SEALSERVE_SCHEMA_DIR points the test
//! at another folder, e.g. to try newer upstream releases before vendoring them.

#[path = "common/deploy.rs"]
mod deploy;

use base64::Engine as _;
use deploy::*;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The Rekor key placeholder in policies/trustroot-private-rekor.example.yaml.
const REKOR_KEY_PLACEHOLDER: &str = "REPLACE-WITH-BASE64-OF-THE-REKOR-PUBLIC-KEY-PEM";

const REASON: &str =
    "no vendored schema for this apiVersion/kind: add it with scripts/vendor-crd-schemas";

fn schema_dir() -> PathBuf {
    std::env::var_os("SEALSERVE_SCHEMA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/data/schemas"))
}

/// `<group>_<version>_<kind>.json`, the name scripts/vendor-crd-schemas writes.
fn schema_file(api_version: &str, kind: &str) -> PathBuf {
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    schema_dir().join(format!("{group}_{version}_{}.json", kind.to_lowercase()))
}

/// Adds `additionalProperties: false` where a structural schema lists properties and keeps no
/// unknown fields, so an unknown field is an error instead of being pruned.
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !preserves
            {
                map.insert("additionalProperties".into(), json!(false));
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// The custom resources to validate, placeholders filled as a user (or Zarf) would.
fn custom_resources(key_pem: &str) -> Vec<(String, Value)> {
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    // TrustRoot.tLogs[].publicKey is a Go []byte: the PEM, base64-encoded.
    let rekor_key = base64::engine::general_purpose::STANDARD.encode(key_pem);
    let fill = |v: &Value| -> Value {
        let text = serde_json::to_string(v)
            .expect("json")
            .replace(
                "REPLACE-WITH-THE-CONTENTS-OF-cosign.pub",
                &body.replace('\n', "\\n"),
            )
            .replace(
                "###ZARF_VAR_COSIGN_PUBLIC_KEY###",
                &key_pem.replace('\n', "\\n"),
            )
            .replace(REKOR_KEY_PLACEHOLDER, &rekor_key)
            .replace("###ZARF_REGISTRY###", "127.0.0.1:31999");
        serde_json::from_str(&text).expect("json")
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(runtime_image("policies")).expect("policies") {
        let path = entry.expect("entry").path();
        for doc in yaml_docs(&path) {
            out.push((path.display().to_string(), fill(&doc)));
        }
    }
    for overlay in ["kserve", "zarf/kyverno", "zarf/policy-controller"] {
        for doc in kustomize(&runtime_image(overlay)) {
            out.push((overlay.to_string(), fill(&doc)));
        }
    }
    out.push((
        "k8s/servicemonitor.yaml".into(),
        yaml_doc(&runtime_image("k8s/servicemonitor.yaml")),
    ));
    out
}

fn check(schema: &Value, instance: &Value) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema_path = dir.path().join("schema.json");
    let instance_path = dir.path().join("instance.json");
    std::fs::write(&schema_path, serde_json::to_vec(schema).expect("json")).expect("write");
    std::fs::write(&instance_path, serde_json::to_vec(instance).expect("json")).expect("write");
    let output = tool("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema_path)
        .arg(&instance_path)
        .output()
        .expect("run check-jsonschema");
    if output.status.success() {
        Ok(())
    } else {
        Err(text(&output))
    }
}

#[test]
fn custom_resources_match_their_upstream_crd_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = p256_public_key_pem(dir.path());
    let resources = custom_resources(&key);
    assert!(resources.len() >= 10, "{} resources", resources.len());
    for (origin, resource) in &resources {
        let api_version = str_at(resource, "/apiVersion");
        let kind = str_at(resource, "/kind");
        let path = schema_file(api_version, kind);
        assert!(
            path.exists(),
            "{REASON}: no {} for {origin}",
            path.display()
        );
        let mut schema: Value = serde_json::from_str(&read(&path)).expect("schema JSON");
        // Every object has these, whether or not the CRD's schema lists them.
        for field in ["apiVersion", "kind", "metadata"] {
            schema["properties"]
                .as_object_mut()
                .expect("root properties")
                .entry(field)
                .or_insert(json!({}));
        }
        strict(&mut schema);
        if let Err(e) = check(&schema, resource) {
            panic!(
                "{origin}: {api_version} {kind} does not match {}:\n{e}",
                path.display()
            );
        }
        // The strict schema must catch a misspelt top-level spec field.
        let mut mutated = resource.clone();
        mutated["spec"]["sealserveTypo"] = json!(true);
        assert!(
            check(&schema, &mutated).is_err(),
            "{origin}: an unknown spec field passed"
        );
    }
}

#[test]
fn zarf_package_matches_zarfs_schema() {
    let schema: Value =
        serde_json::from_str(&read(&schema_dir().join("zarf.schema.json"))).expect("zarf schema");
    let package = yaml_doc(&runtime_image("zarf.yaml"));
    if let Err(e) = check(&schema, &package) {
        panic!("zarf.yaml does not match zarf.schema.json:\n{e}");
    }
    let mut mutated = package.clone();
    mutated["components"][0]["manifest"] = json!([]);
    assert!(
        check(&schema, &mutated).is_err(),
        "zarf's schema accepted an unknown component field"
    );
}
