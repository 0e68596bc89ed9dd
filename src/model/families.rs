//! Builds a network, classifier or sparse encoder of any new family from `config.json` bytes and
//! in-memory safetensors (no file is read): the family and task come from the config
//! ([`Architecture`]), so a checkpoint can only be loaded as what it is.
//!
//! Why our own implementations rather than candle-transformers' models: those take padded
//! batches only (no packed form), mask with `f32::MIN`/`-inf` (NaN in f16 for the BERT family,
//! see `bert.rs`), and its decoders are KV-cached generators with a mutable forward rather than
//! batch encoders with padding; sharing `layers` here keeps one mask, softmax and rotary
//! convention that tests/families.rs holds to `transformers` within 1e-5 for every family.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::bert_like::{BertLike, BertLikeConfig};
use super::gte::{Gte, GteConfig};
use super::heads::{
    self, Classifier, ClassifierHead, HeadActivation, HeadPooling, HeadSpec, MaskedLmHead,
    SparseEncoder,
};
use super::layers::Activation;
use super::modernbert::{ModernBert, ModernBertConfig};
use super::network::{self, Architecture, FamilyKind, Network, Task};
use super::qwen::{Qwen, QwenConfig};
use super::LoadError;

/// A loaded checkpoint of any new family, as its task says.
pub enum Loaded {
    Embedding(Box<dyn Network>),
    Classifier(Classifier),
    Sparse(SparseEncoder),
}

/// Loads whatever `config.json` describes.
pub fn load(
    config_json: &[u8],
    safetensors: &[u8],
    dtype: DType,
    device: &Device,
) -> Result<Loaded, LoadError> {
    let value = network::parse_config(config_json)?;
    let architecture = Architecture::from_config(&value)?;
    let config = BodyConfig::parse(architecture.family, &value)?;
    let vb = network::var_builder(safetensors, dtype, device)?;
    Ok(match architecture.task {
        Task::Embedding => Loaded::Embedding(config.build(&vb)?),
        Task::SequenceClassification => Loaded::Classifier(classifier(config, &value, &vb)?),
        Task::MaskedLm => Loaded::Sparse(sparse(config, &vb)?),
    })
}

