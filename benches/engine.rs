//! Engine benchmarks (criterion): start-up (verify + load), tokenization, and CPU f32 forwards for
//! the four reference workloads. `cargo bench --bench engine`; results go to benches/RESULTS.md.
//!
//! Why these: start-up is what `serve` does before it can answer (hash every byte, check the
//! signature, build the tensors); the forwards are the shapes the comparison with
//! sentence-transformers uses (scripts/bench-vs-python), so numbers here line up with that table.
//! The big workloads take seconds per iteration on two cores, so they run with criterion's
//! minimum sample count and flat sampling to keep a default run to a few minutes.

#[path = "support/workloads.rs"]
mod workloads;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::hint::black_box;
use std::time::Duration;

fn startup(c: &mut Criterion) {
    let bytes = workloads::bundle_bytes();
    let mut group = c.benchmark_group("startup");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("verify", |b| {
        b.iter(|| {
            let copies = sealserve::bundle::HeapCopies::default();
            black_box(workloads::verify_into(bytes, &copies).bytes_hashed)
        })
    });
    // Loading borrows the verified copies for 'static, so it is measured from one verification
    // (verifying per iteration would keep every iteration's 90 MB copy alive).
    let verified = workloads::verify(bytes);
    group.bench_function("load", |b| {
        b.iter(|| black_box(workloads::load(&verified, None)))
    });
    group.finish();
}

fn tokenization(c: &mut Criterion) {
    let verified = workloads::verify(workloads::bundle_bytes());
    let model = workloads::load(&verified, None);
    let workload = workloads::build(&model.tokenizer, 32, 128);
    let texts: Vec<&str> = workload.texts.iter().map(String::as_str).collect();
    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("32_sentences_x128", |b| {
        b.iter(|| black_box(model.tokenizer.encode(black_box(&texts), true).unwrap()))
    });
    group.finish();
}

fn forward(c: &mut Criterion) {
    let verified = workloads::verify(workloads::bundle_bytes());
    let model = workloads::load(&verified, None);
    let all = workloads::build_all(&model.tokenizer);
    let mut group = c.benchmark_group("forward_cpu_f32");
    for workload in &all {
        let tokens = (workload.batch * workload.tokens) as u64;
        group.throughput(Throughput::Elements(tokens));
        if tokens >= 4096 {
            // Seconds per iteration: the minimum sample count, one pass each.
            group
                .sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(10));
        } else {
            group
                .sample_size(30)
                .sampling_mode(SamplingMode::Auto)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
        }
        group.bench_with_input(
            BenchmarkId::from_parameter(&workload.name),
            &workload.ids,
            |b, ids| b.iter(|| black_box(model.embedder.embed(ids).unwrap())),
        );
    }
    group.finish();
}

criterion_group!(benches, startup, tokenization, forward);
criterion_main!(benches);
