//! The OpenAPI 3.1 document: generated from the route and type annotations (utoipa), then made
//! exact for the served model: how many inputs a request may carry, how many `dimensions` the
//! model has, which `prompt_name`s exist. Clients and fuzzers (schemathesis) can rely on it:
//! what it allows is accepted, what it forbids is refused with 4xx.

use super::{routes, types};
use crate::infer::{Infer, ModelKind};
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sealserve",
        description = "Embeddings from a signed, embedded model: TEI-, OpenAI- and CML-compatible."
    ),
    paths(
        routes::root,
        routes::embed,
        routes::embed_all,
        routes::embed_sparse,
        routes::predict,
        routes::rerank,
        routes::similarity,
        routes::openai_embeddings,
        routes::openai_models,
        routes::openai_model_by_id,
        routes::cml_model,
        routes::tokenize,
        routes::decode,
        routes::health,
        routes::ready,
        routes::info,
        routes::metrics
    ),
    components(schemas(
        types::Input,
        types::TruncationDirection,
        types::EmbedRequest,
        types::EmbedResponse,
        types::EmbedAllRequest,
        types::EmbedAllResponse,
        types::EmbedSparseRequest,
        types::EmbedSparseResponse,
        types::SparseValue,
        types::PredictInputs,
        types::PredictRequest,
        types::PredictResponse,
        types::Prediction,
        types::RerankRequest,
        types::RerankResponse,
        types::Rank,
        types::SimilarityInput,
        types::SimilarityParameters,
        types::SimilarityRequest,
        types::SimilarityResponse,
        types::RootRequest,
        types::RootResponse,
        types::EncodingFormat,
        types::OpenAiEmbeddingsRequest,
        types::OpenAiEmbeddingsResponse,
        types::OpenAiEmbedding,
        types::OpenAiEmbeddingValue,
        types::OpenAiUsage,
        types::OpenAiModel,
        types::OpenAiModelList,
        types::OpenAiError,
        types::OpenAiErrorBody,
        types::TokenizeRequest,
        types::TokenizeResponse,
        types::SimpleToken,
        types::InputIds,
        types::DecodeRequest,
        types::DecodeResponse,
        types::CmlModelRequest,
        types::CmlModelResponse,
        types::CmlEmbeddings,
        types::ErrorBody,
        types::Status,
        types::SignatureKind,
        types::AuthKind,
        types::Info,
        crate::limits::Limits
    ))
)]
struct ApiDoc;

/// The document as annotated, before the served model's limits are written in (route lists and
/// shapes; what tests and deployment checks derive from).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Routes only an embedding model answers.
const EMBEDDING_PATHS: &[&str] = &[
    "/embed",
    "/embed_all",
    "/similarity",
    "/v1/embeddings",
    "/model",
];

/// What the served kind of model answers: the task routes it does not serve (they answer 424)
/// are left out of its document, and `POST /` takes and returns that task's bodies (request and
/// response schema names; `None` keeps the embedding model's `RootRequest` / `RootResponse`).
fn task_routes(kind: ModelKind) -> (Vec<&'static str>, Option<(&'static str, &'static str)>) {
    let mut absent: Vec<&'static str> = Vec::new();
    let heads = ["/predict", "/rerank", "/embed_sparse"];
    let root = match kind {
        ModelKind::Embedding => {
            absent.extend(heads);
            None
        }
        ModelKind::Classifier => {
            absent.extend(EMBEDDING_PATHS.iter().chain(&["/rerank", "/embed_sparse"]));
            Some(("PredictRequest", "PredictResponse"))
        }
        ModelKind::Reranker => {
            absent.extend(EMBEDDING_PATHS.iter().chain(&["/embed_sparse"]));
            Some(("RerankRequest", "RerankResponse"))
        }
        ModelKind::SparseEmbedding => {
            absent.extend(EMBEDDING_PATHS.iter().chain(&["/predict", "/rerank"]));
            Some(("EmbedSparseRequest", "EmbedSparseResponse"))
        }
        ModelKind::Generation => {
            absent.extend(EMBEDDING_PATHS.iter().chain(&heads).chain(&["/"]));
            None
        }
    };
    (absent, root)
}

