//! `seal`: release keys, offline MANIFEST signing, release-file signing, checking the bundle
//! inside a `serve` binary, and publishing bundles to S3 / OCI registries. Wiring only; what each
//! subcommand does lives in `sealserve::seal`.
// The doc comments on the clap types below are `seal --help`'s text, where `<name>` and
// `[:tag]` are placeholders meant literally, not HTML or links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sealserve::exit::{self, Exit};
use sealserve::remote;
use sealserve::seal::{self, pin};
use sealserve::trust::TrustArgs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Pin a model from a local Hugging Face snapshot (writes models/<name>/model.toml):
  seal pin ~/.cache/huggingface/hub/models--BAAI--bge-reranker-base/snapshots/<commit>

Release flow (the private key never meets the build machine):
  seal keygen --out keys/
  seal manifest models/all-MiniLM-L6-v2 > MANIFEST
  seal sign --key keys/model.key MANIFEST
  SEALSERVE_SIGNATURE=MANIFEST.minisig SEALSERVE_PUBLIC_KEY=keys/model.pub cargo build --release
  scripts/release-sign --key keys/model.key      # signs serve itself: serve.sig, serve.minisig, SHA256SUMS
  serve --trusted-key \"$(seal fingerprint keys/model.pub)\"   # pin the key file's fingerprint, never one read from a binary

Remote bundles (serve --model-url):
  seal export target/release/serve bundle/
  seal publish --trusted-key \"$(seal fingerprint keys/model.pub)\" bundle/ s3://models/minilm/   # or oci://registry/team/minilm
  seal verify --trusted-key \"$(seal fingerprint keys/model.pub)\" s3://models/minilm/
";

/// How `seal verify <url>` fetches (the same flags as `serve --model-url`).
#[derive(clap::Args, Debug)]
struct FetchArgs {
    /// For a URL: trust only the CA certificates in this PEM file
    #[arg(long = "ca-file", env = "SEALSERVE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// For a URL: parallel range requests
    #[arg(long = "fetch-connections", env = "SEALSERVE_FETCH_CONNECTIONS", value_parser = clap::value_parser!(u16).range(1..), default_value_t = remote::DEFAULT_CONNECTIONS.get() as u16)]
    fetch_connections: u16,
    /// For a URL: seconds the store may stay silent before a request is retried
    #[arg(long = "fetch-timeout", env = "SEALSERVE_FETCH_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..), default_value_t = remote::DEFAULT_READ_TIMEOUT.as_secs())]
    fetch_timeout: u64,
}

