//! The core layer (TEI's `core::infer`): one place that takes requests from any front end and
//! runs validate → admit → tokenize → queue → batch → finish, answering with a domain error
//! ([`InferError`]) that the front end only maps to its own status and body.
//!
//! Why here and not in `http`: a second front end (gRPC, a bench, a CLI) must get the same
//! validation, admission, prompts, truncation and post-processing without going through axum.
//! `http` keeps routes, wire types, auth and the error mapping.
//!
//! What kind of model is served decides which operations exist ([`ModelKind`], from the signed
//! task): embed, predict, rerank or sparse-embed; any other answers [`InferError::WrongTask`].
//! Generation plugs in next to this as its own scheduler.

use crate::batcher::{Admission, BatchError, Batcher, Embedded};
use crate::engine::pooling::{check_dimensions, finish, DimensionsError};
use crate::engine::{
    Embedding, EngineHealth, ModelInfo, Output, TextTokenizer, TokenInfo, TokenizeError,
    TruncationDirection,
};
use crate::limits::Limits;
use crate::spec::Task;
use crate::telemetry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the served model does; decides what `POST /` means and which routes answer. TEI's
/// `model_type` names where TEI has the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelKind {
    /// Text → vector (TEI's `ModelType::Embedding`).
    Embedding,
    /// Text or pair → a score per label (TEI's `ModelType::Classifier`).
    Classifier,
    /// (query, text) → one relevance score (TEI's `ModelType::Reranker`).
    Reranker,
    /// Text → SPLADE weights over the vocabulary (TEI: an embedding model with SPLADE pooling).
    SparseEmbedding,
    /// Text generation: served by the generation scheduler, never by this layer (the encoder
    /// engine refuses to load such a bundle).
    Generation,
}

impl ModelKind {
    /// The kind of model a signed task describes.
    pub fn of(task: Task) -> Self {
        match task {
            Task::Embed => ModelKind::Embedding,
            Task::Classify => ModelKind::Classifier,
            Task::Rerank => ModelKind::Reranker,
            Task::SparseEmbed => ModelKind::SparseEmbedding,
            Task::Generate => ModelKind::Generation,
        }
    }

    /// The routes that serve this kind, for error messages.
    fn routes(self) -> &'static str {
        match self {
            ModelKind::Embedding => "/embed, /v1/embeddings or /similarity",
            ModelKind::Classifier => "/predict",
            ModelKind::Reranker => "/rerank or /predict",
            ModelKind::SparseEmbedding => "/embed_sparse",
            ModelKind::Generation => "/v1/chat/completions or /v1/completions",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Classifier => "classifier",
            ModelKind::Reranker => "re-ranker",
            ModelKind::SparseEmbedding => "sparse embedding (SPLADE)",
            ModelKind::Generation => "text generation",
        })
    }
}

/// A core operation, as far as which model kinds can run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Pooled or token embeddings, similarity.
    Embed,
    /// Scores per label of a text or pair.
    Predict,
    /// Relevance of texts to a query.
    Rerank,
    /// SPLADE sparse embeddings.
    EmbedSparse,
}

impl Operation {
    /// Whether a model of `kind` runs this operation.
    fn runs_on(self, kind: ModelKind) -> bool {
        matches!(
            (self, kind),
            (Operation::Embed, ModelKind::Embedding)
                | (
                    Operation::Predict,
                    ModelKind::Classifier | ModelKind::Reranker
                )
                | (Operation::Rerank, ModelKind::Reranker)
                | (Operation::EmbedSparse, ModelKind::SparseEmbedding)
        )
    }

    /// TEI's message for this operation on the wrong kind of model.
    fn refusal(self) -> &'static str {
        match self {
            Operation::Embed => "Model is not an embedding model",
            Operation::Predict => "Model is not a classifier model",
            Operation::Rerank => "model is not a re-ranker model",
            Operation::EmbedSparse => "Model is not an embedding model with SPLADE pooling",
        }
    }
}

