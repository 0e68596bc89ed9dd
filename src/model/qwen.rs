//! Qwen2 / Qwen3 decoders as embedding models (Qwen3-Embedding, gte-Qwen2 style): pre-RMS-norm
//! layers, rotary positions, grouped-query attention, SwiGLU, **causal** attention; the
//! embedding is the last token's hidden state (sentence-transformers `lasttoken` pooling, with
//! the instruction prompt prepended by the caller as `config_sentence_transformers.json` says).
//! Qwen3 adds a per-head RMS norm on queries and keys; Qwen2 has biases on Q, K and V.
//!
//! Padding: sequences are right-padded inside, so every real token keeps positions `0..len` and
//! the causal mask alone hides the padding (a real token never sees a later one). Reference
//! implementations pad on the left (sentence-transformers sets `padding_side="left"` for these
//! models); rotary attention depends only on relative positions, so the outputs agree up to
//! rounding.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use super::layers::{self, Activation, RmsNorm, Rope, Visibility};
use super::network::{self, FamilyKind, Network, PackedBatch};
use super::LoadError;

#[derive(Clone, Debug, Deserialize)]
pub struct QwenConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    /// Qwen3 only; Qwen2 always has Q/K/V biases.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(skip)]
    pub rope_theta: f64,
    #[serde(skip)]
    pub qk_norm: bool,
}

fn silu() -> Activation {
    Activation::Silu
}
fn eps() -> f64 {
    1e-6
}

impl QwenConfig {
    pub fn from_json(kind: FamilyKind, value: &serde_json::Value) -> Result<Self, LoadError> {
        let mut config: Self = network::typed_config(value)?;
        config.rope_theta = layers::rope_theta(value, 10_000.0).map_err(LoadError::Config)?;
        match kind {
            FamilyKind::Qwen2 => {
                config.attention_bias = true;
                config.qk_norm = false;
            }
            _ => config.qk_norm = true,
        }
        if config.use_sliding_window {
            return Err(LoadError::Config(
                "config.json: use_sliding_window is not supported for embedding models".into(),
            ));
        }
        let heads = config.num_attention_heads;
        if heads == 0
            || config.num_key_value_heads == 0
            || !heads.is_multiple_of(config.num_key_value_heads)
        {
            return Err(LoadError::Config(
                "config.json: num_attention_heads must be a multiple of num_key_value_heads".into(),
            ));
        }
        if config.head_dim.is_none() && !config.hidden_size.is_multiple_of(heads) {
            return Err(LoadError::Config(
                "config.json: hidden_size is not divisible by num_attention_heads".into(),
            ));
        }
        Ok(config)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_attention_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Qwen {
    config: QwenConfig,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    rope: Rope,
    dtype: DType,
}

impl Qwen {
    /// Loads the body (`model.` prefix in `*ForCausalLM` / `*ForSequenceClassification`).
    pub fn load(vb: &VarBuilder, config: QwenConfig) -> candle_core::Result<Self> {
        let root = network::under_prefix(vb, "model", "embed_tokens.weight");
        let (h, d) = (config.hidden_size, config.head_dim());
        let (heads, kv) = (config.num_attention_heads, config.num_key_value_heads);
        let eps = config.rms_norm_eps;
        let bias = config.attention_bias;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = root.pp(format!("layers.{i}"));
                let a = p.pp("self_attn");
                Ok(Layer {
                    input_norm: RmsNorm::load(h, eps, p.pp("input_layernorm"))?,
                    q: layers::linear(h, heads * d, bias, a.pp("q_proj"))?,
                    k: layers::linear(h, kv * d, bias, a.pp("k_proj"))?,
                    v: layers::linear(h, kv * d, bias, a.pp("v_proj"))?,
                    // Qwen2 has no bias on the output projection; Qwen3 follows attention_bias.
                    o: layers::linear(heads * d, h, bias && config.qk_norm, a.pp("o_proj"))?,
                    q_norm: config
                        .qk_norm
                        .then(|| RmsNorm::load(d, eps, a.pp("q_norm")))
                        .transpose()?,
                    k_norm: config
                        .qk_norm
                        .then(|| RmsNorm::load(d, eps, a.pp("k_norm")))
                        .transpose()?,
                    post_attention_norm: RmsNorm::load(h, eps, p.pp("post_attention_layernorm"))?,
                    gate: layers::linear(
                        h,
                        config.intermediate_size,
                        false,
                        p.pp("mlp.gate_proj"),
                    )?,
                    up: layers::linear(h, config.intermediate_size, false, p.pp("mlp.up_proj"))?,
                    down: layers::linear(
                        config.intermediate_size,
                        h,
                        false,
                        p.pp("mlp.down_proj"),
                    )?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: root.get((config.vocab_size, h), "embed_tokens.weight")?,
            norm: RmsNorm::load(h, eps, root.pp("norm"))?,
            rope: Rope::new(
                config.rope_theta,
                d,
                config.max_position_embeddings,
                vb.dtype(),
                vb.device(),
            )?,
            layers,
            dtype: vb.dtype(),
            config,
        })
    }

    pub fn config(&self) -> &QwenConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        self.embeddings.device()
    }
}

impl Network for Qwen {
    fn forward_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        batch.validate(self.max_positions())?;
        let (ids, _, seq) = batch.padded(self.config.pad_token_id.unwrap_or(0));
        let count = batch.lengths.len();
        let (h, d) = (self.config.hidden_size, self.config.head_dim());
        let (heads, kv) = (
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
        );
        let ids = Tensor::from_vec(ids, count * seq, self.device())?;
        let mut hidden = self.embeddings.index_select(&ids, 0)?;
        // Right padding under a causal mask: padding is never visible to a real token.
        let full = vec![seq; count];
        let bias =
            layers::attention_bias(&full, seq, Visibility::Causal, self.dtype, self.device())?;
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let x = layer.input_norm.forward(&hidden)?;
            let heads_of =
                |proj: &Linear, n: usize, norm: &Option<RmsNorm>| -> candle_core::Result<Tensor> {
                    let y = proj.forward(&x)?.reshape((count, seq, n, d))?;
                    let y = match norm {
                        Some(norm) => norm.forward(&y)?,
                        None => y,
                    };
                    y.transpose(1, 2)?.contiguous()
                };
            let q = self
                .rope
                .apply(&heads_of(&layer.q, heads, &layer.q_norm)?)?;
            let k = self.rope.apply(&heads_of(&layer.k, kv, &layer.k_norm)?)?;
            let v = heads_of(&layer.v, kv, &None)?;
            let context = layers::attend(&q, &k, &v, scale, bias.as_ref())?;
            hidden = (hidden + layer.o.forward(&context)?)?;
            let x = layer.post_attention_norm.forward(&hidden)?;
            let gated = layers::gated(
                &layer.gate.forward(&x)?,
                &layer.up.forward(&x)?,
                self.config.hidden_act,
            )?;
            hidden = (hidden + layer.down.forward(&gated)?)?;
        }
        let hidden = self.norm.forward(&hidden)?;
        layers::unpad(&hidden.reshape((count, seq, h))?, batch.lengths)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}
