//! GTE ("NewModel": gte-base-en-v1.5, gte-multilingual-base) and NomicBERT (nomic-embed-text):
//! post-layer-norm encoders with rotary positions instead of a position table and a gated
//! (GLU) feed-forward. They differ in biases (GTE has them, NomicBERT none) and weight names;
//! both read checkpoints as their authors publish them (fused `qkv_proj` / `Wqkv`, GTE's
//! `up_gate_proj` = `[up | gate]`, NomicBERT's `fc11` = up and `fc12` = gate), which is also what
//! `transformers` writes.
//!
//! Runs through candle ops over a right-padded batch; packed batches are padded inside.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::layers::{self, Activation, Rope, Visibility};
use super::network::{self, FamilyKind, Network, PackedBatch};
use super::LoadError;

#[derive(Clone, Debug, Deserialize)]
pub struct GteConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "gelu")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(skip)]
    pub rope_theta: f64,
    /// GTE: biases everywhere but the gated projection; NomicBERT: none.
    #[serde(skip)]
    pub biases: bool,
    #[serde(skip)]
    pub nomic: bool,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn eps() -> f64 {
    1e-12
}

impl GteConfig {
    pub fn from_json(kind: FamilyKind, value: &serde_json::Value) -> Result<Self, LoadError> {
        let mut config: Self = network::typed_config(value)?;
        config.nomic = kind == FamilyKind::NomicBert;
        config.biases = !config.nomic;
        if config.nomic && value.get("hidden_act").is_none() {
            config.hidden_act = Activation::Silu;
        }
        let default_theta = if config.nomic { 1000.0 } else { 10_000.0 };
        config.rope_theta = layers::rope_theta(value, default_theta).map_err(LoadError::Config)?;
        if config.num_attention_heads == 0
            || (config.head_dim.is_none()
                && !config
                    .hidden_size
                    .is_multiple_of(config.num_attention_heads))
        {
            return Err(LoadError::Config(
                "config.json: hidden_size is not divisible by num_attention_heads".into(),
            ));
        }
        Ok(config)
    }

    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Weight prefix of the body in a `*For…` checkpoint.
    pub fn body_prefixes(&self) -> &'static [&'static str] {
        if self.nomic {
            &["nomic_bert", "bert"]
        } else {
            &["gte", "new"]
        }
    }
}

struct Layer {
    qkv: Linear,
    out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    gate: Linear,
    down: Linear,
    mlp_norm: LayerNorm,
}

pub struct Gte {
    config: GteConfig,
    word_embeddings: Tensor,
    type_embeddings: Option<Tensor>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    rope: Rope,
    dtype: DType,
}

/// Splits a fused `[2 × inter, h]` projection into its halves.
fn halves(fused: &Linear, inter: usize) -> candle_core::Result<(Linear, Linear)> {
    let w = fused.weight();
    let half = |i: usize| -> candle_core::Result<Linear> {
        let bias = fused
            .bias()
            .map(|b| b.narrow(0, i * inter, inter))
            .transpose()?;
        Ok(Linear::new(
            w.narrow(0, i * inter, inter)?.contiguous()?,
            bias,
        ))
    };
    Ok((half(0)?, half(1)?))
}

