//! The generation routes over HTTP, served from the library's router with the real SmolLM2
//! GGUF: OpenAI chat and text completions (JSON and server-sent events) give the golden greedy
//! text, errors come in OpenAI's body, embedding routes refuse with a clear 400, and the official
//! `openai` Python client (pinned in tests/clients/requirements.txt, installed by
//! scripts/install-test-clients; `$SEALSERVE_CLIENTS_PYTHON`, else `python3`) chats with it.

mod generate_support;

use generate_support::{golden, root, text_model};
use sealserve::generate::{Generator, GeneratorConfig};
use sealserve::http::generate::{generation_router, GenerationState};
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

/// The chat prompt of the golden file and llama.cpp's greedy answer to it (same GGUF).
const QUESTION: &str = "What is 2+2?";
const ANSWER: &str = "The answer to this classic math problem is 4.";

/// One server per test binary, on its own runtime thread; returns its base URL.
fn server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let generator =
            Generator::start(text_model(), GeneratorConfig::default()).expect("generator starts");
        let state = Arc::new(GenerationState {
            generator,
            model_id: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            ready: Arc::new(AtomicBool::new(true)),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, generation_router(state))
                    .await
                    .expect("serves");
            });
        });
        base
    })
}

fn post(path: &str, body: &Value) -> (u16, String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", server()))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    })
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 20,
        "stream": stream,
    })
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

#[test]
fn chat_completion_is_the_golden_greedy_answer() {
    let reference = golden();
    let chat = reference
        .llama_cpp_gguf
        .greedy
        .iter()
        .find(|r| r.name == "chat_template")
        .expect("golden chat prompt");
    let (status, body) = post("/v1/chat/completions", &chat_body(false));
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "smollm2");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"]["completion_tokens"],
        chat.generated_ids.len(),
        "{body}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], chat.prompt_ids.len());
}

#[test]
fn streamed_chat_gives_the_same_text_then_usage_then_done() {
    let mut request = chat_body(true);
    request["stream_options"] = json!({"include_usage": true});
    let (status, body) = post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(delta);
        }
    }
    assert_eq!(text, ANSWER);
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]), "usage chunk has no choices");
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[test]
fn text_completion_honours_max_tokens_and_stop_streamed_or_not() {
    let body = json!({"prompt": "The capital of France is", "temperature": 0, "max_tokens": 6});
    let (status, plain) = post("/v1/completions", &body);
    assert_eq!(status, 200, "{plain}");
    let plain: Value = serde_json::from_str(&plain).expect("JSON");
    assert_eq!(plain["object"], "text_completion");
    assert_eq!(plain["usage"]["completion_tokens"], 6);
    assert_eq!(plain["choices"][0]["finish_reason"], "length");
    let text = plain["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(!text.is_empty());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, sse) = post("/v1/completions", &streamed);
    assert_eq!(status, 200, "{sse}");
    let data = sse_data(&sse);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let joined: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, text, "streaming and non-streaming agree");

    // A stop string cut from the greedy text: the answer ends right before it.
    let word = text
        .split_whitespace()
        .nth(1)
        .expect("two words")
        .to_string();
    let mut stopped = body.clone();
    stopped["stop"] = json!([word]);
    let (status, out) = post("/v1/completions", &stopped);
    assert_eq!(status, 200, "{out}");
    let out: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let cut = out["choices"][0]["text"].as_str().expect("text");
    assert!(
        text.starts_with(cut) && !cut.contains(&word),
        "{cut:?} / {text:?}"
    );
}

#[test]
fn errors_come_in_openai_shape_and_embedding_routes_refuse() {
    let (status, body) = post("/v1/chat/completions", &json!({"messages": []}));
    assert_eq!(status, 422, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("messages")));

    let too_long = json!({"prompt": "hi", "max_tokens": 1_000_000});
    let (status, body) = post("/v1/completions", &too_long);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("context"), "{body}");

    let (status, body) = post("/v1/embeddings", &json!({"input": "hi"}));
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("generation model")));
}

#[test]
fn openai_python_client_chats_with_and_without_streaming() {
    let python = std::env::var("SEALSERVE_CLIENTS_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&python)
        .arg("openai_chat.py")
        .arg(server())
        .arg(root().join("tests/data/reference"))
        .current_dir(root().join("tests/clients"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}): install the pinned clients with scripts/install-test-clients")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{python} openai_chat.py failed:\n{text}"
    );
    println!("{text}");
}
