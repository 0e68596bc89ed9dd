//! `serve`'s configuration: every flag has an environment variable (containers and CML set env,
//! not argv), and the CML Application binding rule lives here and nowhere else.

use crate::engine::{DTypeRequest, DeviceRequest};
use crate::generate::GeneratorConfig;
use crate::harden::HardenLevel;
use crate::limits::Limits;
use crate::spec::Pooling;
use crate::trust::TrustArgs;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

/// The exit-code table lives in `crate::exit`; kept reachable as `config::exit` as well.
pub use crate::exit;

/// Parses a count flag that must be positive, with an error that says so (clap's own
/// `NonZeroUsize` message, "number would be zero for non-zero type", does not say what to do).
fn at_least_one(value: &str) -> Result<NonZeroUsize, String> {
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("must be a whole number of at least 1, got {value:?}"))?;
    NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_string())
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `serve` flags.
// The field docs are `--help` text, where `<pid>`-style placeholders are meant literally.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Parser, Debug, Clone)]
#[command(
    name = "serve",
    version,
    about = "Serve the signed model carried inside this binary: embeddings, re-ranking, classification or text generation (TEI-, TGI-, OpenAI- and CML-compatible HTTP API)",
    after_help = exit::help()
)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0, or 127.0.0.1 when CDSW_APP_PORT decides the port]
    #[arg(long, env = "HOST")]
    pub host: Option<IpAddr>,

    /// Port to listen on [default: $CDSW_APP_PORT when set (CML Applications), else 8080]
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,

    /// Port a CML Application must serve on; used (with 127.0.0.1) when --port is not given
    #[arg(long = "cdsw-app-port", env = "CDSW_APP_PORT", hide = true)]
    pub cdsw_app_port: Option<u16>,

    /// Where to run the model: auto (CUDA if usable, else CPU), cpu, cuda or cuda:N
    #[arg(long, env = "SEALSERVE_DEVICE", default_value = "auto")]
    pub device: DeviceRequest,

    /// Compute dtype: auto (f32 on CPU, f16 on CUDA), f32, f16 or bf16
    #[arg(
        long,
        env = "SEALSERVE_DTYPE",
        value_enum,
        ignore_case = true,
        default_value = "auto"
    )]
    pub dtype: DTypeRequest,

    /// Override the pooling recorded in the signed metadata (mean, cls, last_token)
    #[arg(long, env = "SEALSERVE_POOLING")]
    pub pooling: Option<Pooling>,

    /// Most tokens (sum over inputs) packed into one batch; for a generation model, tokens one decode step runs (every decoding sequence's next token, then prompt chunks) [default: 16384; 256 for a generation model]
    #[arg(long, env = "SEALSERVE_MAX_BATCH_TOKENS", value_parser = at_least_one)]
    pub max_batch_tokens: Option<NonZeroUsize>,

    /// Most inputs packed into one batch (1 disables batching across requests); for a generation model, sequences decoded together (batch slots) [default: 256; 16 for a generation model]
    #[arg(long, env = "SEALSERVE_MAX_BATCH_SIZE", value_parser = at_least_one)]
    pub max_batch_size: Option<NonZeroUsize>,

    /// Generation models only: most tokens the sequences in batch slots may hold together, each its prompt plus its max_tokens — the bound on KV-cache memory (/info shows the bytes per token); a request waits in the queue until it fits, and lowers the context limit to this value if below it [default: max batch size × context length]
    #[arg(long, env = "SEALSERVE_MAX_BATCH_TOTAL_TOKENS", value_parser = at_least_one)]
    pub max_batch_total_tokens: Option<NonZeroUsize>,

    /// Requests in flight (queued or running) before new ones get 429 at once
    #[arg(long, env = "SEALSERVE_MAX_CONCURRENT_REQUESTS", value_parser = at_least_one, default_value_t = Limits::DEFAULT.max_concurrent_requests)]
    pub max_concurrent_requests: NonZeroUsize,

    /// Most inputs one request may carry (422 beyond)
    #[arg(long, env = "SEALSERVE_MAX_CLIENT_BATCH_SIZE", value_parser = at_least_one, default_value_t = Limits::DEFAULT.max_client_batch_size)]
    pub max_client_batch_size: NonZeroUsize,

    /// Padded tokens per forward pass [default: 1024 on CPU, 32768 on CUDA]; bounds activation memory
    #[arg(long, env = "SEALSERVE_MAX_FORWARD_TOKENS", value_parser = at_least_one)]
    pub max_forward_tokens: Option<NonZeroUsize>,

    /// Largest request body in bytes (413 beyond)
    #[arg(long, env = "SEALSERVE_PAYLOAD_LIMIT", value_parser = at_least_one, default_value_t = Limits::DEFAULT.payload_limit)]
    pub payload_limit: NonZeroUsize,

    /// Require `Authorization: Bearer <key>` on every route except /health and /ready. On the command line every local user can read it (/proc/<pid>/cmdline): prefer --api-key-file
    #[arg(long, env = "SEALSERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Read the API key from this file (one line; one trailing newline is dropped), e.g. a mounted Kubernetes Secret
    #[arg(long, env = "SEALSERVE_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,

    /// Whether --api-key was given on the command line (set by [`ServeArgs::parse_recording_sources`]).
    #[arg(skip)]
    pub api_key_on_command_line: bool,

    /// Trust anchors and bindings (see `crate::trust`); without one, serve refuses to start.
    #[command(flatten)]
    pub trust: TrustArgs,

    /// Serve the signed bundle at this URL instead of the embedded one: s3://bucket/prefix/, oci://registry/repo@sha256:<digest>, https://host/prefix/ or file:///dir/ (verified against the trusted keys, then streamed into memory)
    #[arg(long = "model-url", env = "SEALSERVE_MODEL_URL")]
    pub model_url: Option<String>,

    /// Trust only the CA certificates in this PEM file for TLS to the model store (private CAs)
    #[arg(long = "ca-file", env = "SEALSERVE_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Parallel range requests when fetching a --model-url bundle
    #[arg(long = "fetch-connections", env = "SEALSERVE_FETCH_CONNECTIONS", value_parser = at_least_one, default_value_t = crate::remote::DEFAULT_CONNECTIONS)]
    pub fetch_connections: NonZeroUsize,

    /// Seconds a model store may stay silent (connecting or sending) before the request is retried
    #[arg(long = "fetch-timeout", env = "SEALSERVE_FETCH_TIMEOUT", default_value_t = crate::remote::DEFAULT_READ_TIMEOUT.as_secs())]
    pub fetch_timeout: u64,

    /// Verify the embedded bundle, print what it carries, and exit
    #[arg(long, env = "SEALSERVE_VERIFY_ONLY")]
    pub verify_only: bool,

    /// Self-hardening: strict (not dumpable, start-up fork, Landlock from start-up, W^X, seccomp), basic (the same without Landlock), off (also needed under strace/gdb: the others refuse a tracer)
    #[arg(long, env = "SEALSERVE_HARDEN", default_value = "strict")]
    pub harden: HardenLevel,

    /// Log format
    #[arg(long, env = "SEALSERVE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT
    #[arg(long, env = "SEALSERVE_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Seconds a client has to send a complete request head; also how long an idle HTTP/1 keep-alive connection waits for its next request
    #[arg(long, env = "SEALSERVE_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,

    /// Seconds a request body has to arrive in full (a total, not a gap between chunks)
    #[arg(long, env = "SEALSERVE_BODY_READ_TIMEOUT", default_value_t = 30)]
    pub body_read_timeout: u64,

    /// Seconds a connection with no request in flight stays open (HTTP/2 too)
    #[arg(long, env = "SEALSERVE_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Client connections open at once (more wait in the listen backlog); lowered to fit the open-file limit
    #[arg(long, env = "SEALSERVE_MAX_CONNECTIONS", value_parser = at_least_one, default_value_t = NonZeroUsize::new(1024).expect("non-zero"))]
    pub max_connections: NonZeroUsize,

    /// Extra folders holding libcuda/libcublas/libcublasLt/libcurand (colon separated)
    #[arg(
        long = "cuda-lib-dirs",
        env = "SEALSERVE_CUDA_LIB_DIRS",
        value_delimiter = ':'
    )]
    pub cuda_lib_dirs: Vec<PathBuf>,
}

