//! The interface every new model family exposes, close to the packed-batch model trait of the
//! core layer (issue 13), so wiring a family into the engine is a thin adapter:
//! - a **packed** forward: sequences back to back (`ids` + per-sequence `lengths`, optional
//!   `type_ids` for pair inputs), hidden states `[Σ lengths, hidden]` — no padding crosses the
//!   interface, each family pads (or not) inside itself;
//! - a **padded** forward over `[batch, seq]` ids with a `[batch, seq]` mask (1 = real token),
//!   right-padded, for callers that already hold a rectangle;
//! - the hidden size and the longest sequence the model accepts.
//!
//! Also: which family and task a `config.json` describes ([`Architecture`]), so `seal pin` and
//! `serve` can name it and refuse what is not supported.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::LoadError;

/// Sequences given back to back.
#[derive(Clone, Copy, Debug)]
pub struct PackedBatch<'a> {
    /// Token ids of all sequences, concatenated.
    pub ids: &'a [u32],
    /// Length of each sequence; they add up to `ids.len()`.
    pub lengths: &'a [usize],
    /// Segment ids (0 for the first text of a pair, 1 for the second), same layout as `ids`;
    /// `None` means all zero. Only families with token-type embeddings read them.
    pub type_ids: Option<&'a [u32]>,
}

impl<'a> PackedBatch<'a> {
    pub fn new(ids: &'a [u32], lengths: &'a [usize]) -> Self {
        Self {
            ids,
            lengths,
            type_ids: None,
        }
    }

    /// Checks the batch is well formed and no sequence is longer than `max_positions`.
    pub fn validate(&self, max_positions: usize) -> candle_core::Result<()> {
        if self.lengths.iter().sum::<usize>() != self.ids.len() {
            candle_core::bail!("packed batch: lengths do not add up to the ids");
        }
        if self.type_ids.is_some_and(|t| t.len() != self.ids.len()) {
            candle_core::bail!("packed batch: type ids do not match the ids");
        }
        if let Some(empty) = self.lengths.iter().position(|l| *l == 0) {
            candle_core::bail!("packed batch: sequence {empty} is empty");
        }
        if let Some(len) = self.lengths.iter().find(|l| **l > max_positions) {
            candle_core::bail!(
                "sequence of {len} tokens exceeds the model's {max_positions} positions"
            );
        }
        Ok(())
    }

    /// `(first row, length)` of each sequence.
    pub fn spans(&self) -> Vec<(usize, usize)> {
        let mut first = 0;
        self.lengths
            .iter()
            .map(|len| {
                let span = (first, *len);
                first += len;
                span
            })
            .collect()
    }

    /// Position of every token within its sequence (0-based), same layout as `ids`.
    pub fn positions(&self) -> Vec<u32> {
        self.lengths.iter().flat_map(|len| 0..*len as u32).collect()
    }

    /// The longest sequence.
    pub fn longest(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// The batch as a right-padded rectangle: ids and type ids `[batch, longest]` (padding with
    /// `pad_id` and type 0).
    pub fn padded(&self, pad_id: u32) -> (Vec<u32>, Vec<u32>, usize) {
        let seq = self.longest();
        let mut ids = Vec::with_capacity(self.lengths.len() * seq);
        let mut types = Vec::with_capacity(self.lengths.len() * seq);
        for (first, len) in self.spans() {
            ids.extend_from_slice(&self.ids[first..first + len]);
            ids.resize(ids.len() + seq - len, pad_id);
            match self.type_ids {
                Some(t) => types.extend_from_slice(&t[first..first + len]),
                None => types.resize(types.len() + len, 0),
            }
            types.resize(types.len() + seq - len, 0);
        }
        (ids, types, seq)
    }
}

/// A packed batch that owns its vectors.
#[derive(Clone, Debug, Default)]
pub struct OwnedBatch {
    pub ids: Vec<u32>,
    pub lengths: Vec<usize>,
    pub type_ids: Option<Vec<u32>>,
}

impl OwnedBatch {
    pub fn as_batch(&self) -> PackedBatch<'_> {
        PackedBatch {
            ids: &self.ids,
            lengths: &self.lengths,
            type_ids: self.type_ids.as_deref(),
        }
    }
}

