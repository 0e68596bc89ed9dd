//! The generation routes over HTTP, served from the library's router with the real SmolLM2
//! GGUF: OpenAI chat and text completions (JSON and server-sent events), TGI's `/generate`,
//! `/generate_stream` and `POST /`, and CML's `/model` give the golden greedy text; `/tokenize`
//! and `/decode` match the golden token ids; `/info` is typed and `/openapi.json` lists exactly
//! the generation routes, exact enough for schemathesis with all checks; errors come in each
//! family's body, embedding routes refuse with TEI's 424; the official `openai` and
//! `huggingface_hub` Python clients (pinned in tests/clients/requirements.txt, installed by
//! scripts/install-test-clients; `$SEALSERVE_CLIENTS_PYTHON`, else `python3`) chat with it, and
//! the `openai` package's pydantic models validate every OpenAI answer and event.

mod common;
mod generate_support;

use generate_support::{golden, text_model, LlamaCppGreedy};
use sealserve::bundle::TrustState;
use sealserve::generate::{Generator, GeneratorConfig};
use sealserve::harden::{self, HardenLevel, LandlockStatus};
use sealserve::http::generate::{generation_router, GenerationState};
use sealserve::http::{BundleInfo, SignatureKind};
use sealserve::limits::Limits;
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

/// The chat prompt of the golden file and llama.cpp's greedy answer to it (same GGUF).
const QUESTION: &str = "What is 2+2?";
const ANSWER: &str = "The answer to this classic math problem is 4.";

/// The test server's state (its generator's counters).
static STATE: OnceLock<Arc<GenerationState>> = OnceLock::new();

/// One server per test binary, on its own runtime thread; returns its base URL.
fn server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        // reqwest's TLS is rustls without a built-in provider (src/remote/tls.rs): install ring's.
        sealserve::remote::tls::install_crypto_provider();
        let generator =
            Generator::start(text_model(), GeneratorConfig::default()).expect("generator starts");
        let state = Arc::new(GenerationState {
            generator,
            model_id: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            revision: "0".repeat(40),
            bundle: BundleInfo {
                manifest_sha256: "0".repeat(64),
                key_fingerprint: "0".repeat(64),
                key_id: "0".repeat(16),
                signature: SignatureKind::DevSigned,
                trusted_keys_pinned: false,
                trust: TrustState::Unpinned,
                load: sealserve::remote::LoadReport {
                    source: "embedded".into(),
                    files: 0,
                    bytes: 0,
                    load_ms: 0,
                    throughput_mib_s: 0.0,
                    hash_ms: 0,
                    connections: 0,
                    retries: 0,
                },
            },
            hardening: harden::report(HardenLevel::Off, LandlockStatus::NotRequested),
            limits: Limits::DEFAULT,
            api_key: None,
            ready: Arc::new(AtomicBool::new(true)),
        });
        assert!(STATE.set(state.clone()).is_ok(), "one server");
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
        sealserve::remote::tls::install_crypto_provider();
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

