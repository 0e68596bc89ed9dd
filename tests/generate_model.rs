//! The llama engine against the SmolLM2 references: tokenizer ids (llama.cpp and the reference
//! tokenizer.json), the prompt's last-position logits (f32 transformers) and greedy decoding
//! driven directly on the model (no scheduler). .ci/run runs this file a second time with
//! `SEALSERVE_LLM_ISA=avx2`, so the AVX2 kernels (AVX2-only Xeons and EPYCs) meet the same
//! references on the AVX-512 machine CI has.

mod generate_support;

// The sampler's own greedy choice (highest logit, lowest id among ties).
use sealserve::generate::sampling::argmax;

use generate_support::{assert_greedy_matches, assert_prompt_logits, golden, model, root};
use sealserve::model::llama::{Scratch, SeqInput};

/// Greedy decoding with one sequence, prefill in one step.
fn greedy(prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<f32>) {
    let (model, _) = model();
    let mut cache = model.new_cache();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut logits = model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens: prompt,
                logits: true,
            }],
            &mut scratch,
        )
        .unwrap()
        .row(0)
        .to_vec();
    let first = logits.clone();
    for _ in 0..steps {
        let next = argmax(&logits);
        out.push(next);
        if next == 2 {
            break;
        }
        logits = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: &[next],
                    logits: true,
                }],
                &mut scratch,
            )
            .unwrap()
            .row(0)
            .to_vec();
    }
    (out, first)
}

/// The kernels in use are the ones `SEALSERVE_LLM_ISA` asks for, so a run with it set really
/// checks those kernels against the references.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_cpu_kernels_follow_sealserve_llm_isa() {
    use sealserve::model::llama::quant::{cpu_kernels, CpuKernels};
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let vnni = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni");
    let want = match std::env::var("SEALSERVE_LLM_ISA").as_deref() {
        Ok("scalar") => CpuKernels::Portable,
        Ok("avx2") if avx2 => CpuKernels::Avx2,
        Ok("avx2") => CpuKernels::Portable,
        _ if vnni => CpuKernels::Avx512Vnni,
        _ if avx2 => CpuKernels::Avx2,
        _ => CpuKernels::Portable,
    };
    assert_eq!(cpu_kernels(), want);
}

#[test]
fn tokenizer_matches_llama_cpp_and_the_reference_tokenizer_json() {
    let (_, tokenizer) = model();
    let golden = golden();
    for case in &golden.llama_cpp_gguf.tokenizer_agreement {
        assert_eq!(
            tokenizer.encode(&case.text, true).unwrap(),
            case.llama_cpp_ids,
            "{:?}",
            case.text
        );
    }
    let gz = std::fs::read(root().join("tests/data/reference/smollm2/tokenizer.json.gz")).unwrap();
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json).unwrap();
    let reference = tokenizers::Tokenizer::from_bytes(&json).unwrap();
    let texts = [
        "Hello world",
        "   three leading spaces, trailing  ",
        "digits 0123456789 and 3.14159e-10, 1,000,000",
        "unicode: Ünïcödé ß Ωμέγα Привет 你好世界 こんにちは 🎉👍🏽 ‍",
        "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|endoftext|>",
        "tabs\tand\r\nwindows newlines\n\n\nand <not_a_special> token",
        "code: fn main() { println!(\"{}\", x+1); } // done",
        "",
    ];
    for text in texts {
        let want = reference.encode(text, false).unwrap().get_ids().to_vec();
        let got = tokenizer.encode(text, true).unwrap();
        assert_eq!(got, want, "{text:?}");
        // The byte table decodes back to the exact text.
        assert_eq!(tokenizer.decode(&got, false), text);
        assert_eq!(
            tokenizer.decode(&got, false),
            reference.decode(&want, false).unwrap()
        );
    }
}

#[test]
fn prompt_logits_match_the_f32_reference() {
    let (model, _) = model();
    for result in golden().results {
        let mut cache = model.new_cache();
        let logits = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: &result.prompt_ids,
                    logits: true,
                }],
                &mut Scratch::default(),
            )
            .unwrap()
            .row(0)
            .to_vec();
        assert_prompt_logits(&result, &logits);
    }
}

#[test]
fn greedy_tokens_match_the_references() {
    let golden = golden();
    for result in &golden.results {
        let (tokens, _) = greedy(&result.prompt_ids, result.generated_ids.len());
        assert_greedy_matches(&golden, result, &tokens);
    }
}