impl FetchArgs {
    fn options(&self) -> remote::FetchOptions {
        remote::FetchOptions {
            ca_file: self.ca_file.clone(),
            connections: usize::from(self.fetch_connections),
            read_timeout: std::time::Duration::from_secs(self.fetch_timeout),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "seal",
    version,
    about = "Make release keys, sign model MANIFESTs, and verify, inspect or export the bundle sealed into a serve binary",
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
    /// Write models/<name>/model.toml from a local Hugging Face snapshot: every embedded file's size and sha256, and family, task, pooling, normalize, max_seq_length and prompts read from config.json and the sentence-transformers files
    Pin {
        /// The snapshot folder (e.g. ~/.cache/huggingface/hub/models--org--name/snapshots/<commit>)
        dir: PathBuf,
        /// Hugging Face repo id [default: from a hub-cache snapshot path]
        #[arg(long)]
        repo: Option<String>,
        /// Full 40-hex commit of the snapshot [default: from a hub-cache snapshot path]
        #[arg(long)]
        revision: Option<String>,
        /// Where to write [default: models/<repo name>/model.toml]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing model.toml
        #[arg(long)]
        force: bool,
        /// Longest input in tokens [default: the snapshot's max_seq_length / model_max_length]
        #[arg(long)]
        max_seq_length: Option<usize>,
        /// Pooling of an embedding model (mean, cls, last_token) [default: the snapshot's Pooling module]
        #[arg(long)]
        pooling: Option<sealserve::spec::Pooling>,
        /// Whether embeddings are L2-normalised [default: whether the snapshot has a Normalize module]
        #[arg(long)]
        normalize: Option<bool>,
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
    /// Sign release files (the serve binary, SHA256SUMS): writes <file>.sig (raw base64, for cosign/openssl) and <file>.minisig
    SignFile {
        /// Private key (PKCS#8 PEM)
        #[arg(long)]
        key: PathBuf,
        /// Files to sign
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the signatures [default: next to each file]
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Timestamp in the minisign trusted comment [default: $SOURCE_DATE_EPOCH, else now]
        #[arg(long)]
        timestamp: Option<u64>,
    },
    /// Print the fingerprint --trusted-key pins, from a public key file (model.pub, model.pub.minisign)
    Fingerprint {
        /// Public key files
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Verify a serve binary, a bundle file, a folder made by `seal export`, or a published bundle URL (s3://, oci://, https://, file://), exactly as serve does at startup (same trust flags)
    Verify {
        /// A serve binary, a bundle file, an exported bundle folder, or a bundle URL as serve --model-url takes it
        target: String,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Verify a bundle folder (as made by `seal export`) like `seal verify`, then upload it to s3://bucket/prefix/ or push it as an OCI artifact to oci://registry/repo[:tag]; prints the --model-url to serve it with
    Publish {
        /// The bundle folder
        dir: PathBuf,
        /// s3://bucket/prefix/, oci://registry/repo[:tag] or oci+http://registry/repo[:tag]
        destination: String,
        #[command(flatten)]
        trust: TrustArgs,
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
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("seal: {}", seal::error_line(&error));
            // A snapshot seal pin cannot use is a configuration problem, like a bad flag.
            if error.downcast_ref::<pin::PinError>().is_some() {
                return Exit::Config.into();
            }
            Exit::of(&error).into()
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
        Command::Pin {
            dir,
            repo,
            revision,
            out,
            force,
            max_seq_length,
            pooling,
            normalize,
        } => {
            let (cached_repo, cached_revision) = pin::snapshot_origin(&dir);
            let missing = |what: &str| {
                pin::PinError::Missing(format!(
                    "{} is not a hub-cache snapshot folder: pass --{what}",
                    dir.display()
                ))
            };
            let options = pin::PinOptions {
                repo: repo.or(cached_repo).ok_or_else(|| missing("repo"))?,
                revision: revision
                    .or(cached_revision)
                    .ok_or_else(|| missing("revision"))?,
                max_seq_length,
                pooling,
                normalize,
            };
            let pinned = pin::pin(&dir, &options)?;
            let out = out.unwrap_or_else(|| pin::default_out(&options.repo));
            pin::write(&pinned, &out, force)?;
            let model = &pinned.spec.model;
            println!(
                "wrote {}: {} family, task {}, pooling {}, normalize {}, max_seq_length {}",
                out.display(),
                model.family,
                serde_json::to_string(&model.task).unwrap_or_default(),
                model.pooling,
                model.normalize,
                model.max_seq_length
            );
        }
        Command::Sign {
            key,
            manifest,
            out_dir,
            timestamp,
        } => {
            let signed = seal::sign(&key, &manifest, out_dir.as_deref(), timestamp)?;
            report_signed(&signed, &manifest.display().to_string());
        }
        Command::SignFile {
            key,
            files,
            out_dir,
            timestamp,
        } => {
            let signed = seal::sign_files(&key, &files, out_dir.as_deref(), timestamp)?;
            report_signed(&signed, &format!("{} file(s)", files.len()));
        }
        Command::Fingerprint { files } => {
            for path in &files {
                for fingerprint in seal::fingerprints(path)? {
                    // One value per line, so `$(seal fingerprint model.pub)` pins it directly.
                    println!("{fingerprint}");
                }
            }
        }
        Command::Verify {
            target,
            trust,
            fetch,
        } => {
            let line = if target.contains("://") {
                seal::verify_url(&target, &trust, &fetch.options())?
            } else {
                seal::verify(std::path::Path::new(&target), &trust)?
            };
            println!("{line}");
        }
        Command::Publish {
            dir,
            destination,
            trust,
            ca_file,
        } => {
            let published = seal::publish(&dir, &destination, &trust, ca_file.as_deref())?;
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

/// What `seal sign` and `seal sign-file` print: the files written, then the signing key.
fn report_signed(signed: &seal::Signed, what: &str) {
    for path in &signed.written {
        println!("wrote {}", path.display());
    }
    println!(
        "signed {what} with key fingerprint {} (minisign key id {})",
        signed.fingerprint, signed.key_id
    );
}