/// Bounds that depend on the served model and the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// `--max-client-batch-size`.
    pub max_inputs: usize,
    /// The embedding width: the largest `dimensions`.
    pub dimensions: usize,
    /// The model's prompt names.
    pub prompt_names: Vec<String>,
    /// The model id `/v1/models/{id}` answers for.
    pub model_id: String,
    /// What the model does: which task routes the document lists.
    pub kind: ModelKind,
}

/// The document served at /openapi.json: [`openapi_document`] with the bounds of `infer`.
pub fn document_for(infer: &Infer) -> Value {
    document_with(&Bounds {
        max_inputs: infer.limits().max_client_batch_size.get(),
        dimensions: infer.model().dimensions,
        prompt_names: infer.model().prompts.keys().cloned().collect(),
        model_id: infer.model().model_id.clone(),
        kind: infer.kind(),
    })
}

/// [`openapi_document`] made exact for `bounds`.
pub fn document_with(bounds: &Bounds) -> Value {
    let mut document = serde_json::to_value(openapi_document()).unwrap_or(Value::Null);
    if let Some(id) = document.pointer_mut("/paths/~1v1~1models~1{id}/get/parameters/0/schema") {
        // The one id there is (other ids get 404).
        *id = json!({"type": "string", "enum": [bounds.model_id]});
    }
    let (absent, root) = task_routes(bounds.kind);
    if let Some(paths) = document
        .pointer_mut("/paths")
        .and_then(Value::as_object_mut)
    {
        for path in absent {
            paths.remove(path);
        }
    }
    if let Some((request, response)) = root {
        for (pointer, name) in [
            (
                "/paths/~1/post/requestBody/content/application~1json/schema",
                request,
            ),
            (
                "/paths/~1/post/responses/200/content/application~1json/schema",
                response,
            ),
        ] {
            if let Some(schema) = document.pointer_mut(pointer) {
                *schema = json!({"$ref": format!("#/components/schemas/{name}")});
            }
        }
    }
    let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return document;
    };
    let string = json!({"type": "string"});
    bound_inputs(schemas, bounds.max_inputs);
    let pair = json!({"type": "array", "items": string, "minItems": 2, "maxItems": 2});
    schemas.insert(
        "PredictInputs".into(),
        json!({
            "description": "A text, a pair [text, text_pair], or a non-empty list of texts and pairs (a list of exactly two texts is one pair).",
            "anyOf": [
                string,
                pair,
                {"type": "array", "items": {"anyOf": [string, pair]}, "minItems": 1, "maxItems": bounds.max_inputs},
            ],
        }),
    );
    if let Some(texts) = schemas
        .get_mut("RerankRequest")
        .and_then(|s| s.pointer_mut("/properties/texts"))
    {
        *texts = json!({
            "description": "Candidate texts; each is scored as the pair (query, text).",
            "type": "array",
            "items": string,
            "minItems": 1,
            "maxItems": bounds.max_inputs,
        });
    }
    schemas.insert(
        "TruncationDirection".into(),
        json!({
            "description": "Which end of an over-long input is cut: Left keeps the end, Right keeps the start.",
            "type": "string",
            "enum": ["Left", "Right", "left", "right"],
        }),
    );
    schemas.insert(
        "EncodingFormat".into(),
        json!({"type": "string", "enum": ["float", "base64"]}),
    );
    let mut prompt_names: Vec<Value> = bounds
        .prompt_names
        .iter()
        .map(|n| Value::String(n.clone()))
        .collect();
    prompt_names.push(Value::Null);
    for (_, schema) in schemas.iter_mut() {
        let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(dimensions) = properties.get_mut("dimensions") {
            *dimensions = json!({
                "description": "Keep only the first N components (then renormalise if normalising).",
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": bounds.dimensions,
            });
        }
        if let Some(prompt) = properties.get_mut("prompt_name") {
            *prompt = json!({
                "description": "A key of the model's sentence-transformers prompts; its text is put before every input.",
                "enum": prompt_names,
            });
        }
        for name in ["truncation_direction", "encoding_format"] {
            let target = if name == "truncation_direction" {
                "#/components/schemas/TruncationDirection"
            } else {
                "#/components/schemas/EncodingFormat"
            };
            if let Some(property) = properties.get_mut(name) {
                *property = json!({"oneOf": [{"type": "null"}, {"$ref": target}]});
            }
        }
    }
    if let Some(sentences) = schemas
        .get_mut("SimilarityInput")
        .and_then(|s| s.pointer_mut("/properties/sentences"))
    {
        *sentences = json!({
            "description": "The sentences compared with source_sentence.",
            "type": "array",
            "items": string,
            "minItems": 1,
            "maxItems": bounds.max_inputs.saturating_sub(1).max(1),
        });
    }
    document
}

