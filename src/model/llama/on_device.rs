//! The llama step as candle tensor ops on a candle device: an NVIDIA GPU in production (candle's
//! GGUF kernels, ported from llama.cpp's MMVQ), the CPU in tests, which check this very code
//! against the references on machines without a GPU.
//!
//! Same step contract as the CPU engine (`super::LlamaModel::forward`): any number of sequences,
//! each with its own KV cache and any number of new tokens; the rows of all sequences go through
//! every weight matrix together, attention runs per sequence on its own cache.
//!
//! Why the matmuls always run on whole groups of 8 rows on CUDA: candle picks a kernel by row
//! count (MMVQ for 1–8 rows, with a thread split that changes at 4; MMQ tiles above 8), and each
//! sums in its own order. A sequence's logits would then depend on how many other sequences
//! share its step. With every call exactly 8 rows (zero rows pad the last group), every row is
//! computed by the same kernel in the same order whatever the batch, so continuous batching does
//! not change results. The padding costs nothing measurable: MMVQ is bound by reading weights.

use super::config::{LlamaConfig, RopeStyle};
use super::ops::RopeTable;
use super::{Gguf, LlamaLoadError, SeqInput};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::sync::Arc;

/// Rows per quantized matmul call on CUDA (see the module comment).
const CUDA_ROW_GROUP: usize = 8;

/// One weight matrix `[n, k]` on the device: several GGUF tensors (Q, K, V; gate, up) stacked
/// along `n` into one quantized matrix when they share a type, so a step makes one matmul call
/// (two kernel launches) for them instead of three or two; a step is bound by launches.
struct DeviceLinear(QMatMul);

