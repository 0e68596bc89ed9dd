//! The network's shape, read from GGUF metadata (`<arch>.*` keys), for the llama family:
//! Llama 2/3, SmolLM, Mistral (GGUF calls it `llama`), Qwen2 and Qwen3.

use candle_core::quantized::gguf_file::{Content, Value};

/// Architectures this loader runs. They differ only in details the forward pass switches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2, Mistral, TinyLlama…: rotary on adjacent pairs (the GGUF
    /// converter permutes Q/K so), no biases.
    Llama,
    /// Qwen2 / Qwen2.5: biases on Q/K/V, rotary on halves (NeoX).
    Qwen2,
    /// Qwen3: RMS norm on each Q and K head before the rotary, no biases, NeoX rotary.
    Qwen3,
}

impl Architecture {
    fn from_gguf(name: &str) -> Result<Self, ConfigError> {
        match name {
            "llama" | "mistral" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            other => Err(ConfigError::Architecture(other.to_string())),
        }
    }
}

/// How positions rotate query/key pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)` (llama.cpp's "normal" mode).
    Interleaved,
    /// Pairs `(i, i + d/2)` (NeoX / Hugging Face `rotate_half`).
    Halves,
}

/// Why the metadata does not describe a network this loader can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("GGUF architecture {0:?} is not supported (supported: llama, mistral, qwen2, qwen3)")]
    Architecture(String),
    #[error("GGUF metadata key {0} is missing")]
    Missing(String),
    #[error("GGUF metadata key {key} has an unusable value: {reason}")]
    Invalid { key: String, reason: String },
}

/// Largest width, head count or vocabulary accepted. Far above any model this loader runs
/// (hidden 16,384, feed-forward 53,248, vocabularies of 262,144), and small enough that every
/// product of two sizes fits in a `usize`, so the widths derived from them cannot overflow.
pub const MAX_SIZE: usize = 1 << 24;

