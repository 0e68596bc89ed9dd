//! Kubernetes, KServe and Zarf manifests against what consumes them, and the checks across
//! files that no schema can make.
//!
//! - `kubernetes-validate --strict` (PyPI; .ci/run installs it) on the kustomized manifests, the
//!   Zarf overlay and the stand-alone NetworkPolicies, for the oldest and newest Kubernetes we
//!   support and one between; a mutated field must be rejected, so the check is not vacuous.
//! - Probe and scrape paths are routes the server's own OpenAPI document lists; the environment
//!   variables set for `serve` are ones its clap definition reads.
//! - Every deployment pins the trust anchor at /etc/sealserve/trust from a source that cannot
//!   be missing (contracts.md), and the Zarf package deploys exactly the image it carries.
//!
//! Custom resources (KServe, ServiceMonitor, policies, zarf.yaml) are validated against their
//! upstream schemas in tests/deploy_schemas.rs.

#[path = "common/deploy.rs"]
mod deploy;

use deploy::*;
use serde_json::Value;
use std::collections::BTreeSet;

const K8S_VERSIONS: &[&str] = &["1.29.0", "1.33.0", "1.37.0"];
const SAMPLE_DIGEST: &str =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn k8s() -> Vec<Value> {
    kustomize(&runtime_image("k8s"))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {pod_spec}"))
}

/// The Zarf overlay's output with Zarf's deploy-time templates filled in as Zarf would.
fn zarf_sealserve(image: &str) -> Vec<Value> {
    let docs = kustomize(&runtime_image("zarf/sealserve"));
    let text = serde_json::to_string(&docs).expect("json");
    let filled = text
        .replace("###ZARF_CONST_IMAGE###", image)
        .replace("###ZARF_VAR_MODEL_PUBLIC_KEY###", "PEM");
    serde_json::from_str(&filled).expect("json")
}

fn zarf_package() -> Value {
    yaml_doc(&runtime_image("zarf.yaml"))
}

/// `kubernetes-validate --strict -k VERSION` over every object, one file per object.
fn validate_strict(objects: &[Value]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i:02}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(object).expect("json")).expect("write");
        files.push(path);
    }
    for version in K8S_VERSIONS {
        let output = tool("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect("run kubernetes-validate");
        if !output.status.success() {
            return Err(format!("k8s {version}: {}", text(&output)));
        }
    }
    Ok(())
}

fn core_objects() -> Vec<Value> {
    let mut objects = k8s();
    objects.extend(
        zarf_sealserve(&format!(
            "registry.example.internal/sealserve/serve@{SAMPLE_DIGEST}"
        ))
        .into_iter()
        .filter(|o| o["kind"] == "ConfigMap"),
    );
    for file in [
        "k8s/networkpolicy-object-store-egress.yaml",
        "k8s/cml-session-egress.yaml",
    ] {
        objects.extend(yaml_docs(&runtime_image(file)));
    }
    objects
}

#[test]
fn kubernetes_objects_validate_strictly_on_every_supported_version() {
    let objects = core_objects();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "no {kind} validated: {kinds:?}");
    }
    if let Err(e) = validate_strict(&objects) {
        panic!("kubernetes-validate --strict rejected the manifests:\n{e}");
    }

    // The same check must reject a misspelt field that Kubernetes would silently drop.
    let mut mutated = k8s();
    let deployment = mutated
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let security = deployment
        .pointer_mut("/spec/template/spec/containers/0/securityContext")
        .and_then(Value::as_object_mut)
        .expect("securityContext");
    let value = security.remove("readOnlyRootFilesystem").expect("field");
    security.insert("readOnlyRootFileSystem".into(), value);
    assert!(
        validate_strict(&mutated).is_err(),
        "kubernetes-validate --strict accepted a misspelt securityContext field"
    );
}