impl DeviceLinear {
    /// Loads `names` (each `[n_i, k]`, in order) as one `[Σ n_i, k]` matrix; tensors of
    /// different types are dequantized to f32 and stacked (no GGUF this project pins has them).
    fn load(
        gguf: &Gguf<'_>,
        names: &[String],
        widths: &[usize],
        k: usize,
        device: &Device,
    ) -> Result<Self, LlamaLoadError> {
        let mut bytes = Vec::new();
        let mut dtypes = Vec::new();
        for (name, &n) in names.iter().zip(widths) {
            let (raw, dtype, dims) = gguf.raw(name)?;
            if dims != [n, k] {
                return Err(tensor_error(
                    name,
                    format!("shape {dims:?}, expected [{n}, {k}]"),
                ));
            }
            bytes.extend_from_slice(raw);
            dtypes.push(dtype);
        }
        let all = names.join("+");
        let rows: usize = widths.iter().sum();
        let qtensor = if dtypes.iter().all(|&d| d == dtypes[0]) {
            let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), device, dtypes[0])
                .map_err(|e| tensor_error(&all, e))?;
            QTensor::new(storage, (rows, k)).map_err(|e| tensor_error(&all, e))?
        } else {
            let parts = names
                .iter()
                .map(|name| {
                    gguf.qtensor(name)?
                        .dequantize(device)
                        .map_err(|e| tensor_error(name, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let stacked = Tensor::cat(&parts, 0).map_err(|e| tensor_error(&all, e))?;
            QTensor::quantize(&stacked, GgmlDType::F32).map_err(|e| tensor_error(&all, e))?
        };
        QMatMul::from_qtensor(qtensor)
            .map(DeviceLinear)
            .map_err(|e| tensor_error(&all, e))
    }

    /// `x[rows, k] · Wᵀ`, in groups of [`CUDA_ROW_GROUP`] rows on CUDA.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.device().is_cuda() {
            return self.0.forward(x);
        }
        let rows = x.dim(0)?;
        let padded = rows.div_ceil(CUDA_ROW_GROUP) * CUDA_ROW_GROUP;
        let x = if padded == rows {
            x.clone()
        } else {
            let pad = Tensor::zeros((padded - rows, x.dim(1)?), x.dtype(), x.device())?;
            Tensor::cat(&[x, &pad], 0)?
        };
        let mut groups = (0..padded / CUDA_ROW_GROUP)
            .map(|g| {
                self.0
                    .forward(&x.narrow(0, g * CUDA_ROW_GROUP, CUDA_ROW_GROUP)?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let out = if groups.len() == 1 {
            groups.swap_remove(0)
        } else {
            Tensor::cat(&groups, 0)?
        };
        out.narrow(0, 0, rows)
    }
}

struct DeviceLayer {
    attn_norm: Tensor,
    /// Q, K and V stacked.
    qkv: DeviceLinear,
    /// Qwen2 biases of Q, K, V, stacked like them.
    bias: Option<Tensor>,
    /// Qwen3 per-head norms of Q and K.
    qk_norm: Option<(Tensor, Tensor)>,
    attn_out: DeviceLinear,
    ffn_norm: Tensor,
    /// Gate and up stacked.
    gate_up: DeviceLinear,
    down: DeviceLinear,
}

/// One sequence's keys and values on the device, per layer `[kv_heads, pos, head_dim]`.
///
/// Grown as the host caches grow: doubling, but never past the scheduler's reservation for the
/// sequence (prompt plus `max_tokens`, [`DeviceKv::limit_to`]), so device memory stays inside
/// the token budget that `--max-batch-total-tokens` sets. candle's `KvCache`, used before, grew
/// by a fixed 256 positions: up to 255 positions per sequence and layer beyond the budget, and a
/// copy of the whole cache every 256 tokens.
pub struct DeviceKv {
    /// Keys and values of each layer.
    layers: Vec<[Grown; 2]>,
    /// Bytes of one position's keys and values in one layer (f32).
    position_bytes: usize,
    /// Most positions the caches grow room for, unless more are appended.
    limit: Option<usize>,
}

impl DeviceKv {
    /// Device memory held: the positions the caches have room for, in all layers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|[k, _]| k.room() * self.position_bytes)
            .sum()
    }

    /// Caps the room the caches grow to at `positions` (see [`super::KvCache::limit_to`]).
    pub fn limit_to(&mut self, positions: usize) {
        self.limit = Some(positions);
    }

    /// Appends one layer's new keys and values (`[kv_heads, n, head_dim]` each); returns all
    /// of that layer's keys and values so far.
    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let limit = self.limit;
        let [keys, values] = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no KV cache for layer {layer}")))?;
        Ok((keys.append(k, limit)?, values.append(v, limit)?))
    }
}

/// One layer's keys or values: `[kv_heads, room, head_dim]`, the first `len` positions filled.
#[derive(Default)]
struct Grown {
    data: Option<Tensor>,
    len: usize,
}

impl Grown {
    /// Positions there is room for.
    fn room(&self) -> usize {
        self.data
            .as_ref()
            .map_or(0, |t| t.dims().get(1).copied().unwrap_or(0))
    }

    /// Writes `src` (`[kv_heads, n, head_dim]`) after the filled positions, first growing the
    /// room (`super::grown_room`); returns the filled positions.
    fn append(&mut self, src: &Tensor, limit: Option<usize>) -> candle_core::Result<Tensor> {
        let needed = self.len + src.dim(1)?;
        let room = self.room();
        if room < needed {
            let mut shape = src.dims().to_vec();
            shape[1] = super::grown_room(room, needed, limit) - self.len;
            let fresh = Tensor::zeros(shape, src.dtype(), src.device())?;
            self.data = Some(match &self.data {
                Some(old) if self.len > 0 => {
                    Tensor::cat(&[&old.narrow(1, 0, self.len)?, &fresh], 1)?
                }
                _ => fresh,
            });
        }
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("KV cache without room".into()))?;
        data.slice_set(src, 1, self.len)?;
        self.len = needed;
        data.narrow(1, 0, needed)
    }
}

/// A llama-family model whose weights live on a candle device.
pub struct DeviceLlama {
    device: Device,
    config: LlamaConfig,
    embedding: Arc<QTensor>,
    layers: Vec<DeviceLayer>,
    output_norm: Tensor,
    lm_head: DeviceLinear,
    rope: RopeTable,
}

