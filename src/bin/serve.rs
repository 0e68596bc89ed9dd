//! `serve`: verify the embedded bundle (or fetch and verify the `--model-url` one), load it, warm
//! up, harden, serve. Wiring only; every step lives in the library. Any failure is one line on
//! stderr and a documented exit code.

use sealserve::bundle::{Bundle, TrustPolicy, TrustState, VerifiedBundle, VerifyError};
use sealserve::config::{LogFormat, ServeArgs};
use sealserve::engine::{self, DeviceKind, Engine, EngineConfig};
use sealserve::exit::{self, Exit};
use sealserve::generate::{GenerateRequest, Generator, Prompt, TextModel};
use sealserve::http::generate::GenerationState;
use sealserve::http::{self, AppState, BundleInfo, SignatureKind};
use sealserve::infer::Infer;
use sealserve::placement::{self, Container};
use sealserve::remote::{self, LoadReport, ModelUrl};
use sealserve::spec::Task;
use sealserve::{batcher, harden, memory};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

include!(concat!(env!("OUT_DIR"), "/embedded_bundle.rs"));

/// A startup failure: the line to print and the exit code.
struct Fatal {
    code: i32,
    message: String,
}

impl Fatal {
    fn new(code: i32, message: impl std::fmt::Display) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    // Before any other thread allocates, or glibc ignores it.
    sealserve::memory::one_arena();
    pin_compute_threads();
    // First thing: other same-uid processes must not read or write our memory, even while we load.
    let dumpable_error = harden::set_not_dumpable().err();
    let args = match ServeArgs::parse_recording_sources() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help / --version
        Err(e) => {
            // One line, like every other startup failure.
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "serve: {} (see serve --help)",
                line.trim_start_matches("error: ")
            );
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    init_logging(args.log_format);
    if let Some(e) = dumpable_error {
        tracing::warn!("could not mark the process non-dumpable: {e}");
    }
    // Still one thread, nothing secret read yet: fork, and serve from the child (a fresh memory
    // map that a descriptor opened during the start-up window cannot reach). The parent stays
    // behind as the supervisor and never returns from `detach`.
    match harden::detach(args.harden) {
        Ok(harden::Detached {
            supervisor: Some(supervisor),
        }) => tracing::debug!(supervisor, "serving from a forked process"),
        Ok(_) => {}
        Err(e) => {
            eprintln!("serve: refusing to start: {e}");
            return ExitCode::from(exit::HARDEN as u8);
        }
    }
    if args.api_key_on_command_line {
        tracing::warn!(
            "the API key was given on the command line: every local user can read it in \
             /proc/<pid>/cmdline; pass it with --api-key-file (or SEALSERVE_API_KEY) instead"
        );
    }
    match run(&args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("serve: {}", fatal.message);
            ExitCode::from(u8::try_from(fatal.code).unwrap_or(1))
        }
    }
}

