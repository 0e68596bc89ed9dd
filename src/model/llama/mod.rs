//! Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3) loaded from GGUF bytes held
//! in memory, run on CPU over a *step*: any number of sequences, each with its own KV cache and
//! any number of new tokens (a prefill chunk or one decode token).
//!
//! All rows of a step go through every weight matrix as one matrix (`quant::matmul`), so the
//! weights are read once per step however many sequences decode; attention runs per sequence on
//! its own cache. Knows nothing about sampling, scheduling or HTTP.
//!
//! Weights of type Q4_0, Q4_1 and Q8_0 run on our kernels (`quant`); other GGUF types (K-quants,
//! F16, …) run through candle's `QMatMul` on CPU, one call per weight, with the same results
//! semantics but without the multi-row reuse.

pub mod attention;
pub mod config;
pub mod header;
pub mod on_device;
pub mod ops;
pub mod quant;
mod team;
pub mod tokenizer;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use config::{Architecture, LlamaConfig};
use half::{f16, slice::HalfFloatSliceExt};
use quant::{PackedMatrix, QuantKind, QuantizedRows};
use rayon::prelude::*;
use std::io::Cursor;

pub use config::ConfigError;

/// Why a GGUF could not be turned into a runnable model.
#[derive(Debug, thiserror::Error)]
pub enum LlamaLoadError {
    #[error("malformed GGUF header: {0}")]
    Header(#[from] header::HeaderError),
    #[error("not a readable GGUF file: {0}")]
    Gguf(candle_core::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
}

/// Why a forward step failed (only the fallback path through candle can fail).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("candle matmul failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("token id {0} is outside the vocabulary")]
    Token(u32),
    #[error("a KV cache made by another model was passed to this one")]
    WrongCache,
}

/// The GGUF parsed once: metadata for the tokenizer and chat template, tensor directory for the
/// weights. Borrowing the bytes keeps loading copy-free until the weights are repacked.
pub struct Gguf<'a> {
    pub content: gguf_file::Content,
    bytes: &'a [u8],
}

impl<'a> Gguf<'a> {
    /// Parses the header of GGUF bytes held in memory (no file is opened). The header is first
    /// walked with every length, count and tensor extent bounded by the bytes (see `header`),
    /// so a malformed file is an error before candle allocates what it claims. The bytes have
    /// passed signature verification by then: this is defence in depth, not the trust boundary.
    pub fn read(bytes: &'a [u8]) -> Result<Self, LlamaLoadError> {
        header::check(bytes)?;
        let content =
            gguf_file::Content::read(&mut Cursor::new(bytes)).map_err(LlamaLoadError::Gguf)?;
        Ok(Self { content, bytes })
    }

    /// A string metadata value.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        match self.content.metadata.get(key) {
            Some(gguf_file::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn info(&self, name: &str) -> Result<&gguf_file::TensorInfo, LlamaLoadError> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| LlamaLoadError::Tensor {
                name: name.to_string(),
                reason: "missing from the GGUF".into(),
            })
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The raw bytes of a tensor, in place. Every size is checked arithmetic: `header::check`
    /// has bounded them already, and this stays safe without it.
    fn raw(&self, name: &str) -> Result<(&'a [u8], GgmlDType, Vec<usize>), LlamaLoadError> {
        let info = self.info(name)?;
        let dims = info.shape.dims().to_vec();
        let dtype = info.ggml_dtype;
        let outside = |reason: &str| LlamaLoadError::Tensor {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let elems = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| outside("its shape has more elements than a size can count"))?;
        if !elems.is_multiple_of(dtype.block_size()) {
            return Err(outside("its elements do not fill whole blocks of its type"));
        }
        let range = (elems / dtype.block_size())
            .checked_mul(dtype.type_size())
            .and_then(|len| {
                let start = self.content.tensor_data_offset.checked_add(info.offset)?;
                let start = usize::try_from(start).ok()?;
                Some(start..start.checked_add(len)?)
            })
            .filter(|range| range.end <= self.bytes.len())
            .ok_or_else(|| outside("data lies outside the file"))?;
        Ok((&self.bytes[range], dtype, dims))
    }

    /// Gives back the pages of the verified bytes that lie wholly inside tensors whose names
    /// start with `prefix` (`crate::memory::release_pages`; a no-op for bytes that are not a
    /// verified copy, such as a test's buffer). Call it only once nothing reads those tensors
    /// again: a released page faults on the next read.
    fn release_tensors(&self, prefix: &str) {
        let names: Vec<&String> = self
            .content
            .tensor_infos
            .keys()
            .filter(|name| name.starts_with(prefix))
            .collect();
        for name in names {
            if let Ok((bytes, _, _)) = self.raw(name) {
                crate::memory::release_pages(bytes);
            }
        }
    }

    /// The rotation table of `config` (with Llama 3's per-pair `rope_freqs` when present), as
    /// both engines compute it.
    fn rope_table(&self, c: &LlamaConfig) -> Result<ops::RopeTable, LlamaLoadError> {
        let factors = if self.has("rope_freqs.weight") {
            Some(self.vector("rope_freqs.weight", c.rope_dims / 2)?)
        } else {
            None
        };
        Ok(ops::RopeTable::new(
            c.rope_dims,
            c.rope_theta,
            c.rope_linear_scale,
            factors.as_deref(),
        ))
    }