fn tensor_error(name: &str, e: impl std::fmt::Display) -> LlamaLoadError {
    LlamaLoadError::Tensor {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

impl DeviceLlama {
    /// Copies the weights from the verified GGUF bytes onto `device`, quantized as stored
    /// (candle uploads each tensor from host memory; nothing is written to a file).
    pub fn load(gguf: &Gguf<'_>, device: &Device) -> Result<Self, LlamaLoadError> {
        let config = LlamaConfig::from_gguf(&gguf.content)?;
        let c = &config;
        if c.rope_style == RopeStyle::Halves && c.rope_dims != c.head_dim {
            return Err(LlamaLoadError::Tensor {
                name: "rope".into(),
                reason: format!(
                    "partial NeoX rotary embeddings ({} of {} dimensions) are not supported on this device",
                    c.rope_dims, c.head_dim
                ),
            });
        }
        let q = |name: &str| -> Result<Arc<QTensor>, LlamaLoadError> {
            gguf.info(name)?;
            gguf.content
                .tensor(&mut std::io::Cursor::new(gguf.bytes), name, device)
                .map(Arc::new)
                .map_err(|e| tensor_error(name, e))
        };
        let vector = |name: &str, len: usize| -> Result<Tensor, LlamaLoadError> {
            let values = gguf.vector(name, len)?;
            Tensor::from_vec(values, len, device).map_err(|e| tensor_error(name, e))
        };
        let (hidden, qw, kw) = (c.hidden, c.q_width(), c.kv_width());
        let embedding = q("token_embd.weight")?;
        if embedding.shape().dims() != [c.vocab_size, hidden] {
            return Err(tensor_error(
                "token_embd.weight",
                format!(
                    "shape {:?}, expected [{}, {hidden}]",
                    embedding.shape().dims(),
                    c.vocab_size
                ),
            ));
        }
        let lm_head = if gguf.has("output.weight") {
            DeviceLinear::load(
                gguf,
                &["output.weight".into()],
                &[c.vocab_size],
                hidden,
                device,
            )?
        } else {
            DeviceLinear(
                QMatMul::from_arc(embedding.clone())
                    .map_err(|e| tensor_error("token_embd.weight", e))?,
            )
        };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let name = |t: &str| format!("blk.{i}.{t}");
            let bias = if gguf.has(&name("attn_q.bias")) {
                let mut bias = gguf.vector(&name("attn_q.bias"), qw)?;
                bias.extend(gguf.vector(&name("attn_k.bias"), kw)?);
                bias.extend(gguf.vector(&name("attn_v.bias"), kw)?);
                Some(
                    Tensor::from_vec(bias, qw + 2 * kw, device)
                        .map_err(|e| tensor_error(&name("attn_q.bias"), e))?,
                )
            } else if c.architecture == super::config::Architecture::Qwen2 {
                return Err(tensor_error(&name("attn_q.bias"), "missing from the GGUF"));
            } else {
                None
            };
            let qk_norm = if gguf.has(&name("attn_q_norm.weight")) {
                Some((
                    vector(&name("attn_q_norm.weight"), c.head_dim)?,
                    vector(&name("attn_k_norm.weight"), c.head_dim)?,
                ))
            } else if c.architecture == super::config::Architecture::Qwen3 {
                return Err(tensor_error(
                    &name("attn_q_norm.weight"),
                    "Qwen3 needs per-head Q/K norms",
                ));
            } else {
                None
            };
            layers.push(DeviceLayer {
                attn_norm: vector(&name("attn_norm.weight"), hidden)?,
                qkv: DeviceLinear::load(
                    gguf,
                    &[
                        name("attn_q.weight"),
                        name("attn_k.weight"),
                        name("attn_v.weight"),
                    ],
                    &[qw, kw, kw],
                    hidden,
                    device,
                )?,
                bias,
                qk_norm,
                attn_out: DeviceLinear::load(
                    gguf,
                    &[name("attn_output.weight")],
                    &[hidden],
                    qw,
                    device,
                )?,
                ffn_norm: vector(&name("ffn_norm.weight"), hidden)?,
                gate_up: DeviceLinear::load(
                    gguf,
                    &[name("ffn_gate.weight"), name("ffn_up.weight")],
                    &[c.intermediate, c.intermediate],
                    hidden,
                    device,
                )?,
                down: DeviceLinear::load(
                    gguf,
                    &[name("ffn_down.weight")],
                    &[hidden],
                    c.intermediate,
                    device,
                )?,
            });
            // On a GPU the layer lives in device memory now: give back the verified host pages.
            if device.is_cuda() {
                gguf.release_tensors(&format!("blk.{i}."));
            }
        }
        let rope = gguf.rope_table(c)?;
        Ok(Self {
            output_norm: vector("output_norm.weight", hidden)?,
            device: device.clone(),
            config,
            embedding,
            layers,
            lm_head,
            rope,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> DeviceKv {
        DeviceKv {
            layers: (0..self.config.layers)
                .map(|_| Default::default())
                .collect(),
            position_bytes: 2 * self.config.kv_width() * std::mem::size_of::<f32>(),
            limit: None,
        }
    }

    /// Runs one step (see `LlamaModel::forward`). `caches` are the sequences' device caches,
    /// in `batch` order; the caller advances each `KvCache::len` afterwards. Returns the logit
    /// rows one after another (`vocab` floats each).
    pub fn step(
        &self,
        batch: &[SeqInput<'_>],
        caches: &mut [&mut DeviceKv],
    ) -> candle_core::Result<Vec<f32>> {
        let c = &self.config;
        let (hd, dev, qw, kw) = (c.head_dim, &self.device, c.q_width(), c.kv_width());
        let rows: usize = batch.iter().map(|b| b.tokens.len()).sum();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|b| b.tokens.iter().copied())
            .collect();
        // Rotation angles of every row's position, computed as the CPU engine does (f64), padded
        // with the identity for dimensions that do not rotate.
        let half = hd / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(rows * half),
            Vec::with_capacity(rows * half),
        );
        let mut angles = Vec::new();
        for b in batch {
            for j in 0..b.tokens.len() {
                angles.clear();
                self.rope.push_position(b.cache.len() + j, &mut angles);
                for i in 0..half {
                    let [co, si] = angles.get(i).copied().unwrap_or([1.0, 0.0]);
                    cos.push(co);
                    sin.push(si);
                }
            }
        }
        let cos = Tensor::from_vec(cos, (rows, 1, half), dev)?;
        let sin = Tensor::from_vec(sin, (rows, 1, half), dev)?;
        let rope = |x: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
            let x = x.reshape((rows, heads, 1, hd))?;
            let y = match c.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
            };
            y.reshape((rows, heads, hd))
        };
        let masks = batch
            .iter()
            .map(|b| causal_mask(b.tokens.len(), b.cache.len(), dev))
            .collect::<candle_core::Result<Vec<_>>>()?;

        let mut x = self
            .embedding
            .embedding(&Tensor::new(ids.as_slice(), dev)?)?
            .to_dtype(DType::F32)?;
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps)?;
            let mut qkv = layer.qkv.forward(&h)?;
            if let Some(bias) = &layer.bias {
                qkv = qkv.broadcast_add(bias)?;
            }
            let q = qkv.narrow(1, 0, qw)?.contiguous()?;
            let k = qkv.narrow(1, qw, kw)?.contiguous()?;
            let v = qkv.narrow(1, qw + kw, kw)?.contiguous()?;
            let mut q = q.reshape((rows, c.heads, hd))?;
            let mut k = k.reshape((rows, c.kv_heads, hd))?;
            if let Some((qn, kn)) = &layer.qk_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, qn, c.rms_eps)?;
                k = candle_nn::ops::rms_norm(&k.contiguous()?, kn, c.rms_eps)?;
            }
            let q = rope(&q.contiguous()?, c.heads)?;
            let k = rope(&k.contiguous()?, c.kv_heads)?;
            let v = v.reshape((rows, c.kv_heads, hd))?;
            let mut outs = Vec::with_capacity(batch.len());
            let mut r0 = 0;
            for ((b, cache), mask) in batch.iter().zip(caches.iter_mut()).zip(&masks) {
                let n = b.tokens.len();
                let kb = k.narrow(0, r0, n)?.transpose(0, 1)?.contiguous()?;
                let vb = v.narrow(0, r0, n)?.transpose(0, 1)?.contiguous()?;
                let (keys, values) = cache.append(l, &kb, &vb)?;
                let (keys, values) = (keys.contiguous()?, values.contiguous()?);
                let len = keys.dim(1)?;
                // [n, kv_heads, group, hd] -> [kv_heads, group * n, hd]
                let qb = q
                    .narrow(0, r0, n)?
                    .reshape((n, c.kv_heads, group, hd))?
                    .permute((1, 2, 0, 3))?
                    .contiguous()?
                    .reshape((c.kv_heads, group * n, hd))?;
                let mut scores = (qb.matmul(&keys.t()?)? * scale)?;
                if let Some(mask) = mask {
                    scores = scores
                        .reshape((c.kv_heads, group, n, len))?
                        .broadcast_add(mask)?
                        .reshape((c.kv_heads, group * n, len))?;
                }
                let p = candle_nn::ops::softmax_last_dim(&scores)?;
                // [kv_heads, group * n, hd] -> [n, heads * hd]
                let o = p
                    .matmul(&values)?
                    .reshape((c.heads, n, hd))?
                    .transpose(0, 1)?
                    .reshape((n, c.heads * hd))?;
                outs.push(o);
                r0 += n;
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + layer.attn_out.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.rms_eps)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let gate = gate_up.narrow(1, 0, c.intermediate)?;
            let act = (gate.silu()? * gate_up.narrow(1, c.intermediate, c.intermediate)?)?;
            x = (x + layer.down.forward(&act)?)?;
        }
        let mut last = Vec::new();
        let mut r = 0u32;
        for b in batch {
            r += b.tokens.len() as u32;
            if b.logits {
                last.push(r - 1);
            }
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let picked = x.index_select(&Tensor::new(last.as_slice(), dev)?, 0)?;
        let h = candle_nn::ops::rms_norm(&picked, &self.output_norm, c.rms_eps)?;
        self.lm_head.forward(&h)?.flatten_all()?.to_vec1::<f32>()
    }
}