/// Hyper-parameters of one llama-family network.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that rotate (the rest pass through).
    pub rope_dims: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Linear position scaling (`rope.scaling.type = linear`): positions are divided by it.
    pub rope_linear_scale: f32,
    pub rms_eps: f32,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads the hyper-parameters from the GGUF metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, ConfigError> {
        let arch_name = string(content, "general.architecture")?;
        let architecture = Architecture::from_gguf(arch_name)?;
        // Every hyper-parameter key is prefixed with the architecture name.
        let prefix = arch_name;
        let get = |key: &str| -> Result<&Value, ConfigError> {
            let full = format!("{prefix}.{key}");
            content
                .metadata
                .get(&full)
                .ok_or(ConfigError::Missing(full))
        };
        let usize_of = |key: &str| -> Result<usize, ConfigError> { as_usize(get(key)?, key) };
        let hidden = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = match get("attention.head_count_kv") {
            Ok(v) => as_usize(v, "attention.head_count_kv")?,
            Err(_) => heads,
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(ConfigError::Invalid {
                key: format!("{prefix}.attention.head_count_kv"),
                reason: format!("{heads} query heads cannot share {kv_heads} key/value heads"),
            });
        }
        let head_dim = match get("attention.key_length") {
            Ok(v) => as_usize(v, "attention.key_length")?,
            Err(_) => hidden / heads,
        };
        let rope_dims = match get("rope.dimension_count") {
            Ok(v) => as_usize(v, "rope.dimension_count")?,
            Err(_) => head_dim,
        };
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ConfigError::Invalid {
                key: format!("{prefix}.rope.dimension_count"),
                reason: format!("{rope_dims} rotary dimensions for heads of {head_dim}"),
            });
        }
        let rope_theta = match get("rope.freq_base") {
            Ok(v) => as_f32(v, "rope.freq_base")?,
            Err(_) => 10_000.0,
        };
        let rope_linear_scale = match (get("rope.scaling.type"), get("rope.scaling.factor")) {
            (Ok(Value::String(kind)), Ok(factor)) if kind == "linear" => {
                as_f32(factor, "rope.scaling.factor")?
            }
            (Ok(Value::String(kind)), _) if kind != "none" && kind != "linear" => {
                return Err(ConfigError::Invalid {
                    key: format!("{prefix}.rope.scaling.type"),
                    reason: format!("rope scaling {kind:?} is not supported (linear is)"),
                })
            }
            _ => 1.0,
        };
        let rms_eps = as_f32(
            get("attention.layer_norm_rms_epsilon")?,
            "attention.layer_norm_rms_epsilon",
        )?;
        let vocab_size = match get("vocab_size") {
            Ok(v) => as_usize(v, "vocab_size")?,
            Err(_) => content
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(Vec::len)
                .ok_or_else(|| ConfigError::Missing(format!("{prefix}.vocab_size")))?,
        };
        let intermediate = usize_of("feed_forward_length")?;
        for (key, value) in [
            ("embedding_length", hidden),
            ("feed_forward_length", intermediate),
            ("attention.head_count", heads),
            ("attention.head_count_kv", kv_heads),
            ("attention.key_length", head_dim),
            ("vocab_size", vocab_size),
        ] {
            if !(1..=MAX_SIZE).contains(&value) {
                return Err(ConfigError::Invalid {
                    key: format!("{prefix}.{key}"),
                    reason: format!("{value} is outside 1..={MAX_SIZE}"),
                });
            }
        }
        // Every block is several tensors: a count above the tensors present is a broken file,
        // and would otherwise size allocations (layers, caches) before any tensor is looked up.
        let layers = usize_of("block_count")?;
        if layers > content.tensor_infos.len() {
            return Err(ConfigError::Invalid {
                key: format!("{prefix}.block_count"),
                reason: format!(
                    "{layers} blocks, but the file has only {} tensors",
                    content.tensor_infos.len()
                ),
            });
        }
        Ok(Self {
            architecture,
            layers,
            hidden,
            intermediate,
            heads,
            kv_heads,
            head_dim,
            rope_dims,
            rope_theta,
            rope_style: match architecture {
                Architecture::Llama => RopeStyle::Interleaved,
                Architecture::Qwen2 | Architecture::Qwen3 => RopeStyle::Halves,
            },
            rope_linear_scale,
            rms_eps,
            context_length: usize_of("context_length")?,
            vocab_size,
        })
    }

    /// Width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

fn string<'a>(content: &'a Content, key: &str) -> Result<&'a str, ConfigError> {
    match content.metadata.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ConfigError::Invalid {
            key: key.to_string(),
            reason: format!("expected a string, found {:?}", other.value_type()),
        }),
        None => Err(ConfigError::Missing(key.to_string())),
    }
}

/// Any GGUF integer as usize (writers differ in the integer width they use).
pub(crate) fn as_usize(value: &Value, key: &str) -> Result<usize, ConfigError> {
    let n: i128 = match value {
        Value::U8(v) => (*v).into(),
        Value::I8(v) => (*v).into(),
        Value::U16(v) => (*v).into(),
        Value::I16(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::I32(v) => (*v).into(),
        Value::U64(v) => (*v).into(),
        Value::I64(v) => (*v).into(),
        other => {
            return Err(ConfigError::Invalid {
                key: key.to_string(),
                reason: format!("expected an integer, found {:?}", other.value_type()),
            })
        }
    };
    usize::try_from(n).map_err(|_| ConfigError::Invalid {
        key: key.to_string(),
        reason: format!("{n} is not a valid size"),
    })
}

fn as_f32(value: &Value, key: &str) -> Result<f32, ConfigError> {
    match value {
        Value::F32(v) => Ok(*v),
        Value::F64(v) => Ok(*v as f32),
        other => as_usize(other, key).map(|v| v as f32),
    }
}