    fn qtensor(&self, name: &str) -> Result<QTensor, LlamaLoadError> {
        self.content
            .tensor(&mut Cursor::new(self.bytes), name, &Device::Cpu)
            .map_err(|e| LlamaLoadError::Tensor {
                name: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// A small tensor (norm weight, bias) as f32, whatever its stored type.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, LlamaLoadError> {
        let values = self
            .qtensor(name)?
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| LlamaLoadError::Tensor {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        if values.len() != len {
            return Err(LlamaLoadError::Tensor {
                name: name.to_string(),
                reason: format!("expected {len} values, found {}", values.len()),
            });
        }
        Ok(values)
    }
}

fn native_kind(dtype: GgmlDType) -> Option<QuantKind> {
    match dtype {
        GgmlDType::Q4_0 => Some(QuantKind::Q4_0),
        GgmlDType::Q4_1 => Some(QuantKind::Q4_1),
        GgmlDType::Q8_0 => Some(QuantKind::Q8_0),
        _ => None,
    }
}

/// A weight matrix `[n, k]`, possibly several GGUF tensors stacked along `n`.
enum Linear {
    Packed(PackedMatrix),
    /// Types without a native kernel: candle's CPU quantized matmul, one per stacked tensor.
    Candle(Vec<(QMatMul, usize)>),
}

impl Linear {
    /// Loads and stacks `names` (same input width) into one matrix of `Σ n` outputs.
    fn load(gguf: &Gguf<'_>, names: &[String], k: usize) -> Result<Self, LlamaLoadError> {
        let mut parts = Vec::new();
        for name in names {
            let (bytes, dtype, dims) = gguf.raw(name)?;
            if dims.len() != 2 || dims[1] != k {
                return Err(LlamaLoadError::Tensor {
                    name: name.clone(),
                    reason: format!("shape {dims:?} does not take {k} inputs"),
                });
            }
            parts.push((name, bytes, dtype, dims[0]));
        }
        let kind = native_kind(parts[0].2);
        if let Some(kind) = kind.filter(|_| parts.iter().all(|p| p.2 == parts[0].2)) {
            let slices: Vec<(&[u8], usize)> = parts.iter().map(|p| (p.1, p.3)).collect();
            return PackedMatrix::pack(kind, k, &slices)
                .map(Linear::Packed)
                .map_err(|e| LlamaLoadError::Tensor {
                    name: names.join("+"),
                    reason: e.to_string(),
                });
        }
        let mut mats = Vec::new();
        for (name, _, _, n) in parts {
            let q =
                QMatMul::from_qtensor(gguf.qtensor(name)?).map_err(|e| LlamaLoadError::Tensor {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            mats.push((q, n));
        }
        Ok(Linear::Candle(mats))
    }

    fn outputs(&self) -> usize {
        match self {
            Linear::Packed(p) => p.rows(),
            Linear::Candle(mats) => mats.iter().map(|m| m.1).sum(),
        }
    }

    /// `out[rows, n] = x[rows, k] · Wᵀ`.
    fn forward(
        &self,
        x: &[f32],
        k: usize,
        scratch: &mut QuantizedRows,
        out: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        let rows = x.len() / k;
        let n = self.outputs();
        out.resize(rows * n, 0.0);
        match self {
            Linear::Packed(w) => {
                scratch.quantize(x, k);
                quant::matmul(w, scratch, out);
            }
            Linear::Candle(mats) => {
                let input = Tensor::from_slice(x, (rows, k), &Device::Cpu)?;
                let mut col = 0;
                for (m, width) in mats {
                    let y = m.forward(&input)?.to_vec2::<f32>()?;
                    for (r, yr) in y.iter().enumerate() {
                        out[r * n + col..r * n + col + width].copy_from_slice(yr);
                    }
                    col += width;
                }
            }
        }
        Ok(())
    }
}

/// The token table, which is also the output projection when the model ties them.
enum Embedding {
    Packed(std::sync::Arc<Linear>),
    Candle(QTensor),
}

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Linear,
    /// Qwen2 Q/K/V biases, stacked like `qkv`.
    qkv_bias: Option<Vec<f32>>,
    /// Qwen3 per-head norms.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    attn_out: Linear,
    ffn_norm: Vec<f32>,
    gate_up: Linear,
    down: Linear,
}

/// One sequence's keys and values for every (layer, KV head), `[pos][head_dim]` each, grown as
/// it decodes. One run per KV head: an attention task reads its head's keys and values as two
/// sequential streams (with `[pos][kv_width]` rows it read 128 bytes in every 384).
///
/// Stored as f16, as llama.cpp does by default: at 8 streams the caches are read every step and
/// were, in f32, as many bytes as the weights (a decode step is bound by memory bandwidth), and
/// f16 also doubles the sequences a KV budget holds.
#[derive(Default)]
pub struct KvCache {
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    /// The caches of a model on a candle device (GPU) instead.
    device: Option<on_device::DeviceKv>,
    len: usize,
    /// Most positions the host caches grow room for (see [`KvCache::limit_to`]; a device
    /// cache keeps its own copy).
    limit: Option<usize>,
}

impl KvCache {
    /// Caps the room the caches (host or device) grow to at `positions` (the scheduler's
    /// reservation for the sequence: prompt plus `max_tokens`), so that doubling growth never
    /// holds more than the token budget counts. More positions may still be appended (the room
    /// grows exactly to them); the cap only stops over-allocation.
    pub fn limit_to(&mut self, positions: usize) {
        self.limit = Some(positions);
        if let Some(device) = &mut self.device {
            device.limit_to(positions);
        }
    }

    /// Room for `new` more positions of width `head_dim` in every host cache: doubling, as a
    /// `Vec` grows, but not past the limit.
    fn make_room(&mut self, new: usize, head_dim: usize) {
        let needed = (self.len + new) * head_dim;
        let limit = self.limit.map(|p| p.saturating_mul(head_dim));
        for v in self.keys.iter_mut().chain(self.values.iter_mut()) {
            if v.capacity() < needed {
                v.reserve_exact(grown_room(v.capacity(), needed, limit) - v.len());
            }
        }
    }

    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (for limits and metrics).
    pub fn bytes(&self) -> usize {
        let host: usize = self
            .keys
            .iter()
            .chain(&self.values)
            .map(|v| v.capacity() * std::mem::size_of::<f16>())
            .sum();
        host + self.device.as_ref().map_or(0, on_device::DeviceKv::bytes)
    }
}

/// The room a cache grows to from `have` when it needs `needed` (any unit): doubling, but not
/// past `limit` unless more is needed. The one growth rule of the host caches
/// ([`KvCache::make_room`]) and the device caches (`on_device::DeviceKv`).
fn grown_room(have: usize, needed: usize, limit: Option<usize>) -> usize {
    let cap = limit.unwrap_or(usize::MAX).max(needed);
    have.saturating_mul(2).max(needed).min(cap)
}

/// One sequence's part of a step.
pub struct SeqInput<'a> {
    pub cache: &'a mut KvCache,
    /// New tokens, at positions `cache.len()..`.
    pub tokens: &'a [u32],
    /// Whether to compute logits for the last new token.
    pub logits: bool,
}

/// Buffers reused from step to step, so a decode step allocates nothing in steady state.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    quant: QuantizedRows,
    angles: Vec<[f32; 2]>,
    /// The output projection of the rows that need logits (`vocab` wide each).
    logits: Vec<f32>,
    /// Each thread's buffers when a step is split by sequences.
    parts: Vec<Scratch>,
}

/// The logits of one step: one `vocab`-wide row per input that asked for them, in input order,
/// borrowed from the step's [`Scratch`]. A view rather than a vector per row: an 8-stream step's
/// logits are 1.5 MB, and copying them out cost ~2 % of the step on the 2-core VM (a memmove on
/// the thread that runs the step while the other waits). Rows are mutable so that sampling
/// (penalties, temperature) works in place.
pub struct Logits<'a> {
    data: &'a mut [f32],
    vocab: usize,
}

impl<'a> Logits<'a> {
    fn new(data: &'a mut [f32], rows: usize, vocab: usize) -> Self {
        Self {
            data: &mut data[..rows * vocab],
            vocab,
        }
    }