/// Sizes candle's compute pool once, from the CPUs this process may use (cgroup/affinity aware).
/// Without `RAYON_NUM_THREADS`, candle 0.11 re-reads /proc/cpuinfo on every matmul. Runs before
/// any other thread exists, so changing the environment is sound.
fn pin_compute_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// Logs go to stderr: JSON lines, or text that is coloured only when stderr is a terminal and
/// `NO_COLOR` is unset (`kubectl logs` and CML show raw escape codes otherwise).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(args: &ServeArgs, started: Instant) -> Result<(), Fatal> {
    args.validate().map_err(|e| Fatal::new(exit::CONFIG, e))?;
    if embedded_bundle_len().is_none() && args.model_url.is_none() {
        return Err(no_model());
    }
    let api_key = args.api_key().map_err(|e| Fatal::new(exit::CONFIG, e))?;
    let policy = args
        .trust
        .policy()
        .map_err(|e| Fatal::new(i32::from(Exit::from(&e).code()), e))?;
    // Kept open for the life of the process: pages of the verified copies that were given back
    // are read again from it, each checked against its verified hash (`memory::PagedCopy`).
    let exe: &'static std::fs::File = Box::leak(Box::new(open_executable()?));
    // Every file the configuration names is read by now (and this executable is open), and no
    // thread exists yet: from here on, this thread and every thread started later may read only
    // what loading, warm-up and serving need, and write nothing.
    // A --model-url is parsed (and its CA file read) before Landlock: a bad one is a
    // configuration error, and what the fetch reads later is in the startup allow-list.
    let remote = args
        .model_url
        .as_deref()
        .map(|url| remote_source(args, url))
        .transpose()?;
    harden::restrict_startup(args.harden, &startup_allow(args, remote.as_ref()))
        .map_err(|e| Fatal::new(exit::HARDEN, e))?;
    let (verified, load) = match remote {
        Some(remote) => fetch_remote(&remote, &policy)?,
        None => {
            let verified = verify(&policy, exe)?;
            let load = LoadReport::embedded(&verified);
            (verified, load)
        }
    };
    if args.verify_only {
        println!("{}", sealserve::seal::summary(&verified));
        return Ok(());
    }
    let binding = args.binding();
    let listener = std::net::TcpListener::bind(binding.address).map_err(|e| {
        Fatal::new(
            exit::SERVE,
            format!("cannot listen on {}: {e}", binding.address),
        )
    })?;
    let address = listener.local_addr().unwrap_or(binding.address);
    tracing::info!(%address, rule = binding.reason, "bound");
    if verified.metadata.task == Task::Generate {
        return run_generation(args, api_key, &verified, &policy, &load, listener, started);
    }

    let engine = load_engine(args, &verified)?;
    let report = harden_process(args, &engine)?;
    let state = app_state(args, api_key, &verified, &policy, &load, &engine, report);
    let (rss, peak) = memory::resident_bytes().unwrap_or((0, 0));
    tracing::info!(
        startup_ms = started.elapsed().as_millis() as u64,
        rss_mib = rss / (1 << 20),
        peak_rss_mib = peak / (1 << 20),
        "ready"
    );
    serve_forever(args, listener, engine, state)
}

/// A model-less build (`SEALSERVE_MODEL=none`) started without `--model-url`: a configuration
/// error, said before anything else (the trust flags cannot help it).
fn no_model() -> Fatal {
    Fatal::new(
        exit::CONFIG,
        "this serve was built without a model (SEALSERVE_MODEL=none): pass --model-url (or SEALSERVE_MODEL_URL) naming a signed bundle",
    )
}

/// The refusal for a bundle that does not verify: its exit code and one line.
fn refuse(e: VerifyError) -> Fatal {
    Fatal::new(
        i32::from(Exit::from(&e).code()),
        format!("refusing to start: {e}"),
    )
}

/// This executable's own file, opened before Landlock restricts what can be opened (the binary
/// lives wherever the operator put it, outside every allow-list).
fn open_executable() -> Result<std::fs::File, Fatal> {
    std::fs::File::open("/proc/self/exe").map_err(|e| {
        refuse(VerifyError::Malformed(format!(
            "cannot read this executable through /proc/self/exe ({e}); serve verifies the bundle from its own file and needs /proc"
        )))
    })
}

/// Verifies the bundle exactly as `seal verify` does: found in this executable's file at its
/// `.sealserve` section (the only bundle marker in the file), every file copied out of the file
/// into memory of our own and hashed there. The loader only ever sees those copies, so nothing
/// is read from the executable after it was hashed.
fn verify(
    policy: &TrustPolicy,
    exe: &'static std::fs::File,
) -> Result<VerifiedBundle<'static>, Fatal> {
    let Some(built_len) = embedded_bundle_len() else {
        return Err(no_model());
    };
    let found = placement::locate(exe).map_err(refuse)?;
    if found.container != Container::Elf || found.len != built_len {
        return Err(refuse(VerifyError::Malformed(format!(
            "this executable's {} section holds {} bytes, but it was built with a {built_len}-byte bundle",
            sealserve::bundle::SECTION,
            found.len
        ))));
    }
    let bundle = Bundle::read(found.source(exe)).map_err(refuse)?;
    let verified = bundle
        .verify(policy, &mut memory::VerifiedCopies)
        .map_err(refuse)?;
    for entry in bundle.entries() {
        if let Some(copy) = verified.file(&entry.name) {
            memory::record_backing(copy, exe, found.offset + entry.offset);
        }
    }
    tracing::info!(
        model = %verified.metadata.model_id,
        revision = %verified.metadata.revision,
        key = %verified.key_fingerprint,
        trust = %verified.trust,
        manifest_sha256 = %verified.manifest_sha256,
        hashed_mib = verified.bytes_hashed / (1 << 20),
        hash_ms = format!("{:.1}", verified.hash_time.as_secs_f64() * 1000.0),
        "bundle verified"
    );
    announce_trust(&verified);
    Ok(verified)
}