#[test]
fn probes_and_the_scrape_path_are_routes_the_server_serves() {
    let served = served_paths();
    let docs = k8s();
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let runtime = yaml_doc(&runtime_image("kserve/servingruntime.yaml"));
    let containers = [
        container(&deployment["spec"]["template"]["spec"], "serve"),
        container(&runtime["spec"], "kserve-container"),
    ];
    for c in containers {
        for (probe, expected) in [
            ("startupProbe", "/health"),
            ("livenessProbe", "/health"),
            ("readinessProbe", "/ready"),
        ] {
            let path = str_at(c, &format!("/{probe}/httpGet/path"));
            assert_eq!(path, expected, "{probe} of {}", c["name"]);
            assert!(
                served.contains(path),
                "{probe} path {path} is not served: {served:?}"
            );
            assert_eq!(c[probe]["httpGet"]["port"], "http");
        }
        let port = &c["ports"][0];
        assert_eq!(
            (port["name"].as_str(), port["containerPort"].as_u64()),
            (Some("http"), Some(8080))
        );
    }
    let monitor = yaml_doc(&runtime_image("k8s/servicemonitor.yaml"));
    let endpoint = &monitor["spec"]["endpoints"][0];
    let path = str_at(endpoint, "/path");
    assert!(
        served.contains(path),
        "ServiceMonitor scrapes {path}, not served"
    );
    // /metrics sits behind the API key: the scrape must send it, from the Secret serve reads.
    let secret = &endpoint["authorization"]["credentials"];
    let key_ref = &container(&deployment["spec"]["template"]["spec"], "serve")["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SEALSERVE_API_KEY")
        .expect("SEALSERVE_API_KEY")["valueFrom"]["secretKeyRef"];
    assert_eq!(endpoint["authorization"]["type"], "Bearer");
    assert_eq!(
        (&secret["name"], &secret["key"]),
        (&key_ref["name"], &key_ref["key"])
    );
    assert_eq!(
        monitor["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations.get("prometheus.io/scrape").is_none(),
        "annotation scraping sends no API key"
    );
}

/// Every SEALSERVE_* (and HOST/PORT/CDSW_APP_PORT) variable the deployment files set.
fn serve_variables_set() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut add = |name: &str, origin: &str| {
        if name.starts_with("SEALSERVE_") || ["HOST", "PORT", "CDSW_APP_PORT"].contains(&name) {
            found.push((name.to_string(), origin.to_string()));
        }
    };
    let docs = k8s();
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let runtime = yaml_doc(&runtime_image("kserve/servingruntime.yaml"));
    for (c, origin) in [
        (
            &deployment["spec"]["template"]["spec"]["containers"][0],
            "k8s/deployment.yaml",
        ),
        (
            &runtime["spec"]["containers"][0],
            "kserve/servingruntime.yaml",
        ),
    ] {
        for e in c["env"].as_array().expect("env") {
            add(e["name"].as_str().expect("name"), origin);
        }
    }
    for dockerfile in ["Dockerfile", "Dockerfile.cml", "Dockerfile.cpu"] {
        for key in dockerfile_env_keys(&runtime_image(dockerfile)) {
            add(&key, dockerfile);
        }
    }
    let amp = yaml_doc(&repo().join(".project-metadata.yaml"));
    for key in amp["environment_variables"]
        .as_object()
        .expect("AMP variables")
        .keys()
    {
        add(key, ".project-metadata.yaml");
    }
    for task in amp["tasks"].as_array().expect("tasks") {
        if let Some(vars) = task["environment_variables"].as_object() {
            for key in vars.keys() {
                add(key, ".project-metadata.yaml task");
            }
        }
    }
    found
}

#[test]
fn every_variable_set_for_serve_is_one_serve_reads() {
    let known: BTreeSet<String> = serve_env_names();
    let set = serve_variables_set();
    assert!(set.len() > 10, "too few variables found: {set:?}");
    for (name, origin) in set {
        assert!(
            known.contains(&name),
            "{origin} sets {name}, which serve does not read: {known:?}"
        );
    }
}