/// Loads the body of a checkpoint as an embedding network, whatever head it carries.
pub fn load_network(
    config_json: &[u8],
    safetensors: &[u8],
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Network>, LoadError> {
    let value = network::parse_config(config_json)?;
    let architecture = Architecture::from_config(&value)?;
    let config = BodyConfig::parse(architecture.family, &value)?;
    let vb = network::var_builder(safetensors, dtype, device)?;
    Ok(config.build(&vb)?)
}

/// A family's parsed config: checked before any weight is read, so a config the code cannot
/// run is refused with its own message.
enum BodyConfig {
    BertLike(BertLikeConfig),
    ModernBert(ModernBertConfig),
    Qwen(QwenConfig),
    Gte(GteConfig),
}

impl BodyConfig {
    fn parse(family: FamilyKind, value: &serde_json::Value) -> Result<Self, LoadError> {
        Ok(match family {
            FamilyKind::Bert
            | FamilyKind::XlmRoberta
            | FamilyKind::DistilBert
            | FamilyKind::MpNet => Self::BertLike(BertLikeConfig::from_json(family, value)?),
            FamilyKind::ModernBert => Self::ModernBert(ModernBertConfig::from_json(value)?),
            FamilyKind::Qwen2 | FamilyKind::Qwen3 => {
                Self::Qwen(QwenConfig::from_json(family, value)?)
            }
            FamilyKind::Gte | FamilyKind::NomicBert => {
                Self::Gte(GteConfig::from_json(family, value)?)
            }
        })
    }

    fn build(&self, vb: &VarBuilder) -> candle_core::Result<Box<dyn Network>> {
        Ok(match self {
            Self::BertLike(c) => Box::new(BertLike::load(vb, c.clone())?),
            Self::ModernBert(c) => Box::new(ModernBert::load(vb, c.clone())?),
            Self::Qwen(c) => Box::new(Qwen::load(vb, c.clone())?),
            Self::Gte(c) => Box::new(Gte::load(vb, c.clone())?),
        })
    }
}

/// A `*ForSequenceClassification` checkpoint: body, head and label names.
fn classifier(
    config: BodyConfig,
    value: &serde_json::Value,
    vb: &VarBuilder,
) -> Result<Classifier, LoadError> {
    let labels = heads::label_names(value);
    let network = config.build(vb)?;
    let hidden = network.hidden_size();
    let tanh = HeadActivation::Tanh;
    let gte_pooler;
    let spec = match &config {
        BodyConfig::BertLike(c) if c.kind == FamilyKind::Bert => HeadSpec {
            pooling: HeadPooling::First,
            dense: Some(("bert.pooler.dense", true, tanh)),
            norm: None,
            output: ("classifier", true),
        },
        BodyConfig::BertLike(c) if c.kind == FamilyKind::DistilBert => HeadSpec {
            pooling: HeadPooling::First,
            dense: Some((
                "pre_classifier",
                true,
                HeadActivation::Other(Activation::Relu),
            )),
            norm: None,
            output: ("classifier", true),
        },
        BodyConfig::BertLike(_) => HeadSpec {
            pooling: HeadPooling::First,
            dense: Some(("classifier.dense", true, tanh)),
            norm: None,
            output: ("classifier.out_proj", true),
        },
        BodyConfig::ModernBert(c) => HeadSpec {
            pooling: if c.classifier_pooling == "mean" {
                HeadPooling::Mean
            } else {
                HeadPooling::First
            },
            dense: Some((
                "head.dense",
                c.classifier_bias,
                HeadActivation::Other(c.classifier_activation),
            )),
            norm: Some(("head.norm", c.norm_eps, c.norm_bias)),
            output: ("classifier", true),
        },
        BodyConfig::Qwen(c) => HeadSpec {
            pooling: HeadPooling::LastNonPad(c.pad_token_id),
            dense: None,
            norm: None,
            output: ("score", false),
        },
        BodyConfig::Gte(c) if !c.nomic => {
            gte_pooler = ["gte", "new"]
                .into_iter()
                .map(|p| format!("{p}.pooler.dense"))
                .find(|name| vb.contains_tensor(&format!("{name}.weight")))
                .unwrap_or_else(|| "gte.pooler.dense".into());
            HeadSpec {
                pooling: HeadPooling::First,
                dense: Some((gte_pooler.as_str(), true, tanh)),
                norm: None,
                output: ("classifier", true),
            }
        }
        BodyConfig::Gte(_) => {
            return Err(LoadError::Config(
                "NomicBERT checkpoints with a classification head are not supported".into(),
            ))
        }
    };
    let head = ClassifierHead::load(&spec, hidden, labels.len(), vb)?;
    Ok(Classifier::new(network, head, labels))
}

/// A `*ForMaskedLM` checkpoint as a SPLADE sparse encoder (BERT family).
fn sparse(config: BodyConfig, vb: &VarBuilder) -> Result<SparseEncoder, LoadError> {
    let config = match config {
        BodyConfig::BertLike(c) if c.kind == FamilyKind::Bert => c,
        _ => {
            return Err(LoadError::Config(
                "masked-LM checkpoints are supported for BERT (SPLADE) only".into(),
            ))
        }
    };
    let network: Box<dyn Network> = Box::new(BertLike::load(vb, config.clone())?);
    let root = network::under_prefix(vb, "bert", "embeddings.word_embeddings.weight");
    let (h, vocab) = (config.hidden_size, config.vocab_size);
    let head = MaskedLmHead::load_bert(
        vb,
        h,
        vocab,
        config.activation,
        config.layer_norm_eps,
        || root.get((vocab, h), "embeddings.word_embeddings.weight"),
    )?;
    Ok(SparseEncoder::new(network, head))
}

/// A checkpoint of a new family behind the engine's [`super::Model`] trait: the adapter `serve`
/// runs. The family and task named in the signed `sealserve.json` must be what `config.json`
/// describes: a classifier checkpoint is never served as an embedder, nor an embedder as a
/// reranker, whatever the bundle claims.
pub struct FamilyModel {
    loaded: Loaded,
    attention: super::Attention,
    dtype: DType,
    device: Device,
}

/// model.toml's spelling of a task, for messages.
fn task_name(task: crate::spec::Task) -> &'static str {
    use crate::spec::Task as Spec;
    match task {
        Spec::Embed => "embed",
        Spec::Classify => "classify",
        Spec::Rerank => "rerank",
        Spec::SparseEmbed => "sparse_embed",
        Spec::Generate => "generate",
    }
}

