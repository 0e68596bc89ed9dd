//! The tokenizer a GGUF carries in its metadata (`tokenizer.ggml.*`), rebuilt in memory as a
//! Hugging Face `tokenizers::Tokenizer`, plus a byte table for exact incremental decoding.
//!
//! Covered: gpt2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizers
//! llama.cpp names `smollm` (SmolLM/SmolLM2: single digits, then GPT-2 byte-level),
//! `llama-bpe`/`llama3`/`smaug-bpe` (Llama 3), `qwen2` (Qwen2/2.5/3) and `gpt2`/`default`, the
//! same pipelines the upstream tokenizer.json files use (and mistral.rs / candle build from GGUF).
//! SentencePiece tokenizers (`model = "llama"`: Llama 2, Mistral v0.1) are refused with an error
//! rather than approximated.

use super::Gguf;
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Llama 3's split regex (tokenizer.json of Meta-Llama-3).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: like Llama 3 but single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why the GGUF's tokenizer could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata {0} is missing or has the wrong type")]
    Metadata(&'static str),
    #[error("tokenizer model {0:?} is not supported (only gpt2-style byte-level BPE is)")]
    Model(String),
    #[error("pre-tokenizer {0:?} is not supported (smollm, llama-bpe, llama3, smaug-bpe, qwen2, gpt2, default are)")]
    PreTokenizer(String),
    #[error("building the tokenizer failed: {0}")]
    Build(String),
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("GGUF metadata {key} names token {id}, outside the {vocab}-token vocabulary")]
    TokenId {
        key: &'static str,
        id: u32,
        vocab: usize,
    },
}

/// A token id and the byte span `(start, stop)` of the text it came from.
pub type SpannedToken = (u32, (usize, usize));

/// Encoder plus the exact bytes of every token.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// Bytes each token stands for (special tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

fn strings(gguf: &Gguf<'_>, key: &'static str) -> Result<Vec<String>, TokenizerError> {
    let Some(Value::Array(values)) = gguf.content.metadata.get(key) else {
        return Err(TokenizerError::Metadata(key));
    };
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(TokenizerError::Metadata(key)),
        })
        .collect()
}

/// A special token's id, if the metadata names one; an id outside the vocabulary is an error
/// (it would be fed to the model as BOS, or never match as EOS).
fn token_id(
    gguf: &Gguf<'_>,
    key: &'static str,
    vocab: usize,
) -> Result<Option<u32>, TokenizerError> {
    let id = gguf
        .content
        .metadata
        .get(key)
        .and_then(|v| super::config::as_usize(v, key).ok())
        .and_then(|v| u32::try_from(v).ok());
    match id {
        Some(id) if id as usize >= vocab => Err(TokenizerError::TokenId { key, id, vocab }),
        _ => Ok(id),
    }
}

/// GPT-2's byte ↔ printable character table (`bytes_to_unicode`), inverted.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}

impl TextTokenizer {
    /// Rebuilds the tokenizer from the GGUF metadata.
    pub fn from_gguf(gguf: &Gguf<'_>) -> Result<Self, TokenizerError> {
        let model = gguf
            .metadata_str("tokenizer.ggml.model")
            .ok_or(TokenizerError::Metadata("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::Model(model.to_string()));
        }
        let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings(gguf, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or(TokenizerError::Metadata("tokenizer.ggml.merges"))
            })
            .collect::<Result<_, _>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = gguf.metadata_str("tokenizer.ggml.pre").unwrap_or("default");
        let split = |regex: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(Into::into)
            .map_err(|e| TokenizerError::Build(e.to_string()))
        };
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![
                split(LLAMA3_SPLIT)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            "qwen2" => {
                tokenizer
                    .with_normalizer(Some(NFC))
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                Sequence::new(vec![
                    split(QWEN2_SPLIT)?,
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
            other => return Err(TokenizerError::PreTokenizer(other.to_string())),
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        // Control (3) and user-defined (4) tokens are matched whole in the input text, as
        // llama.cpp does; control tokens are "special" (skipped when asked to skip specials).
        let types: Vec<usize> = match gguf.content.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| super::config::as_usize(v, "tokenizer.ggml.token_type").unwrap_or(1))
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let mut special = vec![false; tokens.len()];
        let mut added = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            match types.get(i) {
                Some(3) => {
                    special[i] = true;
                    added.push(AddedToken::from(t.clone(), true));
                }
                Some(4) => added.push(AddedToken::from(t.clone(), false)),
                _ => {}
            }
        }
        tokenizer
            .add_special_tokens(added)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let table = unicode_to_byte();
        let token_bytes = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if special[i] || types.get(i) == Some(&4) {
                    t.as_bytes().to_vec()
                } else {
                    let mut out = Vec::with_capacity(t.len());
                    for ch in t.chars() {
                        match table.get(&ch) {
                            Some(&b) => out.push(b),
                            None => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();
        Ok(Self {
            tokenizer,
            token_bytes,
            special,
            bos: token_id(gguf, "tokenizer.ggml.bos_token_id", tokens.len())?,
            eos: token_id(gguf, "tokenizer.ggml.eos_token_id", tokens.len())?,
            add_bos: matches!(
                gguf.content.metadata.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            ),
        })
    }

    /// Token ids of `text`; special-token text (e.g. `<|im_start|>`) becomes its id. Adds the
    /// BOS token when the GGUF asks for it and `add_bos` is set.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// [`TextTokenizer::encode`] with each token's byte span in `text` (`/tokenize`). The ids
    /// are the same; a BOS the GGUF asks for comes first with the empty span `(0, 0)`. Slower
    /// than `encode` (offsets are tracked), so generation uses `encode`.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_bos: bool,
    ) -> Result<Vec<SpannedToken>, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(encoding.len() + 1);
        if add_bos && self.add_bos {
            out.extend(self.bos.map(|bos| (bos, (0, 0))));
        }
        out.extend(
            encoding
                .get_ids()
                .iter()
                .copied()
                .zip(encoding.get_offsets().iter().copied()),
        );
        Ok(out)
    }

    /// Exact bytes of one token (may be part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map_or(&[][..], Vec::as_slice)
    }

    /// Text of `ids` (invalid UTF-8, i.e. a cut character, becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether `id` is a control token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The end-of-sequence token the GGUF declares.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The beginning-of-sequence token the GGUF declares.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Id of a token given its exact text (e.g. `<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }
}
