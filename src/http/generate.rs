//! The HTTP service of a generation model: OpenAI's `/v1/chat/completions` and
//! `/v1/completions` (JSON, or server-sent events with `stream: true`), `/v1/models`, health,
//! readiness and `/info` (`"kind": "generation"`, which the CML adapter routes on). Does no
//! inference itself: every request goes to the [`Generator`]'s scheduler, whose channel it turns
//! into one response or an event stream; dropping the stream (client gone) cancels the request.

use super::error::{ApiError, ApiFamily, ErrorKind};
use crate::generate::{
    ChatMessage, Completion, Event, GenerateRequest, Generator, Prompt, SamplingParams, SubmitError,
};
use axum::extract::{Request, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

/// What the generation routes share.
pub struct GenerationState {
    pub generator: Generator,
    /// The model id shown in responses and /v1/models (the bundle's repo id).
    pub model_id: String,
    /// True once serving, false again when shutting down.
    pub ready: Arc<AtomicBool>,
}

/// The routes of a generation model. The embedding routes answer 400 with a message saying
/// this server runs a generation model, so a client pointed at the wrong bundle learns why.
pub fn generation_router(state: Arc<GenerationState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/embed", post(wrong_kind))
        .route("/embed_all", post(wrong_kind))
        .route("/similarity", post(wrong_kind))
        .route("/v1/embeddings", post(wrong_kind))
        .fallback(super::not_found)
        .with_state(state)
}

async fn wrong_kind(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    ApiError::new(
        ApiFamily::for_path(&path),
        ErrorKind::WrongModelKind,
        format!("{path} needs an embedding model; this server runs a generation model: use /v1/chat/completions or /v1/completions"),
    )
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(state): State<Arc<GenerationState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(ApiFamily::Tei, ErrorKind::Unavailable, "not ready").into_response()
    }
}

async fn info(State(state): State<Arc<GenerationState>>) -> Response {
    let config = state.generator.config();
    Json(json!({
        "kind": "generation",
        "model_id": state.model_id,
        "max_batch": config.max_batch,
        "max_queue": config.max_queue,
        "max_context": config.max_context,
        "chat_template": state.generator.model().chat_template.is_some(),
    }))
    .into_response()
}

async fn models(State(state): State<Arc<GenerationState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{"id": state.model_id, "object": "model", "created": 0, "owned_by": "sealserve"}],
    }))
    .into_response()
}

/// A stop field: one string or a list (OpenAI allows both).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by both routes (OpenAI names; `top_k`, `min_p`, `repetition_penalty` as vLLM
/// and TGI accept them).
#[derive(Deserialize)]
struct Common {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// Message content: a string, or a list of parts of which only text is accepted.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
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
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
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

async fn chat_completions(
    State(state): State<Arc<GenerationState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: ChatBody = parse(&body)?;
    let mut messages = Vec::with_capacity(body.messages.len());
    for message in body.messages {
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
        messages.push(ChatMessage {
            role: message.role,
            content,
        });
    }
    if messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    run(state, Shape::Chat, body.common, Prompt::Chat(messages)).await
}

async fn completions(
    State(state): State<Arc<GenerationState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: CompletionBody = parse(&body)?;
    let prompt = match body.prompt {
        Value::String(text) => Prompt::Text(text),
        Value::Array(items) if items.iter().all(Value::is_u64) => Prompt::Tokens(
            items
                .iter()
                .filter_map(Value::as_u64)
                .map(|t| {
                    u32::try_from(t).map_err(|_| invalid(format!("token id {t} is out of range")))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(invalid(
                "prompt must be a string or an array of token ids (one prompt per request)",
            ))
        }
    };
    run(state, Shape::Text, body.common, prompt).await
}

async fn run(
    state: Arc<GenerationState>,
    shape: Shape,
    common: Common,
    prompt: Prompt,
) -> Result<Response, ApiError> {
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
    let reply = Reply::new(shape, model, include_usage);
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