/// Why a request was not served, independent of how a front end shows it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// A list that must hold something was empty (`what` names it: "inputs", "sentences").
    #[error("`{what}` must not be empty")]
    EmptyInput { what: &'static str },
    #[error("{count} inputs in one request; the limit is {limit} (--max-client-batch-size): split the request")]
    TooManyInputs { count: usize, limit: usize },
    #[error("input {index} is {tokens}+ tokens, over the model's limit of {limit}; send shorter text or allow truncation")]
    TooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
    #[error(transparent)]
    Dimensions(#[from] DimensionsError),
    #[error("unknown prompt_name {name:?}; {known}")]
    UnknownPrompt { name: String, known: String },
    /// The tokenizer refused an input (or ids could not be decoded).
    #[error("{0}")]
    Tokenizer(String),
    /// The served model cannot run this operation (TEI answers 424 with its message).
    #[error("{}: this server's model is a {served} model; use {}", .operation.refusal(), .served.routes())]
    WrongTask {
        operation: Operation,
        served: ModelKind,
    },
    /// A head produced NaN, which cannot be ranked.
    #[error("score is NaN")]
    NanScore,
    #[error("server is at its limit of {limit} concurrent requests; retry shortly")]
    Overloaded { limit: usize },
    #[error("the inference engine has stopped (server shutting down or engine failed)")]
    Stopped,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TokenizeError> for InferError {
    fn from(error: TokenizeError) -> Self {
        match error {
            TokenizeError::TooLong {
                index,
                tokens,
                limit,
            } => InferError::TooLong {
                index,
                tokens,
                limit,
            },
            TokenizeError::Encode { .. } | TokenizeError::Decode(_) => {
                InferError::Tokenizer(error.to_string())
            }
            TokenizeError::Load(_) => InferError::Internal(error.to_string()),
        }
    }
}

impl From<BatchError> for InferError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Overloaded { limit } => InferError::Overloaded { limit },
            BatchError::Inference(message) => InferError::Internal(message),
            BatchError::Stopped => InferError::Stopped,
        }
    }
}

/// Per-request options, defaults already applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedOptions {
    pub normalize: bool,
    pub truncate: bool,
    pub truncation_direction: TruncationDirection,
    pub dimensions: Option<usize>,
    /// A key of the model's prompts; `None` applies the model's default prompt, if any.
    pub prompt_name: Option<String>,
}

/// One input of a prediction: a text, or a pair of texts (premise/hypothesis, query/passage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PredictInput {
    Single(String),
    Pair(String, String),
}

/// Options of [`Infer::predict`] and [`Infer::rerank`], defaults already applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreOptions {
    pub truncate: bool,
    pub truncation_direction: TruncationDirection,
    /// The head's logits as they are, without softmax / sigmoid.
    pub raw_scores: bool,
}

/// A label's score.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub score: f32,
    pub label: String,
}

/// A text's relevance to the query; `index` is its position in the request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rank {
    pub index: usize,
    pub score: f32,
}

/// TEI's post-processing of a head's logits: softmax over several labels, sigmoid of one.
fn normalise_scores(mut scores: Vec<f32>) -> Vec<f32> {
    if let [logit] = scores.as_mut_slice() {
        *logit = 1.0 / (1.0 + (-*logit).exp());
        return scores;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for score in scores.iter_mut() {
        *score = (*score - max).exp();
        sum += *score;
    }
    for score in scores.iter_mut() {
        *score /= sum;
    }
    scores
}

/// A tokenizer error for the one input tokenized at a time, numbered as in the request.
fn renumbered(error: TokenizeError, index: usize) -> TokenizeError {
    match error {
        TokenizeError::Encode { message, .. } => TokenizeError::Encode { index, message },
        TokenizeError::TooLong { tokens, limit, .. } => TokenizeError::TooLong {
            index,
            tokens,
            limit,
        },
        other => other,
    }
}

/// A result plus the accounting front ends report.
#[derive(Clone, Debug)]
pub struct Outcome<T> {
    pub value: T,
    /// Tokens the inputs became (special tokens and prompts included).
    pub prompt_tokens: usize,
    pub timings: Timings,
}

/// Where a request's time went.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub started: Instant,
    pub tokenization: Duration,
    pub queue: Duration,
    pub inference: Duration,
}

/// The core layer: tokenizer, batcher, model description and limits.
pub struct Infer {
    batcher: Batcher,
    tokenizer: Arc<TextTokenizer>,
    model: Arc<ModelInfo>,
    limits: Limits,
    /// Unix seconds when serving started (OpenAI's `created` of the model).
    created: u64,
}

