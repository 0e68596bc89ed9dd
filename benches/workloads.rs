//! The four forward workloads (b1×16, b32×128, b256×32, b64×256 tokens, CPU f32) without
//! criterion, for machine-readable results and for the interleaved comparison with
//! sentence-transformers that scripts/bench-vs-python drives.
//!
//! Why a second bench and not a mode of `serve`: the production binary must not carry bench
//! switches, and the comparison needs the engine alone (ids in, pooled vectors out), like
//! `SentenceTransformer.forward` on the Python side.
//!
//! Modes (cargo appends `--bench` under `cargo bench`):
//! - `cargo bench --bench workloads` prints a table of medians; `-- --json` prints one JSON object.
//!   `--iters N` overrides the per-workload iteration counts, `--max-forward-tokens N` the
//!   engine's padded-token budget per forward (to try other forward sizes).
//! - `-- --emit PATH` writes the workloads (texts and ids) as JSON for the Python side.
//! - `-- --serve` answers lines on stdin, so another process can interleave rounds with a model
//!   that stays loaded: `embed NAME ITERS` (ids → vectors) or `e2e NAME ITERS` (texts →
//!   tokenize → vectors) → one JSON line `{"name", "mode", "times_ms": [...]}`; `quit` ends.
//! - Without `--bench` (`cargo test --benches`) it only checks that everything runs, once.

#[path = "support/workloads.rs"]
mod workloads;

use sealserve::engine::LoadedModel;
use serde_json::json;
use std::io::{BufRead, Write};
use std::time::Instant;
use workloads::Workload;

struct Args {
    bench: bool,
    json: bool,
    serve: bool,
    emit: Option<String>,
    iters: Option<usize>,
    max_forward_tokens: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        bench: false,
        json: false,
        serve: false,
        emit: None,
        iters: None,
        max_forward_tokens: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |flag: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--bench" => args.bench = true,
            "--json" => args.json = true,
            "--serve" => args.serve = true,
            "--iters" => args.iters = Some(number("--iters")),
            "--max-forward-tokens" => {
                args.max_forward_tokens = Some(number("--max-forward-tokens"))
            }
            "--emit" => args.emit = Some(it.next().expect("--emit needs a path")),
            // libtest-style filters and flags that cargo may pass along: ignored.
            _ => {}
        }
    }
    args
}

/// Default iterations: enough for a stable median in roughly 10 s per workload on two cores.
fn default_iters(workload: &Workload) -> usize {
    match workload.batch * workload.tokens {
        0..=256 => 100,
        257..=4096 => 10,
        _ => 5,
    }
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

/// Milliseconds for each of `iters` calls of `run`.
fn time_ms(iters: usize, mut run: impl FnMut()) -> Vec<f64> {
    (0..iters)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn embed_ids(model: &LoadedModel, workload: &Workload) {
    let vectors = model.embedder.embed(&workload.ids).expect("embed");
    assert_eq!(vectors.len(), workload.batch);
}

fn embed_texts(model: &LoadedModel, workload: &Workload) {
    let texts: Vec<&str> = workload.texts.iter().map(String::as_str).collect();
    let ids: Vec<Vec<u32>> = model
        .tokenizer
        .encode(&texts, true)
        .expect("tokenize")
        .into_iter()
        .map(|e| e.ids)
        .collect();
    let vectors = model.embedder.embed(&ids).expect("embed");
    assert_eq!(vectors.len(), workload.batch);
}

fn main() {
    let args = parse_args();
    let bytes = workloads::bundle_bytes();
    let started = Instant::now();
    let verified = workloads::verify(bytes);
    let model = workloads::load(&verified, args.max_forward_tokens);
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let all = workloads::build_all(&model.tokenizer);

    if let Some(path) = &args.emit {
        let value = json!({
            "model": verified.metadata.model_id,
            "workloads": all.iter().map(|w| json!({
                "name": w.name, "batch": w.batch, "tokens": w.tokens,
                "texts": w.texts, "ids": w.ids,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_vec(&value).expect("json")).expect("write workloads");
        return;
    }
    if args.serve {
        serve(&model, &all, load_ms);
        return;
    }
    if !args.bench {
        // `cargo test --benches`: prove the bench works without spending minutes on it.
        embed_ids(&model, &all[0]);
        embed_texts(&model, &all[0]);
        println!("workloads: smoke run ok ({} workloads built)", all.len());
        return;
    }

    let mut results = Vec::new();
    for workload in &all {
        embed_ids(&model, workload); // warm-up: first-touch of activations, thread pool
        let iters = args.iters.unwrap_or_else(|| default_iters(workload));
        let mut times = time_ms(iters, || embed_ids(&model, workload));
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut times);
        let tokens = (workload.batch * workload.tokens) as f64;
        results.push(json!({
            "name": workload.name, "batch": workload.batch, "tokens": workload.tokens,
            "iters": iters, "median_ms": med, "min_ms": min,
            "tokens_per_s": tokens / (med / 1000.0),
            "sequences_per_s": workload.batch as f64 / (med / 1000.0),
        }));
        if !args.json {
            println!(
                "{:>9}  median {:>9.2} ms  min {:>9.2} ms  {:>8.0} tokens/s  ({iters} iters)",
                workload.name,
                med,
                min,
                tokens / (med / 1000.0)
            );
        }
    }
    if args.json {
        let out = json!({
            "implementation": "sealserve",
            "device": "cpu", "dtype": "f32",
            "compute_threads": rayon::current_num_threads(),
            "max_forward_tokens": model.info.max_forward_tokens,
            "load_ms": load_ms,
            "workloads": results,
        });
        println!("{out}");
    }
}

/// Line protocol for scripts/bench_vs_python.py (see the module docs).
fn serve(model: &LoadedModel, all: &[Workload], load_ms: f64) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let hello = json!({
        "ready": true, "load_ms": load_ms,
        "compute_threads": rayon::current_num_threads(),
        "max_forward_tokens": model.info.max_forward_tokens,
    });
    writeln!(out, "{hello}")
        .and_then(|_| out.flush())
        .expect("stdout");
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["quit"] | [] => break,
            [mode @ ("embed" | "e2e"), name, iters] => {
                match (all.iter().find(|w| w.name == *name), iters.parse::<usize>()) {
                    (Some(workload), Ok(iters)) => {
                        let times = if *mode == "embed" {
                            time_ms(iters, || embed_ids(model, workload))
                        } else {
                            time_ms(iters, || embed_texts(model, workload))
                        };
                        json!({"name": name, "mode": mode, "times_ms": times})
                    }
                    _ => json!({"error": format!("unknown workload or count: {line}")}),
                }
            }
            _ => json!({"error": format!("unknown command: {line}")}),
        };
        writeln!(out, "{reply}")
            .and_then(|_| out.flush())
            .expect("stdout");
    }
}
