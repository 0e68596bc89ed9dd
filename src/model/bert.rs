//! BERT-family encoder (BERT, MiniLM, BGE, E5, ...) written for inference from in-memory weights.
//!
//! Why our own and not candle-transformers' `bert`: that one builds its attention mask from
//! `f32::MIN`, which is `-inf` in f16/bf16, so every half-precision output is NaN. Here:
//! - the mask bias is a finite `-10000` (exp underflows to exactly 0 in every dtype), and it is
//!   skipped entirely when all sequences of a forward have the same length (the engine groups
//!   them so), so no work is spent on padding that can be avoided;
//! - Q, K and V are one fused projection with the 1/sqrt(head_dim) scale folded into Q's weights
//!   at load time, so attention starts with one matmul and no scaling pass;
//! - softmax and layer norm are candle's fused ops;
//! - on CPU in f32 each layer instead runs as four matmuls plus three fused kernels (module
//!   `cpu_f32`: attention, bias+residual+layer norm, bias+GELU), and sequences can run packed
//!   back to back with no padding ([`BertModel::forward_packed`]).
//!
//! Implements [`Model`]: a packed batch in, packed hidden states out. Which of the two paths runs
//! (padded forwards grouped by length, or packed with no padding on the fused CPU f32 path) is
//! decided here, from per-sequence lengths; no mask crosses the interface.
//!
//! Knows nothing about tokenizers, batching or pooling: ids in, hidden states out.

use super::plan::{packed_forwards, padded_forwards};
use super::ReleasingSafetensors;
use super::{Attention, HiddenChunk, LoadError, Model, ModelError, ModelFiles, Packed};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// Finite additive mask for padded key positions: large enough that `exp` underflows to exactly
/// zero after the softmax's max subtraction, small enough to be finite in f16 (max 65504).
const MASK_BIAS: f64 = -10_000.0;

/// Whether `load` uses the fused CPU f32 kernels (module `cpu_f32`) where they apply. Always, in
/// every build (the dev profile optimises this crate so tests run the same path as releases);
/// the unit tests below also run the candle-op path and compare the two.
const FUSED_BY_DEFAULT: bool = true;

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
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
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
/// verified copy of the safetensors bytes. The table is about half of MiniLM's weights; reading
/// it in place means it is never copied, and in `serve` its pages are given back and read again
/// on first use, each checked against its verified hash (`memory::PagedCopy`), so only rows
/// actually used are resident.
pub enum WordEmbeddings {
    Loaded(Tensor),
    Mapped(MappedTable),
}

/// A little-endian f32 `[vocab, hidden]` table borrowed from the embedded weights.
pub struct MappedTable {
    pub bytes: &'static [u8],
    pub vocab: usize,
    pub hidden: usize,
    /// Set when the table's pages were given back: rows are read through it.
    paged: Option<crate::memory::PagedCopy>,
}

impl MappedTable {
    /// Gives the table's pages back where they can be read again verified (see `memory`).
    fn page_out(mut self) -> Self {
        self.paged = crate::memory::PagedCopy::page_out(self.bytes);
        self
    }

