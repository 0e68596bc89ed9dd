//! Dynamic batching with backpressure between many concurrent requests and one inference thread.
//!
//! - Admission: a request first takes one of `max_concurrent_requests` permits; when none is left
//!   it is refused at once (HTTP 429) rather than queued without bound.
//! - Queue: each input of an admitted request becomes one queue item. While the engine runs a
//!   batch, items accumulate; the next batch takes items in arrival order until
//!   `max_batch_size` inputs or `max_batch_tokens` tokens would be exceeded. A request's inputs
//!   may span batches; its results are reassembled in input order.
//! - Cancellation: inputs of requests whose caller went away are dropped before inference.
//!
//! Never touches tensors: it talks to the engine through [`Backend`]. Metric names come from
//! [`crate::telemetry`], limits from [`Limits`].

use crate::engine::{
    BatchOutput, Embedding, Engine, EngineBatch, EngineError, EngineHealth, Output,
};
use crate::limits::Limits;
use crate::telemetry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// A batch that runs longer than this is reported as stuck by [`Backend::health`]: the largest
/// default batch (16384 tokens) takes seconds on two CPU cores, not a minute.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// What the batcher needs from an inference engine.
pub trait Backend: Send + Sync + 'static {
    /// Runs one batch; resolves with one result per sequence.
    fn submit(&self, batch: EngineBatch) -> oneshot::Receiver<Result<BatchOutput, EngineError>>;
    /// Whether the backend can take work.
    fn health(&self) -> EngineHealth;
}

impl Backend for Engine {
    fn submit(&self, batch: EngineBatch) -> oneshot::Receiver<Result<BatchOutput, EngineError>> {
        Engine::submit(self, batch)
    }

    fn health(&self) -> EngineHealth {
        Engine::health(self, STUCK_AFTER)
    }
}

/// Why a request could not be served by the batcher.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("server is at its limit of {limit} concurrent requests; retry shortly")]
    Overloaded { limit: usize },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the batcher has stopped (server shutting down)")]
    Stopped,
}

/// A request's embeddings plus where its time went.
#[derive(Debug)]
pub struct Embedded {
    /// One per input, in input order.
    pub embeddings: Vec<Embedding>,
    /// From enqueue until the last of its inputs started inference.
    pub queue_time: Duration,
    /// Inference time of the batches it took part in.
    pub inference_time: Duration,
}

/// Proof of admission; dropping it frees the slot.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

struct RequestState {
    results: Vec<Option<Embedding>>,
    remaining: usize,
    queue_time: Duration,
    inference_time: Duration,
    /// Sequence number of the last batch counted into `inference_time`.
    last_batch: Option<u64>,
    reply: Option<oneshot::Sender<Result<Embedded, BatchError>>>,
}

type SharedRequest = Arc<Mutex<RequestState>>;

struct QueueItem {
    ids: Vec<u32>,
    /// Segment ids of a pair input.
    type_ids: Option<Vec<u32>>,
    output: Output,
    position: usize,
    request: SharedRequest,
    enqueued: Instant,
}

/// Handle used by request handlers; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<QueueItem>,
    permits: Arc<Semaphore>,
    depth: Arc<AtomicUsize>,
    backend: Arc<dyn Backend>,
    max_concurrent_requests: usize,
}

