//! Generation throughput on the pinned SmolLM2 Q4_1 GGUF, measured the same way as
//! scripts/bench_llama_cpp.py measures llama.cpp (scripts/bench-generate runs both):
//! - model level: prefill each stream's prompt in one step, then decode all streams together
//!   one token per step (greedy) — prefill tok/s, decode tok/s, time to first token;
//! - engine level: the same streams submitted at once to the `Generator` (scheduler thread,
//!   sampling, streaming): aggregate generated tok/s end to end (every stream's prefill
//!   included), and the decode rate while every stream is decoding (tokens all streams received
//!   between the last first token and the first last token).
//!
//! `cargo bench --bench generate` (threads: RAYON_NUM_THREADS). Env: BENCH_PROMPT_TOKENS (128),
//! BENCH_DECODE_TOKENS (64), BENCH_STREAMS (8), BENCH_LEVELS (`model,engine`: which levels to
//! run, so a profiler can record one of them alone), BENCH_ONLY_STREAMS (set: BENCH_STREAMS
//! alone, without the one-stream run), BENCH_ROUNDS (1: rounds alternating the stream counts,
//! then median lines). Prints one JSON object per measurement.

#[path = "../tests/generate_support/mod.rs"]
mod generate_support;

use sealserve::generate::{GenerateRequest, Generator, GeneratorConfig, Prompt};
use sealserve::model::llama::{Scratch, SeqInput};
use std::time::Instant;

const TEXT: &str = "The history of the city is long and complicated. ";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn argmax(xs: &[f32]) -> u32 {
    sealserve::generate::sampling::argmax(xs)
}

fn model_level(prompt: &[u32], decode: usize, streams: usize) -> serde_json::Value {
    let model = &generate_support::text_model().model;
    let mut scratch = Scratch::default();
    let mut caches: Vec<_> = (0..streams).map(|_| model.new_cache()).collect();
    let start = Instant::now();
    let mut ttft = 0.0;
    let mut next = Vec::new();
    for (s, cache) in caches.iter_mut().enumerate() {
        let logits = model
            .forward(
                &mut [SeqInput {
                    cache,
                    tokens: prompt,
                    logits: true,
                }],
                &mut scratch,
            )
            .expect("prefill");
        next.push(argmax(logits.row(0)));
        if s == 0 {
            ttft = start.elapsed().as_secs_f64();
        }
    }
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..decode - 1 {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut inputs: Vec<SeqInput<'_>> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, t)| SeqInput {
                cache,
                tokens: t,
                logits: true,
            })
            .collect();
        let logits = model.forward(&mut inputs, &mut scratch).expect("decode");
        next = logits.rows().map(argmax).collect();
    }
    let decode_s = start.elapsed().as_secs_f64();
    serde_json::json!({
        "engine": "sealserve (model level)",
        "threads": rayon::current_num_threads(),
        "streams": streams,
        "prompt_tokens": prompt.len(),
        "decode_tokens": decode,
        "prefill_tok_s": (streams * prompt.len()) as f64 / prefill,
        "decode_tok_s": (streams * (decode - 1)) as f64 / decode_s,
        "ttft_s": ttft,
    })
}

