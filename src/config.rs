//! `serve`'s configuration: every flag has an environment variable (containers and CML set env,
//! not argv), and the CML Application binding rule lives here and nowhere else.

use crate::engine::{DTypeRequest, DeviceRequest};
use crate::harden::HardenLevel;
use crate::limits::Limits;
use crate::spec::Pooling;
use clap::{Parser, ValueEnum};
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
#[derive(Parser, Debug, Clone)]
#[command(
    name = "serve",
    version,
    about = "Serve the signed embedding model carried inside this binary (TEI-, OpenAI- and CML-compatible HTTP API)",
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

    /// Most tokens (sum over inputs) packed into one batch
    #[arg(long, env = "SEALSERVE_MAX_BATCH_TOKENS", value_parser = at_least_one, default_value_t = Limits::DEFAULT.max_batch_tokens)]
    pub max_batch_tokens: NonZeroUsize,

    /// Most inputs packed into one batch (1 disables batching across requests)
    #[arg(long, env = "SEALSERVE_MAX_BATCH_SIZE", value_parser = at_least_one, default_value_t = Limits::DEFAULT.max_batch_size)]
    pub max_batch_size: NonZeroUsize,

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

    /// Require `Authorization: Bearer <key>` on every route except /health and /ready
    #[arg(long, env = "SEALSERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Trusted signing keys (64-hex fingerprints or PEM/minisign key files, comma separated); any other key, and dev-signed bundles, are refused
    #[arg(
        long = "trusted-key",
        env = "SEALSERVE_TRUSTED_KEYS",
        value_delimiter = ','
    )]
    pub trusted_keys: Vec<String>,

    /// Verify the embedded bundle, print what it carries, and exit
    #[arg(long, env = "SEALSERVE_VERIFY_ONLY")]
    pub verify_only: bool,

    /// Self-hardening after warm-up: strict (not dumpable + seccomp + Landlock), basic (not dumpable + seccomp), off
    #[arg(long, env = "SEALSERVE_HARDEN", default_value = "strict")]
    pub harden: HardenLevel,

    /// Log format
    #[arg(long, env = "SEALSERVE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT
    #[arg(long, env = "SEALSERVE_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

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

    /// Time granted to in-flight requests on shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }

    /// The request, batching and concurrency limits the flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_client_batch_size: self.max_client_batch_size,
            payload_limit: self.payload_limit,
            max_batch_tokens: self.max_batch_tokens,
            max_batch_size: self.max_batch_size,
            max_concurrent_requests: self.max_concurrent_requests,
        }
    }

    /// Checks values clap cannot (zero limits are refused by their non-zero types already).
    pub fn validate(&self) -> Result<(), String> {
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err("--api-key / SEALSERVE_API_KEY is set but empty".into());
        }
        Ok(())
    }
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
    fn dtype_parses_case_insensitively_with_aliases() {
        assert_eq!(parse(&["--dtype", "BF16"]).dtype, DTypeRequest::Bf16);
        assert_eq!(parse(&["--dtype", "half"]).dtype, DTypeRequest::F16);
        assert!(ServeArgs::try_parse_from(["serve", "--dtype", "f64"]).is_err());
    }
}