/// What makes a generation server's document exact (see [`exact_generation_document`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationBounds {
    /// `--max-client-batch-size`: inputs of `/tokenize` and `/decode`.
    pub max_inputs: usize,
    /// Token ids of a prompt are below it.
    pub vocab_size: usize,
    /// The model id `/v1/models/{id}` answers for.
    pub model_id: String,
    /// The most choices (`n`) an OpenAI request may ask for.
    pub max_choices: usize,
    /// Single-byte characters the tokenizer drops (SmolLM2's has no token for some control
    /// characters): a prompt of only these has no tokens and is refused, so the document asks
    /// for at least one other character.
    pub dropped_chars: Vec<char>,
}

/// A regular expression matching exactly the decimal numbers `0..n` without leading zeros
/// (none when `n` is 0): JSON Schema bounds strings only by pattern, and `logit_bias` keys are
/// token ids written as strings.
pub(crate) fn decimal_below(n: usize) -> String {
    let Some(max) = n.checked_sub(1) else {
        return "^(?!)$".into();
    };
    let digits: Vec<u32> = max
        .to_string()
        .bytes()
        .map(|b| u32::from(b - b'0'))
        .collect();
    let len = digits.len();
    // Shorter numbers: 0, then 1 to len - 1 digits without a leading zero.
    let mut alternatives = vec!["0".to_string()];
    if len >= 2 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", len - 2));
    }
    // As many digits as `max`: equal up to position i, smaller there, anything after.
    for i in 0..len {
        let low = u32::from(i == 0);
        if digits[i] > low {
            let prefix: String = digits[..i].iter().map(|d| d.to_string()).collect();
            alternatives.push(format!(
                "{prefix}[{low}-{}][0-9]{{{}}}",
                digits[i] - 1,
                len - i - 1
            ));
        }
    }
    if max > 0 {
        alternatives.push(max.to_string());
    }
    format!("^({})$", alternatives.join("|"))
}

