//! The task routes over HTTP on sealed family fixtures (tests/data/families), served in-process
//! as `serve` wires them: `/predict` (classifiers and re-rankers), `/rerank` (one-label
//! cross-encoders), `/embed_sparse` (SPLADE) and `POST /` dispatching on the signed task. Every
//! number must equal the transformers / sentence-transformers reference within 1e-5, and a
//! route of another task must answer TEI's 424.

mod common;

use common::families::{self, floats};
use sealserve::limits::Limits;
use sealserve::spec::{Family, Pooling, Task};
use serde_json::{json, Value};
use std::num::NonZeroUsize;

const TOLERANCE: f32 = 1e-5;

fn limits() -> Limits {
    let n = |v| NonZeroUsize::new(v).expect("non-zero");
    Limits {
        max_client_batch_size: n(16),
        payload_limit: n(64 * 1024),
        max_batch_tokens: n(512),
        max_batch_size: n(8),
        max_concurrent_requests: n(32),
    }
}

/// A running in-process server of one fixture.
struct Served {
    base: String,
    client: reqwest::Client,
    _engine: std::sync::Arc<sealserve::engine::Engine>,
}

impl Served {
    async fn start(fixture: &str, family: Family, task: Task) -> Self {
        let bundle = families::sealed(fixture, family, task, Pooling::Cls);
        let loaded = families::load(&bundle).expect("load the sealed fixture");
        let (base, engine) = common::inproc::serve(&bundle, loaded, limits()).await;
        Self {
            base,
            client: reqwest::Client::new(),
            _engine: engine,
        }
    }

    /// Status and JSON body of a POST.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// A POST that must succeed.
    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "{path} {body}: {value}");
        value
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON body")
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// `[{score, label}]` (highest first) as scores in label order; checks the order.
fn by_label(predictions: &Value, labels: &[String]) -> Vec<f32> {
    let predictions = predictions.as_array().expect("predictions");
    assert_eq!(predictions.len(), labels.len(), "one score per label");
    let scores: Vec<f32> = predictions
        .iter()
        .map(|p| p["score"].as_f64().expect("score") as f32)
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "highest first: {predictions:?}"
    );
    labels
        .iter()
        .map(|label| {
            predictions
                .iter()
                .find(|p| p["label"] == label.as_str())
                .and_then(|p| p["score"].as_f64())
                .unwrap_or_else(|| panic!("no score for {label}")) as f32
        })
        .collect()
}

fn worst(got: &[f32], want: &[f32], what: &str) -> f32 {
    let diff = common::max_abs_diff(got, want);
    assert!(diff <= TOLERANCE, "{what}: max abs diff {diff:e} > 1e-5");
    diff
}

/// The reference's texts (and pairs) as `/predict` inputs, with their logits.
fn cases(reference: &Value) -> Vec<(Value, Vec<f32>)> {
    ["inputs", "pairs"]
        .iter()
        .filter_map(|key| reference[*key].as_array())
        .flatten()
        .map(|item| {
            let input = match item.get("text_pair") {
                Some(pair) => json!([item["text"], pair]),
                None => item["text"].clone(),
            };
            (input, floats(&item["logits"]))
        })
        .collect()
}