/// Turns a padded call (`[batch, seq]` ids, optional mask and type ids) into a packed batch.
/// Masks must be a prefix of ones (right padding): what tokenizers and the engine produce.
pub fn pack_padded(
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    type_ids: Option<&Tensor>,
) -> candle_core::Result<OwnedBatch> {
    let (batch, seq) = input_ids.dims2()?;
    let rows = input_ids.to_vec2::<u32>()?;
    let lengths: Vec<usize> = match attention_mask {
        None => vec![seq; batch],
        Some(mask) => {
            let mask = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            mask.iter()
                .map(|row| {
                    let len = row.iter().take_while(|v| **v > 0.5).count();
                    if row[len..].iter().any(|v| *v > 0.5) {
                        candle_core::bail!("attention mask is not right-padded (a prefix of ones)");
                    }
                    Ok(len)
                })
                .collect::<candle_core::Result<_>>()?
        }
    };
    let ids = rows
        .iter()
        .zip(&lengths)
        .flat_map(|(row, len)| row[..*len].to_vec())
        .collect();
    let types = type_ids
        .map(|t| -> candle_core::Result<Vec<u32>> {
            Ok(t.to_vec2::<u32>()?
                .iter()
                .zip(&lengths)
                .flat_map(|(row, len)| row[..*len].to_vec())
                .collect())
        })
        .transpose()?;
    Ok(OwnedBatch {
        ids,
        lengths,
        type_ids: types,
    })
}

/// Scatters packed rows `[Σ lengths, h]` back into a zero-padded `[batch, seq, h]`.
pub fn repad(packed: &Tensor, lengths: &[usize], seq: usize) -> candle_core::Result<Tensor> {
    let width = packed.dim(1)?;
    let mut pieces = Vec::with_capacity(lengths.len());
    let mut first = 0;
    for len in lengths {
        let rows = packed.narrow(0, first, *len)?;
        let rows = if *len < seq {
            rows.pad_with_zeros(0, 0, seq - len)?
        } else {
            rows
        };
        pieces.push(rows.reshape((1, seq, width))?);
        first += len;
    }
    Tensor::cat(&pieces, 0)
}

/// A network of any new family: token ids in, hidden states out.
pub trait Network: Send + Sync {
    /// Hidden states `[Σ lengths, hidden]` for sequences given back to back.
    fn forward_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor>;

    /// Hidden states `[batch, seq, hidden]` for right-padded ids; rows past a sequence's length
    /// are zero. `attention_mask` `None` means nothing is padded.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        type_ids: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let seq = input_ids.dim(1)?;
        let packed = pack_padded(input_ids, attention_mask, type_ids)?;
        repad(
            &self.forward_packed(&packed.as_batch())?,
            &packed.lengths,
            seq,
        )
    }

    /// Width of each token's hidden state.
    fn hidden_size(&self) -> usize;

    /// Longest sequence the model accepts (position table or configured maximum).
    fn max_positions(&self) -> usize;

    /// Whether the network reads `type_ids` (BERT-style segment embeddings with more than one
    /// type); pair inputs of other families are told apart by separator tokens alone.
    fn uses_type_ids(&self) -> bool {
        false
    }
}

/// The model families this module implements, as `config.json` names them (`model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyKind {
    /// `bert`: BERT, MiniLM, BGE, E5, ms-marco cross-encoders.
    Bert,
    /// `roberta` / `xlm-roberta` / `camembert`: XLM-R, multilingual-e5, bge-m3, bge-reranker.
    XlmRoberta,
    /// `distilbert`.
    DistilBert,
    /// `mpnet`: all-mpnet-base-v2.
    MpNet,
    /// `modernbert`.
    ModernBert,
    /// `qwen2`: decoder embeddings (gte-Qwen2 style, causal).
    Qwen2,
    /// `qwen3`: Qwen3-Embedding.
    Qwen3,
    /// `gte` / `new`: Alibaba GTE v1.5 / multilingual.
    Gte,
    /// `nomic_bert`: nomic-embed-text.
    NomicBert,
}