/// The generation server's document ([`crate::http::generate::generation_openapi_document`])
/// made exact, so that what it allows is accepted and what it forbids is refused (schemathesis
/// checks both): the served model's id and vocabulary, the input counts, non-empty prompts,
/// messages and stop strings, text-only message parts, integers within what the server parses,
/// the TGI parameters it refuses, `stream_options` only with `stream: true`, and no streaming on
/// CML's `/model`.
pub fn exact_generation_document(mut document: Value, bounds: &GenerationBounds) -> Value {
    if let Some(id) = document.pointer_mut("/paths/~1v1~1models~1{id}/get/parameters/0/schema") {
        // The one id there is (other ids get 404).
        *id = json!({"type": "string", "enum": [bounds.model_id]});
    }
    // Each server-sent event: `data` is one JSON object (or OpenAI's closing `[DONE]`).
    for (path, event, error, done) in [
        (
            "v1~1chat~1completions",
            "ChatCompletionChunk",
            "OpenAiErrorBody",
            true,
        ),
        (
            "v1~1completions",
            "TextCompletionChunk",
            "OpenAiErrorBody",
            true,
        ),
        ("generate_stream", "TgiStreamResponse", "ErrorBody", false),
        ("", "TgiStreamResponse", "ErrorBody", false),
    ] {
        let pointer = format!("/paths/~1{path}/post/responses/200/content");
        if let Some(content) = document
            .pointer_mut(&pointer)
            .and_then(Value::as_object_mut)
        {
            content.insert(
                "text/event-stream".into(),
                json!({"schema": sse_event(event, error, done)}),
            );
        }
    }
    let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return document;
    };
    bound_inputs(schemas, bounds.max_inputs);
    let text = json!({"type": "string", "minLength": 1});
    // A prompt's text (TGI's `inputs`, a completion's `prompt`) must leave a token.
    let prompt_text = if bounds.dropped_chars.is_empty() {
        json!({"type": "string", "minLength": 1})
    } else {
        let dropped: String = bounds
            .dropped_chars
            .iter()
            .map(|&c| format!("\\u{:04X}", u32::from(c)))
            .collect();
        json!({"type": "string", "minLength": 1, "pattern": format!("[^{dropped}]"),
               "description": "At least one character the tokenizer does not drop."})
    };
    let token_id =
        json!({"type": "integer", "minimum": 0, "maximum": bounds.vocab_size.saturating_sub(1)});
    let mut set = |schema: &str, property: &str, value: Value| {
        if let Some(slot) = schemas
            .get_mut(schema)
            .and_then(|s| property_mut(s, property))
        {
            *slot = value;
        }
    };
    set(
        "TokenizeRequest",
        "prompt_name",
        json!({
            "description": "Not for a generation model (it has no sentence-transformers prompts): absent or null.",
            "type": "null",
        }),
    );
    set(
        "ChatBody",
        "messages",
        json!({
            "type": "array", "items": {"$ref": "#/components/schemas/Message"}, "minItems": 1,
        }),
    );
    set("Part", "type", json!({"type": "string", "enum": ["text"]}));
    set("Part", "text", json!({"type": "string"}));
    set("TgiRequest", "inputs", prompt_text.clone());
    set(
        "TgiParameters",
        "stop",
        json!({"type": ["array", "null"], "items": text}),
    );
    for (name, value) in [
        ("best_of", json!([1, null])),
        ("decoder_input_details", json!([false, null])),
        ("watermark", json!([false, null])),
    ] {
        set(
            "TgiParameters",
            name,
            json!({"description": "Only this value is supported.", "enum": value}),
        );
    }
    for name in ["grammar", "adapter_id"] {
        set(
            "TgiParameters",
            name,
            json!({"description": "Not supported: absent or null.", "type": "null"}),
        );
    }
    let seed = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX});
    set("TgiParameters", "seed", seed.clone());
    set("Common", "seed", seed);
    set(
        "Common",
        "stop_token_ids",
        json!({"type": ["array", "null"], "items": token_id.clone(),
               "description": "vLLM's extension: token ids that end a choice too (not in the text)."}),
    );
    set(
        "Common",
        "n",
        json!({"type": ["integer", "null"], "minimum": 1, "maximum": bounds.max_choices,
               "description": "Choices to generate; each is a sequence of its own, sampled \
                               with seed + index when a seed is given."}),
    );
    // OpenAI parameters this server refuses unless they ask for nothing (see `unsupported` in
    // http/generate.rs): the schema admits exactly the values that are accepted.
    let no_list = json!({"type": ["array", "null"], "maxItems": 0,
        "description": "Not supported (function calling): absent, null or empty."});
    let no_call = json!({"enum": ["none", "auto", null],
        "description": "Not supported (function calling): absent, null, \"none\" or \"auto\"."});
    for (name, value) in [
        ("tools", no_list.clone()),
        ("functions", no_list),
        ("tool_choice", no_call.clone()),
        ("function_call", no_call),
        (
            "response_format",
            json!({"description": "Only {\"type\": \"text\"}: the output is not constrained to JSON or a schema.",
                   "anyOf": [{"type": "null"},
                             {"type": "object", "required": ["type"],
                              "properties": {"type": {"const": "text"}}}]}),
        ),
    ] {
        set("ChatBody", name, value);
    }
    for (name, value) in [
        (
            "echo",
            json!({"type": ["boolean", "null"],
                   "description": "Put the prompt's text before each choice's text; not with logprobs (the prompt's log-probabilities are not computed)."}),
        ),
        (
            "suffix",
            json!({"type": ["string", "null"], "maxLength": 0,
                   "description": "Not supported (insertion): absent, null or empty."}),
        ),
        (
            "best_of",
            json!({"description": "Only 1: one candidate per request.", "enum": [1, null]}),
        ),
    ] {
        set("CompletionBody", name, value);
    }
    set(
        "Common",
        "logit_bias",
        json!({"type": ["object", "null"],
               "propertyNames": {"pattern": decimal_below(bounds.vocab_size)},
               "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
               "description": "Token id (decimal string) to a bias from -100 to 100, added to \
                               that token's logit before sampling: -100 bans the token, 100 \
                               forces it. Ids are written without leading zeros and lie \
                               inside the vocabulary (see /tokenize)."}),
    );
    if let Some(part) = schemas.get_mut("Part") {
        part["required"] = json!(["type", "text"]);
    }
    if let Some(parameters) = schemas.get_mut("TgiParameters") {
        // Unknown parameter names are refused, not ignored.
        parameters["additionalProperties"] = json!(false);
    }
    schemas.insert(
        "Stop".into(),
        json!({"description": "A stop string or a list of them (none empty).",
               "oneOf": [text, {"type": "array", "items": text}]}),
    );
    schemas.insert(
        "CompletionPrompt".into(),
        json!({"description": "The prompt: text, or its token ids.",
               "oneOf": [prompt_text, {"type": "array", "items": token_id, "minItems": 1}]}),
    );
    only_with(schemas, "Common", "stream_options", "stream");
    only_with(schemas, "ChatBody", "top_logprobs", "logprobs");
    // `echo: true` with `logprobs` would need the prompt's log-probabilities (refused).
    if let Some(schema) = schemas
        .get_mut("CompletionBody")
        .and_then(Value::as_object_mut)
    {
        schema.insert(
            "if".into(),
            json!({"required": ["echo"], "properties": {"echo": {"const": true}}}),
        );
        schema.insert(
            "then".into(),
            json!({"properties": {"logprobs": {"type": "null"}}}),
        );
    }
    // A chat or a completion body (a body with both is read as chat), never streamed.
    if let Some(input) = schemas.get_mut("CmlGenerationInput") {
        let branches = input.get("oneOf").cloned().unwrap_or_else(|| json!([]));
        *input = json!({
            "description": "A chat body (messages) or a text-completion body (prompt), without streaming.",
            "allOf": [
                {"anyOf": branches},
                {"properties": {"stream": {"const": false}}},
            ],
        });
    }
    // Counts are parsed as unsigned 32- or 64-bit integers: larger values are refused.
    for schema in schemas.values_mut() {
        bound_unsigned(schema);
    }
    document
}

