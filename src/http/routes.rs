//! Route handlers for the three API families (TEI, OpenAI, CML) and the operational routes. Each
//! handler parses its wire type, calls the core layer ([`crate::infer::Infer`]) and renders the
//! answer; errors go through [`ApiError::from_infer`].

use super::error::{ApiError, ApiFamily, ErrorKind};
use super::types::{
    AuthKind, CmlEmbeddings, CmlModelRequest, CmlModelResponse, DecodeRequest, DecodeResponse,
    EmbedAllRequest, EmbedAllResponse, EmbedRequest, EmbedResponse, EmbedSparseRequest,
    EmbedSparseResponse, EncodingFormat, ErrorBody, Info, InputIds, OpenAiEmbedding,
    OpenAiEmbeddingValue, OpenAiEmbeddingsRequest, OpenAiEmbeddingsResponse, OpenAiErrorBody,
    OpenAiModel, OpenAiModelList, OpenAiUsage, PredictRequest, PredictResponse, Prediction, Rank,
    RerankRequest, RerankResponse, RootRequest, RootResponse, SimilarityRequest,
    SimilarityResponse, SimpleToken, SparseValue, Status, TokenizeRequest, TokenizeResponse,
};
use super::AppState;
use crate::engine::EngineHealth;
use crate::infer::{EmbedOptions, Infer, InferError, ModelKind, ScoreOptions, Timings};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) type Body = Result<Bytes, BytesRejection>;

/// Reads the body, turning a failure into the family's 413/422 error.
pub(super) fn body_bytes(family: ApiFamily, body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
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
    })
}

/// Parses a JSON body, turning every failure into the family's 413/422 error.
pub(super) fn parse_body<T: DeserializeOwned>(
    family: ApiFamily,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = body_bytes(family, body)?;
    parse_json(family, &bytes)
}

/// Every request body is a JSON object (serde's derive would also take an array of the fields).
pub(super) fn parse_json<T: DeserializeOwned>(
    family: ApiFamily,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::validation(
            family,
            "request body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::validation(
            family,
            format!("request body is not valid JSON for this route: {e}"),
        )
    })
}

/// `x-*-time` headers in milliseconds.
fn timing_headers(timings: &Timings) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-tokenization-time", timings.tokenization),
        ("x-queue-time", timings.queue),
        ("x-inference-time", timings.inference),
        ("x-total-time", timings.started.elapsed()),
    ] {
        let millis = format!("{:.3}", value.as_secs_f64() * 1000.0);
        if let Ok(v) = HeaderValue::from_str(&millis) {
            headers.insert(name, v);
        }
    }
    headers
}

/// The core layer's error in `family`'s shape.
fn infer_error(family: ApiFamily) -> impl Fn(InferError) -> ApiError {
    move |error| ApiError::from_infer(family, error)
}

fn embed_options(infer: &Infer, request: &EmbedRequest) -> EmbedOptions {
    let defaults = infer.default_options();
    EmbedOptions {
        normalize: request.normalize.unwrap_or(defaults.normalize),
        truncate: request.truncate.unwrap_or(defaults.truncate),
        truncation_direction: request
            .truncation_direction
            .map_or(defaults.truncation_direction, Into::into),
        dimensions: request.dimensions,
        prompt_name: request.prompt_name.clone(),
    }
}

async fn embed_request(
    state: &AppState,
    family: ApiFamily,
    request: EmbedRequest,
) -> Result<(HeaderMap, Vec<Vec<f32>>, usize), ApiError> {
    let options = embed_options(&state.infer, &request);
    let outcome = state
        .infer
        .embed(request.inputs.into_vec(), &options)
        .await
        .map_err(infer_error(family))?;
    Ok((
        timing_headers(&outcome.timings),
        outcome.value,
        outcome.prompt_tokens,
    ))
}

