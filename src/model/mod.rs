//! Model families: how verified weight bytes become a network that maps token ids to hidden
//! states. One submodule per family; this file picks the family named in `sealserve.json`.
//!
//! Knows nothing about batching, pooling or HTTP.

pub mod bert;
pub mod llama;

use crate::spec::Family;
use candle_core::Shape;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Why a model could not be built from the verified bytes.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model config is not usable: {0}")]
    Config(String),
    #[error("weights do not fit the model: {0}")]
    Weights(#[from] candle_core::Error),
}

/// An encoder of any supported family.
pub enum Encoder {
    Bert(bert::BertModel),
}

impl Encoder {
    /// Builds the family's network from config.json and safetensors bytes held in memory; no
    /// file is read or written.
    pub fn load(
        family: Family,
        config_json: &[u8],
        safetensors: &'static [u8],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, LoadError> {
        match family {
            Family::Bert => {
                let config = bert::BertConfig::from_json(config_json).map_err(LoadError::Config)?;
                let tensors = candle_core::safetensors::SliceSafetensors::new(safetensors)?;
                let mapped = (device.is_cpu() && dtype == DType::F32)
                    .then(|| mapped_table(safetensors, "embeddings.word_embeddings.weight"))
                    .flatten();
                let vb = VarBuilder::from_backend(
                    Box::new(ReleasingSafetensors { inner: tensors }),
                    dtype,
                    device.clone(),
                );
                Ok(Encoder::Bert(bert::BertModel::load(vb, config, mapped)?))
            }
        }
    }

    /// Hidden states `[batch, seq, hidden]`; `attention_mask` is `None` when nothing is padded.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match self {
            Encoder::Bert(model) => model.forward(input_ids, attention_mask),
        }
    }

    /// Width of each token's hidden state (the embedding dimension).
    pub fn hidden_size(&self) -> usize {
        match self {
            Encoder::Bert(model) => model.config().hidden_size,
        }
    }

    /// Longest sequence the position embeddings allow.
    pub fn max_positions(&self) -> usize {
        match self {
            Encoder::Bert(model) => model.config().max_position_embeddings,
        }
    }

    /// Dtype the network computes in.
    pub fn dtype(&self) -> DType {
        match self {
            Encoder::Bert(model) => model.dtype(),
        }
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        match self {
            Encoder::Bert(model) => model.device(),
        }
    }
}

/// Safetensors read from memory that drop each tensor's source pages once it is copied, so the
/// embedded weights and the loaded tensors are never both resident in full (see `memory`).
struct ReleasingSafetensors<'a> {
    inner: candle_core::safetensors::SliceSafetensors<'a>,
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

/// A 2-D little-endian f32 tensor of the embedded weights (with or without the `bert.` prefix),
/// borrowed in place.
fn mapped_table(weights: &'static [u8], name: &str) -> Option<bert::MappedTable> {
    let tensors = safetensors::SafeTensors::deserialize(weights).ok()?;
    let view = tensors
        .tensor(&format!("bert.{name}"))
        .or_else(|_| tensors.tensor(name))
        .ok()?;
    match (view.dtype(), view.shape()) {
        (safetensors::Dtype::F32, &[vocab, hidden]) => Some(bert::MappedTable {
            bytes: view.data(),
            vocab,
            hidden,
        }),
        _ => None,
    }
}
