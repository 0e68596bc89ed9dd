//! OpenAI's completion objects as a generation server writes them: `chat.completion`,
//! `chat.completion.chunk` (one server-sent event), and `text_completion` (whole, or one event),
//! with OpenAI's field names and types, typed for the OpenAPI document (clients generated from
//! it, and schemathesis, check every answer against these schemas; the `openai` package's own
//! pydantic models validate them in tests/clients/openai_chat.py). [`Reply`] builds them for one
//! request from the engine's [`Completion`].

use crate::generate::{Completion, FinishReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now (0 before 1970, which a sane clock never is).
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `object` of a whole chat answer.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub enum ChatCompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

/// `object` of one streamed chat event.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub enum ChatCompletionChunkObject {
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

/// `object` of a text completion, whole or streamed (OpenAI uses the same name for both).
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub enum TextCompletionObject {
    #[serde(rename = "text_completion")]
    TextCompletion,
}

/// The author of a generated message: always `assistant`.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssistantRole {
    Assistant,
}

/// Why a choice ended: `stop` (end token or stop string), `length` (`max_tokens` or the
/// context).
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpenAiFinishReason {
    Stop,
    Length,
}

impl From<FinishReason> for OpenAiFinishReason {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => Self::Stop,
            FinishReason::Length => Self::Length,
        }
    }
}

/// OpenAI's `usage` of a completion.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionUsage {
    /// Tokens of the prompt (chat: as rendered through the template).
    pub prompt_tokens: usize,
    /// Tokens generated, the end token included.
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<&Completion> for CompletionUsage {
    fn from(done: &Completion) -> Self {
        Self {
            prompt_tokens: done.usage.prompt_tokens,
            completion_tokens: done.usage.completion_tokens,
            total_tokens: done.usage.prompt_tokens + done.usage.completion_tokens,
        }
    }
}

/// A token and its log-probability, ready for the OpenAI objects (the HTTP layer fills it from
/// the engine's [`crate::generate::TokenLogprob`] and the tokenizer).
#[derive(Clone, Debug)]
pub struct LoggedToken {
    /// The token's text (U+FFFD where the token is part of a UTF-8 character).
    pub token: String,
    /// The token's exact bytes.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first: text, bytes, log-probability.
    pub top: Vec<(String, Vec<u8>, f32)>,
    /// Characters of the answer's text before this token's.
    pub text_offset: usize,
}

/// One alternative of [`ChatTokenLogprob::top_logprobs`] (OpenAI `TopLogprob`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    pub bytes: Option<Vec<u8>>,
}

/// One generated token of a chat answer with its log-probability (OpenAI
/// `ChatCompletionTokenLogprob`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    /// The `top_logprobs` most likely tokens at this step, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` of a chat choice (OpenAI `ChoiceLogprobs`), with `logprobs: true`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatChoiceLogprobs {
    /// One entry per generated token, the end token included.
    pub content: Option<Vec<ChatTokenLogprob>>,
    /// Always null (no refusals).
    #[schema(value_type = Option<Vec<ChatTokenLogprob>>)]
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

/// `logprobs` of a text completion choice (OpenAI `Logprobs`), with `logprobs: n`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TextLogprobs {
    /// Each generated token's text, the end token included.
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the `n` most likely tokens at that step and their log-probabilities.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Per token, the characters of the answer's text before it.
    pub text_offset: Vec<usize>,
}

/// Log-probabilities are finite in JSON: -inf (a token the penalties ruled out) and NaN become
/// -9999, as vLLM writes them.
fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        -9999.0
    }
}

fn chat_logprobs(tokens: &[LoggedToken]) -> ChatChoiceLogprobs {
    ChatChoiceLogprobs {
        content: Some(
            tokens
                .iter()
                .map(|t| ChatTokenLogprob {
                    token: t.token.clone(),
                    logprob: finite(t.logprob),
                    bytes: Some(t.bytes.clone()),
                    top_logprobs: t
                        .top
                        .iter()
                        .map(|(token, bytes, logprob)| TopLogprob {
                            token: token.clone(),
                            logprob: finite(*logprob),
                            bytes: Some(bytes.clone()),
                        })
                        .collect(),
                })
                .collect(),
        ),
        refusal: None,
    }
}

