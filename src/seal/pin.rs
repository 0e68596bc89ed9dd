//! `seal pin`: writes `models/<name>/model.toml` from a local Hugging Face snapshot, so a user can
//! seal a model we never heard of. Everything the signed `sealserve.json` will say is read from
//! the snapshot's own files, never guessed:
//!
//! - `config.json`: the family (`model_type`, refused unless a family of `model::families` runs
//!   it) and the task (`architectures[0]`: `*Model` embeds, `*ForSequenceClassification` with one
//!   label re-ranks and with more classifies, `*ForMaskedLM` behind SPLADE pooling sparse-embeds);
//! - `modules.json` and its modules' folders (sentence-transformers): the pooling
//!   (`1_Pooling/config.json`, old `pooling_mode_*_tokens` booleans or new `pooling_mode`),
//!   whether a `Normalize` module follows, SPLADE pooling; a module `serve` cannot run (`Dense`,
//!   max pooling, a prompt left out of pooling) is refused rather than dropped;
//! - `sentence_bert_config.json` (`max_seq_length`), else `tokenizer_config.json`
//!   (`model_max_length`), else `config.json` (`max_position_embeddings`);
//! - `config_sentence_transformers.json`: prompts and the default prompt;
//! - the size and sha256 of the three files the bundle embeds (weights, tokenizer, config).
//!
//! The result is parsed back with [`ModelSpec::parse`] before it is written, so what `seal pin`
//! writes is what build.rs accepts.