/// `[n, start + n]` additive mask of `n` new rows at positions `start..`: row `i` sees keys
/// `0..=start + i`. None for one row (it sees the whole cache).
fn causal_mask(n: usize, start: usize, dev: &Device) -> candle_core::Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let len = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, len), dev).map(Some)
}

#[cfg(test)]
mod tests {
    use super::super::{KvCache, LlamaModel, Scratch};
    use super::*;

    /// A tiny random model of the fuzz seeds (tests/data/make_tiny_gguf.py): llama (Q8_0, tied
    /// output), Qwen2 (F32, Q/K/V biases, NeoX rotation), Qwen3 (Q4_0, per-head Q/K norms).
    fn seed(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/fuzz/seeds/gguf")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn step(model: &LlamaModel, cache: &mut KvCache, tokens: &[u32]) -> Vec<f32> {
        model
            .forward(
                &mut [SeqInput {
                    cache,
                    tokens,
                    logits: true,
                }],
                &mut Scratch::default(),
            )
            .expect("step runs")
            .row(0)
            .to_vec()
    }

    /// Every architecture the loader takes gives, through candle's ops, the logits of the CPU
    /// engine (prefill of 5 tokens, then 3 decode steps): biases, per-head norms, both rotation
    /// styles and grouped KV heads are wired the same way on both paths.
    #[test]
    fn every_architecture_matches_the_cpu_engine() {
        for name in ["llama-q8_0.gguf", "qwen2-f32.gguf", "qwen3-q4_0.gguf"] {
            let bytes = seed(name);
            let gguf = Gguf::read(&bytes).expect("seed parses");
            let cpu = LlamaModel::load(&gguf).expect("CPU engine loads");
            let dev = LlamaModel::load_candle(&gguf, &Device::Cpu).expect("candle path loads");
            let vocab = cpu.config().vocab_size as u32;
            let prompt: Vec<u32> = (0..5).map(|i| (i * 7 + 3) % vocab).collect();
            let (mut a, mut b) = (cpu.new_cache(), dev.new_cache());
            let (mut la, mut lb) = (step(&cpu, &mut a, &prompt), step(&dev, &mut b, &prompt));
            for t in 0..4 {
                let scale = la.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                let worst = la
                    .iter()
                    .zip(&lb)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                // Both round activations to 8 bits for quantized weights; the CPU engine keeps
                // keys and values in f16.
                assert!(
                    worst <= 0.03 * scale,
                    "{name}, step {t}: logits differ by {worst} (largest {scale})"
                );
                let next = [(t * 11 + 1) % vocab];
                la = step(&cpu, &mut a, &next);
                lb = step(&dev, &mut b, &next);
            }
            assert_eq!(a.len(), b.len());
        }
    }
}
