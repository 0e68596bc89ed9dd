//! A tiny BERT (random weights, 64-token vocabulary) sealed into a signed bundle in memory, for
//! tests that need a whole model without the 90 MB MiniLM.

use candle_core::{DType, Device, Tensor};
use sealserve::bundle::{self, VerifiedBundle};
use sealserve::manifest::Manifest;
use sealserve::signature::SecretKey;
use sealserve::spec::{
    BuildInfo, Family, FileRole, FileSpec, ModelSection, ModelSpec, Pooling, Task, METADATA_FILE,
};
use std::collections::HashMap;

pub const HIDDEN: usize = 32;
pub const MAX_SEQ: usize = 16;
const LAYERS: usize = 2;
const INTERMEDIATE: usize = 64;
const POSITIONS: usize = 64;
const WORDS: &[&str] = &[
    "hello", "world", "the", "a", "cat", "dog", "sat", "on", "mat", "is", "eating", "food", "man",
    "##s", "##ing", "big", "small", ".", ",", "!", "?",
];

fn vocabulary() -> Vec<String> {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(WORDS.iter().map(|s| s.to_string()));
    while vocab.len() < 64 {
        vocab.push(format!("w{}", vocab.len()));
    }
    vocab
}

/// tokenizer.json for the tiny vocabulary, shaped like MiniLM's (including its fixed padding and
/// short truncation, which the engine must override).
pub fn tokenizer_json() -> Vec<u8> {
    let vocab: serde_json::Map<String, serde_json::Value> = vocabulary()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::to_vec(&serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]"), special(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    }))
    .expect("serialise tokenizer.json")
}

/// config.json for the tiny model.
pub fn config_json() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": 64, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "intermediate_size": INTERMEDIATE, "hidden_act": "gelu",
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "position_embedding_type": "absolute", "pad_token_id": 0
    }))
    .expect("serialise config.json")
}

/// Random BERT weights as safetensors bytes, names prefixed with `prefix` ("" or "bert.").
pub fn weights(
    prefix: &str,
    seed_tensors: Option<&HashMap<String, Tensor>>,
) -> (Vec<u8>, HashMap<String, Tensor>) {
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![64, HIDDEN]),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![POSITIONS, HIDDEN],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![2, HIDDEN],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![HIDDEN]),
        ("embeddings.LayerNorm.bias".into(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        for (name, shape) in [
            ("attention.self.query.weight", vec![HIDDEN, HIDDEN]),
            ("attention.self.query.bias", vec![HIDDEN]),
            ("attention.self.key.weight", vec![HIDDEN, HIDDEN]),
            ("attention.self.key.bias", vec![HIDDEN]),
            ("attention.self.value.weight", vec![HIDDEN, HIDDEN]),
            ("attention.self.value.bias", vec![HIDDEN]),
            ("attention.output.dense.weight", vec![HIDDEN, HIDDEN]),
            ("attention.output.dense.bias", vec![HIDDEN]),
            ("attention.output.LayerNorm.weight", vec![HIDDEN]),
            ("attention.output.LayerNorm.bias", vec![HIDDEN]),
            ("intermediate.dense.weight", vec![INTERMEDIATE, HIDDEN]),
            ("intermediate.dense.bias", vec![INTERMEDIATE]),
            ("output.dense.weight", vec![HIDDEN, INTERMEDIATE]),
            ("output.dense.bias", vec![HIDDEN]),
            ("output.LayerNorm.weight", vec![HIDDEN]),
            ("output.LayerNorm.bias", vec![HIDDEN]),
        ] {
            shapes.push((format!("{p}{name}"), shape));
        }
    }
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let tensor = match seed_tensors.and_then(|s| s.get(&name)) {
            Some(t) => t.clone(),
            None if name.ends_with("LayerNorm.weight") => {
                (Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu).expect("ones")
                    + Tensor::randn(0f32, 0.05, shape.as_slice(), &Device::Cpu).expect("randn"))
                .expect("add")
            }
            None => Tensor::randn(0f32, 0.3, shape.as_slice(), &Device::Cpu).expect("randn"),
        };
        tensors.insert(name, tensor);
    }
    let prefixed: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
    let bytes = safetensors::serialize(prefixed.iter().map(|(k, v)| (k.clone(), v.clone())), None)
        .expect("serialise safetensors");
    (bytes, tensors)
}

/// A model.toml-equivalent spec for the tiny files.
pub fn spec(files: &[(&str, FileRole, &[u8])]) -> ModelSpec {
    ModelSpec {
        model: ModelSection {
            id: "test/tiny-bert".into(),
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            family: Family::Bert,
            task: Task::Embed,
            pooling: Pooling::Mean,
            normalize: true,
            max_seq_length: MAX_SEQ,
            license: None,
            prompts: Default::default(),
            default_prompt_name: None,
        },
        files: files
            .iter()
            .map(|(name, role, bytes)| FileSpec {
                name: name.to_string(),
                role: *role,
                size: bytes.len() as u64,
                sha256: sealserve::manifest::sha256_hex(bytes),
            })
            .collect(),
        mirror: None,
    }
}

/// A signed tiny bundle (dev-signed flag as given) and the key that signed it.
pub fn bundle_bytes(weights: &[u8], dev_signed: bool) -> (Vec<u8>, SecretKey) {
    let tokenizer = tokenizer_json();
    let config = config_json();
    let files: Vec<(&str, FileRole, &[u8])> = vec![
        ("model.safetensors", FileRole::Weights, weights),
        ("tokenizer.json", FileRole::Tokenizer, &tokenizer),
        ("config.json", FileRole::Config, &config),
    ];
    seal(&spec(&files), &files, dev_signed)
}

/// Seals `files` under `spec` into a signed bundle (dev-signed flag as given), with a fresh key.
pub fn seal(
    spec: &ModelSpec,
    files: &[(&str, FileRole, &[u8])],
    dev_signed: bool,
) -> (Vec<u8>, SecretKey) {
    let build = if dev_signed {
        BuildInfo::dev("0.0.0-test")
    } else {
        BuildInfo::release("0.0.0-test")
    };
    let metadata = spec.metadata(&build).to_canonical_bytes();
    let mut manifest = Manifest::new();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, _, bytes) in files {
        manifest.insert_bytes(*name, bytes);
        entries.push((name.to_string(), bytes.to_vec()));
    }
    manifest.insert_bytes(METADATA_FILE, &metadata);
    entries.push((METADATA_FILE.to_string(), metadata));
    let key = SecretKey::generate();
    let manifest_bytes = manifest.to_bytes();
    let signature = key.sign(&manifest_bytes, "MANIFEST", 1);
    entries.extend(bundle::signing_entries(
        &manifest_bytes,
        &signature,
        &key.public_key(),
    ));
    let mut out = Vec::new();
    bundle::write_bundle(&mut out, &entries).expect("write bundle");
    (out, key)
}

/// A verified tiny bundle living for the rest of the test process.
pub fn verified(prefix: &str) -> VerifiedBundle<'static> {
    let (weights, _) = weights(prefix, None);
    let (bytes, _) = bundle_bytes(&weights, true);
    super::verify_static(&bytes)
}
