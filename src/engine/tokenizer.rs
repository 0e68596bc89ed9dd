//! Tokenization exactly as sentence-transformers does it: `[CLS] text [SEP]` from tokenizer.json's
//! own post-processor, truncation at the model's max_seq_length (not tokenizer.json's), and no
//! padding (the engine pads each forward to its longest sequence).
//!
//! Why an override: all-MiniLM-L6-v2's tokenizer.json ships truncation 128 and fixed padding 128;
//! using it as-is would both cut inputs short and spend compute on padding.
//!
//! Truncation may keep the start of a text (`Right`, the default: the end is cut) or its end
//! (`Left`), per request. The `tokenizers` crate keeps the direction in the tokenizer itself, so
//! one configured copy per direction is held.

use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

/// The encoding of `text` (truncated to the limit, the rest in its overflow), computed from the
/// smallest whitespace-bounded part of the text that keeps the `keep` end and still overflows the
/// limit when the text is long ([`super::precut`]): the same tokens and offsets as encoding the
/// whole text, without building the whole text's encoding (~50x its size) first.
fn encode_kept(
    text: &str,
    max_length: usize,
    keep: super::precut::Keep,
    encode: impl Fn(&str) -> tokenizers::Result<tokenizers::Encoding>,
) -> tokenizers::Result<tokenizers::Encoding> {
    let windows = super::precut::windows(text, max_length, keep);
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

/// Which end of an over-long input is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TruncationDirection {
    /// Cut the start, keep the end.
    Left,
    /// Cut the end, keep the start (sentence-transformers' behaviour).
    #[default]
    Right,
}

/// Why an input could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("tokenizer.json could not be loaded: {0}")]
    Load(String),
    #[error("ids could not be decoded: {0}")]
    Decode(String),
    #[error("input {index} could not be tokenized: {message}")]
    Encode { index: usize, message: String },
    #[error("input {index} is {tokens}+ tokens, over the model's limit of {limit}; send shorter text or allow truncation")]
    TooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
}

/// One token with its text and where it came from (what `/tokenize` shows).
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// One tokenized pair of texts.
#[derive(Clone, Debug)]
pub struct EncodedPair {
    pub ids: Vec<u32>,
    /// 0 for the first text's tokens, 1 for the second's (the tokenizer's template).
    pub type_ids: Vec<u32>,
    pub truncated: bool,
}

/// Whether an encoding needs byte offsets (and then whether special tokens are added).
#[derive(Clone, Copy)]
enum Offsets {
    Skip,
    Bytes { add_special_tokens: bool },
}

/// The configured tokenizer; cheap to share behind an `Arc` across request handlers.
pub struct TextTokenizer {
    /// Truncates at the end (keeps the start).
    right: Tokenizer,
    /// The same, truncating at the start.
    left: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    /// Loads tokenizer.json from memory and applies the sentence-transformers settings.
    pub fn from_bytes(bytes: &[u8], max_length: usize) -> Result<Self, TokenizeError> {
        let mut right =
            Tokenizer::from_bytes(bytes).map_err(|e| TokenizeError::Load(e.to_string()))?;
        right.with_padding(None);
        let mut left = right.clone();
        for (tokenizer, direction) in [
            (&mut right, tokenizers::TruncationDirection::Right),
            (&mut left, tokenizers::TruncationDirection::Left),
        ] {
            tokenizer
                .with_truncation(Some(TruncationParams {
                    max_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction,
                }))
                .map_err(|e| TokenizeError::Load(e.to_string()))?;
        }
        Ok(Self {
            right,
            left,
            max_length,
        })
    }

    fn configured(&self, direction: TruncationDirection) -> &Tokenizer {
        match direction {
            TruncationDirection::Right => &self.right,
            TruncationDirection::Left => &self.left,
        }
    }

    /// Ids for each input. Over-long inputs are truncated (at the end), or refused when
    /// `truncate` is false.
    pub fn encode(&self, inputs: &[&str], truncate: bool) -> Result<Vec<Encoded>, TokenizeError> {
        self.encode_from(inputs, truncate, TruncationDirection::Right)
    }