    /// Rows for `ids`, concatenated.
    fn gather(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let row_bytes = self.hidden * 4;
        let mut out = Vec::with_capacity(ids.len() * self.hidden);
        for &id in ids {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {}", self.vocab);
            }
            let range = id * row_bytes..(id + 1) * row_bytes;
            if let Some(paged) = &self.paged {
                paged
                    .ensure(range.clone())
                    .map_err(candle_core::Error::wrap)?;
            }
            let row = &self.bytes[range];
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
    /// The layers for the generic path; empty when `fast_layers` is used.
    layers: Vec<Layer>,
    /// The same layers prepared for the fused CPU f32 kernels; `None` on other devices/dtypes,
    /// for head widths the kernels are not compiled for, and for non-erf activations.
    fast_layers: Option<Vec<cpu_f32::FusedLayer>>,
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

/// A 2-D little-endian f32 tensor of the embedded weights (with or without the `bert.` prefix),
/// borrowed in place.
fn mapped_table(weights: &'static [u8], name: &str) -> Option<MappedTable> {
    let tensors = safetensors::SafeTensors::deserialize(weights).ok()?;
    let view = tensors
        .tensor(&format!("bert.{name}"))
        .or_else(|_| tensors.tensor(name))
        .ok()?;
    match (view.dtype(), view.shape()) {
        (safetensors::Dtype::F32, &[vocab, hidden]) => Some(MappedTable {
            bytes: view.data(),
            vocab,
            hidden,
            paged: None,
        }),
        _ => None,
    }
}

impl BertModel {
    /// Builds the model from config.json and safetensors bytes held in memory. On CPU in f32 the
    /// word-embedding table is read in place from the embedded bytes instead of being copied.
    pub fn from_files(files: ModelFiles, dtype: DType, device: &Device) -> Result<Self, LoadError> {
        let config = BertConfig::from_json(files.config_json).map_err(LoadError::Config)?;
        let tensors = candle_core::safetensors::SliceSafetensors::new(files.safetensors)?;
        let mapped = (device.is_cpu() && dtype == DType::F32)
            .then(|| mapped_table(files.safetensors, "embeddings.word_embeddings.weight"))
            .flatten();
        let vb = VarBuilder::from_backend(
            Box::new(ReleasingSafetensors { inner: tensors }),
            dtype,
            device.clone(),
        );
        Ok(Self::load(vb, config, mapped)?)
    }

    /// Builds the model from a VarBuilder over the verified weights; `mapped` (CPU f32 only)
    /// replaces the word-embedding tensor by the table read in place.
    pub fn load(
        vb: VarBuilder,
        config: BertConfig,
        mapped: Option<MappedTable>,
    ) -> candle_core::Result<Self> {
        Self::load_with(vb, config, mapped, FUSED_BY_DEFAULT)
    }

    /// `load`, with the fused CPU f32 path allowed or not (tests compare the two paths).
    fn load_with(
        vb: VarBuilder,
        config: BertConfig,
        mapped: Option<MappedTable>,
        allow_fast: bool,
    ) -> candle_core::Result<Self> {
        let root = weight_root(&vb);
        let h = config.hidden_size;
        let emb = root.pp("embeddings");
        let word_embeddings = match mapped {
            // Paged out only once it is certain nothing loads the table as a tensor.
            Some(table) if table.vocab == config.vocab_size && table.hidden == h => {
                WordEmbeddings::Mapped(table.page_out())
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
        let mut layers = (0..config.num_hidden_layers)
            .map(|i| Self::load_layer(&config, root.pp(format!("encoder.layer.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fast = allow_fast
            && vb.device().is_cpu()
            && vb.dtype() == DType::F32
            && config.hidden_act == Activation::Gelu
            && cpu_f32::Attention::supports(config.head_dim());
        // The fast path keeps its own (transposed) copy of each layer; the originals are dropped
        // one by one as they are converted, so the weights are never held twice.
        let fast_layers = fast
            .then(|| {
                std::mem::take(&mut layers)
                    .into_iter()
                    .map(|layer| layer.fused(config.layer_norm_eps))
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            word_embeddings,
            position_and_type,
            embedding_norm,
            layers,
            fast_layers,
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

    /// Hidden states `[batch, seq, hidden]` for `input_ids` `[batch, seq]` (u32), each row a
    /// sequence padded at the end. `lengths` (real tokens per row) is `None` when no row is
    /// padded; padded keys are then masked (generic path) or skipped (fused path).
    pub fn forward_padded(
        &self,
        input_ids: &Tensor,
        lengths: Option<&[usize]>,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq_len) = input_ids.dims2()?;
        if seq_len > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {seq_len} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        if lengths.is_some_and(|l| l.len() != batch || l.iter().any(|len| *len > seq_len)) {
            candle_core::bail!("padded forward: lengths do not fit the ids");
        }
        if let Some(fast_layers) = &self.fast_layers {
            return self.forward_fast(fast_layers, input_ids, lengths, batch, seq_len);
        }
        let mask_bias = lengths
            .map(|lengths| self.mask_bias(lengths, batch, seq_len))
            .transpose()?;
        let mut hidden = self.embed(input_ids, batch, seq_len)?;
        for layer in &self.layers {
            hidden = self.run_layer(layer, &hidden, mask_bias.as_ref(), batch, seq_len)?;
        }
        hidden.reshape((batch, seq_len, self.config.hidden_size))
    }

    /// The CPU f32 forward through the fused kernels (see [`cpu_f32`]) for a padded batch:
    /// padded keys are skipped rather than biased.
    fn forward_fast(
        &self,
        layers: &[cpu_f32::FusedLayer],
        input_ids: &Tensor,
        lengths: Option<&[usize]>,
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let spans: Vec<(usize, usize)> = (0..batch)
            .map(|b| (b * seq_len, lengths.map_or(seq_len, |l| l[b])))
            .collect();
        let hidden = self.embed(input_ids, batch, seq_len)?;
        self.run_fused(layers, hidden, &spans)?
            .reshape((batch, seq_len, self.config.hidden_size))
    }

    /// Hidden states `[total tokens, hidden]` for sequences given back to back (`ids` is their
    /// concatenation, `lengths` their lengths), with no padding at all: matmuls see only real
    /// tokens and attention runs per sequence span. CPU f32 only (when the fused layers are in use).
    ///
    /// Why: a batch of mixed lengths otherwise becomes several padded forwards, each streaming
    /// every weight once; packed, it is one forward whatever the lengths.
    pub fn forward_packed(&self, ids: &[u32], lengths: &[usize]) -> candle_core::Result<Tensor> {
        let Some(layers) = &self.fast_layers else {
            candle_core::bail!("packed forwards need the CPU f32 path");
        };
        if lengths.iter().sum::<usize>() != ids.len() {
            candle_core::bail!("packed forward: lengths do not add up to the ids");
        }
        if let Some(len) = lengths
            .iter()
            .find(|l| **l > self.config.max_position_embeddings)
        {
            candle_core::bail!(
                "sequence of {len} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        let mut spans = Vec::with_capacity(lengths.len());
        let mut positions = Vec::with_capacity(ids.len());
        for len in lengths {
            spans.push((positions.len(), *len));
            positions.extend(0..*len as u32);
        }
        let h = self.config.hidden_size;
        let words = self.word_rows(&Tensor::from_vec(ids.to_vec(), ids.len(), self.device())?)?;
        let positions = Tensor::from_vec(positions, ids.len(), self.device())?;
        let summed = (words.reshape((ids.len(), h))?
            + self.position_and_type.index_select(&positions, 0)?)?;
        let hidden = self.embedding_norm.forward(&summed)?;
        self.run_fused(layers, hidden, &spans)
    }

    /// `[batch, 1, 1, seq]` additive bias: 0 for real tokens, MASK_BIAS for padding.
    fn mask_bias(
        &self,
        lengths: &[usize],
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let bias: Vec<f32> = lengths
            .iter()
            .flat_map(|len| {
                (0..seq_len).map(move |p| if p < *len { 0.0 } else { MASK_BIAS as f32 })
            })
            .collect();
        Tensor::from_vec(bias, (batch, 1, 1, seq_len), self.device())?.to_dtype(self.dtype)
    }

    /// One padded forward over `members` of `batch`, unpadded again: `[their tokens, hidden]`.
    fn run_padded(
        &self,
        batch: &Packed,
        offsets: &[usize],
        members: &[usize],
        padded: usize,
    ) -> candle_core::Result<Tensor> {
        let rows = members.len();
        let lengths: Vec<usize> = members.iter().map(|m| batch.lengths[*m]).collect();
        let mut ids = Vec::with_capacity(rows * padded);
        for (member, len) in members.iter().zip(&lengths) {
            ids.extend_from_slice(&batch.ids[offsets[*member]..offsets[*member] + len]);
            ids.resize(ids.len() + padded - len, 0);
        }
        let input_ids = Tensor::from_vec(ids, (rows, padded), self.device())?;
        let is_padded = lengths.iter().any(|l| *l != padded);
        let hidden = self
            .forward_padded(&input_ids, is_padded.then_some(lengths.as_slice()))?
            .reshape((rows * padded, self.config.hidden_size))?;
        if !is_padded {
            return Ok(hidden);
        }
        let real: Vec<u32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(row, len)| (0..*len).map(move |p| (row * padded + p) as u32))
            .collect();
        let real_len = real.len();
        hidden.index_select(&Tensor::from_vec(real, real_len, self.device())?, 0)
    }

    /// Word-embedding rows `[n, hidden]` for the ids `[n]`.
    fn word_rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match &self.word_embeddings {
            WordEmbeddings::Loaded(table) => table.index_select(ids, 0),
            WordEmbeddings::Mapped(table) => {
                let ids = ids.to_vec1::<u32>()?;
                let rows = table.gather(&ids)?;
                Tensor::from_vec(rows, (ids.len(), table.hidden), self.device())
            }
        }
    }

    /// Token + position (+ type 0) embeddings, layer-normed, as `[batch * seq, hidden]`.
    fn embed(
        &self,
        input_ids: &Tensor,
        batch: usize,
        seq_len: usize,
    ) -> candle_core::Result<Tensor> {
        let h = self.config.hidden_size;
        let words = self
            .word_rows(&input_ids.flatten_all()?)?
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

impl BertModel {
    /// The encoder layers on `[tokens, hidden]`, attention within each `(first_row, len)` span.
    fn run_fused(
        &self,
        layers: &[cpu_f32::FusedLayer],
        hidden: Tensor,
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        cpu_f32::run_fused_layers(
            layers,
            hidden,
            spans,
            self.config.num_attention_heads,
            self.config.head_dim(),
        )
    }
}

impl Layer {
    /// This layer's parameters for the fused CPU f32 kernels.
    fn fused(&self, eps: f64) -> candle_core::Result<cpu_f32::FusedLayer> {
        cpu_f32::FusedLayer::new(
            [&self.qkv, &self.attention_out, &self.ffn_in, &self.ffn_out],
            [&self.attention_norm, &self.ffn_norm],
            eps,
        )
    }
}

impl Model for BertModel {
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn attention(&self) -> Attention {
        Attention::Bidirectional
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        self.position_and_type.device()
    }

    fn hidden_states(
        &self,
        batch: &Packed,
        max_forward_tokens: usize,
    ) -> Result<Vec<HiddenChunk>, ModelError> {
        let mut chunks = Vec::new();
        self.for_each_hidden_chunk(batch, max_forward_tokens, &mut |chunk| {
            chunks.push(chunk);
            Ok(())
        })?;
        Ok(chunks)
    }

    /// Packed forwards on the fused CPU f32 path (a batch is cut only by the token budget, in
    /// input order: mixed lengths cost nothing); elsewhere padded forwards of similar lengths,
    /// with no mask at all when a forward's members have the same length. Each chunk goes to
    /// `each` before the next forward runs.
    fn for_each_hidden_chunk(
        &self,
        batch: &Packed,
        max_forward_tokens: usize,
        each: &mut dyn FnMut(HiddenChunk) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        batch.check()?;
        if batch
            .token_type_ids
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| *t != 0))
        {
            return Err(ModelError::Unsupported(
                "pair inputs (token_type_ids other than 0)",
            ));
        }
        let offsets = batch.offsets();
        let budget = max_forward_tokens.max(1);
        if self.fast_layers.is_some() {
            for group in packed_forwards(&batch.lengths, budget) {
                let first = offsets[group.start];
                let tokens: usize = batch.lengths[group.clone()].iter().sum();
                let hidden = self.forward_packed(
                    &batch.ids[first..first + tokens],
                    &batch.lengths[group.clone()],
                )?;
                each(HiddenChunk {
                    members: group.collect(),
                    hidden,
                })?;
            }
            return Ok(());
        }
        for forward in padded_forwards(&batch.lengths, budget) {
            let hidden = self.run_padded(batch, &offsets, &forward.members, forward.padded_len)?;
            each(HiddenChunk {
                members: forward.members,
                hidden,
            })?;
        }
        Ok(())
    }
}

pub(crate) mod cpu_f32;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A random BERT with the given head width, loaded twice on CPU in f32: with the fused
    /// kernels and with the generic candle-op path.
    fn random_models(heads: usize, head_dim: usize) -> (BertModel, BertModel) {
        let (h, inter, layers, vocab, positions) =
            (heads * head_dim, 2 * heads * head_dim, 2, 50, 40);
        let config = format!(
            r#"{{"vocab_size": {vocab}, "hidden_size": {h}, "num_hidden_layers": {layers},
                "num_attention_heads": {heads}, "intermediate_size": {inter},
                "max_position_embeddings": {positions}, "hidden_act": "gelu"}}"#
        );
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        let mut add = |name: String, shape: &[usize], scale: f64| {
            let t = (Tensor::randn(0f64, 1f64, shape, &device).unwrap() * scale).unwrap();
            tensors.insert(name, t);
        };
        add("embeddings.word_embeddings.weight".into(), &[vocab, h], 1.0);
        add(
            "embeddings.position_embeddings.weight".into(),
            &[positions, h],
            0.5,
        );
        add(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, h],
            0.5,
        );
        add("embeddings.LayerNorm.weight".into(), &[h], 0.2);
        add("embeddings.LayerNorm.bias".into(), &[h], 0.2);
        for i in 0..layers {
            let p = format!("encoder.layer.{i}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", inter, h),
                ("output.dense", h, inter),
            ] {
                add(
                    format!("{p}.{name}.weight"),
                    &[out, inp],
                    1.0 / (inp as f64).sqrt(),
                );
                add(format!("{p}.{name}.bias"), &[out], 0.1);
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                add(format!("{p}.{norm}.weight"), &[h], 0.2);
                add(format!("{p}.{norm}.bias"), &[h], 0.2);
            }
        }
        let load = |allow_fast: bool| {
            let config = BertConfig::from_json(config.as_bytes()).unwrap();
            let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &device);
            BertModel::load_with(vb, config, None, allow_fast).unwrap()
        };
        let fast = load(true);
        let generic = load(false);
        assert!(fast.fast_layers.is_some() && generic.fast_layers.is_none());
        (fast, generic)
    }

    fn compare(heads: usize, head_dim: usize) {
        let (fast, generic) = random_models(heads, head_dim);
        // Three sequences, two padded (lengths 37, 20, 5 of 37): masks, padded keys and the
        // partial last tiles of the attention kernel are all exercised.
        let lengths = [37usize, 20, 5];
        let seq = lengths[0];
        let ids: Vec<u32> = (0..lengths.len() * seq)
            .map(|i| (i * 7 % 50) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (lengths.len(), seq), &Device::Cpu).unwrap();
        // Packed (no padding at all) against the padded generic forward.
        let rows = ids.to_vec2::<u32>().unwrap();
        let packed_ids: Vec<u32> = rows
            .iter()
            .zip(lengths)
            .flat_map(|(row, len)| row[..len].to_vec())
            .collect();
        let packed = fast.forward_packed(&packed_ids, &lengths).unwrap();
        let packed = packed.to_vec2::<f32>().unwrap();
        let padded = generic.forward_padded(&ids, Some(&lengths)).unwrap();
        let padded = padded.to_vec3::<f32>().unwrap();
        let mut packed_rows = packed.iter();
        for (s, len) in lengths.iter().enumerate() {
            for (p, expected) in padded[s][..*len].iter().enumerate() {
                let got = packed_rows.next().unwrap();
                for (x, y) in got.iter().zip(expected) {
                    assert!((x - y).abs() < 1e-5, "packed seq {s} pos {p}: {x} vs {y}");
                }
            }
        }
        // The trait entry point: packed on the fused path, padded groups then unpadded on the
        // generic one (tiny budget: several forwards, some of them masked).
        let batch = Packed {
            ids: packed_ids.clone(),
            lengths: lengths.to_vec(),
            token_type_ids: None,
        };
        let rows = |model: &BertModel| -> Vec<Vec<Vec<f32>>> {
            let mut out = vec![Vec::new(); lengths.len()];
            for chunk in model.hidden_states(&batch, 40).unwrap() {
                let hidden = chunk
                    .hidden
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let mut next = hidden.into_iter();
                for m in chunk.members {
                    out[m] = next.by_ref().take(lengths[m]).collect();
                }
            }
            out
        };
        for (x, y) in rows(&fast)
            .iter()
            .flatten()
            .zip(rows(&generic).iter().flatten())
        {
            for (a, b) in x.iter().zip(y) {
                assert!(
                    (a - b).abs() < 2e-4,
                    "hidden_states: fused {a} vs generic {b}"
                );
            }
        }
        assert_eq!(rows(&generic).concat().len(), packed_ids.len());
        // Chunks are handed over one forward at a time, and an error from the receiver stops
        // the batch before the next forward runs.
        for (model, forwards) in [
            (&fast, packed_forwards(&lengths, 40).len()),
            (&generic, padded_forwards(&lengths, 40).len()),
        ] {
            assert!(forwards > 1, "the budget must split this batch");
            let mut calls = 0;
            model
                .for_each_hidden_chunk(&batch, 40, &mut |_| {
                    calls += 1;
                    Ok(())
                })
                .unwrap();
            assert_eq!(calls, forwards);
            calls = 0;
            let stopped = model.for_each_hidden_chunk(&batch, 40, &mut |_| {
                calls += 1;
                Err(ModelError::Batch("receiver gave up".into()))
            });
            assert!(matches!(stopped, Err(ModelError::Batch(_))));
            assert_eq!(calls, 1);
        }
        for mask in [None, Some(lengths.as_slice())] {
            let a = fast
                .forward_padded(&ids, mask)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap();
            let b = generic.forward_padded(&ids, mask).unwrap();
            let b = b.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap();
            for (s, len) in lengths.iter().enumerate() {
                let real = if mask.is_some() { *len } else { seq };
                for p in 0..real {
                    for (x, y) in a[s][p].iter().zip(&b[s][p]) {
                        assert!(
                            (x - y).abs() < 2e-4,
                            "seq {s} pos {p}: fused {x} vs generic {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_cpu_path_matches_generic_path_head_dim_32() {
        compare(3, 32);
    }

    #[test]
    fn fused_cpu_path_matches_generic_path_head_dim_64() {
        compare(2, 64);
    }

    /// erf by its Taylor series in f64 (converges fast enough for |x| ≤ 4).
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut total) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            total += term / (2 * n + 1) as f64;
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = f64::from(x).exp();
            let got = f64::from(cpu_f32::exp(x));
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        for i in -400..=400 {
            let x = i as f32 / 100.0;
            let want = erf_reference(f64::from(x));
            let got = f64::from(cpu_f32::erf(x));
            assert!((got - want).abs() < 4e-7, "erf({x}) = {got}, want {want}");
        }
    }
}