fn get(path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        sealserve::remote::tls::install_crypto_provider();
        let response = reqwest::Client::new()
            .get(format!("{}{path}", server()))
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

/// The JSON events of an OpenAI stream, after checking that it ends with `[DONE]`.
fn sse_chunks(body: &str) -> Vec<Value> {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .collect()
}

#[test]
fn chat_completion_is_the_golden_greedy_answer() {
    let chat = gguf_chat();
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
    let chunks = sse_chunks(&body);
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
fn n_choices_come_indexed_whole_or_streamed_and_each_is_what_its_seed_gives_alone() {
    let chat = gguf_chat();
    // Greedy: n golden answers; the usage counts the prompt once and every choice's tokens.
    let mut body = chat_body(false);
    body["n"] = json!(3);
    let (status, text) = post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3, "{v}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "{v}");
        assert_eq!(c["message"]["content"], ANSWER, "{v}");
        assert_eq!(c["finish_reason"], "stop", "{v}");
    }
    assert_eq!(v["usage"]["prompt_tokens"], chat.prompt_ids.len());
    assert_eq!(
        v["usage"]["completion_tokens"],
        3 * chat.generated_ids.len()
    );

    // Sampled with a seed: choice i is what `seed + i` gives alone, whole or streamed.
    let sampled = |n: Option<usize>, seed: u64, stream: bool| {
        let mut body = json!({"messages": [{"role": "user", "content": "Tell me a story."}],
                              "max_tokens": 12, "temperature": 1.0, "seed": seed,
                              "stream": stream});
        if let Some(n) = n {
            body["n"] = json!(n);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let (status, text) = post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{text}");
        text
    };
    let whole: Value = serde_json::from_str(&sampled(Some(3), 42, false)).expect("JSON");
    let texts: Vec<String> = whole["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["message"]["content"].as_str().expect("text").to_string())
        .collect();
    assert_eq!(texts.len(), 3);
    for (i, want) in texts.iter().enumerate() {
        let alone: Value =
            serde_json::from_str(&sampled(None, 42 + i as u64, false)).expect("JSON");
        assert_eq!(
            &alone["choices"][0]["message"]["content"], want,
            "choice {i}"
        );
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three seeds, one text: {texts:?}"
    );
    let chunks = sse_chunks(&sampled(Some(3), 42, true));
    let mut streamed = vec![String::new(); 3];
    let (mut roles, mut finishes) = (vec![0; 3], vec![0; 3]);
    for chunk in &chunks[..chunks.len() - 1] {
        let choices = chunk["choices"].as_array().expect("choices");
        assert_eq!(choices.len(), 1, "one choice per event: {chunk}");
        let i = choices[0]["index"].as_u64().expect("index") as usize;
        if choices[0]["delta"]["role"] == "assistant" {
            roles[i] += 1;
        }
        if !choices[0]["finish_reason"].is_null() {
            finishes[i] += 1;
        }
        if let Some(delta) = choices[0]["delta"]["content"].as_str() {
            streamed[i].push_str(delta);
        }
    }
    assert_eq!(streamed, texts);
    assert_eq!((roles, finishes), (vec![1; 3], vec![1; 3]));
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);

    // /v1/completions and CML's /model take n too.
    let (status, text) = post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0, "n": 2}),
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["choices"][1]["index"], 1, "{v}");
    assert_eq!(v["choices"][0]["text"], v["choices"][1]["text"], "{v}");
    let (status, text) = post(
        "/model",
        &json!({"request": {"prompt": "Hello", "max_tokens": 2, "temperature": 0, "n": 2}}),
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        v["response"]["choices"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );

    // Out of range: 422 naming n.
    for (n, says) in [
        (json!(0), "n must be between 1 and 16"),
        (json!(17), "n must be between 1 and 16"),
        (json!(2.5), "whole number"),
        (json!(-1), "whole number"),
    ] {
        let mut body = chat_body(false);
        body["n"] = n.clone();
        let (status, text) = post("/v1/chat/completions", &body);
        assert_eq!(status, 422, "{n}: {text}");
        assert!(text.contains(says), "{n}: {text}");
    }
}

