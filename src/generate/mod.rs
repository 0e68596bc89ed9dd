//! Text generation: requests in, token/text events out, with continuous batching.
//!
//! A [`Generator`] owns a scheduler thread (see `scheduler`). Callers submit a
//! [`GenerateRequest`]; tokenization and validation happen in the caller's thread, then the
//! request waits in a bounded queue until a batch slot is free. Each step of the scheduler runs
//! every active sequence's next token (plus a bounded chunk of one waiting prompt) through the
//! model as one batch; finished sequences leave and queued ones join between steps. Events
//! stream back over an unbounded channel per request; dropping the receiver cancels the request
//! at the next step and frees its slot.
//!
//! Typed errors for the HTTP layer: [`SubmitError`] (422 for bad input, 429 for a full queue,
//! 503 when shutting down).

pub mod chat;
pub mod sampling;
mod scheduler;
pub mod stop;

use crate::engine::TokenInfo;
use crate::model::llama::tokenizer::{TextTokenizer, TokenizerError};
use crate::model::llama::{Gguf, LlamaLoadError, LlamaModel};
pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use sampling::{SamplingParams, TokenLogprob};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Scheduler limits. `serve` fills them from the flags the embedding batcher reads
/// (`ServeArgs::generation_config`): `--max-batch-size` is `max_batch`, `--max-batch-tokens`
/// `max_step_tokens`, `--max-concurrent-requests` `max_concurrent_requests`.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Sequences decoded together (batch slots); more wait in the queue.
    pub max_batch: usize,
    /// Requests in flight, queued or generating; more are refused at once (429).
    pub max_concurrent_requests: usize,
    /// Longest sequence (prompt + generated), capped by the model's own context length.
    pub max_context: usize,
    /// Prompt tokens one step may process for one sequence, so a long prompt is prefilled in
    /// chunks between decode steps of the others instead of stalling them.
    pub prefill_chunk: usize,
    /// Tokens one step may process in total (decode tokens count first); at least `max_batch`,
    /// so every slot can decode and a waiting prompt still gets a chunk.
    pub max_step_tokens: usize,
    /// Most tokens the sequences holding batch slots may reserve together, each its prompt
    /// plus its `max_tokens` (`--max-batch-total-tokens`, TGI's name): the bound on KV-cache
    /// memory, so that a burst of long requests waits in the queue instead of exhausting the
    /// host or the pod's memory limit. `usize::MAX` = only `max_batch × max_context`; a
    /// budget below `max_context` lowers `max_context` to it (a request must fit alone).
    pub max_batch_total_tokens: usize,
}