/// The warnings for a dev-signed or unpinned bundle, and the trust gauge.
fn announce_trust(verified: &VerifiedBundle) {
    if verified.dev_signed {
        tracing::warn!("THIS BUNDLE IS DEV-SIGNED: it was signed at build time by an ephemeral key. Build releases with SEALSERVE_SIGNATURE and SEALSERVE_PUBLIC_KEY, and pin the key with --trusted-key.");
    }
    if verified.trust == TrustState::Unpinned {
        tracing::warn!("running UNPINNED (--allow-unpinned): any correctly self-signed bundle would have been accepted; pin the release key with --trusted-key or --trusted-keys-dir");
    }
    // Installs the recorder now, so the gauge is recorded before anything else.
    sealserve::telemetry::handle();
    metrics::gauge!(
        sealserve::trust::TRUST_METRIC,
        "state" => verified.trust.to_string(),
        "signature" => if verified.dev_signed { "dev-signed" } else { "signed" }
    )
    .set(1.0);
}

/// A parsed `--model-url` and how to fetch it.
struct RemoteSource {
    url: ModelUrl,
    options: remote::FetchOptions,
}

fn remote_source(args: &ServeArgs, url: &str) -> Result<RemoteSource, Fatal> {
    let url: ModelUrl = url.parse().map_err(|e| Fatal::new(exit::CONFIG, e))?;
    if embedded_bundle_len().is_some() {
        tracing::info!("--model-url given: the bundle embedded in this binary is not used");
    }
    Ok(RemoteSource {
        url,
        options: remote::FetchOptions {
            ca_file: args.ca_file.clone(),
            connections: args.fetch_connections.get(),
            read_timeout: Duration::from_secs(args.fetch_timeout),
        },
    })
}

/// Fetches the `--model-url` bundle into memory and verifies it by the embedded bundle's rules
/// (see `sealserve::remote`): same trust policy, same refusals and exit codes.
fn fetch_remote(
    remote: &RemoteSource,
    policy: &TrustPolicy,
) -> Result<(VerifiedBundle<'static>, LoadReport), Fatal> {
    let url = &remote.url;
    // What the process holds before the bundle is fetched: the start-up log compares the peak
    // with it, so what loading costs is visible apart from the binary and its runtime.
    let (rss_before, _) = memory::resident_bytes().unwrap_or((0, 0));
    // A runtime of its own for the download, shut down (its threads joined) before the model
    // is loaded.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sealserve-fetch")
        .enable_all()
        .build()
        .map_err(|e| {
            Fatal::new(
                exit::INTERNAL,
                format!("cannot start the fetch runtime: {e}"),
            )
        })?;
    let fetched = runtime
        .block_on(remote::fetch(url, policy, &remote.options))
        .map_err(|e| {
            let line = match &e {
                remote::RemoteError::Refused(_) => format!("refusing to start: {url}: {e}"),
                _ => e.to_string(),
            };
            Fatal::new(i32::from(e.exit_code()), line)
        })?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    let (_, peak_fetched) = memory::resident_bytes().unwrap_or((0, 0));
    let verified = fetched.verified;
    let load = fetched.report;
    tracing::info!(
        model = %verified.metadata.model_id,
        revision = %verified.metadata.revision,
        key = %verified.key_fingerprint,
        trust = %verified.trust,
        manifest_sha256 = %verified.manifest_sha256,
        source = %load.source,
        fetched_mib = verified.bytes_hashed / (1 << 20),
        load_ms = load.load_ms,
        throughput_mib_s = load.throughput_mib_s,
        retries = load.retries,
        rss_before_fetch_mib = rss_before / (1 << 20),
        peak_rss_fetched_mib = peak_fetched / (1 << 20),
        "bundle verified"
    );
    announce_trust(&verified);
    Ok((verified, load))
}

