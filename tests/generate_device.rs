//! The GPU engine's code path (`model::llama::on_device`: candle tensor ops and GGUF matmuls)
//! run on the CPU, against the same SmolLM2 references as the CPU engine: the prompt's
//! last-position logits (f32 transformers), greedy tokens (llama.cpp on the same quantized
//! weights, the f32 reference up to its first near tie), and batching that does not change
//! results. `scripts/gpu-check --generate` runs the same checks through `serve` on a GPU.

mod generate_support;

// The sampler's own greedy choice (highest logit, lowest id among ties).
use sealserve::generate::sampling::argmax;

use candle_core::Device;
use generate_support::{
    assert_greedy_matches, assert_prompt_logits, gguf_bytes, golden, model, reference_gaps,
};
use sealserve::model::llama::{Gguf, KvCache, LlamaModel, Scratch, SeqInput};
use std::sync::OnceLock;

fn candle_model() -> &'static LlamaModel {
    static MODEL: OnceLock<LlamaModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let gguf = Gguf::read(gguf_bytes()).expect("GGUF parses");
        LlamaModel::load_candle(&gguf, &Device::Cpu).expect("model loads as candle tensors")
    })
}

fn run(
    model: &LlamaModel,
    cache: &mut KvCache,
    tokens: &[u32],
) -> Result<Vec<Vec<f32>>, sealserve::model::llama::ForwardError> {
    model
        .forward(
            &mut [SeqInput {
                cache,
                tokens,
                logits: true,
            }],
            &mut Scratch::default(),
        )
        .map(|logits| logits.to_vecs())
}

fn step(model: &LlamaModel, cache: &mut KvCache, tokens: &[u32]) -> Vec<f32> {
    run(model, cache, tokens).expect("step runs").remove(0)
}

/// Greedy decoding of one sequence (prefill in one step), stopping at `<|endoftext|>`/`<|im_end|>`.
fn greedy(model: &LlamaModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut logits = step(model, &mut cache, prompt);
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = argmax(&logits);
        out.push(next);
        if next == 0 || next == 2 {
            break;
        }
        logits = step(model, &mut cache, &[next]);
    }
    out
}

/// How far the candle path's prompt logits may sit from the f32 reference: one logit, and the
/// mean over all 30 (three prompts, top 10 each).
///
/// Why not the 0.5 per logit, which the CPU engine meets on every kernel set
/// (`tests/generate_model.rs`, and CI again with `SEALSERVE_LLM_ISA=avx2`): this path runs
/// candle's own CPU kernels, and candle picks those by the CPU it finds. The same binary gave
/// the logit of token 216 (plain_completion) as 12.968 on an AVX-512 CPU and 13.215 on an
/// AVX2-only one (reference 12.713): a CI machine without AVX-512 failed at 0.502, and
/// `qemu-x86_64 -cpu Haswell` reproduces that figure to the last digit. Measured 2026-12-03 on
/// the 30 logits (largest / mean gap): AMD EPYC Zen 5 with AVX-512 0.273 / 0.144; AVX2 and
/// FMA (Haswell under qemu) 0.502 / 0.173; AVX2 without FMA 0.484 / 0.164. The CPU engine
/// on the same machines: 0.426 / 0.124 and 0.306 / 0.089. No server runs this path on a CPU
/// (`--device cpu` is the CPU engine): it stands in for the CUDA engine, whose GPU check
/// holds it to the greedy references (`scripts/gpu_check_generate.py`). So a single logit
/// gets half as much room again, and the mean stays well under the CPU engine's worst logit.
const DEVICE_PATH_MAX_GAP: f32 = 0.75;
const DEVICE_PATH_MEAN_GAP: f32 = 0.25;

#[test]
fn prompt_logits_match_the_f32_reference_and_the_cpu_engine() {
    let (cpu, _) = model();
    let device = candle_model();
    assert!(matches!(device.device(), Device::Cpu));
    let mut gaps = Vec::new();
    let mut reference = Vec::new();
    for result in golden().results {
        let got = step(device, &mut device.new_cache(), &result.prompt_ids);
        let ours = step(cpu, &mut cpu.new_cache(), &result.prompt_ids);
        assert_prompt_logits(&result, &ours);
        for (id, want, g) in reference_gaps(&result, &got) {
            assert!(
                (g - want).abs() < DEVICE_PATH_MAX_GAP,
                "candle path, {}: logit of {id} is {g}, reference {want}",
                result.name
            );
            reference.push((g - want).abs());
            let o = ours[id as usize];
            // Both quantize activations to 8 bits per 32-block over the same weights; the CPU
            // engine keeps keys and values in f16, this path in f32, and sums in another order.
            // A flipped activation rounding moves a logit by a few tenths (one-ulp changes in
            // the CPU engine's norm or SiLU moved single logits by up to 0.4), so a single logit
            // is held only to what the two reference bounds imply, and the engines'
            // agreement to the mean below.
            assert!(
                (g - o).abs() < 1.0,
                "{}: logit of {id} is {g} here, {o} on the CPU engine",
                result.name
            );
            gaps.push((g - o).abs());
        }
    }
    let mean = reference.iter().sum::<f32>() / reference.len() as f32;
    assert!(
        mean < DEVICE_PATH_MEAN_GAP,
        "candle path: mean logit gap to the f32 reference {mean}"
    );
    // Measured 2026-11-30 on the 30 logits: mean gap 0.19 (0.17 before the CPU engine's vector
    // SiLU and 16-lane norm sums), largest single gap 0.53. Each engine alone is also held to
    // the f32 reference above.
    let mean = gaps.iter().sum::<f32>() / gaps.len() as f32;
    assert!(mean < 0.35, "mean logit gap to the CPU engine {mean}");
}

