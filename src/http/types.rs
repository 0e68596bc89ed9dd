//! Request and response bodies of every route, with their OpenAPI schemas. TEI's routes use
//! TEI's field names and shapes (router/src/http/types.rs), the `/v1` routes OpenAI's, `/model`
//! CML's. Limits that depend on the served model (how many inputs, how many dimensions, which
//! prompt names) are written into the document at run time by `super::openapi`.

use crate::engine::{ComputeDType, DeviceKind, EngineHealth, TokenInfo};
use crate::harden::HardenReport;
use crate::infer::ModelKind;
use crate::limits::Limits;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use utoipa::ToSchema;

/// One string or a non-empty list of strings. Deserialised by hand so that a wrong type gets a
/// message that says what is expected (and so OpenAI token-id arrays get a specific answer).
#[derive(Clone, Debug, PartialEq, Eq, ToSchema)]
#[schema(example = json!("What is Deep Learning?"))]
pub enum Input {
    /// One text.
    Single(String),
    /// Several texts, embedded in one request.
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

/// A nested object field: a JSON object only. serde's derive would also take a struct from an
/// array of its fields in order, which the OpenAPI document does not allow.
pub(super) fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<T, D::Error> {
    let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
    serde_json::from_value(serde_json::Value::Object(map)).map_err(de::Error::custom)
}

/// [`object`] or `null`.
pub(super) fn object_or_null<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
        .map(|map| {
            serde_json::from_value(serde_json::Value::Object(map)).map_err(de::Error::custom)
        })
        .transpose()
}

/// A list of [`object`]s.
pub(super) fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
        .into_iter()
        .map(|map| {
            serde_json::from_value(serde_json::Value::Object(map)).map_err(de::Error::custom)
        })
        .collect()
}

/// A non-negative whole number or `null`. JSON Schema counts `384.0` as an integer, so a client
/// may send it; serde's `usize` alone would refuse it.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    whole(deserializer)
}

/// [`whole_number`] of any unsigned type (`u32` token ids, `u64` seeds, `usize` counts); a
/// number outside the type's range is refused.
pub(super) fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<serde_json::Number>::deserialize(deserializer)?
        .map(|number| whole_of(&number).map_err(de::Error::custom))
        .transpose()
}

/// A list of [`whole`] numbers (token ids).
pub(super) fn whole_list<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<serde_json::Number>::deserialize(deserializer)?
        .iter()
        .map(|number| whole_of(number).map_err(de::Error::custom))
        .collect()
}

/// [`whole_list`] or `null`.
pub(super) fn whole_list_or_null<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Option::<Vec<serde_json::Number>>::deserialize(deserializer)?
        .map(|numbers| {
            numbers
                .iter()
                .map(|number| whole_of(number).map_err(de::Error::custom))
                .collect()
        })
        .transpose()
}

fn whole_of<T: TryFrom<u64>>(number: &serde_json::Number) -> Result<T, String> {
    let n = match (number.as_u64(), number.as_f64()) {
        (Some(n), _) => Some(n),
        // Below 2^64: every whole f64 there is a u64.
        (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => {
            Some(f as u64)
        }
        _ => None,
    };
    n.and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
        format!(
            "expected a non-negative whole number that fits a {}, got {number}",
            std::any::type_name::<T>()
        )
    })
}

/// Which end of an over-long input is cut (TEI's `truncation_direction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub enum TruncationDirection {
    /// Cut the start, keep the end.
    #[serde(alias = "left")]
    Left,
    /// Cut the end, keep the start.
    #[default]
    #[serde(alias = "right")]
    Right,
}

impl From<TruncationDirection> for crate::engine::TruncationDirection {
    fn from(value: TruncationDirection) -> Self {
        match value {
            TruncationDirection::Left => Self::Left,
            TruncationDirection::Right => Self::Right,
        }
    }
}

