//! Post-layer-norm encoders with learned absolute positions: BERT (with token types, for pair
//! inputs and cross-encoders), RoBERTa / XLM-RoBERTa, DistilBERT and MPNet. They share one layer
//! shape — attention, add & norm, feed-forward, add & norm — and differ in weight names, how
//! positions are numbered and, for MPNet, a relative-position attention bias.
//!
//! On CPU in f32 (exact GELU, head width 32 or 64, no relative bias) the layers run through the
//! fused kernels of `bert::cpu_f32`, packed with no padding at all, exactly as `bert.rs` does for
//! the embedding path; elsewhere (CUDA, f16/bf16, MPNet) through candle ops over a padded batch
//! with a finite mask bias (not NaN in f16).
//!
//! Position numbering: BERT, DistilBERT from 0; RoBERTa family from `pad_token_id + 1` (fairseq's
//! `make_positions`, which skips padding; packed and right-padded sequences have no padding
//! inside, so it is `pad + 1 + index`); MPNet the same with its padding id 1.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::bert::cpu_f32;
use super::layers::{self, Activation, Visibility};
use super::network::{self, FamilyKind, Network, PackedBatch};
use super::LoadError;

/// The shape every variant is reduced to.
#[derive(Clone, Debug)]
pub struct BertLikeConfig {
    pub kind: FamilyKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    /// 0 when the family has no token-type embeddings.
    pub type_vocab_size: usize,
    /// Position id of a sequence's first token.
    pub position_offset: usize,
    pub pad_token_id: u32,
    /// MPNet's relative attention buckets.
    pub relative_buckets: Option<usize>,
}

#[derive(Deserialize)]
struct BertJson {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: Activation,
    max_position_embeddings: usize,
    #[serde(default)]
    type_vocab_size: Option<usize>,
    #[serde(default = "eps_1e12")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    relative_attention_num_buckets: Option<usize>,
}

#[derive(Deserialize)]
struct DistilBertJson {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "gelu")]
    activation: Activation,
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn eps_1e12() -> f64 {
    1e-12
}

impl BertLikeConfig {
    /// Reads the family's config.json shape.
    pub fn from_json(kind: FamilyKind, value: &serde_json::Value) -> Result<Self, LoadError> {
        let config = match kind {
            FamilyKind::DistilBert => {
                let c: DistilBertJson = network::typed_config(value)?;
                Self {
                    kind,
                    vocab_size: c.vocab_size,
                    hidden_size: c.dim,
                    num_layers: c.n_layers,
                    num_heads: c.n_heads,
                    intermediate_size: c.hidden_dim,
                    activation: c.activation,
                    max_position_embeddings: c.max_position_embeddings,
                    // DistilBERT's layer norms are built with a fixed eps, not from the config.
                    layer_norm_eps: 1e-12,
                    type_vocab_size: 0,
                    position_offset: 0,
                    pad_token_id: c.pad_token_id.unwrap_or(0),
                    relative_buckets: None,
                }
            }
            FamilyKind::Bert | FamilyKind::XlmRoberta | FamilyKind::MpNet => {
                let c: BertJson = network::typed_config(value)?;
                if let Some(kind) = c.position_embedding_type.as_deref() {
                    if kind != "absolute" {
                        return Err(LoadError::Config(format!(
                            "config.json: position_embedding_type {kind:?} is not supported \
                             (only absolute)"
                        )));
                    }
                }
                let (pad, offset, types, buckets) = match kind {
                    FamilyKind::Bert => {
                        let pad = c.pad_token_id.unwrap_or(0);
                        (pad, 0, c.type_vocab_size.unwrap_or(2), None)
                    }
                    FamilyKind::XlmRoberta => {
                        let pad = c.pad_token_id.unwrap_or(1);
                        (pad, pad as usize + 1, c.type_vocab_size.unwrap_or(1), None)
                    }
                    // MPNet hard-codes padding_idx 1 for positions, whatever the config says.
                    _ => (
                        c.pad_token_id.unwrap_or(1),
                        2,
                        0,
                        Some(c.relative_attention_num_buckets.unwrap_or(32)),
                    ),
                };
                Self {
                    kind,
                    vocab_size: c.vocab_size,
                    hidden_size: c.hidden_size,
                    num_layers: c.num_hidden_layers,
                    num_heads: c.num_attention_heads,
                    intermediate_size: c.intermediate_size,
                    activation: c.hidden_act,
                    max_position_embeddings: c.max_position_embeddings,
                    layer_norm_eps: c.layer_norm_eps,
                    type_vocab_size: types,
                    position_offset: offset,
                    pad_token_id: pad,
                    relative_buckets: buckets,
                }
            }
            other => {
                return Err(LoadError::Config(format!(
                    "{other:?} is not a BERT-like encoder"
                )))
            }
        };
        if config.num_heads == 0 || !config.hidden_size.is_multiple_of(config.num_heads) {
            return Err(LoadError::Config(format!(
                "config.json: hidden size {} is not divisible by {} heads",
                config.hidden_size, config.num_heads
            )));
        }
        if config.max_position_embeddings <= config.position_offset {
            return Err(LoadError::Config(
                "config.json: max_position_embeddings leaves no usable position".into(),
            ));
        }
        Ok(config)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Weight-name prefix a `*For…` checkpoint puts the body under.
    pub fn body_prefix(&self) -> &'static str {
        match self.kind {
            FamilyKind::Bert => "bert",
            FamilyKind::XlmRoberta => "roberta",
            FamilyKind::DistilBert => "distilbert",
            _ => "mpnet",
        }
    }
}