fn load_engine(args: &ServeArgs, verified: &VerifiedBundle<'static>) -> Result<Engine, Fatal> {
    if args.max_batch_total_tokens.is_some() {
        return Err(Fatal::new(
            exit::CONFIG,
            "--max-batch-total-tokens applies to a generation bundle only (it bounds the KV cache); remove it",
        ));
    }
    let config = EngineConfig {
        device: args.device,
        dtype: args.dtype,
        max_forward_tokens: args.max_forward_tokens.map(std::num::NonZeroUsize::get),
        pooling: args.pooling,
        cuda_lib_dirs: args.cuda_lib_dirs.clone(),
    };
    let loaded = engine::load(verified, &config).map_err(|e| match e {
        engine::EngineError::Device(_) => Fatal::new(exit::DEVICE, e),
        other => Fatal::new(exit::LOAD, other),
    })?;
    // Each tensor's source pages were released as it was loaded; what is left of the weights'
    // copy (on CPU, the word-embedding table the model reads in place) stays.
    tracing::info!(
        family = %loaded.info.family,
        task = ?loaded.info.task,
        device = %loaded.info.device,
        dtype = %loaded.info.dtype,
        reason = %loaded.info.device_reason,
        load_ms = loaded.load_time.as_millis() as u64,
        "model loaded"
    );
    let warm = loaded
        .warm_up()
        .map_err(|e| Fatal::new(exit::LOAD, format!("warm-up failed: {e}")))?;
    tracing::info!(warm_up_ms = warm.as_millis() as u64, "warmed up");
    Engine::start(loaded).map_err(|e| {
        Fatal::new(
            exit::INTERNAL,
            format!("cannot start the inference thread: {e}"),
        )
    })
}

/// What the server reads from start-up on, before any thread exists: on a CUDA build that may
/// use the GPU, also the driver's libraries, its /proc and /sys files and /dev/nvidia*.
fn startup_allow(args: &ServeArgs, remote: Option<&RemoteSource>) -> harden::FsAllow {
    let mut allow =
        if candle_core::utils::cuda_is_available() && args.device != engine::DeviceRequest::Cpu {
            harden::FsAllow::cuda(&engine::device::cuda_library_dirs(&args.cuda_lib_dirs, &[]))
        } else {
            harden::FsAllow::cpu()
        };
    if let Some(remote) = remote {
        allow
            .read
            .extend(remote::readable_paths(&remote.url, &remote.options));
    }
    allow
}

/// The inference thread, as a pool of one for per-thread hardening.
struct EngineThread<'a>(&'a Engine);

impl harden::ThreadRunner for EngineThread<'_> {
    fn name(&self) -> &'static str {
        "engine"
    }

    fn run_on_each(&self, task: harden::ThreadTask) -> Result<(), String> {
        self.0
            .run_on_engine_thread(Box::new(move || task()))
            .map_err(|e| e.to_string())
    }
}

fn harden_process(args: &ServeArgs, engine: &Engine) -> Result<harden::HardenReport, Fatal> {
    let cuda = engine.info().device == DeviceKind::Cuda;
    let threads = harden::EngineThreads {
        engine: &EngineThread(engine),
        cuda,
        cuda_library_dirs: if cuda {
            sealserve::engine::device::cuda_library_dirs(
                &args.cuda_lib_dirs,
                &engine.info().library_dirs,
            )
        } else {
            Vec::new()
        },
    };
    harden::after_warm_up(args.harden, &threads).map_err(|e| Fatal::new(exit::HARDEN, e))
}

/// Provenance of the verified bundle, as /info shows it.
fn bundle_info(verified: &VerifiedBundle, policy: &TrustPolicy, load: &LoadReport) -> BundleInfo {
    BundleInfo {
        manifest_sha256: verified.manifest_sha256.clone(),
        key_fingerprint: verified.key_fingerprint.clone(),
        key_id: verified.key_id.clone(),
        signature: if verified.dev_signed {
            SignatureKind::DevSigned
        } else {
            SignatureKind::Signed
        },
        trusted_keys_pinned: policy.is_pinned(),
        trust: verified.trust,
        load: load.clone(),
    }
}

