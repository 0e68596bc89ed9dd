//! What each fuzz target asserts about one input: no panic (a panic is the crash libFuzzer
//! reports), no unbounded recursion, and the invariants noted per check. Every check goes
//! through the library's public `sealserve::…` paths, the ones `serve` and `seal` use.
//!
//! Compiled twice: as the `sealserve-fuzz` library (the fuzz targets) and, through `#[path]`, by
//! tests/fuzz_regressions.rs, which runs the committed seeds and every saved crash in the normal
//! test suite. So it may use only what both have: sealserve, candle-core, serde_json, sha2.

use candle_core::{DType, Device};
use sealserve::bundle::{Bundle, HeapCopies, TrustPolicy};
use sealserve::manifest::{is_plain_file_name, Manifest};
use sealserve::model::bert::BertConfig;
use sealserve::model::{ModelFiles, Packed};
use sealserve::signature::{PublicKey, Signature};
use sealserve::spec::{BundleMetadata, Family, ModelSpec};
use sha2::{Digest, Sha256};

/// Request bodies of every route, decoded as the HTTP layer decodes them.
pub fn http_request(data: &[u8]) {
    use sealserve::http::types::{
        CmlModelRequest, EmbedRequest, OpenAiEmbeddingsRequest, TokenizeRequest,
    };
    if let Ok(request) = serde_json::from_slice::<EmbedRequest>(data) {
        let _ = request.inputs.into_vec();
    }
    if let Ok(request) = serde_json::from_slice::<OpenAiEmbeddingsRequest>(data) {
        let _ = request.input.into_vec();
    }
    if let Ok(request) = serde_json::from_slice::<TokenizeRequest>(data) {
        let _ = request.inputs.into_vec();
    }
    if let Ok(request) = serde_json::from_slice::<CmlModelRequest>(data) {
        let _ = request.request.inputs.into_vec();
    }
}

/// MANIFEST: whatever parses is canonical (writing it back gives the same bytes), with plain
/// file names and 64-hex digests, so a signature over it means one set of (name, digest) pairs.
pub fn manifest(data: &[u8]) {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    assert_eq!(manifest.to_bytes(), data, "a parsed MANIFEST is canonical");
    for (name, digest) in manifest.entries() {
        assert!(is_plain_file_name(name), "{name:?}");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{digest:?}"
        );
    }
}

/// Public keys (PKIX PEM, minisign, base64): a parsed key re-encodes to PEM and minisign forms
/// that parse back to the same key.
pub fn public_key(data: &[u8]) {
    let Ok(key) = PublicKey::parse(data) else {
        return;
    };
    assert_eq!(key.fingerprint().len(), 64);
    let pem = PublicKey::parse(key.to_pem().as_bytes()).expect("our own PEM parses");
    assert_eq!(pem.raw(), key.raw());
    let minisign = PublicKey::parse(key.to_minisign().as_bytes()).expect("our minisign parses");
    assert_eq!(minisign.raw(), key.raw());
}

/// A valid Ed25519 public key to verify fuzzed signatures against (RFC 8032 test 1).
const TEST_KEY: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

/// Signatures (minisign, base64, raw 64 bytes): verifying one never panics, and a parsed
/// signature re-encodes to forms that parse back to the same signature.
pub fn signature(data: &[u8]) {
    let Ok(signature) = Signature::parse(data) else {
        return;
    };
    let key = PublicKey::from_raw(&TEST_KEY).expect("RFC 8032 test key");
    let _ = signature.verify(b"MANIFEST bytes", &key);
    if let Some(base64) = signature.to_raw_base64() {
        let again = Signature::parse(base64.as_bytes()).expect("our base64 parses");
        assert_eq!(again.bytes, signature.bytes);
    }
    if let Some(minisig) = signature.to_minisign() {
        let again = Signature::parse(minisig.as_bytes()).expect("our minisig parses");
        assert_eq!(again, signature);
    }
}

/// Length of the bundle header: marker, version, index length, total length, index sha256.
const BUNDLE_HEADER: usize = 64;

