//! Building blocks the model families share: weight loading with the naming variants checkpoints
//! use, activations, rotary position embeddings, masks and the generic (candle-op) attention.
//!
//! Why here and not candle-transformers: the families need the same pieces with the same
//! numerics (f32 softmax on CPU for half dtypes, a finite mask bias that is not NaN in f16,
//! rotary tables computed the way `transformers` computes them), and packed batches that
//! candle-transformers' models do not take.

use candle_core::{DType, Device, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// Finite additive bias for masked keys: `exp` underflows to exactly zero after the softmax's
/// max subtraction, and it is finite in f16 (max 65504), unlike `f32::MIN`.
pub const MASK_BIAS: f32 = -10_000.0;

/// Feed-forward activation named by `hidden_act` / `hidden_activation` / `activation`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU: transformers' "gelu".
    Gelu,
    /// tanh approximation.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    /// x · sigmoid(x), transformers' "silu" / "swish".
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluNew => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// A linear layer `[out, in]`, with or without bias.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
    Ok(Linear::new(weight, bias))
}

/// A layer norm; older checkpoints name its parameters gamma/beta; some families have no bias.
pub fn layer_norm(
    size: usize,
    eps: f64,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<LayerNorm> {
    let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    let weight = vb.get(size, w)?;
    if bias {
        Ok(LayerNorm::new(weight, vb.get(size, b)?, eps))
    } else {
        Ok(LayerNorm::new_no_bias(weight, eps))
    }
}

/// RMS norm as Qwen/Llama compute it: in f32, `x / sqrt(mean(x²) + eps) · weight`.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        let weight = self.weight.to_dtype(DType::F32)?;
        // transformers multiplies the weight after casting back to the input dtype; in f32 the
        // two orders are the same.
        candle_nn::ops::rms_norm(&x32, &weight, self.eps)?.to_dtype(dtype)
    }
}

/// Reads the `rope_theta` of a config: transformers 5 writes `rope_parameters.rope_theta`,
/// older configs a top-level `rope_theta` (GTE, Qwen) or `rotary_emb_base` (NomicBERT).
pub fn rope_theta(config: &serde_json::Value, default: f64) -> Result<f64, String> {
    if let Some(params) = config.get("rope_parameters").filter(|p| !p.is_null()) {
        if let Some(kind) = params.get("rope_type").and_then(|t| t.as_str()) {
            if kind != "default" {
                return Err(format!(
                    "config.json: rope_type {kind:?} is not supported (only \"default\")"
                ));
            }
        }
        if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
            return Ok(theta);
        }
    }
    if let Some(scaling) = config.get("rope_scaling").filter(|s| !s.is_null()) {
        return Err(format!(
            "config.json: rope_scaling {scaling} is not supported (only unscaled rotary embeddings)"
        ));
    }
    Ok(["rope_theta", "rotary_emb_base"]
        .iter()
        .find_map(|k| config.get(*k).and_then(|v| v.as_f64()))
        .unwrap_or(default))
}

/// Rotary position embedding tables, `[max_positions, head_dim / 2]`, computed like
/// transformers' default rope: `inv_freq = 1 / theta^(2i/d)` and `pos · inv_freq` in f32.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(
        theta: f64,
        head_dim: usize,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?,
        })
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]` for positions `0..seq` (rotate-half layout).
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let seq = x.dim(2)?;
        candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &self.cos.narrow(0, 0, seq)?,
            &self.sin.narrow(0, 0, seq)?,
        )
    }
}

/// Which keys a query may see, besides padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Every key (encoders).
    Bidirectional,
    /// Keys at or before the query (decoders).
    Causal,
    /// Keys within `window` positions either side (ModernBERT's local layers).
    Window(usize),
}

/// The additive attention bias `[batch, 1, seq, seq]` (0 = visible, [`MASK_BIAS`] = hidden) for
/// right-padded sequences of the given lengths, or `None` when nothing is hidden.
pub fn attention_bias(
    lengths: &[usize],
    seq: usize,
    visibility: Visibility,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let padded = lengths.iter().any(|l| *l != seq);
    if !padded && visibility == Visibility::Bidirectional {
        return Ok(None);
    }
    let mut bias = Vec::with_capacity(lengths.len() * seq * seq);
    for len in lengths {
        for q in 0..seq {
            for k in 0..seq {
                let visible = k < *len
                    && match visibility {
                        Visibility::Bidirectional => true,
                        Visibility::Causal => k <= q,
                        Visibility::Window(w) => q.abs_diff(k) <= w,
                    };
                bias.push(if visible { 0.0 } else { MASK_BIAS });
            }
        }
    }
    Tensor::from_vec(bias, (lengths.len(), 1, seq, seq), device)?
        .to_dtype(dtype)
        .map(Some)
}

/// Softmax over the last dimension; on CPU, half-precision scores are upcast to f32 first
/// (candle's CPU kernel accumulates in the tensor's dtype). The CUDA kernel accumulates in f32.
pub fn softmax(scores: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = scores.dtype();
    if scores.device().is_cpu() && matches!(dtype, DType::F16 | DType::BF16) {
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
    } else {
        candle_nn::ops::softmax_last_dim(scores)
    }
}

/// `softmax(q kᵀ · scale + bias) v` for `q` `[b, heads, s, d]`, `k`/`v` `[b, kv_heads, s, d]`
/// (grouped-query attention repeats each key/value head for `heads / kv_heads` query heads).
/// Returns `[b · s, heads · d]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (batch, heads, seq, head_dim) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let (k, v) = if kv_heads == heads {
        (k.contiguous()?, v.contiguous()?)
    } else {
        let repeat = heads / kv_heads;
        let expand = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.unsqueeze(2)?
                .expand((batch, kv_heads, repeat, seq, head_dim))?
                .reshape((batch, heads, seq, head_dim))
        };
        (expand(k)?, expand(v)?)
    };
    let mut scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    softmax(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((batch * seq, heads * head_dim))
}

/// Splits `[b · s, n · d]` into heads `[b, n, s, d]`.
pub fn split_heads(
    x: &Tensor,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> candle_core::Result<Tensor> {
    x.reshape((batch, seq, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()
}

/// Gated feed-forward `down(act(gate(x)) · up(x))` (SwiGLU/GeGLU) from `gate` and `up` outputs.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    act.apply(gate)? * up
}

/// The rows `[0, len)` of every sequence of `[b, s, h]`, concatenated: `[Σ len, h]`.
pub fn unpad(hidden: &Tensor, lengths: &[usize]) -> candle_core::Result<Tensor> {
    let (_, seq, width) = hidden.dims3()?;
    let rows: Vec<u32> = lengths
        .iter()
        .enumerate()
        .flat_map(|(b, len)| (0..*len).map(move |p| (b * seq + p) as u32))
        .collect();
    let rows = Tensor::from_vec(rows, lengths.iter().sum::<usize>(), hidden.device())?;
    hidden.reshape(((), width))?.index_select(&rows, 0)
}
