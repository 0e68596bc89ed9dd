//! The embedding pipeline every embedding route shares: validate → admit (429) → tokenize →
//! batch → post-process, with the timings the routes report in headers.

use super::error::{ApiError, ApiFamily, ErrorKind};
use super::AppState;
use crate::batcher::BatchError;
use crate::engine::pooling::{check_dimensions, finish};
use crate::engine::{TextTokenizer, TokenizeError};
use axum::http::{HeaderMap, HeaderValue};
use std::time::{Duration, Instant};

/// Per-request options after defaults are applied.
#[derive(Clone, Copy, Debug)]
pub struct EmbedOptions {
    pub normalize: bool,
    pub truncate: bool,
    pub dimensions: Option<usize>,
}

/// Vectors plus accounting for one request.
pub struct EmbedOutcome {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    pub timings: Timings,
}

/// Where the request's time went.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub started: Instant,
    pub tokenization: Duration,
    pub queue: Duration,
    pub inference: Duration,
}

impl Timings {
    /// `x-*-time` headers in milliseconds.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-tokenization-time", self.tokenization),
            ("x-queue-time", self.queue),
            ("x-inference-time", self.inference),
            ("x-total-time", self.started.elapsed()),
        ] {
            let millis = format!("{:.3}", value.as_secs_f64() * 1000.0);
            if let Ok(v) = HeaderValue::from_str(&millis) {
                headers.insert(name, v);
            }
        }
        headers
    }
}

/// Runs `inputs` through the model for one request.
pub async fn run(
    state: &AppState,
    family: ApiFamily,
    inputs: Vec<String>,
    options: EmbedOptions,
) -> Result<EmbedOutcome, ApiError> {
    let started = Instant::now();
    check_inputs(state, family, &inputs)?;
    check_dimensions(options.dimensions, state.model.dimensions)
        .map_err(|e| ApiError::validation(family, e.to_string()))?;
    let admission = state.batcher.admit().map_err(|e| batch_error(family, e))?;
    let (encoded, tokenization) = tokenize(state, family, inputs, options.truncate).await?;
    let prompt_tokens = encoded.iter().map(Vec::len).sum();
    let embedded = state
        .batcher
        .embed(&admission, encoded)
        .await
        .map_err(|e| batch_error(family, e))?;
    let vectors = embedded
        .vectors
        .into_iter()
        .map(|v| finish(v, options.normalize, options.dimensions))
        .collect();
    Ok(EmbedOutcome {
        vectors,
        prompt_tokens,
        timings: Timings {
            started,
            tokenization,
            queue: embedded.queue_time,
            inference: embedded.inference_time,
        },
    })
}

/// Rejects empty and oversized input lists before any work is done.
pub fn check_inputs(
    state: &AppState,
    family: ApiFamily,
    inputs: &[String],
) -> Result<(), ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::validation(
            family,
            "inputs must not be an empty list",
        ));
    }
    let limit = state.limits.max_client_batch_size;
    if inputs.len() > limit {
        return Err(ApiError::new(
            family,
            ErrorKind::TooManyInputs,
            format!(
                "{} inputs in one request; the limit is {limit} (--max-client-batch-size): split the request",
                inputs.len()
            ),
        ));
    }
    Ok(())
}

/// Tokenizes off the async threads; returns ids and the time it took.
async fn tokenize(
    state: &AppState,
    family: ApiFamily,
    inputs: Vec<String>,
    truncate: bool,
) -> Result<(Vec<Vec<u32>>, Duration), ApiError> {
    let started = Instant::now();
    let encoded = with_tokenizer(state, family, move |tokenizer| {
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        tokenizer.encode(&refs, truncate)
    })
    .await?;
    let elapsed = started.elapsed();
    metrics::histogram!(super::metrics::TOKENIZATION_SECONDS).record(elapsed.as_secs_f64());
    Ok((encoded.into_iter().map(|e| e.ids).collect(), elapsed))
}

/// Tokenizations running at once: one per core this process may use.
static TOKENIZING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from))
});

/// Runs tokenizer work on the blocking pool (long inputs take milliseconds; async worker
/// threads must not stall on them) and maps its failures onto the service's errors.
pub async fn with_tokenizer<T: Send + 'static>(
    state: &AppState,
    family: ApiFamily,
    work: impl FnOnce(&TextTokenizer) -> Result<T, TokenizeError> + Send + 'static,
) -> Result<T, ApiError> {
    let tokenizer = state.tokenizer.clone();
    // At most one tokenization per core at a time: each may hold tens of MiB while it runs, and
    // the blocking pool would otherwise run up to 512 at once (issue 12, memory amplification).
    // The permit moves into the task, so a client that goes away does not free it early.
    let slot = TOKENIZING.acquire().await.map_err(|e| {
        ApiError::new(
            family,
            ErrorKind::Internal,
            format!("tokenizer slots closed: {e}"),
        )
    })?;
    tokio::task::spawn_blocking(move || {
        let result = work(&tokenizer);
        drop(slot);
        result
    })
    .await
    .map_err(|e| {
        ApiError::new(
            family,
            ErrorKind::Internal,
            format!("tokenizer task failed: {e}"),
        )
    })?
    .map_err(|e| tokenize_error(family, e))
}

/// Maps tokenizer failures onto the service's error kinds.
pub fn tokenize_error(family: ApiFamily, error: TokenizeError) -> ApiError {
    let kind = match error {
        TokenizeError::TooLong { .. } => ErrorKind::TooLong,
        TokenizeError::Encode { .. } => ErrorKind::Validation,
        TokenizeError::Load(_) => ErrorKind::Internal,
    };
    ApiError::new(family, kind, error.to_string())
}

pub(super) fn batch_error(family: ApiFamily, error: BatchError) -> ApiError {
    let kind = match error {
        BatchError::Overloaded { .. } => ErrorKind::Overloaded,
        BatchError::Inference(_) => ErrorKind::Internal,
        BatchError::Stopped => ErrorKind::Unavailable,
    };
    ApiError::new(family, kind, error.to_string())
}
