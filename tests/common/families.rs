//! The tiny model-family fixtures of tests/data/families (scripts/make-family-fixtures) sealed
//! into signed bundles in memory and loaded as `serve` loads its own: family, task and pooling
//! come from the signed `sealserve.json`.

use super::tiny;
use sealserve::bundle::VerifiedBundle;
use sealserve::engine::{self, EngineConfig, EngineError, LoadedModel};
use sealserve::spec::{Family, FileRole, Pooling, Task};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fixtures' `max_seq_length` (reference.json).
pub const MAX_SEQ: usize = 40;

/// A fixture's folder.
pub fn dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/families")
        .join(fixture)
}

/// One file of a fixture.
pub fn read(fixture: &str, file: &str) -> Vec<u8> {
    let path = dir(fixture).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture's reference.json.
pub fn reference(fixture: &str) -> Value {
    serde_json::from_slice(&read(fixture, "reference.json")).expect("reference.json")
}

/// The fixture sealed (signed, verified) under the given family, task and pooling.
pub fn sealed(
    fixture: &str,
    family: Family,
    task: Task,
    pooling: Pooling,
) -> VerifiedBundle<'static> {
    let weights = read(fixture, "model.safetensors");
    let tokenizer = read(fixture, "tokenizer.json");
    let config = read(fixture, "config.json");
    let files: Vec<(&str, FileRole, &[u8])> = vec![
        ("model.safetensors", FileRole::Weights, &weights),
        ("tokenizer.json", FileRole::Tokenizer, &tokenizer),
        ("config.json", FileRole::Config, &config),
    ];
    let mut spec = tiny::spec(&files);
    spec.model.id = format!("test/{fixture}");
    spec.model.family = family;
    spec.model.task = task;
    spec.model.pooling = pooling;
    spec.model.max_seq_length = MAX_SEQ;
    let (bytes, _key) = tiny::seal(&spec, &files, true);
    super::verify_static(&bytes)
}

/// A sealed bundle loaded on CPU in f32, as `serve` loads it.
pub fn load(bundle: &VerifiedBundle<'static>) -> Result<LoadedModel, EngineError> {
    let config = EngineConfig {
        device: "cpu".parse().expect("device"),
        dtype: "f32".parse().expect("dtype"),
        ..EngineConfig::default()
    };
    engine::load(bundle, &config)
}

/// A JSON array of numbers as f32.
pub fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}
