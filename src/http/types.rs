//! Request and response bodies of every route, with their OpenAPI schemas.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// One string or a list of strings. Deserialised by hand so that a wrong type gets a message that
/// says what is expected (and so OpenAI token-id arrays get a specific answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Input {
    Single(String),
    Batch(Vec<String>),
}

impl Input {
    /// The inputs as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Input::Single(text) => vec![text],
            Input::Batch(texts) => texts,
        }
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InputVisitor;
        impl<'de> Visitor<'de> for InputVisitor {
            type Value = Input;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Input, E> {
                Ok(Input::Single(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Input, E> {
                Ok(Input::Single(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Input, A::Error> {
                let mut texts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<TextItem>()? {
                    texts.push(item.0);
                }
                Ok(Input::Batch(texts))
            }
        }
        deserializer.deserialize_any(InputVisitor)
    }
}

/// One element of an input array: must be a string.
struct TextItem(String);

impl<'de> Deserialize<'de> for TextItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = TextItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (token-id arrays are not accepted: send text)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextItem, E> {
                Ok(TextItem(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TextItem, E> {
                Ok(TextItem(v))
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

/// `POST /embed` (TEI).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EmbedRequest {
    /// Text or texts to embed.
    pub inputs: Input,
    /// L2-normalise the vectors [default: the model's setting, true for MiniLM].
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Truncate over-long inputs to the model's limit (true) or refuse them with 422 (false).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Keep only the first N components (then renormalise if normalising).
    #[serde(default)]
    pub dimensions: Option<usize>,
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct OpenAiEmbeddingsRequest {
    /// Text or texts to embed.
    pub input: Input,
    /// Echoed back; the server always runs its own embedded model.
    #[serde(default)]
    pub model: Option<String>,
    /// "float" (default) or "base64" (little-endian f32).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Keep only the first N components, renormalised.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Accepted for compatibility; unused.
    #[serde(default)]
    pub user: Option<String>,
}

/// One embedding in an OpenAI response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    pub object: &'static str,
    /// `[f32]` or a base64 string, per `encoding_format`.
    #[schema(value_type = Object)]
    pub embedding: serde_json::Value,
    pub index: usize,
}

/// Token counts of an OpenAI response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// `POST /v1/embeddings` response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiEmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

/// `POST /tokenize`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// Text or texts to tokenize.
    pub inputs: Input,
    /// Truncate to the model's limit (true, default) or refuse over-long inputs (false).
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// `POST /model` (CML Models wire format).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CmlModelRequest {
    /// CML model access key; accepted in place of the Bearer token when an API key is set.
    #[serde(default, rename = "accessKey")]
    pub access_key: Option<String>,
    /// The same fields as `POST /embed`.
    pub request: EmbedRequest,
}

/// What `/model` returns inside `response`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CmlEmbeddings {
    pub embeddings: Vec<Vec<f32>>,
    pub model: String,
    pub prompt_tokens: usize,
}

/// `POST /model` response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CmlModelResponse {
    pub success: bool,
    pub response: CmlEmbeddings,
}

/// TEI-style error body.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub error_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_accepts_string_or_list_and_explains_otherwise() {
        let one: EmbedRequest = serde_json::from_str(r#"{"inputs":"a"}"#).unwrap();
        assert_eq!(one.inputs, Input::Single("a".into()));
        let many: EmbedRequest = serde_json::from_str(r#"{"inputs":["a","b"]}"#).unwrap();
        assert_eq!(many.inputs.into_vec(), vec!["a", "b"]);
        let err = serde_json::from_str::<EmbedRequest>(r#"{"inputs":3}"#).unwrap_err();
        assert!(
            err.to_string().contains("a string or an array of strings"),
            "{err}"
        );
        let err = serde_json::from_str::<EmbedRequest>(r#"{"inputs":[[1,2]]}"#).unwrap_err();
        assert!(err.to_string().contains("token-id arrays"), "{err}");
    }
}