/// Where each layer's weights live, per family.
struct LayerNames {
    layers: &'static str,
    query: &'static str,
    key: &'static str,
    value: &'static str,
    attention_out: &'static str,
    attention_norm: &'static str,
    ffn_in: &'static str,
    ffn_out: &'static str,
    ffn_norm: &'static str,
}

const BERT_NAMES: LayerNames = LayerNames {
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    ffn_norm: "output.LayerNorm",
};

const DISTILBERT_NAMES: LayerNames = LayerNames {
    layers: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    ffn_norm: "output_layer_norm",
};

const MPNET_NAMES: LayerNames = LayerNames {
    layers: "encoder.layer",
    query: "attention.attn.q",
    key: "attention.attn.k",
    value: "attention.attn.v",
    attention_out: "attention.attn.o",
    attention_norm: "attention.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    ffn_norm: "output.LayerNorm",
};

struct Layer {
    /// Q, K and V as one projection, 1/sqrt(head_dim) folded into Q.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// A loaded BERT-like encoder.
pub struct BertLike {
    config: BertLikeConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    type_embeddings: Option<Tensor>,
    embedding_norm: LayerNorm,
    /// Generic-path layers; empty when `fast_layers` is used.
    layers: Vec<Layer>,
    fast_layers: Option<Vec<cpu_f32::FusedLayer>>,
    /// MPNet: `[buckets, heads]`.
    relative_bias: Option<Tensor>,
    dtype: DType,
}

impl BertLike {
    /// Loads the body from `vb` (the `bert.` / `roberta.` / … prefix is found on its own).
    pub fn load(vb: &VarBuilder, config: BertLikeConfig) -> candle_core::Result<Self> {
        Self::load_with(vb, config, true)
    }