/// `/predict` and `POST /` of a classifier or re-ranker: raw logits and softmax / sigmoid scores
/// with label names, single, pair and batched requests.
async fn check_predict(fixture: &str, family: Family, task: Task) -> f32 {
    let reference = families::reference(fixture);
    let labels: Vec<String> = reference["id2label"]
        .as_array()
        .expect("id2label")
        .iter()
        .map(|l| l.as_str().expect("label").to_string())
        .collect();
    let served = Served::start(fixture, family, task).await;
    let info = served.get("/info").await;
    let kind = if task == Task::Rerank {
        "reranker"
    } else {
        "classifier"
    };
    assert_eq!(info["model_type"], kind);
    assert_eq!(info["labels"], json!(labels));
    let mut diff = 0f32;
    let cases = cases(&reference);
    for (input, logits) in &cases {
        let raw = served
            .ok("/predict", json!({"inputs": input, "raw_scores": true}))
            .await;
        diff = diff.max(worst(
            &by_label(&raw, &labels),
            logits,
            &format!("{fixture} raw {input}"),
        ));
        // POST / is /predict for a classifier (for a re-ranker it is /rerank).
        let path = if task == Task::Rerank {
            "/predict"
        } else {
            "/"
        };
        let scores = served.ok(path, json!({"inputs": input})).await;
        let want = if logits.len() == 1 {
            vec![1.0 / (1.0 + (-logits[0]).exp())]
        } else {
            softmax(logits)
        };
        diff = diff.max(worst(
            &by_label(&scores, &labels),
            &want,
            &format!("{fixture} {input}"),
        ));
    }
    // A batch (texts and pairs mixed, one request): a list of per-input lists, in input order.
    let inputs: Vec<Value> = cases.iter().map(|(input, _)| input.clone()).collect();
    let batch = served
        .ok("/predict", json!({"inputs": inputs, "raw_scores": true}))
        .await;
    let batch = batch.as_array().expect("a list per input");
    assert_eq!(batch.len(), cases.len());
    for ((input, logits), got) in cases.iter().zip(batch) {
        diff = diff.max(worst(
            &by_label(got, &labels),
            logits,
            &format!("{fixture} batched {input}"),
        ));
    }
    eprintln!("{fixture}: max abs diff from reference over HTTP {diff:e}");
    diff
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_predict_like_transformers() {
    for (fixture, family) in [
        ("bert-classifier", Family::Bert),
        ("distilbert-classifier", Family::DistilBert),
        ("mpnet-classifier", Family::MpNet),
        ("modernbert-classifier", Family::ModernBert),
        ("qwen3-classifier", Family::Qwen3),
    ] {
        check_predict(fixture, family, Task::Classify).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerankers_predict_like_transformers() {
    for (fixture, family) in [
        ("bert-reranker", Family::Bert),
        ("xlm-roberta-reranker", Family::XlmRoberta),
        ("gte-reranker", Family::Gte),
    ] {
        check_predict(fixture, family, Task::Rerank).await;
    }
}

/// `/rerank` (and `POST /`) of every re-ranker: each text's score is CrossEncoder.predict's
/// (sigmoid) or its raw logit, texts come back highest first with their request index, and
/// `return_text` echoes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerankers_rank_like_cross_encoder() {
    for (fixture, family) in [
        ("bert-reranker", Family::Bert),
        ("xlm-roberta-reranker", Family::XlmRoberta),
        ("gte-reranker", Family::Gte),
    ] {
        let reference = families::reference(fixture);
        let served = Served::start(fixture, family, Task::Rerank).await;
        let pairs = reference["pairs"].as_array().expect("pairs");
        let mut diff = 0f32;
        for pair in pairs {
            let query = pair["text"].as_str().expect("query");
            // Every text of the fixture against this query; the reference has this query's
            // scores for its own pairs.
            let texts: Vec<&str> = pairs
                .iter()
                .filter(|p| p["text"] == query)
                .map(|p| p["text_pair"].as_str().expect("text"))
                .collect();
            for (path, raw, key) in [
                ("/rerank", false, "cross_encoder_score"),
                ("/rerank", true, "cross_encoder_raw"),
                ("/", false, "cross_encoder_score"),
            ] {
                let ranks = served
                    .ok(
                        path,
                        json!({"query": query, "texts": texts, "raw_scores": raw, "return_text": true}),
                    )
                    .await;
                let ranks = ranks.as_array().expect("ranks");
                assert_eq!(ranks.len(), texts.len());
                let scores: Vec<f32> = ranks
                    .iter()
                    .map(|r| r["score"].as_f64().expect("score") as f32)
                    .collect();
                assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
                for rank in ranks {
                    let index = rank["index"].as_u64().expect("index") as usize;
                    assert_eq!(rank["text"], texts[index], "return_text echoes the text");
                    let want = pairs
                        .iter()
                        .find(|p| p["text"] == query && p["text_pair"] == texts[index])
                        .map(|p| p[key].as_f64().expect("score") as f32)
                        .expect("reference pair");
                    let got = rank["score"].as_f64().expect("score") as f32;
                    diff = diff.max(worst(&[got], &[want], &format!("{fixture} {path} {key}")));
                }
            }
        }
        let plain = served
            .ok("/rerank", json!({"query": "q", "texts": ["a", "b"]}))
            .await;
        assert!(
            plain
                .as_array()
                .expect("ranks")
                .iter()
                .all(|r| r.get("text").is_none()),
            "no text unless return_text: {plain}"
        );
        eprintln!("{fixture}: /rerank max abs diff from CrossEncoder {diff:e}");
    }
}

/// `/embed_sparse` and `POST /` of the SPLADE fixture equal sentence-transformers'
/// SparseEncoder, as (index, value) pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splade_embeds_sparse_like_sentence_transformers() {
    let fixture = "bert-splade";
    let reference = families::reference(fixture);
    let served = Served::start(fixture, Family::Bert, Task::SparseEmbed).await;
    assert_eq!(served.get("/info").await["model_type"], "sparse_embedding");
    let vocab = serde_json::from_slice::<Value>(&families::read(fixture, "config.json"))
        .expect("config")["vocab_size"]
        .as_u64()
        .expect("vocab_size") as usize;
    let dense = |pairs: &[(usize, f32)]| {
        let mut v = vec![0f32; vocab];
        for (index, value) in pairs {
            v[*index] = *value;
        }
        v
    };
    let items = reference["inputs"].as_array().expect("inputs");
    let texts: Vec<&str> = items
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let mut diff = 0f32;
    for path in ["/embed_sparse", "/"] {
        let got = served.ok(path, json!({"inputs": texts})).await;
        let got = got.as_array().expect("a list per input");
        assert_eq!(got.len(), items.len());
        for (i, (item, values)) in items.iter().zip(got).enumerate() {
            let values: Vec<(usize, f32)> = values
                .as_array()
                .expect("sparse values")
                .iter()
                .map(|v| {
                    (
                        v["index"].as_u64().expect("index") as usize,
                        v["value"].as_f64().expect("value") as f32,
                    )
                })
                .collect();
            assert!(
                values.windows(2).all(|w| w[0].0 < w[1].0),
                "by index, no repeats"
            );
            assert!(values.iter().all(|(_, v)| *v > 0.0), "non-zeros only");
            let want: Vec<(usize, f32)> = item["sparse"]["indices"]
                .as_array()
                .expect("indices")
                .iter()
                .map(|i| i.as_u64().expect("index") as usize)
                .zip(floats(&item["sparse"]["values"]))
                .collect();
            diff = diff.max(worst(
                &dense(&values),
                &dense(&want),
                &format!("{path} input {i}"),
            ));
        }
    }
    eprintln!("{fixture}: /embed_sparse max abs diff from SparseEncoder {diff:e}");
}

/// A route of another task answers TEI's 424 `backend` error naming what the model is and which
/// routes serve it; the OpenAI route answers in OpenAI's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_of_another_task_answer_tei_424() {
    let classifier = Served::start("bert-classifier", Family::Bert, Task::Classify).await;
    for (path, body, message) in [
        (
            "/embed",
            json!({"inputs": "a"}),
            "Model is not an embedding model",
        ),
        (
            "/embed_all",
            json!({"inputs": "a"}),
            "Model is not an embedding model",
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["a"]}),
            "model is not a re-ranker model",
        ),
        (
            "/embed_sparse",
            json!({"inputs": "a"}),
            "Model is not an embedding model with SPLADE pooling",
        ),
    ] {
        let (status, error) = classifier.post(path, body).await;
        assert_eq!(status, 424, "{path}: {error}");
        assert_eq!(error["error_type"], "backend", "{path}");
        let text = error["error"].as_str().expect("message");
        assert!(
            text.starts_with(message) && text.contains("classifier") && text.contains("/predict"),
            "{path}: {text}"
        );
    }
    let (status, error) = classifier
        .post("/v1/embeddings", json!({"input": "a"}))
        .await;
    assert_eq!(status, 424);
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let embedder = Served::start("bert", Family::Bert, Task::Embed).await;
    let (status, error) = embedder.post("/predict", json!({"inputs": "a"})).await;
    assert_eq!(status, 424, "{error}");
    assert!(
        error["error"].as_str().is_some_and(
            |e| e.starts_with("Model is not a classifier model") && e.contains("/embed")
        ),
        "{error}"
    );
    assert_eq!(embedder.get("/info").await["model_type"], "embedding");
    assert_eq!(embedder.get("/info").await["labels"], json!([]));
}