/// The signed task a checkpoint's head serves (`seal pin` writes it; `serve` checks it).
pub fn spec_task(task: Task, labels: usize) -> crate::spec::Task {
    use crate::spec::Task as Spec;
    match task {
        Task::Embedding => Spec::Embed,
        Task::SequenceClassification if labels == 1 => Spec::Rerank,
        Task::SequenceClassification => Spec::Classify,
        Task::MaskedLm => Spec::SparseEmbed,
    }
}

impl FamilyModel {
    /// Builds the model from the verified files; `family` and `task` are what the signed
    /// metadata says.
    pub fn load(
        family: crate::spec::Family,
        task: crate::spec::Task,
        files: super::ModelFiles,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, LoadError> {
        use crate::spec::Task as Spec;
        let value = network::parse_config(files.config_json)?;
        let architecture = Architecture::from_config(&value)?;
        if spec_family(architecture.family) != family {
            return Err(LoadError::Config(format!(
                "sealserve.json names the {family} family but config.json describes {}; \
                 re-pin the model (seal pin) so the two agree",
                spec_family(architecture.family)
            )));
        }
        let labels = heads::label_names(&value).len();
        let describes = spec_task(architecture.task, labels);
        let agrees = match task {
            Spec::Classify => architecture.task == Task::SequenceClassification,
            other => other == describes,
        };
        if !agrees {
            return Err(LoadError::Config(format!(
                "sealserve.json says task = \"{}\" but config.json describes a {:?} checkpoint \
                 with {labels} label(s) (task = \"{}\"); re-pin the model (seal pin) so the two \
                 agree",
                task_name(task),
                architecture.task,
                task_name(describes),
            )));
        }
        let config = BodyConfig::parse(architecture.family, &value)?;
        let vb = network::var_builder(files.safetensors, dtype, device)?;
        let loaded = match architecture.task {
            Task::Embedding => Loaded::Embedding(config.build(&vb)?),
            Task::SequenceClassification => Loaded::Classifier(classifier(config, &value, &vb)?),
            Task::MaskedLm => Loaded::Sparse(sparse(config, &vb)?),
        };
        let attention = match architecture.family {
            FamilyKind::Qwen2 | FamilyKind::Qwen3 => super::Attention::Causal,
            _ => super::Attention::Bidirectional,
        };
        Ok(Self {
            loaded,
            attention,
            dtype,
            device: device.clone(),
        })
    }

    /// The body every head sits on.
    fn network(&self) -> &dyn Network {
        match &self.loaded {
            Loaded::Embedding(network) => network.as_ref(),
            Loaded::Classifier(classifier) => classifier.network(),
            Loaded::Sparse(encoder) => encoder.network(),
        }
    }

    /// Runs `forward` on each forward of similar lengths (`model::plan`), each gathered into its
    /// own packed batch (segment ids only where the body reads them); the family pads inside.
    /// Returns each forward's members with what `forward` made of them.
    fn per_forward<T>(
        &self,
        batch: &super::Packed,
        max_forward_tokens: usize,
        forward: impl Fn(&network::PackedBatch) -> candle_core::Result<T>,
    ) -> Result<Vec<(Vec<usize>, T)>, super::ModelError> {
        batch.check()?;
        let offsets = batch.offsets();
        let all_types = batch
            .token_type_ids
            .as_ref()
            .filter(|_| self.network().uses_type_ids());
        super::plan::padded_forwards(&batch.lengths, max_forward_tokens.max(1))
            .into_iter()
            .map(|plan| {
                let mut ids = Vec::new();
                let mut types = all_types.map(|_| Vec::new());
                let mut lengths = Vec::with_capacity(plan.members.len());
                for member in &plan.members {
                    let span = offsets[*member]..offsets[*member] + batch.lengths[*member];
                    ids.extend_from_slice(&batch.ids[span.clone()]);
                    if let (Some(types), Some(all)) = (types.as_mut(), all_types) {
                        types.extend_from_slice(&all[span]);
                    }
                    lengths.push(batch.lengths[*member]);
                }
                let packed = network::PackedBatch {
                    ids: &ids,
                    lengths: &lengths,
                    type_ids: types.as_deref(),
                };
                Ok((plan.members, forward(&packed)?))
            })
            .collect()
    }

    /// One result per sequence, in batch order, from per-forward results of their members.
    fn in_order<T>(
        batch_len: usize,
        forwards: Vec<(Vec<usize>, Vec<T>)>,
    ) -> Result<Vec<T>, super::ModelError> {
        let mut rows: Vec<Option<T>> = (0..batch_len).map(|_| None).collect();
        for (members, values) in forwards {
            for (member, row) in members.into_iter().zip(values) {
                rows[member] = Some(row);
            }
        }
        rows.into_iter()
            .enumerate()
            .map(|(index, row)| {
                row.ok_or_else(|| {
                    super::ModelError::Batch(format!(
                        "the head returned nothing for sequence {index}"
                    ))
                })
            })
            .collect()
    }
}

/// The signed-metadata name of a family `config.json` describes.
pub fn spec_family(kind: FamilyKind) -> crate::spec::Family {
    use crate::spec::Family;
    match kind {
        FamilyKind::Bert => Family::Bert,
        FamilyKind::XlmRoberta => Family::XlmRoberta,
        FamilyKind::DistilBert => Family::DistilBert,
        FamilyKind::MpNet => Family::MpNet,
        FamilyKind::ModernBert => Family::ModernBert,
        FamilyKind::Qwen2 => Family::Qwen2,
        FamilyKind::Qwen3 => Family::Qwen3,
        FamilyKind::Gte => Family::Gte,
        FamilyKind::NomicBert => Family::NomicBert,
    }
}

impl super::Model for FamilyModel {
    fn hidden_size(&self) -> usize {
        self.network().hidden_size()
    }

