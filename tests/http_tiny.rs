//! Every route's shape on a tiny generated model, served in-process (no 90 MB model needed).

mod common;

use common::tiny;
use sealserve::batcher::{Batcher, BatcherConfig};
use sealserve::engine::{self, Engine, EngineConfig};
use sealserve::http::{self, AppState, BundleInfo, Limits};
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

async fn start_tiny_server() -> String {
    let bundle = tiny::verified("");
    let loaded = engine::load(
        &bundle,
        &EngineConfig {
            device: "cpu".parse().unwrap(),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    loaded.warm_up().unwrap();
    let engine = Arc::new(Engine::start(loaded).unwrap());
    let limits = Limits {
        max_client_batch_size: 8,
        payload_limit: 4096,
        max_batch_tokens: 256,
        max_batch_size: 4,
        max_concurrent_requests: 16,
    };
    let batcher = Batcher::start(
        engine.clone(),
        BatcherConfig {
            max_batch_tokens: 256,
            max_batch_size: 4,
            max_concurrent_requests: 16,
        },
    );
    let state = Arc::new(AppState {
        batcher,
        tokenizer: engine.tokenizer().clone(),
        model: engine.info().clone(),
        limits,
        bundle: BundleInfo {
            manifest_sha256: "0".repeat(64),
            key_fingerprint: bundle.key_fingerprint.clone(),
            key_id: bundle.key_id.clone(),
            signature: "dev-signed",
            trusted_keys_pinned: false,
            trust: bundle.trust,
        },
        hardening: json!({"level": "off"}),
        api_key: None,
        ready: Arc::new(AtomicBool::new(true)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, http::router(state)).await.unwrap() });
    std::mem::forget(engine);
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_its_documented_shape() {
    let base = start_tiny_server().await;
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
}