/// Request shapes TEI accepts for `/predict`: a text, a pair, a list of texts and pairs; and
/// what it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_takes_tei_input_shapes() {
    let served = Served::start("bert-classifier", Family::Bert, Task::Classify).await;
    let single = served.ok("/predict", json!({"inputs": "a"})).await;
    assert!(
        single[0]["label"].is_string(),
        "one input: a list of predictions: {single}"
    );
    let pair = served.ok("/predict", json!({"inputs": ["a", "b"]})).await;
    assert!(
        pair[0]["label"].is_string(),
        "two texts are one pair: {pair}"
    );
    let batch = served
        .ok("/predict", json!({"inputs": ["a", "b", "c"]}))
        .await;
    assert_eq!(batch.as_array().map(Vec::len), Some(3), "{batch}");
    let pairs = served.ok("/predict", json!({"inputs": [["a", "b"]]})).await;
    assert!(pairs[0][0]["label"].is_string(), "{pairs}");
    for (body, status) in [
        (json!({"inputs": []}), 422),
        (json!({"inputs": [["a"]]}), 422),
        (json!({"inputs": [["a", "b", "c"]]}), 422),
        (json!({"inputs": 3}), 422),
        (json!({"inputs": vec!["x"; 17]}), 422),
    ] {
        let (got, error) = served.post("/predict", body.clone()).await;
        assert_eq!(got, status, "{body}: {error}");
        assert_eq!(error["error_type"], "validation", "{body}");
    }
    let (status, error) = served
        .post("/rerank", json!({"query": "q", "texts": []}))
        .await;
    assert_eq!(status, 424, "a classifier refuses /rerank first: {error}");
}