impl Gte {
    /// Loads the body (`gte.` / `new.` or `nomic_bert.` prefix in `*For…` checkpoints).
    pub fn load(vb: &VarBuilder, config: GteConfig) -> candle_core::Result<Self> {
        let root = config
            .body_prefixes()
            .iter()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")))
            .map_or_else(|| vb.clone(), |p| vb.pp(*p));
        let (h, d, inter) = (
            config.hidden_size,
            config.head_dim(),
            config.intermediate_size,
        );
        let heads = config.num_attention_heads;
        let (eps, bias) = (config.layer_norm_eps, config.biases);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                if config.nomic {
                    let p = root.pp(format!("encoder.layers.{i}"));
                    Ok(Layer {
                        qkv: layers::linear(h, 3 * heads * d, false, p.pp("attn.Wqkv"))?,
                        out: layers::linear(heads * d, h, false, p.pp("attn.out_proj"))?,
                        attention_norm: layers::layer_norm(h, eps, true, p.pp("norm1"))?,
                        up: layers::linear(h, inter, false, p.pp("mlp.fc11"))?,
                        gate: layers::linear(h, inter, false, p.pp("mlp.fc12"))?,
                        down: layers::linear(inter, h, false, p.pp("mlp.fc2"))?,
                        mlp_norm: layers::layer_norm(h, eps, true, p.pp("norm2"))?,
                    })
                } else {
                    let p = root.pp(format!("encoder.layer.{i}"));
                    let fused = layers::linear(h, 2 * inter, false, p.pp("mlp.up_gate_proj"))?;
                    let (up, gate) = halves(&fused, inter)?;
                    Ok(Layer {
                        qkv: layers::linear(h, 3 * heads * d, bias, p.pp("attention.qkv_proj"))?,
                        out: layers::linear(heads * d, h, bias, p.pp("attention.o_proj"))?,
                        attention_norm: layers::layer_norm(h, eps, true, p.pp("attn_ln"))?,
                        up,
                        gate,
                        down: layers::linear(inter, h, bias, p.pp("mlp.down_proj"))?,
                        mlp_norm: layers::layer_norm(h, eps, true, p.pp("mlp_ln"))?,
                    })
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let type_embeddings = (config.type_vocab_size > 0)
            .then(|| {
                root.get(
                    (config.type_vocab_size, h),
                    "embeddings.token_type_embeddings.weight",
                )
            })
            .transpose()?;
        let norm_name = if config.nomic {
            "emb_ln"
        } else {
            "embeddings.LayerNorm"
        };
        Ok(Self {
            word_embeddings: root
                .get((config.vocab_size, h), "embeddings.word_embeddings.weight")?,
            type_embeddings,
            embedding_norm: layers::layer_norm(h, eps, true, root.pp(norm_name))?,
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

    pub fn config(&self) -> &GteConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        self.word_embeddings.device()
    }
}

impl Network for Gte {
    fn forward_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        batch.validate(self.max_positions())?;
        let (ids, types, seq) = batch.padded(self.config.pad_token_id.unwrap_or(0));
        let count = batch.lengths.len();
        let (h, d, heads) = (
            self.config.hidden_size,
            self.config.head_dim(),
            self.config.num_attention_heads,
        );
        let n = count * seq;
        let ids = Tensor::from_vec(ids, n, self.device())?;
        let mut hidden = self.word_embeddings.index_select(&ids, 0)?;
        if let Some(table) = &self.type_embeddings {
            let types = Tensor::from_vec(types, n, self.device())?;
            hidden = (hidden + table.index_select(&types, 0)?)?;
        }
        let mut hidden = self.embedding_norm.forward(&hidden)?;
        let bias = layers::attention_bias(
            batch.lengths,
            seq,
            Visibility::Bidirectional,
            self.dtype,
            self.device(),
        )?;
        let scale = 1.0 / (d as f64).sqrt();
        let width = heads * d;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&hidden)?;
            let split = |i: usize| {
                layers::split_heads(&qkv.narrow(1, i * width, width)?, count, seq, heads, d)
            };
            let q = self.rope.apply(&split(0)?)?;
            let k = self.rope.apply(&split(1)?)?;
            let context = layers::attend(&q, &k, &split(2)?, scale, bias.as_ref())?;
            let attended = layer
                .attention_norm
                .forward(&(hidden + layer.out.forward(&context)?)?)?;
            let gated = layers::gated(
                &layer.gate.forward(&attended)?,
                &layer.up.forward(&attended)?,
                self.config.hidden_act,
            )?;
            hidden = layer
                .mlp_norm
                .forward(&(attended + layer.down.forward(&gated)?)?)?;
        }
        layers::unpad(&hidden.reshape((count, seq, h))?, batch.lengths)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn uses_type_ids(&self) -> bool {
        self.config.type_vocab_size > 1
    }
}
