//! Model families: how verified weight bytes become a network that maps token ids to hidden
//! states. One submodule per family; this file picks the family named in `sealserve.json`.
//!
//! Knows nothing about batching, pooling or HTTP.

pub mod bert;

use crate::spec::Family;
use candle_core::{DType, Device, Tensor};
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
        safetensors: &[u8],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, LoadError> {
        match family {
            Family::Bert => {
                let config = bert::BertConfig::from_json(config_json).map_err(LoadError::Config)?;
                let vb = VarBuilder::from_slice_safetensors(safetensors, dtype, device)?;
                Ok(Encoder::Bert(bert::BertModel::load(vb, config)?))
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
