//! The HTTP service of a generation model: OpenAI's `/v1/chat/completions` and
//! `/v1/completions` (JSON, or server-sent events with `stream: true`), TGI's `/generate`,
//! `/generate_stream` and `POST /` (what `huggingface_hub.InferenceClient.text_generation`
//! sends), CML's `/model` with `{"request": {"prompt" | "messages", ...}}`, `/v1/models`, and the
//! operational routes (`/health`, `/ready`, `/info` with `"kind": "generation"`, `/metrics`,
//! `/openapi.json`). Auth, the body limit, the request log line and metrics, the panic guard and
//! the 404/405 bodies are the embedding router's (`super`). Does no inference itself: every
//! request goes to the [`Generator`]'s scheduler, whose channel it turns into one response or an
//! event stream; dropping the stream (client gone) cancels the request.

use super::error::{ApiError, ApiFamily, ErrorKind};
use super::openai_completions::{
    unix_now, ChatCompletion, ChatCompletionChunk, ChoiceResult, CompletionObject, CompletionUsage,
    LoggedToken, Reply, Shape, TextCompletion, TextCompletionChunk,
};
use super::routes::{body_bytes, Body};
use super::types::{
    AuthKind, DecodeRequest, DecodeResponse, InputIds, OpenAiModel, OpenAiModelList, SimpleToken,
    Status, TokenizeRequest, TokenizeResponse,
};
use super::BundleInfo;
use crate::engine::EngineHealth;
use crate::generate::sampling::MAX_TOP_LOGPROBS;
use crate::generate::{
    ChatMessage, Completion, Event, FinishReason, GenerateRequest, Generator, Prompt,
    SamplingParams, SubmitError, TokenLogprob,
};
use crate::harden::HardenReport;
use crate::limits::Limits;
use crate::telemetry;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, BoxStream, SelectAll, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc::UnboundedReceiver;

/// What the generation routes share.
pub struct GenerationState {
    pub generator: Generator,
    /// The model id shown in responses and /v1/models (the bundle's repo id).
    pub model_id: String,
    /// The pinned revision of the model's repo.
    pub revision: String,
    /// Provenance of the bundle, shown by /info.
    pub bundle: BundleInfo,
    /// The hardening in force.
    pub hardening: HardenReport,
    /// `payload_limit` bounds every body, `max_client_batch_size` the inputs of `/tokenize` and
    /// `/decode`; the batching and concurrency limits in force are the generator's config
    /// (`/info` shows those).
    pub limits: Limits,
    pub api_key: Option<String>,
    /// True once serving, false again when shutting down.
    pub ready: Arc<AtomicBool>,
}

/// The routes of a generation model. The embedding and other task routes answer TEI's 424
/// (`Unsupported`, as another task's route does on an embedding server) with a message saying
/// this server runs a generation model, so a client pointed at the wrong bundle learns why.
pub fn generation_router(state: Arc<GenerationState>) -> Router {
    telemetry::handle();
    serving_since();
    let protected = Router::new()
        .route("/", post(tgi_root))
        .route("/generate", post(tgi_generate))
        .route("/generate_stream", post(tgi_generate_stream))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        // Model ids contain '/', so the id is the rest of the path.
        .route("/v1/models/{*id}", get(model_by_id))
        .route("/tokenize", post(tokenize))
        .route("/decode", post(decode))
        .route("/info", get(info))
        .route("/metrics", get(super::routes::metrics))
        .route("/openapi.json", get(openapi))
        .route("/embed", post(wrong_kind))
        .route("/embed_all", post(wrong_kind))
        .route("/embed_sparse", post(wrong_kind))
        .route("/predict", post(wrong_kind))
        .route("/rerank", post(wrong_kind))
        .route("/similarity", post(wrong_kind))
        .route("/v1/embeddings", post(wrong_kind))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/model", post(cml_model))
        .merge(protected)
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.payload_limit.get()))
        .layer(middleware::from_fn(super::observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            super::panic_response,
        ))
        .with_state(state)
}

/// The Bearer check of every protected route (the embedding router's rule, over this state).
async fn require_api_key(
    State(state): State<Arc<GenerationState>>,
    request: Request,
    next: Next,
) -> Response {
    if super::key_matches(
        state.api_key.as_deref(),
        super::bearer_token(request.headers()),
    ) {
        next.run(request).await
    } else {
        super::unauthorized(ApiFamily::for_path(request.uri().path())).into_response()
    }
}

async fn wrong_kind(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    ApiError::new(
        ApiFamily::for_path(&path),
        ErrorKind::Unsupported,
        format!("{path} needs an embedding, classifier or re-ranker model; this server runs a generation model: use /v1/chat/completions, /v1/completions or /generate"),
    )
}

/// The scheduler thread's state in the shape the embedding engine reports: it is alive
/// (`running`) or gone (`stopped`); a stuck step is not detected for generation yet.
fn scheduler_health(state: &GenerationState) -> EngineHealth {
    if state.generator.is_running() {
        EngineHealth::Running
    } else {
        EngineHealth::Stopped
    }
}

/// Liveness: 503 once the generation thread is gone (only a restart helps).
#[utoipa::path(get, path = "/health", responses((status = 200, description = "alive", body = Status),
    (status = 503, description = "the generation thread has stopped", body = Status)))]
async fn health(State(state): State<Arc<GenerationState>>) -> Response {
    super::routes::health_response(scheduler_health(&state))
}

/// Readiness: serving, and the scheduler thread is alive.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "ready", body = Status),
    (status = 503, description = "not ready, or the generation thread has stopped", body = Status)))]
async fn ready(State(state): State<Arc<GenerationState>>) -> Response {
    super::routes::ready_response(
        state.ready.load(Ordering::Acquire),
        scheduler_health(&state),
    )
}

/// What a generation server serves: `kind` (and `model_type`) is always `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenerationKind {
    /// Text in, text out (chat and completions).
    Generation,
}

/// The generation scheduler thread: `running`, or `stopped` (it ended; the server is not ready).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerState {
    Running,
    Stopped,
}

/// `GET /info` of a generation server.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GenerationInfo {
    /// What runtime-image/cml_model.py routes on.
    pub kind: GenerationKind,
    /// The same value under the key the embedding server's /info uses.
    pub model_type: GenerationKind,
    pub model_id: String,
    pub revision: String,
    #[schema(value_type = String, example = "llama")]
    pub family: crate::spec::Family,
    /// Sequences decoded together (batch slots, `--max-batch-size`); more requests wait.
    pub max_batch: usize,
    /// Tokens one scheduler step runs (`--max-batch-tokens`): every decoding sequence's next
    /// token, then prompt chunks.
    pub max_step_tokens: usize,
    /// Prompt tokens of one sequence per step (a long prompt is prefilled in chunks between
    /// the others' decode steps).
    pub prefill_chunk: usize,
    /// Requests in flight, queued or generating (`--max-concurrent-requests`); more get 429.
    pub max_concurrent_requests: usize,
    /// Longest sequence, prompt plus generated tokens; longer requests get 422.
    pub max_context: usize,
    /// Tokens the sequences in batch slots may reserve together, prompt plus `max_tokens`
    /// each (`--max-batch-total-tokens`; without it, `max_batch × max_context`): requests
    /// wait in the queue until they fit.
    pub max_batch_total_tokens: usize,
    /// KV-cache bytes per token (all layers, keys and values): `max_batch_total_tokens` times
    /// this bounds the KV-cache memory.
    pub kv_cache_bytes_per_token: usize,
    /// Tokens in the vocabulary (valid prompt token ids are below it).
    pub vocab_size: usize,
    /// Whether the model carries a chat template (`/v1/chat/completions` needs one).
    pub chat_template: bool,
    /// Provenance: manifest digest, signing key, signature kind, trust (the embedding /info's
    /// fields of the same names).
    #[serde(flatten)]
    pub bundle: BundleInfo,
    /// Where the model runs: `cpu` (this project's kernels) or `cuda` (candle's GGUF kernels).
    #[schema(value_type = String, example = "cpu")]
    pub device: crate::engine::DeviceKind,
    /// On `cpu`, which of this project's kernels the CPU runs (`avx512-vnni`, `avx2`,
    /// `portable`; `SEALSERVE_LLM_ISA` may lower it); null on `cuda`.
    pub cpu_kernels: Option<crate::model::llama::quant::CpuKernels>,
    /// The limits in force, as on the embedding server: the batching ones are the scheduler's
    /// (`max_batch_size` = `max_batch`, `max_batch_tokens` = `max_step_tokens`).
    pub limits: Limits,
    pub auth: AuthKind,
    pub scheduler: SchedulerState,
    /// What hardening is in force (see `serve --help`, `--harden`).
    #[schema(value_type = Object)]
    pub hardening: HardenReport,
    pub version: &'static str,
}