impl Infer {
    /// Wires the layer and publishes `sealserve_model_info`.
    pub fn new(
        batcher: Batcher,
        tokenizer: Arc<TextTokenizer>,
        model: Arc<ModelInfo>,
        limits: Limits,
    ) -> Self {
        telemetry::handle();
        metrics::gauge!(
            telemetry::MODEL_INFO,
            "model" => model.model_id.clone(),
            "revision" => model.revision.clone(),
            "device" => model.device.to_string(),
            "dtype" => model.dtype.to_string()
        )
        .set(1.0);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            batcher,
            tokenizer,
            model,
            limits,
            created,
        }
    }

    /// What is served.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// The kind of model served.
    pub fn kind(&self) -> ModelKind {
        ModelKind::of(self.model.task)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Unix seconds when serving started.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Whether the engine behind the queue can take work.
    pub fn health(&self) -> EngineHealth {
        self.batcher.health()
    }

    /// Inputs waiting for the engine.
    pub fn queue_depth(&self) -> usize {
        self.batcher.queue_depth()
    }

    /// The options a request gets when it sets none.
    pub fn default_options(&self) -> EmbedOptions {
        EmbedOptions {
            normalize: self.model.normalize,
            truncate: true,
            truncation_direction: TruncationDirection::Right,
            dimensions: None,
            prompt_name: None,
        }
    }

    /// Pooled (then truncated / normalised as asked) vectors, one per input.
    pub async fn embed(
        &self,
        inputs: Vec<String>,
        options: &EmbedOptions,
    ) -> Result<Outcome<Vec<Vec<f32>>>, InferError> {
        self.require(Operation::Embed)?;
        check_dimensions(options.dimensions, self.model.dimensions)?;
        let outcome = self.run(inputs, options, Output::Pooled).await?;
        let vectors = outcome
            .value
            .into_iter()
            .map(|e| {
                e.into_pooled()
                    .map(|v| finish(v, options.normalize, options.dimensions))
                    .ok_or_else(|| InferError::Internal("the engine returned token states".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Outcome {
            value: vectors,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// Every token's final hidden state, per input (no pooling, normalisation or truncation of
    /// the vectors).
    pub async fn embed_all(
        &self,
        inputs: Vec<String>,
        options: &EmbedOptions,
    ) -> Result<Outcome<Vec<Vec<Vec<f32>>>>, InferError> {
        self.require(Operation::Embed)?;
        let outcome = self.run(inputs, options, Output::Tokens).await?;
        let tokens = outcome
            .value
            .into_iter()
            .map(|e| {
                e.into_tokens().ok_or_else(|| {
                    InferError::Internal("the engine returned pooled vectors".into())
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Outcome {
            value: tokens,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// Cosine similarity of `source` with each of `sentences` (the Hugging Face
    /// sentence-similarity task), computed on the pooled vectors.
    pub async fn similarity(
        &self,
        source: String,
        sentences: Vec<String>,
        options: &EmbedOptions,
    ) -> Result<Outcome<Vec<f32>>, InferError> {
        if sentences.is_empty() {
            return Err(InferError::EmptyInput { what: "sentences" });
        }
        let mut inputs = Vec::with_capacity(sentences.len() + 1);
        inputs.push(source);
        inputs.extend(sentences);
        let options = EmbedOptions {
            normalize: false,
            dimensions: None,
            ..options.clone()
        };
        let outcome = self.embed(inputs, &options).await?;
        let (source, others) = outcome
            .value
            .split_first()
            .ok_or_else(|| InferError::Internal("no vector for the source sentence".into()))?;
        let scores = others.iter().map(|other| cosine(source, other)).collect();
        Ok(Outcome {
            value: scores,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// Scores per label of each text or pair, highest first; softmax over the labels (sigmoid
    /// for one label) unless `raw_scores` (TEI's `/predict`).
    pub async fn predict(
        &self,
        inputs: Vec<PredictInput>,
        options: &ScoreOptions,
    ) -> Result<Outcome<Vec<Vec<Prediction>>>, InferError> {
        self.require(Operation::Predict)?;
        let outcome = self.scores(inputs, options).await?;
        let labels = &self.model.labels;
        let value = outcome
            .value
            .into_iter()
            .map(|scores| {
                if scores.len() != labels.len() {
                    return Err(InferError::Internal(format!(
                        "the head gave {} scores for {} labels",
                        scores.len(),
                        labels.len()
                    )));
                }
                let mut predictions: Vec<Prediction> = scores
                    .into_iter()
                    .zip(labels)
                    .map(|(score, label)| Prediction {
                        score,
                        label: label.clone(),
                    })
                    .collect();
                predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
                Ok(predictions)
            })
            .collect::<Result<_, _>>()?;
        Ok(Outcome {
            value,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// Relevance of each text to `query` (the pair `(query, text)` through a one-label
    /// cross-encoder; sigmoid unless `raw_scores`), highest first (TEI's `/rerank`).
    pub async fn rerank(
        &self,
        query: String,
        texts: Vec<String>,
        options: &ScoreOptions,
    ) -> Result<Outcome<Vec<Rank>>, InferError> {
        self.require(Operation::Rerank)?;
        if texts.is_empty() {
            return Err(InferError::EmptyInput { what: "texts" });
        }
        let inputs = texts
            .into_iter()
            .map(|text| PredictInput::Pair(query.clone(), text))
            .collect();
        let outcome = self.scores(inputs, options).await?;
        let mut ranks = outcome
            .value
            .into_iter()
            .enumerate()
            .map(|(index, scores)| match scores.as_slice() {
                [score] => Ok(Rank {
                    index,
                    score: *score,
                }),
                _ => Err(InferError::Internal(format!(
                    "a re-ranker gives one score per pair, this head gave {}",
                    scores.len()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        ranks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        Ok(Outcome {
            value: ranks,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// SPLADE weights of each input: its non-zero `(vocabulary index, weight)` pairs by index
    /// (TEI's `/embed_sparse`).
    pub async fn embed_sparse(
        &self,
        inputs: Vec<String>,
        options: &EmbedOptions,
    ) -> Result<Outcome<Vec<Vec<(u32, f32)>>>, InferError> {
        self.require(Operation::EmbedSparse)?;
        let outcome = self.run(inputs, options, Output::Sparse).await?;
        let value = outcome
            .value
            .into_iter()
            .map(|e| {
                e.into_sparse().ok_or_else(|| {
                    InferError::Internal("the engine returned another output".into())
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Outcome {
            value,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// Refuses an operation the served model cannot run.
    fn require(&self, operation: Operation) -> Result<(), InferError> {
        let served = self.kind();
        if operation.runs_on(served) {
            Ok(())
        } else {
            Err(InferError::WrongTask { operation, served })
        }
    }

    /// The head's scores of each text or pair (post-processed unless raw), in input order.
    async fn scores(
        &self,
        inputs: Vec<PredictInput>,
        options: &ScoreOptions,
    ) -> Result<Outcome<Vec<Vec<f32>>>, InferError> {
        let started = Instant::now();
        self.check_count(&inputs, "inputs")?;
        let admission = self.batcher.admit()?;
        let (truncate, direction) = (options.truncate, options.truncation_direction);
        let sequences = self
            .on_tokenizer(move |tokenizer| {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(index, input)| {
                        let renumber = |error| renumbered(error, index);
                        Ok(match input {
                            PredictInput::Single(text) => {
                                let mut encoded = tokenizer
                                    .encode_from(&[text.as_str()], truncate, direction)
                                    .map_err(renumber)?;
                                (encoded.remove(0).ids, None)
                            }
                            PredictInput::Pair(first, second) => {
                                let mut encoded = tokenizer
                                    .encode_pairs(
                                        &[(first.as_str(), second.as_str())],
                                        truncate,
                                        direction,
                                    )
                                    .map_err(renumber)?;
                                let pair = encoded.remove(0);
                                (pair.ids, Some(pair.type_ids))
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, TokenizeError>>()
            })
            .await?;
        let tokenization = started.elapsed();
        metrics::histogram!(telemetry::TOKENIZATION_SECONDS).record(tokenization.as_secs_f64());
        let outcome = self
            .queue(started, &admission, sequences, tokenization, Output::Scores)
            .await?;
        let raw_scores = options.raw_scores;
        let value = outcome
            .value
            .into_iter()
            .map(|e| {
                let scores = e.into_scores().ok_or_else(|| {
                    InferError::Internal("the engine returned another output".into())
                })?;
                if scores.iter().any(|s| s.is_nan()) {
                    return Err(InferError::NanScore);
                }
                Ok(if raw_scores {
                    scores
                } else {
                    normalise_scores(scores)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Outcome {
            value,
            prompt_tokens: outcome.prompt_tokens,
            timings: outcome.timings,
        })
    }

    /// Tokens of each input with their text and byte offsets (prompt applied as for embedding).
    pub async fn tokenize(
        &self,
        inputs: Vec<String>,
        truncate: bool,
        add_special_tokens: bool,
        prompt_name: Option<&str>,
    ) -> Result<Vec<Vec<TokenInfo>>, InferError> {
        self.check_count(&inputs, "inputs")?;
        let inputs = self.with_prompt(inputs, prompt_name)?;
        // Admitted like embedding: tokenizing a request at the payload limit costs memory too.
        let _admission = self.batcher.admit()?;
        self.on_tokenizer(move |tokenizer| {
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            tokenizer.describe(&refs, truncate, add_special_tokens)
        })
        .await
    }

    /// Text of each id sequence.
    pub async fn decode(
        &self,
        sequences: Vec<Vec<u32>>,
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, InferError> {
        self.check_count(&sequences, "ids")?;
        self.on_tokenizer(move |tokenizer| tokenizer.decode(&sequences, skip_special_tokens))
            .await
    }

    /// validate → admit → tokenize → queue/batch; results in input order.
    async fn run(
        &self,
        inputs: Vec<String>,
        options: &EmbedOptions,
        output: Output,
    ) -> Result<Outcome<Vec<Embedding>>, InferError> {
        let started = Instant::now();
        self.check_count(&inputs, "inputs")?;
        let inputs = self.with_prompt(inputs, options.prompt_name.as_deref())?;
        let admission = self.batcher.admit()?;
        let (sequences, tokenization) = self.tokenize_ids(inputs, options).await?;
        let sequences = sequences.into_iter().map(|ids| (ids, None)).collect();
        self.queue(started, &admission, sequences, tokenization, output)
            .await
    }

    /// queue/batch of tokenized sequences (with segment ids for pairs); results in input order.
    async fn queue(
        &self,
        started: Instant,
        admission: &Admission,
        sequences: Vec<(Vec<u32>, Option<Vec<u32>>)>,
        tokenization: Duration,
        output: Output,
    ) -> Result<Outcome<Vec<Embedding>>, InferError> {
        let prompt_tokens = sequences.iter().map(|(ids, _)| ids.len()).sum();
        let Embedded {
            embeddings,
            queue_time,
            inference_time,
        } = self
            .batcher
            .embed_typed(admission, sequences, output)
            .await?;
        Ok(Outcome {
            value: embeddings,
            prompt_tokens,
            timings: Timings {
                started,
                tokenization,
                queue: queue_time,
                inference: inference_time,
            },
        })
    }

    /// Rejects empty and oversized lists before any work is done.
    fn check_count<T>(&self, items: &[T], what: &'static str) -> Result<(), InferError> {
        if items.is_empty() {
            return Err(InferError::EmptyInput { what });
        }
        let limit = self.limits.max_client_batch_size.get();
        if items.len() > limit {
            return Err(InferError::TooManyInputs {
                count: items.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Puts the named prompt (or the model's default prompt) before every input.
    fn with_prompt(
        &self,
        inputs: Vec<String>,
        prompt_name: Option<&str>,
    ) -> Result<Vec<String>, InferError> {
        let name = prompt_name.or(self.model.default_prompt_name.as_deref());
        let Some(name) = name else {
            return Ok(inputs);
        };
        let prompt = self.model.prompts.get(name).ok_or_else(|| {
            let known = if self.model.prompts.is_empty() {
                "this model has no prompts".to_string()
            } else {
                let names: Vec<String> = self
                    .model
                    .prompts
                    .keys()
                    .map(|k| format!("{k:?}"))
                    .collect();
                format!("this model's prompts are {}", names.join(", "))
            };
            InferError::UnknownPrompt {
                name: name.to_string(),
                known,
            }
        })?;
        if prompt.is_empty() {
            return Ok(inputs);
        }
        Ok(inputs
            .into_iter()
            .map(|text| format!("{prompt}{text}"))
            .collect())
    }

    /// Token ids of each input, and the time tokenization took.
    async fn tokenize_ids(
        &self,
        inputs: Vec<String>,
        options: &EmbedOptions,
    ) -> Result<(Vec<Vec<u32>>, Duration), InferError> {
        let started = Instant::now();
        let (truncate, direction) = (options.truncate, options.truncation_direction);
        let encoded = self
            .on_tokenizer(move |tokenizer| {
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                tokenizer.encode_from(&refs, truncate, direction)
            })
            .await?;
        let elapsed = started.elapsed();
        metrics::histogram!(telemetry::TOKENIZATION_SECONDS).record(elapsed.as_secs_f64());
        Ok((encoded.into_iter().map(|e| e.ids).collect(), elapsed))
    }

    /// Runs tokenizer work on the blocking pool: long inputs take milliseconds, and async worker
    /// threads must not stall on them.
    async fn on_tokenizer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&TextTokenizer) -> Result<T, TokenizeError> + Send + 'static,
    ) -> Result<T, InferError> {
        let tokenizer = self.tokenizer.clone();
        // At most one tokenization per core at a time: each may hold tens of MiB while it runs,
        // and the blocking pool would otherwise run hundreds at once (issue 12, memory
        // amplification). The permit moves into the task, so a client that goes away does not
        // free it early.
        let slot = TOKENIZING
            .acquire()
            .await
            .map_err(|e| InferError::Internal(format!("tokenizer slots closed: {e}")))?;
        Ok(tokio::task::spawn_blocking(move || {
            let result = work(&tokenizer);
            drop(slot);
            result
        })
        .await
        .map_err(|e| InferError::Internal(format!("tokenizer task failed: {e}")))??)
    }
}

/// Tokenizations running at once: one per core this process may use.
pub(crate) static TOKENIZING: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from))
    });

/// Cosine similarity in f64, 0 for a zero vector.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    let norm = (aa * bb).sqrt();
    if norm == 0.0 {
        0.0
    } else {
        (dot / norm) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn scores_are_softmaxed_over_labels_and_a_single_logit_is_sigmoided() {
        let softmax = normalise_scores(vec![1.0, 2.0, 3.0]);
        let e: Vec<f32> = [1f32, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let sum: f32 = e.iter().sum();
        for (got, want) in softmax.iter().zip(e.iter().map(|x| x / sum)) {
            assert!((got - want).abs() < 1e-6, "{softmax:?}");
        }
        let sigmoid = normalise_scores(vec![-0.244_544_85]);
        // CrossEncoder.predict's score for this logit in tests/data/families/bert-reranker.
        assert!((sigmoid[0] - 0.439_166_64).abs() < 1e-6, "{sigmoid:?}");
        let big = normalise_scores(vec![1000.0, 0.0]);
        assert!(
            (big[0] - 1.0).abs() < 1e-6 && big[1].abs() < 1e-6,
            "{big:?}"
        );
    }

    #[test]
    fn each_operation_runs_on_its_kinds_only() {
        let kinds = [
            ModelKind::Embedding,
            ModelKind::Classifier,
            ModelKind::Reranker,
            ModelKind::SparseEmbedding,
            ModelKind::Generation,
        ];
        let allowed = |operation: Operation| -> Vec<ModelKind> {
            kinds
                .into_iter()
                .filter(|k| operation.runs_on(*k))
                .collect()
        };
        assert_eq!(allowed(Operation::Embed), vec![ModelKind::Embedding]);
        assert_eq!(
            allowed(Operation::Predict),
            vec![ModelKind::Classifier, ModelKind::Reranker]
        );
        assert_eq!(allowed(Operation::Rerank), vec![ModelKind::Reranker]);
        assert_eq!(
            allowed(Operation::EmbedSparse),
            vec![ModelKind::SparseEmbedding]
        );
        let refusal = InferError::WrongTask {
            operation: Operation::Rerank,
            served: ModelKind::Classifier,
        }
        .to_string();
        assert_eq!(
            refusal,
            "model is not a re-ranker model: this server's model is a classifier model; use /predict"
        );
    }

    #[test]
    fn lower_layer_errors_become_domain_errors() {
        let too_long = TokenizeError::TooLong {
            index: 2,
            tokens: 257,
            limit: 256,
        };
        assert_eq!(
            InferError::from(too_long),
            InferError::TooLong {
                index: 2,
                tokens: 257,
                limit: 256
            }
        );
        assert_eq!(
            InferError::from(BatchError::Overloaded { limit: 3 }),
            InferError::Overloaded { limit: 3 }
        );
        assert_eq!(InferError::from(BatchError::Stopped), InferError::Stopped);
        assert!(matches!(
            InferError::from(BatchError::Inference("x".into())),
            InferError::Internal(_)
        ));
    }
}