/// What the checkpoint's head computes (from `architectures[0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Hidden states only (`*Model`): embeddings after pooling.
    Embedding,
    /// `*ForSequenceClassification`: logits per label (one label: a cross-encoder reranker).
    SequenceClassification,
    /// `*ForMaskedLM`: vocabulary logits per token (SPLADE sparse embeddings).
    MaskedLm,
}

/// Family and task read from `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Architecture {
    pub family: FamilyKind,
    pub task: Task,
}

impl Architecture {
    /// Reads `model_type` and `architectures` and says clearly what is not supported.
    pub fn from_config(config: &serde_json::Value) -> Result<Self, LoadError> {
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| LoadError::Config("config.json has no model_type".into()))?;
        let family = match model_type {
            "bert" => FamilyKind::Bert,
            "roberta" | "xlm-roberta" | "camembert" => FamilyKind::XlmRoberta,
            "distilbert" => FamilyKind::DistilBert,
            "mpnet" => FamilyKind::MpNet,
            "modernbert" => FamilyKind::ModernBert,
            "qwen2" => FamilyKind::Qwen2,
            "qwen3" => FamilyKind::Qwen3,
            "gte" | "new" => FamilyKind::Gte,
            "nomic_bert" => FamilyKind::NomicBert,
            other => {
                return Err(LoadError::Config(format!(
                    "model_type {other:?} is not supported; supported: bert, roberta, \
                     xlm-roberta, camembert, distilbert, mpnet, modernbert, qwen2, qwen3, gte, \
                     nomic_bert"
                )))
            }
        };
        let architecture = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .unwrap_or("");
        let task = if architecture.ends_with("ForSequenceClassification") {
            Task::SequenceClassification
        } else if architecture.ends_with("ForMaskedLM") {
            Task::MaskedLm
        } else if architecture.ends_with("Model") || architecture.is_empty() {
            Task::Embedding
        } else if architecture.ends_with("ForCausalLM") {
            // Qwen3-Embedding checkpoints saved from the LM class: the body is what embeds.
            Task::Embedding
        } else {
            return Err(LoadError::Config(format!(
                "architecture {architecture:?} is not supported: use a *Model, \
                 *ForSequenceClassification or *ForMaskedLM checkpoint"
            )));
        };
        Ok(Self { family, task })
    }
}

/// Parses `config.json` bytes into JSON.
pub fn parse_config(bytes: &[u8]) -> Result<serde_json::Value, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| LoadError::Config(format!("config.json: {e}")))
}

/// Deserialises a typed config from the JSON value.
pub fn typed_config<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, LoadError> {
    T::deserialize(value).map_err(|e| LoadError::Config(format!("config.json: {e}")))
}

/// A VarBuilder over safetensors bytes held in memory (no file is read).
pub fn var_builder<'a>(
    safetensors: &'a [u8],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'a>, LoadError> {
    let tensors = candle_core::safetensors::SliceSafetensors::new(safetensors)?;
    Ok(VarBuilder::from_backend(
        Box::new(tensors),
        dtype,
        device.clone(),
    ))
}

/// The VarBuilder under `prefix` when the checkpoint's weights carry it (a `*For…` class saves
/// its body under e.g. `bert.`), else the root.
pub fn under_prefix<'a>(vb: &VarBuilder<'a>, prefix: &str, probe: &str) -> VarBuilder<'a> {
    if vb.contains_tensor(&format!("{prefix}.{probe}")) {
        vb.pp(prefix)
    } else {
        vb.clone()
    }
}
