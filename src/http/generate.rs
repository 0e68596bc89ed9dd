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
use super::routes::{body_bytes, Body};
use super::types::{AuthKind, OpenAiModel, OpenAiModelList, Status};
use super::BundleInfo;
use crate::engine::EngineHealth;
use crate::generate::{
    ChatMessage, Completion, Event, FinishReason, GenerateRequest, Generator, Prompt,
    SamplingParams, SubmitError,
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
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
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
    /// `payload_limit` bounds every body; `max_concurrent_requests` is the scheduler's queue.
    pub limits: Limits,
    pub api_key: Option<String>,
    /// True once serving, false again when shutting down.
    pub ready: Arc<AtomicBool>,
}

/// The routes of a generation model. The embedding routes answer 400 with a message saying
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
        .route("/info", get(info))
        .route("/metrics", get(super::routes::metrics))
        .route("/openapi.json", get(openapi))
        .route("/embed", post(wrong_kind))
        .route("/embed_all", post(wrong_kind))
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
        ErrorKind::WrongModelKind,
        format!("{path} needs an embedding model; this server runs a generation model: use /v1/chat/completions, /v1/completions or /generate"),
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
    /// Sequences decoded together (batch slots).
    pub max_batch: usize,
    /// Requests that may wait for a slot (`--max-concurrent-requests`); more get 429.
    pub max_queue: usize,
    /// Longest sequence, prompt plus generated tokens; longer requests get 422.
    pub max_context: usize,
    /// Tokens in the vocabulary (valid prompt token ids are below it).
    pub vocab_size: usize,
    /// Whether the model carries a chat template (`/v1/chat/completions` needs one).
    pub chat_template: bool,
    /// Provenance: manifest digest, signing key, signature kind, trust (the embedding /info's
    /// fields of the same names).
    #[serde(flatten)]
    pub bundle: BundleInfo,
    /// The generation engine runs on the CPU.
    #[schema(value_type = String, example = "cpu")]
    pub device: crate::engine::DeviceKind,
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
        max_queue: config.max_queue,
        max_context: config.max_context,
        vocab_size: model.tokenizer.vocab_size(),
        chat_template: model.chat_template.is_some(),
        bundle: state.bundle.clone(),
        device: crate::engine::DeviceKind::Cpu,
        limits: state.limits,
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

/// Unix seconds when this process started serving (the first router built), which OpenAI
/// shows as the model's `created`.
fn serving_since() -> u64 {
    static CREATED: OnceLock<u64> = OnceLock::new();
    *CREATED.get_or_init(unix_now)
}

fn model_object(state: &GenerationState) -> OpenAiModel {
    OpenAiModel {
        id: state.model_id.clone(),
        object: "model",
        created: serving_since(),
        owned_by: "sealserve",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// OpenAI `GET /v1/models`: the one embedded model.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = OpenAiModelList)))]
async fn models(State(state): State<Arc<GenerationState>>) -> Response {
    Json(OpenAiModelList {
        object: "list",
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

/// Fields shared by both routes (OpenAI names; `top_k`, `min_p`, `repetition_penalty` as vLLM
/// and TGI accept them).
#[derive(Deserialize, utoipa::ToSchema)]
struct Common {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1)]
    max_tokens: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 1)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    temperature: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    min_p: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// Message content: a string, or a list of parts of which only text is accepted.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
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
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

/// A completion prompt: one text, or one prompt's token ids.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum CompletionPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CompletionBody {
    prompt: CompletionPrompt,
    #[serde(flatten)]
    common: Common,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(ApiFamily::OpenAi, message)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        invalid(format!(
            "request body is not valid JSON for this route: {e}"
        ))
    })
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
    fn request(self, prompt: Prompt) -> Result<GenerateRequest, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n must be 1: one choice per request"));
        }
        let defaults = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: self
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            seed: self.seed,
            logprobs: None,
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
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        })
    }
}

/// Which OpenAI object a response is.
#[derive(Clone, Copy)]
enum Shape {
    Chat,
    Text,
}

/// One request's response identity.
struct Reply {
    shape: Shape,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Reply {
    fn new(shape: Shape, model: String, include_usage: bool) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created = unix_now();
        let prefix = match shape {
            Shape::Chat => "chatcmpl",
            Shape::Text => "cmpl",
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            shape,
            id: format!("{prefix}-{created:x}{n:06x}"),
            created,
            model,
            include_usage,
        }
    }

