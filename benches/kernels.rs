//! The packed matrix kernels alone, on one thread: GMAC/s (multiply-adds per second) of
//! `quant::matmul` per weight type and activation row count, for a 16-output tile that stays in
//! L1 (the kernel's arithmetic) and for a model-sized matrix read from memory.
//!
//! Why: a decode step's rate is mostly these kernels (61 % of an 8-stream step on the 2-core
//! EPYC Milan, 2026-12-02), and the generation bench mixes them with attention, the pool and the
//! memory of the hour. This isolates one kernel change at a time, e.g. a loop order, on the
//! machine at hand. `cargo bench --bench kernels`; `SEALSERVE_LLM_ISA=avx2` (or `scalar`)
//! picks the AVX2 (portable) kernels on a machine that has wider ones. Prints one JSON object per
//! case. The weights are random blocks with small scales; the arithmetic is the same for any.

use sealserve::model::llama::quant::{cpu_kernels, matmul, PackedMatrix, QuantKind, QuantizedRows};
use std::time::Instant;

/// `n × k` weights of `kind` as GGUF stores them: random quants, scale 0.01, minimum -0.05.
fn gguf_blocks(kind: QuantKind, n: usize, k: usize) -> Vec<u8> {
    let block = kind.gguf_block_bytes();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out: Vec<u8> = (0..n * k / 32 * block)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        })
        .collect();
    for b in out.chunks_exact_mut(block) {
        b[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if kind == QuantKind::Q4_1 {
            b[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    out
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    // SmolLM2-135M's shapes: k = 576 (hidden); 3072 = gate and up stacked; 49152 = the Q8_0
    // output projection (the tied token table).
    let cases = [
        (QuantKind::Q4_1, 16, 576, 1),
        (QuantKind::Q4_1, 16, 576, 4),
        (QuantKind::Q4_1, 16, 576, 8),
        (QuantKind::Q4_1, 3072, 576, 1),
        (QuantKind::Q4_1, 3072, 576, 8),
        (QuantKind::Q8_0, 16, 576, 8),
        (QuantKind::Q8_0, 49152, 576, 1),
        (QuantKind::Q8_0, 49152, 576, 8),
    ];
    for (kind, n, k, rows) in cases {
        let w = PackedMatrix::pack(kind, k, &[(&gguf_blocks(kind, n, k), n)])
            .expect("generated blocks have the right size");
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919) % 255) as f32 / 100.0 - 1.27)
            .collect();
        let mut a = QuantizedRows::default();
        a.quantize(&x, k);
        let mut out = vec![0f32; rows * n];
        let macs = (rows * n * k) as f64;
        // ~0.5 s of work a case at ~50 GMAC/s, at least 3 calls.
        let calls = ((2.5e10 / macs) as usize).max(3);
        let seconds = pool.install(|| {
            for _ in 0..calls.div_ceil(5) {
                matmul(&w, &a, &mut out);
            }
            let start = Instant::now();
            for _ in 0..calls {
                matmul(&w, &a, &mut out);
            }
            start.elapsed().as_secs_f64()
        });
        println!(
            "{}",
            serde_json::json!({
                "kernels": cpu_kernels().to_string(),
                "kind": format!("{kind:?}"),
                "outputs": n,
                "inputs": k,
                "rows": rows,
                "weight_bytes": w.cols() / 32 * kind.gguf_block_bytes() * n,
                "gmac_s": macs * calls as f64 / seconds / 1e9,
                "us_per_call": seconds / calls as f64 * 1e6,
            })
        );
    }
}
