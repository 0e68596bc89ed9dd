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
use crate::spec::{Family, Pooling};
pub use device::{ComputeDType, DTypeRequest, DeviceKind, DeviceRequest};
pub use embedder::{Embedder, Embedding, Output};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
pub use tokenizer::{Encoded, TextTokenizer, TokenInfo, TokenizeError, TruncationDirection};
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
    let model = crate::model::load(metadata.family, files, dtype.dtype(), &chosen.device)?;
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
        self.embedder.embed(&ids[..1])?;
        self.embedder.embed(&ids[..2])?;
        self.embedder.embed(&ids[2..])?;
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
}

/// Whether the inference thread can take work (TEI's `Backend::health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum EngineHealth {
    /// Idle, or busy for less than the stuck threshold.
    Running,
    /// One batch has been running for longer than the threshold.
    Stuck { busy_ms: u64 },
    /// The thread is gone (it panicked outside a batch, or the engine was shut down).
    Stopped,
}

type Reply = oneshot::Sender<Result<BatchOutput, EngineError>>;

enum Job {
    Embed { batch: EngineBatch, reply: Reply },
    Run(Box<dyn FnOnce() + Send>, oneshot::Sender<()>),
}

/// Milliseconds since `epoch` plus one while the engine thread works on a job, 0 while idle.
struct BusySince {
    epoch: Instant,
    started: AtomicU64,
}

impl BusySince {
    fn enter(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.started.store(now, Ordering::Release);
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
        let busy = Arc::new(BusySince {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
        });
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

    /// Whether the thread is alive and not stuck on one job for longer than `stuck_after`.
    pub fn health(&self, stuck_after: Duration) -> EngineHealth {
        let gone = self.jobs.is_none()
            || self
                .thread
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished);
        if gone {
            return EngineHealth::Stopped;
        }
        match self.busy.busy_for() {
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
        if let Some(Err(mpsc::SendError(Job::Embed { reply, .. }))) =
            self.jobs.as_ref().map(|jobs| jobs.send(job))
        {
            let _ = reply.send(Err(EngineError::Stopped));
        }
        receiver
    }

    /// Runs `task` on the engine thread and waits for it (used to apply per-thread hardening).
    pub fn run_on_engine_thread(&self, task: Box<dyn FnOnce() + Send>) -> Result<(), EngineError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or(EngineError::Stopped)?
            .send(Job::Run(task, done))
            .map_err(|_| EngineError::Stopped)?;
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
        match job {
            Job::Embed { batch, reply } => {
                if reply.is_closed() {
                    continue;
                }
                busy.enter();
                let started = Instant::now();
                // A panic inside the tensor library must cost one batch, not the server.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    embedder.run(&batch.sequences, &batch.outputs)
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