    fn usage(done: &Completion) -> Value {
        json!({
            "prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens,
            "total_tokens": done.usage.prompt_tokens + done.usage.completion_tokens,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.shape, chunk) {
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Text, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn complete(&self, done: &Completion) -> Value {
        let choice = match self.shape {
            Shape::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": null,
                "finish_reason": done.finish_reason.as_str(),
            }),
            Shape::Text => json!({
                "index": 0,
                "text": done.text,
                "logprobs": null,
                "finish_reason": done.finish_reason.as_str(),
            }),
        };
        let mut body = self.envelope(false, json!([choice]));
        body["usage"] = Self::usage(done);
        body
    }

    /// A chunk carrying text (`finish` = None) or the end (`finish` = the reason).
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.shape {
            Shape::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Shape::Text => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        let mut body = self.envelope(true, json!([choice]));
        if self.include_usage {
            body["usage"] = Value::Null;
        }
        body
    }

    fn usage_chunk(&self, done: &Completion) -> Value {
        let mut body = self.envelope(true, json!([]));
        body["usage"] = Self::usage(done);
        body
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
    responses((status = 200, description = "A `chat.completion` object; with `stream: true`, `text/event-stream` of `chat.completion.chunk` objects, then `data: [DONE]`", body = Object),
              (status = 401, body = super::types::OpenAiErrorBody), (status = 413, body = super::types::OpenAiErrorBody),
              (status = 422, body = super::types::OpenAiErrorBody), (status = 429, body = super::types::OpenAiErrorBody),
              (status = 503, body = super::types::OpenAiErrorBody)))]
async fn chat_completions(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: ChatBody = parse(&body_bytes(ApiFamily::OpenAi, body)?)?;
    let prompt = chat_prompt(body.messages)?;
    run(state, Shape::Chat, body.common, prompt).await
}

/// OpenAI text completions: JSON, or server-sent `text_completion` chunks ending in `[DONE]`.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionBody,
    responses((status = 200, description = "A `text_completion` object; with `stream: true`, `text/event-stream` of `text_completion` chunks, then `data: [DONE]`", body = Object),
              (status = 401, body = super::types::OpenAiErrorBody), (status = 413, body = super::types::OpenAiErrorBody),
              (status = 422, body = super::types::OpenAiErrorBody), (status = 429, body = super::types::OpenAiErrorBody),
              (status = 503, body = super::types::OpenAiErrorBody)))]
async fn completions(
    State(state): State<Arc<GenerationState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: CompletionBody = parse(&body_bytes(ApiFamily::OpenAi, body)?)?;
    run(state, Shape::Text, body.common, body.prompt.into()).await
}

impl From<CompletionPrompt> for Prompt {
    fn from(prompt: CompletionPrompt) -> Self {
        match prompt {
            CompletionPrompt::Text(text) => Prompt::Text(text),
            CompletionPrompt::Tokens(ids) => Prompt::Tokens(ids),
        }
    }
}

/// Validates an OpenAI request and queues it: the event receiver, the reply's identity, and
/// whether the client asked for a stream.
fn submit(
    state: &GenerationState,
    shape: Shape,
    common: Common,
    prompt: Prompt,
) -> Result<(UnboundedReceiver<Event>, Reply, bool), ApiError> {
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
    let request = common.request(prompt)?;
    let rx = state.generator.submit(request).map_err(submit_error)?;
    Ok((rx, Reply::new(shape, model, include_usage), stream))
}