/// `/openapi.json` describes what the served model answers: its task's routes, `POST /` with
/// that task's bodies, and not the routes of other tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_the_served_task_routes() {
    for (fixture, family, task, present, absent, root) in [
        (
            "bert-classifier",
            Family::Bert,
            Task::Classify,
            &["/predict"][..],
            &["/embed", "/rerank", "/embed_sparse", "/v1/embeddings"][..],
            "PredictRequest",
        ),
        (
            "bert-reranker",
            Family::Bert,
            Task::Rerank,
            &["/predict", "/rerank"][..],
            &["/embed", "/embed_sparse", "/similarity"][..],
            "RerankRequest",
        ),
        (
            "bert-splade",
            Family::Bert,
            Task::SparseEmbed,
            &["/embed_sparse"][..],
            &["/embed", "/predict", "/rerank"][..],
            "EmbedSparseRequest",
        ),
        (
            "bert",
            Family::Bert,
            Task::Embed,
            &["/embed", "/v1/embeddings"][..],
            &["/predict", "/rerank", "/embed_sparse"][..],
            "RootRequest",
        ),
    ] {
        let served = Served::start(fixture, family, task).await;
        let doc = served.get("/openapi.json").await;
        for path in present {
            assert!(doc["paths"][path].is_object(), "{fixture}: {path} missing");
        }
        for path in absent {
            assert!(doc["paths"].get(path).is_none(), "{fixture}: {path} listed");
        }
        assert_eq!(
            doc.pointer("/paths/~1/post/requestBody/content/application~1json/schema/$ref"),
            Some(&json!(format!("#/components/schemas/{root}"))),
            "{fixture}"
        );
    }
}