    fn max_positions(&self) -> usize {
        self.network().max_positions()
    }

    fn attention(&self) -> super::Attention {
        self.attention
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn hidden_states(
        &self,
        batch: &super::Packed,
        max_forward_tokens: usize,
    ) -> Result<Vec<super::HiddenChunk>, super::ModelError> {
        Ok(self
            .per_forward(batch, max_forward_tokens, |packed| {
                self.network().forward_packed(packed)
            })?
            .into_iter()
            .map(|(members, hidden)| super::HiddenChunk { members, hidden })
            .collect())
    }

    /// Raw logits of the classification head, one vector (one value per label) per sequence.
    fn predict(
        &self,
        batch: &super::Packed,
        max_forward_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, super::ModelError> {
        let Loaded::Classifier(classifier) = &self.loaded else {
            return Err(super::ModelError::Unsupported(
                "classification (this model has no prediction head)",
            ));
        };
        let forwards = self.per_forward(batch, max_forward_tokens, |packed| {
            classifier.predict_packed(packed)?.to_vec2::<f32>()
        })?;
        Self::in_order(batch.len(), forwards)
    }

    fn labels(&self) -> &[String] {
        match &self.loaded {
            Loaded::Classifier(classifier) => classifier.labels(),
            _ => &[],
        }
    }

    fn sparse_embed(
        &self,
        batch: &super::Packed,
        max_forward_tokens: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>, super::ModelError> {
        let Loaded::Sparse(encoder) = &self.loaded else {
            return Err(super::ModelError::Unsupported(
                "sparse embeddings (this model has no masked-LM head)",
            ));
        };
        let forwards =
            self.per_forward(batch, max_forward_tokens, |packed| encoder.sparse(packed))?;
        Self::in_order(batch.len(), forwards)
    }
}