/// What is being served: model, limits, provenance, hardening, version.
#[utoipa::path(get, path = "/info", responses((status = 200, description = "server and model information", body = GenerationInfo)))]
async fn info(State(state): State<Arc<GenerationState>>) -> Response {
    let config = state.generator.config();
    let model = state.generator.model();
    Json(GenerationInfo {
        kind: GenerationKind::Generation,
        model_type: GenerationKind::Generation,
        model_id: state.model_id.clone(),
        revision: state.revision.clone(),
        family: crate::spec::Family::Llama,
        max_batch: config.max_batch,
        max_step_tokens: config.max_step_tokens,
        prefill_chunk: config.prefill_chunk,
        max_concurrent_requests: config.max_concurrent_requests,
        max_context: config.max_context,
        max_batch_total_tokens: config.max_batch_total_tokens,
        kv_cache_bytes_per_token: model.model.kv_bytes_per_token(),
        vocab_size: model.tokenizer.vocab_size(),
        chat_template: model.chat_template.is_some(),
        bundle: state.bundle.clone(),
        device: crate::engine::DeviceKind::of(&model.model.device()),
        cpu_kernels: model.model.cpu_kernels(),
        limits: effective_limits(&state),
        auth: if state.api_key.is_some() {
            AuthKind::Bearer
        } else {
            AuthKind::None
        },
        scheduler: if state.generator.is_running() {
            SchedulerState::Running
        } else {
            SchedulerState::Stopped
        },
        hardening: state.hardening.clone(),
        version: env!("CARGO_PKG_VERSION"),
    })
    .into_response()
}

/// The limits in force: the flags' request limits with the scheduler's effective batching and
/// concurrency values (`Generator::start` may raise a step budget below the slots).
fn effective_limits(state: &GenerationState) -> Limits {
    let config = state.generator.config();
    let at_least_one =
        |n: usize| std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN);
    Limits {
        max_batch_size: at_least_one(config.max_batch),
        max_batch_tokens: at_least_one(config.max_step_tokens),
        max_concurrent_requests: at_least_one(config.max_concurrent_requests),
        ..state.limits
    }
}

/// Unix seconds when this process started serving (the first router built), which OpenAI
/// shows as the model's `created`.
fn serving_since() -> u64 {
    static CREATED: OnceLock<u64> = OnceLock::new();
    *CREATED.get_or_init(unix_now)
}

fn model_object(state: &GenerationState) -> OpenAiModel {
    OpenAiModel {
        id: state.model_id.clone(),
        object: super::types::ModelObject::Model,
        created: serving_since(),
        owned_by: "sealserve",
    }
}

/// OpenAI `GET /v1/models`: the one embedded model.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = OpenAiModelList)))]
async fn models(State(state): State<Arc<GenerationState>>) -> Response {
    Json(OpenAiModelList {
        object: super::types::ListObject::List,
        data: vec![model_object(&state)],
    })
    .into_response()
}

/// OpenAI `GET /v1/models/{id}`: the embedded model, 404 for any other id.
#[utoipa::path(get, path = "/v1/models/{id}",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = OpenAiModel), (status = 404, body = super::types::OpenAiErrorBody)))]
async fn model_by_id(
    State(state): State<Arc<GenerationState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    super::routes::model_if_named(model_object(&state), &id)
}

/// The input count rule of `/tokenize` and `/decode` (the embedding server's): at least one,
/// at most `--max-client-batch-size`.
fn check_count<T>(state: &GenerationState, items: &[T], what: &str) -> Result<(), ApiError> {
    let limit = state.limits.max_client_batch_size.get();
    if items.is_empty() {
        return Err(tgi_invalid(format!("{what} must not be empty")));
    }
    if items.len() > limit {
        return Err(ApiError::new(
            ApiFamily::Tei,
            ErrorKind::TooManyInputs,
            format!(
                "{} {what} in one request, over the limit of {limit} (--max-client-batch-size); send fewer per request",
                items.len()
            ),
        ));
    }
    Ok(())
}

/// Runs tokenizer work on the blocking pool, one per core at a time (the embedding server's
/// rule, `infer::TOKENIZING`): a body at the payload limit takes long enough to stall an async
/// worker, and hundreds at once would hold hundreds of copies.
async fn on_tokenizer<T: Send + 'static>(
    state: &Arc<GenerationState>,
    work: impl FnOnce(&GenerationState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let slot = crate::infer::TOKENIZING
        .acquire()
        .await
        .map_err(|e| tgi_failed(format!("tokenizer slots closed: {e}")))?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let result = work(&state);
        drop(slot);
        result
    })
    .await
    .map_err(|e| tgi_failed(format!("tokenizer task failed: {e}")))?
}

/// TEI `POST /tokenize` with the GGUF's tokenizer: the tokens of each input (id, text,
/// `special`, byte span), the ids a completion prompt of that text gets. Inputs longer than the
/// context are cut to it (`truncate`, default) or refused (`"truncate": false`, 422).
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody)))]
async fn tokenize(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: TokenizeRequest = super::routes::parse_body(ApiFamily::Tei, body)?;
    if request.prompt_name.is_some() {
        return Err(tgi_invalid(
            "prompt_name does not apply to a generation model (it has no sentence-transformers prompts); remove it",
        ));
    }
    let inputs = request.inputs.into_vec();
    check_count(&state, &inputs, "inputs")?;
    let truncate = request.truncate.unwrap_or(true);
    let add_special_tokens = request.add_special_tokens.unwrap_or(true);
    let tokens = on_tokenizer(&state, move |state| {
        let model = state.generator.model();
        let limit = state.generator.config().max_context;
        inputs
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let mut tokens = model
                    .describe_tokens(text, add_special_tokens)
                    .map_err(|e| tgi_invalid(format!("input {index}: {e}")))?;
                if tokens.len() > limit {
                    if !truncate {
                        return Err(ApiError::new(
                            ApiFamily::Tei,
                            ErrorKind::TooLong,
                            format!(
                                "input {index} is {} tokens, over the {limit}-token context; send shorter text or allow truncation",
                                tokens.len()
                            ),
                        ));
                    }
                    tokens.truncate(limit);
                }
                Ok(tokens.into_iter().map(SimpleToken::from).collect())
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(TokenizeResponse(tokens)).into_response())
}

/// TEI `POST /decode` with the GGUF's tokenizer: the text of each id sequence (ids outside
/// the vocabulary are skipped, as on the embedding server).
#[utoipa::path(post, path = "/decode", request_body = DecodeRequest,
    responses((status = 200, body = DecodeResponse),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody)))]
async fn decode(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: DecodeRequest = super::routes::parse_body(ApiFamily::Tei, body)?;
    let sequences = match request.ids {
        InputIds::Single(ids) => vec![ids],
        InputIds::Batch(batch) => batch,
    };
    check_count(&state, &sequences, "ids")?;
    let skip = request.skip_special_tokens.unwrap_or(true);
    let texts = on_tokenizer(&state, move |state| {
        let tokenizer = &state.generator.model().tokenizer;
        Ok(sequences
            .iter()
            .map(|ids| tokenizer.decode(ids, skip))
            .collect())
    })
    .await?;
    Ok(Json(DecodeResponse(texts)).into_response())
}

/// A stop field: one string or a list (OpenAI allows both).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The range a sampling number must be in, checked on the number as sent (f64: what JSON
/// Schema's bounds in /openapi.json mean) before it is narrowed to the engine's f32, so a value
/// just outside a bound is refused and one just inside is never rounded onto or past it. The
/// bounds are 0, 1 and 2, whose neighbours serde_json parses exactly; no bound sits at f32's
/// largest value, whose neighbours it may parse one step off (it does not round-trip every
/// float), so unbounded numbers beyond f32's range act as its largest.
struct Range {
    name: &'static str,
    low: f64,
    /// Whether `low` itself is allowed.
    low_inclusive: bool,
    /// None: any finite number (beyond f32's range it acts as f32's largest).
    high: Option<f64>,
}

const TEMPERATURE: Range = Range {
    name: "temperature",
    low: 0.0,
    low_inclusive: true,
    high: None,
};
const TGI_TEMPERATURE: Range = Range {
    low_inclusive: false,
    ..TEMPERATURE
};
const TOP_P: Range = Range {
    name: "top_p",
    low: 0.0,
    low_inclusive: false,
    high: Some(1.0),
};
const TYPICAL_P: Range = Range {
    name: "typical_p",
    low: 0.0,
    low_inclusive: false,
    high: Some(1.0),
};
const MIN_P: Range = Range {
    name: "min_p",
    low: 0.0,
    low_inclusive: true,
    high: Some(1.0),
};
const REPETITION_PENALTY: Range = Range {
    name: "repetition_penalty",
    low: 0.0,
    low_inclusive: false,
    high: None,
};
const FREQUENCY_PENALTY: Range = Range {
    name: "frequency_penalty",
    low: -2.0,
    low_inclusive: true,
    high: Some(2.0),
};
const PRESENCE_PENALTY: Range = Range {
    name: "presence_penalty",
    ..FREQUENCY_PENALTY
};