/// `POST /embed` (TEI), also `POST /` for embedding models.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EmbedRequest {
    /// Text or texts to embed.
    pub inputs: Input,
    /// L2-normalise the vectors [default: the model's setting, true for MiniLM].
    #[serde(default)]
    #[schema(nullable)]
    pub normalize: Option<bool>,
    /// Truncate over-long inputs to the model's limit (true, default) or refuse them with 422.
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// Which end of an over-long input is cut when truncating.
    #[serde(default)]
    #[schema(nullable)]
    pub truncation_direction: Option<TruncationDirection>,
    /// A key of the model's sentence-transformers `prompts`; its text is put before every input.
    #[serde(default)]
    #[schema(nullable)]
    pub prompt_name: Option<String>,
    /// Keep only the first N components (then renormalise if normalising).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(nullable, minimum = 1)]
    pub dimensions: Option<usize>,
}

/// `POST /embed` response: one vector per input.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!([[0.0, 1.0, 2.0]]))]
pub struct EmbedResponse(pub Vec<Vec<f32>>);

/// `POST /embed_all` (TEI): every token's final hidden state.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EmbedAllRequest {
    /// Text or texts.
    pub inputs: Input,
    /// Truncate over-long inputs (true, default) or refuse them with 422.
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// Which end of an over-long input is cut when truncating.
    #[serde(default)]
    #[schema(nullable)]
    pub truncation_direction: Option<TruncationDirection>,
    /// A key of the model's sentence-transformers `prompts`.
    #[serde(default)]
    #[schema(nullable)]
    pub prompt_name: Option<String>,
}

/// `POST /embed_all` response: per input, one vector per token.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!([[[0.0, 1.0, 2.0]]]))]
pub struct EmbedAllResponse(pub Vec<Vec<Vec<f32>>>);

/// The sentences of a `/similarity` request (Hugging Face's sentence-similarity task).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct SimilarityInput {
    /// The sentence the others are compared with.
    pub source_sentence: String,
    /// The sentences compared with `source_sentence`.
    pub sentences: Vec<String>,
}

/// Options of a `/similarity` request.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct SimilarityParameters {
    /// Truncate over-long inputs (true, default) or refuse them with 422.
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// Which end of an over-long input is cut when truncating.
    #[serde(default)]
    #[schema(nullable)]
    pub truncation_direction: Option<TruncationDirection>,
    /// A key of the model's sentence-transformers `prompts`.
    #[serde(default)]
    #[schema(nullable)]
    pub prompt_name: Option<String>,
}

/// `POST /similarity` (TEI), also `POST /` when `inputs` is an object.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct SimilarityRequest {
    #[serde(deserialize_with = "object")]
    pub inputs: SimilarityInput,
    #[serde(default, deserialize_with = "object_or_null")]
    #[schema(nullable)]
    pub parameters: Option<SimilarityParameters>,
}

/// `POST /similarity` response: the cosine similarity of each sentence with the source.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!([0.0, 1.0, 0.5]))]
pub struct SimilarityResponse(pub Vec<f32>);

/// `POST /`: what TEI's default route takes for an embedding model, plus the sentence-similarity
/// task (which `huggingface_hub.InferenceClient.sentence_similarity` posts to the same URL).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RootRequest {
    Similarity(SimilarityRequest),
    Embed(EmbedRequest),
}

/// `POST /` response.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RootResponse {
    Embeddings(EmbedResponse),
    Similarities(SimilarityResponse),
}

/// `encoding_format` of an OpenAI request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Little-endian f32 bytes, base64.
    Base64,
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct OpenAiEmbeddingsRequest {
    /// Text or texts to embed.
    pub input: Input,
    /// Echoed back; the server always runs its own embedded model.
    #[serde(default)]
    #[schema(nullable)]
    pub model: Option<String>,
    /// `float` (default) or `base64`.
    #[serde(default)]
    #[schema(nullable)]
    pub encoding_format: Option<EncodingFormat>,
    /// Keep only the first N components, renormalised.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(nullable, minimum = 1)]
    pub dimensions: Option<usize>,
    /// Accepted for compatibility; unused.
    #[serde(default)]
    #[schema(nullable)]
    pub user: Option<String>,
}

/// One embedding's value in an OpenAI response: numbers, or a base64 string of little-endian
/// f32 bytes, per `encoding_format`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiEmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

/// One embedding in an OpenAI response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    #[schema(value_type = String, example = "embedding")]
    pub object: &'static str,
    pub embedding: OpenAiEmbeddingValue,
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
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

/// `object` of an OpenAI model: always `model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelObject {
    Model,
}

/// `object` of an OpenAI list: always `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    List,
}