    /// Row `i` (panics when out of range, as slice indexing does).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The rows in order.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.vocab.max(1))
    }

    /// Copies of the rows (for callers that keep them past the next step).
    pub fn to_vecs(&self) -> Vec<Vec<f32>> {
        self.rows().map(<[f32]>::to_vec).collect()
    }
}

impl std::fmt::Debug for Logits<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logits")
            .field("rows", &self.rows().len())
            .field("vocab", &self.vocab)
            .finish()
    }
}

impl<'a> IntoIterator for Logits<'a> {
    type Item = &'a mut [f32];
    type IntoIter = std::slice::ChunksExactMut<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.data.chunks_exact_mut(self.vocab.max(1))
    }
}

/// A loaded llama-family model: on the CPU, our own kernels; on a GPU, candle's.
pub struct LlamaModel {
    engine: ModelEngine,
}

enum ModelEngine {
    Cpu(CpuModel),
    Device(on_device::DeviceLlama),
}

impl LlamaModel {
    /// Loads the model for the CPU, on this project's kernels (Q4_0/Q4_1/Q8_0; other types
    /// through candle's CPU matmul).
    pub fn load(gguf: &Gguf<'_>) -> Result<Self, LlamaLoadError> {
        CpuModel::load(gguf).map(|m| Self {
            engine: ModelEngine::Cpu(m),
        })
    }

    /// Loads the model onto `device`: the CPU engine for `Device::Cpu`, candle's tensor ops
    /// (its GGUF CUDA kernels) for a GPU.
    pub fn load_on(gguf: &Gguf<'_>, device: &Device) -> Result<Self, LlamaLoadError> {
        if device.is_cpu() {
            Self::load(gguf)
        } else {
            Self::load_candle(gguf, device)
        }
    }

    /// Loads the model as candle tensor ops on `device` whatever it is: the GPU path, which
    /// tests run on the CPU to check it against the references without a GPU.
    pub fn load_candle(gguf: &Gguf<'_>, device: &Device) -> Result<Self, LlamaLoadError> {
        on_device::DeviceLlama::load(gguf, device).map(|m| Self {
            engine: ModelEngine::Device(m),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        match &self.engine {
            ModelEngine::Cpu(m) => &m.config,
            ModelEngine::Device(m) => m.config(),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        match &self.engine {
            ModelEngine::Cpu(_) => Device::Cpu,
            ModelEngine::Device(m) => m.device().clone(),
        }
    }

    /// Bytes of KV cache one position of one sequence takes, all layers: keys and values of
    /// every KV head, f16 on the CPU, f32 on a device. What `--max-batch-total-tokens` bounds.
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = self.config();
        let element = match &self.engine {
            ModelEngine::Cpu(_) => std::mem::size_of::<f16>(),
            ModelEngine::Device(_) => std::mem::size_of::<f32>(),
        };
        2 * c.layers * c.kv_heads * c.head_dim * element
    }

    /// Which of this project's CPU kernels run the model: `None` on a candle device.
    pub fn cpu_kernels(&self) -> Option<quant::CpuKernels> {
        match &self.engine {
            ModelEngine::Cpu(_) => Some(quant::cpu_kernels()),
            ModelEngine::Device(_) => None,
        }
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        match &self.engine {
            ModelEngine::Cpu(m) => m.new_cache(),
            ModelEngine::Device(m) => KvCache {
                device: Some(m.new_cache()),
                ..KvCache::default()
            },
        }
    }

    /// Runs one step. Returns the logits (`vocab` wide) of the last new token of every input
    /// with `logits: true`, in input order, borrowed from `s`. Caches grow by their inputs'
    /// token counts. A cache must come from this model's [`LlamaModel::new_cache`].
    pub fn forward<'s>(
        &self,
        batch: &mut [SeqInput<'_>],
        s: &'s mut Scratch,
    ) -> Result<Logits<'s>, ForwardError> {
        // Every input is checked before any cache is touched, so a refused step loses nothing.
        let vocab = self.config().vocab_size;
        if let Some(&bad) = batch
            .iter()
            .flat_map(|b| b.tokens)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(ForwardError::Token(bad));
        }
        let own = |cache: &KvCache| match &self.engine {
            ModelEngine::Cpu(m) => {
                cache.device.is_none() && cache.keys.len() == m.layers.len() * m.config.kv_heads
            }
            ModelEngine::Device(_) => cache.device.is_some(),
        };
        if !batch.iter().all(|b| own(b.cache)) {
            return Err(ForwardError::WrongCache);
        }
        match &self.engine {
            ModelEngine::Cpu(m) => {
                let rows = m.forward(batch, s)?;
                Ok(Logits::new(&mut s.logits, rows, vocab))
            }
            ModelEngine::Device(m) => {
                // The device caches move out for the step (the inputs borrow the host side).
                let mut caches = Vec::with_capacity(batch.len());
                for b in batch.iter_mut() {
                    caches.push(b.cache.device.take().ok_or(ForwardError::WrongCache)?);
                }
                let mut refs: Vec<&mut on_device::DeviceKv> = caches.iter_mut().collect();
                let result = m.step(batch, &mut refs);
                for (b, cache) in batch.iter_mut().zip(caches) {
                    b.cache.device = Some(cache);
                }
                s.logits = result?;
                for b in batch.iter_mut() {
                    b.cache.len += b.tokens.len();
                }
                let rows = s.logits.len() / vocab;
                Ok(Logits::new(&mut s.logits, rows, vocab))
            }
        }
    }
}

/// The CPU engine.
struct CpuModel {
    config: LlamaConfig,
    embedding: Embedding,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    lm_head: std::sync::Arc<Linear>,
    rope: ops::RopeTable,
}