/// The batching limits, as plain numbers.
#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    max_batch_tokens: usize,
    max_batch_size: usize,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime, with the batching and concurrency
    /// limits of `limits`.
    pub fn start(backend: Arc<dyn Backend>, limits: &Limits) -> Self {
        let (queue, inbox) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let batch_limits = BatchLimits {
            max_batch_tokens: limits.max_batch_tokens.get(),
            max_batch_size: limits.max_batch_size.get(),
        };
        tokio::spawn(batching_loop(
            backend.clone(),
            inbox,
            batch_limits,
            depth.clone(),
        ));
        Self {
            queue,
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests.get())),
            depth,
            backend,
            max_concurrent_requests: limits.max_concurrent_requests.get(),
        }
    }

    /// The backend's health (a stopped or stuck engine cannot serve what is queued).
    pub fn health(&self) -> EngineHealth {
        self.backend.health()
    }

    /// Inputs waiting for the engine.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Takes a concurrency slot or refuses at once.
    pub fn admit(&self) -> Result<Admission, BatchError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map(|permit| Admission { _permit: permit })
            .map_err(|_| BatchError::Overloaded {
                limit: self.max_concurrent_requests,
            })
    }

    /// Queues the request's token sequences and waits for their results (input order), each
    /// computed as `output` asks.
    pub async fn embed(
        &self,
        admission: &Admission,
        sequences: Vec<Vec<u32>>,
        output: Output,
    ) -> Result<Embedded, BatchError> {
        let sequences = sequences.into_iter().map(|ids| (ids, None)).collect();
        self.embed_typed(admission, sequences, output).await
    }

    /// Like [`Self::embed`] for sequences that may carry segment ids (pair inputs of
    /// classifiers and rerankers).
    pub async fn embed_typed(
        &self,
        _admission: &Admission,
        sequences: Vec<(Vec<u32>, Option<Vec<u32>>)>,
        output: Output,
    ) -> Result<Embedded, BatchError> {
        if sequences.is_empty() {
            return Ok(Embedded {
                embeddings: Vec::new(),
                queue_time: Duration::ZERO,
                inference_time: Duration::ZERO,
            });
        }
        let (reply, answer) = oneshot::channel();
        let request = Arc::new(Mutex::new(RequestState {
            results: vec![None; sequences.len()],
            remaining: sequences.len(),
            queue_time: Duration::ZERO,
            inference_time: Duration::ZERO,
            last_batch: None,
            reply: Some(reply),
        }));
        let enqueued = Instant::now();
        for (position, (ids, type_ids)) in sequences.into_iter().enumerate() {
            self.depth.fetch_add(1, Ordering::Relaxed);
            let item = QueueItem {
                ids,
                type_ids,
                output,
                position,
                request: request.clone(),
                enqueued,
            };
            if self.queue.send(item).is_err() {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(BatchError::Stopped);
            }
        }
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(self.queue_depth() as f64);
        answer.await.map_err(|_| BatchError::Stopped)?
    }
}

async fn batching_loop(
    backend: Arc<dyn Backend>,
    mut inbox: mpsc::UnboundedReceiver<QueueItem>,
    config: BatchLimits,
    depth: Arc<AtomicUsize>,
) {
    let mut carried: Option<QueueItem> = None;
    let mut batch_number = 0u64;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match inbox.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut batch = Vec::new();
        let mut tokens = 0usize;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            depth.fetch_sub(1, Ordering::Relaxed);
            if is_cancelled(&item.request) {
                next = inbox.try_recv().ok();
                continue;
            }
            let too_big = !batch.is_empty()
                && (batch.len() + 1 > config.max_batch_size
                    || tokens + item.ids.len() > config.max_batch_tokens);
            if too_big {
                depth.fetch_add(1, Ordering::Relaxed);
                carried = Some(item);
                break;
            }
            tokens += item.ids.len();
            batch.push(item);
            next = inbox.try_recv().ok();
        }
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(depth.load(Ordering::Relaxed) as f64);
        if !batch.is_empty() {
            batch_number += 1;
            run_batch(backend.as_ref(), batch, tokens, batch_number).await;
        }
    }
}

fn is_cancelled(request: &SharedRequest) -> bool {
    request
        .lock()
        .map(|state| state.reply.as_ref().is_none_or(|r| r.is_closed()))
        .unwrap_or(true)
}