impl Range {
    /// `value` (or `default` when absent) checked against the range, then as f32 inside it.
    fn narrow(&self, value: Option<f64>, default: f32) -> Result<f32, String> {
        let Some(v) = value else {
            return Ok(default);
        };
        let above_low = if self.low_inclusive {
            v >= self.low
        } else {
            v > self.low
        };
        if !(v.is_finite() && above_low && self.high.is_none_or(|high| v <= high)) {
            let open = if self.low_inclusive { '[' } else { '(' };
            let high = self.high.map_or("inf)".to_string(), |h| format!("{h}]"));
            return Err(format!(
                "{} must be in {open}{}, {high}, got {v}",
                self.name, self.low
            ));
        }
        // Bounds are f32 values; rounding may only land on an excluded low bound.
        let low = self.low as f32;
        let high = self.high.map_or(f32::MAX, |h| h as f32);
        let narrowed = (v as f32).clamp(low, high);
        Ok(if !self.low_inclusive && narrowed <= low {
            low.next_up()
        } else {
            narrowed
        })
    }
}

/// Fields shared by both routes (OpenAI names; `top_k`, `min_p`, `repetition_penalty` as vLLM
/// and TGI accept them).
#[derive(Deserialize, utoipa::ToSchema)]
struct Common {
    #[serde(default)]
    model: Option<String>,
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 1)]
    max_tokens: Option<usize>,
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 1)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    temperature: Option<f64>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "super::types::whole")]
    top_k: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    min_p: Option<f64>,
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    repetition_penalty: Option<f64>,
    #[serde(default, deserialize_with = "super::types::whole")]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    /// Choices to generate (1–16, and at most `--max-concurrent-requests`): each is its own
    /// sequence in the batch, sampled with `seed + index` when a seed is given.
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 1, maximum = 16)]
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default, deserialize_with = "super::types::object_or_null")]
    stream_options: Option<StreamOptions>,
    /// Token id (a string of digits) → bias from −100 to 100, added to that token's logit
    /// before sampling (±100 bans or forces it).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    logit_bias: Option<Value>,
    /// vLLM's extension: generate past the model's end-of-sequence token, until `max_tokens`,
    /// a stop string or a `stop_token_ids` token (benchmarks use it for fixed-length answers).
    #[serde(default)]
    ignore_eos: Option<bool>,
    /// vLLM's extension: token ids that end a choice too (`finish_reason` `stop`; the token is
    /// not in the text).
    #[serde(default, deserialize_with = "super::types::whole_list_or_null")]
    stop_token_ids: Option<Vec<u32>>,
}

/// Message content: a string, or a list of parts of which only text is accepted.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(#[serde(deserialize_with = "super::types::objects")] Vec<Part>),
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ChatBody {
    #[serde(deserialize_with = "super::types::objects")]
    messages: Vec<Message>,
    /// The log-probability of each generated token in `choices[0].logprobs.content`.
    #[serde(default)]
    logprobs: Option<bool>,
    /// With `logprobs: true`: this many most likely tokens at each step too (0–20).
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 0, maximum = 20)]
    top_logprobs: Option<usize>,
    /// Function calling is not supported: absent, null or empty (refused otherwise).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Value>,
    /// Absent, null, `"none"` or `"auto"` (there are no tools to call).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    tool_choice: Option<Value>,
    /// The deprecated form of `tools`: absent, null or empty.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    functions: Option<Value>,
    /// The deprecated form of `tool_choice`: absent, null, `"none"` or `"auto"`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    function_call: Option<Value>,
    /// Only `{"type": "text"}`: the output is not constrained to JSON or a schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    response_format: Option<Value>,
    #[serde(flatten)]
    common: Common,
}

/// A completion prompt: one text, or one prompt's token ids.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum CompletionPrompt {
    Text(String),
    Tokens(#[serde(deserialize_with = "super::types::whole_list")] Vec<u32>),
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CompletionBody {
    prompt: CompletionPrompt,
    /// The log-probability of each generated token and of this many most likely tokens at each
    /// step (0–20) in `choices[0].logprobs`.
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 0, maximum = 20)]
    logprobs: Option<usize>,
    /// Put the prompt's text before each choice's text (not with `logprobs`: the prompt's
    /// log-probabilities are not computed).
    #[serde(default)]
    echo: Option<bool>,
    /// Not supported (no insertion): absent, null or empty.
    #[serde(default)]
    suffix: Option<String>,
    /// Only 1: one candidate per request.
    #[serde(default, deserialize_with = "super::types::whole")]
    best_of: Option<usize>,
    #[serde(flatten)]
    common: Common,
}

/// A parameter this server cannot honour, set to something other than its no-op value: refused
/// with 422 rather than ignored, so a client never takes an unconstrained answer for a
/// constrained one.
fn unsupported(name: &str, why: &str) -> ApiError {
    invalid(format!("`{name}` is not supported by this server: {why}"))
}

/// OpenAI's `logit_bias` object as `(token id, bias)` sorted by id: keys are token ids written
/// as decimal strings, values numbers in [−100, 100] (whether an id is in the vocabulary is
/// checked when the request is queued, and by the document's pattern). Anything else is refused
/// with a message naming it.
fn logit_bias(value: Option<Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let fields = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            return Err(invalid(format!(
                "logit_bias must be an object mapping token ids to biases, like {{\"123\": -100}}; got {other}"
            )))
        }
    };
    let mut out = Vec::with_capacity(fields.len());
    for (key, bias) in fields {
        // Digits only, no sign and no leading zero (the document's pattern): one spelling
        // per token.
        let canonical =
            key.bytes().all(|b| b.is_ascii_digit()) && (key == "0" || !key.starts_with('0'));
        let id = key
            .parse::<u32>()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| {
                invalid(format!(
                    "logit_bias keys must be token ids in decimal without leading zeros (see /tokenize); got {key:?}"
                ))
            })?;
        let bias = bias
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                invalid(format!(
                    "logit_bias of token {id} must be a number in [-100, 100]; got {bias}"
                ))
            })?;
        out.push((id, bias as f32));
    }
    // Keys are unique and canonical, so the ids are too.
    out.sort_unstable_by_key(|&(id, _)| id);
    Ok(out)
}

/// Why a field this server does not read would change the answer if a client relied on it:
/// vLLM's and OpenAI's parameters beyond those implemented here. Unknown fields are otherwise
/// let through (clients send `user`, `metadata` and the like); these are refused with 422
/// unless null or their no-op value, so nobody takes free text for guided JSON or a truncated
/// prompt for the whole one. `chat`: the field is on a chat body.
fn unhonoured(name: &str, value: &Value, chat: bool) -> Option<&'static str> {
    let number = |want: f64| value.as_f64() == Some(want);
    let flag = |want: bool| value.as_bool() == Some(want);
    if value.is_null() {
        return None;
    }
    // An empty list or object asks for nothing either (no documents, no processors).
    let nothing = match value {
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    };
    match name {
        "guided_json"
        | "guided_regex"
        | "guided_choice"
        | "guided_grammar"
        | "guided_decoding_backend"
        | "guided_whitespace_pattern"
        | "structural_tag" => Some(
            "guided decoding is not implemented, so the output would not follow the constraint",
        ),
        "min_tokens" if !number(0.0) => {
            Some("there is no minimum length: the end token may come first")
        }
        "use_beam_search" if !flag(false) => Some("beam search is not implemented"),
        "length_penalty" if !number(1.0) => Some("beam search is not implemented"),
        "include_stop_str_in_output" if !flag(false) => {
            Some("a stop string is always left out of the text")
        }
        "skip_special_tokens" if !flag(true) => {
            Some("special tokens are always left out of the text")
        }
        "truncate_prompt_tokens" => {
            Some("prompts are never truncated: one longer than the context is refused")
        }
        "prompt_logprobs" => Some("log-probabilities of the prompt are not computed"),
        "allowed_token_ids" => Some("use logit_bias to ban or force tokens"),
        "bad_words" if !nothing => Some("use logit_bias to ban their tokens"),
        "logits_processors" if !nothing => Some("custom logits processors are not loaded"),
        "return_tokens_as_token_ids" if !flag(false) => Some("tokens are returned as text"),
        "prediction" => Some("predicted outputs are not implemented"),
        "audio" => Some("this model generates text only"),
        "modalities" if value != &json!(["text"]) => Some("this model generates text only"),
        "web_search_options" => Some("there is no web search"),
        "chat_template" if chat => Some("the chat template is the sealed model's own"),
        "chat_template_kwargs" if chat && !nothing => {
            Some("the chat template is the sealed model's own, rendered with its own variables")
        }
        "add_generation_prompt" if chat && !flag(true) => {
            Some("the rendered conversation always ends with the assistant's turn opened")
        }
        "continue_final_message" if chat && !flag(false) => {
            Some("a new assistant message is always started")
        }
        "documents" if chat && !nothing => Some("documents are not passed to the chat template"),
        "echo" if chat && !flag(false) => Some("the answer holds the generated text only"),
        "best_of" if chat && !number(1.0) => Some("one candidate is generated per choice"),
        _ => None,
    }
}

