//! The Dockerfiles: hadolint (required: .ci/run installs it), and what no linter checks across
//! files: every base image is pinned by digest (or is a build argument without a default, so the
//! build fails unless one is given), every file copied from the build context is on the
//! Dockerfile's .dockerignore allowlist and is no private key, and every final stage starts
//! `serve --version` and runs as a non-root user. Building and running the images is
//! tests/deploy_images.rs.

#[path = "common/deploy.rs"]
mod deploy;

use deploy::*;
use std::collections::BTreeMap;

const DOCKERFILES: &[&str] = &["Dockerfile", "Dockerfile.cml", "Dockerfile.cpu"];
/// Bases that are build arguments without a default, on purpose (Dockerfile.cml).
const REQUIRED_BASES: &[&str] = &["${SERVE_IMAGE}", "${PBJ_IMAGE}@${PBJ_DIGEST}"];

/// Instructions with continuation lines joined and comments dropped.
fn instructions(name: &str) -> Vec<String> {
    read(&runtime_image(name))
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `ARG NAME=default` values (global and per stage; the last one wins, as is enough here).
fn arg_defaults(lines: &[String]) -> BTreeMap<String, Option<String>> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .map(|a| match a.trim().split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.trim_matches('"').to_string())),
            None => (a.trim().to_string(), None),
        })
        .collect()
}

fn expand(word: &str, args: &BTreeMap<String, Option<String>>) -> Option<String> {
    let mut out = word.to_string();
    for (name, value) in args {
        for pattern in [format!("${{{name}}}"), format!("${name}")] {
            if out.contains(&pattern) {
                out = out.replace(&pattern, value.as_deref()?);
            }
        }
    }
    Some(out)
}

#[test]
fn hadolint_accepts_every_dockerfile() {
    for name in DOCKERFILES {
        let output = tool("hadolint")
            .arg(runtime_image(name))
            .output()
            .expect("hadolint");
        assert!(
            output.status.success(),
            "hadolint {name}:\n{}",
            text(&output)
        );
    }
}

#[test]
fn base_images_are_pinned_by_digest_or_required_arguments() {
    for name in DOCKERFILES {
        let lines = instructions(name);
        let args = arg_defaults(&lines);
        let mut stages = Vec::new();
        for line in lines.iter().filter(|l| l.starts_with("FROM ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let image = words[1];
            if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                stages.push(words[i + 1].to_string());
            }
            if image == "scratch" || stages.iter().any(|s| s == image) {
                continue;
            }
            match expand(image, &args) {
                Some(resolved) => assert!(
                    resolved.contains("@sha256:")
                        && resolved.len() >= resolved.find("@sha256:").unwrap() + 8 + 64,
                    "{name}: FROM {image} resolves to {resolved}, not pinned by digest"
                ),
                // An argument without a default: the build fails unless the builder names it.
                None => assert!(
                    REQUIRED_BASES.contains(&image),
                    "{name}: FROM {image} has an argument without a default"
                ),
            }
        }
    }
    // The CML runtime takes serve from the signed standalone image and its base by digest; both
    // arguments have no default on purpose.
    let cml = arg_defaults(&instructions("Dockerfile.cml"));
    assert_eq!(cml.get("SERVE_IMAGE"), Some(&None));
    assert_eq!(cml.get("PBJ_DIGEST"), Some(&None));
    assert!(instructions("Dockerfile.cml")
        .iter()
        .any(|l| l == "FROM ${PBJ_IMAGE}@${PBJ_DIGEST}"));
}

