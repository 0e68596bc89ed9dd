//! Shared test helpers: the reference data and the bundle build.rs produced for this profile.
#![allow(dead_code)]

use sealserve::bundle::{Bundle, HeapCopies, TrustPolicy, VerifiedBundle};
use sealserve::engine::{self, EngineConfig, LoadedModel};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The reference data vendored into the repository (`tests/data/reference`, see its README).
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference")
}

#[derive(Deserialize, Clone)]
pub struct GoldenInput {
    pub index: usize,
    pub text: String,
    pub num_tokens: usize,
    pub truncated: bool,
    pub input_ids: Vec<u32>,
    pub tokens: Vec<String>,
    pub embedding: Vec<f32>,
    #[serde(default)]
    pub raw: Option<GoldenRaw>,
}

#[derive(Deserialize, Clone)]
pub struct GoldenRaw {
    pub cls_last_hidden_state: Vec<f32>,
    pub last_token_last_hidden_state: Vec<f32>,
    pub mean_pooled_unnormalized: Vec<f32>,
}

#[derive(Deserialize)]
pub struct Golden {
    pub model: String,
    pub inputs: Vec<GoldenInput>,
}

/// minilm_golden.json, parsed once.
pub fn golden() -> &'static Golden {
    static GOLDEN: OnceLock<Golden> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = reference_dir().join("minilm_golden.json");
        let text = std::fs::read_to_string(&path).expect("read minilm_golden.json");
        serde_json::from_str(&text).expect("parse minilm_golden.json")
    })
}

/// The real MiniLM bundle build.rs wrote for this build profile (dev-signed unless the build
/// was given a release signature).
pub fn bundle_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        std::fs::read(env!("SEALSERVE_BUNDLE_PATH")).expect("read the bundle build.rs wrote")
    })
}

/// Verifies bundle bytes into heap copies that live for the rest of the test process (the
/// loaded model borrows them, as `serve`'s model borrows its verified copies).
pub fn verify_static(bytes: &[u8]) -> VerifiedBundle<'static> {
    let copies: &'static HeapCopies = Box::leak(Box::default());
    Bundle::parse(bytes)
        .expect("parse bundle")
        .verify(&TrustPolicy::unpinned(), &mut &*copies)
        .expect("verify bundle")
}

/// The verified real bundle, verified once per test process.
pub fn verified_bundle() -> &'static VerifiedBundle<'static> {
    static VERIFIED: OnceLock<VerifiedBundle<'static>> = OnceLock::new();
    VERIFIED.get_or_init(|| verify_static(bundle_bytes()))
}

/// The real model loaded on CPU with the given dtype.
pub fn load_cpu(dtype: &str) -> LoadedModel {
    let config = EngineConfig {
        device: "cpu".parse().expect("device"),
        dtype: dtype.parse().expect("dtype"),
        ..EngineConfig::default()
    };
    engine::load(verified_bundle(), &config).expect("load model")
}

/// Largest absolute component difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub mod binary;
pub mod child;
pub mod clients;
pub mod families;
pub mod inproc;
pub mod server;
pub mod tiny;

/// Runs the client script `script` of tests/clients against the server at `base` (with the
/// reference folder as its second argument), after checking the pinned package versions;
/// returns its output, panicking with it unless the script passes.
pub fn run_client(script: &str, base: &str) -> String {
    clients::run_python(&["check_versions.py"], &clients::clients_dir());
    let reference = reference_dir().display().to_string();
    clients::run_python(&[script, base, &reference], &clients::clients_dir())
}