/// [`unhonoured`] over an OpenAI body's top-level fields: the first one refused.
fn refuse_unhonoured(body: &Value, chat: bool) -> Result<(), ApiError> {
    let Some(fields) = body.as_object() else {
        return Ok(());
    };
    match fields
        .iter()
        .find_map(|(name, value)| unhonoured(name, value, chat).map(|why| (name, why)))
    {
        Some((name, why)) => Err(unsupported(name, why)),
        None => Ok(()),
    }
}

/// Absent, null, `[]` or `{}`.
fn empty(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(fields)) => fields.is_empty(),
        Some(_) => false,
    }
}

/// Absent, null, `"none"` or `"auto"`: a tool choice that calls nothing when there are no tools.
fn calls_nothing(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s == "none" || s == "auto",
        Some(_) => false,
    }
}

fn checked_top(n: usize, name: &str) -> Result<usize, ApiError> {
    if n > MAX_TOP_LOGPROBS {
        return Err(invalid(format!(
            "{name} must be at most {MAX_TOP_LOGPROBS}, got {n}"
        )));
    }
    Ok(n)
}

impl ChatBody {
    /// Refuses what this server cannot honour; the number of alternatives per token when the
    /// request asks for log-probabilities.
    fn checked_logprobs(&self) -> Result<Option<usize>, ApiError> {
        for (name, tools) in [("tools", &self.tools), ("functions", &self.functions)] {
            if !empty(tools) {
                return Err(unsupported(
                    name,
                    "function calling is not implemented; send the conversation without tools",
                ));
            }
        }
        for (name, choice) in [
            ("tool_choice", &self.tool_choice),
            ("function_call", &self.function_call),
        ] {
            if !calls_nothing(choice) {
                return Err(unsupported(
                    name,
                    "there are no tools to call; use \"none\" or leave it out",
                ));
            }
        }
        let text_format = match &self.response_format {
            None | Some(Value::Null) => true,
            Some(format) => format.get("type").and_then(Value::as_str) == Some("text"),
        };
        if !text_format {
            return Err(unsupported(
                "response_format",
                "the output cannot be constrained to JSON or a schema; only {\"type\": \"text\"}",
            ));
        }
        match (self.logprobs == Some(true), self.top_logprobs) {
            (true, n) => checked_top(n.unwrap_or(0), "top_logprobs").map(Some),
            (false, Some(_)) => Err(invalid("top_logprobs needs logprobs: true")),
            (false, None) => Ok(None),
        }
    }
}

impl CompletionBody {
    /// As [`ChatBody::checked_logprobs`].
    fn checked_logprobs(&self) -> Result<Option<usize>, ApiError> {
        if self.echo == Some(true) && self.logprobs.is_some() {
            return Err(unsupported(
                "echo",
                "with logprobs it needs the prompt's log-probabilities, which are not computed; ask for echo or logprobs",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(
                "suffix",
                "text is only generated after the prompt, not inserted before a suffix",
            ));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(unsupported(
                "best_of",
                "one candidate is generated per request",
            ));
        }
        self.logprobs
            .map(|n| checked_top(n, "logprobs"))
            .transpose()
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(ApiFamily::OpenAi, message)
}

/// An OpenAI body: a JSON object of the route's type (the embedding routes' rule).
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    super::routes::parse_json(ApiFamily::OpenAi, bytes)
}

fn submit_error(error: SubmitError) -> ApiError {
    let kind = match &error {
        SubmitError::QueueFull { .. } => ErrorKind::Overloaded,
        SubmitError::ContextLength { .. } => ErrorKind::TooLong,
        SubmitError::ShuttingDown => ErrorKind::Unavailable,
        SubmitError::EmptyPrompt
        | SubmitError::InvalidParameter(_)
        | SubmitError::Chat(_)
        | SubmitError::Tokenizer(_) => ErrorKind::Validation,
    };
    ApiError::new(ApiFamily::OpenAi, kind, error.to_string())
}

impl Common {
    /// The engine's request; `logprobs` = alternatives per token when log-probabilities are
    /// asked for.
    fn request(self, prompt: Prompt, logprobs: Option<usize>) -> Result<GenerateRequest, ApiError> {
        let logit_bias = logit_bias(self.logit_bias)?;
        let d = SamplingParams::default();
        let number = |range: &Range, value, default| range.narrow(value, default).map_err(invalid);
        let sampling = SamplingParams {
            temperature: number(&TEMPERATURE, self.temperature, d.temperature)?,
            top_p: number(&TOP_P, self.top_p, d.top_p)?,
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: number(&MIN_P, self.min_p, d.min_p)?,
            typical_p: d.typical_p,
            repetition_penalty: number(
                &REPETITION_PENALTY,
                self.repetition_penalty,
                d.repetition_penalty,
            )?,
            frequency_penalty: number(
                &FREQUENCY_PENALTY,
                self.frequency_penalty,
                d.frequency_penalty,
            )?,
            presence_penalty: number(&PRESENCE_PENALTY, self.presence_penalty, d.presence_penalty)?,
            seed: self.seed,
            logprobs,
            logit_bias,
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.iter().any(String::is_empty) {
            return Err(invalid("stop strings must not be empty"));
        }
        Ok(GenerateRequest {
            prompt,
            sampling,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop,
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// The conversation of a chat request, text parts only.
fn chat_prompt(messages: Vec<Message>) -> Result<Prompt, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let content = match message.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(invalid(format!(
                                "message content part of type {kind:?} is not supported: this model reads text only"
                            )))
                        }
                    }
                }
                text
            }
        };
        out.push(ChatMessage {
            role: message.role,
            content,
        });
    }
    if out.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    Ok(Prompt::Chat(out))
}

/// OpenAI chat completions: JSON, or server-sent `chat.completion.chunk`s ending in `[DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatBody,
    responses((status = 200, description = "A `chat.completion` object; with `stream: true`, `text/event-stream`: one `data:` event per `chat.completion.chunk`, then `data: [DONE]`",
                content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
              (status = 401, body = super::types::OpenAiErrorBody), (status = 413, body = super::types::OpenAiErrorBody),
              (status = 422, body = super::types::OpenAiErrorBody), (status = 429, body = super::types::OpenAiErrorBody),
              (status = 503, body = super::types::OpenAiErrorBody)))]
async fn chat_completions(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(ApiFamily::OpenAi, body)?;
    let body: ChatBody = parse(&bytes)?;
    refuse_unhonoured(&parse(&bytes)?, true)?;
    let logprobs = body.checked_logprobs()?;
    let prompt = chat_prompt(body.messages)?;
    run(state, Shape::Chat, body.common, prompt, logprobs, None).await
}

/// OpenAI text completions: JSON, or server-sent `text_completion` chunks ending in `[DONE]`.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionBody,
    responses((status = 200, description = "A `text_completion` object; with `stream: true`, `text/event-stream`: one `data:` event per `text_completion` chunk, then `data: [DONE]`",
                content((TextCompletion = "application/json"), (TextCompletionChunk = "text/event-stream"))),
              (status = 401, body = super::types::OpenAiErrorBody), (status = 413, body = super::types::OpenAiErrorBody),
              (status = 422, body = super::types::OpenAiErrorBody), (status = 429, body = super::types::OpenAiErrorBody),
              (status = 503, body = super::types::OpenAiErrorBody)))]
async fn completions(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(ApiFamily::OpenAi, body)?;
    let body: CompletionBody = parse(&bytes)?;
    refuse_unhonoured(&parse(&bytes)?, false)?;
    let logprobs = body.checked_logprobs()?;
    let echo = body.echo == Some(true);
    let prompt: Prompt = body.prompt.into();
    let echo = echo.then(|| prompt.clone());
    run(state, Shape::Text, body.common, prompt, logprobs, echo).await
}

impl From<CompletionPrompt> for Prompt {
    fn from(prompt: CompletionPrompt) -> Self {
        match prompt {
            CompletionPrompt::Text(text) => Prompt::Text(text),
            CompletionPrompt::Tokens(ids) => Prompt::Tokens(ids),
        }
    }
}

/// Most choices (`n`) one OpenAI request may ask for. Each is a sequence of its own (its own
/// prefill and KV cache), so `n` multiplies the request's cost; 16 is the default batch.
pub const MAX_CHOICES: usize = 16;

/// The most choices a request may ask for on this server: [`MAX_CHOICES`], and no more than the
/// requests it takes at once (a larger `n` could never be admitted).
fn max_choices(state: &GenerationState) -> usize {
    MAX_CHOICES.min(state.generator.config().max_concurrent_requests)
}

