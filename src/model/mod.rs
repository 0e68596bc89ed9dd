//! Model families: how verified weight bytes become a network that maps packed token sequences to
//! hidden states. One submodule per family behind the [`Model`] trait; [`load`] picks the family
//! named in `sealserve.json`, and nothing above this module names a concrete family.
//!
//! Why a trait over packed batches (ids back to back plus per-sequence lengths, TEI's `Batch`):
//! padding, masks and fused paths are each family's own business. An encoder may pad sequences of
//! similar length together on a GPU, or run them packed with no padding at all on CPU; a decoder
//! (causal attention, last-token pooling) builds its own causal masks. The engine only hands over
//! the batch and pools what comes back.
//!
//! Knows nothing about tokenizers, batching, pooling or HTTP.

pub mod bert;
pub mod bert_like;
pub mod families;
pub mod gte;
pub mod heads;
pub mod layers;
pub mod llama;
pub mod modernbert;
pub mod network;
pub mod plan;
pub mod qwen;

use crate::spec::{Family, Task};
use candle_core::Shape;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Why a model could not be built from the verified bytes.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model config is not usable: {0}")]
    Config(String),
    #[error("weights do not fit the model: {0}")]
    Weights(#[from] candle_core::Error),
}

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("empty token sequence at position {0}: every input has at least its special tokens")]
    EmptySequence(usize),
    #[error("the batch is inconsistent: {0}")]
    Batch(String),
    #[error("this model does not support {0}")]
    Unsupported(&'static str),
}

/// A batch of token sequences laid back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Every sequence's ids, concatenated.
    pub ids: Vec<u32>,
    /// Each sequence's length; they add up to `ids.len()`.
    pub lengths: Vec<usize>,
    /// Segment ids (0 = first text, 1 = second) for pair inputs of rerankers and classifiers;
    /// `None` means every token is segment 0.
    pub token_type_ids: Option<Vec<u32>>,
}

