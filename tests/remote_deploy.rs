//! The remote-mode deployment examples (runtime-image/k8s/remote and
//! runtime-image/cml/remote.project-metadata.yaml) against what consumes them:
//! `kubernetes-validate --strict` on the kustomized objects (PyPI; .ci/run installs it), every
//! variable they set for `serve` is one its clap definition reads (or a trust-contract one), the
//! trust anchor, the store's CA and credentials come from sources that cannot be missing, the
//! root filesystem stays read-only with no volume for the model, and egress is DNS plus the
//! store only.

#[path = "common/deploy.rs"]
mod deploy;

use deploy::*;
use serde_json::Value;
use std::collections::BTreeSet;

fn remote() -> Vec<Value> {
    kustomize(&runtime_image("k8s/remote"))
}

fn serve_container(docs: &[Value]) -> Value {
    let deployment = find(docs, "Deployment", Some("sealserve-remote"));
    deployment["spec"]["template"]["spec"]["containers"][0].clone()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// Variables serve reads.
fn known_serve_env() -> BTreeSet<String> {
    serve_env_names()
}

#[test]
fn the_remote_overlay_validates_strictly() {
    let docs = remote();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, object) in docs.iter().enumerate() {
        let path = dir.path().join(format!("{i:02}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(object).expect("json")).expect("write");
        files.push(path);
    }
    for version in ["1.29.0", "1.37.0"] {
        run_ok(
            tool("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .args(&files),
        );
    }
    // Not vacuous: a misspelt field is rejected.
    let mut mutated = docs.clone();
    let deployment = mutated
        .iter_mut()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] =
        Value::from("Always");
    let path = dir.path().join("mutated.json");
    std::fs::write(&path, serde_json::to_vec_pretty(deployment).expect("json")).expect("write");
    let output = tool("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.37.0"])
        .arg(&path)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        !output.status.success(),
        "a misspelt field passed validation"
    );
}

#[test]
fn the_remote_deployment_fetches_a_pinned_bundle_into_memory_only() {
    let docs = remote();
    let container = serve_container(&docs);
    let url = env_value(&container, "SEALSERVE_MODEL_URL").expect("SEALSERVE_MODEL_URL");
    assert!(
        url.parse::<sealserve::remote::ModelUrl>().is_ok(),
        "{url} is not a --model-url serve accepts"
    );
    assert_eq!(
        env_value(&container, "SEALSERVE_TRUSTED_KEYS_DIR"),
        Some(TRUST_DIR)
    );
    let known = known_serve_env();
    for e in container["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name");
        assert!(
            known.contains(name) || name.starts_with("AWS_"),
            "k8s/remote sets {name}, which serve does not read"
        );
    }
    // Credentials and CA from sources that cannot be missing; the trust anchor as well.
    let pod = &find(&docs, "Deployment", Some("sealserve-remote"))["spec"]["template"]["spec"];
    for volume in pod["volumes"].as_array().expect("volumes") {
        let source = volume
            .get("secret")
            .or_else(|| volume.get("configMap"))
            .unwrap_or_else(|| panic!("volume {volume} is neither a Secret nor a ConfigMap"));
        assert_eq!(source["optional"], false, "{volume}");
    }
    for source in container["envFrom"].as_array().expect("envFrom") {
        assert_eq!(source["secretRef"]["optional"], false, "{source}");
    }
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| str_at(m, "/mountPath"))
        .collect();
    assert!(mounts.contains(&TRUST_DIR), "{mounts:?}");
    let ca = env_value(&container, "SEALSERVE_CA_FILE").expect("SEALSERVE_CA_FILE");
    assert!(
        mounts.iter().any(|m| ca.starts_with(m)),
        "{ca} is not under a mounted volume"
    );
    // Nothing to write the model to.
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "{container}"
    );
    assert!(
        !pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v.get("emptyDir").is_some() || v.get("persistentVolumeClaim").is_some()),
        "a writable volume in the remote deployment"
    );
}

#[test]
fn remote_pods_may_reach_dns_and_the_store_and_nothing_else() {
    let docs = remote();
    let policy = find(&docs, "NetworkPolicy", Some("sealserve-remote"));
    let selector = &policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"];
    assert_eq!(selector, "sealserve-remote");
    let types: Vec<&str> = policy["spec"]["policyTypes"]
        .as_array()
        .expect("policyTypes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(types.contains(&"Egress"), "{types:?}");
    let egress = policy["spec"]["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 2, "DNS and the store: {egress:?}");
    let ports = |rule: &Value| -> Vec<u64> {
        rule["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    assert!(egress.iter().any(|r| ports(r) == [53, 53]), "{egress:?}");
    let store = egress
        .iter()
        .find(|r| r["to"][0].get("ipBlock").is_some())
        .expect("an ipBlock rule for the store");
    let cidr = str_at(store, "/to/0/ipBlock/cidr");
    assert!(cidr.ends_with("/32"), "the store rule allows {cidr}");
    let container = serve_container(&docs);
    let endpoint = env_value(&container, "AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let port = ports(store)[0];
    assert!(
        endpoint.ends_with(&format!(":{port}")),
        "the policy opens port {port}, the store is {endpoint}"
    );
}

#[test]
fn the_cml_remote_amp_sets_only_variables_serve_reads() {
    let amp = yaml_doc(&runtime_image("cml/remote.project-metadata.yaml"));
    let known = known_serve_env();
    let variables = amp["environment_variables"]
        .as_object()
        .expect("environment_variables");
    for name in variables.keys() {
        assert!(
            known.contains(name) || name.starts_with("AWS_"),
            "the AMP sets {name}, which serve does not read"
        );
    }
    assert_eq!(variables["SEALSERVE_MODEL_URL"]["required"], true);
    let url = str_at(&variables["SEALSERVE_MODEL_URL"], "/default");
    assert!(url.parse::<sealserve::remote::ModelUrl>().is_ok(), "{url}");
    for task in amp["tasks"].as_array().expect("tasks") {
        if let Some(script) = task["script"].as_str() {
            assert!(
                repo().join(script).is_file(),
                "the AMP runs {script}, which is missing"
            );
        }
    }
}