async fn similarity_request(
    state: &AppState,
    request: SimilarityRequest,
) -> Result<(HeaderMap, Vec<f32>), ApiError> {
    let parameters = request.parameters.unwrap_or_default();
    let defaults = state.infer.default_options();
    let options = EmbedOptions {
        truncate: parameters.truncate.unwrap_or(defaults.truncate),
        truncation_direction: parameters
            .truncation_direction
            .map_or(defaults.truncation_direction, Into::into),
        prompt_name: parameters.prompt_name,
        ..defaults
    };
    let outcome = state
        .infer
        .similarity(
            request.inputs.source_sentence,
            request.inputs.sentences,
            &options,
        )
        .await
        .map_err(infer_error(ApiFamily::Tei))?;
    Ok((timing_headers(&outcome.timings), outcome.value))
}

/// TEI `POST /embed`: one vector per input.
#[utoipa::path(post, path = "/embed", request_body = EmbedRequest,
    responses((status = 200, description = "One vector per input", body = EmbedResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn embed(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let request: EmbedRequest = parse_body(ApiFamily::Tei, body)?;
    let (headers, vectors, _) = embed_request(&state, ApiFamily::Tei, request).await?;
    Ok((headers, Json(EmbedResponse(vectors))).into_response())
}

/// TEI's default route, answering as the served model's task: `/predict` for classifiers,
/// `/rerank` for re-rankers, `/embed_sparse` for SPLADE models; for an embedding model the same
/// as `/embed`, or, when `inputs` is an object (`{"source_sentence", "sentences"}`), the
/// sentence-similarity task as `/similarity`.
#[utoipa::path(post, path = "/", request_body = RootRequest,
    responses((status = 200, description = "The served task's answer: embeddings, similarities, predictions, ranks or sparse embeddings", body = RootResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 424, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn root(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let family = ApiFamily::Tei;
    let bytes = body_bytes(family, body)?;
    match state.infer.kind() {
        ModelKind::Classifier => {
            let (headers, response) = predict_request(&state, parse_json(family, &bytes)?).await?;
            Ok((headers, Json(response)).into_response())
        }
        ModelKind::Reranker => {
            let (headers, response) = rerank_request(&state, parse_json(family, &bytes)?).await?;
            Ok((headers, Json(response)).into_response())
        }
        ModelKind::SparseEmbedding => {
            let request = parse_json(family, &bytes)?;
            let (headers, response) = embed_sparse_request(&state, request).await?;
            Ok((headers, Json(response)).into_response())
        }
        ModelKind::Embedding | ModelKind::Generation => {
            let value: serde_json::Value = parse_json(family, &bytes)?;
            if value
                .get("inputs")
                .is_some_and(serde_json::Value::is_object)
            {
                let request: SimilarityRequest = parse_json(family, &bytes)?;
                let (headers, scores) = similarity_request(&state, request).await?;
                let body = RootResponse::Similarities(SimilarityResponse(scores));
                Ok((headers, Json(body)).into_response())
            } else {
                let request: EmbedRequest = parse_json(family, &bytes)?;
                let (headers, vectors, _) = embed_request(&state, family, request).await?;
                let body = RootResponse::Embeddings(EmbedResponse(vectors));
                Ok((headers, Json(body)).into_response())
            }
        }
    }
}

fn score_options(
    infer: &Infer,
    truncate: Option<bool>,
    direction: Option<super::types::TruncationDirection>,
    raw_scores: Option<bool>,
) -> ScoreOptions {
    let defaults = infer.default_options();
    ScoreOptions {
        truncate: truncate.unwrap_or(defaults.truncate),
        truncation_direction: direction.map_or(defaults.truncation_direction, Into::into),
        raw_scores: raw_scores.unwrap_or(false),
    }
}

async fn predict_request(
    state: &AppState,
    request: PredictRequest,
) -> Result<(HeaderMap, PredictResponse), ApiError> {
    let options = score_options(
        &state.infer,
        request.truncate,
        request.truncation_direction,
        request.raw_scores,
    );
    let outcome = state
        .infer
        .predict(request.inputs.inputs, &options)
        .await
        .map_err(infer_error(ApiFamily::Tei))?;
    let mut per_input: Vec<Vec<Prediction>> = outcome
        .value
        .into_iter()
        .map(|predictions| {
            predictions
                .into_iter()
                .map(|p| Prediction {
                    score: p.score,
                    label: p.label,
                })
                .collect()
        })
        .collect();
    let response = if request.inputs.batched {
        PredictResponse::Batch(per_input)
    } else {
        PredictResponse::Single(per_input.pop().unwrap_or_default())
    };
    Ok((timing_headers(&outcome.timings), response))
}

async fn rerank_request(
    state: &AppState,
    request: RerankRequest,
) -> Result<(HeaderMap, RerankResponse), ApiError> {
    let options = score_options(
        &state.infer,
        request.truncate,
        request.truncation_direction,
        request.raw_scores,
    );
    let texts = request
        .return_text
        .unwrap_or(false)
        .then(|| request.texts.clone());
    let outcome = state
        .infer
        .rerank(request.query, request.texts, &options)
        .await
        .map_err(infer_error(ApiFamily::Tei))?;
    let ranks = outcome
        .value
        .into_iter()
        .map(|rank| Rank {
            index: rank.index,
            text: texts.as_ref().and_then(|t| t.get(rank.index).cloned()),
            score: rank.score,
        })
        .collect();
    Ok((timing_headers(&outcome.timings), RerankResponse(ranks)))
}

async fn embed_sparse_request(
    state: &AppState,
    request: EmbedSparseRequest,
) -> Result<(HeaderMap, EmbedSparseResponse), ApiError> {
    let defaults = state.infer.default_options();
    let options = EmbedOptions {
        truncate: request.truncate.unwrap_or(defaults.truncate),
        truncation_direction: request
            .truncation_direction
            .map_or(defaults.truncation_direction, Into::into),
        prompt_name: request.prompt_name,
        ..defaults
    };
    let outcome = state
        .infer
        .embed_sparse(request.inputs.into_vec(), &options)
        .await
        .map_err(infer_error(ApiFamily::Tei))?;
    let vectors = outcome
        .value
        .into_iter()
        .map(|weights| {
            weights
                .into_iter()
                .map(|(index, value)| SparseValue {
                    index: index as usize,
                    value,
                })
                .collect()
        })
        .collect();
    Ok((
        timing_headers(&outcome.timings),
        EmbedSparseResponse(vectors),
    ))
}

/// TEI `POST /predict`: every label's score per text or pair, highest first. Classifiers and
/// re-rankers; 424 for other models.
#[utoipa::path(post, path = "/predict", request_body = PredictRequest,
    responses((status = 200, description = "Scores per label, per input", body = PredictResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 424, description = "The model is not a classifier", body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn predict(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let request: PredictRequest = parse_body(ApiFamily::Tei, body)?;
    let (headers, response) = predict_request(&state, request).await?;
    Ok((headers, Json(response)).into_response())
}

/// TEI `POST /rerank`: the texts ranked by relevance to the query, highest first. Re-rankers
/// (one-label cross-encoders); 424 for other models.
#[utoipa::path(post, path = "/rerank", request_body = RerankRequest,
    responses((status = 200, description = "Texts by relevance", body = RerankResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 424, description = "The model is not a re-ranker", body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn rerank(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let request: RerankRequest = parse_body(ApiFamily::Tei, body)?;
    let (headers, response) = rerank_request(&state, request).await?;
    Ok((headers, Json(response)).into_response())
}

/// TEI `POST /embed_sparse`: SPLADE weights per input, as (index, value) pairs. SPLADE models;
/// 424 for other models.
#[utoipa::path(post, path = "/embed_sparse", request_body = EmbedSparseRequest,
    responses((status = 200, description = "Non-zero weights per input", body = EmbedSparseResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 424, description = "The model is not a SPLADE model", body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn embed_sparse(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: EmbedSparseRequest = parse_body(ApiFamily::Tei, body)?;
    let (headers, response) = embed_sparse_request(&state, request).await?;
    Ok((headers, Json(response)).into_response())
}

/// TEI `POST /embed_all`: every token's final hidden state, per input.
#[utoipa::path(post, path = "/embed_all", request_body = EmbedAllRequest,
    responses((status = 200, description = "Per input, one vector per token", body = EmbedAllResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn embed_all(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::Tei;
    let request: EmbedAllRequest = parse_body(family, body)?;
    let defaults = state.infer.default_options();
    let options = EmbedOptions {
        truncate: request.truncate.unwrap_or(defaults.truncate),
        truncation_direction: request
            .truncation_direction
            .map_or(defaults.truncation_direction, Into::into),
        prompt_name: request.prompt_name,
        ..defaults
    };
    let outcome = state
        .infer
        .embed_all(request.inputs.into_vec(), &options)
        .await
        .map_err(infer_error(family))?;
    Ok((
        timing_headers(&outcome.timings),
        Json(EmbedAllResponse(outcome.value)),
    )
        .into_response())
}

/// TEI `POST /similarity` (Hugging Face sentence-similarity): cosine similarity of each sentence
/// with the source sentence.
#[utoipa::path(post, path = "/similarity", request_body = SimilarityRequest,
    responses((status = 200, description = "One similarity per sentence", body = SimilarityResponse),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn similarity(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: SimilarityRequest = parse_body(ApiFamily::Tei, body)?;
    let (headers, scores) = similarity_request(&state, request).await?;
    Ok((headers, Json(SimilarityResponse(scores))).into_response())
}

/// OpenAI `POST /v1/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", request_body = OpenAiEmbeddingsRequest,
    responses((status = 200, body = OpenAiEmbeddingsResponse),
              (status = 413, body = OpenAiErrorBody), (status = 422, body = OpenAiErrorBody),
              (status = 429, body = OpenAiErrorBody), (status = 500, body = OpenAiErrorBody),
              (status = 503, body = OpenAiErrorBody)))]
pub async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::OpenAi;
    let request: OpenAiEmbeddingsRequest = parse_body(family, body)?;
    let format = request.encoding_format.unwrap_or_default();
    let options = EmbedOptions {
        dimensions: request.dimensions,
        ..state.infer.default_options()
    };
    let outcome = state
        .infer
        .embed(request.input.into_vec(), &options)
        .await
        .map_err(infer_error(family))?;
    let data = outcome
        .value
        .into_iter()
        .enumerate()
        .map(|(index, vector)| OpenAiEmbedding {
            object: "embedding",
            embedding: match format {
                EncodingFormat::Float => OpenAiEmbeddingValue::Float(vector),
                EncodingFormat::Base64 => OpenAiEmbeddingValue::Base64(base64_vector(&vector)),
            },
            index,
        })
        .collect();
    let response = OpenAiEmbeddingsResponse {
        object: "list",
        data,
        model: request
            .model
            .unwrap_or_else(|| state.infer.model().model_id.clone()),
        usage: OpenAiUsage {
            prompt_tokens: outcome.prompt_tokens,
            total_tokens: outcome.prompt_tokens,
        },
    };
    Ok((timing_headers(&outcome.timings), Json(response)).into_response())
}

/// Little-endian f32 bytes, base64: what OpenAI clients decode for `encoding_format: base64`.
fn base64_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn openai_model(state: &AppState) -> OpenAiModel {
    OpenAiModel {
        id: state.infer.model().model_id.clone(),
        object: super::types::ModelObject::Model,
        created: state.infer.created(),
        owned_by: "sealserve",
    }
}

/// OpenAI `GET /v1/models`: the one embedded model.
#[utoipa::path(get, path = "/v1/models",
    responses((status = 200, body = OpenAiModelList)))]
pub async fn openai_models(State(state): State<Arc<AppState>>) -> Response {
    Json(OpenAiModelList {
        object: super::types::ListObject::List,
        data: vec![openai_model(&state)],
    })
    .into_response()
}

/// OpenAI `GET /v1/models/{id}`: the embedded model, 404 for any other id.
#[utoipa::path(get, path = "/v1/models/{id}",
    params(("id" = String, Path, description = "Model id, e.g. sentence-transformers/all-MiniLM-L6-v2")),
    responses((status = 200, body = OpenAiModel), (status = 404, body = OpenAiErrorBody)))]
pub async fn openai_model_by_id(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    model_if_named(openai_model(&state), &id)
}

/// The served model's object when `id` names it, else OpenAI's 404 (also for the generation
/// routes).
pub(super) fn model_if_named(model: OpenAiModel, id: &str) -> Result<Response, ApiError> {
    if id != model.id {
        return Err(ApiError::new(
            ApiFamily::OpenAi,
            ErrorKind::NotFound,
            format!("no model {id:?}: this server serves {:?}", model.id),
        ));
    }
    Ok(Json(model).into_response())
}

/// CML Models `POST /model`: `{"accessKey"?, "request": {...}}` → `{"success": true, "response"}`.
#[utoipa::path(post, path = "/model", request_body = CmlModelRequest,
    responses((status = 200, body = CmlModelResponse), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
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
    let (headers, embeddings, prompt_tokens) =
        embed_request(&state, family, request.request).await?;
    let response = CmlModelResponse {
        success: true,
        response: CmlEmbeddings {
            embeddings,
            model: state.infer.model().model_id.clone(),
            prompt_tokens,
        },
    };
    Ok((headers, Json(response)).into_response())
}

/// TEI `POST /tokenize`: tokens per input.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::Tei;
    let request: TokenizeRequest = parse_body(family, body)?;
    let tokens = state
        .infer
        .tokenize(
            request.inputs.into_vec(),
            request.truncate.unwrap_or(true),
            request.add_special_tokens.unwrap_or(true),
            request.prompt_name.as_deref(),
        )
        .await
        .map_err(infer_error(family))?;
    let tokens = tokens
        .into_iter()
        .map(|input| input.into_iter().map(SimpleToken::from).collect())
        .collect();
    Ok(Json(TokenizeResponse(tokens)).into_response())
}

/// TEI `POST /decode`: text per id sequence.
#[utoipa::path(post, path = "/decode", request_body = DecodeRequest,
    responses((status = 200, body = DecodeResponse), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn decode(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let family = ApiFamily::Tei;
    let request: DecodeRequest = parse_body(family, body)?;
    let sequences = match request.ids {
        InputIds::Single(ids) => vec![ids],
        InputIds::Batch(batch) => batch,
    };
    let texts = state
        .infer
        .decode(sequences, request.skip_special_tokens.unwrap_or(true))
        .await
        .map_err(infer_error(family))?;
    Ok(Json(DecodeResponse(texts)).into_response())
}

/// Liveness: the process is up and its inference thread still exists. A stopped engine thread
/// (it panicked outside a batch) never comes back, so this turns 503 and an orchestrator
/// restarts the process; a stuck one is reported here but left to `/ready`, because a batch
/// that is merely slow on a starved CPU finishes on its own and a restart would lose it.
#[utoipa::path(get, path = "/health", responses(
    (status = 200, description = "alive; `engine` says whether inference is running or stuck", body = Status),
    (status = 503, description = "the inference thread has stopped: restart the process", body = Status)))]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    health_response(state.infer.health())
}

/// The `/health` answer for an inference thread in state `engine`, for every router: 503 only
/// once the thread has stopped.
pub(crate) fn health_response(engine: EngineHealth) -> Response {
    if engine == EngineHealth::Stopped {
        let status = Status {
            status: "engine stopped",
            engine,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(status)).into_response()
    } else {
        Json(Status {
            status: "ok",
            engine,
        })
        .into_response()
    }
}

/// Readiness: verified, loaded, warmed up, not shutting down, and the inference thread running
/// (neither gone nor stuck on one batch for longer than [`crate::batcher::STUCK_AFTER`]). A flag
/// set once at start would keep routing traffic to a server whose engine died: requests would
/// queue and time out.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "ready", body = Status),
    (status = 503, description = "not ready: starting, shutting down, or `engine` stuck or stopped", body = Status)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    ready_response(state.ready.load(Ordering::Acquire), state.infer.health())
}

/// The `/ready` answer, for every router: 200 only when the server says it is `ready` (verified,
/// loaded, warmed up, not shutting down) and its inference thread is running.
pub(crate) fn ready_response(ready: bool, engine: EngineHealth) -> Response {
    if ready && engine == EngineHealth::Running {
        Json(Status {
            status: "ready",
            engine,
        })
        .into_response()
    } else {
        let status = Status {
            status: "not ready",
            engine,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(status)).into_response()
    }
}

/// What is being served: model, provenance, signature, device, limits, hardening, version.
#[utoipa::path(get, path = "/info", responses((status = 200, description = "server and model information", body = Info)))]
pub async fn info(State(state): State<Arc<AppState>>) -> Response {
    let model = state.infer.model();
    Json(Info {
        model_id: model.model_id.clone(),
        revision: model.revision.clone(),
        model_type: state.infer.kind(),
        family: model.family,
        labels: model.labels.clone(),
        pooling: model.pooling,
        normalize: model.normalize,
        dimensions: model.dimensions,
        max_input_tokens: model.max_input_tokens,
        prompts: model.prompts.clone(),
        default_prompt_name: model.default_prompt_name.clone(),
        manifest_sha256: state.bundle.manifest_sha256.clone(),
        key_fingerprint: state.bundle.key_fingerprint.clone(),
        key_id: state.bundle.key_id.clone(),
        signature: state.bundle.signature,
        trusted_keys_pinned: state.bundle.trusted_keys_pinned,
        trust: state.bundle.trust,
        bundle_load: state.bundle.load.clone(),
        device: model.device,
        device_reason: model.device_reason.clone(),
        dtype: model.dtype,
        max_forward_tokens: model.max_forward_tokens,
        limits: *state.infer.limits(),
        auth: if state.api_key.is_some() {
            AuthKind::Bearer
        } else {
            AuthKind::None
        },
        engine: state.infer.health(),
        hardening: state.hardening.clone(),
        version: env!("CARGO_PKG_VERSION"),
    })
    .into_response()
}

/// Prometheus exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(),
    )
        .into_response()
}

/// The OpenAPI document of this API, with the served model's limits written in.
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    Json(super::openapi::document_for(&state.infer)).into_response()
}

/// Generation routes on an embedding model: TEI's 424 for a route the model cannot serve
/// (as for another task's route) instead of a 404, so a client pointed at the wrong bundle
/// learns why.
pub async fn generation_only(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ApiFamily::for_path(uri.path()),
        ErrorKind::Unsupported,
        format!(
            "{} needs a generation model; this server runs an embedding model: use /v1/embeddings or /embed",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    #[test]
    fn generation_routes_on_an_embedding_model_answer_424_in_their_family_shape() {
        for (path, family) in [
            ("/v1/chat/completions", ApiFamily::OpenAi),
            ("/generate", ApiFamily::Tei),
        ] {
            let error = generation_only(path.parse().expect("uri"))
                .now_or_never()
                .expect("answers at once");
            assert_eq!(error.kind, ErrorKind::Unsupported, "{path}");
            assert_eq!(error.kind.status(), StatusCode::FAILED_DEPENDENCY, "{path}");
            assert_eq!(ApiFamily::for_path(path), family, "{path}");
            assert!(error.message.contains("generation model"), "{path}");
        }
    }
}