/// Bundles: parsed as given, again with the header's index checksum recomputed (so that
/// mutations of the index reach the JSON parser and the entry checks instead of stopping at the
/// checksum), and located inside the input as `seal` does. Every entry lies inside the bundle
/// and has a plain name; verification (unpinned) never panics.
pub fn bundle(data: &[u8]) {
    check_bundle(data);
    if data.len() >= BUNDLE_HEADER && data.starts_with(b"SEALSERVE-BUNDLE") {
        let index_len = u32::from_le_bytes([data[20], data[21], data[22], data[23]]) as usize;
        if let Some(index) = data.get(BUNDLE_HEADER..BUNDLE_HEADER.saturating_add(index_len)) {
            let mut fixed = data.to_vec();
            fixed[32..BUNDLE_HEADER].copy_from_slice(&Sha256::digest(index));
            check_bundle(&fixed);
        }
    }
}

fn check_bundle(data: &[u8]) {
    if let Ok(bundle) = Bundle::parse(data) {
        check_parsed(&bundle, data);
    }
}

fn check_parsed(bundle: &Bundle, data: &[u8]) {
    let total = data.len() as u64;
    for entry in bundle.entries() {
        assert!(is_plain_file_name(&entry.name), "{:?}", entry.name);
        let inside = entry
            .offset
            .checked_add(entry.len)
            .is_some_and(|end| end <= total);
        assert!(inside, "entry {} points outside the input", entry.name);
        let content = bundle
            .read_entry(&entry.name)
            .expect("an entry inside the input reads");
        assert_eq!(content.map(|c| c.len() as u64), Some(entry.len));
    }
    let unpinned = TrustPolicy::unpinned();
    let copies = HeapCopies::default();
    let _ = bundle.verify(&unpinned, &mut &copies);
}

/// config.json of the tiny BERT the safetensors seeds were made for (tests/common/tiny.rs).
pub const TINY_CONFIG: &[u8] = br#"{"architectures":["BertModel"],"model_type":"bert","vocab_size":64,"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":64,"hidden_act":"gelu","max_position_embeddings":64,"type_vocab_size":2,"layer_norm_eps":1e-12,"position_embedding_type":"absolute","pad_token_id":0}"#;

/// safetensors: parsed through candle as `sealserve::model` does; every tensor loads or fails
/// cleanly; and the whole file, as the weights of the tiny BERT, loads through
/// `model::load` and runs a forward pass, or fails cleanly.
pub fn safetensors(data: &[u8]) {
    let Ok(tensors) = candle_core::safetensors::SliceSafetensors::new(data) else {
        return;
    };
    for (name, _) in tensors.tensors() {
        let _ = tensors.load(&name, &Device::Cpu);
    }
    // SAFETY: `model::load` takes `&'static` bytes because `serve` hands it verified copies
    // that live for the whole process. The model, which may borrow them, is dropped at the end
    // of this block, before `data` goes away.
    let weights: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(data) };
    let files = ModelFiles {
        config_json: TINY_CONFIG,
        safetensors: weights,
    };
    if let Ok(model) = sealserve::model::load(Family::Bert, files, DType::F32, &Device::Cpu) {
        if let Ok(batch) = Packed::from_sequences(&[vec![2u32, 5, 6, 3]]) {
            let _ = model.hidden_states(&batch, 1024);
        }
        drop(model);
    }
}

/// config.json, sealserve.json and model.toml: never a panic; sealserve.json that parses
/// survives its canonical re-encoding unchanged.
pub fn model_config(data: &[u8]) {
    let _ = BertConfig::from_json(data);
    if let Ok(metadata) = BundleMetadata::from_bytes(data) {
        let again = BundleMetadata::from_bytes(&metadata.to_canonical_bytes())
            .expect("canonical sealserve.json parses");
        assert_eq!(again, metadata);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ModelSpec::parse(text, "fuzz input");
    }
}

/// Text the GGUF check tokenizes: words, digits, punctuation, a control token's text and
/// non-ASCII, so every pre-tokenizer path and the added-token matcher run.
const GGUF_TEXT: &str = "Hello, world! 12 345 <|im_end|> naïve 日本";