/// Validates an OpenAI request and queues its choices: one event receiver per choice, the
/// reply's identity, and whether the client asked for a stream. The choices are queued one by
/// one; if one is refused (the queue is full), those already queued are dropped, which cancels
/// them, and the request fails as a whole.
fn submit(
    state: &GenerationState,
    shape: Shape,
    common: Common,
    prompt: Prompt,
    logprobs: Option<usize>,
) -> Result<(Vec<UnboundedReceiver<Event>>, Reply, bool), ApiError> {
    let stream = common.stream;
    let include_usage = common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if common.stream_options.is_some() && !stream {
        return Err(invalid("stream_options is only allowed with stream: true"));
    }
    let model = common
        .model
        .clone()
        .unwrap_or_else(|| state.model_id.clone());
    let n = common.n.unwrap_or(1);
    let most = max_choices(state);
    if !(1..=most).contains(&n) {
        let why = if most < MAX_CHOICES {
            format!(
                "each choice is a request of its own and this server takes {most} at once \
                 (--max-concurrent-requests)"
            )
        } else {
            "each choice is a sequence of its own".to_string()
        };
        return Err(invalid(format!(
            "n must be between 1 and {most} ({why}), got {n}"
        )));
    }
    let request = common.request(prompt, logprobs)?;
    let mut receivers = Vec::with_capacity(n);
    for index in 0..n as u64 {
        let mut choice = request.clone();
        // Different draws per choice, and choice 0 is what n = 1 gives with the same seed.
        choice.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(index));
        receivers.push(state.generator.submit(choice).map_err(submit_error)?);
    }
    let reply = Reply::new(shape, model, include_usage, logprobs.is_some());
    Ok((receivers, reply, stream))
}

/// `echo`: the prompt to put before each choice's text (`echo: true` on text completions).
async fn run(
    state: Arc<GenerationState>,
    shape: Shape,
    common: Common,
    prompt: Prompt,
    logprobs: Option<usize>,
    echo: Option<Prompt>,
) -> Result<Response, ApiError> {
    let (receivers, mut reply, stream) = submit(&state, shape, common, prompt, logprobs)?;
    reply.echo = echo.map(|prompt| echo_text(&state, prompt));
    if stream {
        Ok(Sse::new(events(state, receivers, reply)).into_response())
    } else {
        let choices = collect_all(&state, receivers).await?;
        Ok(Json(reply.complete(&choices)).into_response())
    }
}

/// The text `echo: true` puts first: the prompt as sent, or its token ids decoded (special
/// tokens included, as they are part of the prompt). Called once the request was queued, so
/// the ids are known to be in the vocabulary.
fn echo_text(state: &GenerationState, prompt: Prompt) -> String {
    match prompt {
        Prompt::Text(text) => text,
        Prompt::Tokens(ids) => state.generator.model().tokenizer.decode(&ids, false),
        Prompt::Chat(_) => String::new(),
    }
}

/// The generated tokens' log-probabilities as the OpenAI objects show them: token texts from
/// the tokenizer, and `text_offset` from the text the events have carried so far.
struct TokenLog {
    state: Arc<GenerationState>,
    /// Characters of the answer so far.
    chars: usize,
    /// Tokens not yet sent.
    pending: Vec<LoggedToken>,
}

impl TokenLog {
    fn new(state: Arc<GenerationState>) -> Self {
        Self {
            state,
            chars: 0,
            pending: Vec::new(),
        }
    }

    /// One token event: its log-probability (a new token; none for text held back and
    /// released at the end, or when not asked for) and the text it completed.
    /// Control tokens (the end of turn) have no text and no entry, so the entries' texts add
    /// up to the answer's text.
    fn token(&mut self, text: &str, logprob: Option<&TokenLogprob>) {
        let tokenizer = &self.state.generator.model().tokenizer;
        if let Some(lp) = logprob.filter(|lp| !tokenizer.is_special(lp.id)) {
            let piece = |id: u32| {
                let bytes = tokenizer.token_bytes(id).to_vec();
                (String::from_utf8_lossy(&bytes).into_owned(), bytes)
            };
            let (token, bytes) = piece(lp.id);
            self.pending.push(LoggedToken {
                token,
                bytes,
                logprob: lp.logprob,
                top: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let (token, bytes) = piece(id);
                        (token, bytes, logprob)
                    })
                    .collect(),
                text_offset: self.chars,
            });
        }
        self.chars += text.chars().count();
    }

    fn take(&mut self) -> Vec<LoggedToken> {
        std::mem::take(&mut self.pending)
    }
}

/// Every choice's end, in index order; the first failure fails the request (and dropping the
/// other receivers cancels their choices).
async fn collect_all(
    state: &Arc<GenerationState>,
    receivers: Vec<UnboundedReceiver<Event>>,
) -> Result<Vec<ChoiceResult>, ApiError> {
    futures_util::future::try_join_all(receivers.into_iter().map(|rx| collect(state, rx))).await
}

async fn collect(
    state: &Arc<GenerationState>,
    mut rx: UnboundedReceiver<Event>,
) -> Result<ChoiceResult, ApiError> {
    let mut log = TokenLog::new(state.clone());
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token { text, logprob, .. } => log.token(&text, logprob.as_ref()),
            Event::Done(done) => return Ok((done, log.take())),
            Event::Error(e) => {
                return Err(ApiError::new(
                    ApiFamily::OpenAi,
                    ErrorKind::Internal,
                    format!("generation failed: {e}"),
                ))
            }
        }
    }
    Err(ApiError::new(
        ApiFamily::OpenAi,
        ErrorKind::Unavailable,
        "the generator stopped before the request finished",
    ))
}

/// One choice's next event, tagged with its index; `None` when its channel closed.
type Tagged = (u32, Option<Event>);

/// State of one request's event stream (all its choices).
struct Streaming {
    /// Every choice's events, merged in arrival order; each channel ends with a `None`.
    events: SelectAll<BoxStream<'static, Tagged>>,
    reply: Reply,
    /// Per choice: its log-probabilities not yet sent.
    logs: Vec<TokenLog>,
    /// The choices that ended, for the usage.
    done: Vec<Completion>,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

fn data(value: &impl Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

fn server_error(message: impl std::fmt::Display) -> SseEvent {
    data(&json!({"error": {
        "message": message.to_string(),
        "type": "server_error", "param": null, "code": null}}))
}

/// The SSE stream of one request: for chat, a first chunk with the role per choice; one chunk
/// per non-empty text delta of a choice (its `index` says which), as the choices advance; a
/// chunk with each choice's finish reason; after the last choice ends, the usage chunk when
/// asked, then `[DONE]`. An engine error ends the stream with an OpenAI error object. Dropping
/// the stream drops every choice's receiver, which cancels them in the scheduler.
fn events(
    state: Arc<GenerationState>,
    receivers: Vec<UnboundedReceiver<Event>>,
    reply: Reply,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let mut pending = VecDeque::new();
    let mut logs = Vec::with_capacity(receivers.len());
    let mut merged = Vec::with_capacity(receivers.len());
    for (index, rx) in (0u32..).zip(receivers) {
        match (&reply.shape, &reply.echo) {
            (Shape::Chat, _) => {
                pending.push_back(data(&reply.chunk(index, Some(""), true, None, &[])));
            }
            (Shape::Text, Some(prompt)) => {
                pending.push_back(data(&reply.chunk(index, Some(prompt), false, None, &[])));
            }
            (Shape::Text, None) => {}
        }
        logs.push(TokenLog::new(state.clone()));
        let events = stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                // A choice's stream ends after its Done or Error: a `None` means its channel
                // closed before either.
                Some(event) => {
                    let last = matches!(event, Event::Done(_) | Event::Error(_));
                    Some((Some(event), (!last).then_some(rx)))
                }
                None => Some((None, None)),
            }
        });
        merged.push(events.map(move |event| (index, event)).boxed());
    }
    let state = Streaming {
        events: stream::select_all(merged),
        reply,
        logs,
        done: Vec::new(),
        pending,
        finished: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            if s.finished {
                return None;
            }
            let Some((index, event)) = s.events.next().await else {
                // Every choice ended (each one's Done handled below).
                return None;
            };
            let log = &mut s.logs[index as usize];
            match event {
                Some(Event::Token { text, logprob, .. }) => {
                    // A token whose text is held back (half a character, the start of a stop
                    // string) sends its log-probability with the next event that has text.
                    log.token(&text, logprob.as_ref());
                    if !text.is_empty() {
                        let tokens = log.take();
                        s.pending.push_back(data(&s.reply.chunk(
                            index,
                            Some(&text),
                            false,
                            None,
                            &tokens,
                        )));
                    }
                }
                Some(Event::Done(done)) => {
                    let tokens = log.take();
                    s.pending.push_back(data(&s.reply.chunk(
                        index,
                        None,
                        false,
                        Some(done.finish_reason),
                        &tokens,
                    )));
                    s.done.push(done);
                    if s.done.len() == s.logs.len() {
                        if s.reply.include_usage {
                            let usage = CompletionUsage::of(&s.done);
                            s.pending.push_back(data(&s.reply.usage_chunk(usage)));
                        }
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        s.finished = true;
                    }
                }
                Some(Event::Error(e)) => {
                    s.pending
                        .push_back(server_error(format!("generation failed: {e}")));
                    s.finished = true;
                }
                None => {
                    s.pending.push_back(server_error(
                        "the generator stopped before the request finished",
                    ));
                    s.finished = true;
                }
            }
        }
    })
}

