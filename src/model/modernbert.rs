//! ModernBERT: a pre-layer-norm encoder with rotary positions, GeGLU feed-forward, no biases by
//! default, and alternating global / local attention (every `global_attn_every_n_layers`-th
//! layer sees the whole sequence, the others a window of `local_attention / 2` tokens either
//! side, each kind with its own rope theta).
//!
//! Runs through candle ops over a right-padded batch (the fused BERT kernels assume post-LN with
//! biases and no rotary step); packed batches are padded inside.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::layers::{self, Activation, Rope, Visibility};
use super::network::{self, Network, PackedBatch};
use super::LoadError;

#[derive(Clone, Debug, Deserialize)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "gelu")]
    pub hidden_activation: Activation,
    pub max_position_embeddings: usize,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "local")]
    pub local_attention: usize,
    #[serde(default = "every")]
    pub global_attn_every_n_layers: usize,
    #[serde(default)]
    pub layer_types: Option<Vec<LayerKind>>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// `cls` or `mean`: how the classification head pools.
    #[serde(default = "cls")]
    pub classifier_pooling: String,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "gelu")]
    pub classifier_activation: Activation,
    /// Filled from `rope_parameters` / `global_rope_theta` / `local_rope_theta`.
    #[serde(skip)]
    pub global_theta: f64,
    #[serde(skip)]
    pub local_theta: f64,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn eps() -> f64 {
    1e-5
}
fn local() -> usize {
    128
}
fn every() -> usize {
    3
}
fn cls() -> String {
    "cls".into()
}

/// Attention span of a layer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    FullAttention,
    SlidingAttention,
}

impl ModernBertConfig {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, LoadError> {
        let mut config: Self = network::typed_config(value)?;
        let theta = |kind: &str, legacy: &str, default: f64| -> Result<f64, LoadError> {
            if let Some(params) = value.get("rope_parameters").and_then(|p| p.get(kind)) {
                if let Some(t) = params.get("rope_type").and_then(|t| t.as_str()) {
                    if t != "default" {
                        return Err(LoadError::Config(format!(
                            "config.json: rope_type {t:?} is not supported (only \"default\")"
                        )));
                    }
                }
                if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                    return Ok(theta);
                }
            }
            Ok(value
                .get(legacy)
                .and_then(|t| t.as_f64())
                .unwrap_or(default))
        };
        config.global_theta = theta("full_attention", "global_rope_theta", 160_000.0)?;
        config.local_theta = theta("sliding_attention", "local_rope_theta", 10_000.0)?;
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(LoadError::Config(
                "config.json: hidden_size is not divisible by num_attention_heads".into(),
            ));
        }
        if !matches!(config.classifier_pooling.as_str(), "cls" | "mean") {
            return Err(LoadError::Config(format!(
                "config.json: classifier_pooling {:?} is not supported (cls or mean)",
                config.classifier_pooling
            )));
        }
        Ok(config)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn layer_kind(&self, layer: usize) -> LayerKind {
        match &self.layer_types {
            Some(kinds) if layer < kinds.len() => kinds[layer],
            _ if layer.is_multiple_of(self.global_attn_every_n_layers.max(1)) => {
                LayerKind::FullAttention
            }
            _ => LayerKind::SlidingAttention,
        }
    }
}

struct Layer {
    /// `None` for layer 0, whose input is the already-normed embedding.
    attention_norm: Option<LayerNorm>,
    qkv: Linear,
    attention_out: Linear,
    mlp_norm: LayerNorm,
    /// Output `[input | gate]`, 2 × intermediate wide.
    mlp_in: Linear,
    mlp_out: Linear,
    kind: LayerKind,
}

pub struct ModernBert {
    config: ModernBertConfig,
    embeddings: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    global_rope: Rope,
    local_rope: Rope,
    dtype: DType,
}

