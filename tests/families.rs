//! Every model family and head against the outputs of `transformers` / `sentence-transformers`
//! stored with its tiny fixture (tests/data/families, made by scripts/make-family-fixtures):
//! - the fixture's tokenizer.json, read by the `tokenizers` crate, gives the reference ids
//!   (truncation, pairs, non-ASCII text);
//! - hidden states, pooled embeddings, logits and SPLADE weights match within 1e-5 (f32, CPU);
//! - a batch (packed, and padded with a mask) gives what each sequence gives alone, within 1e-5;
//! - the BERT-like families also match on the generic candle-op path, not only the fused one.

use candle_core::{DType, Device, Tensor};
use sealserve::model::bert_like::{BertLike, BertLikeConfig};
use sealserve::model::families::{self, Loaded};
use sealserve::model::heads;
use sealserve::model::network::{self, Architecture, FamilyKind, Network, OwnedBatch, PackedBatch};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What the issue asks for: 1e-4 would hide a tanh-approximated GELU.
const TOLERANCE: f32 = 1e-5;

struct Fixture {
    name: &'static str,
    dir: PathBuf,
    config: Vec<u8>,
    weights: Vec<u8>,
    reference: Value,
}

fn fixture(name: &'static str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/families")
        .join(name);
    let read =
        |file: &str| std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
    let reference = serde_json::from_slice(&read("reference.json")).expect("reference.json");
    Fixture {
        name,
        config: read("config.json"),
        weights: read("model.safetensors"),
        reference,
        dir,
    }
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .flat_map(|v| match v {
            Value::Array(_) => floats(v),
            other => vec![other.as_f64().expect("number") as f32],
        })
        .collect()
}

fn ints(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("integer") as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    let diff = max_diff(got, want);
    assert!(
        diff <= TOLERANCE,
        "{what}: max abs diff {diff:e} > {TOLERANCE:e}"
    );
    diff
}

/// One reference input: ids, optional token types.
struct Input {
    ids: Vec<u32>,
    types: Option<Vec<u32>>,
}

fn inputs(items: &Value) -> Vec<Input> {
    items
        .as_array()
        .expect("inputs")
        .iter()
        .map(|item| Input {
            ids: ints(&item["input_ids"]),
            types: item.get("token_type_ids").map(ints),
        })
        .collect()
}

/// All inputs as one packed batch (type ids zero-filled where an input has none).
fn packed(items: &[Input]) -> OwnedBatch {
    OwnedBatch {
        ids: items.iter().flat_map(|i| i.ids.clone()).collect(),
        lengths: items.iter().map(|i| i.ids.len()).collect(),
        type_ids: items.iter().any(|i| i.types.is_some()).then(|| {
            items
                .iter()
                .flat_map(|i| i.types.clone().unwrap_or_else(|| vec![0; i.ids.len()]))
                .collect()
        }),
    }
}

/// The fixture's tokenizer.json (through the `tokenizers` crate, as `serve` reads it) must give
/// the reference ids: special tokens, truncation at max_seq_length, pairs, non-ASCII.
fn check_tokenizer(f: &Fixture, key: &str) {
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(f.dir.join("tokenizer.json")).expect("tokenizer.json");
    let max = f.reference["max_seq_length"]
        .as_u64()
        .expect("max_seq_length") as usize;
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max,
            ..Default::default()
        }))
        .expect("truncation");
    tokenizer.with_padding(None);
    let Some(items) = f.reference[key].as_array() else {
        return;
    };
    for item in items {
        let text = item["text"].as_str().expect("text");
        // Prompted inputs: the prompt is prepended to the text before tokenizing.
        let prompt = item
            .get("prompt_name")
            .and_then(|p| p.as_str())
            .map(|p| f.reference["prompts"][p].as_str().expect("prompt"));
        let text = format!("{}{text}", prompt.unwrap_or(""));
        let text = text.as_str();
        let encoding = match item.get("text_pair").and_then(|p| p.as_str()) {
            Some(pair) => tokenizer.encode((text, pair), true),
            None => tokenizer.encode(text, true),
        }
        .expect("encode");
        assert_eq!(
            encoding.get_ids(),
            ints(&item["input_ids"]).as_slice(),
            "{}: ids of {text:?}",
            f.name
        );
        if let Some(types) = item.get("token_type_ids") {
            assert_eq!(
                encoding.get_type_ids(),
                ints(types).as_slice(),
                "{}: types",
                f.name
            );
        }
    }
}