/// CML Models `POST /model` on a generation model: `{"accessKey"?, "request": {...}}` where the
/// request is an OpenAI chat (`messages`) or text completion (`prompt`) body without streaming;
/// the answer is `{"success": true, "response": <the OpenAI object>}`.
#[derive(Deserialize, utoipa::ToSchema)]
struct CmlGenerationRequest {
    /// CML's key in the body, accepted instead of the Authorization header.
    #[serde(rename = "accessKey", default)]
    access_key: Option<String>,
    request: CmlGenerationInput,
}

/// A chat body (has `messages`) or a text-completion body (has `prompt`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum CmlGenerationInput {
    Chat(ChatBody),
    Text(CompletionBody),
}

/// CML's answer around the OpenAI object.
#[derive(Serialize, utoipa::ToSchema)]
struct CmlGenerationResponse {
    /// Always true (errors use CML's error body and an HTTP error status).
    success: bool,
    /// The `chat.completion` or `text_completion` object.
    response: CompletionObject,
}

/// CML Models `POST /model` for a generation model.
#[utoipa::path(post, path = "/model", request_body = CmlGenerationRequest,
    responses((status = 200, body = CmlGenerationResponse),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody), (status = 429, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
async fn cml_model(
    State(state): State<Arc<GenerationState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let family = ApiFamily::Cml;
    let in_cml = |e: ApiError| ApiError::new(family, e.kind, e.message);
    let header_ok = super::key_matches(state.api_key.as_deref(), super::bearer_token(&headers));
    let parsed = body_bytes(family, body).and_then(|bytes| {
        let value: Value = parse(&bytes).map_err(in_cml)?;
        // Say which field is missing rather than serde's "did not match any variant".
        let has = |key: &str| value.pointer(&format!("/request/{key}")).is_some();
        if !has("messages") && !has("prompt") {
            return Err(ApiError::validation(
                family,
                "body must be {\"request\": {\"messages\": [...]}} (chat) or {\"request\": {\"prompt\": \"...\"}} (text completion)",
            ));
        }
        // Checked once the caller is known to be authorised (below).
        let refused = refuse_unhonoured(&value["request"], has("messages"));
        serde_json::from_value::<CmlGenerationRequest>(value)
            .map(|request| (request, refused))
            .map_err(|e| {
                ApiError::validation(
                    family,
                    format!("request is not a valid chat or completion body: {e}"),
                )
            })
    });
    let (request, refused) = match parsed {
        Ok(parsed) => parsed,
        // Without a valid header the caller learns nothing but that it is not authorised.
        Err(_) if !header_ok => return Err(super::unauthorized(family)),
        Err(e) => return Err(e),
    };
    if !header_ok && !super::key_matches(state.api_key.as_deref(), request.access_key.as_deref()) {
        return Err(super::unauthorized(family));
    }
    refused.map_err(in_cml)?;
    let mut echo = false;
    let (shape, common, prompt, logprobs) = match request.request {
        CmlGenerationInput::Chat(body) => {
            let logprobs = body.checked_logprobs().map_err(in_cml)?;
            (
                Shape::Chat,
                body.common,
                chat_prompt(body.messages),
                logprobs,
            )
        }
        CmlGenerationInput::Text(body) => {
            let logprobs = body.checked_logprobs().map_err(in_cml)?;
            echo = body.echo == Some(true);
            (Shape::Text, body.common, Ok(body.prompt.into()), logprobs)
        }
    };
    if common.stream {
        return Err(ApiError::validation(
            family,
            "stream is not supported on /model: use /v1/chat/completions for server-sent events",
        ));
    }
    let prompt = prompt.map_err(in_cml)?;
    let echo = echo.then(|| prompt.clone());
    let (receivers, mut reply, _) =
        submit(&state, shape, common, prompt, logprobs).map_err(in_cml)?;
    reply.echo = echo.map(|prompt| echo_text(&state, prompt));
    let choices = collect_all(&state, receivers).await.map_err(in_cml)?;
    Ok(Json(CmlGenerationResponse {
        success: true,
        response: reply.complete(&choices),
    })
    .into_response())
}

/// TGI's generation request (`/generate`, `/generate_stream`, `POST /`), as
/// `huggingface_hub.InferenceClient.text_generation` sends it.
#[derive(Deserialize, utoipa::ToSchema)]
struct TgiRequest {
    inputs: String,
    #[serde(default, deserialize_with = "super::types::object")]
    parameters: TgiParameters,
    /// `POST /` streams when true; `/generate` and `/generate_stream` ignore it.
    #[serde(default)]
    stream: Option<bool>,
}

/// TGI's `parameters`. Those this server cannot honour are refused (422) when set, never
/// silently ignored; unknown names are refused too.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TgiParameters {
    /// Only 1 (or absent).
    #[serde(default, deserialize_with = "super::types::whole")]
    best_of: Option<usize>,
    /// Only false.
    #[serde(default)]
    decoder_input_details: Option<bool>,
    /// Add `details` (finish reason, token ids, logprobs) to the answer.
    #[serde(default)]
    details: Option<bool>,
    /// Sample instead of greedy decoding; also implied by temperature != 1, top_k, top_p < 1.
    #[serde(default)]
    do_sample: Option<bool>,
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    frequency_penalty: Option<f64>,
    /// Tokens to generate at most; absent = up to the context limit.
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 1)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    repetition_penalty: Option<f64>,
    /// Put the prompt before the generated text in `generated_text`.
    #[serde(default)]
    return_full_text: Option<bool>,
    #[serde(default, deserialize_with = "super::types::whole")]
    seed: Option<u64>,
    /// Stop strings; generation ends before the first one (it is not in the text).
    #[serde(default)]
    stop: Option<Vec<String>>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "super::types::whole")]
    top_k: Option<usize>,
    /// The most likely tokens at each step (0–20) in `details.top_tokens` (streamed: each
    /// event's `top_tokens`).
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 0, maximum = 20)]
    top_n_tokens: Option<u32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    top_p: Option<f64>,
    /// Keep only the last this many tokens of `inputs` (at least 1).
    #[serde(default, deserialize_with = "super::types::whole")]
    #[schema(minimum = 1)]
    truncate: Option<usize>,
    /// Locally typical sampling: keep the tokens nearest the entropy, this much probability
    /// (1 = off; below 1 turns sampling on, as TGI does).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    typical_p: Option<f64>,
    /// Only false.
    #[serde(default)]
    watermark: Option<bool>,
    /// Not supported (refused when set).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    grammar: Option<Value>,
    /// Not supported (refused when set).
    #[serde(default)]
    adapter_id: Option<String>,
}

/// One generated token as TGI reports it.
#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
struct TgiToken {
    id: u32,
    /// The text this token completed (empty for an end token, or half a character whose rest
    /// comes with the next token); the texts of all tokens add up to `generated_text`.
    text: String,
    logprob: f32,
    /// An end-of-sequence or other special token.
    special: bool,
}

/// TGI's finish reasons.
#[derive(Serialize, Clone, Copy, Debug, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum TgiFinishReason {
    Length,
    EosToken,
    StopSequence,
}

/// `details` of a `/generate` answer.
#[derive(Serialize, utoipa::ToSchema)]
struct TgiDetails {
    finish_reason: TgiFinishReason,
    generated_tokens: usize,
    seed: Option<u64>,
    /// Prompt tokens with logprobs: always empty (`decoder_input_details` is not supported).
    prefill: Vec<TgiToken>,
    tokens: Vec<TgiToken>,
    /// With `top_n_tokens`: per generated token, the most likely tokens at that step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_tokens: Vec<Vec<TgiToken>>,
}

/// `POST /generate`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct TgiResponse {
    generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<TgiDetails>,
}

/// `details` of the last streamed event.
#[derive(Serialize, utoipa::ToSchema)]
struct TgiStreamDetails {
    finish_reason: TgiFinishReason,
    generated_tokens: usize,
    seed: Option<u64>,
    input_length: usize,
}

/// One `/generate_stream` event (`data: {...}`); the last carries `generated_text` (and
/// `details` when asked for).
#[derive(Serialize, utoipa::ToSchema)]
struct TgiStreamResponse {
    index: usize,
    token: TgiToken,
    /// With `top_n_tokens`: the most likely tokens at this token's step (null otherwise).
    top_tokens: Option<Vec<TgiToken>>,
    generated_text: Option<String>,
    details: Option<TgiStreamDetails>,
}

