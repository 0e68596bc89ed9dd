//! The engine against the upstream Python stack's outputs (tests/data/reference/minilm_golden.json).

mod common;

use common::{cosine, golden, load_cpu, max_abs_diff};
use sealserve::engine::pooling::finish;
use sealserve::spec::Pooling;

const EMBEDDING_TOLERANCE: f32 = 1e-4;
const BATCH_TOLERANCE: f32 = 1e-5;

#[test]
fn token_ids_match_sentence_transformers_exactly() {
    let model = load_cpu("f32");
    for input in &golden().inputs {
        let encoded = model
            .tokenizer
            .encode(&[input.text.as_str()], true)
            .expect("tokenize");
        assert_eq!(
            encoded[0].ids,
            input.input_ids,
            "input {} ({:?}): token ids differ",
            input.index,
            input.text.chars().take(40).collect::<String>()
        );
        assert_eq!(
            encoded[0].truncated, input.truncated,
            "input {}: truncation flag",
            input.index
        );
        assert_eq!(encoded[0].ids.len(), input.num_tokens);
    }
}

#[test]
fn f32_embeddings_match_reference_and_batching_changes_nothing() {
    let model = load_cpu("f32");
    let inputs = &golden().inputs;
    let sequences: Vec<Vec<u32>> = inputs.iter().map(|i| i.input_ids.clone()).collect();
    let batched = model.embedder.embed(&sequences).expect("batched embed");
    for (input, raw) in inputs.iter().zip(&batched) {
        let single = model
            .embedder
            .embed(std::slice::from_ref(&input.input_ids))
            .expect("single embed");
        let diff_batch = max_abs_diff(&single[0], raw);
        assert!(
            diff_batch <= BATCH_TOLERANCE,
            "input {}: batched vs single differ by {diff_batch}",
            input.index
        );
        let embedding = finish(raw.clone(), true, None);
        let diff = max_abs_diff(&embedding, &input.embedding);
        assert!(
            diff <= EMBEDDING_TOLERANCE,
            "input {} ({:?}): embedding differs from reference by {diff}",
            input.index,
            input.text.chars().take(40).collect::<String>()
        );
    }
}

#[test]
fn raw_pooled_vectors_match_reference() {
    let model = load_cpu("f32");
    let with_raw: Vec<_> = golden().inputs.iter().filter(|i| i.raw.is_some()).collect();
    assert!(!with_raw.is_empty(), "reference has raw vectors to compare");
    for input in with_raw {
        let raw = input.raw.as_ref().expect("filtered");
        let ids = std::slice::from_ref(&input.input_ids);
        for (pooling, expected) in [
            (Pooling::Mean, &raw.mean_pooled_unnormalized),
            (Pooling::Cls, &raw.cls_last_hidden_state),
            (Pooling::LastToken, &raw.last_token_last_hidden_state),
        ] {
            let got = model.embedder.embed_with(ids, pooling).expect("embed");
            let diff = max_abs_diff(&got[0], expected);
            assert!(
                diff <= EMBEDDING_TOLERANCE,
                "input {} {pooling}: differs by {diff}",
                input.index
            );
        }
    }
}

#[test]
fn half_precision_on_cpu_is_finite_and_close() {
    for dtype in ["f16", "bf16"] {
        let model = load_cpu(dtype);
        let inputs = &golden().inputs;
        let sequences: Vec<Vec<u32>> = inputs.iter().map(|i| i.input_ids.clone()).collect();
        let vectors = model.embedder.embed(&sequences).expect("embed");
        for (input, raw) in inputs.iter().zip(vectors) {
            assert!(
                raw.iter().all(|x| x.is_finite()),
                "{dtype} input {}: non-finite output",
                input.index
            );
            let c = cosine(&finish(raw, true, None), &input.embedding);
            assert!(
                c >= 0.999,
                "{dtype} input {}: cosine {c} < 0.999",
                input.index
            );
        }
    }
}