/// Pools one sequence's rows like sentence-transformers' `Pooling`.
fn pool(rows: &[f32], width: usize, mode: &str) -> Vec<f32> {
    let n = rows.len() / width;
    let weights: Vec<f32> = match mode {
        "cls" => return rows[..width].to_vec(),
        "lasttoken" => return rows[rows.len() - width..].to_vec(),
        "mean" => vec![1.0; n],
        "weightedmean" => (1..=n).map(|w| w as f32).collect(),
        other => panic!("pooling {other}"),
    };
    let total: f32 = weights.iter().sum();
    let mut out = vec![0f32; width];
    for (row, w) in rows.chunks_exact(width).zip(&weights) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v * w;
        }
    }
    out.iter().map(|v| v / total).collect()
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// Per-sequence rows of a packed `[Σ len, hidden]` output.
fn split_rows(hidden: &Tensor, lengths: &[usize]) -> Vec<Vec<f32>> {
    let values = hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let width = hidden.dim(1).unwrap();
    let mut first = 0;
    lengths
        .iter()
        .map(|len| {
            let rows = values[first * width..(first + len) * width].to_vec();
            first += len;
            rows
        })
        .collect()
}

/// Runs every check an embedding fixture has against `network`; returns the largest difference
/// from the reference.
fn check_embedding_network(f: &Fixture, network: &dyn Network) -> f32 {
    let r = &f.reference;
    let items = inputs(&r["inputs"]);
    let width = network.hidden_size();
    let mut worst = 0f32;
    // One at a time, against the reference hidden states.
    let mut singles = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let lengths = [item.ids.len()];
        let hidden = network
            .forward_packed(&PackedBatch::new(&item.ids, &lengths))
            .expect("forward");
        let rows = split_rows(&hidden, &lengths).remove(0);
        let want = floats(&r["inputs"][i]["hidden"]);
        worst = worst.max(assert_close(
            &format!("{} input {i} hidden", f.name),
            &rows,
            &want,
        ));
        singles.push(rows);
    }
    // The whole batch packed, and padded with a mask: same as alone.
    let all_batch = packed(&items);
    let lengths = all_batch.lengths.clone();
    let hidden = network
        .forward_packed(&all_batch.as_batch())
        .expect("packed");
    for (i, rows) in split_rows(&hidden, &lengths).iter().enumerate() {
        assert_close(
            &format!("{} input {i} packed vs single", f.name),
            rows,
            &singles[i],
        );
    }
    let longest = *lengths.iter().max().unwrap();
    let mut padded = Vec::new();
    let mut mask = Vec::new();
    for item in &items {
        padded.extend(
            item.ids
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(longest),
        );
        mask.extend((0..longest).map(|p| if p < item.ids.len() { 1f32 } else { 0.0 }));
    }
    let padded = Tensor::from_vec(padded, (items.len(), longest), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (items.len(), longest), &Device::Cpu).unwrap();
    let out = network.forward(&padded, Some(&mask), None).expect("padded");
    let out = out.to_vec3::<f32>().unwrap();
    for (i, item) in items.iter().enumerate() {
        let rows: Vec<f32> = out[i][..item.ids.len()].concat();
        assert_close(
            &format!("{} input {i} padded vs single", f.name),
            &rows,
            &singles[i],
        );
    }
    // Every sentence-transformers pooling, and the fixture's own pipeline.
    for mode in ["mean", "cls", "lasttoken", "weightedmean"] {
        let want = floats(&r["pooled"][mode]);
        let got: Vec<f32> = singles
            .iter()
            .flat_map(|rows| pool(rows, width, mode))
            .collect();
        worst = worst.max(assert_close(
            &format!("{} pooled {mode}", f.name),
            &got,
            &want,
        ));
    }
    let mode = r["pooling"].as_str().expect("pooling");
    let normalize = r["normalize"].as_bool().expect("normalize");
    let got: Vec<f32> = singles
        .iter()
        .flat_map(|rows| {
            let v = pool(rows, width, mode);
            if normalize {
                normalized(&v)
            } else {
                v
            }
        })
        .collect();
    worst = worst.max(assert_close(
        &format!("{} embeddings", f.name),
        &got,
        &floats(&r["embeddings"]),
    ));
    // Instruction prompts (Qwen3-Embedding style): the prompt is part of the ids.
    if let Some(prompted) = r["prompted"].as_array() {
        for item in prompted {
            let ids = ints(&item["input_ids"]);
            let lengths = [ids.len()];
            let hidden = network
                .forward_packed(&PackedBatch::new(&ids, &lengths))
                .unwrap();
            let rows = split_rows(&hidden, &lengths).remove(0);
            let v = normalized(&pool(&rows, width, mode));
            worst = worst.max(assert_close(
                &format!("{} prompted {}", f.name, item["text"]),
                &v,
                &floats(&item["embedding"]),
            ));
        }
    }
    worst
}

