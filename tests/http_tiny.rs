//! Every route's shape on a tiny generated model, served in-process (no 90 MB model needed).

mod common;

use common::tiny;
use sealserve::batcher::Backend;
use sealserve::engine::{
    self, BatchOutput, Engine, EngineBatch, EngineConfig, EngineError, EngineHealth,
};
use sealserve::limits::Limits;
use serde_json::{json, Value};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

fn limits() -> Limits {
    let n = |v| NonZeroUsize::new(v).unwrap();
    Limits {
        max_client_batch_size: n(8),
        payload_limit: n(4096),
        max_batch_tokens: n(256),
        max_batch_size: n(4),
        max_concurrent_requests: n(16),
    }
}

/// The tiny model served in-process with the given sentence-transformers prompts; returns the
/// base URL and the engine (kept alive by the caller).
async fn start_tiny_server(prompts: &[(&str, &str)]) -> (String, Arc<Engine>) {
    start_tiny_server_with(prompts, |engine| engine as Arc<dyn Backend>).await
}

/// [`start_tiny_server`] with the batcher talking to `backend(engine)` instead of the engine.
async fn start_tiny_server_with(
    prompts: &[(&str, &str)],
    backend: impl FnOnce(Arc<Engine>) -> Arc<dyn Backend>,
) -> (String, Arc<Engine>) {
    let bundle = tiny::verified("");
    let mut loaded = engine::load(
        &bundle,
        &EngineConfig {
            device: "cpu".parse().unwrap(),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    loaded.info.prompts = prompts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    common::inproc::serve_with(&bundle, loaded, limits(), backend).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_its_documented_shape() {
    let (base, _engine) = start_tiny_server(&[]).await;
    sealserve::remote::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();

    let embed: Value = post("/embed", json!({"inputs": ["hello world", "the cat"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vectors = embed.as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let v: Vec<f32> = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(v.len(), tiny::HIDDEN);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised by default");
    }
    let raw: Value = post(
        "/embed",
        json!({"inputs": "hello", "normalize": false, "dimensions": 8}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(raw[0].as_array().unwrap().len(), 8);

    let openai: Value = post("/v1/embeddings", json!({"input": "hello"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "embedding");
    assert_eq!(openai["data"][0]["index"], 0);
    assert_eq!(openai["model"], "test/tiny-bert");
    assert_eq!(openai["usage"]["prompt_tokens"], 3);

    let cml: Value = post("/model", json!({"request": {"inputs": ["hello"]}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cml["success"], true);
    assert_eq!(
        cml["response"]["embeddings"][0].as_array().unwrap().len(),
        tiny::HIDDEN
    );

    let tokens: Value = post("/tokenize", json!({"inputs": "hello world"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<u64> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 5, 6, 3]);
    assert_eq!(tokens[0][1]["text"], "hello");
    assert_eq!(tokens[0][1]["start"], 0);
    assert_eq!(tokens[0][1]["stop"], 5);

    let too_many = post("/embed", json!({"inputs": vec!["hello"; 9]}))
        .await
        .unwrap();
    assert_eq!(too_many.status(), 422, "over --max-client-batch-size");
    let too_big = client
        .post(format!("{base}/embed"))
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let body: Value = too_big.json().await.unwrap();
    assert_eq!(body["error_type"], "payload_too_large");

    for path in ["/health", "/ready", "/info", "/metrics", "/openapi.json"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let info: Value = client
        .get(format!("{base}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["dimensions"], tiny::HIDDEN);
    assert_eq!(info["max_input_tokens"], tiny::MAX_SEQ);
    assert_eq!(info["model_type"], "embedding");
    assert_eq!(info["engine"]["state"], "running");
    assert_eq!(info["signature"], "dev-signed");
    assert_eq!(info["limits"]["max_client_batch_size"], 8);

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "test/tiny-bert");
    assert_eq!(models["data"][0]["object"], "model");
    let one = client
        .get(format!("{base}/v1/models/test/tiny-bert"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = client
        .get(format!("{base}/v1/models/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

async fn post_json(base: &str, path: &str, body: Value) -> (u16, Value) {
    sealserve::remote::tls::install_crypto_provider();
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn floats(value: &Value) -> Vec<f32> {
    serde_json::from_value(value.clone()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_parity_routes() {
    let (base, _engine) = start_tiny_server(&[("query", "the cat "), ("empty", "")]).await;
    let texts = ["hello world", "the big dog", "a small mat ."];
    let (status, embedded) = post_json(&base, "/embed", json!({"inputs": texts})).await;
    assert_eq!(status, 200);
    let vectors: Vec<Vec<f32>> = serde_json::from_value(embedded.clone()).unwrap();

    // POST / is /embed for an embedding model, and the similarity task for `inputs` objects.
    let (status, root) = post_json(&base, "/", json!({"inputs": texts})).await;
    assert_eq!(status, 200);
    assert_eq!(root, embedded);
    let similarity_request =
        json!({"inputs": {"source_sentence": texts[0], "sentences": &texts[1..]}});
    for path in ["/", "/similarity"] {
        let (status, scores) = post_json(&base, path, similarity_request.clone()).await;
        assert_eq!(status, 200, "{path}: {scores}");
        let scores = floats(&scores);
        assert_eq!(scores.len(), 2);
        for (score, other) in scores.iter().zip(&vectors[1..]) {
            assert!((score - cosine(&vectors[0], other)).abs() < 1e-5, "{path}");
        }
    }
    let (status, body) = post_json(
        &base,
        "/similarity",
        json!({"inputs": {"source_sentence": "a", "sentences": []}}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("sentences"));

    // /embed_all: one row per token, and their mean is the (unnormalised) mean-pooled vector.
    let (status, all) = post_json(&base, "/embed_all", json!({"inputs": texts})).await;
    assert_eq!(status, 200);
    let (_, raw) = post_json(
        &base,
        "/embed",
        json!({"inputs": texts, "normalize": false}),
    )
    .await;
    let tokens: Vec<Vec<Vec<f32>>> = serde_json::from_value(all).unwrap();
    let (_, described) = post_json(&base, "/tokenize", json!({"inputs": texts})).await;
    for (i, rows) in tokens.iter().enumerate() {
        assert_eq!(rows.len(), described[i].as_array().unwrap().len());
        let mean: Vec<f32> = (0..tiny::HIDDEN)
            .map(|d| rows.iter().map(|r| r[d]).sum::<f32>() / rows.len() as f32)
            .collect();
        let pooled = floats(&raw[i]);
        for (a, b) in mean.iter().zip(&pooled) {
            assert!(
                (a - b).abs() < 1e-5,
                "input {i}: mean of token states {a} vs pooled {b}"
            );
        }
    }

    // /decode inverts /tokenize.
    let ids: Vec<u64> = described[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let (status, decoded) = post_json(&base, "/decode", json!({"ids": ids})).await;
    assert_eq!(status, 200);
    assert_eq!(decoded, json!(["hello world"]));
    let (_, decoded) = post_json(
        &base,
        "/decode",
        json!({"ids": [ids, [2, 9, 3]], "skip_special_tokens": false}),
    )
    .await;
    assert_eq!(decoded[1], "[CLS] cat [SEP]");

    // Prompts: a named prompt is put before the text, exactly as if sent with it.
    let (_, with_prompt) = post_json(
        &base,
        "/embed",
        json!({"inputs": "sat on the mat", "prompt_name": "query"}),
    )
    .await;
    let (_, spelled_out) =
        post_json(&base, "/embed", json!({"inputs": "the cat sat on the mat"})).await;
    assert_eq!(with_prompt, spelled_out);
    let (_, tokens) = post_json(
        &base,
        "/tokenize",
        json!({"inputs": "sat", "prompt_name": "query", "add_special_tokens": false}),
    )
    .await;
    let words: Vec<&str> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["the", "cat", "sat"]);
    let (status, body) = post_json(
        &base,
        "/embed",
        json!({"inputs": "x", "prompt_name": "nope"}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"].as_str().unwrap().contains("\"query\""),
        "{body}"
    );

    // truncation_direction: Left keeps the end of an over-long input, Right its start.
    let long = format!("hello {}", "cat ".repeat(40));
    let (_, right) = post_json(&base, "/tokenize", json!({"inputs": long})).await;
    assert_eq!(right[0].as_array().unwrap().len(), tiny::MAX_SEQ);
    assert_eq!(right[0][1]["text"], "hello");
    let (_, left) = post_json(
        &base,
        "/embed",
        json!({"inputs": long, "truncation_direction": "left"}),
    )
    .await;
    let (_, all_cats) = post_json(&base, "/embed", json!({"inputs": "cat ".repeat(40)})).await;
    assert_eq!(left, all_cats, "left truncation dropped the leading word");
    let (_, right) = post_json(
        &base,
        "/embed",
        json!({"inputs": long, "truncation_direction": "Right"}),
    )
    .await;
    assert_ne!(right, all_cats);

    // The served OpenAPI document states this model's bounds.
    sealserve::remote::tls::install_crypto_provider();
    let doc: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Input"]["oneOf"][1]["maxItems"], 8);
    assert_eq!(
        schemas["EmbedRequest"]["properties"]["dimensions"]["maximum"],
        tiny::HIDDEN
    );
    assert_eq!(
        schemas["EmbedRequest"]["properties"]["prompt_name"]["enum"],
        json!(["empty", "query", null])
    );
}

#[test]
fn engine_health_reports_stuck_and_stopped_threads() {
    let bundle = tiny::verified("");
    let loaded = engine::load(
        &bundle,
        &EngineConfig {
            device: "cpu".parse().unwrap(),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let engine = Arc::new(Engine::start(loaded).unwrap());
    assert_eq!(
        engine.health(Duration::from_secs(60)),
        EngineHealth::Running
    );
    let busy = engine.clone();
    let worker = std::thread::spawn(move || {
        busy.run_on_engine_thread(Box::new(|| std::thread::sleep(Duration::from_millis(300))))
    });
    std::thread::sleep(Duration::from_millis(150));
    assert!(matches!(
        engine.health(Duration::from_millis(50)),
        EngineHealth::Stuck { .. }
    ));
    worker.join().unwrap().unwrap();
    assert_eq!(
        engine.health(Duration::from_millis(50)),
        EngineHealth::Running
    );
    // A panic outside a batch takes the thread down: the engine then says so.
    let _ = engine.run_on_engine_thread(Box::new(|| panic!("engine thread dies")));
    for _ in 0..100 {
        if engine.health(Duration::from_secs(60)) == EngineHealth::Stopped {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("a dead engine thread is not reported as stopped");
}

/// The tiny engine, reported stuck after `stuck_after` instead of the production minute
/// ([`sealserve::batcher::STUCK_AFTER`]), so readiness can be driven in a second.
struct QuickToStick {
    engine: Arc<Engine>,
    stuck_after: Duration,
}

impl Backend for QuickToStick {
    fn submit(
        &self,
        batch: EngineBatch,
    ) -> tokio::sync::oneshot::Receiver<Result<BatchOutput, EngineError>> {
        self.engine.submit(batch)
    }

    fn health(&self) -> EngineHealth {
        self.engine.health(self.stuck_after)
    }
}

/// Status and JSON body of a GET.
async fn probe(base: &str, path: &str) -> (u16, Value) {
    sealserve::remote::tls::install_crypto_provider();
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Polls `path` until it answers `status` (or 10 s pass); returns the last answer.
async fn probe_until(base: &str, path: &str, status: u16) -> (u16, Value) {
    let mut last = probe(base, path).await;
    for _ in 0..200 {
        if last.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = probe(base, path).await;
    }
    last
}

/// Issue 12, "readiness": `/ready` used to be a flag set once, so a server whose engine thread
/// had died kept taking traffic. Now `/ready` is 503 while the engine is stuck or gone, and
/// `/health` says which (503 once the thread is gone: only a restart helps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_health_follow_the_engine_thread() {
    let (base, engine) = start_tiny_server_with(&[], |engine| {
        Arc::new(QuickToStick {
            engine,
            stuck_after: Duration::from_millis(200),
        })
    })
    .await;
    for path in ["/ready", "/health"] {
        let (status, body) = probe(&base, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["engine"]["state"], "running", "{path}: {body}");
    }

    // One job holds the engine thread for 5 s: stuck after 200 ms.
    let busy = engine.clone();
    let job = tokio::task::spawn_blocking(move || {
        busy.run_on_engine_thread(Box::new(|| std::thread::sleep(Duration::from_secs(5))))
    });
    let (status, body) = probe_until(&base, "/ready", 503).await;
    assert_eq!(status, 503, "a stuck engine is still ready: {body}");
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["engine"]["state"], "stuck", "{body}");
    let (status, body) = probe(&base, "/health").await;
    assert_eq!(status, 200, "a stuck engine may still finish: {body}");
    assert_eq!(body["engine"]["state"], "stuck", "{body}");
    job.await.unwrap().unwrap();
    let (status, body) = probe_until(&base, "/ready", 200).await;
    assert_eq!(status, 200, "ready again once the job is done: {body}");

    // A panic outside a batch takes the thread down for good.
    let dying = engine.clone();
    let _ = tokio::task::spawn_blocking(move || {
        dying.run_on_engine_thread(Box::new(|| panic!("engine thread dies")))
    })
    .await;
    let (status, body) = probe_until(&base, "/health", 503).await;
    assert_eq!(
        status, 503,
        "a dead engine thread is reported alive: {body}"
    );
    assert_eq!(body["status"], "engine stopped");
    assert_eq!(body["engine"]["state"], "stopped", "{body}");
    let (status, body) = probe(&base, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["engine"]["state"], "stopped", "{body}");
}