#[test]
fn every_deployment_pins_a_trust_anchor_that_cannot_be_missing() {
    let docs = k8s();
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let runtime = yaml_doc(&runtime_image("kserve/servingruntime.yaml"));
    let pods = [
        (&deployment["spec"]["template"]["spec"], "serve"),
        (&runtime["spec"], "kserve-container"),
    ];
    for (pod, name) in pods {
        let c = container(pod, name);
        let env = c["env"].as_array().expect("env");
        let dir = env
            .iter()
            .find(|e| e["name"] == "SEALSERVE_TRUSTED_KEYS_DIR")
            .unwrap_or_else(|| panic!("{name}: no SEALSERVE_TRUSTED_KEYS_DIR"));
        assert_eq!(dir["value"], TRUST_DIR);
        // No trust source is optional (a missing ConfigMap must not mean "unpinned").
        for e in env
            .iter()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.contains("TRUST")))
        {
            assert!(
                e.get("valueFrom").is_none(),
                "{name}: {e} comes from an optional source"
            );
        }
        let mount = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == TRUST_DIR)
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {TRUST_DIR}"));
        assert_eq!(mount["readOnly"], true);
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("trust volume");
        assert_eq!(volume["configMap"]["name"], "sealserve-trust", "{name}");
        assert_eq!(
            volume["configMap"]["optional"], false,
            "{name}: trust ConfigMap must be required"
        );
    }
    // The Zarf package ships the ConfigMap the Deployment mounts.
    let zarf = zarf_sealserve("x");
    let config = find(&zarf, "ConfigMap", Some("sealserve-trust"));
    assert_eq!(
        config["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    assert!(config["data"]["model.pub"].is_string());
    // Images: the trust folder is where serve looks; the CML runtime carries the key itself.
    for dockerfile in ["Dockerfile", "Dockerfile.cml", "Dockerfile.cpu"] {
        let text = read(&runtime_image(dockerfile)).replace("\\\n", " ");
        assert!(
            text.contains(&format!("SEALSERVE_TRUSTED_KEYS_DIR={TRUST_DIR}")),
            "{dockerfile} does not point serve at {TRUST_DIR}"
        );
        assert!(
            text.contains("RUN [\"/usr/local/bin/serve\", \"--version\"]"),
            "{dockerfile}"
        );
    }
    assert!(read(&runtime_image("Dockerfile.cml")).contains(&format!("{TRUST_DIR}/model.pub")));
    let amp = yaml_doc(&repo().join(".project-metadata.yaml"));
    assert_eq!(
        amp["environment_variables"]["SEALSERVE_TRUSTED_KEYS_DIR"]["default"],
        TRUST_DIR
    );
    assert!(
        amp["environment_variables"]
            .get("SEALSERVE_TRUSTED_KEYS")
            .is_none(),
        "an empty SEALSERVE_TRUSTED_KEYS default is a configuration error for serve"
    );
}

#[test]
fn service_autoscaler_and_network_policy_select_the_serving_pods() {
    let docs = k8s();
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels");
    let selects = |selector: &Value| {
        selector
            .as_object()
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(
        &find(&docs, "Service", Some("sealserve"))["spec"]["selector"]
    ));
    let policy = find(&docs, "NetworkPolicy", Some("sealserve"));
    assert!(selects(&policy["spec"]["podSelector"]["matchLabels"]));
    assert_eq!(
        policy["spec"]["egress"],
        serde_json::json!([]),
        "the serving pod opens no connection"
    );
    let hpa = find(&docs, "HorizontalPodAutoscaler", Some("sealserve"));
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let monitor = yaml_doc(&runtime_image("k8s/servicemonitor.yaml"));
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"]));
    let c = container(&deployment["spec"]["template"]["spec"], "serve");
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
}

#[test]
fn the_cml_egress_example_keeps_what_cml_needs_and_reaches_sealserve() {
    // The review's finding: an egress deny for CML user namespaces that also cut same-namespace
    // traffic (Spark executors, workers) and the API server would break CML sessions.
    let policy = yaml_doc(&runtime_image("k8s/cml-session-egress.yaml"));
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    assert_eq!(policy["spec"]["podSelector"], serde_json::json!({}));
    let rules = policy["spec"]["egress"].as_array().expect("egress rules");
    let peers = |rule: &Value| rule["to"].as_array().cloned().unwrap_or_default();
    let ports = |rule: &Value| -> Vec<i64> {
        rule["ports"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["port"].as_i64()).collect())
            .unwrap_or_default()
    };
    assert!(
        rules
            .iter()
            .any(|r| peers(r) == [serde_json::json!({"podSelector": {}})]
                && r.get("ports").is_none()),
        "same-namespace egress (all ports) must stay open"
    );
    assert!(
        rules.iter().any(|r| ports(r).contains(&53)),
        "DNS must stay open"
    );
    assert!(
        rules.iter().any(
            |r| peers(r).iter().any(|p| p.get("ipBlock").is_some()) && ports(r).contains(&6443)
        ),
        "the API server must stay open"
    );
    // The rule to sealserve names the Deployment's namespace, pod labels and port.
    let docs = k8s();
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let port = container(&deployment["spec"]["template"]["spec"], "serve")["ports"][0]
        ["containerPort"]
        .as_i64()
        .expect("containerPort");
    let to_sealserve = rules
        .iter()
        .find(|r| {
            peers(r).iter().any(|p| {
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == deployment["metadata"]["namespace"]
            })
        })
        .expect("a rule to the sealserve namespace");
    assert_eq!(ports(to_sealserve), [port]);
    for (key, value) in to_sealserve["to"][0]["podSelector"]["matchLabels"]
        .as_object()
        .expect("pod selector")
    {
        assert_eq!(
            &labels[key], value,
            "{key} does not select the serving pods"
        );
    }
}

