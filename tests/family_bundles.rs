//! Families other than BERT served from a sealed bundle: each tiny fixture of tests/data/families
//! is sealed into a signed bundle in memory, verified, loaded by `engine::load` (the family and
//! task come from the signed `sealserve.json`), tokenized by the bundle's tokenizer as `serve`
//! does, and its pooled, normalised embeddings must equal the sentence-transformers reference.
//! A bundle whose metadata names another family or task than its config.json describes is
//! refused at load.

mod common;

use common::families::{self, floats, MAX_SEQ};
use sealserve::engine::EngineError;
use sealserve::model::LoadError;
use sealserve::spec::{Family, Pooling, Task};

fn load(
    fixture: &str,
    family: Family,
    task: Task,
    pooling: Pooling,
) -> Result<sealserve::engine::LoadedModel, EngineError> {
    families::load(&families::sealed(fixture, family, task, pooling))
}

fn check(fixture: &str, family: Family, pooling: Pooling) {
    let reference = families::reference(fixture);
    let model = load(fixture, family, Task::Embed, pooling).expect("load the sealed fixture");
    assert_eq!(model.info.family, family);
    assert_eq!(model.info.task, Task::Embed);
    assert_eq!(model.info.max_input_tokens, MAX_SEQ);
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

fn refusal(fixture: &str, family: Family, task: Task) -> String {
    match load(fixture, family, task, Pooling::Mean) {
        Err(EngineError::Load(LoadError::Config(message))) => message,
        Err(other) => panic!("{fixture}: wrong error: {other}"),
        Ok(_) => panic!("{fixture} loaded as {family} / {task:?}"),
    }
}

#[test]
fn a_bundle_naming_another_family_is_refused() {
    let message = refusal("modernbert", Family::Qwen3, Task::Embed);
    assert!(message.contains("modernbert"), "{message}");
}

/// The signed task must be what the checkpoint is: a classifier is never served as an
/// embedder, an embedder never as a re-ranker, a three-label classifier never as a re-ranker.
#[test]
fn a_bundle_naming_another_task_is_refused() {
    for (fixture, family, task, describes) in [
        (
            "modernbert-classifier",
            Family::ModernBert,
            Task::Embed,
            "classify",
        ),
        ("bert", Family::Bert, Task::Rerank, "embed"),
        ("bert-classifier", Family::Bert, Task::Rerank, "classify"),
        ("bert-reranker", Family::Bert, Task::SparseEmbed, "rerank"),
        ("bert-splade", Family::Bert, Task::Classify, "sparse_embed"),
    ] {
        let message = refusal(fixture, family, task);
        assert!(
            message.contains(&format!("(task = \"{describes}\")")) && message.contains("seal pin"),
            "{fixture}: {message}"
        );
    }
    // An encoder signed as `task = "generate"` never gets this far: `ModelSpec::check` refuses
    // it when the bundle is built (seal-core's spec tests), and `serve` loads generation
    // bundles with the generation engine only.
}
