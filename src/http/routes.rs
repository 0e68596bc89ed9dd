//! Route handlers for the three API families (TEI, OpenAI, CML) and the operational routes.

use super::embed::{self, EmbedOptions};
use super::error::{ApiError, ApiFamily, ErrorKind};
use super::types::{
    CmlEmbeddings, CmlModelRequest, CmlModelResponse, EmbedRequest, ErrorBody, OpenAiEmbedding,
    OpenAiEmbeddingsRequest, OpenAiEmbeddingsResponse, OpenAiUsage, TokenizeRequest,
};
use super::AppState;
use crate::engine::TokenInfo;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Body = Result<Bytes, BytesRejection>;

/// Parses a JSON body, turning every failure into the family's 413/422 error.
fn parse_body<T: DeserializeOwned>(family: ApiFamily, body: Body) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                family,
                ErrorKind::PayloadTooLarge,
                "request body is larger than the server's limit (--payload-limit)",
            )
        } else {
            ApiError::validation(
                family,
                format!("could not read the request body: {rejection}"),
            )
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::validation(
            family,
            format!("request body is not valid JSON for this route: {e}"),
        )
    })
}

fn options(state: &AppState, request: &EmbedRequest) -> EmbedOptions {
    EmbedOptions {
        normalize: request.normalize.unwrap_or(state.model.normalize),
        truncate: request.truncate.unwrap_or(true),
        dimensions: request.dimensions,
    }
}

/// TEI `POST /embed`: `[[f32]]`.
#[utoipa::path(post, path = "/embed", request_body = EmbedRequest,
    responses((status = 200, description = "One vector per input", body = Vec<Vec<f32>>),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn embed(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let request: EmbedRequest = parse_body(ApiFamily::Tei, body)?;
    let options = options(&state, &request);
    let outcome = embed::run(&state, ApiFamily::Tei, request.inputs.into_vec(), options).await?;
    Ok((outcome.timings.headers(), Json(outcome.vectors)).into_response())
}

/// OpenAI `POST /v1/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", request_body = OpenAiEmbeddingsRequest,
    responses((status = 200, body = OpenAiEmbeddingsResponse), (status = 413), (status = 422), (status = 429)))]
pub async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::OpenAi;
    let request: OpenAiEmbeddingsRequest = parse_body(family, body)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::validation(
                family,
                format!("encoding_format {other:?} is not supported; use \"float\" or \"base64\""),
            ))
        }
    };
    let options = EmbedOptions {
        normalize: state.model.normalize,
        truncate: true,
        dimensions: request.dimensions,
    };
    let outcome = embed::run(&state, family, request.input.into_vec(), options).await?;
    let data = outcome
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| OpenAiEmbedding {
            object: "embedding",
            embedding: if base64 {
                base64_vector(&vector).into()
            } else {
                vector.into()
            },
            index,
        })
        .collect();
    let response = OpenAiEmbeddingsResponse {
        object: "list",
        data,
        model: request
            .model
            .unwrap_or_else(|| state.model.model_id.clone()),
        usage: OpenAiUsage {
            prompt_tokens: outcome.prompt_tokens,
            total_tokens: outcome.prompt_tokens,
        },
    };
    Ok((outcome.timings.headers(), Json(response)).into_response())
}

/// Little-endian f32 bytes, base64: what OpenAI clients decode for `encoding_format: base64`.
fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// CML Models `POST /model`: `{"accessKey"?, "request": {...}}` → `{"success": true, "response"}`.
#[utoipa::path(post, path = "/model", request_body = CmlModelRequest,
    responses((status = 200, body = CmlModelResponse), (status = 422), (status = 429)))]
pub async fn cml_model(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::Cml;
    let header_ok = super::key_matches(state.api_key.as_deref(), super::bearer_token(&headers));
    let request: CmlModelRequest = parse_body(family, body).map_err(|e| {
        if header_ok {
            e
        } else {
            super::unauthorized(family)
        }
    })?;
    if !header_ok && !super::key_matches(state.api_key.as_deref(), request.access_key.as_deref()) {
        return Err(super::unauthorized(family));
    }
    let options = options(&state, &request.request);
    let outcome = embed::run(&state, family, request.request.inputs.into_vec(), options).await?;
    let response = CmlModelResponse {
        success: true,
        response: CmlEmbeddings {
            embeddings: outcome.vectors,
            model: state.model.model_id.clone(),
            prompt_tokens: outcome.prompt_tokens,
        },
    };
    Ok((outcome.timings.headers(), Json(response)).into_response())
}

/// TEI `POST /tokenize`: tokens per input.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = Vec<Vec<TokenInfo>>), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::Tei;
    let request: TokenizeRequest = parse_body(family, body)?;
    let inputs = request.inputs.into_vec();
    embed::check_inputs(&state, family, &inputs)?;
    // Admitted like /embed: tokenizing a request at the payload limit costs memory too.
    let _admission = state
        .batcher
        .admit()
        .map_err(|e| embed::batch_error(family, e))?;
    let truncate = request.truncate.unwrap_or(true);
    let tokens = embed::with_tokenizer(&state, family, move |tokenizer| {
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        tokenizer.describe(&refs, truncate)
    })
    .await?;
    Ok(Json(tokens).into_response())
}

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "alive")))]
pub async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Readiness: verified, loaded, warmed up and not shutting down.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready"})),
        )
            .into_response()
    }
}

/// What is being served: model, provenance, signature, device, limits, hardening, version.
#[utoipa::path(get, path = "/info", responses((status = 200, description = "server and model information")))]
pub async fn info(State(state): State<Arc<AppState>>) -> Response {
    Json(state.info_json()).into_response()
}

/// Prometheus exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(),
    )
        .into_response()
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Response {
    Json(super::openapi_document()).into_response()
}
