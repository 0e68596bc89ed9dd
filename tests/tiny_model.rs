//! Engine properties on a tiny generated BERT: weights with and without the `bert.` prefix,
//! the tokenizer overrides, pooling and batching invariants.

mod common;

use common::{max_abs_diff, tiny};
use sealserve::engine::{self, EngineConfig};

fn load(bundle: &sealserve::bundle::VerifiedBundle<'static>) -> engine::LoadedModel {
    engine::load(
        bundle,
        &EngineConfig {
            device: "cpu".parse().unwrap(),
            ..EngineConfig::default()
        },
    )
    .expect("load tiny model")
}

fn verify(bytes: Vec<u8>) -> sealserve::bundle::VerifiedBundle<'static> {
    common::verify_static(&bytes)
}

#[test]
fn weights_load_with_and_without_bert_prefix_identically() {
    let (plain, tensors) = tiny::weights("", None);
    let (prefixed, _) = tiny::weights("bert.", Some(&tensors));
    let a = load(&verify(tiny::bundle_bytes(&plain, true).0));
    let b = load(&verify(tiny::bundle_bytes(&prefixed, true).0));
    let ids = a
        .tokenizer
        .encode(&["hello world", "the cat sat on the mat"], true)
        .unwrap();
    let ids: Vec<Vec<u32>> = ids.into_iter().map(|e| e.ids).collect();
    let va = a.embedder.embed(&ids).unwrap();
    let vb = b.embedder.embed(&ids).unwrap();
    for (x, y) in va.iter().zip(&vb) {
        assert_eq!(x.len(), tiny::HIDDEN);
        assert!(max_abs_diff(x, y) == 0.0, "prefix changed the output");
    }
}

#[test]
fn tokenizer_json_padding_and_truncation_are_overridden() {
    let model = load(&tiny::verified(""));
    let short = model.tokenizer.encode(&["hello"], true).unwrap();
    assert_eq!(
        short[0].ids,
        vec![2, 5, 3],
        "[CLS] hello [SEP], no fixed padding"
    );
    let long = "hello ".repeat(40);
    let truncated = model.tokenizer.encode(&[long.as_str()], true).unwrap();
    assert_eq!(
        truncated[0].ids.len(),
        tiny::MAX_SEQ,
        "truncated at max_seq_length, not tokenizer.json's 8"
    );
    assert!(truncated[0].truncated);
    assert_eq!(truncated[0].ids.last(), Some(&3), "still ends with [SEP]");
    let refused = model.tokenizer.encode(&[long.as_str()], false);
    assert!(matches!(
        refused,
        Err(engine::TokenizeError::TooLong { .. })
    ));
}

#[test]
fn batching_and_padding_do_not_change_vectors() {
    let model = load(&tiny::verified(""));
    let texts = [
        "hello",
        "the big dog is eating food",
        "a cat",
        "hello world !",
        "small man sat on the mat .",
    ];
    let ids: Vec<Vec<u32>> = model
        .tokenizer
        .encode(&texts, true)
        .unwrap()
        .into_iter()
        .map(|e| e.ids)
        .collect();
    let batched = model.embedder.embed(&ids).unwrap();
    for (sequence, vector) in ids.iter().zip(&batched) {
        let single = model
            .embedder
            .embed(std::slice::from_ref(sequence))
            .unwrap();
        let diff = max_abs_diff(&single[0], vector);
        assert!(diff < 1e-5, "batched differs from single by {diff}");
    }
}

#[test]
fn warm_up_runs_on_any_vocabulary() {
    let model = load(&tiny::verified("bert."));
    model.warm_up().expect("warm-up");
}
