//! Admission policies: what the policy engines would do with them that a schema cannot tell.
//!
//! - The key placeholders sit exactly where the engines read a PEM key, and a real P-256 key
//!   (what `cosign generate-key-pair` makes) substituted there parses (policy-controller's webhook
//!   rejects a policy whose key does not); the private-Rekor TrustRoot takes its key base64-encoded.
//! - The image patterns match the image the manifests deploy, and in the Zarf package the
//!   reference the Zarf agent rewrites it to (###ZARF_REGISTRY###/<path>@<digest>).
//! - Signature and attestations are all required (policy-controller ANDs policies, ORs the
//!   authorities inside one); the NeuVector rule names the sealserve verifier, not "any signature",
//!   and a second NeuVector rule denies images with a fixable high CVE (the vulnerability gate).

#[path = "common/deploy.rs"]
mod deploy;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use deploy::*;
use serde_json::Value;

const PLACEHOLDER: &str = "REPLACE-WITH-THE-CONTENTS-OF-cosign.pub";
const REKOR_KEY_PLACEHOLDER: &str = "REPLACE-WITH-BASE64-OF-THE-REKOR-PUBLIC-KEY-PEM";
const SBOM_TYPE: &str = "https://cyclonedx.org/bom";
const PROVENANCE_TYPE: &str = "https://slsa.dev/provenance/v1";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn policy(name: &str) -> Value {
    yaml_doc(&runtime_image(&format!("policies/{name}")))
}

/// The image k8s/ deploys, pinned to a digest as README tells (`kustomize edit set image`).
fn deployed_repository() -> String {
    let docs = kustomize(&runtime_image("k8s"));
    let image = str_at(
        find(&docs, "Deployment", Some("sealserve")),
        "/spec/template/spec/containers/0/image",
    );
    image
        .rsplit_once(':')
        .map(|(repo, _)| repo)
        .unwrap_or(image)
        .to_string()
}

/// Every string in a document that `keep` selects, with its JSON pointer.
fn string_fields(
    value: &Value,
    at: String,
    keep: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) if keep(s) => out.push((at, s.clone())),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| string_fields(v, format!("{at}/{k}"), keep, out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| string_fields(v, format!("{at}/{i}"), keep, out)),
        _ => {}
    }
}

#[test]
fn a_real_public_key_in_place_of_each_placeholder_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = p256_public_key_pem(dir.path());
    let body = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    let expected: &[(&str, &[&str])] = &[
        (
            "kyverno-clusterpolicy.yaml",
            &[
                "/spec/rules/0/verifyImages/0/attestors/0/entries/0/keys/publicKeys",
                "/spec/rules/0/verifyImages/0/attestations/0/attestors/0/entries/0/keys/publicKeys",
                "/spec/rules/0/verifyImages/0/attestations/1/attestors/0/entries/0/keys/publicKeys",
            ],
        ),
        (
            "kyverno-imagevalidatingpolicy.yaml",
            &["/spec/attestors/0/cosign/key/data"],
        ),
        (
            "policy-controller-clusterimagepolicy.yaml",
            &["/spec/authorities/0/key/data"],
        ),
        (
            "policy-controller-attestations.yaml",
            &["/spec/authorities/0/key/data"],
        ),
    ];
    for (file, pointers) in expected {
        let mut fields = Vec::new();
        string_fields(
            &policy(file),
            String::new(),
            &|s| s.contains(PLACEHOLDER),
            &mut fields,
        );
        let mut found: Vec<&str> = fields.iter().map(|(p, _)| p.as_str()).collect();
        let mut pointers = pointers.to_vec();
        found.sort_unstable();
        pointers.sort_unstable();
        assert_eq!(found, pointers, "{file}: key placeholders");
        for (pointer, value) in fields {
            let filled = value.replace(PLACEHOLDER, &body);
            let path = dir.path().join("key.pem");
            std::fs::write(&path, format!("{}\n", filled.trim())).expect("write");
            let parsed = tool("openssl")
                .args(["pkey", "-pubin", "-noout", "-in"])
                .arg(&path)
                .output()
                .expect("openssl");
            assert!(
                parsed.status.success(),
                "{file}{pointer}: not a public key once filled: {}",
                text(&parsed)
            );
        }
    }
}