/// GGUF (the generation models): parsed as `serve` parses it (`Gguf::read`: the header bounds
/// check, then candle), the hyper-parameters read, the model and tokenizer built through
/// `TextModel::from_gguf_bytes` (`serve`'s path), the tokenizer run on a short text and the
/// model for one prefill and one decode step. Where the model fails to load the tokenizer is
/// still built on its own, and where only the tokenizer fails the model is still run, so each
/// part is reached by inputs that break the other. Invariants: a loaded model's config is the
/// one `LlamaConfig::from_gguf` reads; token ids lie inside the tokenizer's vocabulary; every
/// logits row is vocabulary-wide.
pub fn gguf(data: &[u8]) {
    use sealserve::generate::{EngineError, TextModel};
    use sealserve::model::llama::config::LlamaConfig;
    use sealserve::model::llama::tokenizer::TextTokenizer;
    use sealserve::model::llama::{Gguf, LlamaModel};

    let Ok(gguf) = Gguf::read(data) else {
        return;
    };
    let config = LlamaConfig::from_gguf(&gguf.content);
    match TextModel::from_gguf_bytes(data) {
        Ok(text_model) => {
            let prompt = run_tokenizer(&text_model.tokenizer);
            let config = config.expect("a model that loads has a config");
            run_llama(&text_model.model, &config, &prompt);
        }
        Err(EngineError::Load(_)) => {
            if let Ok(tokenizer) = TextTokenizer::from_gguf(&gguf) {
                run_tokenizer(&tokenizer);
            }
        }
        Err(_) => {
            if let (Ok(config), Ok(model)) = (config, LlamaModel::load(&gguf)) {
                run_llama(&model, &config, &[0]);
            }
        }
    }
}

/// Encodes and decodes [`GGUF_TEXT`]; returns up to 8 of its ids as a prompt (`[0]` if none).
fn run_tokenizer(tokenizer: &sealserve::model::llama::tokenizer::TextTokenizer) -> Vec<u32> {
    let _ = tokenizer.token_to_id("<|im_end|>");
    let Ok(ids) = tokenizer.encode(GGUF_TEXT, true) else {
        return vec![0];
    };
    for &id in &ids {
        assert!((id as usize) < tokenizer.vocab_size(), "token id {id}");
    }
    let _ = tokenizer.decode(&ids, false);
    let _ = tokenizer.decode(&ids, true);
    if ids.is_empty() {
        vec![0]
    } else {
        ids.into_iter().take(8).collect()
    }
}

/// One prefill step over `prompt` and one decode step of the token it picks.
fn run_llama(
    model: &sealserve::model::llama::LlamaModel,
    config: &sealserve::model::llama::config::LlamaConfig,
    prompt: &[u32],
) {
    use sealserve::model::llama::{ForwardError, KvCache, LlamaModel, Scratch, SeqInput};
    fn step(
        model: &LlamaModel,
        cache: &mut KvCache,
        tokens: &[u32],
        scratch: &mut Scratch,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let mut batch = [SeqInput {
            cache,
            tokens,
            logits: true,
        }];
        model.forward(&mut batch, scratch).map(|l| l.to_vecs())
    }
    // Compared through Debug: fuzzed floats may be NaN, which is never equal to itself.
    assert_eq!(
        format!("{:?}", model.config()),
        format!("{config:?}"),
        "the loaded model's config"
    );
    let vocab = config.vocab_size;
    let mut cache = model.new_cache();
    let mut scratch = Scratch::default();
    let Ok(logits) = step(model, &mut cache, prompt, &mut scratch) else {
        return;
    };
    assert_eq!(logits.len(), 1);
    assert_eq!(logits[0].len(), vocab, "a logits row is vocabulary-wide");
    assert_eq!(cache.len(), prompt.len());
    // The arg-max, NaN-safe (random or fuzzed weights may give NaN).
    let next = logits[0]
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0 as u32;
    if let Ok(logits) = step(model, &mut cache, &[next], &mut scratch) {
        assert_eq!(logits[0].len(), vocab);
        assert_eq!(cache.len(), prompt.len() + 1);
    }
}