/// One model in OpenAI's `/v1/models`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiModel {
    /// The Hugging Face repo id of the embedded model.
    pub id: String,
    pub object: ModelObject,
    /// Unix seconds when this server started serving it.
    pub created: u64,
    /// Always `sealserve`.
    #[schema(value_type = String, example = "sealserve")]
    pub owned_by: &'static str,
}

/// `GET /v1/models` response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiModelList {
    pub object: ListObject,
    pub data: Vec<OpenAiModel>,
}

/// `POST /tokenize`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// Text or texts to tokenize.
    pub inputs: Input,
    /// Add the model's special tokens (true, default).
    #[serde(default)]
    #[schema(nullable)]
    pub add_special_tokens: Option<bool>,
    /// Truncate to the model's limit (true, default) or refuse over-long inputs (false).
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// A key of the model's sentence-transformers `prompts`.
    #[serde(default)]
    #[schema(nullable)]
    pub prompt_name: Option<String>,
}

/// One token as returned by `/tokenize` (TEI's `SimpleToken`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    /// Byte offsets into the input.
    pub start: usize,
    pub stop: usize,
}

impl From<TokenInfo> for SimpleToken {
    fn from(token: TokenInfo) -> Self {
        Self {
            id: token.id,
            text: token.text,
            special: token.special,
            start: token.start,
            stop: token.stop,
        }
    }
}

/// `POST /tokenize` response: tokens per input.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenizeResponse(pub Vec<Vec<SimpleToken>>);

/// One id sequence or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, ToSchema)]
pub enum InputIds {
    Single(Vec<u32>),
    Batch(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for InputIds {
    /// `[1, 2]` is one sequence, `[[1, 2], [3]]` several; `[]` is one empty sequence. Ids are
    /// whole numbers (`7.0` included, as JSON Schema's `integer` allows).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<serde_json::Value>::deserialize(deserializer)?;
        let id = |value: &serde_json::Value| -> Result<u32, D::Error> {
            whole_number(value)
                .ok()
                .flatten()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "token ids are whole numbers up to 2^32-1, got {value}"
                    ))
                })
        };
        let ids = |values: &[serde_json::Value]| values.iter().map(id).collect();
        if items.iter().all(serde_json::Value::is_array) && !items.is_empty() {
            items
                .iter()
                .map(|item| ids(item.as_array().map_or(&[][..], Vec::as_slice)))
                .collect::<Result<_, _>>()
                .map(InputIds::Batch)
        } else {
            ids(&items).map(InputIds::Single)
        }
    }
}

/// `POST /decode` (TEI).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct DecodeRequest {
    pub ids: InputIds,
    /// Leave out special tokens such as `[CLS]` (true, default).
    #[serde(default)]
    #[schema(nullable)]
    pub skip_special_tokens: Option<bool>,
}

/// `POST /decode` response: text per id sequence.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!(["test"]))]
pub struct DecodeResponse(pub Vec<String>);

/// `POST /model` (CML Models wire format).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CmlModelRequest {
    /// CML model access key; accepted in place of the Bearer token when an API key is set.
    #[serde(default, rename = "accessKey")]
    #[schema(nullable)]
    pub access_key: Option<String>,
    /// The same fields as `POST /embed`.
    #[serde(deserialize_with = "object")]
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

/// The inputs of `POST /predict`, as TEI reads them: a text, a pair `[text, text_pair]`, or a
/// list whose items are texts or pairs. A list of exactly two texts is one pair (TEI's rule),
/// so a batch of two single texts cannot be sent as such: send them as two requests; a batch of
/// one pair is `[["a", "b"]]`.
#[derive(Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct PredictInputs {
    /// Each text or pair, in request order.
    #[schema(value_type = Vec<String>)]
    pub inputs: Vec<crate::infer::PredictInput>,
    /// Whether the request was a list (the response is then a list of lists).
    pub batched: bool,
}

