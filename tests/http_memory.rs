//! Bounded memory (issue 12, "memory amplification"): over-long text is cut before it is
//! tokenized (with the same tokens as tokenizing all of it), `/tokenize` is admitted like
//! `/embed`, and 16 concurrent requests at the payload limit keep the server's peak RSS under
//! 400 MiB and its RSS back near where it was. Before: one 1.9 MB input took RSS 95 → 277 MiB,
//! 16 concurrent 2.3 GiB, 1.75 GiB still held minutes later; `/tokenize` was never refused.

mod common;

use common::server::Server;
use common::{load_cpu, verified_bundle};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// The reference tokenizer: tokenizer.json with the server's settings, run on the whole text.
fn whole_text_tokenizer(max_length: usize) -> tokenizers::Tokenizer {
    let bytes = verified_bundle()
        .file("tokenizer.json")
        .expect("tokenizer.json");
    let mut tokenizer = tokenizers::Tokenizer::from_bytes(bytes).expect("tokenizer");
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            stride: 0,
            direction: tokenizers::TruncationDirection::Right,
        }))
        .expect("truncation");
    tokenizer
}

/// Texts far over the limit, with the cases a cut could get wrong: plain prose, newlines and
/// tabs, runs of spaces, accents and CJK (normalisation), punctuation, words over WordPiece's
/// 100-character limit ([UNK]), mostly whitespace, and no whitespace at all.
fn long_texts() -> Vec<String> {
    let prose = "The quick brown fox jumps over the lazy dog, again and again. ";
    vec![
        prose.repeat(2_000),
        "line one\nline two\t\ttabbed  end.\r\n".repeat(3_000),
        format!("{}{}", "word     ".repeat(500), prose.repeat(500)),
        "Café naïve résumé 東京 北京 übung ÉCOLE ".repeat(2_000),
        "a,b;c:d!e?f(g)h[i]j{k}l \"q\" 'r' ".repeat(2_000),
        format!("{} ", "x".repeat(150)).repeat(1_500),
        format!("{}tail words here", " ".repeat(200_000)),
        "y".repeat(300_000),
        format!("{} {}", "z".repeat(200_000), prose.repeat(100)),
    ]
}

#[test]
fn cut_text_tokenizes_like_the_whole_text() {
    let model = load_cpu("f32");
    let max_length = model.info.max_input_tokens;
    let reference = whole_text_tokenizer(max_length);
    for (i, text) in long_texts().iter().enumerate() {
        let whole = reference.encode(text.as_str(), true).expect("encode");
        let encoded = model
            .tokenizer
            .encode(&[text.as_str()], true)
            .expect("encode");
        assert_eq!(encoded[0].ids, whole.get_ids(), "text {i}: ids");
        assert_eq!(
            encoded[0].truncated,
            !whole.get_overflowing().is_empty(),
            "text {i}: truncation flag"
        );
        let described = model
            .tokenizer
            .describe(&[text.as_str()], true, true)
            .expect("describe");
        let offsets: Vec<(usize, usize)> = described[0].iter().map(|t| (t.start, t.stop)).collect();
        assert_eq!(offsets, whole.get_offsets(), "text {i}: offsets");
        // Refusing without truncation gives the same verdict.
        let refused = model.tokenizer.encode(&[text.as_str()], false).is_err();
        assert_eq!(refused, !whole.get_overflowing().is_empty(), "text {i}");
    }
}

/// Sends one request on its own connection and returns the status.
fn post(port: u16, path: &str, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Fires `count` copies of a request at once; returns their statuses.
fn burst(port: u16, path: &'static str, body: Arc<Vec<u8>>, count: usize) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let barrier = barrier.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                barrier.wait();
                post(port, path, &body)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect()
}

#[test]
fn tokenize_is_admitted_like_embed() {
    let server = Server::start(&["--max-concurrent-requests", "1"], &[]);
    let text = "Some words to tokenize, several hundred bytes of them. ".repeat(8);
    let body = serde_json::to_vec(&serde_json::json!({ "inputs": vec![text; 64] })).expect("json");
    let statuses = burst(server.port, "/tokenize", Arc::new(body), 24);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "24 concurrent /tokenize under --max-concurrent-requests 1 were all admitted: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .expect("field")
}

#[test]
fn sixteen_requests_at_the_payload_limit_stay_under_400_mib() {
    let server = Server::start(&[], &[]);
    let pid = server.serving_pid();
    // Just under the 2 MiB default payload limit: words, as the review's worst case.
    let text = "lorem ipsum dolor sit amet consectetur ".repeat(50_000);
    let body = Arc::new(serde_json::to_vec(&serde_json::json!({ "inputs": text })).expect("json"));
    assert!(body.len() < 2 * 1024 * 1024 && body.len() > 1_900_000);
    // Warm the paths once, then take the baseline.
    assert_eq!(post(server.port, "/embed", &body), 200);
    assert_eq!(post(server.port, "/tokenize", &body), 200);
    std::thread::sleep(Duration::from_secs(1));
    let before = status_kib(pid, "VmRSS:");
    let mut statuses = burst(server.port, "/embed", body.clone(), 16);
    statuses.extend(burst(server.port, "/tokenize", body, 16));
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let peak = status_kib(pid, "VmHWM:");
    assert!(
        peak <= 400 * 1024,
        "peak RSS {} MiB over 400 MiB (before the burst: {} MiB)",
        peak / 1024,
        before / 1024
    );
    std::thread::sleep(Duration::from_secs(10));
    let after = status_kib(pid, "VmRSS:");
    println!(
        "RSS before the burst {} MiB, peak {} MiB, 10 s after {} MiB",
        before / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(
        after as f64 <= before as f64 * 1.2,
        "RSS {} MiB 10 s after the burst, {} MiB before",
        after / 1024,
        before / 1024
    );
}