#[test]
fn greedy_tokens_match_the_references() {
    let golden = golden();
    let model = candle_model();
    for result in &golden.results {
        let tokens = greedy(model, &result.prompt_ids, result.generated_ids.len());
        assert_greedy_matches(&golden, result, &tokens);
    }
}

/// Three sequences in one step, one of them prefilling while the others decode, give exactly
/// the logits each gets alone: batching must not change results.
#[test]
fn batching_does_not_change_results() {
    let model = candle_model();
    let prompts: Vec<Vec<u32>> = golden()
        .results
        .iter()
        .map(|r| r.prompt_ids.clone())
        .collect();
    let steps = 6;
    // Alone: each prompt, then `steps` greedy tokens, logits of every step kept.
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| {
            let mut cache = model.new_cache();
            let mut all = vec![step(model, &mut cache, p)];
            for _ in 0..steps {
                let next = argmax(all.last().expect("logits"));
                all.push(step(model, &mut cache, &[next]));
            }
            all
        })
        .collect();
    // Together: sequence 0 and 1 prefill in one step; sequence 2 joins (prefill) at step 2.
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for t in 0..=steps + 2 {
        let mut pending: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let joins_at = if i == 2 { 2 } else { 0 };
            if t < joins_at || logits[i].len() > steps {
                continue;
            }
            let tokens = match logits[i].last() {
                None => p.clone(),
                Some(l) => vec![argmax(l)],
            };
            pending.push((i, tokens));
        }
        if pending.is_empty() {
            break;
        }
        let mut rest: &mut [KvCache] = &mut caches;
        let mut inputs = Vec::new();
        let mut taken = 0;
        for (i, tokens) in &pending {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - taken);
            let (cache, tail) = tail.split_first_mut().expect("cache");
            rest = tail;
            taken = i + 1;
            inputs.push(SeqInput {
                cache,
                tokens,
                logits: true,
            });
        }
        let out = model
            .forward(&mut inputs, &mut Scratch::default())
            .expect("step runs")
            .to_vecs();
        for ((i, _), l) in pending.iter().zip(out) {
            logits[*i].push(l);
        }
    }
    for (i, (together, alone)) in logits.iter().zip(&alone).enumerate() {
        assert_eq!(together.len(), alone.len(), "sequence {i}");
        for (s, (a, b)) in together.iter().zip(alone).enumerate() {
            assert!(a == b, "sequence {i}, step {s}: batched logits differ");
        }
    }
}

/// Why `model` refused a step of `tokens` on `cache`.
fn refusal(model: &LlamaModel, cache: &mut KvCache, tokens: &[u32]) -> String {
    run(model, cache, tokens).expect_err("refused").to_string()
}

/// A cache of one engine is refused by the other, not misread; so is a token id outside the
/// vocabulary.
#[test]
fn caches_do_not_cross_engines() {
    let (cpu, _) = model();
    let device = candle_model();
    let err = refusal(device, &mut cpu.new_cache(), &[1]);
    assert!(err.contains("another model"), "{err}");
    let err = refusal(cpu, &mut device.new_cache(), &[1]);
    assert!(err.contains("another model"), "{err}");
    let err = refusal(device, &mut device.new_cache(), &[u32::MAX]);
    assert!(err.contains("outside the vocabulary"), "{err}");
    // A refused step loses nothing: a good cache next to a foreign one still works after.
    let mut good = device.new_cache();
    step(device, &mut good, &[1, 2]);
    let mut foreign = cpu.new_cache();
    let err = device
        .forward(
            &mut [
                SeqInput {
                    cache: &mut good,
                    tokens: &[3],
                    logits: true,
                },
                SeqInput {
                    cache: &mut foreign,
                    tokens: &[3],
                    logits: true,
                },
            ],
            &mut Scratch::default(),
        )
        .expect_err("refused")
        .to_string();
    assert!(err.contains("another model"), "{err}");
    assert_eq!(good.len(), 2);
    assert_eq!(step(device, &mut good, &[3]).len(), cpu.config().vocab_size);
}