fn engine_level(prompt: &[u32], decode: usize, streams: usize) -> serde_json::Value {
    let generator = Generator::start(
        generate_support::text_model(),
        GeneratorConfig {
            max_batch: streams,
            prefill_chunk: 512,
            max_step_tokens: 512 + streams,
            ..GeneratorConfig::default()
        },
    )
    .expect("generator");
    let request = GenerateRequest {
        max_tokens: Some(decode),
        ignore_eos: true,
        ..GenerateRequest::new(Prompt::Tokens(prompt.to_vec()))
    };
    let start = Instant::now();
    let receivers: Vec<_> = (0..streams)
        .map(|_| generator.submit(request.clone()).expect("submit"))
        .collect();
    // One thread per stream, so that every token is timed when it arrives (read one after
    // another, later streams' tokens would wait in their channels).
    let arrivals: Vec<(Vec<Instant>, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = receivers
            .into_iter()
            .map(|mut rx| {
                scope.spawn(move || {
                    let mut times = Vec::new();
                    while let Some(event) = rx.blocking_recv() {
                        match event {
                            sealserve::generate::Event::Token { .. } => times.push(Instant::now()),
                            sealserve::generate::Event::Done(done) => {
                                return (times, done.time_to_first_token)
                            }
                            sealserve::generate::Event::Error(e) => panic!("generation: {e}"),
                        }
                    }
                    panic!("stream ended without Done")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stream thread"))
            .collect()
    });
    let ttfts: Vec<f64> = arrivals.iter().map(|(_, t)| *t).collect();
    let tokens: usize = arrivals.iter().map(|(t, _)| t.len()).sum();
    // Steady decode through the scheduler: from the moment every stream has its first token to
    // the moment the first stream has its last, the tokens all streams received in between.
    let all_started = arrivals.iter().filter_map(|(t, _)| t.first()).max();
    let first_done = arrivals.iter().filter_map(|(t, _)| t.last()).min();
    let decode_tok_s = match (all_started, first_done) {
        (Some(&from), Some(&to)) if to > from => {
            let n = arrivals
                .iter()
                .flat_map(|(t, _)| t)
                .filter(|&&t| t > from && t <= to)
                .count();
            Some(n as f64 / (to - from).as_secs_f64())
        }
        _ => None,
    };
    let total = start.elapsed().as_secs_f64();
    serde_json::json!({
        "engine": "sealserve (Generator, end to end)",
        "threads": rayon::current_num_threads(),
        "streams": streams,
        "prompt_tokens": prompt.len(),
        "decode_tokens": decode,
        "generated_tok_s": tokens as f64 / total,
        "decode_tok_s": decode_tok_s,
        "mean_ttft_s": ttfts.iter().sum::<f64>() / ttfts.len() as f64,
        "max_occupancy": generator.stats().max_occupancy,
    })
}

fn main() {
    let prompt_tokens = env("BENCH_PROMPT_TOKENS", 128);
    let decode = env("BENCH_DECODE_TOKENS", 64).max(2);
    let streams = env("BENCH_STREAMS", 8);
    let tm = generate_support::text_model();
    let mut prompt = tm
        .tokenizer
        .encode(&TEXT.repeat(64), false)
        .expect("tokenize");
    prompt.truncate(prompt_tokens);
    // Warm-up (page faults, thread pool).
    model_level(&prompt[..16], 4, 1);
    let levels = std::env::var("BENCH_LEVELS").unwrap_or_else(|_| "model,engine".into());
    let rounds = env("BENCH_ROUNDS", 1).max(1);
    // BENCH_ONLY_STREAMS: measure BENCH_STREAMS alone (no one-stream run), so that a profile of
    // many-stream decode is not half one-stream decode.
    let counts = if streams == 1 || std::env::var_os("BENCH_ONLY_STREAMS").is_some() {
        vec![streams]
    } else {
        vec![1, streams]
    };
    // Rounds alternate the stream counts (1, 8, 1, 8, …) so that both see the same machine: on a
    // shared VM memory bandwidth drifts by 2× within minutes, and the figure that matters is the
    // ratio of the two. Each round prints its own lines; with more than one round a summary line
    // per (level, streams) gives the medians.
    let mut runs: Vec<serde_json::Value> = Vec::new();
    for round in 0..rounds {
        for level in levels.split(',') {
            for &s in &counts {
                let mut result = match level.trim() {
                    "model" => model_level(&prompt, decode, s),
                    "engine" => engine_level(&prompt, decode, s),
                    other => panic!("BENCH_LEVELS: unknown level {other:?} (model, engine)"),
                };
                result["round"] = round.into();
                result["level"] = level.trim().into();
                println!("{result}");
                runs.push(result);
            }
        }
    }
    if rounds > 1 {
        for level in levels.split(',') {
            for &s in &counts {
                let of = |key: &str| -> Vec<f64> {
                    let mut v: Vec<f64> = runs
                        .iter()
                        .filter(|r| r["streams"] == s && r["level"] == level.trim())
                        .filter_map(|r| r[key].as_f64())
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v
                };
                let median = |v: Vec<f64>| v.get(v.len() / 2).copied();
                let key = if level.trim() == "model" {
                    "decode_tok_s"
                } else {
                    "generated_tok_s"
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "summary": level.trim(),
                        "streams": s,
                        "rounds": rounds,
                        "median_tok_s": median(of(key)),
                        "all_tok_s": of(key),
                        "median_decode_tok_s": median(of("decode_tok_s")),
                        "median_prefill_tok_s": median(of("prefill_tok_s")),
                        "median_ttft_s": median(of("ttft_s")).or(median(of("mean_ttft_s"))),
                    })
                );
            }
        }
    }
}