/// Where to listen, and which rule decided it (logged at startup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub address: SocketAddr,
    pub reason: &'static str,
}

impl ServeArgs {
    /// Parses argv and the environment like `try_parse`, and records whether `--api-key` came
    /// from the command line, where every local user can read it.
    pub fn parse_recording_sources() -> Result<Self, clap::Error> {
        let matches = Self::command().try_get_matches()?;
        let mut args = Self::from_arg_matches(&matches)?;
        args.api_key_on_command_line =
            matches.value_source("api_key") == Some(clap::parser::ValueSource::CommandLine);
        Ok(args)
    }

    /// The API key from `--api-key`, `SEALSERVE_API_KEY` or `--api-key-file` (clap refuses both
    /// forms at once), checked: not empty, visible ASCII only (it travels in an HTTP header, so
    /// a space, a control character or a second line in the file could never match).
    ///
    /// The file is read here, by the forked server after start-up (see `harden::detach`), so
    /// the key never sits in the supervisor's memory. Errors are configuration errors (exit 2).
    pub fn api_key(&self) -> Result<Option<String>, String> {
        let (key, origin) = match (&self.api_key, &self.api_key_file) {
            (Some(key), _) => (key.clone(), "--api-key / SEALSERVE_API_KEY".to_owned()),
            (None, Some(path)) => (read_api_key_file(path)?, format!("{}", path.display())),
            (None, None) => return Ok(None),
        };
        if key.trim().is_empty() {
            return Err(format!("the API key from {origin} is empty"));
        }
        if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the API key from {origin} contains {bad:?}: use visible ASCII characters only \
                 (no spaces, no second line); it is sent in an HTTP header"
            ));
        }
        Ok(Some(key))
    }

    /// Applies the binding rules: explicit --port wins; otherwise `CDSW_APP_PORT` means a CML
    /// Application, which must listen on 127.0.0.1:$CDSW_APP_PORT; otherwise 0.0.0.0:8080.
    pub fn binding(&self) -> Binding {
        match (self.port, self.cdsw_app_port) {
            (Some(port), _) => Binding {
                address: SocketAddr::new(self.host.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), port),
                reason: "--port/PORT",
            },
            (None, Some(port)) => Binding {
                address: SocketAddr::new(self.host.unwrap_or(Ipv4Addr::LOCALHOST.into()), port),
                reason: "CDSW_APP_PORT (CML Application: 127.0.0.1:$CDSW_APP_PORT)",
            },
            (None, None) => Binding {
                address: SocketAddr::new(self.host.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), 8080),
                reason: "default",
            },
        }
    }

    /// Timeouts and the connection cap of the HTTP listener.
    pub fn connection_limits(&self) -> crate::http::connections::ConnectionLimits {
        crate::http::connections::ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            body_read_timeout: Duration::from_secs(self.body_read_timeout),
            max_connections: self.max_connections.get(),
        }
    }

    /// Time granted to in-flight requests on shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }

    /// The request, batching and concurrency limits the flags set (an embedding model's
    /// defaults where a batching flag is not given).
    pub fn limits(&self) -> Limits {
        Limits {
            max_client_batch_size: self.max_client_batch_size,
            payload_limit: self.payload_limit,
            max_batch_tokens: self
                .max_batch_tokens
                .unwrap_or(Limits::DEFAULT.max_batch_tokens),
            max_batch_size: self
                .max_batch_size
                .unwrap_or(Limits::DEFAULT.max_batch_size),
            max_concurrent_requests: self.max_concurrent_requests,
        }
    }

    /// The generation scheduler's limits from the same flags: `--max-batch-size` batch slots
    /// and `--max-batch-tokens` tokens per step (each with the generation default when not
    /// given), `--max-concurrent-requests` requests in flight; `max_context` is the model's.
    /// A step budget below the slots is refused (a configuration error): every slot decodes
    /// one token per step, so fewer tokens would leave slots idle.
    pub fn generation_config(&self, max_context: usize) -> Result<GeneratorConfig, String> {
        let max_batch = self
            .max_batch_size
            .map_or(GeneratorConfig::DEFAULT_MAX_BATCH, NonZeroUsize::get);
        let max_step_tokens = self
            .max_batch_tokens
            .map_or(GeneratorConfig::DEFAULT_MAX_STEP_TOKENS, NonZeroUsize::get);
        if max_step_tokens < max_batch {
            return Err(format!(
                "--max-batch-tokens {max_step_tokens} is below --max-batch-size {max_batch}: a \
                 generation model decodes one token per batch slot each step; raise \
                 --max-batch-tokens to at least {max_batch} or lower --max-batch-size"
            ));
        }
        Ok(GeneratorConfig {
            max_batch,
            max_step_tokens,
            max_concurrent_requests: self.max_concurrent_requests.get(),
            max_context,
            max_batch_total_tokens: self
                .max_batch_total_tokens
                .map_or(usize::MAX, NonZeroUsize::get),
            ..GeneratorConfig::default()
        })
    }

    /// Checks values clap cannot (zero limits are refused by their non-zero types already).
    pub fn validate(&self) -> Result<(), String> {
        let seconds = [
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--fetch-timeout", self.fetch_timeout),
        ];
        if let Some((name, _)) = seconds.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err("--api-key / SEALSERVE_API_KEY is set but empty".into());
        }
        if self
            .api_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("--api-key-file / SEALSERVE_API_KEY_FILE is set but empty".into());
        }
        Ok(())
    }
}