async fn run_batch(backend: &dyn Backend, batch: Vec<QueueItem>, tokens: usize, number: u64) {
    let started = Instant::now();
    metrics::histogram!(telemetry::BATCH_SIZE).record(batch.len() as f64);
    metrics::histogram!(telemetry::BATCH_TOKENS).record(tokens as f64);
    for item in &batch {
        metrics::histogram!(telemetry::QUEUE_SECONDS)
            .record(started.duration_since(item.enqueued).as_secs_f64());
    }
    let mut engine_batch = EngineBatch::default();
    let items: Vec<_> = batch
        .into_iter()
        .map(|item| {
            engine_batch.sequences.push(item.ids);
            engine_batch.type_ids.push(item.type_ids);
            engine_batch.outputs.push(item.output);
            (item.position, item.request, item.enqueued)
        })
        .collect();
    if engine_batch.type_ids.iter().all(Option::is_none) {
        engine_batch.type_ids.clear();
    }
    let outcome = match backend.submit(engine_batch).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::Stopped),
    };
    match outcome {
        Ok(output) => {
            metrics::histogram!(telemetry::INFERENCE_SECONDS)
                .record(output.inference_time.as_secs_f64());
            let timing = BatchTiming {
                number,
                started,
                inference_time: output.inference_time,
            };
            for ((position, request, enqueued), embedding) in
                items.into_iter().zip(output.embeddings)
            {
                deliver(&request, position, embedding, enqueued, &timing);
            }
        }
        Err(error) => {
            let message = error.to_string();
            for (_, request, _) in items {
                fail(&request, BatchError::Inference(message.clone()));
            }
        }
    }
}

struct BatchTiming {
    number: u64,
    started: Instant,
    inference_time: Duration,
}

fn deliver(
    request: &SharedRequest,
    position: usize,
    embedding: Embedding,
    enqueued: Instant,
    batch: &BatchTiming,
) {
    let Ok(mut state) = request.lock() else {
        return;
    };
    if let Some(slot) = state.results.get_mut(position) {
        *slot = Some(embedding);
    }
    state.remaining = state.remaining.saturating_sub(1);
    state.queue_time = state.queue_time.max(batch.started.duration_since(enqueued));
    if state.last_batch != Some(batch.number) {
        state.last_batch = Some(batch.number);
        state.inference_time += batch.inference_time;
    }
    if state.remaining == 0 {
        let Some(embeddings) = state.results.iter_mut().map(Option::take).collect() else {
            let error =
                BatchError::Inference("the engine returned fewer results than inputs".into());
            if let Some(reply) = state.reply.take() {
                let _ = reply.send(Err(error));
            }
            return;
        };
        let embedded = Embedded {
            embeddings,
            queue_time: state.queue_time,
            inference_time: state.inference_time,
        };
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(Ok(embedded));
        }
    }
}