use crate::manifest::sha256_hex;
use crate::model::families::{spec_family, spec_task};
use crate::model::heads::label_names;
use crate::model::network::Architecture;
use crate::spec::{
    FileRole, FileSpec, ModelSection, ModelSpec, Pooling, SpecError, Task, METADATA_FILE,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why a snapshot could not be pinned. Every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {message}")]
    Json { path: String, message: String },
    /// The snapshot is something `serve` cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// A required file or argument is missing.
    #[error("{0}")]
    Missing(String),
    /// The pins do not form a valid model.toml (e.g. a revision that is not a commit id).
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0} exists; pass --force to replace it")]
    Exists(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The three files a bundle embeds, as a Hugging Face snapshot names them.
const WEIGHTS: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";
const CONFIG: &str = "config.json";

/// A pinned snapshot: the spec and the model.toml text that holds it.
#[derive(Debug)]
pub struct Pinned {
    pub spec: ModelSpec,
    pub toml: String,
}

fn read(path: &Path) -> Result<Vec<u8>, PinError> {
    std::fs::read(path).map_err(|source| PinError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Option<Value>, PinError> {
    if !path.is_file() {
        return Ok(None);
    }
    serde_json::from_slice(&read(path)?)
        .map(Some)
        .map_err(|e| PinError::Json {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// The repo id and revision a Hugging Face cache snapshot folder names
/// (`…/models--org--name/snapshots/<commit>`), if `dir` is one.
pub fn snapshot_origin(dir: &Path) -> (Option<String>, Option<String>) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let revision = dir.file_name().and_then(|n| n.to_str()).map(str::to_string);
    let snapshots = dir.parent();
    if snapshots.and_then(Path::file_name).and_then(|n| n.to_str()) != Some("snapshots") {
        return (None, None);
    }
    let repo = snapshots
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("models--"))
        .map(|n| n.replacen("--", "/", 1));
    (repo, revision)
}

/// Where `seal pin` writes by default: `models/<repo name>/model.toml`.
pub fn default_out(repo: &str) -> PathBuf {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    Path::new("models").join(name).join("model.toml")
}

/// How sentence-transformers turns the network's output into the model's result.
#[derive(Debug, Default)]
struct Pipeline {
    pooling: Option<Pooling>,
    normalize: bool,
    splade: bool,
}

/// Reads `modules.json` and each module's settings; `None` without sentence-transformers files.
fn pipeline(dir: &Path) -> Result<Option<Pipeline>, PinError> {
    let path = dir.join("modules.json");
    let Some(modules) = read_json(&path)? else {
        return Ok(None);
    };
    let modules = modules.as_array().ok_or_else(|| PinError::Json {
        path: path.display().to_string(),
        message: "expected a list of modules".into(),
    })?;
    let mut pipeline = Pipeline::default();
    for module in modules {
        let kind = module["type"].as_str().unwrap_or_default();
        let class = kind.rsplit('.').next().unwrap_or_default();
        let folder = dir.join(module["path"].as_str().unwrap_or_default());
        match class {
            "Transformer" | "MLMTransformer" => {}
            "Normalize" => pipeline.normalize = true,
            "Pooling" => pipeline.pooling = Some(pooling(&folder.join("config.json"))?),
            "SpladePooling" => {
                splade_pooling(&folder.join("config.json"))?;
                pipeline.splade = true;
            }
            _ => {
                return Err(PinError::Unsupported(format!(
                    "{}: module {kind:?} is not supported; serve runs Transformer, Pooling \
                     (mean, cls, last token), Normalize and SpladePooling (max) modules only",
                    path.display()
                )))
            }
        }
    }
    Ok(Some(pipeline))
}

/// A `Pooling` module's mode, in sentence-transformers' old (`pooling_mode_mean_tokens: true`)
/// or new (`pooling_mode: "mean"`) form.
fn pooling(path: &Path) -> Result<Pooling, PinError> {
    let config = read_json(path)?.ok_or_else(|| {
        PinError::Missing(format!(
            "{} is missing: the Pooling module's settings are needed",
            path.display()
        ))
    })?;
    if config.get("include_prompt").and_then(Value::as_bool) == Some(false) {
        return Err(PinError::Unsupported(format!(
            "{}: include_prompt = false (prompt tokens left out of pooling) is not supported",
            path.display()
        )));
    }
    let modes: Vec<String> = match config.get("pooling_mode").and_then(Value::as_str) {
        Some(mode) => vec![mode.to_string()],
        None => config
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, value)| {
                key.starts_with("pooling_mode_") && value.as_bool() == Some(true)
            })
            .map(|(key, _)| key.trim_start_matches("pooling_mode_").to_string())
            .collect(),
    };
    match modes
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["mean" | "mean_tokens"] => Ok(Pooling::Mean),
        ["cls" | "cls_token"] => Ok(Pooling::Cls),
        ["lasttoken" | "last_token"] => Ok(Pooling::LastToken),
        other => Err(PinError::Unsupported(format!(
            "{}: pooling {other:?} is not supported; serve pools by mean, cls or last token \
             (one mode)",
            path.display()
        ))),
    }
}

/// SPLADE pooling must be `max` over `relu` (what `model::heads::SparseEncoder` computes).
fn splade_pooling(path: &Path) -> Result<(), PinError> {
    let config = read_json(path)?.unwrap_or(Value::Null);
    let strategy = config["pooling_strategy"].as_str().unwrap_or("max");
    let activation = config["activation_function"].as_str().unwrap_or("relu");
    if (strategy, activation) != ("max", "relu") {
        return Err(PinError::Unsupported(format!(
            "{}: SPLADE pooling {strategy:?} with {activation:?} is not supported; serve \
             computes max over log(1 + relu(logits))",
            path.display()
        )));
    }
    Ok(())
}

/// The longest input, from the first file that states it.
fn max_seq_length(dir: &Path, config: &Value) -> Result<usize, PinError> {
    let from = |file: &str, key: &str| -> Result<Option<usize>, PinError> {
        Ok(read_json(&dir.join(file))?
            .and_then(|v| v.get(key).and_then(Value::as_u64))
            .map(|n| n as usize)
            // Tokenizers without a limit say 1e30: not a length.
            .filter(|n| *n > 0 && *n <= 1 << 20))
    };
    if let Some(n) = from("sentence_bert_config.json", "max_seq_length")? {
        return Ok(n);
    }
    if let Some(n) = from("tokenizer_config.json", "model_max_length")? {
        return Ok(n);
    }
    config
        .get("max_position_embeddings")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| {
            PinError::Missing(
                "no max_seq_length in sentence_bert_config.json, model_max_length in \
                 tokenizer_config.json or max_position_embeddings in config.json: pass \
                 --max-seq-length"
                    .into(),
            )
        })
}