#[test]
fn closing_a_stream_of_several_choices_cancels_every_one() {
    use std::io::{Read, Write};
    let base = server();
    let generator = &STATE.get().expect("server state").generator;
    let before = generator.stats().cancelled;
    // The end tokens banned, so only the disconnect can end these choices early.
    let body = json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4000,
                      "temperature": 0, "n": 2, "stream": true,
                      "logit_bias": {"0": -100, "2": -100}})
    .to_string();
    let mut socket =
        std::net::TcpStream::connect(base.trim_start_matches("http://")).expect("connect");
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request sent");
    // Read until both choices have sent text, then hang up.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains(r#""index":0,"delta":{"content""#)
        && seen.contains(r#""index":1,"delta":{"content""#))
    {
        let n = socket.read(&mut buf).expect("stream");
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    drop(socket);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while generator.stats().cancelled < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "choices not cancelled: {:?}",
            generator.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn vllm_ignore_eos_and_stop_token_ids_are_honoured() {
    let ids = gguf_chat().generated_ids;
    let n = ids.len();
    let chat = |extra: Value| {
        let mut body = chat_body(false);
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, text) = post("/v1/chat/completions", &body);
        (status, serde_json::from_str::<Value>(&text).expect("JSON"))
    };
    // Past the end of turn (the golden answer's last token) to max_tokens.
    let (status, v) = chat(json!({"ignore_eos": true, "max_tokens": n + 6}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], n + 6, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert!(
        text.starts_with(ANSWER) && text.len() > ANSWER.len(),
        "{text:?}"
    );
    // false is the default.
    let (_, v) = chat(json!({"ignore_eos": false}));
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER, "{v}");
    // A token of the answer ends it where it first comes, and is not in the text.
    let stop = ids[3];
    let at = ids.iter().position(|&t| t == stop).expect("in the answer");
    let (status, v) = chat(json!({"stop_token_ids": [stop]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], at + 1, "{v}");
    let (_, decoded) = post("/decode", &json!({"ids": &ids[..at]}));
    let decoded: Value = serde_json::from_str(&decoded).expect("JSON");
    assert_eq!(v["choices"][0]["message"]["content"], decoded[0], "{v}");
    // Bad ids: 422 naming the field.
    for bad in [json!([49_152]), json!([-1]), json!([1.5]), json!("2")] {
        let (status, v) = chat(json!({ "stop_token_ids": bad }));
        assert_eq!(status, 422, "{bad}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            ["stop_token_ids", "whole number", "expected a sequence"]
                .iter()
                .any(|says| message.contains(says)),
            "{bad}: {message}"
        );
    }
}

#[test]
fn echo_puts_the_prompt_first_whole_streamed_and_on_cml() {
    let whole = |prompt: Value, n: usize| {
        let (status, text) = post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "n": n}),
        );
        assert_eq!(status, 200, "{text}");
        let plain: Value = serde_json::from_str(&text).expect("JSON");
        let (status, text) = post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "n": n, "echo": true}),
        );
        assert_eq!(status, 200, "{text}");
        (plain, serde_json::from_str::<Value>(&text).expect("JSON"))
    };
    let prompt = "The capital of France is";
    let (plain, echoed) = whole(json!(prompt), 2);
    for i in 0..2 {
        let generated = plain["choices"][i]["text"].as_str().expect("text");
        assert_eq!(echoed["choices"][i]["text"], format!("{prompt}{generated}"));
    }
    assert_eq!(echoed["usage"], plain["usage"], "echo adds no tokens");
    // Token ids are echoed as their text, special tokens included.
    let ids = token_ids("<|im_start|>user\nHi");
    let (plain, echoed) = whole(json!(ids), 1);
    let generated = plain["choices"][0]["text"].as_str().expect("text");
    assert_eq!(
        echoed["choices"][0]["text"],
        format!("<|im_start|>user\nHi{generated}")
    );
    // Streamed: the prompt is the first event, then the same text as a whole answer.
    let (status, body) = post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": true,
                "stream": true}),
    );
    assert_eq!(status, 200, "{body}");
    let chunks = sse_chunks(&body);
    assert_eq!(chunks[0]["choices"][0]["text"], prompt);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, format!("{prompt}{}", plain_text(prompt)));
    // CML's /model.
    let (status, body) = post(
        "/model",
        &json!({"request": {"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": true}}),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        v["response"]["choices"][0]["text"],
        format!("{prompt}{}", plain_text(prompt))
    );
}

/// The token ids `/tokenize` gives for `text` (special-token text becomes special tokens).
fn token_ids(text: &str) -> Vec<u64> {
    let (status, body) = post("/tokenize", &json!({ "inputs": text }));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).expect("JSON")[0]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_u64().expect("id"))
        .collect()
}

/// The greedy 3-token completion of `prompt`.
fn plain_text(prompt: &str) -> String {
    let (status, text) = post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 3, "temperature": 0}),
    );
    assert_eq!(status, 200, "{text}");
    serde_json::from_str::<Value>(&text).expect("JSON")["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string()
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
    let joined: String = sse_chunks(&sse)
        .into_iter()
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
    assert_eq!(status, 424, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("generation model")));
}

