//! BERT-family encoder (BERT, MiniLM, BGE, E5, ...) written for inference from in-memory weights.
//!
//! Why our own and not candle-transformers' `bert`: that one builds its attention mask from
//! `f32::MIN`, which is `-inf` in f16/bf16, so every half-precision output is NaN. Here:
//! - the mask bias is a finite `-10000` (exp underflows to exactly 0 in every dtype), and it is
//!   skipped entirely when all sequences of a forward have the same length (the engine groups
//!   them so), so no work is spent on padding that can be avoided;
//! - Q, K and V are one fused projection with the 1/sqrt(head_dim) scale folded into Q's weights
//!   at load time, so attention starts with one matmul and no scaling pass;
//! - softmax and layer norm are candle's fused ops.
//!
//! Knows nothing about tokenizers, batching or pooling: ids in, hidden states out.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// Finite additive mask for padded key positions: large enough that `exp` underflows to exactly
/// zero after the softmax's max subtraction, small enough to be finite in f16 (max 65504).
const MASK_BIAS: f64 = -10_000.0;

/// The subset of a Hugging Face BERT `config.json` the forward pass needs.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Feed-forward activation named by `hidden_act`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, BERT's "gelu".
    Gelu,
    /// tanh approximation.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluNew => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

impl BertConfig {
    /// Parses config.json and rejects shapes the forward cannot run.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let config: BertConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("config.json: {e}"))?;
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(format!(
                "config.json: hidden_size {} is not divisible by num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            ));
        }
        if let Some(kind) = config.position_embedding_type.as_deref() {
            if kind != "absolute" {
                return Err(format!(
                    "config.json: position_embedding_type {kind:?} is not supported (only absolute)"
                ));
            }
        }
        Ok(config)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The token embedding table: either a tensor, or — on CPU in f32 — rows read straight from the
/// embedded (read-only, file-backed) safetensors bytes. The table is about half of MiniLM's
/// weights; reading it in place means it is never copied, and only rows actually used become
/// resident.
pub enum WordEmbeddings {
    Loaded(Tensor),
    Mapped(MappedTable),
}

/// A little-endian f32 `[vocab, hidden]` table borrowed from the embedded weights.
#[derive(Clone, Copy)]
pub struct MappedTable {
    pub bytes: &'static [u8],
    pub vocab: usize,
    pub hidden: usize,
}

impl MappedTable {
    /// Rows for `ids`, concatenated.
    fn gather(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let row_bytes = self.hidden * 4;
        let mut out = Vec::with_capacity(ids.len() * self.hidden);
        for &id in ids {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {}", self.vocab);
            }
            let row = &self.bytes[id * row_bytes..(id + 1) * row_bytes];
            out.extend(
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(out)
    }
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct BertModel {
    word_embeddings: WordEmbeddings,
    /// Position embeddings with token type 0 already added (single-segment inputs only).
    position_and_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    config: BertConfig,
    dtype: DType,
}

/// Weights are found with or without the `bert.` prefix (MiniLM ships without it, many BERT
/// checkpoints with it); older checkpoints name layer-norm parameters gamma/beta.
fn weight_root<'a>(vb: &VarBuilder<'a>) -> VarBuilder<'a> {
    if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
        vb.pp("bert")
    } else {
        vb.clone()
    }
}

fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    let (weight, bias) = if vb.contains_tensor("weight") {
        (vb.get(size, "weight")?, vb.get(size, "bias")?)
    } else {
        (vb.get(size, "gamma")?, vb.get(size, "beta")?)
    };
    Ok(LayerNorm::new(weight, bias, eps))
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

impl BertModel {
    /// Builds the model from a VarBuilder over the verified weights; `mapped` (CPU f32 only)
    /// replaces the word-embedding tensor by the table read in place.
    pub fn load(
        vb: VarBuilder,
        config: BertConfig,
        mapped: Option<MappedTable>,
    ) -> candle_core::Result<Self> {
        let root = weight_root(&vb);
        let h = config.hidden_size;
        let emb = root.pp("embeddings");
        let word_embeddings = match mapped {
            Some(table) if table.vocab == config.vocab_size && table.hidden == h => {
                WordEmbeddings::Mapped(table)
            }
            _ => WordEmbeddings::Loaded(emb.get((config.vocab_size, h), "word_embeddings.weight")?),
        };
        let positions = emb.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_types = emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?;
        let position_and_type = positions.broadcast_add(&token_types.get(0)?)?;
        let embedding_norm = layer_norm(h, config.layer_norm_eps, emb.pp("LayerNorm"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Self::load_layer(&config, root.pp(format!("encoder.layer.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings,
            position_and_type,
            embedding_norm,
            layers,
            dtype: vb.dtype(),
            config,
        })
    }

    fn load_layer(config: &BertConfig, vb: VarBuilder) -> candle_core::Result<Layer> {
        let h = config.hidden_size;
        let attention = vb.pp("attention");
        let projection = attention.pp("self");
        let scale = 1.0 / (config.head_dim() as f64).sqrt();
        let query = linear(h, h, projection.pp("query"))?;
        let key = linear(h, h, projection.pp("key"))?;
        let value = linear(h, h, projection.pp("value"))?;
        let bias = |l: &Linear| {
            l.bias()
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("attention projection has no bias".into()))
        };
        let qkv_weight = Tensor::cat(
            &[
                (query.weight() * scale)?,
                key.weight().clone(),
                value.weight().clone(),
            ],
            0,
        )?;
        let qkv_bias = Tensor::cat(&[(bias(&query)? * scale)?, bias(&key)?, bias(&value)?], 0)?;
        Ok(Layer {
            qkv: Linear::new(qkv_weight, Some(qkv_bias)),
            attention_out: linear(h, h, attention.pp("output.dense"))?,
            attention_norm: layer_norm(h, config.layer_norm_eps, attention.pp("output.LayerNorm"))?,
            ffn_in: linear(h, config.intermediate_size, vb.pp("intermediate.dense"))?,
            ffn_out: linear(config.intermediate_size, h, vb.pp("output.dense"))?,
            ffn_norm: layer_norm(h, config.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The dtype of weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.position_and_type.device()
    }

    /// Hidden states `[batch, seq, hidden]` for `input_ids` `[batch, seq]` (u32).
    /// `attention_mask` (`[batch, seq]`, 1 = real token) is `None` when no sequence is padded.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq_len) = input_ids.dims2()?;
        if seq_len > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {seq_len} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        let mask_bias = attention_mask
            .map(|mask| self.mask_bias(mask, batch, seq_len))
            .transpose()?;
        let mut hidden = self.embed(input_ids, batch, seq_len)?;
        for layer in &self.layers {
            hidden = self.run_layer(layer, &hidden, mask_bias.as_ref(), batch, seq_len)?;
        }
        hidden.reshape((batch, seq_len, self.config.hidden_size))
    }

    /// `[batch, 1, 1, seq]` additive bias: 0 for real tokens, MASK_BIAS for padding.
    fn mask_bias(
        &self,
        mask: &Tensor,
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let padding = (1.0 - mask.to_dtype(DType::F32)?)?;
        (padding * MASK_BIAS)?
            .to_dtype(self.dtype)?
            .reshape((batch, 1, 1, seq_len))
    }

    /// Token + position (+ type 0) embeddings, layer-normed, as `[batch * seq, hidden]`.
    fn embed(
        &self,
        input_ids: &Tensor,
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let h = self.config.hidden_size;
        let words = match &self.word_embeddings {
            WordEmbeddings::Loaded(table) => table.index_select(&input_ids.flatten_all()?, 0)?,
            WordEmbeddings::Mapped(table) => {
                let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
                Tensor::from_vec(table.gather(&ids)?, (batch * seq_len, h), self.device())?
            }
        }
        .reshape((batch, seq_len, h))?;
        let positions = self.position_and_type.narrow(0, 0, seq_len)?;
        let summed = words
            .broadcast_add(&positions)?
            .reshape((batch * seq_len, h))?;
        self.embedding_norm.forward(&summed)
    }

    fn run_layer(
        &self,
        layer: &Layer,
        hidden: &Tensor,
        mask_bias: Option<&Tensor>,
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let context = self.attention(layer, hidden, mask_bias, batch, seq_len)?;
        let attended = layer
            .attention_norm
            .forward(&(layer.attention_out.forward(&context)? + hidden)?)?;
        let inner = self
            .config
            .hidden_act
            .apply(&layer.ffn_in.forward(&attended)?)?;
        layer
            .ffn_norm
            .forward(&(layer.ffn_out.forward(&inner)? + attended)?)
    }

    /// Multi-head self-attention on `[batch * seq, hidden]`, returning the same shape.
    fn attention(
        &self,
        layer: &Layer,
        hidden: &Tensor,
        mask_bias: Option<&Tensor>,
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.head_dim();
        let qkv = layer
            .qkv
            .forward(hidden)?
            .reshape((batch, seq_len, 3, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let query = qkv.get(0)?.contiguous()?;
        let key = qkv.get(1)?.contiguous()?;
        let value = qkv.get(2)?.contiguous()?;
        let mut scores = query.matmul(&key.t()?)?;
        if let Some(bias) = mask_bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probabilities = softmax(&scores)?;
        probabilities
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch * seq_len, self.config.hidden_size))
    }
}

/// Softmax over the last dimension. candle's CPU kernel accumulates in the tensor's own dtype,
/// which in bf16 loses too much over a few hundred keys; on CPU half-precision scores are
/// upcast to f32 for it. The CUDA kernel accumulates in f32 itself.
fn softmax(scores: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = scores.dtype();
    if scores.device().is_cpu() && matches!(dtype, DType::F16 | DType::BF16) {
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
    } else {
        candle_nn::ops::softmax_last_dim(scores)
    }
}