impl GeneratorConfig {
    /// Batch slots when `--max-batch-size` is not given (the engine's fixed value before the
    /// flag drove it): every stream decoding at once lengthens each one's inter-token time.
    pub const DEFAULT_MAX_BATCH: usize = 16;
    /// Tokens per step when `--max-batch-tokens` is not given: a step's prefill share is bounded
    /// so the decoding streams wait at most one such step for a new prompt.
    pub const DEFAULT_MAX_STEP_TOKENS: usize = 256;
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_concurrent_requests: crate::limits::Limits::DEFAULT.max_concurrent_requests.get(),
            max_context: 4096,
            prefill_chunk: 128,
            max_step_tokens: Self::DEFAULT_MAX_STEP_TOKENS,
            max_batch_total_tokens: usize::MAX,
        }
    }
}

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Raw text, tokenized as is (special-token text becomes special tokens).
    Text(String),
    /// A conversation rendered through the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Tokens to generate at most; `None` = up to the context limit.
    pub max_tokens: Option<usize>,
    /// Stop strings: generation ends before the first occurrence; it is not in the text.
    pub stop: Vec<String>,
    /// Extra token ids that end generation (EOS always does unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl GenerateRequest {
    /// Greedy, no limits beyond the context.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::greedy(),
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts (OpenAI `usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// The end of a request.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The whole generated text, decoded from all tokens at once (not from the deltas), up to a
    /// stop string.
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Seconds from submission to the first token.
    pub time_to_first_token: f64,
    /// Seconds from submission to the end.
    pub total_time: f64,
}

/// What a request's channel carries, in order: `Token`s, then exactly one `Done` or `Error`.
#[derive(Clone, Debug)]
pub enum Event {
    Token {
        id: u32,
        /// Final text this token completed (may be empty: half a character, or text that could
        /// still be the start of a stop string).
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done(Completion),
    Error(String),
}

/// Why a request was refused at submission.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// 429.
    #[error("{limit} requests are in flight (queued or generating), the --max-concurrent-requests limit; retry later")]
    QueueFull { limit: usize },
    /// 422.
    #[error("prompt has {prompt_tokens} tokens and {max_tokens} more were asked for, over the {max_context}-token context limit")]
    ContextLength {
        prompt_tokens: usize,
        max_tokens: usize,
        max_context: usize,
    },
    /// 422.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// 422.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// 422.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// 422.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// 503.
    #[error("the generator is shutting down")]
    ShuttingDown,
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] LlamaLoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("cannot start the scheduler thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of the scheduler, readable at any time (tests, health, logs).
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub errors: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// Largest number of sequences seen in one step.
    pub max_occupancy: AtomicUsize,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests submitted and not yet answered (queued or active): what
    /// `max_concurrent_requests` bounds.
    pub in_flight: usize,
    pub queued: usize,
    pub active: usize,
    pub completed: u64,
    pub cancelled: u64,
    pub errors: u64,
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub steps: u64,
    pub max_occupancy: usize,
}

/// A request after validation, waiting for a slot.
struct Queued {
    prompt: Vec<u32>,
    request: GenerateRequest,
    max_tokens: usize,
    events: mpsc::UnboundedSender<Event>,
    submitted: std::time::Instant,
    ticket: Ticket,
}

impl Queued {
    /// Tokens this request may hold in its KV cache: its prompt and all it may generate (what
    /// it reserves against `max_batch_total_tokens`).
    fn reserve(&self) -> usize {
        self.prompt.len() + self.max_tokens
    }
}

/// A request's place in `max_concurrent_requests`, from submission until its last event is
/// sent ([`Ticket::release`], before that event, so a client that submits again on seeing
/// it is not refused) or it is dropped (cancelled, failed, shut down).
struct Ticket {
    in_flight: Arc<AtomicUsize>,
    held: bool,
}

impl Ticket {
    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// State shared by the handle and the scheduler thread.
struct Shared {
    queue: Mutex<std::collections::VecDeque<Queued>>,
    wake: Condvar,
    shutdown: std::sync::atomic::AtomicBool,
    stats: Stats,
    /// Requests holding a [`Ticket`] (its own `Arc`: tickets sit in the queue inside `Shared`).
    in_flight: Arc<AtomicUsize>,
    /// Tasks to run on the scheduler thread between steps (see [`Generator::run_on_scheduler`]).
    control: Mutex<Vec<ControlTask>>,
    control_pending: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Wakes the scheduler after a flag it checks before sleeping (`shutdown`,
    /// `control_pending`) was set. The queue lock is taken in between: the scheduler checks the
    /// flags and waits under that lock, so without it the store and the wake-up could both fall
    /// between its check and its wait, and it would sleep on (a `Generator` drop hung that way
    /// once, in a CI run, 2026-12-02).
    fn wake_after_flag(&self) {
        drop(self.queue.lock());
        self.wake.notify_all();
    }
}

/// A task for the scheduler thread.
type ControlTask = Box<dyn FnOnce() + Send>;

/// The model, its tokenizer and chat template: what the scheduler runs and what callers need
/// to prepare requests.
pub struct TextModel {
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl TextModel {
    /// Loads everything from GGUF bytes held in memory, the model for the CPU.
    pub fn from_gguf_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        Self::from_gguf_bytes_on(bytes, &candle_core::Device::Cpu)
    }

    /// Loads everything from GGUF bytes held in memory, the model onto `device` (see
    /// [`LlamaModel::load_on`]).
    pub fn from_gguf_bytes_on(
        bytes: &[u8],
        device: &candle_core::Device,
    ) -> Result<Self, EngineError> {
        let gguf = Gguf::read(bytes)?;
        let model = LlamaModel::load_on(&gguf, device)?;
        let tokenizer = TextTokenizer::from_gguf(&gguf)?;
        let token_text = |id: Option<u32>| {
            id.map(|id| String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned())
                .unwrap_or_default()
        };
        let chat_template = gguf.metadata_str("tokenizer.chat_template").map(|source| {
            ChatTemplate::new(
                source.to_string(),
                token_text(tokenizer.bos()),
                token_text(tokenizer.eos()),
            )
        });
        Ok(Self {
            model,
            tokenizer,
            chat_template,
        })
    }

    /// The tokens of `text` as `/tokenize` shows them (TEI's shape): id, text, whether it is a
    /// control token, byte span in `text`. With `add_special_tokens`, a BOS comes first when
    /// the GGUF asks for one (as for a completion prompt); special-token text in `text` (e.g.
    /// `<|im_start|>`) is always its one token, as generation reads it. A token's text is the
    /// slice of `text` it came from (TEI's rule; a character split over two tokens shows whole
    /// in both), a control token's its own text.
    pub fn describe_tokens(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenInfo>, TokenizerError> {
        let tokens = self
            .tokenizer
            .encode_with_offsets(text, add_special_tokens)?;
        Ok(tokens
            .into_iter()
            .map(|(id, (start, stop))| {
                let special = self.tokenizer.is_special(id);
                let text = match text.as_bytes().get(start..stop) {
                    Some(span) if !special && start < stop => {
                        String::from_utf8_lossy(span).into_owned()
                    }
                    _ => String::from_utf8_lossy(self.tokenizer.token_bytes(id)).into_owned(),
                };
                TokenInfo {
                    id,
                    text,
                    special,
                    start,
                    stop,
                }
            })
            .collect())
    }
}

/// Handle to the generation engine. Cheap to share behind an `Arc`; dropping the last handle
/// stops the scheduler after the current step.
pub struct Generator {
    model: Arc<TextModel>,
    config: GeneratorConfig,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Generator {
    /// Starts the scheduler thread.
    pub fn start(model: Arc<TextModel>, mut config: GeneratorConfig) -> Result<Self, EngineError> {
        config.max_context = config
            .max_context
            .min(model.model.config().context_length)
            .max(1);
        config.max_batch = config.max_batch.max(1);
        config.max_concurrent_requests = config.max_concurrent_requests.max(1);
        config.prefill_chunk = config.prefill_chunk.max(1);
        config.max_step_tokens = config.max_step_tokens.max(config.max_batch);
        config.max_batch_total_tokens = config
            .max_batch_total_tokens
            .min(config.max_batch.saturating_mul(config.max_context))
            .max(1);
        config.max_context = config.max_context.min(config.max_batch_total_tokens);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Default::default()),
            wake: Condvar::new(),
            shutdown: Default::default(),
            stats: Stats::default(),
            in_flight: Default::default(),
            control: Mutex::new(Vec::new()),
            control_pending: Default::default(),
        });
        let thread = std::thread::Builder::new()
            .name("sealserve-generate".into())
            .spawn({
                let (model, shared, config) = (model.clone(), shared.clone(), config.clone());
                move || scheduler::run(&model, &shared, &config)
            })
            .map_err(EngineError::Thread)?;
        Ok(Self {
            model,
            config,
            shared,
            thread: Some(thread),
        })
    }

    /// The loaded model (tokenizer, chat template, config).
    pub fn model(&self) -> &TextModel {
        &self.model
    }

    /// Whether the scheduler thread is still running (readiness: a thread that ended, e.g. by a
    /// panic, serves nothing).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Runs `task` on the scheduler thread, between two steps, and waits for it (at most
    /// `limit`). Per-thread hardening (Landlock) must run on the thread it restricts.
    pub fn run_on_scheduler(
        &self,
        task: Box<dyn FnOnce() + Send>,
        limit: Duration,
    ) -> Result<(), String> {
        if !self.is_running() {
            return Err("the generation thread is not running".into());
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let task: ControlTask = Box::new(move || {
            task();
            let _ = done_tx.send(());
        });
        self.shared
            .control
            .lock()
            .map_err(|_| "the generation thread's task list is poisoned".to_string())?
            .push(task);
        self.shared.control_pending.store(true, Ordering::Release);
        self.shared.wake_after_flag();
        done_rx
            .recv_timeout(limit)
            .map_err(|_| format!("the generation thread did not run the task within {limit:?}"))
    }

    /// The effective limits.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Validates and queues a request; its events arrive on the returned receiver. Dropping
    /// the receiver cancels the request.
    pub fn submit(
        &self,
        request: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        request
            .sampling
            .validate()
            .map_err(SubmitError::InvalidParameter)?;
        let prompt = self.prompt_tokens(&request.prompt)?;
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let vocab = self.model.tokenizer.vocab_size();
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(SubmitError::InvalidParameter(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if let Some(bad) = request
            .stop_token_ids
            .iter()
            .find(|&&t| t as usize >= vocab)
        {
            return Err(SubmitError::InvalidParameter(format!(
                "stop_token_ids names token id {bad}, outside the vocabulary of {vocab}"
            )));
        }
        if let Some((bad, _)) = request
            .sampling
            .logit_bias
            .iter()
            .find(|(t, _)| *t as usize >= vocab)
        {
            return Err(SubmitError::InvalidParameter(format!(
                "logit_bias names token id {bad}, outside the vocabulary of {vocab}"
            )));
        }
        if request.max_tokens == Some(0) {
            return Err(SubmitError::InvalidParameter(
                "max_tokens must be at least 1".into(),
            ));
        }
        let room = self.config.max_context.saturating_sub(prompt.len());
        let max_tokens = request.max_tokens.unwrap_or(room.max(1));
        if max_tokens > room {
            return Err(SubmitError::ContextLength {
                prompt_tokens: prompt.len(),
                max_tokens,
                max_context: self.config.max_context,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .map_err(|_| SubmitError::ShuttingDown)?;
            // Taken under the queue lock, so two submissions cannot both take the last place
            // (tickets are given back without the lock, which only frees places).
            let in_flight = &self.shared.in_flight;
            if in_flight.load(Ordering::Acquire) >= self.config.max_concurrent_requests {
                return Err(SubmitError::QueueFull {
                    limit: self.config.max_concurrent_requests,
                });
            }
            in_flight.fetch_add(1, Ordering::AcqRel);
            queue.push_back(Queued {
                prompt,
                request,
                max_tokens,
                events: tx,
                submitted: std::time::Instant::now(),
                ticket: Ticket {
                    in_flight: self.shared.in_flight.clone(),
                    held: true,
                },
            });
            self.shared
                .stats
                .queued
                .store(queue.len(), Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::generate::QUEUE_DEPTH).set(queue.len() as f64);
        }
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Submits and waits for the whole completion (no streaming); blocking, for callers on
    /// ordinary threads (async callers drain the receiver of [`Generator::submit`]).
    pub fn generate_blocking(&self, request: GenerateRequest) -> Result<Completion, String> {
        let mut rx = self.submit(request).map_err(|e| e.to_string())?;
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Token { .. } => {}
                Event::Done(done) => return Ok(done),
                Event::Error(e) => return Err(e),
            }
        }
        Err("the generator stopped before the request finished".into())
    }

    /// Token ids of a prompt (chat prompts rendered through the template first).
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, SubmitError> {
        Ok(match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => self.model.tokenizer.encode(text, true)?,
            Prompt::Chat(messages) => {
                let template = self
                    .model
                    .chat_template
                    .as_ref()
                    .ok_or(ChatError::NoTemplate)?;
                let text = template.render(messages, true)?;
                // The template writes any BOS itself.
                self.model.tokenizer.encode(&text, false)?
            }
        })
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        StatsSnapshot {
            in_flight: self.shared.in_flight.load(Ordering::Acquire),
            queued: s.queued.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            cancelled: s.cancelled.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            generated_tokens: s.generated_tokens.load(Ordering::Relaxed),
            prompt_tokens: s.prompt_tokens.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            max_occupancy: s.max_occupancy.load(Ordering::Relaxed),
        }
    }

    /// Waits until no request is queued or active (tests, graceful shutdown), at most `limit`.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            let s = self.stats();
            if s.queued == 0 && s.active == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_after_flag();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