/// In schema `name`: `field`, when set and not null, only with `"flag": true` (OpenAI's
/// `stream_options` needs `stream`, `top_logprobs` needs `logprobs`).
fn only_with(schemas: &mut Map<String, Value>, name: &str, field: &str, flag: &str) {
    if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
        schema.insert(
            "if".into(),
            json!({"required": [field], "properties": {field: {"not": {"type": "null"}}}}),
        );
        schema.insert(
            "then".into(),
            json!({"required": [flag], "properties": {flag: {"const": true}}}),
        );
    }
}

/// The schema of one server-sent event (OpenAPI before 3.2 describes a stream by its events):
/// `data` is the JSON of schema `event`, or of the family's error body when generation fails
/// mid-stream, or `[DONE]` (OpenAI's last event) when `done`.
fn sse_event(event: &str, error: &str, done: bool) -> Value {
    let json_data = json!({
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [
            {"$ref": format!("#/components/schemas/{event}")},
            {"$ref": format!("#/components/schemas/{error}")},
        ]},
    });
    let data = if done {
        json!({"anyOf": [{"const": "[DONE]"}, json_data]})
    } else {
        json_data
    };
    json!({
        "description": format!("One server-sent event: `data` holds a {event} as JSON."),
        "type": "object",
        "required": ["data"],
        "properties": {"data": data, "event": {"const": "message"}},
    })
}

/// A property of an object schema, looked up in its `allOf` parts as well (serde's `flatten`).
fn property_mut<'a>(schema: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    if schema.pointer(&format!("/properties/{name}")).is_some() {
        return schema.pointer_mut(&format!("/properties/{name}"));
    }
    schema
        .get_mut("allOf")?
        .as_array_mut()?
        .iter_mut()
        .find_map(|part| part.get_mut("properties")?.get_mut(name))
}

