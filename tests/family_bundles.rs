//! Families other than BERT served from a sealed bundle: each tiny fixture of tests/data/families
//! is sealed into a signed bundle in memory, verified, loaded by `engine::load` (the family comes
//! from the signed `sealserve.json`), tokenized by the bundle's tokenizer as `serve` does, and
//! its pooled, normalised embeddings must equal the sentence-transformers reference.
//! A bundle whose metadata names another family than its config.json, or whose checkpoint is a
//! classifier, is refused at load.

mod common;

use common::tiny;
use sealserve::engine::{self, EngineConfig, EngineError};
use sealserve::model::LoadError;
use sealserve::spec::{Family, FileRole, Pooling};
use serde_json::Value;
use std::path::Path;

fn read(fixture: &str, file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/families")
        .join(fixture)
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Seals the fixture under `family` and loads it on CPU in f32.
fn load(
    fixture: &str,
    family: Family,
    pooling: Pooling,
) -> Result<engine::LoadedModel, EngineError> {
    let weights = read(fixture, "model.safetensors");
    let tokenizer = read(fixture, "tokenizer.json");
    let config = read(fixture, "config.json");
    let files: Vec<(&str, FileRole, &[u8])> = vec![
        ("model.safetensors", FileRole::Weights, &weights),
        ("tokenizer.json", FileRole::Tokenizer, &tokenizer),
        ("config.json", FileRole::Config, &config),
    ];
    let mut spec = tiny::spec(&files);
    spec.model.id = format!("test/{fixture}");
    spec.model.family = family;
    spec.model.pooling = pooling;
    spec.model.max_seq_length = 40;
    let (bytes, _key) = tiny::seal(&spec, &files, true);
    let verified = common::verify_static(&bytes);
    let config = EngineConfig {
        device: "cpu".parse().expect("device"),
        dtype: "f32".parse().expect("dtype"),
        ..EngineConfig::default()
    };
    engine::load(&verified, &config)
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

fn check(fixture: &str, family: Family, pooling: Pooling) {
    let reference: Value =
        serde_json::from_slice(&read(fixture, "reference.json")).expect("reference.json");
    let model = load(fixture, family, pooling).expect("load the sealed fixture");
    assert_eq!(model.info.family, family);
    let texts: Vec<&str> = reference["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let encoded = model.tokenizer.encode(&texts, true).expect("tokenize");
    let ids: Vec<Vec<u32>> = encoded.into_iter().map(|e| e.ids).collect();
    for (input, got) in reference["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .zip(&ids)
    {
        let want: Vec<u32> = input["input_ids"]
            .as_array()
            .expect("input_ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(got, &want, "{fixture}: token ids of {:?}", input["text"]);
    }
    let pooled = model.embedder.embed(&ids).expect("embed");
    let wanted = reference["embeddings"].as_array().expect("embeddings");
    assert_eq!(pooled.len(), wanted.len());
    let mut worst = 0f32;
    for (got, want) in pooled.iter().zip(wanted) {
        let norm = got.iter().map(|v| v * v).sum::<f32>().sqrt();
        let got: Vec<f32> = got.iter().map(|v| v / norm).collect();
        worst = worst.max(common::max_abs_diff(&got, &floats(want)));
    }
    assert!(worst <= 1e-5, "{fixture}: max abs diff {worst:e} > 1e-5");
}

#[test]
fn qwen3_bundle_embeds_like_sentence_transformers() {
    check("qwen3", Family::Qwen3, Pooling::LastToken);
}

#[test]
fn modernbert_bundle_embeds_like_sentence_transformers() {
    check("modernbert", Family::ModernBert, Pooling::Mean);
}

#[test]
fn xlm_roberta_bundle_embeds_like_sentence_transformers() {
    check("xlm-roberta", Family::XlmRoberta, Pooling::Cls);
}

#[test]
fn a_bundle_naming_another_family_is_refused() {
    match load("modernbert", Family::Qwen3, Pooling::LastToken) {
        Err(EngineError::Load(LoadError::Config(message))) => {
            assert!(message.contains("modernbert"), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a ModernBERT checkpoint loaded as Qwen3"),
    }
}

#[test]
fn a_classifier_checkpoint_is_not_served_as_an_embedder() {
    match load("modernbert-classifier", Family::ModernBert, Pooling::Mean) {
        Err(EngineError::Load(LoadError::Config(message))) => {
            assert!(message.contains("embedding models only"), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a classifier checkpoint loaded as an embedder"),
    }
}