fn check_embedding(name: &'static str, family: FamilyKind) {
    let f = fixture(name);
    check_tokenizer(&f, "inputs");
    check_tokenizer(&f, "prompted");
    let config = network::parse_config(&f.config).unwrap();
    assert_eq!(Architecture::from_config(&config).unwrap().family, family);
    let Loaded::Embedding(model) =
        families::load(&f.config, &f.weights, DType::F32, &Device::Cpu).expect("load")
    else {
        panic!("{name} did not load as an embedding model");
    };
    let worst = check_embedding_network(&f, model.as_ref());
    eprintln!("{name}: max abs diff from reference {worst:e}");
}

/// The BERT-like families on the generic candle-op path too (the fused CPU kernels are what
/// `load` picks on CPU f32, so without this the generic path — CUDA's — would go untested).
fn check_generic_path(name: &'static str, family: FamilyKind) {
    let f = fixture(name);
    let config =
        BertLikeConfig::from_json(family, &network::parse_config(&f.config).unwrap()).unwrap();
    let vb = network::var_builder(&f.weights, DType::F32, &Device::Cpu).unwrap();
    let fused = BertLike::load_with(&vb, config.clone(), true).unwrap();
    let generic = BertLike::load_with(&vb, config, false).unwrap();
    assert!(!generic.is_fused());
    let worst = check_embedding_network(&f, &generic);
    eprintln!(
        "{name} (generic path, fused available: {}): {worst:e}",
        fused.is_fused()
    );
}

#[test]
fn bert_matches_transformers() {
    check_embedding("bert", FamilyKind::Bert);
    check_generic_path("bert", FamilyKind::Bert);
}

#[test]
fn distilbert_matches_transformers() {
    check_embedding("distilbert", FamilyKind::DistilBert);
    check_generic_path("distilbert", FamilyKind::DistilBert);
}

#[test]
fn mpnet_matches_transformers() {
    check_embedding("mpnet", FamilyKind::MpNet);
}

#[test]
fn xlm_roberta_matches_transformers() {
    check_embedding("xlm-roberta", FamilyKind::XlmRoberta);
    check_generic_path("xlm-roberta", FamilyKind::XlmRoberta);
}

#[test]
fn modernbert_matches_transformers() {
    check_embedding("modernbert", FamilyKind::ModernBert);
}

#[test]
fn qwen3_matches_transformers() {
    check_embedding("qwen3", FamilyKind::Qwen3);
}

#[test]
fn qwen2_matches_transformers() {
    check_embedding("qwen2", FamilyKind::Qwen2);
}

#[test]
fn gte_matches_transformers() {
    check_embedding("gte", FamilyKind::Gte);
}

