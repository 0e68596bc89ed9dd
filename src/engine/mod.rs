//! The inference engine: loads the verified model onto a device and runs it on a dedicated OS
//! thread, fed through a channel, so the async HTTP side never blocks on a tensor.
//!
//! Public surface: [`load`] (bundle → [`LoadedModel`]), [`LoadedModel::warm_up`], [`Engine`]
//! (submit a batch of token sequences → pooled vectors), the shared [`TextTokenizer`], and
//! [`ModelInfo`]. Knows nothing about HTTP or request batching.

pub mod device;
pub mod embedder;
pub mod pooling;
pub mod precut;
pub mod tokenizer;

use crate::bundle::VerifiedBundle;
use crate::model::{Encoder, LoadError};
use crate::spec::Pooling;
pub use device::{DTypeRequest, DeviceRequest};
pub use embedder::{Embedder, InferenceError};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
pub use tokenizer::{Encoded, TextTokenizer, TokenInfo, TokenizeError};
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
    /// Overrides the per-device default padded-token budget of one forward.
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
    Inference(#[from] InferenceError),
    #[error("the inference thread has stopped")]
    Stopped,
    #[error("inference panicked on this batch; the engine carries on")]
    Panicked,
}

/// What the running model is, for /info, logs and request validation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    pub model_id: String,
    pub revision: String,
    pub family: String,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per input, special tokens included (longer inputs are truncated or refused).
    pub max_input_tokens: usize,
    /// Width of the embeddings.
    pub dimensions: usize,
    pub device: String,
    pub device_reason: String,
    pub dtype: String,
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
    let encoder = Encoder::load(
        metadata.family,
        verified_file(bundle, &metadata.config)?,
        verified_file(bundle, &metadata.weights)?,
        dtype,
        &chosen.device,
    )?;
    let max_input_tokens = metadata.max_seq_length.min(encoder.max_positions());
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
        });
    let pooling = config.pooling.unwrap_or(metadata.pooling);
    let info = ModelInfo {
        model_id: metadata.model_id.clone(),
        revision: metadata.revision.clone(),
        family: metadata.family.to_string(),
        pooling,
        normalize: metadata.normalize,
        max_input_tokens,
        dimensions: encoder.hidden_size(),
        device: device_name(&chosen.device),
        device_reason: chosen.reason,
        dtype: format!("{dtype:?}").to_lowercase(),
        max_forward_tokens,
    };
    Ok(LoadedModel {
        embedder: Embedder::new(encoder, pooling, max_forward_tokens),
        tokenizer,
        info,
        load_time: started.elapsed(),
    })
}

fn device_name(device: &candle_core::Device) -> String {
    match device {
        candle_core::Device::Cpu => "cpu".into(),
        candle_core::Device::Cuda(_) => "cuda".into(),
        other => format!("{other:?}").to_lowercase(),
    }
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
    /// Raw pooled vectors, in the order submitted.
    pub vectors: Vec<Vec<f32>>,
    /// Time the forward(s) took on the engine thread.
    pub inference_time: Duration,
}

type Reply = oneshot::Sender<Result<BatchOutput, EngineError>>;

enum Job {
    Embed {
        sequences: Vec<Vec<u32>>,
        reply: Reply,
    },
    Run(Box<dyn FnOnce() + Send>, oneshot::Sender<()>),
}

/// Handle to the inference thread. Cloning the tokenizer/info is cheap; dropping the engine
/// stops the thread after its current batch.
pub struct Engine {
    jobs: Option<mpsc::Sender<Job>>,
    tokenizer: Arc<TextTokenizer>,
    info: Arc<ModelInfo>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Moves the (warmed-up) model onto its own thread.
    pub fn start(model: LoadedModel) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let embedder = model.embedder;
        let thread = std::thread::Builder::new()
            .name("sealserve-engine".into())
            .spawn(move || run_engine(&embedder, inbox))?;
        Ok(Self {
            jobs: Some(jobs),
            tokenizer: Arc::new(model.tokenizer),
            info: Arc::new(model.info),
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

    /// Queues a batch; the receiver resolves when the engine thread has run it.
    pub fn submit(
        &self,
        sequences: Vec<Vec<u32>>,
    ) -> oneshot::Receiver<Result<BatchOutput, EngineError>> {
        let (reply, receiver) = oneshot::channel();
        let job = Job::Embed { sequences, reply };
        if let Some(Err(mpsc::SendError(Job::Embed { reply, .. }))) =
            self.jobs.as_ref().map(|jobs| jobs.send(job))
        {
            let _ = reply.send(Err(EngineError::Stopped));
        }
        receiver
    }

    /// Blocking convenience for tests, benches and tools (not for async contexts).
    pub fn embed_blocking(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        self.submit(sequences)
            .blocking_recv()
            .map_err(|_| EngineError::Stopped)?
            .map(|output| output.vectors)
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

fn run_engine(embedder: &Embedder, inbox: mpsc::Receiver<Job>) {
    for job in inbox {
        match job {
            Job::Embed { sequences, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let started = Instant::now();
                // A panic inside the tensor library must cost one batch, not the server.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    embedder.embed(&sequences)
                }));
                let result = match outcome {
                    Ok(Ok(vectors)) => Ok(BatchOutput {
                        vectors,
                        inference_time: started.elapsed(),
                    }),
                    Ok(Err(e)) => Err(EngineError::from(e)),
                    Err(_) => Err(EngineError::Panicked),
                };
                let _ = reply.send(result);
            }
            Job::Run(task, done) => {
                task();
                let _ = done.send(());
            }
        }
    }
}
