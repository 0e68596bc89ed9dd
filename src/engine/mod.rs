//! The inference engine: loads the verified model onto a device and runs it on a dedicated OS
//! thread, fed through a channel, so the async side never blocks on a tensor.
//!
//! Public surface: [`load`] (bundle → [`LoadedModel`]), [`LoadedModel::warm_up`], [`Engine`]
//! (submit a batch of token sequences → embeddings, and its [`EngineHealth`]), the shared
//! [`TextTokenizer`], and [`ModelInfo`]. Knows nothing about HTTP or request batching, and no
//! model family by name: the family behind [`crate::model::Model`] is picked by `model::load`.

pub mod device;
pub mod embedder;
pub mod pooling;
pub mod precut;
pub mod tokenizer;

use crate::bundle::VerifiedBundle;
use crate::model::{LoadError, ModelError, ModelFiles};
use crate::spec::{Family, Pooling, Task};
pub use device::{ComputeDType, DTypeRequest, DeviceKind, DeviceRequest};
pub use embedder::{Embedder, Embedding, Output};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
pub use tokenizer::{
    Encoded, EncodedPair, TextTokenizer, TokenInfo, TokenizeError, TruncationDirection,
};
use tokio::sync::oneshot;

/// Padded tokens per forward on CPU: large enough for efficient matmuls, small enough that
/// activations stay a fraction of the weights (the RSS budget is 1.6× the weight bytes).
pub const CPU_FORWARD_TOKENS: usize = 1024;
/// Padded tokens per forward on CUDA, where bigger forwards amortise kernel launches.
pub const CUDA_FORWARD_TOKENS: usize = 32768;

/// How to load and run the model.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub device: DeviceRequest,
    pub dtype: DTypeRequest,
    /// Overrides the per-device default padded-token budget of one forward (0 counts as 1).
    pub max_forward_tokens: Option<usize>,
    /// Overrides the pooling recorded in the signed metadata.
    pub pooling: Option<Pooling>,
    /// Extra folders to find CUDA libraries in (`SEALSERVE_CUDA_LIB_DIRS`).
    pub cuda_lib_dirs: Vec<PathBuf>,
}

/// Why the engine could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    #[error(
        "the verified bundle has no {0}; its sealserve.json names a file MANIFEST does not cover"
    )]
    MissingFile(String),
    #[error("model could not be loaded: {0}")]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizeError),
    #[error(transparent)]
    Inference(#[from] ModelError),
    #[error("the inference thread has stopped")]
    Stopped,
    #[error("inference panicked on this batch; the engine carries on")]
    Panicked,
}

/// What the running model is, for /info, logs and request validation.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub model_id: String,
    pub revision: String,
    pub family: Family,
    /// What the model does (signed in `sealserve.json`); decides which core operations answer.
    pub task: Task,
    /// Label names of a classifier or reranker by logit index (`config.json` `id2label`);
    /// empty for other tasks.
    pub labels: Vec<String>,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per input, special tokens included (longer inputs are truncated or refused).
    pub max_input_tokens: usize,
    /// Width of the embeddings.
    pub dimensions: usize,
    /// sentence-transformers prompts by name, from the signed metadata.
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when a request names none.
    pub default_prompt_name: Option<String>,
    pub device: DeviceKind,
    pub device_reason: String,
    /// Folders the CUDA libraries were loaded from (empty on CPU).
    pub library_dirs: Vec<PathBuf>,
    pub dtype: ComputeDType,
    pub max_forward_tokens: usize,
}

/// A model loaded and ready to warm up.
pub struct LoadedModel {
    pub embedder: Embedder,
    pub tokenizer: TextTokenizer,
    pub info: ModelInfo,
    pub load_time: Duration,
}

fn verified_file<'a>(bundle: &VerifiedBundle<'a>, name: &str) -> Result<&'a [u8], EngineError> {
    bundle
        .file(name)
        .ok_or_else(|| EngineError::MissingFile(name.to_string()))
}

/// Builds the model from the verified bundle's bytes, in memory only.
pub fn load(
    bundle: &VerifiedBundle<'static>,
    config: &EngineConfig,
) -> Result<LoadedModel, EngineError> {
    let started = Instant::now();
    let metadata = &bundle.metadata;
    let chosen = device::choose(config.device, &config.cuda_lib_dirs)?;
    let dtype = config.dtype.resolve(&chosen.device);
    let files = ModelFiles {
        config_json: verified_file(bundle, &metadata.config)?,
        safetensors: verified_file(bundle, &metadata.weights)?,
    };
    let model = crate::model::load_for_task(
        metadata.family,
        metadata.task,
        files,
        dtype.dtype(),
        &chosen.device,
    )?;
    let max_input_tokens = metadata.max_seq_length.min(model.max_positions());
    let tokenizer = TextTokenizer::from_bytes(
        verified_file(bundle, &metadata.tokenizer)?,
        max_input_tokens,
    )?;
    let max_forward_tokens = config
        .max_forward_tokens
        .unwrap_or(if chosen.device.is_cuda() {
            CUDA_FORWARD_TOKENS
        } else {
            CPU_FORWARD_TOKENS
        })
        .max(1);
    let pooling = config.pooling.unwrap_or(metadata.pooling);
    let info = ModelInfo {
        model_id: metadata.model_id.clone(),
        revision: metadata.revision.clone(),
        family: metadata.family,
        task: metadata.task,
        labels: model.labels().to_vec(),
        pooling,
        normalize: metadata.normalize,
        max_input_tokens,
        dimensions: model.hidden_size(),
        prompts: metadata.prompts.clone(),
        default_prompt_name: metadata.default_prompt_name.clone(),
        device: DeviceKind::of(&chosen.device),
        device_reason: chosen.reason,
        library_dirs: chosen.library_dirs,
        dtype,
        max_forward_tokens,
    };
    Ok(LoadedModel {
        embedder: Embedder::new(model, pooling, max_forward_tokens),
        tokenizer,
        info,
        load_time: started.elapsed(),
    })
}