impl ModernBert {
    /// Loads the body (under `model.` in `*For…` checkpoints).
    pub fn load(vb: &VarBuilder, config: ModernBertConfig) -> candle_core::Result<Self> {
        let root = network::under_prefix(vb, "model", "embeddings.tok_embeddings.weight");
        let h = config.hidden_size;
        let (eps, norm_bias) = (config.norm_eps, config.norm_bias);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = root.pp(format!("layers.{i}"));
                Ok(Layer {
                    attention_norm: (i > 0)
                        .then(|| layers::layer_norm(h, eps, norm_bias, p.pp("attn_norm")))
                        .transpose()?,
                    qkv: layers::linear(h, 3 * h, config.attention_bias, p.pp("attn.Wqkv"))?,
                    attention_out: layers::linear(h, h, config.attention_bias, p.pp("attn.Wo"))?,
                    mlp_norm: layers::layer_norm(h, eps, norm_bias, p.pp("mlp_norm"))?,
                    mlp_in: layers::linear(
                        h,
                        2 * config.intermediate_size,
                        config.mlp_bias,
                        p.pp("mlp.Wi"),
                    )?,
                    mlp_out: layers::linear(
                        config.intermediate_size,
                        h,
                        config.mlp_bias,
                        p.pp("mlp.Wo"),
                    )?,
                    kind: config.layer_kind(i),
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (dtype, device) = (vb.dtype(), vb.device());
        let positions = config.max_position_embeddings;
        Ok(Self {
            embeddings: root.get((config.vocab_size, h), "embeddings.tok_embeddings.weight")?,
            embedding_norm: layers::layer_norm(h, eps, norm_bias, root.pp("embeddings.norm"))?,
            final_norm: layers::layer_norm(h, eps, norm_bias, root.pp("final_norm"))?,
            global_rope: Rope::new(
                config.global_theta,
                config.head_dim(),
                positions,
                dtype,
                device,
            )?,
            local_rope: Rope::new(
                config.local_theta,
                config.head_dim(),
                positions,
                dtype,
                device,
            )?,
            layers,
            dtype,
            config,
        })
    }

    pub fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        self.embeddings.device()
    }
}

impl Network for ModernBert {
    fn forward_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        batch.validate(self.max_positions())?;
        let pad = self.config.pad_token_id.unwrap_or(0);
        let (ids, _, seq) = batch.padded(pad);
        let count = batch.lengths.len();
        let (h, heads, head_dim) = (
            self.config.hidden_size,
            self.config.num_attention_heads,
            self.config.head_dim(),
        );
        let ids = Tensor::from_vec(ids, count * seq, self.device())?;
        let mut hidden = self
            .embedding_norm
            .forward(&self.embeddings.index_select(&ids, 0)?)?;
        let global = layers::attention_bias(
            batch.lengths,
            seq,
            Visibility::Bidirectional,
            self.dtype,
            self.device(),
        )?;
        let local = layers::attention_bias(
            batch.lengths,
            seq,
            Visibility::Window(self.config.local_attention / 2),
            self.dtype,
            self.device(),
        )?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let normed = match &layer.attention_norm {
                Some(norm) => norm.forward(&hidden)?,
                None => hidden.clone(),
            };
            let qkv = layer.qkv.forward(&normed)?;
            let split = |i: usize| {
                layers::split_heads(&qkv.narrow(1, i * h, h)?, count, seq, heads, head_dim)
            };
            let (rope, bias) = match layer.kind {
                LayerKind::FullAttention => (&self.global_rope, global.as_ref()),
                LayerKind::SlidingAttention => (&self.local_rope, local.as_ref()),
            };
            let q = rope.apply(&split(0)?)?;
            let k = rope.apply(&split(1)?)?;
            let context = layers::attend(&q, &k, &split(2)?, scale, bias)?;
            hidden = (hidden + layer.attention_out.forward(&context)?)?;
            let inner = layer.mlp_in.forward(&layer.mlp_norm.forward(&hidden)?)?;
            let width = self.config.intermediate_size;
            let gated = (self
                .config
                .hidden_activation
                .apply(&inner.narrow(1, 0, width)?)?
                * inner.narrow(1, width, width)?)?;
            hidden = (hidden + layer.mlp_out.forward(&gated)?)?;
        }
        let hidden = self.final_norm.forward(&hidden)?;
        layers::unpad(&hidden.reshape((count, seq, h))?, batch.lengths)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}