impl CpuModel {
    /// Builds the model from a parsed GGUF. Quantized weights are repacked into our own
    /// layout (Q4_0/Q4_1/Q8_0) or copied into candle tensors (other types); nothing keeps a
    /// borrow of the GGUF bytes afterwards.
    pub fn load(gguf: &Gguf<'_>) -> Result<Self, LlamaLoadError> {
        let config = LlamaConfig::from_gguf(&gguf.content)?;
        let c = &config;
        let hidden = c.hidden;
        let (_, embd_type, embd_dims) = gguf.raw("token_embd.weight")?;
        if embd_dims != [c.vocab_size, hidden] {
            return Err(LlamaLoadError::Tensor {
                name: "token_embd.weight".into(),
                reason: format!("shape {embd_dims:?}, expected [{}, {hidden}]", c.vocab_size),
            });
        }
        let (embedding, tied) = if native_kind(embd_type).is_some() {
            let table = std::sync::Arc::new(Linear::load(
                gguf,
                &["token_embd.weight".to_string()],
                hidden,
            )?);
            (Embedding::Packed(table.clone()), Some(table))
        } else {
            (Embedding::Candle(gguf.qtensor("token_embd.weight")?), None)
        };
        let lm_head = if gguf.has("output.weight") {
            std::sync::Arc::new(Linear::load(gguf, &["output.weight".into()], hidden)?)
        } else if let Some(table) = tied {
            table
        } else {
            std::sync::Arc::new(Linear::load(gguf, &["token_embd.weight".into()], hidden)?)
        };
        // Logits are `vocab` wide: the sampler and the tokenizer index them by token id.
        if lm_head.outputs() != c.vocab_size {
            return Err(LlamaLoadError::Tensor {
                name: "output.weight".into(),
                reason: format!(
                    "{} outputs, expected the vocabulary's {}",
                    lm_head.outputs(),
                    c.vocab_size
                ),
            });
        }
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let name = |t: &str| format!("blk.{i}.{t}");
            let qkv_names = [
                name("attn_q.weight"),
                name("attn_k.weight"),
                name("attn_v.weight"),
            ];
            let qkv = Linear::load(gguf, &qkv_names, hidden)?;
            let qkv_width = c.q_width() + 2 * c.kv_width();
            if qkv.outputs() != qkv_width {
                return Err(LlamaLoadError::Tensor {
                    name: qkv_names.join("+"),
                    reason: format!("{} outputs, expected {qkv_width}", qkv.outputs()),
                });
            }
            let qkv_bias =
                if c.architecture == Architecture::Qwen2 || gguf.has(&name("attn_q.bias")) {
                    let mut bias = gguf.vector(&name("attn_q.bias"), c.q_width())?;
                    bias.extend(gguf.vector(&name("attn_k.bias"), c.kv_width())?);
                    bias.extend(gguf.vector(&name("attn_v.bias"), c.kv_width())?);
                    Some(bias)
                } else {
                    None
                };
            let (q_norm, k_norm) = if gguf.has(&name("attn_q_norm.weight")) {
                (
                    Some(gguf.vector(&name("attn_q_norm.weight"), c.head_dim)?),
                    Some(gguf.vector(&name("attn_k_norm.weight"), c.head_dim)?),
                )
            } else if c.architecture == Architecture::Qwen3 {
                return Err(LlamaLoadError::Tensor {
                    name: name("attn_q_norm.weight"),
                    reason: "Qwen3 needs per-head Q/K norms".into(),
                });
            } else {
                (None, None)
            };
            let attn_out = Linear::load(gguf, &[name("attn_output.weight")], c.q_width())?;
            let gate_up = Linear::load(
                gguf,
                &[name("ffn_gate.weight"), name("ffn_up.weight")],
                hidden,
            )?;
            let down = Linear::load(gguf, &[name("ffn_down.weight")], c.intermediate)?;
            if attn_out.outputs() != hidden
                || gate_up.outputs() != 2 * c.intermediate
                || down.outputs() != hidden
            {
                return Err(LlamaLoadError::Tensor {
                    name: format!("blk.{i}"),
                    reason: "projection widths do not match the metadata".into(),
                });
            }
            layers.push(Layer {
                attn_norm: gguf.vector(&name("attn_norm.weight"), hidden)?,
                qkv,
                qkv_bias,
                q_norm,
                k_norm,
                attn_out,
                ffn_norm: gguf.vector(&name("ffn_norm.weight"), hidden)?,
                gate_up,
                down,
            });
            // The layer holds its own copies now: give back the verified pages they came from,
            // so the GGUF and the loaded model are never resident in full at once.
            gguf.release_tensors(&format!("blk.{i}."));
        }
        let rope = gguf.rope_table(c)?;
        Ok(Self {
            output_norm: gguf.vector("output_norm.weight", hidden)?,
            config,
            embedding,
            layers,
            lm_head,
            rope,
        })
    }

    fn new_cache(&self) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); self.config.layers * self.config.kv_heads],
            values: vec![Vec::new(); self.config.layers * self.config.kv_heads],
            device: None,
            len: 0,
            limit: None,
        }
    }

    /// See [`LlamaModel::forward`]. The step runs on a thread of the rayon pool, with the pool's
    /// other threads kept awake for it ([`team::with_team`]). A step makes ~5 parallel calls per
    /// layer. Made from outside the pool, each one parked the caller and woke a pool thread (~90
    /// µs a call with a one-thread pool in this project's 2-core VM; ~20 % of a one-stream
    /// decode step). Inside the pool the calling worker takes part, but the other workers still
    /// fell asleep between calls and were woken by a system call on the step's thread: keeping
    /// them awake gave ×1.13–1.31 decode tokens/s for 1 and 8 streams, AVX-512 and AVX2 kernels
    /// (paired runs in benches/RESULTS.md, 2026-12-02).
    fn forward(&self, batch: &mut [SeqInput<'_>], s: &mut Scratch) -> Result<usize, ForwardError> {
        team::with_team(|| self.step(batch, s))
    }

    /// Returns how many logit rows it left in `s.logits`.
    ///
    /// A decode step of many sequences runs its layers split by sequences ([`split_size`]):
    /// each thread takes its own group through every layer alone, and only the output
    /// projection is shared. Row by row the arithmetic is the same either way.
    fn step(&self, batch: &mut [SeqInput<'_>], s: &mut Scratch) -> Result<usize, ForwardError> {
        let c = &self.config;
        let hidden = c.hidden;
        let rows: usize = batch.iter().map(|b| b.tokens.len()).sum();
        if rows == 0 {
            return Ok(0);
        }
        let mut last = Vec::new();
        let min_per_thread = split_min_per_thread(quant::cpu_kernels());
        if let Some(per) = split_size(batch, rayon::current_num_threads(), min_per_thread) {
            s.parts
                .resize_with(batch.len().div_ceil(per), Scratch::default);
            batch
                .par_chunks_mut(per)
                .zip(s.parts.par_iter_mut())
                .try_for_each(|(group, part)| team::serial(|| self.body(group, part)))?;
            for (group, part) in batch.chunks(per).zip(&s.parts) {
                last_rows(group, &part.x, hidden, &mut last);
            }
        } else {
            self.body(batch, s)?;
            last_rows(batch, &s.x, hidden, &mut last);
        }
        if last.is_empty() {
            return Ok(0);
        }
        s.h.resize(last.len(), 0.0);
        ops::rms_norm(&last, &self.output_norm, c.rms_eps, &mut s.h);
        self.lm_head
            .forward(&s.h, hidden, &mut s.quant, &mut s.logits)?;
        Ok(last.len() / hidden)
    }

    /// Embeds `batch` and runs every layer, leaving the hidden states in `s.x`; the caches
    /// grow by the inputs' tokens.
    fn body(&self, batch: &mut [SeqInput<'_>], s: &mut Scratch) -> Result<(), ForwardError> {
        let c = &self.config;
        let (hidden, hd) = (c.hidden, c.head_dim);
        let (qw, kw) = (c.q_width(), c.kv_width());
        let rows: usize = batch.iter().map(|b| b.tokens.len()).sum();
        // The rotary angles of every row's position.
        s.angles.clear();
        for b in batch.iter() {
            for j in 0..b.tokens.len() {
                self.rope.push_position(b.cache.len + j, &mut s.angles);
            }
        }
        let pairs = self.rope.pairs();
        self.embed(batch, &mut s.x)?;
        for b in batch.iter_mut() {
            b.cache.make_room(b.tokens.len(), hd);
        }

        for (l, layer) in self.layers.iter().enumerate() {
            s.h.resize(rows * hidden, 0.0);
            ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.h);
            layer.qkv.forward(&s.h, hidden, &mut s.quant, &mut s.qkv)?;
            let width = qw + 2 * kw;
            for (r, row) in s.qkv.chunks_exact_mut(width).enumerate() {
                if let Some(bias) = &layer.qkv_bias {
                    ops::add_in_place(row, bias);
                }
                let (q, rest) = row.split_at_mut(qw);
                let k = &mut rest[..kw];
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    ops::rms_norm_heads(q, qn, c.rms_eps);
                    ops::rms_norm_heads(k, kn, c.rms_eps);
                }
                let angles = &s.angles[r * pairs..(r + 1) * pairs];
                ops::apply_rope(q, hd, angles, c.rope_style);
                ops::apply_rope(k, hd, angles, c.rope_style);
            }
            // Append this step's keys and values to each sequence's cache.
            let mut r = 0;
            for b in batch.iter_mut() {
                let n = b.tokens.len();
                for row in s.qkv[r * width..(r + n) * width].chunks_exact(width) {
                    let (k, v) = row[qw..].split_at(kw);
                    for (h, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
                        let at = l * c.kv_heads + h;
                        append_f16(&mut b.cache.keys[at], k);
                        append_f16(&mut b.cache.values[at], v);
                    }
                }
                r += n;
            }
            self.attention(batch, l, &s.qkv, &mut s.attn);
            layer
                .attn_out
                .forward(&s.attn, qw, &mut s.quant, &mut s.proj)?;
            ops::add_in_place(&mut s.x, &s.proj);

            ops::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.h);
            layer
                .gate_up
                .forward(&s.h, hidden, &mut s.quant, &mut s.gate_up)?;
            s.act.resize(rows * c.intermediate, 0.0);
            if rows >= 2 && team::parallel() {
                // In parallel: on one thread it was ~2 % of an 8-stream step with the other
                // thread waiting (one exponential and one division per value).
                let per = rows.div_ceil(rayon::current_num_threads().max(1));
                s.act
                    .par_chunks_mut(per * c.intermediate)
                    .zip(s.gate_up.par_chunks(per * 2 * c.intermediate))
                    .for_each(|(o, g)| ops::silu_mul(g, c.intermediate, o));
            } else {
                ops::silu_mul(&s.gate_up, c.intermediate, &mut s.act);
            }
            layer
                .down
                .forward(&s.act, c.intermediate, &mut s.quant, &mut s.proj)?;
            ops::add_in_place(&mut s.x, &s.proj);
        }
        for b in batch.iter_mut() {
            b.cache.len += b.tokens.len();
        }
        Ok(())
    }

    fn embed(&self, batch: &[SeqInput<'_>], x: &mut Vec<f32>) -> Result<(), ForwardError> {
        let hidden = self.config.hidden;
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|b| b.tokens.iter().copied())
            .collect();
        x.resize(ids.len() * hidden, 0.0);
        match &self.embedding {
            Embedding::Packed(table) => {
                let Linear::Packed(table) = table.as_ref() else {
                    unreachable!("Embedding::Packed always holds a packed table")
                };
                for (row, &id) in x.chunks_exact_mut(hidden).zip(&ids) {
                    table.dequantize_row(id as usize, row);
                }
            }
            Embedding::Candle(table) => {
                let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
                let rows = table.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?;
                x.copy_from_slice(&rows);
            }
        }
        Ok(())
    }

    /// Causal attention of every new row over its own sequence's cache, one task per
    /// (sequence, KV head) with the query heads that share that KV head.
    fn attention(&self, batch: &[SeqInput<'_>], layer: usize, qkv: &[f32], attn: &mut Vec<f32>) {
        let c = &self.config;
        let (hd, qw, kw) = (c.head_dim, c.q_width(), c.kv_width());
        let width = qw + 2 * kw;
        let group = c.heads / c.kv_heads;
        let rows: usize = batch.iter().map(|b| b.tokens.len()).sum();
        attn.resize(rows * qw, 0.0);
        // Every row's query slice for each KV head (`[kv][row]`), one vector per layer: a
        // task takes its rows as a sub-slice.
        let qrows: Vec<&[f32]> = (0..c.kv_heads)
            .flat_map(|kv| {
                (0..rows).map(move |r| &qkv[r * width + kv * group * hd..][..group * hd])
            })
            .collect();
        let mut tasks = Vec::with_capacity(batch.len() * c.kv_heads);
        let mut first_row = 0;
        let mut work = 0usize;
        for b in batch {
            let n = b.tokens.len();
            let start = b.cache.len;
            for kv in 0..c.kv_heads {
                tasks.push((
                    attention::AttentionTask {
                        queries: &qrows[kv * rows + first_row..kv * rows + first_row + n],
                        first_pos: start,
                        keys: &b.cache.keys[layer * c.kv_heads + kv],
                        values: &b.cache.values[layer * c.kv_heads + kv],
                        kv_offset: 0,
                        kv_width: hd,
                    },
                    first_row,
                    kv,
                ));
                work += n * (start + n) * group;
            }
            first_row += n;
        }
        let out = SendPtr(attn.as_mut_ptr());
        thread_local! {
            /// Score rows of one attention task, kept per thread from step to step.
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let run = |(task, first_row, kv): &(attention::AttentionTask<'_>, usize, usize)| {
            // SAFETY: every (row, KV head) slice of `attn` belongs to exactly one task, and lies
            // inside `attn` (rows × qw).
            let row = |i: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    out.get().add((first_row + i) * qw + kv * group * hd),
                    group * hd,
                )
            };
            SCORES.with_borrow_mut(|scores| {
                if task.queries.len() == 1 {
                    // A decode step's task: no heap vector for one row.
                    attention::attend(task, hd, group, &mut [row(0)], scores)
                } else {
                    let mut outs: Vec<&mut [f32]> = (0..task.queries.len()).map(row).collect();
                    attention::attend(task, hd, group, &mut outs, scores)
                }
            });
        };
        // Below ~4k (query head, key) pairs a layer's attention takes less than the pool's
        // fork and join (one stream's decode step at 200 tokens is ~2k); above, the caches are
        // read at the bandwidth of both cores.
        if work < 1 << 12 || !team::parallel() {
            tasks.iter().for_each(run);
        } else {
            // A thread runs a contiguous range of tasks: the next one's first key and value
            // rows are asked for before this one starts (within a task its own prefetch
            // covers the rest, but each task began with cold rows).
            tasks.par_iter().enumerate().for_each(|(i, t)| {
                if let Some(next) = tasks.get(i + 1) {
                    attention::prefetch_start(&next.0);
                }
                run(t)
            });
        }
    }
}