    /// Like [`Self::encode`], cutting over-long inputs at the given end.
    pub fn encode_from(
        &self,
        inputs: &[&str],
        truncate: bool,
        direction: TruncationDirection,
    ) -> Result<Vec<Encoded>, TokenizeError> {
        inputs
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let encoding = self.encoding(index, text, truncate, direction, Offsets::Skip)?;
                Ok(Encoded {
                    truncated: !encoding.get_overflowing().is_empty(),
                    ids: encoding.get_ids().to_vec(),
                })
            })
            .collect()
    }

    /// Ids and segment ids of each `(first, second)` pair, as cross-encoders and pair
    /// classifiers take them: the tokenizer's own pair template (`[CLS] a [SEP] b [SEP]`,
    /// `<s> a </s></s> b </s>`), the longer text cut first when the pair is over the limit
    /// (`LongestFirst`, as transformers and TEI truncate), or refused when `truncate` is false.
    /// Each text is at most the payload limit, so the whole-pair encoding is bounded.
    pub fn encode_pairs(
        &self,
        pairs: &[(&str, &str)],
        truncate: bool,
        direction: TruncationDirection,
    ) -> Result<Vec<EncodedPair>, TokenizeError> {
        let tokenizer = self.configured(direction);
        pairs
            .iter()
            .enumerate()
            .map(|(index, (first, second))| {
                let encoding = tokenizer
                    .encode_fast((*first, *second), true)
                    .map_err(|e| TokenizeError::Encode {
                        index,
                        message: e.to_string(),
                    })?;
                let truncated = !encoding.get_overflowing().is_empty();
                if !truncate && truncated {
                    return Err(TokenizeError::TooLong {
                        index,
                        tokens: self.max_length + 1,
                        limit: self.max_length,
                    });
                }
                Ok(EncodedPair {
                    ids: encoding.get_ids().to_vec(),
                    type_ids: encoding.get_type_ids().to_vec(),
                    truncated,
                })
            })
            .collect()
    }

    /// One input's encoding, refused when it overflows and `truncate` is false. Byte offsets are
    /// computed only for `/tokenize` (`encode_fast` skips them, which embedding does not need).
    fn encoding(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
        direction: TruncationDirection,
        offsets: Offsets,
    ) -> Result<tokenizers::Encoding, TokenizeError> {
        let tokenizer = self.configured(direction);
        let encode = |text: &str| match offsets {
            Offsets::Skip => tokenizer.encode_fast(text, true),
            Offsets::Bytes { add_special_tokens } => tokenizer.encode(text, add_special_tokens),
        };
        let keep = match direction {
            TruncationDirection::Right => super::precut::Keep::Start,
            TruncationDirection::Left => super::precut::Keep::End,
        };
        let encoding = encode_kept(text, self.max_length, keep, encode).map_err(|e| {
            TokenizeError::Encode {
                index,
                message: e.to_string(),
            }
        })?;
        if !truncate && !encoding.get_overflowing().is_empty() {
            return Err(TokenizeError::TooLong {
                index,
                tokens: self.max_length + 1,
                limit: self.max_length,
            });
        }
        Ok(encoding)
    }

    /// Text for each id sequence (TEI's `/decode`). Ids outside the vocabulary are skipped.
    pub fn decode(
        &self,
        sequences: &[Vec<u32>],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, TokenizeError> {
        sequences
            .iter()
            .map(|ids| {
                self.right
                    .decode(ids, skip_special_tokens)
                    .map_err(|e| TokenizeError::Decode(e.to_string()))
            })
            .collect()
    }

    /// Tokens with their text, specialness and byte offsets, for `/tokenize`.
    pub fn describe(
        &self,
        inputs: &[&str],
        truncate: bool,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<TokenInfo>>, TokenizeError> {
        inputs
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let encoding = self.encoding(
                    index,
                    text,
                    truncate,
                    TruncationDirection::Right,
                    Offsets::Bytes { add_special_tokens },
                )?;
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