#[test]
fn the_private_rekor_trust_root_takes_the_rekor_key_as_base64_pem() {
    // TrustRoot.spec.sigstoreKeys.tLogs[].publicKey is a Go []byte: JSON carries it base64-encoded,
    // and policy-controller's webhook refuses a TrustRoot whose key does not decode and parse.
    let root = policy("trustroot-private-rekor.example.yaml");
    let mut fields = Vec::new();
    string_fields(
        &root,
        String::new(),
        &|s| s == REKOR_KEY_PLACEHOLDER,
        &mut fields,
    );
    let pointers: Vec<&str> = fields.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(pointers, ["/spec/sigstoreKeys/tLogs/0/publicKey"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = p256_public_key_pem(dir.path());
    let filled = serde_json::to_string(&root)
        .expect("json")
        .replace(REKOR_KEY_PLACEHOLDER, &STANDARD.encode(&pem));
    let filled: Value = serde_json::from_str(&filled).expect("json");
    let key = STANDARD
        .decode(str_at(&filled, "/spec/sigstoreKeys/tLogs/0/publicKey"))
        .expect("base64");
    let path = dir.path().join("rekor.pem");
    std::fs::write(&path, key).expect("write");
    run_ok(
        tool("openssl")
            .args(["pkey", "-pubin", "-noout", "-in"])
            .arg(&path),
    );
}

#[test]
fn image_patterns_match_the_deployed_image_and_its_zarf_rewrite() {
    let deployed = format!("{}@{DIGEST}", deployed_repository());
    let globs = [
        (
            "kyverno-clusterpolicy.yaml",
            "/spec/rules/0/verifyImages/0/imageReferences/0",
        ),
        (
            "kyverno-imagevalidatingpolicy.yaml",
            "/spec/matchImageReferences/0/glob",
        ),
        (
            "policy-controller-clusterimagepolicy.yaml",
            "/spec/images/0/glob",
        ),
        ("policy-controller-attestations.yaml", "/spec/images/0/glob"),
    ];
    for (file, pointer) in globs {
        let glob = str_at(&policy(file), pointer).to_string();
        let repo = deployed.split('@').next().expect("repo");
        assert!(
            glob_matches(&glob, repo),
            "{file}: {glob} does not match {repo}"
        );
        assert!(
            !glob_matches(&glob, "docker.io/library/busybox"),
            "{file}: {glob} matches anything"
        );
    }

    // Zarf: the agent rewrites the host to its registry and keeps path and digest.
    let zarf_registry = "127.0.0.1:31999";
    let rewritten = format!(
        "{zarf_registry}/{}",
        deployed.split_once('/').expect("host/path").1
    );
    for (overlay, kind) in [
        ("zarf/kyverno", "ImageValidatingPolicy"),
        ("zarf/policy-controller", "ClusterImagePolicy"),
    ] {
        let docs = kustomize(&runtime_image(overlay));
        let policies: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert!(!policies.is_empty(), "{overlay}: no {kind}");
        for p in policies {
            let text = serde_json::to_string(p).expect("json");
            assert!(
                !text.contains(PLACEHOLDER),
                "{overlay}: placeholder key left"
            );
            assert!(
                text.contains("###ZARF_VAR_COSIGN_PUBLIC_KEY###"),
                "{overlay}: no deploy-time key"
            );
            let glob = p
                .pointer("/spec/matchImageReferences/0/glob")
                .or_else(|| p.pointer("/spec/images/0/glob"))
                .and_then(Value::as_str)
                .expect("glob")
                .replace("###ZARF_REGISTRY###", zarf_registry);
            let repo = rewritten.split('@').next().expect("repo");
            assert!(glob_matches(&glob, repo), "{overlay}: {glob} misses {repo}");
            assert!(!glob_matches(
                &glob,
                deployed.split('@').next().expect("repo")
            ));
        }
    }
    let ivp = kustomize(&runtime_image("zarf/kyverno"));
    assert_eq!(
        ivp[0]["spec"]["credentials"]["secrets"],
        serde_json::json!(["private-registry"]),
        "Kyverno needs Zarf's registry credentials to read signatures"
    );
}

#[test]
fn signature_sbom_and_provenance_are_all_required() {
    // Kyverno ImageValidatingPolicy: one validation per requirement, all with the release key.
    let ivp = policy("kyverno-imagevalidatingpolicy.yaml");
    let attestations: Vec<(&str, &str)> = ivp["spec"]["attestations"]
        .as_array()
        .expect("attestations")
        .iter()
        .map(|a| (str_at(a, "/name"), str_at(a, "/intoto/type")))
        .collect();
    assert_eq!(
        attestations,
        [("sbom", SBOM_TYPE), ("provenance", PROVENANCE_TYPE)]
    );
    let expressions: Vec<&str> = ivp["spec"]["validations"]
        .as_array()
        .expect("validations")
        .iter()
        .map(|v| str_at(v, "/expression"))
        .collect();
    let attestor = str_at(&ivp, "/spec/attestors/0/name");
    assert!(expressions[0].contains(&format!(
        "verifyImageSignatures(image, [attestors.{attestor}])"
    )));
    for (i, (name, _)) in attestations.iter().enumerate() {
        assert!(
            expressions[i + 1].contains(&format!("attestations.{name}, [attestors.{attestor}]")),
            "{}",
            expressions[i + 1]
        );
    }
    assert_eq!(
        ivp["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    assert_eq!(ivp["spec"]["failurePolicy"], "Fail");

    // Kyverno ClusterPolicy: the same two attestation types.
    let cp = policy("kyverno-clusterpolicy.yaml");
    let rule = &cp["spec"]["rules"][0]["verifyImages"][0];
    let types: Vec<&str> = rule["attestations"]
        .as_array()
        .expect("attestations")
        .iter()
        .map(|a| str_at(a, "/type"))
        .collect();
    assert_eq!(types, [SBOM_TYPE, PROVENANCE_TYPE]);
    assert_eq!(rule["failureAction"], "Enforce");
    assert_eq!(rule["required"], true);

    // policy-controller: signature and attestations in two policies over the same images (ANDed);
    // within one policy a single authority would be enough.
    let signed = policy("policy-controller-clusterimagepolicy.yaml");
    let attested = policy("policy-controller-attestations.yaml");
    assert_eq!(signed["spec"]["images"], attested["spec"]["images"]);
    for p in [&signed, &attested] {
        assert_eq!(p["spec"]["authorities"].as_array().map(Vec::len), Some(1));
        assert_eq!(p["spec"]["mode"], "enforce");
        assert!(
            p["spec"]["authorities"][0].get("ctlog").is_none(),
            "no ctlog = offline key check"
        );
    }
    let predicate_types: Vec<&str> = attested["spec"]["authorities"][0]["attestations"]
        .as_array()
        .expect("attestations")
        .iter()
        .map(|a| str_at(a, "/predicateType"))
        .collect();
    assert_eq!(predicate_types, [SBOM_TYPE, PROVENANCE_TYPE]);

    // The pass-through for Cloudera's own images admits them without a signature, and only them.
    let pass = policy("policy-controller-cloudera-passthrough.yaml");
    assert_eq!(pass["spec"]["authorities"][0]["static"]["action"], "pass");
    let glob = str_at(&pass, "/spec/images/0/glob");
    assert!(glob_matches(
        glob,
        "docker.repository.cloudera.com/cloudera/cdsw/ml-runtime-pbj-workbench-python3.10-cuda"
    ));
    assert!(!glob_matches(glob, &deployed_repository()));
}

#[test]
fn neuvector_denies_unverified_images_and_fixable_high_cves() {
    let rule = policy("neuvector-admission.yaml");
    assert_eq!(
        rule["metadata"]["name"], "local",
        "NeuVector reads only the CRD named local"
    );
    let criteria = rule["spec"]["rules"][0]["criteria"]
        .as_array()
        .expect("criteria");
    let by_name = |name: &str| {
        criteria
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} criterion"))
    };
    let verifiers = by_name("imageVerifiers");
    assert_eq!(verifiers["op"], "notContainsAny");
    let value = str_at(verifiers, "/value");
    let (root, verifier) = value.split_once('/').expect("<root of trust>/<verifier>");
    assert!(!root.is_empty() && !verifier.is_empty());
    let docs = kustomize(&runtime_image("k8s"));
    let namespace = &find(&docs, "Deployment", Some("sealserve"))["metadata"]["namespace"];
    assert_eq!(&by_name("namespace")["value"], namespace);
    assert_eq!(rule["spec"]["rules"][0]["action"], "deny");
    assert!(
        criteria.iter().all(|c| c["name"] != "imageSigned"),
        "imageSigned is true for a signature from any configured verifier"
    );

    // The vulnerability gate: a second deny rule (rules are ORed, criteria ANDed) on NeuVector's
    // scan of the same namespace's images.
    let gate = rule["spec"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| {
            r["criteria"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "cveHighWithFixCount"))
        })
        .expect("a rule on cveHighWithFixCount");
    assert_eq!(gate["action"], "deny");
    let gate_criteria = gate["criteria"].as_array().expect("criteria");
    let count = gate_criteria
        .iter()
        .find(|c| c["name"] == "cveHighWithFixCount")
        .expect("criterion");
    assert_eq!(
        count["op"], ">=",
        "NeuVector's only operator for CVE counts"
    );
    let threshold: u32 = str_at(count, "/value").parse().expect("a count");
    assert!(threshold >= 1, "a threshold of 0 denies every image");
    let gate_namespace = gate_criteria
        .iter()
        .find(|c| c["name"] == "namespace")
        .expect("namespace criterion");
    assert_eq!(&gate_namespace["value"], namespace);
}
