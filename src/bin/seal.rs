//! `seal`: release keys, offline MANIFEST signing, release-file signing, and checking the bundle
//! inside a `serve` binary. Wiring only; what each subcommand does lives in `sealserve::seal`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sealserve::exit::{self, Exit};
use sealserve::seal;
use sealserve::trust::TrustArgs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Release flow (the private key never meets the build machine):
  seal keygen --out keys/
  seal manifest models/all-MiniLM-L6-v2 > MANIFEST
  seal sign --key keys/model.key MANIFEST
  SEALSERVE_SIGNATURE=MANIFEST.minisig SEALSERVE_PUBLIC_KEY=keys/model.pub cargo build --release
  scripts/release-sign --key keys/model.key      # signs serve itself: serve.sig, serve.minisig, SHA256SUMS
  serve --trusted-key \"$(seal fingerprint keys/model.pub)\"   # pin the key file's fingerprint, never one read from a binary
";

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
    /// Verify a serve binary, a bundle file, or a folder made by `seal export`, exactly as serve does at startup (same trust flags)
    Verify {
        /// A serve binary, a bundle file or an exported bundle folder
        target: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
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
        Command::Verify { target, trust } => println!("{}", seal::verify(&target, &trust)?),
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