fn text_logprobs(tokens: &[LoggedToken]) -> TextLogprobs {
    TextLogprobs {
        tokens: tokens.iter().map(|t| t.token.clone()).collect(),
        token_logprobs: tokens.iter().map(|t| finite(t.logprob)).collect(),
        top_logprobs: tokens
            .iter()
            .map(|t| {
                t.top
                    .iter()
                    .map(|(token, _, logprob)| (token.clone(), finite(*logprob)))
                    .collect()
            })
            .collect(),
        text_offset: tokens.iter().map(|t| t.text_offset).collect(),
    }
}

/// A generated chat message.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionMessage {
    pub role: AssistantRole,
    pub content: String,
}

/// One choice of a `chat.completion` (there is one: `n` must be 1).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionChoice {
    /// Always 0.
    pub index: u32,
    pub message: ChatCompletionMessage,
    /// With `logprobs: true`; null otherwise.
    pub logprobs: Option<ChatChoiceLogprobs>,
    pub finish_reason: OpenAiFinishReason,
}

/// `POST /v1/chat/completions` without streaming.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`, unique per request in this process.
    pub id: String,
    pub object: ChatCompletionObject,
    /// Unix seconds when the request was accepted.
    pub created: u64,
    /// The request's `model`, else the served model's id.
    pub model: String,
    pub choices: Vec<ChatCompletionChoice>,
    pub usage: CompletionUsage,
}

/// What a chat event adds: the role (first event), then text.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a `chat.completion.chunk`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionChunkChoice {
    /// Always 0.
    pub index: u32,
    pub delta: ChatCompletionDelta,
    /// With `logprobs: true`, the tokens since the previous event (null when there are none).
    pub logprobs: Option<ChatChoiceLogprobs>,
    /// Null until the event that ends the choice.
    pub finish_reason: Option<OpenAiFinishReason>,
}

/// One server-sent event of `POST /v1/chat/completions` with `stream: true` (`data: {…}`; the
/// stream ends with `data: [DONE]`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionChunk {
    /// The same for every event of one request.
    pub id: String,
    pub object: ChatCompletionChunkObject,
    pub created: u64,
    pub model: String,
    /// One choice; empty in the usage event.
    pub choices: Vec<ChatCompletionChunkChoice>,
    /// Only with `stream_options.include_usage`: null in every event but the last, which has
    /// no choices and the request's usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<CompletionUsage>)]
    pub usage: Option<Option<CompletionUsage>>,
}

/// One choice of a `text_completion`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TextCompletionChoice {
    /// Always 0.
    pub index: u32,
    pub text: String,
    /// With `logprobs: n`; null otherwise.
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: OpenAiFinishReason,
}

/// `POST /v1/completions` without streaming.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TextCompletion {
    /// `cmpl-…`, unique per request in this process.
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextCompletionChoice>,
    pub usage: CompletionUsage,
}

/// One choice of a streamed `text_completion`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TextCompletionChunkChoice {
    /// Always 0.
    pub index: u32,
    /// The text this event adds (empty in the event that ends the choice).
    pub text: String,
    /// With `logprobs: n`, the tokens since the previous event (null when there are none).
    pub logprobs: Option<TextLogprobs>,
    /// Null until the event that ends the choice.
    pub finish_reason: Option<OpenAiFinishReason>,
}

/// One server-sent event of `POST /v1/completions` with `stream: true` (`data: {…}`; the stream
/// ends with `data: [DONE]`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TextCompletionChunk {
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    /// One choice; empty in the usage event.
    pub choices: Vec<TextCompletionChunkChoice>,
    /// As in [`ChatCompletionChunk`]: only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<CompletionUsage>)]
    pub usage: Option<Option<CompletionUsage>>,
}

/// A whole answer: chat or text.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CompletionObject {
    Chat(ChatCompletion),
    Text(TextCompletion),
}