#[test]
fn the_build_context_brings_only_allowlisted_files_and_no_keys() {
    for name in DOCKERFILES {
        let lines = instructions(name);
        let args = arg_defaults(&lines);
        let ignore = read(&runtime_image(&format!("{name}.dockerignore")));
        let patterns: Vec<&str> = ignore
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            patterns.first(),
            Some(&"*"),
            "{name}.dockerignore must start by excluding everything"
        );
        let allowed: Vec<&str> = patterns
            .iter()
            .filter_map(|p| p.strip_prefix('!'))
            .collect();
        let last_allow = patterns
            .iter()
            .rposition(|p| p.starts_with('!'))
            .expect("allowlist");
        for must in ["**/*.key", "**/*.key.*"] {
            let at = patterns.iter().position(|p| *p == must);
            assert!(
                at.is_some_and(|i| i > last_allow),
                "{name}.dockerignore must exclude {must} after its allowlist"
            );
        }
        for line in lines
            .iter()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        {
            let words: Vec<&str> = line
                .split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("--"))
                .collect();
            for source in &words[..words.len() - 1] {
                let source = expand(source, &args)
                    .unwrap_or_else(|| panic!("{name}: {source} has no default"));
                let source = source.trim_end_matches('/');
                assert!(
                    !source.ends_with(".key"),
                    "{name} copies a private key: {line}"
                );
                assert!(
                    allowed.iter().any(|a| a.trim_end_matches('/') == source),
                    "{name}: COPY {source} is not on {name}.dockerignore's allowlist"
                );
            }
        }
    }
}

#[test]
fn every_final_stage_checks_serve_starts_and_runs_unprivileged() {
    for (name, user) in [
        ("Dockerfile", "65532:65532"),
        ("Dockerfile.cpu", "65532:65532"),
        ("Dockerfile.cml", "8536:8536"),
    ] {
        let lines = instructions(name);
        let last_from = lines
            .iter()
            .rposition(|l| l.starts_with("FROM "))
            .expect("FROM");
        let final_stage = &lines[last_from..];
        assert!(
            final_stage
                .iter()
                .any(|l| l == "RUN [\"/usr/local/bin/serve\", \"--version\"]"),
            "{name}: the final stage must run serve --version"
        );
        assert_eq!(
            final_stage
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix("USER ")),
            Some(user),
            "{name}: final USER"
        );
        assert!(
            final_stage
                .iter()
                .any(|l| l.contains("/usr/local/bin/serve") && l.starts_with("COPY")),
            "{name}: serve is not installed at /usr/local/bin/serve"
        );
    }
    // CML: every com.cloudera.ml.runtime.* label equals its ML_RUNTIME_* variable, and the
    // values Cloudera does not allow a custom runtime to override are inherited, not restated.
    let cml = read(&runtime_image("Dockerfile.cml")).replace("\\\n", " ");
    for forbidden in [
        "ML_RUNTIME_EDITOR",
        "ML_RUNTIME_KERNEL",
        "ML_RUNTIME_METADATA_VERSION",
        "ML_RUNTIME_GIT_HASH",
        "ML_RUNTIME_GBN",
        "ML_RUNTIME_CUDA_VERSION",
    ] {
        assert!(
            !cml.contains(&format!("{forbidden}=")),
            "Dockerfile.cml overrides {forbidden}"
        );
    }
    for (label, variable) in [
        ("edition", "ML_RUNTIME_EDITION"),
        ("short-version", "ML_RUNTIME_SHORT_VERSION"),
        ("maintenance-version", "ML_RUNTIME_MAINTENANCE_VERSION"),
        ("full-version", "ML_RUNTIME_FULL_VERSION"),
        ("description", "ML_RUNTIME_DESCRIPTION"),
    ] {
        assert!(
            cml.contains(&format!(
                "com.cloudera.ml.runtime.{label}=\"${{{variable}}}\""
            )),
            "label {label} is not ${variable}"
        );
        assert!(
            cml.contains(&format!("{variable}=")),
            "{variable} is not set"
        );
    }
    let amp = yaml_doc(&repo().join(".project-metadata.yaml"));
    assert!(cml.contains(&format!(
        "ML_RUNTIME_EDITION=\"{}\"",
        amp["runtimes"][0]["edition"].as_str().expect("AMP edition")
    )));
}