/// Fewest sequences per thread for a decode step to be split by sequences, by the kernels the
/// matrix products run on ([`quant::cpu_kernels`]).
///
/// Why split: with the layers' matrix products shared out by output tiles, every product, the
/// attention and the activation quantizer hand their rows from one core to the other and back
/// (~180 fork/joins a step). Timed phase by phase at 8 streams on the 2-core AMD EPYC VM, the
/// short products (Q/K/V, attention output) ran barely faster on two threads than on one, and
/// the serial parts slower (their inputs sat in the other core's cache). A group of sequences
/// per thread keeps each sequence's activations and cache on one core; the price is that each
/// core reads every weight itself, in kernel calls of fewer rows.
///
/// Why 6 on AVX-512 (and the portable loops): paired rounds against the unsplit step
/// (benches/RESULTS.md). On the 2-core AMD EPYC (Zen 4, 2026-12-02): 2 per thread ×0.92, 3
/// ×0.97, 4 ×1.01–1.15, 6 ×1.07, 8 ×1.14–1.18. On the 2-core Intel Xeon (AVX-512, AMX,
/// 2026-12-02): 4 per thread ×0.88 (each core streaming all 96 MB of weights per step costs
/// more there than the shared step's traffic between the cores), 6 ×0.98 (noise), 8 ×1.08. From
/// 6 on neither loses beyond the noise; below, the shared step stays. On a 2-core AMD EPYC
/// Turin (Zen 5, 2026-12-03) 4 per thread lost too: 8 streams ×0.86.
///
/// Why 4 on AVX2: without `vpdpbusd` a core multiplies ~2–3× slower (two instructions per 32
/// products instead of one), so at 4 sequences its products are already bound by arithmetic,
/// not by reading the weights, and reading them twice costs little. On the 2-core AMD EPYC
/// Milan (Zen 3, AVX2 only, 2026-12-02) 4 per thread against 6: 8 streams ×1.10 and ×1.05 (the
/// pairs' one-stream noise ×1.04 and ×0.98), 10 streams ×1.05. An AVX-512 machine capped with
/// `SEALSERVE_LLM_ISA=avx2` takes 4 too: on the Zen 5 (2026-12-03, the AVX2 kernel with its
/// assembly block and prefetch) 6 per thread against 4 gave 8 streams ×0.94 (16 paired rounds).
fn split_min_per_thread(kernels: quant::CpuKernels) -> usize {
    match kernels {
        quant::CpuKernels::Avx2 => 4,
        quant::CpuKernels::Avx512Vnni | quant::CpuKernels::Portable => 6,
    }
}