impl Packed {
    /// Packs single-segment sequences; an empty sequence is refused (it has no token to pool).
    pub fn from_sequences(sequences: &[Vec<u32>]) -> Result<Self, ModelError> {
        if let Some(empty) = sequences.iter().position(Vec::is_empty) {
            return Err(ModelError::EmptySequence(empty));
        }
        Ok(Self {
            ids: sequences.concat(),
            lengths: sequences.iter().map(Vec::len).collect(),
            token_type_ids: None,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Index of each sequence's first token in `ids`.
    pub fn offsets(&self) -> Vec<usize> {
        self.lengths
            .iter()
            .scan(0, |next, len| {
                let first = *next;
                *next += len;
                Some(first)
            })
            .collect()
    }

    /// Checks that lengths, ids and segment ids agree.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.lengths.iter().sum::<usize>() != self.ids.len() {
            return Err(ModelError::Batch("lengths do not add up to the ids".into()));
        }
        if let Some(empty) = self.lengths.iter().position(|l| *l == 0) {
            return Err(ModelError::EmptySequence(empty));
        }
        if let Some(types) = &self.token_type_ids {
            if types.len() != self.ids.len() {
                return Err(ModelError::Batch(
                    "token_type_ids and ids differ in length".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Final hidden states of some of a batch's sequences: the rows of `members` (indices into the
/// batch) back to back, in that order, as `[sum of their lengths, hidden]`.
#[derive(Debug)]
pub struct HiddenChunk {
    pub members: Vec<usize>,
    pub hidden: Tensor,
}

/// Which tokens a position attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// Every token sees the whole sequence (BERT-style encoders).
    Bidirectional,
    /// A token sees itself and earlier tokens only (decoders; pooled by their last token).
    Causal,
}

/// A loaded network of any family. `Sync` so that the engine can run a CPU call on a thread of
/// rayon's pool (`Embedder`), the pool its parallel ops use.
pub trait Model: Send + Sync {
    /// Width of each token's hidden state (the embedding dimension).
    fn hidden_size(&self) -> usize;
    /// Longest sequence the model accepts.
    fn max_positions(&self) -> usize;
    /// Bidirectional encoder or causal decoder.
    fn attention(&self) -> Attention;
    /// Dtype the network computes in.
    fn dtype(&self) -> DType;
    /// Device the weights live on.
    fn device(&self) -> &Device;
    /// Final hidden states of every sequence in `batch`. The family decides how to run it
    /// (padded forwards of similar lengths, or packed with no padding), keeping one forward
    /// within `max_forward_tokens` padded tokens unless a single sequence is longer.
    fn hidden_states(
        &self,
        batch: &Packed,
        max_forward_tokens: usize,
    ) -> Result<Vec<HiddenChunk>, ModelError>;
    /// [`Self::hidden_states`] one forward at a time: `each` gets every chunk as soon as its
    /// forward has run, and the engine pools it and drops it before the next forward starts.
    ///
    /// Why: a batch over one forward's budget runs as several forwards. Collected first, every
    /// finished chunk stays alive while the later forwards run, so memory grows with the number
    /// of forwards instead of staying at one forward's working set (`max_forward_tokens` bounds
    /// activation memory only if chunks are let go). The default hands over what
    /// `hidden_states` collected; a family that runs several forwards overrides this and builds
    /// `hidden_states` on it.
    fn for_each_hidden_chunk(
        &self,
        batch: &Packed,
        max_forward_tokens: usize,
        each: &mut dyn FnMut(HiddenChunk) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        self.hidden_states(batch, max_forward_tokens)?
            .into_iter()
            .try_for_each(each)
    }
    /// Scores of a classification or rerank head, one vector per sequence. Families without a
    /// head keep the default.
    fn predict(
        &self,
        _batch: &Packed,
        _max_forward_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        Err(ModelError::Unsupported(
            "classification (this model has no prediction head)",
        ))
    }
    /// Label names of a classification head, by logit index; empty for models without one.
    fn labels(&self) -> &[String] {
        &[]
    }
    /// SPLADE sparse weights of each sequence: the non-zero `(vocabulary index, weight)` pairs,
    /// by index. Models without a masked-LM head keep the default.
    fn sparse_embed(
        &self,
        _batch: &Packed,
        _max_forward_tokens: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        Err(ModelError::Unsupported(
            "sparse embeddings (this model has no masked-LM head)",
        ))
    }
}

/// The verified files a family is built from.
#[derive(Clone, Copy)]
pub struct ModelFiles {
    pub config_json: &'static [u8],
    pub safetensors: &'static [u8],
}

/// Builds the family's network from files held in memory; no file is read or written. An
/// embedding model: what every bundle without a `task` is.
pub fn load(
    family: Family,
    files: ModelFiles,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Model>, LoadError> {
    load_for_task(family, Task::Embed, files, dtype, device)
}

/// Builds the network for the signed `task`: an embedder, a classifier or reranker (a
/// `*ForSequenceClassification` checkpoint), or a SPLADE sparse encoder (`*ForMaskedLM`).
/// BERT embedders keep their own fused path (`bert`); every head goes through
/// [`families::FamilyModel`], which refuses a checkpoint that is not what the task says.
pub fn load_for_task(
    family: Family,
    task: Task,
    files: ModelFiles,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Model>, LoadError> {
    match (family, task) {
        // Decoders run under the generation scheduler (`crate::generate`), not this trait.
        (Family::Llama, _) => Err(LoadError::Config(
            "a llama bundle is a generation model: serve loads it with the generation engine"
                .into(),
        )),
        (_, Task::Generate) => Err(LoadError::Config(format!(
            "the {family} family cannot generate text: task = \"generate\" needs a generation \
             model; use task = \"embed\", \"classify\", \"rerank\" or \"sparse_embed\""
        ))),
        (Family::Bert, Task::Embed) => {
            Ok(Box::new(bert::BertModel::from_files(files, dtype, device)?))
        }
        (
            Family::Bert
            | Family::DistilBert
            | Family::XlmRoberta
            | Family::MpNet
            | Family::ModernBert
            | Family::Qwen2
            | Family::Qwen3
            | Family::Gte
            | Family::NomicBert,
            _,
        ) => Ok(Box::new(families::FamilyModel::load(
            family, task, files, dtype, device,
        )?)),
    }
}

/// Safetensors read from memory that drop each tensor's source pages once it is copied, so the
/// embedded weights and the loaded tensors are never both resident in full (see `memory`).
pub(crate) struct ReleasingSafetensors<'a> {
    pub(crate) inner: candle_core::safetensors::SliceSafetensors<'a>,
}

impl ReleasingSafetensors<'_> {
    fn release(&self, name: &str) {
        if let Ok(view) = self.inner.get(name) {
            crate::memory::release_pages(view.data());
        }
    }
}

impl SimpleBackend for ReleasingSafetensors<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = SimpleBackend::get(&self.inner, shape, name, init, dtype, device)?;
        self.release(name);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = SimpleBackend::get_unchecked(&self.inner, name, dtype, device)?;
        self.release(name);
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.inner, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_order_and_refuses_empty_sequences() {
        let packed = Packed::from_sequences(&[vec![1, 2, 3], vec![4], vec![5, 6]]).unwrap();
        assert_eq!(packed.ids, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(packed.lengths, vec![3, 1, 2]);
        assert_eq!(packed.offsets(), vec![0, 3, 4]);
        assert!(packed.check().is_ok());
        assert!(matches!(
            Packed::from_sequences(&[vec![1], vec![]]),
            Err(ModelError::EmptySequence(1))
        ));
        let mut bad = packed.clone();
        bad.lengths[0] = 4;
        assert!(matches!(bad.check(), Err(ModelError::Batch(_))));
        bad.lengths[0] = 3;
        bad.token_type_ids = Some(vec![0; 5]);
        assert!(matches!(bad.check(), Err(ModelError::Batch(_))));
    }
}