impl<'de> Deserialize<'de> for PredictInputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use crate::infer::PredictInput;
        let expecting = "a text, a pair [text, text_pair], or a list of texts and pairs";
        let item = |value: serde_json::Value| -> Result<PredictInput, D::Error> {
            match value {
                serde_json::Value::String(text) => Ok(PredictInput::Single(text)),
                serde_json::Value::Array(pair) => match <[serde_json::Value; 2]>::try_from(pair) {
                    Ok([serde_json::Value::String(a), serde_json::Value::String(b)]) => {
                        Ok(PredictInput::Pair(a, b))
                    }
                    _ => Err(de::Error::custom(
                        "a pair is a list of exactly two texts [text, text_pair]",
                    )),
                },
                other => Err(de::Error::custom(format!(
                    "expected a text or a pair of texts, got {other}"
                ))),
            }
        };
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(Self {
                inputs: vec![PredictInput::Single(text)],
                batched: false,
            }),
            serde_json::Value::Array(items) => {
                if let [serde_json::Value::String(a), serde_json::Value::String(b)] =
                    items.as_slice()
                {
                    return Ok(Self {
                        inputs: vec![PredictInput::Pair(a.clone(), b.clone())],
                        batched: false,
                    });
                }
                Ok(Self {
                    inputs: items.into_iter().map(item).collect::<Result<_, _>>()?,
                    batched: true,
                })
            }
            other => Err(de::Error::custom(format!(
                "expected {expecting}, got {other}"
            ))),
        }
    }
}

/// `POST /predict` (TEI), also `POST /` for classifiers.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct PredictRequest {
    pub inputs: PredictInputs,
    /// Truncate over-long inputs (true, default) or refuse them with 422.
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// Which end of an over-long input is cut when truncating.
    #[serde(default)]
    #[schema(nullable)]
    pub truncation_direction: Option<TruncationDirection>,
    /// The head's logits as they are (false, default: softmax over the labels, sigmoid for one).
    #[serde(default)]
    #[schema(nullable)]
    pub raw_scores: Option<bool>,
}

/// A label's score.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Prediction {
    pub score: f32,
    /// The label's name from the model's `config.json` `id2label`.
    pub label: String,
}

/// `POST /predict` response: per input, every label's score, highest first; a list of those
/// when the request's `inputs` was a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    Single(Vec<Prediction>),
    Batch(Vec<Vec<Prediction>>),
}

/// `POST /rerank` (TEI), also `POST /` for re-rankers.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// What the texts are ranked against.
    pub query: String,
    /// Candidate texts; each is scored as the pair (query, text).
    pub texts: Vec<String>,
    /// Truncate over-long pairs (true, default) or refuse them with 422.
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// Which end of an over-long pair is cut when truncating.
    #[serde(default)]
    #[schema(nullable)]
    pub truncation_direction: Option<TruncationDirection>,
    /// The cross-encoder's logit as it is (false, default: its sigmoid).
    #[serde(default)]
    #[schema(nullable)]
    pub raw_scores: Option<bool>,
    /// Echo each text in its rank (false, default).
    #[serde(default)]
    #[schema(nullable)]
    pub return_text: Option<bool>,
}

/// A text's place in the ranking.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Rank {
    /// Position of the text in the request's `texts`.
    pub index: usize,
    /// The text, when `return_text` was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub score: f32,
}

/// `POST /rerank` response: every text, highest score first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RerankResponse(pub Vec<Rank>);

/// `POST /embed_sparse` (TEI), also `POST /` for SPLADE models.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EmbedSparseRequest {
    /// Text or texts.
    pub inputs: Input,
    /// Truncate over-long inputs (true, default) or refuse them with 422.
    #[serde(default)]
    #[schema(nullable)]
    pub truncate: Option<bool>,
    /// Which end of an over-long input is cut when truncating.
    #[serde(default)]
    #[schema(nullable)]
    pub truncation_direction: Option<TruncationDirection>,
    /// A key of the model's sentence-transformers `prompts`.
    #[serde(default)]
    #[schema(nullable)]
    pub prompt_name: Option<String>,
}

/// One non-zero weight of a sparse embedding.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SparseValue {
    /// Vocabulary index (token id).
    pub index: usize,
    pub value: f32,
}

/// `POST /embed_sparse` response: per input, its non-zero weights by index.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EmbedSparseResponse(pub Vec<Vec<SparseValue>>);

/// TEI-style error body (also what `/model` adds `success: false` to).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub error_type: String,
}

/// OpenAI's error object.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: String,
    #[schema(nullable, value_type = Option<String>)]
    pub param: Option<String>,
    pub code: String,
}