/// Sequences per group when `batch` is split over `threads` (see [`split_min_per_thread`]):
/// only for decode steps (one new token per sequence), so the groups carry equal work; a step
/// with a prompt in it keeps every thread on every product.
fn split_size(batch: &[SeqInput<'_>], threads: usize, min_per_thread: usize) -> Option<usize> {
    (threads > 1
        && batch.len() >= min_per_thread * threads
        && batch.iter().all(|b| b.tokens.len() == 1))
    .then(|| batch.len().div_ceil(threads))
}

/// Appends to `last` the hidden state (`x`, one row per token of `batch`) of the last token of
/// every input that asks for logits.
fn last_rows(batch: &[SeqInput<'_>], x: &[f32], hidden: usize, last: &mut Vec<f32>) {
    let mut r = 0;
    for b in batch {
        r += b.tokens.len();
        if b.logits {
            last.extend_from_slice(&x[(r - 1) * hidden..r * hidden]);
        }
    }
}

/// Appends `row` rounded to f16 (half's slice conversion uses F16C when the CPU has it).
fn append_f16(cache: &mut Vec<f16>, row: &[f32]) {
    let at = cache.len();
    cache.resize(at + row.len(), f16::ZERO);
    cache[at..].convert_from_f32_slice(row);
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint ranges from parallel tasks (see `attention`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;

    /// A tiny random llama (Q8_0, 2 blocks, tied output), the `gguf` fuzz target's seed,
    /// written by tests/data/make_tiny_gguf.py.
    fn tiny_llama() -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/fuzz/seeds/gguf/llama-q8_0.gguf");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn load_error(gguf: &Gguf<'_>) -> LlamaLoadError {
        match LlamaModel::load(gguf) {
            Ok(_) => panic!("the model loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_limited_cache_grows_no_further_than_its_limit_and_gives_the_same_results() {
        let bytes = tiny_llama();
        let gguf = Gguf::read(&bytes).unwrap();
        // The CPU engine's f16 host caches and the device engine's tensors (on candle's CPU
        // device here; the same code on CUDA) follow the same growth rule.
        let engines = [
            ("CPU engine", LlamaModel::load(&gguf).unwrap()),
            (
                "device engine",
                LlamaModel::load_candle(&gguf, &Device::Cpu).unwrap(),
            ),
        ];
        for (engine, model) in &engines {
            let bytes_per_position = model.kv_bytes_per_token();
            let run = |limit: Option<usize>| {
                let mut cache = model.new_cache();
                if let Some(p) = limit {
                    cache.limit_to(p);
                }
                let mut s = Scratch::default();
                let mut out = Vec::new();
                // A 5-token prompt then 4 single tokens: 9 positions.
                for tokens in [&[1u32, 2, 3, 4, 5][..], &[6], &[7], &[8], &[9]] {
                    let mut batch = [SeqInput {
                        cache: &mut cache,
                        tokens,
                        logits: true,
                    }];
                    out.push(model.forward(&mut batch, &mut s).unwrap().to_vecs());
                }
                assert_eq!(cache.len(), 9);
                (out, cache.bytes())
            };
            let (free, free_bytes) = run(None);
            let (limited, limited_bytes) = run(Some(9));
            assert_eq!(free, limited, "{engine}: the limit changes no result");
            // Doubling from 5 positions reaches room for 10; the limit stops at 9, exactly.
            assert_eq!(free_bytes, 10 * bytes_per_position, "{engine}");
            assert_eq!(limited_bytes, 9 * bytes_per_position, "{engine}");
            // Past the limit the cache still grows, exactly as far as needed.
            let mut cache = model.new_cache();
            cache.limit_to(2);
            let mut batch = [SeqInput {
                cache: &mut cache,
                tokens: &[1, 2, 3],
                logits: false,
            }];
            model.forward(&mut batch, &mut Scratch::default()).unwrap();
            assert_eq!(cache.bytes(), 3 * bytes_per_position, "{engine}");
        }
    }

    #[test]
    fn only_decode_steps_of_enough_sequences_are_split() {
        let bytes = tiny_llama();
        let model = LlamaModel::load(&Gguf::read(&bytes).unwrap()).unwrap();
        let mut caches: Vec<KvCache> = (0..13).map(|_| model.new_cache()).collect();
        let split = |caches: &mut [KvCache], tokens: &[&[u32]], threads: usize, min: usize| {
            let batch: Vec<SeqInput<'_>> = caches
                .iter_mut()
                .zip(tokens)
                .map(|(cache, &tokens)| SeqInput {
                    cache,
                    tokens,
                    logits: true,
                })
                .collect();
            split_size(&batch, threads, min)
        };
        let one: Vec<&[u32]> = vec![&[1]; 13];
        // From 6 per thread (AVX-512 kernels).
        assert_eq!(split(&mut caches, &one, 2, 6), Some(7));
        assert_eq!(split(&mut caches[..12], &one, 2, 6), Some(6));
        assert_eq!(split(&mut caches[..11], &one, 2, 6), None, "5.5 per thread");
        assert_eq!(split(&mut caches[..8], &one, 2, 6), None, "4 per thread");
        assert_eq!(split(&mut caches, &one, 1, 6), None, "one thread");
        assert_eq!(split(&mut caches, &one, 3, 6), None, "4.3 per thread");
        // From 4 per thread (AVX2 kernels).
        assert_eq!(split(&mut caches[..8], &one, 2, 4), Some(4));
        assert_eq!(split(&mut caches[..7], &one, 2, 4), None, "3.5 per thread");
        assert_eq!(split(&mut caches, &one, 3, 4), Some(5), "4.3 per thread");
        assert_eq!(split(&mut caches, &one, 1, 4), None, "one thread");
        let mut with_prompt = one.clone();
        with_prompt[4] = &[1, 2, 3];
        for min in [4, 6] {
            assert_eq!(
                split(&mut caches, &with_prompt, 2, min),
                None,
                "a prompt in the step"
            );
        }
        // Which minimum each kernel family takes.
        assert_eq!(split_min_per_thread(quant::CpuKernels::Avx2), 4);
        assert_eq!(split_min_per_thread(quant::CpuKernels::Avx512Vnni), 6);
        assert_eq!(split_min_per_thread(quant::CpuKernels::Portable), 6);
    }

    #[test]
    fn a_split_decode_step_gives_the_same_logits_as_a_shared_one() {
        let bytes = tiny_llama();
        let model = LlamaModel::load(&Gguf::read(&bytes).unwrap()).unwrap();
        // 13 sequences (groups of 7 and 6 on 2 threads), prompts of different lengths, three
        // decode steps in which one sequence asks for no logits.
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut caches: Vec<KvCache> = (0..13).map(|_| model.new_cache()).collect();
                let mut s = Scratch::default();
                for (i, cache) in caches.iter_mut().enumerate() {
                    let prompt: Vec<u32> = (1..=1 + i as u32).collect();
                    let mut batch = [SeqInput {
                        cache,
                        tokens: &prompt,
                        logits: false,
                    }];
                    model.forward(&mut batch, &mut s).unwrap();
                }
                let mut out = Vec::new();
                for step in 0..3u32 {
                    let tokens: Vec<[u32; 1]> = (0..13).map(|i| [1 + (i + step) % 7]).collect();
                    let mut batch: Vec<SeqInput<'_>> = caches
                        .iter_mut()
                        .zip(&tokens)
                        .enumerate()
                        .map(|(i, (cache, t))| SeqInput {
                            cache,
                            tokens: t,
                            logits: i != 6,
                        })
                        .collect();
                    let min = split_min_per_thread(quant::cpu_kernels());
                    assert_eq!(
                        split_size(&batch, threads, min).is_some(),
                        threads == 2,
                        "the {threads}-thread step takes the path under test"
                    );
                    out.push(model.forward(&mut batch, &mut s).unwrap().to_vecs());
                }
                assert!(caches.iter().enumerate().all(|(i, c)| c.len() == i + 4));
                out
            })
        };
        let split = run(2);
        assert_eq!(split.len(), 3);
        assert!(split.iter().all(|step| step.len() == 12));
        assert_eq!(split, run(1), "bit for bit");
    }

    #[test]
    fn malformed_headers_are_errors_from_read() {
        let bytes = tiny_llama();
        assert!(LlamaModel::load(&Gguf::read(&bytes).unwrap()).is_ok());
        // Cut inside the tensor data: every tensor's extent is checked before candle reads.
        let err = Gguf::read(&bytes[..bytes.len() - 1])
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                LlamaLoadError::Header(header::HeaderError::TensorOutside { .. })
            ),
            "{err}"
        );
        // `general.alignment = 0`, on which candle divides by zero.
        let mut g = b"GGUF".to_vec();
        g.extend_from_slice(&3u32.to_le_bytes());
        g.extend_from_slice(&0u64.to_le_bytes());
        g.extend_from_slice(&1u64.to_le_bytes());
        g.extend_from_slice(&17u64.to_le_bytes());
        g.extend_from_slice(b"general.alignment");
        g.extend_from_slice(&4u32.to_le_bytes());
        g.extend_from_slice(&0u32.to_le_bytes());
        let err = Gguf::read(&g).err().expect("refused");
        assert!(
            matches!(
                err,
                LlamaLoadError::Header(header::HeaderError::Alignment(0))
            ),
            "{err}"
        );
    }

    #[test]
    fn hyper_parameters_are_bounded_before_anything_is_sized_by_them() {
        let bytes = tiny_llama();
        let tensors = Gguf::read(&bytes).unwrap().content.tensor_infos.len();
        for (key, value) in [
            // `Vec::with_capacity(block_count)` would abort on these.
            ("llama.block_count", Value::U64(1 << 40)),
            ("llama.block_count", Value::U64(tensors as u64 + 1)),
            ("llama.embedding_length", Value::U32(0)),
            ("llama.feed_forward_length", Value::U64(1 << 40)),
            // heads × head_dim would overflow.
            ("llama.attention.key_length", Value::U64(u64::MAX)),
            ("llama.vocab_size", Value::U32(0)),
            ("llama.attention.head_count", Value::U64(1 << 30)),
        ] {
            let mut gguf = Gguf::read(&bytes).unwrap();
            gguf.content.metadata.insert(key.into(), value);
            let err = load_error(&gguf);
            assert!(
                matches!(&err, LlamaLoadError::Config(ConfigError::Invalid { key: k, .. }) if k.ends_with(&key[6..])),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn the_output_projection_must_be_vocabulary_wide() {
        let bytes = tiny_llama();
        let mut gguf = Gguf::read(&bytes).unwrap();
        // A [32, 32] matrix where the [vocab, 32] output projection belongs.
        let q = gguf.info("blk.0.attn_q.weight").unwrap();
        let output = gguf_file::TensorInfo {
            ggml_dtype: q.ggml_dtype,
            shape: q.shape.clone(),
            offset: q.offset,
        };
        gguf.content
            .tensor_infos
            .insert("output.weight".into(), output);
        let err = load_error(&gguf);
        assert!(
            err.to_string()
                .contains("output.weight: 32 outputs, expected the vocabulary's"),
            "{err}"
        );
    }

    #[test]
    fn raw_tensor_extents_use_checked_arithmetic() {
        let bytes = tiny_llama();
        let name = "token_embd.weight";
        let reason = |gguf: &Gguf<'_>| match gguf.raw(name) {
            Ok(_) => panic!("read"),
            Err(e) => e.to_string(),
        };
        let mut gguf = Gguf::read(&bytes).unwrap();
        gguf.content.tensor_infos.get_mut(name).unwrap().offset = u64::MAX;
        assert!(reason(&gguf).contains("outside the file"));
        let mut gguf = Gguf::read(&bytes).unwrap();
        gguf.content.tensor_infos.get_mut(name).unwrap().shape = vec![usize::MAX, 2].into();
        assert!(reason(&gguf).contains("more elements"));
        let mut gguf = Gguf::read(&bytes).unwrap();
        gguf.content.tensor_infos.get_mut(name).unwrap().shape = vec![1, 33].into();
        assert!(reason(&gguf).contains("whole blocks"));
    }

    #[test]
    fn special_token_ids_must_lie_in_the_vocabulary() {
        let bytes = tiny_llama();
        let mut gguf = Gguf::read(&bytes).unwrap();
        assert!(tokenizer::TextTokenizer::from_gguf(&gguf).is_ok());
        gguf.content
            .metadata
            .insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1 << 20));
        let err = match tokenizer::TextTokenizer::from_gguf(&gguf) {
            Ok(_) => panic!("built"),
            Err(e) => e,
        };
        assert!(
            matches!(
                err,
                tokenizer::TokenizerError::TokenId { id: 1_048_576, .. }
            ),
            "{err}"
        );
    }

    /// Our packed kernels and candle's CPU quantized matmul on the same quantized weights agree
    /// (both quantize activations to 8 bits per 32-block), and the candle fallback (K-quants)
    /// matches the dequantized product.
    #[test]
    fn packed_and_candle_paths_agree() {
        let (n, k, rows) = (48, 256, 3);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
            .collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0)
            .collect();
        let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
        let xt = Tensor::from_slice(&x, (rows, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let exact = xt
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let linear = match native_kind(dtype) {
                Some(kind) => {
                    let raw = q.data().unwrap();
                    Linear::Packed(PackedMatrix::pack(kind, k, &[(&raw, n)]).unwrap())
                }
                None => Linear::Candle(vec![(QMatMul::from_qtensor(q).unwrap(), n)]),
            };
            let mut out = Vec::new();
            linear
                .forward(&x, k, &mut QuantizedRows::default(), &mut out)
                .unwrap();
            for r in 0..rows {
                for c in 0..n {
                    let (got, want) = (out[r * n + c], exact[r][c]);
                    assert!(
                        (got - want).abs() < 0.02 * (1.0 + want.abs()),
                        "{dtype:?} [{r},{c}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