/// One streamed event: chat or text.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ChunkObject {
    Chat(ChatCompletionChunk),
    Text(TextCompletionChunk),
}

/// Which OpenAI object a response is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Text,
}

/// One request's response identity, and the objects it answers with.
pub struct Reply {
    pub shape: Shape,
    id: String,
    created: u64,
    model: String,
    pub include_usage: bool,
    /// Whether the request asked for log-probabilities.
    pub logprobs: bool,
}

impl Reply {
    pub fn new(shape: Shape, model: String, include_usage: bool, logprobs: bool) -> Self {
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
            logprobs,
        }
    }

    /// The whole answer; `tokens` are the generated tokens' log-probabilities (shown when the
    /// request asked for them).
    pub fn complete(&self, done: &Completion, tokens: &[LoggedToken]) -> CompletionObject {
        let finish_reason = done.finish_reason.into();
        match self.shape {
            Shape::Chat => CompletionObject::Chat(ChatCompletion {
                id: self.id.clone(),
                object: ChatCompletionObject::ChatCompletion,
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatCompletionChoice {
                    index: 0,
                    message: ChatCompletionMessage {
                        role: AssistantRole::Assistant,
                        content: done.text.clone(),
                    },
                    logprobs: self.logprobs.then(|| chat_logprobs(tokens)),
                    finish_reason,
                }],
                usage: done.into(),
            }),
            Shape::Text => CompletionObject::Text(TextCompletion {
                id: self.id.clone(),
                object: TextCompletionObject::TextCompletion,
                created: self.created,
                model: self.model.clone(),
                choices: vec![TextCompletionChoice {
                    index: 0,
                    text: done.text.clone(),
                    logprobs: self.logprobs.then(|| text_logprobs(tokens)),
                    finish_reason,
                }],
                usage: done.into(),
            }),
        }
    }

    /// An event carrying text (`finish` = None) or the end (`finish` = the reason); `role`
    /// puts the role in a chat delta (the first event); `tokens` are the log-probabilities of
    /// the tokens since the previous event.
    pub fn chunk(
        &self,
        text: Option<&str>,
        role: bool,
        finish: Option<FinishReason>,
        tokens: &[LoggedToken],
    ) -> ChunkObject {
        let finish_reason = finish.map(OpenAiFinishReason::from);
        let logged = self.logprobs && !tokens.is_empty();
        let usage = self.include_usage.then_some(None);
        match self.shape {
            Shape::Chat => ChunkObject::Chat(ChatCompletionChunk {
                choices: vec![ChatCompletionChunkChoice {
                    index: 0,
                    delta: ChatCompletionDelta {
                        role: role.then_some(AssistantRole::Assistant),
                        content: text.map(str::to_owned),
                    },
                    logprobs: logged.then(|| chat_logprobs(tokens)),
                    finish_reason,
                }],
                usage,
                ..self.chat_chunk()
            }),
            Shape::Text => ChunkObject::Text(TextCompletionChunk {
                choices: vec![TextCompletionChunkChoice {
                    index: 0,
                    text: text.unwrap_or_default().to_owned(),
                    logprobs: logged.then(|| text_logprobs(tokens)),
                    finish_reason,
                }],
                usage,
                ..self.text_chunk()
            }),
        }
    }

    /// The last event with `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, done: &Completion) -> ChunkObject {
        let usage = Some(Some(done.into()));
        match self.shape {
            Shape::Chat => ChunkObject::Chat(ChatCompletionChunk {
                usage,
                ..self.chat_chunk()
            }),
            Shape::Text => ChunkObject::Text(TextCompletionChunk {
                usage,
                ..self.text_chunk()
            }),
        }
    }

    fn chat_chunk(&self) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: ChatCompletionChunkObject::ChatCompletionChunk,
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: None,
        }
    }

    fn text_chunk(&self) -> TextCompletionChunk {
        TextCompletionChunk {
            id: self.id.clone(),
            object: TextCompletionObject::TextCompletion,
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Usage;
    use serde_json::{json, Value};

    fn done() -> Completion {
        Completion {
            text: "Hi".into(),
            tokens: vec![1, 2],
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            time_to_first_token: 0.0,
            total_time: 0.0,
        }
    }

    #[test]
    fn objects_have_openai_field_names_and_values() {
        let chat = serde_json::to_value(
            Reply::new(Shape::Chat, "m".into(), false, false).complete(&done(), &[]),
        )
        .expect("serializes");
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(
            chat["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": "Hi"},
                   "logprobs": null, "finish_reason": "stop"})
        );
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        );
        let reply = Reply::new(Shape::Chat, "m".into(), false, false);
        let first =
            serde_json::to_value(reply.chunk(Some(""), true, None, &[])).expect("serializes");
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0],
            json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                   "logprobs": null, "finish_reason": null})
        );
        assert!(
            first.get("usage").is_none(),
            "no usage unless asked: {first}"
        );
        let with_usage = Reply::new(Shape::Text, "m".into(), true, false);
        let last =
            serde_json::to_value(with_usage.chunk(None, false, Some(FinishReason::Length), &[]))
                .expect("serializes");
        assert_eq!(last["object"], "text_completion");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["text"], "");
        assert_eq!(last["usage"], Value::Null);
        assert!(last.as_object().is_some_and(|o| o.contains_key("usage")));
        let usage = serde_json::to_value(with_usage.usage_chunk(&done())).expect("serializes");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
    }

    fn logged() -> Vec<LoggedToken> {
        vec![
            LoggedToken {
                token: "H".into(),
                bytes: b"H".to_vec(),
                logprob: -0.25,
                top: vec![
                    ("H".into(), b"H".to_vec(), -0.25),
                    ("\u{fffd}".into(), vec![0xe2], f32::NEG_INFINITY),
                ],
                text_offset: 0,
            },
            LoggedToken {
                token: "i".into(),
                bytes: b"i".to_vec(),
                logprob: -1.5,
                top: vec![
                    ("i".into(), b"i".to_vec(), -1.5),
                    ("o".into(), b"o".to_vec(), -2.0),
                ],
                text_offset: 1,
            },
        ]
    }

    #[test]
    fn log_probabilities_have_openai_shapes_and_only_when_asked() {
        let chat = serde_json::to_value(
            Reply::new(Shape::Chat, "m".into(), false, true).complete(&done(), &logged()),
        )
        .expect("serializes");
        let lp = &chat["choices"][0]["logprobs"];
        assert_eq!(lp["refusal"], Value::Null);
        assert_eq!(
            lp["content"][0],
            json!({"token": "H", "logprob": -0.25, "bytes": [72],
                   "top_logprobs": [{"token": "H", "logprob": -0.25, "bytes": [72]},
                                    {"token": "\u{fffd}", "logprob": -9999.0, "bytes": [226]}]})
        );
        assert_eq!(lp["content"][1]["top_logprobs"][1]["token"], "o");
        let text = serde_json::to_value(
            Reply::new(Shape::Text, "m".into(), false, true).complete(&done(), &logged()),
        )
        .expect("serializes");
        assert_eq!(
            text["choices"][0]["logprobs"],
            json!({"tokens": ["H", "i"], "token_logprobs": [-0.25, -1.5],
                   "top_logprobs": [{"H": -0.25, "\u{fffd}": -9999.0}, {"i": -1.5, "o": -2.0}],
                   "text_offset": [0, 1]})
        );
        // Not asked: null, even with tokens at hand.
        let plain = serde_json::to_value(
            Reply::new(Shape::Text, "m".into(), false, false).complete(&done(), &logged()),
        )
        .expect("serializes");
        assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
        // A streamed event carries its own tokens, and null when it has none.
        let reply = Reply::new(Shape::Chat, "m".into(), false, true);
        let event = serde_json::to_value(reply.chunk(Some("i"), false, None, &logged()[1..]))
            .expect("serializes");
        assert_eq!(event["choices"][0]["logprobs"]["content"][0]["token"], "i");
        let role =
            serde_json::to_value(reply.chunk(Some(""), true, None, &[])).expect("serializes");
        assert_eq!(role["choices"][0]["logprobs"], Value::Null);
    }
}