async fn run(
    state: Arc<GenerationState>,
    shape: Shape,
    common: Common,
    prompt: Prompt,
) -> Result<Response, ApiError> {
    let (rx, reply, stream) = submit(&state, shape, common, prompt)?;
    if stream {
        Ok(Sse::new(events(rx, reply)).into_response())
    } else {
        let done = collect(rx).await?;
        Ok(Json(reply.complete(&done)).into_response())
    }
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Completion, ApiError> {
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token { .. } => {}
            Event::Done(done) => return Ok(done),
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

/// State of one event stream.
struct Streaming {
    rx: UnboundedReceiver<Event>,
    reply: Reply,
    pending: VecDeque<SseEvent>,
    role_sent: bool,
    finished: bool,
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// The SSE stream of one request: a first chunk with the role (chat), one chunk per non-empty
/// text delta, a chunk with the finish reason, the usage chunk when asked, then `[DONE]`. An
/// engine error ends the stream with an OpenAI error object. Dropping the stream drops the
/// receiver, which cancels the request in the scheduler.
fn events(
    rx: UnboundedReceiver<Event>,
    reply: Reply,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = Streaming {
        rx,
        reply,
        pending: VecDeque::new(),
        role_sent: false,
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
            if !s.role_sent {
                s.role_sent = true;
                if matches!(s.reply.shape, Shape::Chat) {
                    s.pending
                        .push_back(data(&s.reply.chunk(Some(""), true, None)));
                    continue;
                }
            }
            match s.rx.recv().await {
                Some(Event::Token { text, .. }) => {
                    if !text.is_empty() {
                        s.pending
                            .push_back(data(&s.reply.chunk(Some(&text), false, None)));
                    }
                }
                Some(Event::Done(done)) => {
                    let reason = done.finish_reason.as_str();
                    s.pending
                        .push_back(data(&s.reply.chunk(None, false, Some(reason))));
                    if s.reply.include_usage {
                        s.pending.push_back(data(&s.reply.usage_chunk(&done)));
                    }
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.finished = true;
                }
                Some(Event::Error(e)) => {
                    s.pending.push_back(data(&json!({"error": {
                        "message": format!("generation failed: {e}"),
                        "type": "server_error", "param": null, "code": null}})));
                    s.finished = true;
                }
                None => {
                    s.pending.push_back(data(&json!({"error": {
                        "message": "the generator stopped before the request finished",
                        "type": "server_error", "param": null, "code": null}})));
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
    #[schema(value_type = Object)]
    response: Value,
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
        serde_json::from_value::<CmlGenerationRequest>(value).map_err(|e| {
            ApiError::validation(family, format!("request is not a valid chat or completion body: {e}"))
        })
    });
    let request = match parsed {
        Ok(request) => request,
        // Without a valid header the caller learns nothing but that it is not authorised.
        Err(_) if !header_ok => return Err(super::unauthorized(family)),
        Err(e) => return Err(e),
    };
    if !header_ok && !super::key_matches(state.api_key.as_deref(), request.access_key.as_deref()) {
        return Err(super::unauthorized(family));
    }
    let (shape, common, prompt) = match request.request {
        CmlGenerationInput::Chat(body) => (Shape::Chat, body.common, chat_prompt(body.messages)),
        CmlGenerationInput::Text(body) => (Shape::Text, body.common, Ok(body.prompt.into())),
    };
    if common.stream {
        return Err(ApiError::validation(
            family,
            "stream is not supported on /model: use /v1/chat/completions for server-sent events",
        ));
    }
    let (rx, reply, _) = submit(&state, shape, common, prompt.map_err(in_cml)?).map_err(in_cml)?;
    let done = collect(rx).await.map_err(in_cml)?;
    Ok(Json(CmlGenerationResponse {
        success: true,
        response: reply.complete(&done),
    })
    .into_response())
}

/// TGI's generation request (`/generate`, `/generate_stream`, `POST /`), as
/// `huggingface_hub.InferenceClient.text_generation` sends it.
#[derive(Deserialize, utoipa::ToSchema)]
struct TgiRequest {
    inputs: String,
    #[serde(default)]
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
    #[serde(default)]
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
    frequency_penalty: Option<f32>,
    /// Tokens to generate at most; absent = up to the context limit.
    #[serde(default)]
    #[schema(minimum = 1)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    /// Put the prompt before the generated text in `generated_text`.
    #[serde(default)]
    return_full_text: Option<bool>,
    #[serde(default)]
    seed: Option<u64>,
    /// Stop strings; generation ends before the first one (it is not in the text).
    #[serde(default)]
    stop: Option<Vec<String>>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    temperature: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    /// Only 0 (or absent).
    #[serde(default)]
    top_n_tokens: Option<u32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    top_p: Option<f32>,
    /// Not supported (refused when set).
    #[serde(default)]
    truncate: Option<usize>,
    /// Not supported (refused when set).
    #[serde(default)]
    typical_p: Option<f32>,
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
    /// Always null (`top_n_tokens` is not supported).
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
}

fn tgi_submit(state: &GenerationState, bytes: &[u8]) -> Result<(TgiSubmitted, bool), ApiError> {
    let request: TgiRequest = serde_json::from_slice(bytes).map_err(|e| {
        tgi_invalid(format!(
            "request body is not a valid TGI generate request: {e}"
        ))
    })?;
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
    refuse("top_n_tokens", p.top_n_tokens.is_some_and(|n| n != 0))?;
    refuse("watermark", p.watermark == Some(true))?;
    refuse("truncate", p.truncate.is_some())?;
    refuse("typical_p", p.typical_p.is_some())?;
    refuse("grammar", p.grammar.is_some())?;
    refuse("adapter_id", p.adapter_id.is_some())?;
    if p.temperature.is_some_and(|t| t <= 0.0) {
        return Err(tgi_invalid("`temperature` must be strictly positive"));
    }
    // TGI samples when asked to, or when any warper is set; otherwise it decodes greedily.
    let warpers = p.temperature.is_some_and(|t| t != 1.0)
        || p.top_k.is_some_and(|k| k > 0)
        || p.top_p.is_some_and(|t| t < 1.0);
    let sample = p.do_sample.unwrap_or(false) || warpers;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: if sample {
            p.temperature.unwrap_or(1.0)
        } else {
            0.0
        },
        top_p: p.top_p.unwrap_or(defaults.top_p),
        top_k: p.top_k.unwrap_or(defaults.top_k),
        min_p: defaults.min_p,
        repetition_penalty: p.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        frequency_penalty: p.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        presence_penalty: defaults.presence_penalty,
        seed: p.seed,
        // The chosen token's logprob only: TGI reports it for every token.
        logprobs: Some(0),
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
    let generate = GenerateRequest {
        prompt: Prompt::Text(request.inputs),
        sampling,
        max_tokens: p.max_new_tokens,
        stop,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
    };
    let rx = state.generator.submit(generate).map_err(|e| {
        let e = submit_error(e);
        ApiError::new(ApiFamily::Tei, e.kind, e.message)
    })?;
    Ok((
        TgiSubmitted {
            rx,
            details: p.details == Some(true),
            seed: p.seed,
            prefix,
            eos: state.generator.model().tokenizer.eos(),
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
    tokens: &mut Vec<TgiToken>,
    id: u32,
    text: String,
    logprob: Option<f32>,
    eos: Option<u32>,
) {
    match (tokens.last_mut(), logprob) {
        (Some(last), None) if last.id == id => last.text.push_str(&text),
        _ => tokens.push(TgiToken {
            id,
            text,
            logprob: logprob.unwrap_or(0.0),
            special: Some(id) == eos,
        }),
    }
}

fn tgi_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(ApiFamily::Tei, ErrorKind::Internal, message)
}

/// The whole answer of a TGI request.
async fn tgi_collect(mut submitted: TgiSubmitted) -> Result<TgiResponse, ApiError> {
    let mut tokens = Vec::new();
    while let Some(event) = submitted.rx.recv().await {
        match event {
            Event::Token { id, text, logprob } => tgi_fold(
                &mut tokens,
                id,
                text,
                logprob.map(|l| l.logprob),
                submitted.eos,
            ),
            Event::Done(done) => {
                let details = submitted.details.then(|| TgiDetails {
                    finish_reason: tgi_finish(&done, submitted.eos),
                    generated_tokens: done.usage.completion_tokens,
                    seed: submitted.seed,
                    prefill: Vec::new(),
                    tokens,
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
    held: Vec<TgiToken>,
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
                    let logprob = logprob.map(|l| l.logprob);
                    tgi_fold(&mut s.held, id, text, logprob, s.submitted.eos);
                    if s.held.len() > 1 {
                        let token = s.held.remove(0);
                        s.index += 1;
                        let event = TgiStreamResponse {
                            index: s.index,
                            token,
                            top_tokens: None,
                            generated_text: None,
                            details: None,
                        };
                        return Some((Ok(tgi_event(&event)), s));
                    }
                }
                Some(Event::Done(done)) => {
                    s.finished = true;
                    let Some(token) = s.held.pop() else {
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
                        token,
                        top_tokens: None,
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

/// The OpenAPI document of this API, with the served model's id written in.
async fn openapi(State(state): State<Arc<GenerationState>>) -> Response {
    let mut document = serde_json::to_value(generation_openapi_document()).unwrap_or(Value::Null);
    if let Some(id) = document.pointer_mut("/paths/~1v1~1models~1{id}/get/parameters/0/schema") {
        // The one id there is (other ids get 404).
        *id = json!({"type": "string", "enum": [state.model_id]});
    }
    Json(document).into_response()
}