#[test]
fn openai_parameters_this_server_cannot_honour_are_refused_not_ignored() {
    let chat = |extra: Value| {
        let mut body = chat_body(false);
        body["max_tokens"] = json!(1);
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        post("/v1/chat/completions", &body)
    };
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    for (extra, name) in [
        (json!({"tools": tool}), "tools"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"function_call": {"name": "f"}}), "function_call"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        // vLLM's and OpenAI's parameters this server does not read, which would change the
        // answer.
        (json!({"guided_json": {"type": "object"}}), "guided_json"),
        (json!({"guided_choice": ["yes", "no"]}), "guided_choice"),
        (json!({"min_tokens": 5}), "min_tokens"),
        (json!({"skip_special_tokens": false}), "skip_special_tokens"),
        (
            json!({"truncate_prompt_tokens": 5}),
            "truncate_prompt_tokens",
        ),
        (json!({"chat_template": "{{ messages }}"}), "chat_template"),
        (json!({"documents": [{"text": "x"}]}), "documents"),
        (json!({"bad_words": ["x"]}), "bad_words"),
        (
            json!({"add_generation_prompt": false}),
            "add_generation_prompt",
        ),
        (json!({"echo": true}), "echo"),
        (json!({"best_of": 2}), "best_of"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (
            json!({"prediction": {"type": "content", "content": "x"}}),
            "prediction",
        ),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
    ] {
        let (status, body) = chat(extra.clone());
        assert_eq!(status, 422, "{extra}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(name), "{extra}: {message}");
    }
    // Their no-op values are accepted.
    let (status, body) = chat(
        json!({"tools": [], "tool_choice": "none", "function_call": "auto",
        "response_format": {"type": "text"}, "logit_bias": {}, "logprobs": false}),
    );
    assert_eq!(status, 200, "{body}");
    // So are the no-op values of the others, and fields that do not change the answer.
    let (status, body) = chat(json!({"min_tokens": 0, "skip_special_tokens": true,
        "modalities": ["text"], "echo": false, "best_of": 1, "guided_json": null,
        "add_generation_prompt": true, "documents": [], "chat_template_kwargs": {},
        "bad_words": [], "logits_processors": [], "user": "u-1", "metadata": {"team": "risk"},
        "store": false}));
    assert_eq!(status, 200, "{body}");

    let completion = |extra: Value| {
        let mut body = json!({"prompt": "Hello", "max_tokens": 1});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        post("/v1/completions", &body)
    };
    for (extra, name) in [
        (json!({"echo": true, "logprobs": 0}), "echo"),
        (json!({"suffix": "end"}), "suffix"),
        (json!({"best_of": 2}), "best_of"),
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"guided_regex": "a+"}), "guided_regex"),
        (json!({"prompt_logprobs": 1}), "prompt_logprobs"),
    ] {
        let (status, body) = completion(extra.clone());
        assert_eq!(status, 422, "{extra}: {body}");
        assert!(body.contains(name), "{extra}: {body}");
    }
    let (status, body) = completion(json!({"echo": false, "suffix": "", "best_of": 1}));
    assert_eq!(status, 200, "{body}");
    // CML's /model refuses them too.
    let (status, body) = post(
        "/model",
        &json!({"request": {"prompt": "Hello", "max_tokens": 1, "guided_json": {}}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("guided_json"), "{body}");
}

#[test]
fn logit_bias_bans_and_forces_tokens_on_every_openai_route_and_bad_biases_are_refused() {
    let first = gguf_chat().generated_ids[0];
    let chat = |bias: Value| {
        let mut body = chat_body(false);
        body["max_tokens"] = json!(3);
        body["logit_bias"] = bias;
        let (status, text) = post("/v1/chat/completions", &body);
        (status, serde_json::from_str::<Value>(&text).expect("JSON"))
    };
    // Unbiased, and with a bias too small to matter: the golden answer.
    let (status, plain) = chat(json!({}));
    assert_eq!(status, 200, "{plain}");
    let plain = plain["choices"][0]["message"]["content"].clone();
    assert!(ANSWER.starts_with(plain.as_str().expect("text")), "{plain}");
    let (_, tiny) = chat(json!({ first.to_string(): 0.001 }));
    assert_eq!(tiny["choices"][0]["message"]["content"], plain);
    // -100 on the golden first token: another first token.
    let (status, banned) = chat(json!({ first.to_string(): -100 }));
    assert_eq!(status, 200, "{banned}");
    let banned = banned["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(!banned.starts_with("The"), "{banned:?}");
    // +100 on one token: every generated token is that one, on /v1/completions too, and the
    // log-probabilities are of the biased distribution.
    let word = " banana";
    let (status, ids) = post("/tokenize", &json!({ "inputs": word }));
    assert_eq!(status, 200, "{ids}");
    let ids: Value = serde_json::from_str(&ids).expect("JSON");
    assert_eq!(ids[0].as_array().map(Vec::len), Some(1), "one token: {ids}");
    let forced = ids[0][0]["id"].as_u64().expect("id");
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4,
                   "temperature": 0.7, "seed": 1, "logit_bias": {forced.to_string(): 100},
                   "logprobs": true}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0,
                   "logit_bias": {forced.to_string(): 100.0}, "logprobs": 1}),
        ),
    ] {
        let (status, text) = post(path, &body);
        assert_eq!(status, 200, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["usage"]["completion_tokens"], 4, "{path}: {v}");
        let logprobs: Vec<f64> = if path == "/v1/completions" {
            assert_eq!(v["choices"][0]["text"], word.repeat(4), "{path}: {v}");
            v["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .expect("token_logprobs")
                .iter()
                .filter_map(Value::as_f64)
                .collect()
        } else {
            assert_eq!(
                v["choices"][0]["message"]["content"],
                word.repeat(4),
                "{path}: {v}"
            );
            v["choices"][0]["logprobs"]["content"]
                .as_array()
                .expect("content")
                .iter()
                .filter_map(|t| t["logprob"].as_f64())
                .collect()
        };
        assert!(
            logprobs.len() == 4 && logprobs.iter().all(|&l| l > -1e-3),
            "{path}: {v}"
        );
    }
    // CML's /model takes the same field.
    let (status, text) = post(
        "/model",
        &json!({"request": {"prompt": "Hello", "max_tokens": 2, "temperature": 0,
                            "logit_bias": {forced.to_string(): 100}}}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&word.repeat(2)), "{text}");
    // Bad biases: 422 with a message naming the field, nothing generated.
    for bias in [
        json!({"x": 1}),
        json!({"-1": 1}),
        json!({" 7": 1}),
        json!({"7": 100.5}),
        json!({"7": "1"}),
        json!({"7": 1, "007": 2}),
        json!({"49152": 1}),
        json!({"99999999999": 1}),
        json!([[7, 1]]),
        json!("7"),
    ] {
        let (status, body) = chat(bias.clone());
        assert_eq!(status, 422, "{bias}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("logit_bias"), "{bias}: {message}");
    }
}

#[test]
fn log_probabilities_add_up_to_the_text_and_streaming_gives_the_same() {
    let mut body = chat_body(false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let (status, whole) = post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{whole}");
    let whole: Value = serde_json::from_str(&whole).expect("JSON");
    assert_eq!(whole["choices"][0]["message"]["content"], ANSWER);
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content")
        .clone();
    // Every generated token but the end of turn.
    assert_eq!(
        content.len() as u64 + 1,
        whole["usage"]["completion_tokens"].as_u64().expect("usage"),
        "{content:?}"
    );
    let joined: String = content.iter().filter_map(|t| t["token"].as_str()).collect();
    assert_eq!(joined, ANSWER);
    for t in &content {
        let top = t["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3, "{t}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], t["token"], "{t}");
        assert_eq!(top[0]["logprob"], t["logprob"], "{t}");
        let lp: Vec<f64> = top.iter().filter_map(|a| a["logprob"].as_f64()).collect();
        assert!(lp.windows(2).all(|w| w[0] >= w[1]) && lp[0] <= 0.0, "{t}");
        assert!(lp.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-5, "{t}");
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .expect("bytes")
            .iter()
            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect();
        assert_eq!(
            Some(String::from_utf8_lossy(&bytes).as_ref()),
            t["token"].as_str()
        );
    }

    body["stream"] = json!(true);
    let (status, sse) = post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{sse}");
    let streamed: Vec<Value> = sse_chunks(&sse)
        .into_iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        streamed, content,
        "streaming gives the same tokens and log-probabilities"
    );

    let text_body = json!({"prompt": "The capital of France is", "temperature": 0,
                           "max_tokens": 6, "logprobs": 2});
    let (status, text) = post("/v1/completions", &text_body);
    assert_eq!(status, 200, "{text}");
    let text: Value = serde_json::from_str(&text).expect("JSON");
    let lp = &text["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tokens.len(), 6, "{lp}");
    assert_eq!(
        tokens.concat(),
        text["choices"][0]["text"].as_str().expect("text")
    );
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .expect("text_offset")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let want: Vec<u64> = tokens
        .iter()
        .scan(0, |at, t| {
            let here = *at;
            *at += t.chars().count() as u64;
            Some(here)
        })
        .collect();
    assert_eq!(offsets, want);
    for (i, top) in lp["top_logprobs"]
        .as_array()
        .expect("top")
        .iter()
        .enumerate()
    {
        let top = top.as_object().expect("map");
        assert_eq!(top.len(), 2, "{top:?}");
        assert_eq!(
            top.get(tokens[i]),
            Some(&lp["token_logprobs"][i]),
            "{top:?}"
        );
    }
    let mut streamed_body = text_body.clone();
    streamed_body["stream"] = json!(true);
    let (status, sse) = post("/v1/completions", &streamed_body);
    assert_eq!(status, 200, "{sse}");
    let chunks = sse_chunks(&sse);
    let field = |name: &str| -> Vec<Value> {
        chunks
            .iter()
            .flat_map(|c| {
                c["choices"][0]["logprobs"][name]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    };
    assert_eq!(
        field("tokens"),
        lp["tokens"].as_array().cloned().unwrap_or_default()
    );
    assert_eq!(
        field("text_offset"),
        lp["text_offset"].as_array().cloned().unwrap_or_default()
    );
    assert_eq!(
        field("token_logprobs"),
        lp["token_logprobs"].as_array().cloned().unwrap_or_default()
    );

    // Not asked: null.
    let (_, plain) = post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 1}));
    let plain: Value = serde_json::from_str(&plain).expect("JSON");
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
}

