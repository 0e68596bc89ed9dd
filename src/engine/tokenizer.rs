//! Tokenization exactly as sentence-transformers does it: `[CLS] text [SEP]` from tokenizer.json's
//! own post-processor, truncation at the model's max_seq_length (not tokenizer.json's), and no
//! padding (the engine pads each forward to its longest sequence).
//!
//! Why an override: all-MiniLM-L6-v2's tokenizer.json ships truncation 128 and fixed padding 128;
//! using it as-is would both cut inputs short and spend compute on padding.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Why an input could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("tokenizer.json could not be loaded: {0}")]
    Load(String),
    #[error("input {index} could not be tokenized: {message}")]
    Encode { index: usize, message: String },
    #[error("input {index} is {tokens}+ tokens, over the model's limit of {limit}; send shorter text or allow truncation")]
    TooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
}

/// One token as returned by `/tokenize`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: u32,
    pub text: String,
    pub special: bool,
    /// Byte offsets into the input.
    pub start: usize,
    pub stop: usize,
}

/// One tokenized input.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// The configured tokenizer; cheap to share behind an `Arc` across request handlers.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    /// Loads tokenizer.json from memory and applies the sentence-transformers settings.
    pub fn from_bytes(bytes: &[u8], max_length: usize) -> Result<Self, TokenizeError> {
        let mut inner =
            Tokenizer::from_bytes(bytes).map_err(|e| TokenizeError::Load(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| TokenizeError::Load(e.to_string()))?;
        Ok(Self { inner, max_length })
    }

    /// Maximum tokens per input, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Ids for each input. Over-long inputs are truncated, or refused when `truncate` is false.
    pub fn encode(&self, inputs: &[&str], truncate: bool) -> Result<Vec<Encoded>, TokenizeError> {
        inputs
            .iter()
            .enumerate()
            .map(|(index, text)| self.encode_one(index, text, truncate))
            .collect()
    }

    fn encode_one(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Encoded, TokenizeError> {
        let encoding = self
            .encode_kept(text, false)
            .map_err(|e| TokenizeError::Encode {
                index,
                message: e.to_string(),
            })?;
        let truncated = !encoding.get_overflowing().is_empty();
        if truncated && !truncate {
            return Err(TokenizeError::TooLong {
                index,
                tokens: self.max_length + 1,
                limit: self.max_length,
            });
        }
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            truncated,
        })
    }

    /// The encoding of `text` (truncated to the limit, the rest in its overflow), computed from
    /// the smallest whitespace-bounded start of the text that still overflows the limit when the
    /// text is long ([`super::precut`]): the same tokens and offsets as encoding the whole text,
    /// without building the whole text's encoding (~50x its size) first. `offsets`: byte
    /// offsets are needed (`/tokenize`); embedding skips them (`encode_fast`).
    fn encode_kept(&self, text: &str, offsets: bool) -> tokenizers::Result<tokenizers::Encoding> {
        let encode = |text: &str| {
            if offsets {
                self.inner.encode(text, true)
            } else {
                self.inner.encode_fast(text, true)
            }
        };
        let windows = super::precut::windows(text, self.max_length, super::precut::Keep::Start);
        if let Some((whole, windows)) = windows.split_last() {
            for window in windows {
                let encoding = encode(window)?;
                if !encoding.get_overflowing().is_empty() {
                    return Ok(encoding);
                }
            }
            return encode(whole);
        }
        encode(text)
    }

    /// Tokens with their text, specialness and byte offsets, for `/tokenize`.
    pub fn describe(
        &self,
        inputs: &[&str],
        truncate: bool,
    ) -> Result<Vec<Vec<TokenInfo>>, TokenizeError> {
        inputs
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let encoding = self
                    .encode_kept(text, true)
                    .map_err(|e| TokenizeError::Encode {
                        index,
                        message: e.to_string(),
                    })?;
                if !truncate && !encoding.get_overflowing().is_empty() {
                    return Err(TokenizeError::TooLong {
                        index,
                        tokens: self.max_length + 1,
                        limit: self.max_length,
                    });
                }
                Ok(encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_tokens())
                    .zip(encoding.get_special_tokens_mask())
                    .zip(encoding.get_offsets())
                    .map(|(((id, token), special), (start, stop))| TokenInfo {
                        id: *id,
                        text: token.clone(),
                        special: *special == 1,
                        start: *start,
                        stop: *stop,
                    })
                    .collect())
            })
            .collect()
    }
}