/// sentence-transformers prompts and the default prompt's name.
fn prompts(dir: &Path) -> Result<(BTreeMap<String, String>, Option<String>), PinError> {
    let Some(config) = read_json(&dir.join("config_sentence_transformers.json"))? else {
        return Ok((BTreeMap::new(), None));
    };
    let prompts = config["prompts"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, text)| Some((name.clone(), text.as_str()?.to_string())))
        .collect();
    let default = config["default_prompt_name"].as_str().map(str::to_string);
    Ok((prompts, default))
}

/// A file's pin.
fn file_spec(dir: &Path, name: &str, role: FileRole) -> Result<FileSpec, PinError> {
    let bytes = read(&dir.join(name))?;
    Ok(FileSpec {
        name: name.to_string(),
        role,
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    })
}

/// Checks the snapshot has the three files a bundle embeds, with advice when it has others.
fn require_files(dir: &Path) -> Result<(), PinError> {
    if !dir.join(WEIGHTS).is_file() {
        let advice = if dir.join("model.safetensors.index.json").is_file() {
            "sharded safetensors are not supported yet: merge the shards into one model.safetensors"
        } else if dir.join("pytorch_model.bin").is_file() {
            "pickle weights (pytorch_model.bin) are never loaded: convert them to safetensors"
        } else {
            "download the repo's model.safetensors into the snapshot"
        };
        return Err(PinError::Missing(format!(
            "{} has no {WEIGHTS}: {advice}",
            dir.display()
        )));
    }
    if !dir.join(TOKENIZER).is_file() {
        return Err(PinError::Missing(format!(
            "{} has no {TOKENIZER}: save the fast tokenizer (AutoTokenizer.from_pretrained(...)\
             .save_pretrained(dir)) into the snapshot",
            dir.display()
        )));
    }
    Ok(())
}

/// What the user states rather than the snapshot.
#[derive(Clone, Debug, Default)]
pub struct PinOptions {
    /// Hugging Face repo id, e.g. `BAAI/bge-reranker-base`.
    pub repo: String,
    /// The snapshot's full 40-hex commit.
    pub revision: String,
    /// Overrides the snapshot's longest input.
    pub max_seq_length: Option<usize>,
    /// Pooling of an embedding model: required when the snapshot has no sentence-transformers
    /// `modules.json`, and wins over it otherwise.
    pub pooling: Option<Pooling>,
    /// Whether embeddings are L2-normalised: wins over the snapshot's `Normalize` module.
    pub normalize: Option<bool>,
}

/// Pins the snapshot in `dir` as `options.repo` at `options.revision`.
pub fn pin(dir: &Path, options: &PinOptions) -> Result<Pinned, PinError> {
    let (repo, revision) = (options.repo.as_str(), options.revision.as_str());
    let config_path = dir.join(CONFIG);
    let config = read_json(&config_path)?
        .ok_or_else(|| PinError::Missing(format!("{} has no {CONFIG}", dir.display())))?;
    require_files(dir)?;
    let architecture = Architecture::from_config(&config)
        .map_err(|e| PinError::Unsupported(format!("{}: {e}", config_path.display())))?;
    let family = spec_family(architecture.family);
    let labels = label_names(&config).len();
    let task = spec_task(architecture.task, labels);
    let pipeline = pipeline(dir)?;
    let (pooling, normalize) = match (&pipeline, task, options.pooling) {
        (_, Task::Embed, Some(pooling)) => {
            (pooling, pipeline.as_ref().is_some_and(|p| p.normalize))
        }
        (Some(p), Task::Embed, None) => {
            if p.splade {
                return Err(PinError::Unsupported(format!(
                    "{}: SPLADE pooling needs a *ForMaskedLM checkpoint",
                    config_path.display()
                )));
            }
            let pooling = p.pooling.ok_or_else(|| {
                PinError::Missing("modules.json has no Pooling module: pass --pooling".into())
            })?;
            (pooling, p.normalize)
        }
        (None, Task::Embed, None) => {
            return Err(PinError::Missing(format!(
                "{} has no sentence-transformers modules.json: pass --pooling (mean, cls or \
                 last_token), and --normalize true if the model's embeddings are normalised",
                dir.display()
            )))
        }
        (Some(p), Task::SparseEmbed, _) if p.splade => (Pooling::Cls, false),
        (_, Task::SparseEmbed, _) => {
            return Err(PinError::Unsupported(format!(
                "{}: a masked-LM checkpoint is served as SPLADE only, and modules.json has no \
                 SpladePooling module",
                config_path.display()
            )))
        }
        // Classifiers and re-rankers have no pooling of their own (the head picks its row);
        // the field is required, so it records what would be pooled: the first token.
        (_, Task::Classify | Task::Rerank, _) => (Pooling::Cls, false),
        (_, Task::Generate, _) => {
            return Err(PinError::Unsupported(
                "generation checkpoints are not pinned by seal pin".into(),
            ))
        }
    };
    let normalize = options.normalize.unwrap_or(normalize);
    let max_seq_length = match options.max_seq_length {
        Some(n) => n,
        None => max_seq_length(dir, &config)?,
    };
    let (prompts, default_prompt_name) = prompts(dir)?;
    let spec = ModelSpec {
        model: ModelSection {
            id: repo.to_string(),
            revision: revision.to_string(),
            family,
            task,
            pooling,
            normalize,
            max_seq_length,
            license: None,
            prompts,
            default_prompt_name,
        },
        files: vec![
            file_spec(dir, WEIGHTS, FileRole::Weights)?,
            file_spec(dir, TOKENIZER, FileRole::Tokenizer)?,
            file_spec(dir, CONFIG, FileRole::Config)?,
        ],
        mirror: None,
    };
    let toml = to_toml(&spec, dir);
    let parsed = ModelSpec::parse(&toml, "the generated model.toml")?;
    debug_assert_eq!(parsed, spec);
    Ok(Pinned { spec: parsed, toml })
}