    /// `load`, with the fused CPU path allowed or not (tests compare both).
    pub fn load_with(
        vb: &VarBuilder,
        config: BertLikeConfig,
        allow_fast: bool,
    ) -> candle_core::Result<Self> {
        let root = network::under_prefix(
            vb,
            config.body_prefix(),
            "embeddings.word_embeddings.weight",
        );
        let h = config.hidden_size;
        let emb = root.pp("embeddings");
        let word_embeddings = emb.get((config.vocab_size, h), "word_embeddings.weight")?;
        let position_embeddings = emb.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let type_embeddings = (config.type_vocab_size > 0)
            .then(|| emb.get((config.type_vocab_size, h), "token_type_embeddings.weight"))
            .transpose()?;
        let embedding_norm =
            layers::layer_norm(h, config.layer_norm_eps, true, emb.pp("LayerNorm"))?;
        let names = match config.kind {
            FamilyKind::DistilBert => &DISTILBERT_NAMES,
            FamilyKind::MpNet => &MPNET_NAMES,
            _ => &BERT_NAMES,
        };
        let mut loaded = (0..config.num_layers)
            .map(|i| load_layer(&config, names, root.pp(format!("{}.{i}", names.layers))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let relative_bias = config
            .relative_buckets
            .map(|buckets| {
                root.get(
                    (buckets, config.num_heads),
                    "encoder.relative_attention_bias.weight",
                )
            })
            .transpose()?;
        let fast = allow_fast
            && vb.device().is_cpu()
            && vb.dtype() == DType::F32
            && config.activation == Activation::Gelu
            && relative_bias.is_none()
            && cpu_f32::Attention::supports(config.head_dim());
        let fast_layers = fast
            .then(|| {
                std::mem::take(&mut loaded)
                    .into_iter()
                    .map(|layer| layer.fused(config.layer_norm_eps))
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            word_embeddings,
            position_embeddings,
            type_embeddings,
            embedding_norm,
            layers: loaded,
            fast_layers,
            relative_bias,
            dtype: vb.dtype(),
            config,
        })
    }

    pub fn config(&self) -> &BertLikeConfig {
        &self.config
    }

    /// Whether the fused CPU f32 kernels run this model.
    pub fn is_fused(&self) -> bool {
        self.fast_layers.is_some()
    }

    pub fn device(&self) -> &Device {
        self.word_embeddings.device()
    }

    /// Word + position (+ type) embeddings, layer-normed, `[n, hidden]`.
    fn embed(
        &self,
        ids: &[u32],
        positions: &[u32],
        types: Option<&[u32]>,
    ) -> candle_core::Result<Tensor> {
        let device = self.device();
        let n = ids.len();
        let ids = Tensor::from_vec(ids.to_vec(), n, device)?;
        let offset = self.config.position_offset as u32;
        let positions: Vec<u32> = positions.iter().map(|p| p + offset).collect();
        let positions = Tensor::from_vec(positions, n, device)?;
        let mut summed = (self.word_embeddings.index_select(&ids, 0)?
            + self.position_embeddings.index_select(&positions, 0)?)?;
        if let Some(table) = &self.type_embeddings {
            let rows = match types {
                Some(types) => {
                    let types = Tensor::from_vec(types.to_vec(), n, device)?;
                    table.index_select(&types, 0)?
                }
                None => table
                    .get(0)?
                    .unsqueeze(0)?
                    .broadcast_as((n, table.dim(1)?))?,
            };
            summed = (summed + rows)?;
        }
        self.embedding_norm.forward(&summed)
    }

    /// The fused CPU layers over `[tokens, hidden]`, attention within each span.
    fn run_fast(
        &self,
        layers: &[cpu_f32::FusedLayer],
        hidden: Tensor,
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        cpu_f32::run_fused_layers(
            layers,
            hidden,
            spans,
            self.config.num_heads,
            self.config.head_dim(),
        )
    }

    /// MPNet's relative-position bias `[1, heads, seq, seq]`.
    fn relative_bias(&self, table: &Tensor, seq: usize) -> candle_core::Result<Tensor> {
        let buckets = self.config.relative_buckets.unwrap_or(32);
        let index: Vec<u32> = (0..seq)
            .flat_map(|q| {
                (0..seq).map(move |k| relative_bucket(k as i64 - q as i64, buckets) as u32)
            })
            .collect();
        let index = Tensor::from_vec(index, seq * seq, table.device())?;
        table
            .index_select(&index, 0)?
            .reshape((seq, seq, self.config.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// The candle-op forward over a right-padded batch; returns `[Σ lengths, hidden]`.
    fn forward_generic(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        let (ids, types, seq) = batch.padded(self.config.pad_token_id);
        let count = batch.lengths.len();
        let positions: Vec<u32> = (0..count).flat_map(|_| 0..seq as u32).collect();
        let hidden = self.embed(&ids, &positions, batch.type_ids.map(|_| types.as_slice()))?;
        let mut bias = layers::attention_bias(
            batch.lengths,
            seq,
            Visibility::Bidirectional,
            self.dtype,
            self.device(),
        )?;
        if let Some(table) = &self.relative_bias {
            let relative = self.relative_bias(table, seq)?.to_dtype(self.dtype)?;
            bias = Some(match bias {
                Some(mask) => mask.broadcast_add(&relative)?,
                None => relative,
            });
        }
        let (heads, head_dim, h) = (
            self.config.num_heads,
            self.config.head_dim(),
            self.config.hidden_size,
        );
        let mut hidden = hidden;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&hidden)?;
            let split = |i: usize| {
                layers::split_heads(&qkv.narrow(1, i * h, h)?, count, seq, heads, head_dim)
            };
            // The scale is already in Q's weights.
            let context = layers::attend(&split(0)?, &split(1)?, &split(2)?, 1.0, bias.as_ref())?;
            let attended = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &hidden)?)?;
            let inner = self
                .config
                .activation
                .apply(&layer.ffn_in.forward(&attended)?)?;
            hidden = layer
                .ffn_norm
                .forward(&(layer.ffn_out.forward(&inner)? + attended)?)?;
        }
        layers::unpad(&hidden.reshape((count, seq, h))?, batch.lengths)
    }
}

/// MPNet's (T5-style) relative position bucket for `relative = key − query`, with 32 buckets
/// and max distance 128 as in transformers (computed in f32 like torch, so the bucket edges
/// agree).
pub fn relative_bucket(relative: i64, num_buckets: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = (n as f32 / max_exact as f32).ln() / (128.0f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (ratio * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as usize
}

fn load_layer(
    config: &BertLikeConfig,
    names: &LayerNames,
    vb: VarBuilder,
) -> candle_core::Result<Layer> {
    let h = config.hidden_size;
    let scale = 1.0 / (config.head_dim() as f64).sqrt();
    let query = layers::linear(h, h, true, vb.pp(names.query))?;
    let key = layers::linear(h, h, true, vb.pp(names.key))?;
    let value = layers::linear(h, h, true, vb.pp(names.value))?;
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
    let eps = config.layer_norm_eps;
    Ok(Layer {
        qkv: Linear::new(qkv_weight, Some(qkv_bias)),
        attention_out: layers::linear(h, h, true, vb.pp(names.attention_out))?,
        attention_norm: layers::layer_norm(h, eps, true, vb.pp(names.attention_norm))?,
        ffn_in: layers::linear(h, config.intermediate_size, true, vb.pp(names.ffn_in))?,
        ffn_out: layers::linear(config.intermediate_size, h, true, vb.pp(names.ffn_out))?,
        ffn_norm: layers::layer_norm(h, eps, true, vb.pp(names.ffn_norm))?,
    })
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

impl Network for BertLike {
    fn forward_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        batch.validate(self.max_positions())?;
        if let Some(types) = batch.type_ids {
            let limit = self.config.type_vocab_size.max(1) as u32;
            if let Some(bad) = types.iter().find(|t| **t >= limit) {
                candle_core::bail!("token type {bad} is outside the model's {limit} types");
            }
        }
        match &self.fast_layers {
            Some(layers) => {
                let hidden = self.embed(batch.ids, &batch.positions(), batch.type_ids)?;
                self.run_fast(layers, hidden, &batch.spans())
            }
            None => self.forward_generic(batch),
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings - self.config.position_offset
    }

    fn uses_type_ids(&self) -> bool {
        self.config.type_vocab_size > 1
    }
}