fn tgi_invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(ApiFamily::Tei, message)
}

/// A validated TGI request, queued.
struct TgiSubmitted {
    rx: UnboundedReceiver<Event>,
    details: bool,
    seed: Option<u64>,
    /// The prompt when `return_full_text` asks for it in `generated_text`.
    prefix: String,
    eos: Option<u32>,
    /// `top_n_tokens` asked for (0 = none).
    top_n: usize,
    /// The tokenizer's texts for the top tokens.
    state: Arc<GenerationState>,
}

/// A generated token and, with `top_n_tokens`, the most likely tokens at its step.
struct TgiStep {
    token: TgiToken,
    top: Vec<TgiToken>,
}

fn tgi_submit(
    state: &Arc<GenerationState>,
    bytes: &[u8],
) -> Result<(TgiSubmitted, bool), ApiError> {
    let request: TgiRequest = super::routes::parse_json(ApiFamily::Tei, bytes)?;
    let p = request.parameters;
    let refuse = |name: &str, set: bool| -> Result<(), ApiError> {
        if set {
            Err(tgi_invalid(format!(
                "parameter `{name}` is not supported by this server"
            )))
        } else {
            Ok(())
        }
    };
    refuse("best_of", p.best_of.is_some_and(|n| n != 1))?;
    refuse(
        "decoder_input_details",
        p.decoder_input_details == Some(true),
    )?;
    let top_n = p.top_n_tokens.unwrap_or(0) as usize;
    if top_n > MAX_TOP_LOGPROBS {
        return Err(tgi_invalid(format!(
            "`top_n_tokens` must be at most {MAX_TOP_LOGPROBS}, got {top_n}"
        )));
    }
    refuse("watermark", p.watermark == Some(true))?;
    refuse("grammar", p.grammar.is_some())?;
    refuse("adapter_id", p.adapter_id.is_some())?;
    let number = |range: &Range, value, default| range.narrow(value, default).map_err(tgi_invalid);
    let temperature = number(&TGI_TEMPERATURE, p.temperature, 1.0)?;
    // TGI samples when asked to, or when any warper is set; otherwise it decodes greedily.
    let warpers = p.temperature.is_some_and(|t| t != 1.0)
        || p.top_k.is_some_and(|k| k > 0)
        || p.top_p.is_some_and(|t| t < 1.0)
        || p.typical_p.is_some_and(|t| t < 1.0);
    let sample = p.do_sample.unwrap_or(false) || warpers;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: if sample { temperature } else { 0.0 },
        top_p: number(&TOP_P, p.top_p, defaults.top_p)?,
        top_k: p.top_k.unwrap_or(defaults.top_k),
        min_p: defaults.min_p,
        typical_p: number(&TYPICAL_P, p.typical_p, defaults.typical_p)?,
        repetition_penalty: number(
            &REPETITION_PENALTY,
            p.repetition_penalty,
            defaults.repetition_penalty,
        )?,
        frequency_penalty: number(
            &FREQUENCY_PENALTY,
            p.frequency_penalty,
            defaults.frequency_penalty,
        )?,
        presence_penalty: defaults.presence_penalty,
        seed: p.seed,
        // The chosen token's logprob (TGI reports it for every token) and `top_n_tokens`.
        logprobs: Some(top_n),
        // TGI's parameters have no token biases.
        logit_bias: Vec::new(),
    };
    let stop = p.stop.unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(tgi_invalid("stop strings must not be empty"));
    }
    let prefix = if p.return_full_text == Some(true) {
        request.inputs.clone()
    } else {
        String::new()
    };
    let submit_failed = |e: SubmitError| {
        let e = submit_error(e);
        ApiError::new(ApiFamily::Tei, e.kind, e.message)
    };
    // TGI's `truncate`: only the last tokens of the input are kept (the start is dropped).
    let prompt = match p.truncate {
        None => Prompt::Text(request.inputs),
        Some(0) => return Err(tgi_invalid("`truncate` must be at least 1")),
        Some(keep) => {
            let ids = state
                .generator
                .prompt_tokens(&Prompt::Text(request.inputs))
                .map_err(submit_failed)?;
            Prompt::Tokens(ids[ids.len().saturating_sub(keep)..].to_vec())
        }
    };
    let generate = GenerateRequest {
        prompt,
        sampling,
        max_tokens: p.max_new_tokens,
        stop,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
    };
    let rx = state.generator.submit(generate).map_err(submit_failed)?;
    Ok((
        TgiSubmitted {
            rx,
            details: p.details == Some(true),
            seed: p.seed,
            prefix,
            eos: state.generator.model().tokenizer.eos(),
            top_n,
            state: state.clone(),
        },
        request.stream == Some(true),
    ))
}

/// TGI's finish reason of a completion: a stop that ended on the end token is `eos_token`,
/// any other stop a stop sequence.
fn tgi_finish(done: &Completion, eos: Option<u32>) -> TgiFinishReason {
    match done.finish_reason {
        FinishReason::Length => TgiFinishReason::Length,
        FinishReason::Stop if done.tokens.last().copied() == eos && eos.is_some() => {
            TgiFinishReason::EosToken
        }
        FinishReason::Stop => TgiFinishReason::StopSequence,
    }
}

/// Folds token events into TGI tokens: the text flushed after the last token (held back while
/// it could have been a stop string's start) belongs to that token.
fn tgi_fold(
    steps: &mut Vec<TgiStep>,
    submitted: &TgiSubmitted,
    id: u32,
    text: String,
    logprob: Option<TokenLogprob>,
) {
    match (steps.last_mut(), logprob) {
        (Some(last), None) if last.token.id == id => last.token.text.push_str(&text),
        (_, logprob) => {
            let tokenizer = &submitted.state.generator.model().tokenizer;
            let top = match &logprob {
                Some(lp) if submitted.top_n > 0 => lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| TgiToken {
                        id,
                        text: String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned(),
                        logprob,
                        special: tokenizer.is_special(id),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            steps.push(TgiStep {
                token: TgiToken {
                    id,
                    text,
                    logprob: logprob.map_or(0.0, |l| l.logprob),
                    special: Some(id) == submitted.eos,
                },
                top,
            })
        }
    }
}

fn tgi_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(ApiFamily::Tei, ErrorKind::Internal, message)
}

/// The whole answer of a TGI request.
async fn tgi_collect(mut submitted: TgiSubmitted) -> Result<TgiResponse, ApiError> {
    let mut steps = Vec::new();
    while let Some(event) = submitted.rx.recv().await {
        match event {
            Event::Token { id, text, logprob } => {
                tgi_fold(&mut steps, &submitted, id, text, logprob)
            }
            Event::Done(done) => {
                let top_n = submitted.top_n;
                let details = submitted.details.then(|| {
                    let (tokens, top_tokens): (Vec<_>, Vec<_>) =
                        steps.into_iter().map(|s| (s.token, s.top)).unzip();
                    TgiDetails {
                        finish_reason: tgi_finish(&done, submitted.eos),
                        generated_tokens: done.usage.completion_tokens,
                        seed: submitted.seed,
                        prefill: Vec::new(),
                        tokens,
                        top_tokens: if top_n > 0 { top_tokens } else { Vec::new() },
                    }
                });
                return Ok(TgiResponse {
                    generated_text: submitted.prefix + &done.text,
                    details,
                });
            }
            Event::Error(e) => return Err(tgi_failed(format!("generation failed: {e}"))),
        }
    }
    Err(ApiError::new(
        ApiFamily::Tei,
        ErrorKind::Unavailable,
        "the generator stopped before the request finished",
    ))
}

/// State of one TGI event stream: the latest token is held back until the next event shows
/// whether more text belongs to it or it is the last one (which carries `generated_text`).
struct TgiStreaming {
    submitted: TgiSubmitted,
    held: Vec<TgiStep>,
    index: usize,
    finished: bool,
}

fn tgi_event(value: &impl Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

fn tgi_error_event(message: String) -> SseEvent {
    tgi_event(&json!({"error": message, "error_type": "generation"}))
}

/// TGI's `/generate_stream`: one `data:` event per token, the last with `generated_text` (and
/// `details` when asked for). Dropping the stream (client gone) cancels the request.
fn tgi_events(submitted: TgiSubmitted) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = TgiStreaming {
        submitted,
        held: Vec::new(),
        index: 0,
        finished: false,
    };
    stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        loop {
            match s.submitted.rx.recv().await {
                Some(Event::Token { id, text, logprob }) => {
                    tgi_fold(&mut s.held, &s.submitted, id, text, logprob);
                    if s.held.len() > 1 {
                        let step = s.held.remove(0);
                        s.index += 1;
                        let event = TgiStreamResponse {
                            index: s.index,
                            token: step.token,
                            top_tokens: (s.submitted.top_n > 0).then_some(step.top),
                            generated_text: None,
                            details: None,
                        };
                        return Some((Ok(tgi_event(&event)), s));
                    }
                }
                Some(Event::Done(done)) => {
                    s.finished = true;
                    let Some(step) = s.held.pop() else {
                        return Some((Ok(tgi_error_event("no token was generated".into())), s));
                    };
                    s.index += 1;
                    let details = s.submitted.details.then(|| TgiStreamDetails {
                        finish_reason: tgi_finish(&done, s.submitted.eos),
                        generated_tokens: done.usage.completion_tokens,
                        seed: s.submitted.seed,
                        input_length: done.usage.prompt_tokens,
                    });
                    let event = TgiStreamResponse {
                        index: s.index,
                        token: step.token,
                        top_tokens: (s.submitted.top_n > 0).then_some(step.top),
                        generated_text: Some(std::mem::take(&mut s.submitted.prefix) + &done.text),
                        details,
                    };
                    return Some((Ok(tgi_event(&event)), s));
                }
                Some(Event::Error(e)) => {
                    s.finished = true;
                    return Some((Ok(tgi_error_event(format!("generation failed: {e}"))), s));
                }
                None => {
                    s.finished = true;
                    let message = "the generator stopped before the request finished".to_string();
                    return Some((Ok(tgi_error_event(message)), s));
                }
            }
        }
    })
}