/// Puts the largest value of its type on every unsigned integer (an integer with a
/// non-negative `minimum` and no `maximum`: 2^32-1 for a 32-bit `format`, else 2^64-1, as
/// utoipa writes no format for `usize`) in `schema`, however deep.
fn bound_unsigned(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
                _ => false,
            };
            let unsigned = integer
                && map
                    .get("minimum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| m >= 0.0)
                && !map.contains_key("maximum");
            let most = match map.get("format").and_then(Value::as_str) {
                _ if !unsigned => None,
                Some("int32" | "uint32") => Some(json!(u32::MAX)),
                _ => Some(json!(u64::MAX)),
            };
            if let Some(most) = most {
                map.insert("maximum".into(), most);
            }
            for value in map.values_mut() {
                bound_unsigned(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// The `Input` (texts) and `InputIds` (id sequences) schemas with their count bound,
/// `--max-client-batch-size`: what `/tokenize` and `/decode` (and the embedding routes) take, on
/// the embedding and the generation server alike.
pub(super) fn bound_inputs(schemas: &mut serde_json::Map<String, Value>, max_inputs: usize) {
    let string = json!({"type": "string"});
    let token_id = json!({"type": "integer", "minimum": 0, "maximum": u32::MAX});
    schemas.insert(
        "Input".into(),
        json!({
            "description": "One text, or a non-empty list of texts.",
            "oneOf": [
                string,
                {"type": "array", "items": string, "minItems": 1, "maxItems": max_inputs},
            ],
        }),
    );
    schemas.insert(
        "InputIds".into(),
        json!({
            "description": "One id sequence, or a non-empty list of them.",
            "oneOf": [
                {"type": "array", "items": token_id},
                {"type": "array", "items": {"type": "array", "items": token_id},
                 "minItems": 1, "maxItems": max_inputs},
            ],
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            max_inputs: 8,
            dimensions: 384,
            prompt_names: vec!["query".into()],
            model_id: "org/model".into(),
            kind: ModelKind::Embedding,
        }
    }

    #[test]
    fn decimal_below_matches_exactly_the_ids_under_the_bound() {
        for n in [
            1, 2, 9, 10, 11, 20, 99, 100, 101, 1000, 1234, 32_000, 49_152, 100_001,
        ] {
            let re = regex::Regex::new(&decimal_below(n)).expect("a valid pattern");
            for x in 0..(n + 1200).max(2 * n) {
                assert_eq!(re.is_match(&x.to_string()), x < n, "{x} against {n}");
            }
            for bad in ["", "-1", "+1", "00", "01", " 1", "1 ", "1.0", "1e2", "x"] {
                assert!(!re.is_match(bad), "{bad:?} against {n}");
            }
        }
    }

    #[test]
    fn document_states_the_model_bounds() {
        let doc = document_with(&bounds());
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Input"]["oneOf"][1]["maxItems"], 8);
        assert_eq!(schemas["Input"]["oneOf"][1]["minItems"], 1);
        for name in ["EmbedRequest", "OpenAiEmbeddingsRequest"] {
            let dimensions = &schemas[name]["properties"]["dimensions"];
            assert_eq!(dimensions["minimum"], 1, "{name}");
            assert_eq!(dimensions["maximum"], 384, "{name}");
        }
        assert_eq!(
            schemas["EmbedRequest"]["properties"]["prompt_name"]["enum"],
            json!(["query", null])
        );
        assert_eq!(
            schemas["EncodingFormat"]["enum"],
            json!(["float", "base64"])
        );
        let value = &schemas["OpenAiEmbeddingValue"];
        let kinds: Vec<&Value> = value["oneOf"]
            .as_array()
            .expect("embedding value is one of two shapes")
            .iter()
            .map(|v| &v["type"])
            .collect();
        assert_eq!(kinds, vec![&json!("array"), &json!("string")]);
        for path in [
            "/",
            "/embed",
            "/embed_all",
            "/similarity",
            "/decode",
            "/v1/models",
            "/v1/models/{id}",
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
    }
    #[test]
    fn each_kind_lists_its_task_routes_and_root_bodies() {
        let doc = |kind| document_with(&Bounds { kind, ..bounds() });
        let embedder = doc(ModelKind::Embedding);
        for path in ["/predict", "/rerank", "/embed_sparse"] {
            assert!(embedder["paths"].get(path).is_none(), "{path}");
        }
        let reranker = doc(ModelKind::Reranker);
        for path in [
            "/embed",
            "/embed_all",
            "/similarity",
            "/v1/embeddings",
            "/model",
        ] {
            assert!(reranker["paths"].get(path).is_none(), "{path}");
        }
        assert!(reranker["paths"]["/rerank"].is_object());
        assert!(reranker["paths"]["/predict"].is_object());
        assert_eq!(
            reranker["paths"]["/"]["post"]["responses"]["200"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/RerankResponse"
        );
        let schemas = &reranker["components"]["schemas"];
        assert_eq!(
            schemas["RerankRequest"]["properties"]["texts"]["maxItems"],
            8
        );
        assert_eq!(schemas["PredictInputs"]["anyOf"][2]["maxItems"], 8);
    }
}