#[test]
fn nomic_bert_matches_transformers() {
    check_embedding("nomic-bert", FamilyKind::NomicBert);
}

/// The existing BERT embedding path (`model::bert`, what `serve` runs today) on the same
/// fixture: the new families and the old path agree with one reference.
#[test]
fn existing_bert_encoder_matches_the_bert_fixture() {
    let f = fixture("bert");
    let weights: &'static [u8] = Box::leak(f.weights.clone().into_boxed_slice());
    let config: &'static [u8] = Box::leak(f.config.clone().into_boxed_slice());
    let model = sealserve::model::load(
        sealserve::spec::Family::Bert,
        sealserve::model::ModelFiles {
            config_json: config,
            safetensors: weights,
        },
        DType::F32,
        &Device::Cpu,
    )
    .expect("load");
    for (i, item) in inputs(&f.reference["inputs"]).iter().enumerate() {
        let batch = sealserve::model::Packed::from_sequences(std::slice::from_ref(&item.ids))
            .expect("pack");
        let chunks = model.hidden_states(&batch, 1024).expect("forward");
        assert_eq!(chunks.len(), 1);
        let hidden = chunks[0].hidden.flatten_all().unwrap();
        assert_close(
            &format!("bert.rs input {i}"),
            &hidden.to_vec1::<f32>().unwrap(),
            &floats(&f.reference["inputs"][i]["hidden"]),
        );
    }
}

fn load_classifier(f: &Fixture) -> heads::Classifier {
    match families::load(&f.config, &f.weights, DType::F32, &Device::Cpu).expect("load") {
        Loaded::Classifier(c) => c,
        _ => panic!("{} did not load as a classifier", f.name),
    }
}

/// Logits of every input and pair, batched and alone, and the cross-encoder scores.
fn check_classifier(name: &'static str) -> f32 {
    let f = fixture(name);
    check_tokenizer(&f, "inputs");
    check_tokenizer(&f, "pairs");
    let classifier = load_classifier(&f);
    let labels: Vec<String> = f.reference["id2label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        classifier.labels(),
        labels.as_slice(),
        "{name}: label names"
    );
    let mut worst = 0f32;
    for key in ["inputs", "pairs"] {
        let Some(items) = f.reference[key].as_array() else {
            continue;
        };
        let parsed = inputs(&f.reference[key]);
        let all_batch = packed(&parsed);
        let all = classifier
            .predict_packed(&all_batch.as_batch())
            .expect("predict")
            .to_vec2::<f32>()
            .unwrap();
        for (i, (item, input)) in items.iter().zip(&parsed).enumerate() {
            let want = floats(&item["logits"]);
            let lengths = [input.ids.len()];
            let single = classifier
                .predict_packed(&PackedBatch {
                    ids: &input.ids,
                    lengths: &lengths,
                    type_ids: input.types.as_deref(),
                })
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .remove(0);
            worst = worst.max(assert_close(
                &format!("{name} {key} {i} logits"),
                &single,
                &want,
            ));
            assert_close(
                &format!("{name} {key} {i} batched vs single"),
                &all[i],
                &single,
            );
            if let Some(score) = item.get("cross_encoder_score") {
                let logit = Tensor::new(&[single[0]], &Device::Cpu).unwrap();
                let sig = heads::sigmoid(&logit).unwrap().to_vec1::<f32>().unwrap();
                assert_close(
                    &format!("{name} pair {i} sigmoid score"),
                    &sig,
                    &[score.as_f64().unwrap() as f32],
                );
                assert_close(
                    &format!("{name} pair {i} raw score"),
                    &single[..1],
                    &[item["cross_encoder_raw"].as_f64().unwrap() as f32],
                );
            }
        }
    }
    eprintln!("{name}: max abs diff from reference {worst:e}");
    worst
}

#[test]
fn bert_classifier_matches_transformers() {
    check_classifier("bert-classifier");
}

#[test]
fn bert_reranker_matches_cross_encoder() {
    check_classifier("bert-reranker");
}