/// TGI `POST /generate`: the generated text (and `details` when asked for).
#[utoipa::path(post, path = "/generate", request_body = TgiRequest,
    responses((status = 200, body = TgiResponse),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody), (status = 429, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
async fn tgi_generate(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let (submitted, _) = tgi_submit(&state, &body_bytes(ApiFamily::Tei, body)?)?;
    Ok(Json(tgi_collect(submitted).await?).into_response())
}

/// TGI `POST /generate_stream`: server-sent events, one per token.
#[utoipa::path(post, path = "/generate_stream", request_body = TgiRequest,
    responses((status = 200, description = "`text/event-stream`: one `data:` event per token; the last carries `generated_text`", body = TgiStreamResponse, content_type = "text/event-stream"),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody), (status = 429, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
async fn tgi_generate_stream(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let (submitted, _) = tgi_submit(&state, &body_bytes(ApiFamily::Tei, body)?)?;
    Ok(Sse::new(tgi_events(submitted)).into_response())
}

/// TGI's `POST /`: `/generate`, or `/generate_stream` when the body says `"stream": true` (what
/// `InferenceClient(model=<url>).text_generation` posts).
#[utoipa::path(post, path = "/", request_body = TgiRequest,
    responses((status = 200, description = "As /generate, or with `\"stream\": true` as /generate_stream", body = TgiResponse),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody), (status = 429, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
async fn tgi_root(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let (submitted, stream) = tgi_submit(&state, &body_bytes(ApiFamily::Tei, body)?)?;
    if stream {
        Ok(Sse::new(tgi_events(submitted)).into_response())
    } else {
        Ok(Json(tgi_collect(submitted).await?).into_response())
    }
}

/// The OpenAPI document of a generation server.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sealserve (generation)",
        description = "Text generation from a signed, embedded model: OpenAI-, TGI- and CML-compatible."
    ),
    paths(
        tgi_root,
        tgi_generate,
        tgi_generate_stream,
        chat_completions,
        completions,
        models,
        model_by_id,
        tokenize,
        decode,
        cml_model,
        health,
        ready,
        info,
        super::routes::metrics
    ),
    components(schemas(
        ChatBody,
        Message,
        Content,
        Part,
        Common,
        Stop,
        StreamOptions,
        CompletionBody,
        CompletionPrompt,
        CmlGenerationRequest,
        CmlGenerationInput,
        CmlGenerationResponse,
        CompletionObject,
        ChatCompletion,
        ChatCompletionChunk,
        TextCompletion,
        TextCompletionChunk,
        super::openai_completions::ChatCompletionObject,
        super::openai_completions::ChatCompletionChunkObject,
        super::openai_completions::TextCompletionObject,
        super::openai_completions::AssistantRole,
        super::openai_completions::OpenAiFinishReason,
        super::openai_completions::CompletionUsage,
        super::openai_completions::ChatCompletionMessage,
        super::openai_completions::ChatCompletionChoice,
        super::openai_completions::ChatCompletionDelta,
        super::openai_completions::ChatCompletionChunkChoice,
        super::openai_completions::TextCompletionChoice,
        super::openai_completions::TextCompletionChunkChoice,
        TgiRequest,
        TgiParameters,
        TgiToken,
        TgiFinishReason,
        TgiDetails,
        TgiResponse,
        TgiStreamDetails,
        TgiStreamResponse,
        super::types::OpenAiModel,
        super::types::OpenAiModelList,
        TokenizeRequest,
        TokenizeResponse,
        SimpleToken,
        super::types::Input,
        DecodeRequest,
        DecodeResponse,
        InputIds,
        super::BundleInfo,
        GenerationInfo,
        GenerationKind,
        SchedulerState,
        super::types::OpenAiError,
        super::types::OpenAiErrorBody,
        super::types::ErrorBody,
        super::types::Status,
        super::types::SignatureKind,
        super::types::AuthKind,
        Limits
    ))
)]
struct GenerationApiDoc;

/// The OpenAPI document of the generation routes.
pub fn generation_openapi_document() -> utoipa::openapi::OpenApi {
    <GenerationApiDoc as utoipa::OpenApi>::openapi()
}

/// The OpenAPI document of this API, made exact for the served model and limits.
async fn openapi(State(state): State<Arc<GenerationState>>) -> Response {
    let document = serde_json::to_value(generation_openapi_document()).unwrap_or(Value::Null);
    let bounds = super::openapi::GenerationBounds {
        max_inputs: state.limits.max_client_batch_size.get(),
        vocab_size: state.generator.model().tokenizer.vocab_size(),
        model_id: state.model_id.clone(),
        max_choices: max_choices(&state),
        dropped_chars: (0u8..0x80)
            .map(char::from)
            .filter(|c| {
                state
                    .generator
                    .prompt_tokens(&Prompt::Text(c.to_string()))
                    .is_ok_and(|ids| ids.is_empty())
            })
            .collect(),
    };
    Json(super::openapi::exact_generation_document(document, &bounds)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_keys_are_accepted_exactly_when_the_documents_pattern_matches_them() {
        // Every u32 is spelt one way; the document's pattern for a 2^32 vocabulary is the
        // parser's rule.
        let pattern =
            regex::Regex::new(&super::super::openapi::decimal_below(1 << 32)).expect("pattern");
        for key in [
            "0",
            "7",
            "10",
            "49151",
            "4294967295",
            "4294967296",
            "99999999999",
            "007",
            "00",
            "-1",
            "+1",
            "1.0",
            "1e3",
            "",
            " 7",
            "7 ",
            "x",
            "\u{0661}",
        ] {
            let parsed = logit_bias(Some(json!({ key: 1 })));
            assert_eq!(parsed.is_ok(), pattern.is_match(key), "{key:?}: {parsed:?}");
        }
        assert_eq!(
            logit_bias(Some(json!({"9": -100, "10": 0.5, "0": 100}))).expect("valid"),
            [(0, 100.0), (9, -100.0), (10, 0.5)]
        );
        for bad in [
            json!({"1": 100.01}),
            json!({"1": null}),
            json!({"1": true}),
            json!([1]),
        ] {
            assert!(logit_bias(Some(bad.clone())).is_err(), "{bad}");
        }
        assert_eq!(logit_bias(None).expect("absent"), []);
        assert_eq!(logit_bias(Some(Value::Null)).expect("null"), []);
    }

    #[test]
    fn sampling_numbers_are_checked_as_sent_then_narrowed_inside_their_range() {
        // Just outside a bound is refused, though f32 would round it onto the bound.
        assert!(TOP_P.narrow(Some(1.0 + f64::EPSILON), 1.0).is_err());
        assert!(TEMPERATURE.narrow(Some(-1e-300), 1.0).is_err());
        assert_eq!(TEMPERATURE.narrow(Some(1e300), 1.0), Ok(f32::MAX));
        assert!(FREQUENCY_PENALTY.narrow(Some(f64::NAN), 0.0).is_err());
        // Just inside an excluded bound stays inside it, though f32 would round it to 0.
        let tiny = TOP_P.narrow(Some(1e-300), 1.0).expect("inside (0, 1]");
        assert!(tiny > 0.0);
        assert!(SamplingParams {
            top_p: tiny,
            ..SamplingParams::default()
        }
        .validate()
        .is_ok());
        assert_eq!(TEMPERATURE.narrow(Some(f32::MAX.into()), 1.0), Ok(f32::MAX));
        assert_eq!(MIN_P.narrow(None, 0.25), Ok(0.25));
        let err = TGI_TEMPERATURE.narrow(Some(0.0), 1.0).unwrap_err();
        assert!(err.contains("temperature must be in (0,"), "{err}");
    }
}
