//! sealserve: one binary that carries a signed Hugging Face model inside itself and serves it.
//!
//! Data flows one way: build.rs (`source`, `spec`) → `bundle` (+ `manifest`, `signature`), or
//! `remote` for a bundle fetched by `--model-url` → verification → `model` load → `engine` →
//! `batcher` → `infer` (the core layer) → `http`.
//! Text generation (`generate`) is a second core beside `infer`, with its own scheduler over the
//! decoder families. `telemetry` (metric names) and `limits` sit at the bottom, usable by every
//! layer. The library works on byte slices; only the `serve` binary embeds the model, so tests
//! and benches never link it.
//!
//! The bundle format and its checks live in the `seal-core` crate, which build.rs links as a
//! build-dependency; they are re-exported here so `sealserve::bundle::…` paths stay valid.

pub use seal_core::{bundle, manifest, placement, signature, source, spec};

pub mod batcher;
pub mod config;
pub mod cuda_libs;
pub mod engine;
pub mod exit;
pub mod generate;
pub mod harden;
pub mod http;
pub mod infer;
pub mod limits;
pub mod memory;
pub mod model;
pub mod remote;
pub mod seal;
pub mod telemetry;
pub mod trust;
