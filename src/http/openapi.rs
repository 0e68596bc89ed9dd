//! The OpenAPI 3.1 document: generated from the route and type annotations (utoipa), then made
//! exact for the served model: how many inputs a request may carry, how many `dimensions` the
//! model has, which `prompt_name`s exist. Clients and fuzzers (schemathesis) can rely on it:
//! what it allows is accepted, what it forbids is refused with 4xx.

use super::{routes, types};
use crate::infer::{Infer, ModelKind};
use serde_json::{json, Value};
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
    let token_id = json!({"type": "integer", "minimum": 0, "maximum": u32::MAX});
    schemas.insert(
        "Input".into(),
        json!({
            "description": "One text, or a non-empty list of texts.",
            "oneOf": [
                string,
                {"type": "array", "items": string, "minItems": 1, "maxItems": bounds.max_inputs},
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
                 "minItems": 1, "maxItems": bounds.max_inputs},
            ],
        }),
    );
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
