//! `seal`: release keys, offline MANIFEST signing, and checking the bundle inside a `serve`
//! binary. Wiring only; what each subcommand does lives in `sealserve::seal`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sealserve::exit::{self, Exit};
use sealserve::seal;
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
    /// Verify a serve binary, or a folder made by `seal export`, exactly as serve does at startup
    Verify {
        /// A serve binary or an exported bundle folder
        target: PathBuf,
        /// Trusted signing keys (64-hex fingerprints or PEM/minisign key files, comma separated)
        #[arg(
            long = "trusted-key",
            env = "SEALSERVE_TRUSTED_KEYS",
            value_delimiter = ','
        )]
        trusted_keys: Vec<String>,
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
        } => println!("{}", seal::verify(&target, &trusted_keys)?),
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