#[test]
fn distilbert_classifier_matches_transformers() {
    check_classifier("distilbert-classifier");
}

#[test]
fn mpnet_classifier_matches_transformers() {
    check_classifier("mpnet-classifier");
}

#[test]
fn xlm_roberta_reranker_matches_cross_encoder() {
    check_classifier("xlm-roberta-reranker");
}

#[test]
fn modernbert_classifier_matches_transformers() {
    check_classifier("modernbert-classifier");
}

#[test]
fn qwen3_classifier_matches_transformers() {
    check_classifier("qwen3-classifier");
}

#[test]
fn gte_reranker_matches_cross_encoder() {
    check_classifier("gte-reranker");
}

#[test]
fn bert_splade_matches_sparse_encoder() {
    let f = fixture("bert-splade");
    check_tokenizer(&f, "inputs");
    let Loaded::Sparse(encoder) =
        families::load(&f.config, &f.weights, DType::F32, &Device::Cpu).expect("load")
    else {
        panic!("bert-splade did not load as a sparse encoder");
    };
    let items = inputs(&f.reference["inputs"]);
    let all_batch = packed(&items);
    let all = encoder
        .encode_packed(&all_batch.as_batch())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let vocab = all[0].len();
    let mut worst = 0f32;
    for (i, item) in f.reference["inputs"].as_array().unwrap().iter().enumerate() {
        let mut want = vec![0f32; vocab];
        for (index, value) in ints(&item["sparse"]["indices"])
            .iter()
            .zip(floats(&item["sparse"]["values"]))
        {
            want[*index as usize] = value;
        }
        let lengths = [items[i].ids.len()];
        let single = encoder
            .encode_packed(&PackedBatch::new(&items[i].ids, &lengths))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0);
        worst = worst.max(assert_close(&format!("splade input {i}"), &single, &want));
        assert_close(
            &format!("splade input {i} batched vs single"),
            &all[i],
            &single,
        );
    }
    eprintln!("bert-splade: max abs diff from reference {worst:e}");
}

/// A config the code does not support is refused with a message naming what is supported.
#[test]
fn unsupported_architectures_are_refused_clearly() {
    let err = |json: &str| match families::load(json.as_bytes(), &[], DType::F32, &Device::Cpu) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{json} loaded"),
    };
    assert!(err(r#"{"model_type": "t5"}"#).contains("not supported"));
    assert!(
        err(r#"{"model_type": "bert", "architectures": ["BertForQuestionAnswering"]}"#)
            .contains("not supported")
    );
    let rope = r#"{"model_type": "qwen3", "architectures": ["Qwen3Model"], "vocab_size": 10,
        "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 8,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0}}"#;
    assert!(err(rope).contains("yarn"));
}

/// Half precision on CPU runs the generic path of every family and stays near f32 (a NaN from
/// an infinite mask bias, or a dtype mix-up, fails here).
#[test]
fn half_precision_runs_every_family() {
    for name in [
        "bert",
        "distilbert",
        "mpnet",
        "xlm-roberta",
        "modernbert",
        "qwen3",
        "qwen2",
        "gte",
        "nomic-bert",
    ] {
        let f = fixture(name);
        let items = inputs(&f.reference["inputs"]);
        let all_batch = packed(&items);
        let run = |dtype: DType| -> Vec<f32> {
            let model = families::load_network(&f.config, &f.weights, dtype, &Device::Cpu).unwrap();
            let hidden = model.forward_packed(&all_batch.as_batch()).unwrap();
            hidden
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let full = run(DType::F32);
        // f16: 10 mantissa bits, and a mask bias that must stay finite; bf16: 8 bits.
        for (dtype, limit) in [(DType::F16, 0.05), (DType::BF16, 0.25)] {
            let half = run(dtype);
            assert!(
                half.iter().all(|v| v.is_finite()),
                "{name}: {dtype:?} produced non-finite values"
            );
            let diff = max_diff(&full, &half);
            assert!(diff < limit, "{name}: {dtype:?} differs from f32 by {diff}");
        }
    }
}