#[test]
fn kserve_runs_raw_with_one_gpu_and_the_deployments_hardening() {
    let docs = k8s();
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let pod = &deployment["spec"]["template"]["spec"];
    let serve = container(pod, "serve");
    let kserve = kustomize(&runtime_image("kserve"));
    let runtime = find(&kserve, "ServingRuntime", Some("sealserve"));
    let isvc = find(&kserve, "InferenceService", Some("sealserve"));
    let kc = container(&runtime["spec"], "kserve-container");
    assert_eq!(kc["securityContext"], serve["securityContext"]);
    assert_eq!(
        kc["image"], serve["image"],
        "kserve/ and k8s/ pin different images"
    );
    let predictor = &isvc["spec"]["predictor"];
    assert_eq!(predictor["securityContext"], pod["securityContext"]);
    assert_eq!(predictor["model"]["runtime"], runtime["metadata"]["name"]);
    assert_eq!(
        predictor["model"]["modelFormat"]["name"],
        runtime["spec"]["supportedModelFormats"][0]["name"]
    );
    assert_eq!(
        predictor["model"]["resources"]["limits"]["nvidia.com/gpu"],
        1
    );
    assert_eq!(
        isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "RawDeployment"
    );
    assert!(
        predictor["model"].get("storageUri").is_none(),
        "the model is inside serve"
    );
}

#[test]
fn zarf_deploys_exactly_the_image_it_packages() {
    let package = zarf_package();
    let image = format!("registry.example.internal/sealserve/serve@{SAMPLE_DIGEST}");
    // What `zarf package create --set IMAGE=...` makes of the templates.
    let fill = |s: &str| s.replace("###ZARF_PKG_TMPL_IMAGE###", &image);
    let constant = package["constants"]
        .as_array()
        .expect("constants")
        .iter()
        .find(|c| c["name"] == "IMAGE")
        .expect("IMAGE constant");
    let deployed_ref = fill(constant["value"].as_str().expect("value"));
    let component = package["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == "sealserve")
        .expect("sealserve component");
    let packaged: Vec<String> = component["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| fill(i.as_str().expect("image")))
        .collect();
    assert_eq!(packaged[0], image);
    let docs = zarf_sealserve(&deployed_ref);
    let deployment = find(&docs, "Deployment", Some("sealserve"));
    let deployed = str_at(deployment, "/spec/template/spec/containers/0/image");
    assert_eq!(
        deployed, packaged[0],
        "the Zarf Deployment runs an image the package does not carry"
    );
    let pattern = constant["pattern"].as_str().expect("pattern");
    assert!(
        pattern.contains("@sha256:"),
        "the packaged image must be pinned by digest: {pattern}"
    );
    // Every kustomization and file the package names exists.
    for component in package["components"].as_array().expect("components") {
        for manifest in component["manifests"].as_array().into_iter().flatten() {
            for key in ["kustomizations", "files"] {
                for path in manifest[key].as_array().into_iter().flatten() {
                    let path = path.as_str().expect("path");
                    assert!(
                        runtime_image(path).exists(),
                        "zarf.yaml names a missing {path}"
                    );
                    if key == "kustomizations" {
                        assert_eq!(manifest["kustomizeAllowAnyDirectory"], true, "{path}");
                    }
                }
            }
        }
    }
}
