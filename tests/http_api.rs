//! End to end: the real `serve` binary (real MiniLM, default `--harden strict`) on 127.0.0.1.

mod common;

use base64::Engine as _;
use common::server::Server;
use common::{golden, max_abs_diff};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const TOLERANCE: f32 = 1e-4;

/// A timeout only to turn a hang into a failure: heavy requests (the 429 and SIGTERM tests) share
/// 2 cores with the other tests in this binary and can take minutes on a loaded machine.
fn client() -> reqwest::Client {
    // reqwest's TLS is rustls without a built-in provider (src/remote/tls.rs): install ring's.
    sealserve::remote::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client")
}

fn texts() -> Vec<String> {
    golden().inputs.iter().map(|i| i.text.clone()).collect()
}

fn vectors(value: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(value.clone()).expect("array of float arrays")
}

fn assert_golden(got: &[Vec<f32>], what: &str) {
    assert_eq!(
        got.len(),
        golden().inputs.len(),
        "{what}: one vector per input"
    );
    for (vector, input) in got.iter().zip(&golden().inputs) {
        let diff = max_abs_diff(vector, &input.embedding);
        assert!(
            diff <= TOLERANCE,
            "{what}: input {} differs from reference by {diff}",
            input.index
        );
    }
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("JSON body")
}

async fn get_text(client: &reqwest::Client, url: String) -> String {
    client
        .get(url)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text body")
}