impl LoadedModel {
    /// Runs the shapes the server will see before it reports ready: an unpadded short forward, a
    /// padded (masked) forward, and a full-length one, from real tokenizer output so any vocabulary
    /// works. On CUDA this loads every kernel module before hardening closes the filesystem.
    pub fn warm_up(&self) -> Result<Duration, EngineError> {
        let started = Instant::now();
        let long_text = "warm ".repeat(self.info.max_input_tokens * 2);
        let texts = [
            "warm up",
            "warm up the model before serving",
            long_text.as_str(),
        ];
        let encoded = self.tokenizer.encode(&texts, true)?;
        let ids: Vec<Vec<u32>> = encoded.into_iter().map(|e| e.ids).collect();
        // The head the task serves runs too, so its first request pays no first-use cost.
        let output = match self.info.task {
            Task::Classify | Task::Rerank => Output::Scores,
            Task::SparseEmbed => Output::Sparse,
            Task::Embed | Task::Generate => Output::Pooled,
        };
        for range in [0..1, 0..2, 2..3] {
            let outputs = vec![output; range.len()];
            self.embedder.run(&ids[range], &outputs)?;
        }
        Ok(started.elapsed())
    }
}

/// The result of one engine batch.
#[derive(Debug)]
pub struct BatchOutput {
    /// One result per submitted sequence, in the order submitted.
    pub embeddings: Vec<Embedding>,
    /// Time the forward(s) took on the engine thread.
    pub inference_time: Duration,
}

/// A batch for the engine thread: sequences and what each one asks for.
#[derive(Debug, Default)]
pub struct EngineBatch {
    pub sequences: Vec<Vec<u32>>,
    pub outputs: Vec<Output>,
    /// Segment ids of pair inputs: empty (no pairs), or one entry per sequence.
    pub type_ids: Vec<Option<Vec<u32>>>,
}

/// Whether the inference thread can take work (TEI's `Backend::health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum EngineHealth {
    /// Idle, or busy for less than the stuck threshold.
    Running,
    /// One batch has been running for longer than the threshold, or work has been queued that
    /// long while the thread took none of it (`busy_ms` is that time).
    Stuck { busy_ms: u64 },
    /// The thread is gone (it panicked outside a batch, or the engine was shut down).
    Stopped,
}

type Reply = oneshot::Sender<Result<BatchOutput, EngineError>>;

enum Job {
    Embed { batch: EngineBatch, reply: Reply },
    Run(Box<dyn FnOnce() + Send>, oneshot::Sender<()>),
}

/// What the engine thread is doing, for [`Engine::health`]: `started` is milliseconds since
/// `epoch` plus one while it works on a job, 0 while idle; `queued` counts jobs sent but not yet
/// taken, and `waiting` (same encoding) is when the thread last made progress while jobs were
/// queued. A thread that is merely idle is healthy; one that stops taking queued work (stopped
/// by a signal, blocked outside a job) is as stuck as one stuck inside a job.
struct BusySince {
    epoch: Instant,
    started: AtomicU64,
    queued: AtomicUsize,
    waiting: AtomicU64,
}

impl BusySince {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A job was sent to the thread.
    fn queue(&self) {
        if self.queued.fetch_add(1, Ordering::AcqRel) == 0 {
            self.waiting.store(self.now(), Ordering::Release);
        }
    }

    /// The thread took a job from its queue: progress, so the rest waits from now.
    fn take(&self) {
        let left = self.queued.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        let waiting = if left == 0 { 0 } else { self.now() };
        self.waiting.store(waiting, Ordering::Release);
    }

    /// How long queued work has waited for an idle thread, if any waits.
    fn waited_for(&self) -> Option<Duration> {
        if self.started.load(Ordering::Acquire) != 0 || self.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        match self.waiting.load(Ordering::Acquire) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }

    fn enter(&self) {
        self.started.store(self.now(), Ordering::Release);
    }

    fn leave(&self) {
        self.started.store(0, Ordering::Release);
    }

