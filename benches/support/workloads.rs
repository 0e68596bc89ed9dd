//! The benchmark workloads shared by `benches/engine.rs` and `benches/workloads.rs` (and, through
//! `workloads --emit`, by scripts/bench_vs_python.py), so every comparison runs the same ids.
//!
//! Why built from real text: a forward's cost does not depend on which ids it sees, but the
//! tokenizer's does, and realistic ids keep the embedding gather honest (rows spread over the
//! table, not one row repeated). Each sequence is `[CLS]` + exactly `tokens - 2` word pieces of
//! English prose + `[SEP]`, so no forward is padded and both implementations see the same shapes.

#![allow(dead_code)]

use sealserve::bundle::{Bundle, HeapCopies, TrustPolicy, VerifiedBundle};
use sealserve::engine::{self, EngineConfig, LoadedModel, TextTokenizer};

/// Batch × tokens per sequence; named `b{batch}x{tokens}`.
pub const WORKLOADS: [(usize, usize); 4] = [(1, 16), (32, 128), (256, 32), (64, 256)];

/// Public-domain-style prose written for these benches (no licence questions): varied
/// vocabulary, punctuation and a few rare words, like the sentences an embedding service sees.
const CORPUS: &str = "The river town woke slowly under a low grey sky, and the ferry sounded \
its horn twice before leaving the pier. Merchants opened their shutters, children ran toward the \
schoolhouse, and an old man fed pigeons from a paper bag while reading yesterday's newspaper. \
In the laboratory across the square, researchers calibrated a spectrometer, argued about noise \
in their measurements, and finally agreed to repeat the experiment with fresh samples. \
Embedding models map sentences to vectors so that similar meanings land close together; a \
search engine can then rank documents by cosine similarity instead of counting shared words. \
Good retrieval depends on clean data, sensible chunking, and evaluation against questions that \
real users actually ask. The committee postponed its decision on the new bridge, citing budget \
overruns, environmental surveys, and a petition signed by nearly four thousand residents. \
Meanwhile the bakery on Elm Street sold out of rye bread by nine o'clock, as it does every \
Saturday, and the queue stretched past the pharmacy. A hiker lost in the fog followed the sound \
of a stream downhill until she reached a logging road and, eventually, a farmhouse with a \
telephone. Astronomers reported a faint companion orbiting the nearby dwarf star, detected from \
tiny wobbles in its spectrum over eleven years of observations. The quarterly report showed \
revenue up seven percent, although shipping delays and higher energy prices squeezed margins in \
the European division. Photosynthesis converts light, water and carbon dioxide into sugars, \
releasing oxygen as a by-product that most life on Earth depends upon. She tuned the violin, \
glanced at the conductor, and began the slow movement with a tone so quiet the audience leaned \
forward to hear it. Volunteers cleared invasive shrubs from the wetland, planted native sedges, \
and installed nesting boxes for swallows along the boardwalk. Compilers translate high-level \
programs into machine instructions, performing optimisations such as inlining, loop unrolling \
and vectorisation along the way. The museum's new exhibition traces the history of navigation, \
from Polynesian star charts and Norse sunstones to chronometers and satellite positioning. \
After the storm, linemen worked through the night restoring power to outlying villages, while \
the council opened the gymnasium as a warm shelter. Fermentation gives bread its rise, yogurt \
its tang and cheese its character, thanks to yeasts and bacteria that digest sugars slowly.";

/// One workload: the texts and the exact ids both implementations run.
pub struct Workload {
    pub name: String,
    pub batch: usize,
    pub tokens: usize,
    pub texts: Vec<String>,
    pub ids: Vec<Vec<u32>>,
}

/// The signed bundle build.rs wrote for this profile, read once and kept for the process (the
/// loaded model borrows it, as `serve` borrows its embedded static).
pub fn bundle_bytes() -> &'static [u8] {
    let path = env!("SEALSERVE_BUNDLE_PATH");
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read bundle {path}: {e}"));
    Box::leak(bytes.into_boxed_slice())
}

/// Parse + verify (every file copied and hashed, signature checked), as `serve` does at start,
/// into `copies`.
pub fn verify_into<'v>(bytes: &[u8], copies: &'v HeapCopies) -> VerifiedBundle<'v> {
    Bundle::parse(bytes)
        .expect("parse bundle")
        .verify(&TrustPolicy::unpinned(), &mut &*copies)
        .expect("verify bundle")
}

/// [`verify_into`] copies that live for the rest of the process (the loaded model borrows them).
pub fn verify(bytes: &[u8]) -> VerifiedBundle<'static> {
    verify_into(bytes, Box::leak(Box::default()))
}

/// CPU f32, the engine's defaults otherwise (`max_forward_tokens` overrides the forward size).
pub fn load(verified: &VerifiedBundle<'static>, max_forward_tokens: Option<usize>) -> LoadedModel {
    let config = EngineConfig {
        device: "cpu".parse().expect("device"),
        dtype: "f32".parse().expect("dtype"),
        max_forward_tokens,
        ..EngineConfig::default()
    };
    engine::load(verified, &config).expect("load model")
}

/// Word-piece count of one whitespace-free word. BERT's pre-tokenizer splits on whitespace and
/// WordPiece works per pre-token, so a text's count is the sum over its words (plus 2 specials).
fn pieces(tokenizer: &TextTokenizer, word: &str) -> usize {
    let encoded = tokenizer.encode(&[word], true).expect("tokenize word");
    encoded[0].ids.len() - 2
}

/// A text of exactly `tokens` ids (specials included), starting at word `start` of the corpus
/// and wrapping around; words that would overshoot are skipped.
fn text_of(
    tokenizer: &TextTokenizer,
    words: &[(&str, usize)],
    start: usize,
    tokens: usize,
) -> String {
    assert!(tokens >= 3, "need room for [CLS], one word piece and [SEP]");
    let mut text = String::new();
    let mut remaining = tokens - 2;
    let mut index = start;
    while remaining > 0 {
        let (word, count) = words[index % words.len()];
        index += 1;
        if count == 0 || count > remaining {
            continue;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
        remaining -= count;
    }
    let check = tokenizer.encode(&[text.as_str()], false).expect("tokenize");
    assert_eq!(
        check[0].ids.len(),
        tokens,
        "built text has the wrong length: {text}"
    );
    text
}

/// Builds `batch` distinct texts of exactly `tokens` ids each, and their ids.
pub fn build(tokenizer: &TextTokenizer, batch: usize, tokens: usize) -> Workload {
    let words: Vec<(&str, usize)> = CORPUS
        .split_whitespace()
        .map(|w| (w, pieces(tokenizer, w)))
        .collect();
    // Different starting words (a stride coprime with most corpus sizes) so texts differ.
    let texts: Vec<String> = (0..batch)
        .map(|i| text_of(tokenizer, &words, i * 37 + tokens, tokens))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids: Vec<Vec<u32>> = tokenizer
        .encode(&refs, false)
        .expect("tokenize workload")
        .into_iter()
        .map(|e| e.ids)
        .collect();
    Workload {
        name: format!("b{batch}x{tokens}"),
        batch,
        tokens,
        texts,
        ids,
    }
}

/// All four workloads.
pub fn build_all(tokenizer: &TextTokenizer) -> Vec<Workload> {
    WORKLOADS
        .iter()
        .map(|(batch, tokens)| build(tokenizer, *batch, *tokens))
        .collect()
}
