//! `seal`: release keys, offline MANIFEST signing, checking the bundle inside a `serve` binary,
//! and publishing bundles to S3 / OCI registries. Wiring only; what each subcommand does lives in
//! `sealserve::seal`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sealserve::exit::{self, Exit};
use sealserve::{remote, seal};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Release flow (the private key never meets the build machine):
  seal keygen --out keys/
  seal manifest models/all-MiniLM-L6-v2 > MANIFEST
  seal sign --key keys/model.key MANIFEST
  SEALSERVE_SIGNATURE=MANIFEST.minisig SEALSERVE_PUBLIC_KEY=keys/model.pub cargo build --release
  serve --trusted-key <fingerprint printed by keygen>

Remote bundles (serve --model-url):
  seal export target/release/serve bundle/
  seal publish bundle/ s3://models/minilm/          # or oci://registry/team/minilm
  seal verify --trusted-key <fingerprint> s3://models/minilm/
";

#[derive(Parser, Debug)]
#[command(
    name = "seal",
    version,
    about = "Make release keys, sign model MANIFESTs, verify, inspect or export the bundle sealed into a serve binary, and publish bundles to S3 or OCI registries",
    after_help = format!("{AFTER_HELP}\n{}", exit::seal_help())
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an Ed25519 release key pair: model.key (0600), model.pub, model.pub.minisign
    Keygen {
        /// Folder to write the key files into
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key pair
        #[arg(long)]
        force: bool,
    },
    /// Print the MANIFEST for a model folder (from model.toml, exactly what build.rs embeds) or for any folder of files
    Manifest {
        /// models/<name> or a folder of files
        dir: PathBuf,
        /// Write to this file instead of stdout
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign a MANIFEST: writes MANIFEST.sig (raw base64) and MANIFEST.minisig
    Sign {
        /// Private key (PKCS#8 PEM from `seal keygen` or `openssl genpkey -algorithm ed25519`)
        #[arg(long)]
        key: PathBuf,
        /// The MANIFEST to sign
        manifest: PathBuf,
        /// Where to write the signatures [default: next to the MANIFEST]
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Timestamp in the minisign trusted comment [default: $SOURCE_DATE_EPOCH, else now]
        #[arg(long)]
        timestamp: Option<u64>,
    },
    /// Verify a serve binary, a folder made by `seal export`, or a published bundle URL (s3://, oci://, https://, file://) exactly as serve does at startup
    Verify {
        /// A serve binary, an exported bundle folder, or a bundle URL as serve --model-url takes it
        target: String,
        /// Trusted signing keys (64-hex fingerprints or PEM/minisign key files, comma separated); required for a URL
        #[arg(
            long = "trusted-key",
            env = "SEALSERVE_TRUSTED_KEYS",
            value_delimiter = ','
        )]
        trusted_keys: Vec<String>,
        /// For a URL: trust only the CA certificates in this PEM file
        #[arg(long = "ca-file", env = "SEALSERVE_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// For a URL: parallel range requests
        #[arg(long = "fetch-connections", env = "SEALSERVE_FETCH_CONNECTIONS", default_value_t = remote::DEFAULT_CONNECTIONS)]
        fetch_connections: usize,
        /// For a URL: seconds the store may stay silent before a request is retried
        #[arg(long = "fetch-timeout", env = "SEALSERVE_FETCH_TIMEOUT", default_value_t = remote::DEFAULT_READ_TIMEOUT.as_secs())]
        fetch_timeout: u64,
    },
    /// Verify a bundle folder (as made by `seal export`) and upload it to s3://bucket/prefix/ or push it as an OCI artifact to oci://registry/repo[:tag]; prints the --model-url to serve it with
    Publish {
        /// The bundle folder
        dir: PathBuf,
        /// s3://bucket/prefix/, oci://registry/repo[:tag] or oci+http://registry/repo[:tag]
        destination: String,
        /// Also require the folder to be signed by one of these keys
        #[arg(
            long = "trusted-key",
            env = "SEALSERVE_TRUSTED_KEYS",
            value_delimiter = ','
        )]
        trusted_keys: Vec<String>,
        /// Trust only the CA certificates in this PEM file
        #[arg(long = "ca-file", env = "SEALSERVE_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Show what a serve binary carries, without trusting it
    Inspect {
        /// A serve binary
        binary: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Write every bundle entry of a serve binary into a folder, for checking with standard tools
    Export {
        /// A serve binary
        binary: PathBuf,
        /// Folder to write into
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Retries and failures of remote stores are logged as warnings; RUST_LOG=info adds progress.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("seal: {}", seal::error_line(&error));
            // TODO(lead): fold the remote codes (18 no pin, 20 fetch) into Exit::of.
            match error.downcast_ref::<remote::RemoteError>() {
                Some(remote_error) => ExitCode::from(remote_error.exit_code()),
                None => Exit::of(&error).into(),
            }
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Keygen { out, force } => {
            let pair = seal::keygen(&out, force)?;
            for path in &pair.written {
                println!("wrote {}", path.display());
            }
            println!(
                "key fingerprint {} (minisign key id {}); pin it with --trusted-key {}",
                pair.fingerprint, pair.key_id, pair.fingerprint
            );
        }
        Command::Manifest { dir, out } => {
            let manifest = seal::manifest_for_dir(&dir)?;
            match out {
                Some(path) => std::fs::write(&path, &manifest)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout()
                    .lock()
                    .write_all(&manifest)
                    .context("cannot write to stdout")?,
            }
        }
        Command::Sign {
            key,
            manifest,
            out_dir,
            timestamp,
        } => {
            let signed = seal::sign(&key, &manifest, out_dir.as_deref(), timestamp)?;
            for path in &signed.written {
                println!("wrote {}", path.display());
            }
            println!(
                "signed {} with key fingerprint {} (minisign key id {})",
                manifest.display(),
                signed.fingerprint,
                signed.key_id
            );
        }
        Command::Verify {
            target,
            trusted_keys,
            ca_file,
            fetch_connections,
            fetch_timeout,
        } => {
            let line = if target.contains("://") {
                let options = remote::FetchOptions {
                    ca_file,
                    connections: fetch_connections.max(1),
                    read_timeout: std::time::Duration::from_secs(fetch_timeout.max(1)),
                };
                seal::verify_url(&target, &trusted_keys, &options)?
            } else {
                seal::verify(std::path::Path::new(&target), &trusted_keys)?
            };
            println!("{line}");
        }
        Command::Publish {
            dir,
            destination,
            trusted_keys,
            ca_file,
        } => {
            let published = seal::publish(&dir, &destination, &trusted_keys, ca_file.as_deref())?;
            println!("{}", published.verified);
            println!("published {} files; serve them with:", published.files);
            println!(
                "  serve --trusted-key <fingerprint> --model-url {}",
                published.url
            );
        }
        Command::Inspect { binary, json } => {
            let inspection = seal::inspect(&binary)?;
            if json {
                let text = serde_json::to_string_pretty(&inspection)
                    .context("cannot encode the report as JSON")?;
                println!("{text}");
            } else {
                print!("{}", inspection.to_text());
            }
        }
        Command::Export { binary, dir } => {
            let export = seal::export(&binary, &dir)?;
            for path in &export.written {
                println!("wrote {}", path.display());
            }
            println!("re-check with:");
            for command in &export.commands {
                println!("  {command}");
            }
        }
    }
    Ok(())
}