fn fail(request: &SharedRequest, error: BatchError) {
    if let Ok(mut state) = request.lock() {
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// Echoes each sequence's first id as its "vector" and records batch sizes; optionally slow,
    /// so that requests pile up while a batch runs.
    struct EchoBackend {
        batches: StdMutex<Vec<(usize, usize)>>,
        delay: Duration,
    }

    impl Backend for EchoBackend {
        fn submit(
            &self,
            batch: EngineBatch,
        ) -> oneshot::Receiver<Result<BatchOutput, EngineError>> {
            let tokens = batch.sequences.iter().map(Vec::len).sum();
            if let Ok(mut batches) = self.batches.lock() {
                batches.push((batch.sequences.len(), tokens));
            }
            let (tx, rx) = oneshot::channel();
            let delay = self.delay;
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let embeddings = batch
                    .sequences
                    .iter()
                    .zip(&batch.outputs)
                    .map(|(s, output)| match output {
                        Output::Pooled => Embedding::Pooled(vec![s[0] as f32]),
                        Output::Tokens => {
                            Embedding::Tokens(s.iter().map(|id| vec![*id as f32]).collect())
                        }
                        Output::Scores => Embedding::Scores(vec![s[0] as f32]),
                        Output::Sparse => Embedding::Sparse(vec![(s[0], 1.0)]),
                    })
                    .collect();
                let _ = tx.send(Ok(BatchOutput {
                    embeddings,
                    inference_time: delay,
                }));
            });
            rx
        }

        fn health(&self) -> EngineHealth {
            EngineHealth::Running
        }
    }

    fn limits(batch_size: usize, batch_tokens: usize, concurrent: usize) -> Limits {
        let n = |v| std::num::NonZeroUsize::new(v).unwrap();
        Limits {
            max_batch_tokens: n(batch_tokens),
            max_batch_size: n(batch_size),
            max_concurrent_requests: n(concurrent),
            ..Limits::DEFAULT
        }
    }

    fn pooled(embedded: Embedded) -> Vec<Vec<f32>> {
        embedded
            .embeddings
            .into_iter()
            .map(|e| e.into_pooled().expect("pooled"))
            .collect()
    }

    fn start(
        max_batch_size: usize,
        max_batch_tokens: usize,
        delay_ms: u64,
    ) -> (Batcher, Arc<EchoBackend>) {
        let backend = Arc::new(EchoBackend {
            batches: StdMutex::new(Vec::new()),
            delay: Duration::from_millis(delay_ms),
        });
        let limits = limits(max_batch_size, max_batch_tokens, 64);
        (Batcher::start(backend.clone(), &limits), backend)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_within_limits_and_keep_order() {
        let (batcher, backend) = start(8, 40, 20);
        let mut tasks = Vec::new();
        for request in 0..10u32 {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move {
                let admission = batcher.admit().expect("admitted");
                let sequences: Vec<Vec<u32>> = (0..3).map(|i| vec![request * 10 + i; 4]).collect();
                (
                    request,
                    pooled(
                        batcher
                            .embed(&admission, sequences, Output::Pooled)
                            .await
                            .expect("embedded"),
                    ),
                )
            }));
        }
        for task in tasks {
            let (request, embedded) = task.await.expect("task");
            let expected: Vec<Vec<f32>> = (0..3).map(|i| vec![(request * 10 + i) as f32]).collect();
            assert_eq!(
                embedded, expected,
                "results come back per request, in input order"
            );
        }
        let batches = backend.batches.lock().unwrap().clone();
        assert_eq!(
            batches.iter().map(|b| b.0).sum::<usize>(),
            30,
            "every input ran exactly once"
        );
        assert!(
            batches
                .iter()
                .all(|(size, tokens)| *size <= 8 && *tokens <= 40),
            "{batches:?}"
        );
        assert!(
            batches.iter().any(|(size, _)| *size > 3),
            "inputs of different requests were batched together: {batches:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_larger_than_a_batch_spans_several() {
        let (batcher, backend) = start(4, 1000, 1);
        let admission = batcher.admit().unwrap();
        let sequences: Vec<Vec<u32>> = (0..10).map(|i| vec![i]).collect();
        let embedded = batcher
            .embed(&admission, sequences, Output::Pooled)
            .await
            .unwrap();
        assert_eq!(
            pooled(embedded),
            (0..10).map(|i| vec![i as f32]).collect::<Vec<_>>()
        );
        assert!(backend
            .batches
            .lock()
            .unwrap()
            .iter()
            .all(|(size, _)| *size <= 4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_is_refused_at_once_when_full() {
        let backend = Arc::new(EchoBackend {
            batches: StdMutex::new(Vec::new()),
            delay: Duration::ZERO,
        });
        let batcher = Batcher::start(backend, &limits(4, 100, 2));
        let first = batcher.admit().unwrap();
        let _second = batcher.admit().unwrap();
        assert!(matches!(
            batcher.admit(),
            Err(BatchError::Overloaded { limit: 2 })
        ));
        drop(first);
        assert!(batcher.admit().is_ok(), "a freed slot is reusable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_outputs_come_back_per_input() {
        let (batcher, _) = start(4, 1000, 1);
        let admission = batcher.admit().unwrap();
        let embedded = batcher
            .embed(&admission, vec![vec![1, 2], vec![3]], Output::Tokens)
            .await
            .unwrap();
        let tokens: Vec<Vec<Vec<f32>>> = embedded
            .embeddings
            .into_iter()
            .map(|e| e.into_tokens().expect("tokens"))
            .collect();
        assert_eq!(tokens, vec![vec![vec![1.0], vec![2.0]], vec![vec![3.0]]]);
        assert_eq!(batcher.health(), EngineHealth::Running);
    }
}