async fn post(
    client: &reqwest::Client,
    url: String,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = client.post(url).json(&body).send().await.expect("send");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_with_reference_values() {
    let server = Server::start(&[], &[]);
    let client = client();

    let (status, headers, body) =
        post(&client, server.url("/embed"), json!({"inputs": texts()})).await;
    assert_eq!(status, 200, "{body}");
    assert_golden(&vectors(&body), "/embed");
    for header in [
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
        "x-tokenization-time",
    ] {
        let value: f64 = headers[header]
            .to_str()
            .unwrap()
            .parse()
            .expect("milliseconds");
        assert!(value >= 0.0, "{header}");
    }

    let (status, _, body) = post(
        &client,
        server.url("/embed"),
        json!({"inputs": "Hello world"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(max_abs_diff(&vectors(&body)[0], &golden().inputs[0].embedding) <= TOLERANCE);

    let (status, _, body) = post(
        &client,
        server.url("/v1/embeddings"),
        json!({"input": texts(), "model": "minilm"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    let expected_tokens: usize = golden().inputs.iter().map(|i| i.num_tokens).sum();
    assert_eq!(body["usage"]["prompt_tokens"], expected_tokens);
    assert_eq!(body["usage"]["total_tokens"], expected_tokens);
    let data = body["data"].as_array().expect("data");
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
    }
    assert_golden(
        &data
            .iter()
            .map(|d| vectors(&json!([d["embedding"]]))[0].clone())
            .collect::<Vec<_>>(),
        "/v1/embeddings",
    );

    let (status, _, body) = post(
        &client,
        server.url("/v1/embeddings"),
        json!({"input": texts(), "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200);
    let decoded: Vec<Vec<f32>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d["embedding"].as_str().unwrap())
                .unwrap();
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect();
    assert_golden(&decoded, "/v1/embeddings base64");

    let (status, _, body) = post(
        &client,
        server.url("/model"),
        json!({"accessKey": "ignored-without-api-key", "request": {"inputs": texts()}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_golden(&vectors(&body["response"]["embeddings"]), "/model");

    let (status, _, body) =
        post(&client, server.url("/tokenize"), json!({"inputs": texts()})).await;
    assert_eq!(status, 200);
    for (tokens, input) in body.as_array().unwrap().iter().zip(&golden().inputs) {
        let ids: Vec<u32> = tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            ids, input.input_ids,
            "/tokenize ids for input {}",
            input.index
        );
        let words: Vec<&str> = tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            words,
            input.tokens.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(tokens[0]["special"], true);
    }

    let with_raw: Vec<_> = golden().inputs.iter().filter(|i| i.raw.is_some()).collect();
    let raw_texts: Vec<&str> = with_raw.iter().map(|i| i.text.as_str()).collect();
    let (_, _, body) = post(
        &client,
        server.url("/embed"),
        json!({"inputs": raw_texts, "normalize": false}),
    )
    .await;
    for (vector, input) in vectors(&body).iter().zip(&with_raw) {
        let expected = &input.raw.as_ref().unwrap().mean_pooled_unnormalized;
        assert!(
            max_abs_diff(vector, expected) <= TOLERANCE,
            "normalize=false input {}",
            input.index
        );
    }

    let (_, _, body) = post(
        &client,
        server.url("/embed"),
        json!({"inputs": texts(), "dimensions": 128}),
    )
    .await;
    for (vector, input) in vectors(&body).iter().zip(&golden().inputs) {
        assert_eq!(vector.len(), 128);
        let mut expected = input.embedding[..128].to_vec();
        sealserve::engine::pooling::l2_normalize(&mut expected);
        assert!(
            max_abs_diff(vector, &expected) <= TOLERANCE,
            "dimensions=128 input {}",
            input.index
        );
    }

    for path in ["/health", "/ready"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let info: Value = get_json(&client, server.url("/info")).await;
    assert_eq!(info["model_id"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(info["revision"], "c9745ed1d9f207416be6d2e6f8de32d1f16199bf");
    assert_eq!(info["manifest_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(info["key_fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(info["signature"], "dev-signed");
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["dtype"], "f32");
    assert_eq!(info["dimensions"], 384);
    assert_eq!(info["max_input_tokens"], 256);
    assert_eq!(info["limits"]["max_client_batch_size"], 64);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["hardening"]["level"], "strict");
    assert_eq!(
        info["hardening"]["seccomp_mode"], 2,
        "strict hardening reports seccomp filter mode"
    );
    assert_eq!(info["hardening"]["dumpable"], false);

    let metrics = get_text(&client, server.url("/metrics")).await;
    for name in [
        "sealserve_requests_total",
        "sealserve_batch_size_bucket",
        "sealserve_inference_seconds_bucket",
        "sealserve_tokenization_seconds_bucket",
        "sealserve_queue_depth",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    let openapi: Value = get_json(&client, server.url("/openapi.json")).await;
    for path in [
        "/embed",
        "/v1/embeddings",
        "/model",
        "/tokenize",
        "/health",
        "/ready",
        "/info",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi lacks {path}");
    }
}

/// (route, body, status, family check). `Body::Raw` sends bytes as they are.
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_documented_json_errors_and_the_server_keeps_answering() {
    let server = Server::start(&[], &[]);
    let client = client();
    let too_many: Vec<String> = (0..65).map(|i| format!("text {i}")).collect();
    let long = "word ".repeat(600);
    let cases: Vec<(&str, Body, u16, &str)> = vec![
        ("/embed", Body::Raw(b"not json".to_vec()), 422, "validation"),
        ("/embed", Body::Raw(Vec::new()), 422, "validation"),
        (
            "/embed",
            Body::Raw(vec![0xff, 0xfe, 0x00]),
            422,
            "validation",
        ),
        ("/embed", Body::Json(json!({})), 422, "validation"),
        (
            "/embed",
            Body::Json(json!({"inputs": 3})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": []})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": [1, 2]})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": "x", "normalize": "yes"})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": "x", "dimensions": 0})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": "x", "dimensions": 385})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": "x", "dimensions": -1})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": long, "truncate": false})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Json(json!({"inputs": too_many})),
            422,
            "validation",
        ),
        (
            "/embed",
            Body::Raw(vec![b' '; 3 * 1024 * 1024]),
            413,
            "payload_too_large",
        ),
        (
            "/tokenize",
            Body::Json(json!({"inputs": 5})),
            422,
            "validation",
        ),
        (
            "/tokenize",
            Body::Json(json!({"inputs": long, "truncate": false})),
            422,
            "validation",
        ),
        (
            "/v1/embeddings",
            Body::Json(json!({"input": [[1, 2, 3]]})),
            422,
            "openai",
        ),
        (
            "/v1/embeddings",
            Body::Json(json!({"input": "x", "encoding_format": "bogus"})),
            422,
            "openai",
        ),
        (
            "/v1/embeddings",
            Body::Json(json!({"inputs": "wrong field name"})),
            422,
            "openai",
        ),
        (
            "/v1/embeddings",
            Body::Raw(vec![b' '; 3 * 1024 * 1024]),
            413,
            "openai",
        ),
        ("/model", Body::Json(json!({"request": {}})), 422, "cml"),
        (
            "/model",
            Body::Json(json!({"inputs": "no request envelope"})),
            422,
            "cml",
        ),
    ];
    for (route, body, status, family) in cases {
        let request = client
            .post(server.url(route))
            .header("content-type", "application/json");
        let request = match &body {
            Body::Json(value) => request.json(value),
            Body::Raw(bytes) => request.body(bytes.clone()),
        };
        let response = request.send().await.expect("send");
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        let error: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{route} {status}: body is not JSON: {text:.200}"));
        assert_eq!(got, status, "{route}: {text:.300}");
        match family {
            "openai" => {
                assert!(
                    error["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{error}"
                );
                assert_eq!(error["error"]["type"], "invalid_request_error");
            }
            "cml" => {
                assert_eq!(error["success"], false);
                assert!(error["error"].as_str().is_some_and(|m| !m.is_empty()));
            }
            tei_type => {
                assert_eq!(error["error_type"], tei_type, "{route}: {error}");
                assert!(error["error"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
        let health = client
            .get(server.url("/health"))
            .send()
            .await
            .expect("server still answers");
        assert_eq!(health.status(), 200);
    }
    for (method, path, status) in [
        ("GET", "/embed", 405),
        ("GET", "/nope", 404),
        ("DELETE", "/v1/embeddings", 405),
    ] {
        let response = client
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let _: Value = response.json().await.expect("JSON error body");
    }
    let (status, _, body) = post(
        &client,
        server.url("/embed"),
        json!({"inputs": "still fine"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_clients_get_single_request_answers_and_share_batches() {
    let server = Server::start(&[], &[]);
    let client = client();
    let texts = texts();
    let mut singles = Vec::new();
    for text in &texts {
        let (_, _, body) = post(&client, server.url("/embed"), json!({"inputs": text})).await;
        singles.push(vectors(&body).remove(0));
    }
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            let url = server.url("/embed");
            let text = texts[i % texts.len()].clone();
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&json!({"inputs": text}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.expect("json");
                (i, vectors(&body).remove(0))
            })
        })
        .collect();
    for task in tasks {
        let (i, vector) = task.await.expect("client task");
        let diff = max_abs_diff(&vector, &singles[i % texts.len()]);
        assert!(
            diff <= 1e-5,
            "client {i}: concurrent answer differs from single answer by {diff}"
        );
    }
    let metrics = get_text(&client, server.url("/metrics")).await;
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in /metrics"))
    };
    let batches = value("sealserve_batch_size_count");
    let inputs = value("sealserve_batch_size_sum");
    let single_batches = value("sealserve_batch_size_bucket{le=\"1\"}");
    assert!(
        single_batches < batches,
        "some batches held more than one input ({single_batches} of {batches} had one)"
    );
    assert!(inputs > batches, "{inputs} inputs in {batches} batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_concurrency_limit_get_429_at_once() {
    let server = Server::start(&["--max-concurrent-requests", "1"], &[]);
    let client = client();
    let heavy: Vec<String> = (0..64)
        .map(|i| {
            format!(
                "{i} {}",
                "long sentence to keep the engine busy ".repeat(20)
            )
        })
        .collect();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let url = server.url("/embed");
            let body = json!({"inputs": heavy});
            tokio::spawn(async move {
                let response = client.post(url).json(&body).send().await.expect("send");
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").is_some();
                let body: Value = response.json().await.expect("json");
                (status, retry_after, body)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, retry_after, body) = task.await.unwrap();
        if status == 429 {
            assert_eq!(body["error_type"], "overloaded");
            assert!(retry_after, "429 carries retry-after");
        } else {
            assert_eq!(status, 200, "{body}");
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&429),
        "with one slot and 16 concurrent heavy requests some must be refused: {statuses:?}"
    );
    assert!(statuses.contains(&200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_key_is_required_except_on_health_and_ready() {
    let server = Server::start(&["--api-key", "s3cret"], &[]);
    let client = client();
    let body = json!({"inputs": "hello"});
    let send = |path: &str, body: Value, token: Option<&str>| {
        let request = client.post(server.url(path)).json(&body);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.expect("send") }
    };
    let unauthorized = send("/embed", body.clone(), None).await;
    assert_eq!(unauthorized.status(), 401);
    let error: Value = unauthorized.json().await.unwrap();
    assert_eq!(error["error_type"], "unauthorized");
    assert_eq!(
        send("/embed", body.clone(), Some("s3cres")).await.status(),
        401
    );
    assert_eq!(
        send("/embed", body.clone(), Some("s3cret")).await.status(),
        200
    );
    let openai = send("/v1/embeddings", json!({"input": "x"}), None).await;
    assert_eq!(openai.status(), 401);
    let error: Value = openai.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    for (path, status) in [
        ("/metrics", 401),
        ("/info", 401),
        ("/openapi.json", 401),
        ("/health", 200),
        ("/ready", 200),
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let cml = send(
        "/model",
        json!({"accessKey": "s3cret", "request": {"inputs": "x"}}),
        None,
    )
    .await;
    assert_eq!(cml.status(), 200, "CML accessKey in the body is accepted");
    let cml_bad = send(
        "/model",
        json!({"accessKey": "nope", "request": {"inputs": "x"}}),
        None,
    )
    .await;
    assert_eq!(cml_bad.status(), 401);

    let open = Server::start(&[], &[]);
    assert_eq!(
        client
            .post(open.url("/embed"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "no key configured: open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    // A grace far above what the requests need: on a loaded 2-core machine the 128 inputs can
    // take longer than the default 30 s, and this test is about draining, not about the limit.
    let mut server = Server::start(&["--shutdown-grace", "600"], &[]);
    let client = client();
    let heavy: Vec<String> = (0..32)
        .map(|i| format!("{i} {}", "a sentence that takes a while ".repeat(12)))
        .collect();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = server.url("/embed");
            let body = json!({"inputs": heavy});
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    // Wait until the server itself counts the four requests (plus this probe) as in flight.
    let mut in_flight = 0.0;
    for _ in 0..400 {
        let metrics = get_text(&client, server.url("/metrics")).await;
        in_flight = metrics
            .lines()
            .find(|l| l.starts_with("sealserve_requests_in_flight "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if in_flight >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        in_flight >= 5.0,
        "requests never got in flight ({in_flight})"
    );
    server.terminate();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().expect("in-flight request completed"),
            200
        );
    }
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdsw_app_port_binds_loopback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(&[], &[("CDSW_APP_PORT", &port.to_string())]);
    assert_eq!(server.port, port);
    let bound = server
        .drain_logs()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|e| e["message"] == "bound")
        .expect("bound log line");
    assert_eq!(bound["address"], format!("127.0.0.1:{port}"));
    assert!(bound["rule"].as_str().unwrap().contains("CDSW_APP_PORT"));
    let health = client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Text logs carry no ANSI colour codes when stderr is not a terminal (`kubectl logs`, CML).
#[test]
fn text_logs_are_plain_when_stderr_is_not_a_terminal() {
    use std::io::{BufRead, BufReader};
    let mut child = common::server::serve_command()
        .args(["--log-format", "text", "--host", "127.0.0.1", "--port", "0"])
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let ready = line.contains(" ready ");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains(" ready ")),
        "serve never logged ready:\n{}",
        lines.join("\n")
    );
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "ANSI escapes in piped logs: {coloured:?}"
    );
}