#[test]
fn openai_python_client_chats_with_and_without_streaming() {
    println!("{}", common::run_client("openai_chat.py", server()));
}

#[test]
fn every_openai_object_validates_against_the_openai_package_models() {
    println!("{}", common::run_client("openai_schemas.py", server()));
}

/// llama.cpp's greedy run of the golden chat prompt on the same GGUF.
fn gguf_chat() -> LlamaCppGreedy {
    golden()
        .llama_cpp_gguf
        .greedy
        .into_iter()
        .find(|r| r.name == "chat_template")
        .expect("golden chat prompt")
}

/// The golden chat prompt rendered through SmolLM2's template, as TGI clients send it.
fn chat_prompt_text() -> String {
    golden()
        .results
        .into_iter()
        .find(|r| r.name == "chat_template")
        .map(|r| r.prompt)
        .expect("golden chat prompt text")
}

#[test]
fn tgi_truncate_keeps_the_last_tokens_and_typical_p_samples() {
    let inputs = "Paris is in France. Berlin is in Germany. Madrid is in";
    let ids = token_ids(inputs);
    for keep in [1, 5, ids.len(), ids.len() + 10] {
        let (status, body) = post(
            "/generate",
            &json!({"inputs": inputs,
                    "parameters": {"max_new_tokens": 4, "truncate": keep, "details": true}}),
        );
        assert_eq!(status, 200, "{keep}: {body}");
        let tgi: Value = serde_json::from_str(&body).expect("JSON");
        // The same as sending only the last `keep` ids.
        let tail = &ids[ids.len().saturating_sub(keep)..];
        let (status, body) = post(
            "/v1/completions",
            &json!({"prompt": tail, "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(status, 200, "{keep}: {body}");
        let openai: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            tgi["generated_text"], openai["choices"][0]["text"],
            "truncate {keep}"
        );
    }
    let (status, body) = post(
        "/generate",
        &json!({"inputs": inputs, "parameters": {"max_new_tokens": 2, "truncate": 0}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("truncate"), "{body}");

    // typical_p turns sampling on (as TGI does); the same seed gives the same text.
    let typical = |typical_p: Value, seed: u64| {
        post(
            "/generate",
            &json!({"inputs": "Once upon a time",
                    "parameters": {"max_new_tokens": 12, "typical_p": typical_p, "seed": seed}}),
        )
    };
    let (status, a) = typical(json!(0.5), 7);
    assert_eq!(status, 200, "{a}");
    assert_eq!(typical(json!(0.5), 7).1, a);
    let texts: std::collections::HashSet<String> =
        (0..6).map(|seed| typical(json!(0.9), seed).1).collect();
    assert!(texts.len() > 1, "typical_p did not sample: {texts:?}");
    for bad in [json!(0), json!(1.5), json!(-0.1)] {
        let (status, body) = typical(bad.clone(), 1);
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body.contains("typical_p"), "{bad}: {body}");
    }
}

#[test]
fn tgi_generate_and_generate_stream_give_the_golden_tokens_and_the_same_text() {
    let chat = gguf_chat();
    let request = json!({"inputs": chat_prompt_text(), "parameters": {"max_new_tokens": 20, "details": true}});
    let (status, body) = post("/generate", &request);
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["generated_text"], ANSWER, "{body}");
    let details = &body["details"];
    assert_eq!(details["finish_reason"], "eos_token", "{body}");
    let ids: Vec<u64> = details["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    let want: Vec<u64> = chat.generated_ids.iter().map(|&i| u64::from(i)).collect();
    assert_eq!(ids, want);
    assert_eq!(details["tokens"].as_array().map(Vec::len), Some(want.len()));
    assert!(details["tokens"][0]["logprob"]
        .as_f64()
        .is_some_and(|l| l <= 0.0));

    for path in ["/generate_stream", "/"] {
        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        let (status, sse) = post(path, &streamed);
        assert_eq!(status, 200, "{path}: {sse}");
        let events: Vec<Value> = sse_data(&sse)
            .iter()
            .map(|d| serde_json::from_str(d).expect("event is JSON"))
            .collect();
        let ids: Vec<u64> = events
            .iter()
            .filter_map(|e| e["token"]["id"].as_u64())
            .collect();
        assert_eq!(ids, want, "{path}");
        let text: String = events
            .iter()
            .filter_map(|e| e["token"]["text"].as_str())
            .collect();
        assert_eq!(text, ANSWER, "{path}");
        let last = events.last().expect("events");
        assert_eq!(last["generated_text"], ANSWER, "{path}");
        assert_eq!(last["details"]["finish_reason"], "eos_token", "{path}");
        assert!(events[..events.len() - 1]
            .iter()
            .all(|e| e["generated_text"].is_null()));
    }

    // POST / without "stream" is /generate; return_full_text puts the prompt first.
    let full = json!({"inputs": "The capital of France is",
        "parameters": {"max_new_tokens": 3, "return_full_text": true}});
    let (status, body) = post("/", &full);
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    let text = body["generated_text"].as_str().expect("text");
    assert!(text.starts_with("The capital of France is "), "{text:?}");
    assert!(body.get("details").is_none(), "{body}");

    // Parameters this server cannot honour are refused, not ignored.
    for parameters in [
        json!({"grammar": {"type": "json", "value": {}}}),
        json!({"best_of": 2}),
        json!({"top_n_tokens": 21}),
        json!({"no_such_parameter": 1}),
    ] {
        let (status, body) = post(
            "/generate",
            &json!({"inputs": "hi", "parameters": parameters}),
        );
        assert_eq!(status, 422, "{parameters}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["error_type"], "validation", "{body}");
    }
}

#[test]
fn cml_model_route_takes_a_chat_or_a_completion_request() {
    let (status, body) = post("/model", &json!({"request": chat_body(false)}));
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["success"], true);
    assert_eq!(body["response"]["object"], "chat.completion");
    assert_eq!(body["response"]["choices"][0]["message"]["content"], ANSWER);

    let completion =
        json!({"request": {"prompt": chat_prompt_text(), "max_tokens": 20, "temperature": 0}});
    let (status, body) = post("/model", &completion);
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["response"]["object"], "text_completion");
    assert_eq!(body["response"]["choices"][0]["text"], ANSWER);

    for bad in [
        json!({"request": {"inputs": "x"}}),
        json!({"request": chat_body(true)}),
        json!({"request": {"messages": "not a list"}}),
    ] {
        let (status, body) = post("/model", &bad);
        assert_eq!(status, 422, "{bad}: {body}");
    }
}

#[test]
fn info_says_generation_and_openapi_documents_exactly_the_generation_routes() {
    let (status, body) = get("/info");
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(info["kind"], "generation");
    assert_eq!(info["model_type"], "generation");
    assert_eq!(info["scheduler"], "running");
    assert_eq!(info["chat_template"], true);
    assert_eq!(info["family"], "llama");

    let (status, body) = get("/openapi.json");
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/",
            "/decode",
            "/generate",
            "/generate_stream",
            "/health",
            "/info",
            "/metrics",
            "/model",
            "/ready",
            "/tokenize",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/models",
            "/v1/models/{id}",
        ]
    );
    // `kind` is a property of /info's schema, beside the flattened provenance.
    let parts = doc["components"]["schemas"]["GenerationInfo"]["allOf"]
        .as_array()
        .expect("GenerationInfo is its own properties and BundleInfo's");
    assert!(
        parts
            .iter()
            .any(|p| p["properties"]["kind"]["$ref"] == "#/components/schemas/GenerationKind"),
        "{parts:?}"
    );
    assert_eq!(
        doc["components"]["schemas"]["GenerationKind"]["enum"],
        json!(["generation"])
    );
    assert_eq!(
        doc["paths"]["/v1/models/{id}"]["get"]["parameters"][0]["schema"]["enum"],
        json!(["HuggingFaceTB/SmolLM2-135M-Instruct"])
    );
    assert_eq!(
        info["cpu_kernels"],
        json!(sealserve::model::llama::quant::cpu_kernels().to_string()),
        "{info:#}"
    );
    // Refused parameters admit only their no-op values, so schemathesis's valid bodies are
    // bodies the server accepts; top_logprobs only with logprobs: true.
    let schema = |name: &str, property: &str| -> Value {
        let s = &doc["components"]["schemas"][name];
        s.pointer(&format!("/properties/{property}"))
            .cloned()
            .or_else(|| {
                s["allOf"]
                    .as_array()?
                    .iter()
                    .find_map(|p| p.pointer(&format!("/properties/{property}")).cloned())
            })
            .unwrap_or(Value::Null)
    };
    assert_eq!(schema("ChatBody", "tools")["maxItems"], 0);
    assert_eq!(
        schema("ChatBody", "tool_choice")["enum"],
        json!(["none", "auto", null])
    );
    assert_eq!(
        doc["components"]["schemas"]["CompletionBody"]["then"]["properties"]["logprobs"]["type"],
        "null"
    );
    assert_eq!(
        schema("Common", "logit_bias")["additionalProperties"]["maximum"],
        100
    );
    // SmolLM2's tokenizer has no token for some control characters (the reference
    // tokenizers library drops "\u{6}" too): a prompt of only those is refused, and the
    // document asks for another character.
    let pattern = schema("TgiRequest", "inputs")["pattern"].clone();
    assert!(
        pattern.as_str().is_some_and(|p| p.contains("\\u0006")),
        "{pattern}"
    );
    let (status, body) = post(
        "/generate",
        &json!({"inputs": "\u{6}\u{6}", "parameters": {"max_new_tokens": 1}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("empty"), "{body}");
    assert_eq!(schema("ChatBody", "top_logprobs")["maximum"], 20);
    assert_eq!(
        doc["components"]["schemas"]["ChatBody"]["then"]["properties"]["logprobs"]["const"],
        true
    );

    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("sealserve_requests_total"), "{metrics}");
}

#[test]
fn huggingface_hub_client_chats_and_generates_text() {
    println!("{}", common::run_client("hf_generate.py", server()));
}

#[test]
fn tokenize_gives_the_golden_prompt_ids_and_decode_gives_the_text_back() {
    let golden = golden();
    let chat = golden
        .results
        .iter()
        .find(|r| r.name == "chat_template")
        .expect("golden chat prompt");
    let (status, body) = post("/tokenize", &json!({"inputs": chat.prompt}));
    assert_eq!(status, 200, "{body}");
    let tokens: Value = serde_json::from_str(&body).expect("JSON");
    let tokens = tokens[0].as_array().expect("one input's tokens");
    let ids: Vec<u32> = tokens
        .iter()
        .map(|t| t["id"].as_u64().expect("id") as u32)
        .collect();
    assert_eq!(ids, chat.prompt_ids, "the reference tokenizer's ids");
    // Spans tile the input; control tokens are flagged and show their own text.
    let mut at = 0;
    for token in tokens {
        let (start, stop) = (
            token["start"].as_u64().unwrap() as usize,
            token["stop"].as_u64().unwrap() as usize,
        );
        assert_eq!(start, at, "{token}");
        assert_eq!(token["text"], chat.prompt[start..stop], "{token}");
        let control = ["<|im_start|>", "<|im_end|>"].contains(&&chat.prompt[start..stop]);
        assert_eq!(token["special"], control, "{token}");
        at = stop;
    }
    assert_eq!(at, chat.prompt.len());

    // A batch: llama.cpp's ids for each text of the tokenizer agreement set.
    let agreement = &golden.llama_cpp_gguf.tokenizer_agreement;
    let texts: Vec<&str> = agreement.iter().map(|a| a.text.as_str()).collect();
    let (status, body) = post(
        "/tokenize",
        &json!({"inputs": texts, "add_special_tokens": true}),
    );
    assert_eq!(status, 200, "{body}");
    let batch: Vec<Vec<Value>> = serde_json::from_str(&body).expect("JSON");
    assert_eq!(batch.len(), agreement.len());
    for (tokens, reference) in batch.iter().zip(agreement) {
        let ids: Vec<u32> = tokens
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, reference.llama_cpp_ids, "{:?}", reference.text);
    }

    // /decode: the ids give the text back, with or without the control tokens.
    let (status, body) = post(
        "/decode",
        &json!({"ids": [chat.prompt_ids.clone(), agreement[0].llama_cpp_ids.clone()], "skip_special_tokens": false}),
    );
    assert_eq!(status, 200, "{body}");
    let texts: Vec<String> = serde_json::from_str(&body).expect("JSON");
    assert_eq!(texts, [chat.prompt.as_str(), agreement[0].text.as_str()]);
    let (status, body) = post("/decode", &json!({"ids": chat.prompt_ids}));
    assert_eq!(status, 200, "{body}");
    let texts: Vec<String> = serde_json::from_str(&body).expect("JSON");
    let without = chat
        .prompt
        .replace("<|im_start|>", "")
        .replace("<|im_end|>", "");
    assert_eq!(texts, [without]);

    // Limits and refusals in TEI's error shape.
    let long = "word ".repeat(5000);
    let (status, body) = post("/tokenize", &json!({"inputs": long}));
    assert_eq!(status, 200, "{body}");
    let cut: Vec<Vec<Value>> = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        cut[0].len(),
        GeneratorConfig::default().max_context,
        "cut to the context"
    );
    for (request, kind) in [
        (json!({"inputs": long, "truncate": false}), "validation"),
        (
            json!({"inputs": "hi", "prompt_name": "query"}),
            "validation",
        ),
        (json!({"inputs": []}), "validation"),
        (json!({"inputs": vec!["x"; 65]}), "validation"),
        (json!({"ids": vec![vec![1]; 65]}), "validation"),
    ] {
        let path = if request.get("ids").is_some() {
            "/decode"
        } else {
            "/tokenize"
        };
        let (status, body) = post(path, &request);
        assert_eq!(status, 422, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["error_type"], kind, "{body}");
    }
}

#[test]
fn schemathesis_finds_no_failure_on_the_generation_document() {
    println!(
        "{}",
        generate_support::schemathesis(server(), common::clients::run_python)
    );
}