/// A TOML basic string: JSON's escapes are all valid TOML escapes.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// model.toml text for `spec`, commented with where each value came from.
fn to_toml(spec: &ModelSpec, dir: &Path) -> String {
    let m = &spec.model;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {}, pinned by `seal pin` from {}.",
        m.id,
        dir.display()
    );
    let _ = writeln!(
        out,
        "# family and task from config.json; pooling, normalize, prompts and max_seq_length from \
         the sentence-transformers files.\n# Check license before shipping; {METADATA_FILE} is \
         generated from this file and signed."
    );
    let _ = writeln!(out, "\n[model]");
    let _ = writeln!(out, "id = {}", quoted(&m.id));
    let _ = writeln!(out, "revision = {}", quoted(&m.revision));
    let _ = writeln!(out, "family = {}", quoted(&m.family.to_string()));
    let _ = writeln!(out, "task = {}", quoted(&serde_name(&m.task)));
    let _ = writeln!(out, "pooling = {}", quoted(&m.pooling.to_string()));
    let _ = writeln!(out, "normalize = {}", m.normalize);
    let _ = writeln!(out, "max_seq_length = {}", m.max_seq_length);
    if let Some(name) = &m.default_prompt_name {
        let _ = writeln!(out, "default_prompt_name = {}", quoted(name));
    }
    if !m.prompts.is_empty() {
        let _ = writeln!(out, "\n[model.prompts]");
        for (name, text) in &m.prompts {
            let _ = writeln!(out, "{} = {}", quoted(name), quoted(text));
        }
    }
    for file in &spec.files {
        let role = serde_name(&file.role);
        let _ = writeln!(out, "\n[[files]]");
        let _ = writeln!(out, "name = {}", quoted(&file.name));
        let _ = writeln!(out, "role = {}", quoted(&role));
        let _ = writeln!(out, "size = {}", file.size);
        let _ = writeln!(out, "sha256 = {}", quoted(&file.sha256));
    }
    out
}

/// Writes the model.toml (and its folder); refuses to replace one unless `force`.
pub fn write(pinned: &Pinned, out: &Path, force: bool) -> Result<(), PinError> {
    if out.exists() && !force {
        return Err(PinError::Exists(out.display().to_string()));
    }
    let failed = |source| PinError::Write {
        path: out.display().to_string(),
        source,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(out, &pinned.toml).map_err(failed)
}

/// How model.toml spells a value (its serde name), so a new variant needs no change here.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