    /// How long the current job has run, if one is running.
    fn busy_for(&self) -> Option<Duration> {
        match self.started.load(Ordering::Acquire) {
            0 => None,
            started => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(started - 1)),
            ),
        }
    }
}

/// Handle to the inference thread. Cloning the tokenizer/info is cheap; dropping the engine
/// stops the thread after its current batch.
pub struct Engine {
    jobs: Option<mpsc::Sender<Job>>,
    tokenizer: Arc<TextTokenizer>,
    info: Arc<ModelInfo>,
    busy: Arc<BusySince>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Moves the (warmed-up) model onto its own thread.
    pub fn start(model: LoadedModel) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let embedder = model.embedder;
        let busy = Arc::new(BusySince::new());
        let thread_busy = busy.clone();
        let thread = std::thread::Builder::new()
            .name("sealserve-engine".into())
            .spawn(move || run_engine(&embedder, inbox, &thread_busy))?;
        Ok(Self {
            jobs: Some(jobs),
            tokenizer: Arc::new(model.tokenizer),
            info: Arc::new(model.info),
            busy,
            thread: Some(thread),
        })
    }

    /// The configured tokenizer (tokenization runs on the caller's side, not the engine thread).
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }

    /// What is running.
    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// Whether the thread is alive, not stuck on one job for longer than `stuck_after`, and not
    /// leaving queued work untouched for that long.
    pub fn health(&self, stuck_after: Duration) -> EngineHealth {
        let gone = self.jobs.is_none()
            || self
                .thread
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished);
        if gone {
            return EngineHealth::Stopped;
        }
        match self.busy.busy_for().or_else(|| self.busy.waited_for()) {
            Some(busy) if busy > stuck_after => EngineHealth::Stuck {
                busy_ms: busy.as_millis() as u64,
            },
            _ => EngineHealth::Running,
        }
    }

    /// Queues a batch; the receiver resolves when the engine thread has run it.
    pub fn submit(
        &self,
        batch: EngineBatch,
    ) -> oneshot::Receiver<Result<BatchOutput, EngineError>> {
        let (reply, receiver) = oneshot::channel();
        let job = Job::Embed { batch, reply };
        self.busy.queue();
        if let Some(Err(mpsc::SendError(Job::Embed { reply, .. }))) =
            self.jobs.as_ref().map(|jobs| jobs.send(job))
        {
            self.busy.take();
            let _ = reply.send(Err(EngineError::Stopped));
        }
        receiver
    }

    /// Runs `task` on the engine thread and waits for it (used to apply per-thread hardening).
    pub fn run_on_engine_thread(&self, task: Box<dyn FnOnce() + Send>) -> Result<(), EngineError> {
        let (done, wait) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(EngineError::Stopped)?;
        self.busy.queue();
        if jobs.send(Job::Run(task, done)).is_err() {
            self.busy.take();
            return Err(EngineError::Stopped);
        }
        wait.blocking_recv().map_err(|_| EngineError::Stopped)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_engine(embedder: &Embedder, inbox: mpsc::Receiver<Job>, busy: &BusySince) {
    for job in inbox {
        busy.take();
        match job {
            Job::Embed { batch, reply } => {
                if reply.is_closed() {
                    continue;
                }
                busy.enter();
                let started = Instant::now();
                // A panic inside the tensor library must cost one batch, not the server.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    embedder.run_typed(&batch.sequences, &batch.type_ids, &batch.outputs)
                }));
                busy.leave();
                let result = match outcome {
                    Ok(Ok(embeddings)) => Ok(BatchOutput {
                        embeddings,
                        inference_time: started.elapsed(),
                    }),
                    Ok(Err(e)) => Err(EngineError::from(e)),
                    Err(_) => Err(EngineError::Panicked),
                };
                let _ = reply.send(result);
            }
            Job::Run(task, done) => {
                busy.enter();
                task();
                busy.leave();
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that stops taking queued work (stopped between jobs, blocked outside one) is
    /// reported like one stuck inside a job; an idle thread with nothing queued is not.
    #[test]
    fn queued_work_an_idle_thread_leaves_untouched_counts_as_waiting() {
        let busy = BusySince::new();
        assert_eq!(busy.waited_for(), None, "idle, nothing queued");
        busy.queue();
        std::thread::sleep(Duration::from_millis(40));
        let waited = busy.waited_for().expect("a queued job waits");
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        busy.take();
        assert_eq!(busy.waited_for(), None, "taken: nothing waits");

        // Two queued, one taken after a while: the other waits from that progress on.
        busy.queue();
        busy.queue();
        std::thread::sleep(Duration::from_millis(40));
        busy.take();
        let waited = busy.waited_for().expect("one job still waits");
        assert!(waited < Duration::from_millis(30), "{waited:?}");

        // While a job runs, `busy_for` speaks for the thread, not the queue.
        busy.enter();
        assert_eq!(busy.waited_for(), None);
        assert!(busy.busy_for().is_some());
        busy.leave();
        busy.take();
        assert_eq!(busy.waited_for(), None);
    }
}