/// Most bytes read from `--api-key-file`: a key is short; a larger file is a wrong path.
const API_KEY_FILE_LIMIT: u64 = 4096;

/// The key in `path`: its contents less one trailing newline (`\n` or `\r\n`).
fn read_api_key_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(API_KEY_FILE_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the API key file {shown}: {e}"))?;
    if bytes.len() as u64 > API_KEY_FILE_LIMIT {
        return Err(format!(
            "the API key file {shown} is larger than {API_KEY_FILE_LIMIT} bytes: point \
             --api-key-file at a file holding only the key"
        ));
    }
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("the API key file {shown} is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!(
            "the API key file {shown} is empty: write the key into it, or drop --api-key-file"
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(args);
        ServeArgs::try_parse_from(argv).expect("parse")
    }

    #[test]
    fn cml_port_binds_loopback_unless_port_given() {
        let args = parse(&["--cdsw-app-port", "8100"]);
        assert_eq!(args.binding().address, "127.0.0.1:8100".parse().unwrap());
        let args = parse(&["--cdsw-app-port", "8100", "--port", "9000"]);
        assert_eq!(args.binding().address, "0.0.0.0:9000".parse().unwrap());
        let args = parse(&[]);
        assert_eq!(args.binding().address, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn zero_limits_are_refused() {
        for flag in [
            "--max-batch-size",
            "--max-batch-tokens",
            "--max-concurrent-requests",
            "--max-client-batch-size",
            "--payload-limit",
            "--max-forward-tokens",
            "--max-batch-total-tokens",
        ] {
            assert!(
                ServeArgs::try_parse_from(["serve", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
        assert!(parse(&[]).validate().is_ok());
        assert_eq!(parse(&[]).limits(), Limits::DEFAULT);
    }

    #[test]
    fn batching_flags_set_the_generation_scheduler_with_its_own_defaults() {
        let config = parse(&[]).generation_config(8192).expect("defaults");
        assert_eq!(
            (config.max_batch, config.max_step_tokens),
            (
                GeneratorConfig::DEFAULT_MAX_BATCH,
                GeneratorConfig::DEFAULT_MAX_STEP_TOKENS
            )
        );
        assert_eq!(
            config.max_concurrent_requests,
            Limits::DEFAULT.max_concurrent_requests.get()
        );
        assert_eq!(config.max_context, 8192);
        assert_eq!(
            config.max_batch_total_tokens,
            usize::MAX,
            "no budget unless asked"
        );
        let budget = parse(&["--max-batch-total-tokens", "5000"])
            .generation_config(8192)
            .expect("budget");
        assert_eq!(budget.max_batch_total_tokens, 5000);
        let args = parse(&[
            "--max-batch-size",
            "2",
            "--max-batch-tokens",
            "40",
            "--max-concurrent-requests",
            "3",
        ]);
        let config = args.generation_config(512).expect("flags");
        assert_eq!(
            (
                config.max_batch,
                config.max_step_tokens,
                config.max_concurrent_requests
            ),
            (2, 40, 3)
        );
        // The embedding limits keep their own defaults and take the same flags.
        assert_eq!(
            parse(&[]).limits().max_batch_size,
            Limits::DEFAULT.max_batch_size
        );
        assert_eq!(args.limits().max_batch_size.get(), 2);
        let err = parse(&["--max-batch-size", "300"])
            .generation_config(512)
            .unwrap_err();
        assert!(
            err.contains("--max-batch-tokens 256") && err.contains("at least 300"),
            "{err}"
        );
    }

    #[test]
    fn dtype_parses_case_insensitively_with_aliases() {
        assert_eq!(parse(&["--dtype", "BF16"]).dtype, DTypeRequest::Bf16);
        assert_eq!(parse(&["--dtype", "half"]).dtype, DTypeRequest::F16);
        assert!(ServeArgs::try_parse_from(["serve", "--dtype", "f64"]).is_err());
    }

    fn key_file(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api-key");
        std::fs::write(&path, contents).expect("write key file");
        (dir, path)
    }

    #[test]
    fn api_key_file_drops_one_trailing_newline() {
        for (contents, key) in [
            (&b"s3cret\n"[..], "s3cret"),
            (b"s3cret", "s3cret"),
            (b"s3cret\r\n", "s3cret"),
        ] {
            let (_dir, path) = key_file(contents);
            let args = parse(&["--api-key-file", path.to_str().unwrap()]);
            assert_eq!(args.api_key().unwrap().as_deref(), Some(key));
        }
    }

    #[test]
    fn bad_api_key_files_are_refused() {
        for (contents, expect) in [
            (&b""[..], "is empty"),
            (b"\n", "is empty"),
            (b"s3cret\n\n", "contains '\\n'"),
            (b"one\ntwo\n", "contains '\\n'"),
            (b"with space\n", "contains ' '"),
            (b"\xff\xfe\n", "not UTF-8"),
        ] {
            let (_dir, path) = key_file(contents);
            let args = parse(&["--api-key-file", path.to_str().unwrap()]);
            let err = args.api_key().unwrap_err();
            assert!(err.contains(expect), "{contents:?}: {err}");
        }
        let (_dir, path) = key_file(&[b'k'; 5000]);
        let err = parse(&["--api-key-file", path.to_str().unwrap()])
            .api_key()
            .unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let err = parse(&["--api-key-file", "/nonexistent/key"])
            .api_key()
            .unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("/nonexistent/key"),
            "{err}"
        );
    }

    #[test]
    fn api_key_and_api_key_file_are_exclusive() {
        let err = ServeArgs::try_parse_from(["serve", "--api-key", "a", "--api-key-file", "/k"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(
            parse(&["--api-key", "abc"]).api_key().unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(parse(&[]).api_key().unwrap(), None);
    }
}