fn app_state(
    args: &ServeArgs,
    api_key: Option<String>,
    verified: &VerifiedBundle,
    policy: &TrustPolicy,
    load: &LoadReport,
    engine: &Engine,
    report: harden::HardenReport,
) -> impl FnOnce(batcher::Batcher) -> Arc<AppState> {
    let limits = args.limits();
    let bundle = bundle_info(verified, policy, load);
    let tokenizer = engine.tokenizer().clone();
    let model = engine.info().clone();
    move |batcher| {
        Arc::new(AppState {
            infer: Infer::new(batcher, tokenizer, model, limits),
            bundle,
            hardening: report,
            api_key,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }
}

fn serve_forever(
    args: &ServeArgs,
    listener: std::net::TcpListener,
    engine: Engine,
    state: impl FnOnce(batcher::Batcher) -> Arc<AppState>,
) -> Result<(), Fatal> {
    let engine = Arc::new(engine);
    let limits = args.limits();
    serve_on_runtime(args, listener, move || {
        let state = state(batcher::Batcher::start(engine.clone(), &limits));
        let ready = state.ready.clone();
        (http::router(state), ready)
    })
}

/// Starts the async runtime and serves the router `app` builds (inside the runtime) until
/// SIGTERM/SIGINT, with the connection limits and the shutdown grace of the flags.
fn serve_on_runtime(
    args: &ServeArgs,
    listener: std::net::TcpListener,
    app: impl FnOnce() -> (axum::Router, Arc<AtomicBool>),
) -> Result<(), Fatal> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sealserve-http")
        .build()
        .map_err(|e| {
            Fatal::new(
                exit::INTERNAL,
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    let grace = args.shutdown_grace();
    let (connection_limits, lowered) = args.connection_limits().fitted_to_nofile();
    if lowered {
        tracing::warn!(
            max_connections = connection_limits.max_connections,
            "--max-connections lowered to fit the open-file limit (ulimit -n)"
        );
    }
    runtime.block_on(async move {
        listener
            .set_nonblocking(true)
            .map_err(|e| Fatal::new(exit::SERVE, e))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| Fatal::new(exit::SERVE, e))?;
        let (router, ready) = app();
        http::serve_app(listener, router, ready, grace, connection_limits)
            .await
            .map_err(|e| Fatal::new(exit::SERVE, format!("server failed: {e}")))
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(())
}

/// A generation bundle (task `generate`): the llama engine loaded from the verified in-memory
/// GGUF, its scheduler thread started (after start-up Landlock, like every thread), warmed up,
/// hardened like the embedding engine, and the generation routes served.
fn run_generation(
    args: &ServeArgs,
    api_key: Option<String>,
    verified: &VerifiedBundle<'static>,
    policy: &TrustPolicy,
    load: &LoadReport,
    listener: std::net::TcpListener,
    started: Instant,
) -> Result<(), Fatal> {
    check_generation_flags(args)?;
    let metadata = &verified.metadata;
    let config = args
        .generation_config(metadata.max_seq_length)
        .map_err(|e| Fatal::new(exit::CONFIG, e))?;
    let gguf = verified.file(&metadata.weights).ok_or_else(|| {
        refuse(VerifyError::Malformed(format!(
            "the signed metadata names {} but the bundle has no such file",
            metadata.weights
        )))
    })?;
    let chosen = engine::device::choose(args.device, &args.cuda_lib_dirs)
        .map_err(|e| Fatal::new(exit::DEVICE, e))?;
    let device = DeviceKind::of(&chosen.device);
    let loading = Instant::now();
    let model = TextModel::from_gguf_bytes_on(gguf, &chosen.device)
        .map_err(|e| Fatal::new(exit::LOAD, format!("cannot load {}: {e}", metadata.weights)))?;
    // The model, tokenizer and template hold their own copies: the verified GGUF is not read again.
    sealserve::memory::release_pages(gguf);
    // Which of the CPU kernels run (figures hold per kernel family, not per machine name).
    let kernels = model
        .model
        .cpu_kernels()
        .map_or_else(|| "none".to_string(), |k| k.to_string());
    tracing::info!(
        device = %device,
        reason = %chosen.reason,
        family = %metadata.family,
        cpu_kernels = %kernels,
        load_ms = loading.elapsed().as_millis() as u64,
        "model loaded"
    );
    let generator = Generator::start(Arc::new(model), config).map_err(|e| {
        Fatal::new(
            exit::INTERNAL,
            format!("cannot start the generation thread: {e}"),
        )
    })?;
    let scheduler = generator.config();
    let kv_per_token = generator.model().model.kv_bytes_per_token();
    tracing::info!(
        max_batch = scheduler.max_batch,
        max_context = scheduler.max_context,
        max_batch_total_tokens = scheduler.max_batch_total_tokens,
        kv_bytes_per_token = kv_per_token,
        kv_cache_max_mib = scheduler
            .max_batch_total_tokens
            .saturating_mul(kv_per_token)
            >> 20,
        "scheduler: the KV cache stays below kv_cache_max_mib (--max-batch-total-tokens bounds it)"
    );
    let warming = Instant::now();
    let mut warm_up = GenerateRequest::new(Prompt::Text("Hello".into()));
    warm_up.max_tokens = Some(1);
    generator
        .generate_blocking(warm_up)
        .map_err(|e| Fatal::new(exit::LOAD, format!("warm-up failed: {e}")))?;
    tracing::info!(
        warm_up_ms = warming.elapsed().as_millis() as u64,
        "warmed up"
    );
    let hardening = harden_generation(args, &generator, device, &chosen.library_dirs)?;
    sealserve::telemetry::handle();
    metrics::gauge!(
        sealserve::telemetry::MODEL_INFO,
        "model" => metadata.model_id.clone(),
        "revision" => metadata.revision.clone(),
        "device" => device.to_string(),
        "dtype" => "gguf"
    )
    .set(1.0);
    let state = Arc::new(GenerationState {
        generator,
        model_id: metadata.model_id.clone(),
        revision: metadata.revision.clone(),
        bundle: bundle_info(verified, policy, load),
        hardening,
        limits: args.limits(),
        api_key,
        ready: Arc::new(AtomicBool::new(false)),
    });
    let (rss, peak) = sealserve::memory::resident_bytes().unwrap_or((0, 0));
    tracing::info!(
        startup_ms = started.elapsed().as_millis() as u64,
        rss_mib = rss / (1 << 20),
        peak_rss_mib = peak / (1 << 20),
        "ready"
    );
    serve_on_runtime(args, listener, move || {
        let ready = state.ready.clone();
        (http::generate::generation_router(state), ready)
    })
}

/// Flags that have no meaning for the generation engine are refused, not ignored.
fn check_generation_flags(args: &ServeArgs) -> Result<(), Fatal> {
    if args.dtype != engine::DTypeRequest::Auto {
        return Err(Fatal::new(
            exit::CONFIG,
            "--dtype does not apply to a generation bundle (the GGUF's quantized weights decide it); remove it",
        ));
    }
    if args.pooling.is_some() {
        return Err(Fatal::new(
            exit::CONFIG,
            "--pooling does not apply to a generation bundle; remove it",
        ));
    }
    Ok(())
}

/// The generation scheduler thread, as a pool of one for per-thread hardening.
struct GenerationThread<'a>(&'a Generator);

impl harden::ThreadRunner for GenerationThread<'_> {
    fn name(&self) -> &'static str {
        "generate"
    }

    fn run_on_each(&self, task: harden::ThreadTask) -> Result<(), String> {
        self.0
            .run_on_scheduler(Box::new(move || task()), Duration::from_secs(30))
    }
}

/// The embedding engine's hardening for the generation engine: its scheduler thread and the
/// rayon pool its kernels use get the after-warm-up domain (candle's barrier pool is not used
/// on CPU); on a GPU, exactly the embedding engine's CUDA plan (driver library folders stay
/// readable, the same W^X rule).
fn harden_generation(
    args: &ServeArgs,
    generator: &Generator,
    device: DeviceKind,
    library_dirs: &[std::path::PathBuf],
) -> Result<harden::HardenReport, Fatal> {
    let thread = GenerationThread(generator);
    if device == DeviceKind::Cuda {
        let threads = harden::EngineThreads {
            engine: &thread,
            cuda: true,
            cuda_library_dirs: sealserve::engine::device::cuda_library_dirs(
                &args.cuda_lib_dirs,
                library_dirs,
            ),
        };
        return harden::after_warm_up(args.harden, &threads)
            .map_err(|e| Fatal::new(exit::HARDEN, e));
    }
    let plan = harden::Plan {
        allow: harden::FsAllow::read_only(&harden::default_readable_paths()),
        w_xor_x: None,
    };
    let runners: Vec<&dyn harden::ThreadRunner> = vec![&thread, &harden::RayonGlobalPool];
    harden::apply_on(args.harden, &plan, &runners).map_err(|e| Fatal::new(exit::HARDEN, e))
}
