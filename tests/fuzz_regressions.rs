//! The fuzz targets' checks on every committed input: the seeds (crates/fuzz/seeds/<target>/,
//! valid files of each format) and every crash or slow input fuzzing has found
//! (crates/fuzz/regressions/<target>/, one file per finding, named for what it found). Runs in
//! the normal `cargo test`, without nightly or libFuzzer; `scripts/fuzz` does the fuzzing.

#[path = "../crates/fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("http_request", checks::http_request),
    ("manifest", checks::manifest),
    ("public_key", checks::public_key),
    ("signature", checks::signature),
    ("bundle", checks::bundle),
    ("safetensors", checks::safetensors),
    ("model_config", checks::model_config),
    ("gguf", checks::gguf),
];

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && !p.ends_with(".gitkeep"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_saved_finding_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/fuzz");
    let mut ran = 0;
    for (target, check) in TARGETS {
        let seeds = files_in(&root.join("seeds").join(target));
        assert!(!seeds.is_empty(), "no seeds for fuzz target {target}");
        let findings = files_in(&root.join("regressions").join(target));
        for file in seeds.iter().chain(&findings) {
            let data = std::fs::read(file).expect("read input");
            check(&data);
            ran += 1;
        }
        println!(
            "{target}: {} seeds, {} findings",
            seeds.len(),
            findings.len()
        );
    }
    assert!(ran >= TARGETS.len());
}

#[test]
fn seeds_reach_the_deep_paths() {
    // The seeds are valid inputs: the checks then exercise the round trips and the model load,
    // not only the early rejections.
    let seed = |target: &str, name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crates/fuzz/seeds")
                .join(target)
                .join(name),
        )
        .expect("seed")
    };
    assert!(sealserve::manifest::Manifest::parse(&seed("manifest", "MANIFEST")).is_ok());
    assert!(sealserve::bundle::Bundle::parse(&seed("bundle", "tiny.bundle")).is_ok());
    for name in ["model.pub", "model.pub.minisign", "raw.b64"] {
        assert!(sealserve::signature::PublicKey::parse(&seed("public_key", name)).is_ok());
    }
    for name in ["MANIFEST.sig", "MANIFEST.minisig", "raw64.bin"] {
        assert!(sealserve::signature::Signature::parse(&seed("signature", name)).is_ok());
    }
    let weights = seed("safetensors", "tiny.safetensors");
    // Leaked for the rest of the test process, as `serve`'s embedded bytes live forever.
    let weights: &'static [u8] = Box::leak(weights.into_boxed_slice());
    let model = sealserve::model::load(
        sealserve::spec::Family::Bert,
        sealserve::model::ModelFiles {
            config_json: checks::TINY_CONFIG,
            safetensors: weights,
        },
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    );
    assert!(model.is_ok(), "the tiny weights load with TINY_CONFIG");

    // The GGUF seeds (tests/data/make_tiny_gguf.py) are whole models: they parse, build their
    // tokenizer, load through `serve`'s path and run a step.
    use sealserve::model::llama::tokenizer::TextTokenizer;
    use sealserve::model::llama::{Gguf, LlamaModel, Scratch, SeqInput};
    for name in ["llama-q8_0.gguf", "qwen2-f32.gguf", "qwen3-q4_0.gguf"] {
        let bytes = seed("gguf", name);
        let gguf = Gguf::read(&bytes).unwrap_or_else(|e| panic!("{name} parses: {e}"));
        let tokenizer =
            TextTokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{name} tokenizer: {e}"));
        let text = "Hello, world! 12 345";
        let ids = tokenizer.encode(text, true).expect("encodes");
        assert!(
            ids.len() > 1 && ids.len() < text.len(),
            "{name}: merges apply: {ids:?}"
        );
        assert_eq!(tokenizer.decode(&ids, false), text, "{name}");
        let im_end = tokenizer.token_to_id("<|im_end|>").expect("control token");
        assert_eq!(tokenizer.encode("<|im_end|>", false).unwrap(), [im_end]);
        let model = LlamaModel::load(&gguf).unwrap_or_else(|e| panic!("{name} loads: {e}"));
        let mut cache = model.new_cache();
        let mut scratch = Scratch::default();
        let logits = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: &ids,
                    logits: true,
                }],
                &mut scratch,
            )
            .expect("forward step");
        assert_eq!(logits.row(0).len(), tokenizer.vocab_size());
        assert!(logits.row(0).iter().all(|x| x.is_finite()), "{name}");
        let engine = sealserve::generate::TextModel::from_gguf_bytes(&bytes)
            .unwrap_or_else(|e| panic!("{name} through serve's path: {e}"));
        assert!(engine.chat_template.is_some(), "{name}");
    }
}

#[test]
fn gguf_seeds_are_what_their_generator_writes() {
    // The committed seeds must stay reproducible from tests/data/make_tiny_gguf.py.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-gguf");
    let _ = std::fs::remove_dir_all(&out);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = std::process::Command::new(&python)
        .arg(root.join("tests/data/make_tiny_gguf.py"))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {python} (set PYTHON to another interpreter): {e}"));
    assert!(status.success());
    let committed = files_in(&root.join("crates/fuzz/seeds/gguf"));
    let written = files_in(&out);
    assert_eq!(
        committed.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        written.iter().map(|p| p.file_name()).collect::<Vec<_>>()
    );
    for (a, b) in committed.iter().zip(&written) {
        assert!(
            std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
            "{} differs from the generator's output: regenerate it",
            a.display()
        );
    }
}