/// OpenAI's error body.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

/// `GET /health` and `GET /ready` body.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `engine stopped` (/health); `ready` or `not ready` (/ready).
    pub status: &'static str,
    /// The inference thread, so that a failing probe says why: `{"state": "running"}`,
    /// `{"state": "stuck", "busy_ms": N}` or `{"state": "stopped"}`.
    #[schema(value_type = Object)]
    pub engine: EngineHealth,
}

/// How the bundle was signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureKind {
    /// By a release key given to the build.
    Signed,
    /// By an ephemeral key made at build time (development builds).
    DevSigned,
}

/// How clients authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// `Authorization: Bearer <key>` on every route but /health and /ready.
    Bearer,
    /// No API key configured.
    None,
}

/// `GET /info`: what is served, its provenance, where it runs, the limits and hardening.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Info {
    pub model_id: String,
    pub revision: String,
    #[schema(value_type = String, example = "embedding")]
    pub model_type: ModelKind,
    #[schema(value_type = String, example = "bert")]
    pub family: crate::spec::Family,
    /// Label names of a classifier or re-ranker, by logit index (empty for other models).
    pub labels: Vec<String>,
    #[schema(value_type = String, example = "mean")]
    pub pooling: crate::spec::Pooling,
    pub normalize: bool,
    pub dimensions: usize,
    pub max_input_tokens: usize,
    /// sentence-transformers prompts by name.
    pub prompts: BTreeMap<String, String>,
    #[schema(nullable)]
    pub default_prompt_name: Option<String>,
    pub manifest_sha256: String,
    pub key_fingerprint: String,
    pub key_id: String,
    pub signature: SignatureKind,
    pub trusted_keys_pinned: bool,
    /// How the signing key was accepted: `pinned`, or `unpinned` under `--allow-unpinned`.
    #[schema(value_type = String, example = "pinned")]
    pub trust: crate::bundle::TrustState,
    /// Where the bundle came from (`embedded` or the `--model-url`) and what loading it cost.
    pub bundle_load: crate::remote::LoadReport,
    #[schema(value_type = String, example = "cpu")]
    pub device: DeviceKind,
    pub device_reason: String,
    #[schema(value_type = String, example = "f32")]
    pub dtype: ComputeDType,
    pub max_forward_tokens: usize,
    pub limits: Limits,
    pub auth: AuthKind,
    /// The inference thread: `{"state": "running" | "stuck" | "stopped"}`.
    #[schema(value_type = Object)]
    pub engine: EngineHealth,
    /// What hardening is in force (see `serve --help`, `--harden`).
    #[schema(value_type = Object)]
    pub hardening: HardenReport,
    pub version: &'static str,
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

    #[test]
    fn nested_objects_must_be_objects_and_whole_floats_are_integers() {
        let arrays = r#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": [null, null]}"#;
        assert!(serde_json::from_str::<SimilarityRequest>(arrays).is_err());
        let null =
            r#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": null}"#;
        assert!(serde_json::from_str::<SimilarityRequest>(null).is_ok());
        let request: EmbedRequest =
            serde_json::from_str(r#"{"inputs": "x", "dimensions": 12.0}"#).unwrap();
        assert_eq!(request.dimensions, Some(12));
        for bad in ["12.5", "-1", "\"12\""] {
            let body = format!(r#"{{"inputs": "x", "dimensions": {bad}}}"#);
            assert!(
                serde_json::from_str::<EmbedRequest>(&body).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn openai_values_serialise_as_array_or_string() {
        let float = serde_json::to_value(OpenAiEmbeddingValue::Float(vec![0.5])).unwrap();
        assert_eq!(float, serde_json::json!([0.5]));
        let text = serde_json::to_value(OpenAiEmbeddingValue::Base64("AAA=".into())).unwrap();
        assert_eq!(text, serde_json::json!("AAA="));
        let format: OpenAiEmbeddingsRequest =
            serde_json::from_str(r#"{"input": "x", "encoding_format": "base64"}"#).unwrap();
        assert_eq!(format.encoding_format, Some(EncodingFormat::Base64));
        assert!(serde_json::from_str::<OpenAiEmbeddingsRequest>(
            r#"{"input": "x", "encoding_format": "bogus"}"#
        )
        .is_err());
    }
}
