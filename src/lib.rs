//! sealserve: one binary that carries a signed Hugging Face model inside itself and serves it.
//!
//! Data flows one way: build.rs (`source`, `spec`) → `bundle` (+ `manifest`, `signature`) →
//! verification → `model` load → `engine` → `batcher` → `infer` (the core layer) → `http`.
//! `telemetry` (metric names) and `limits` sit at the bottom, usable by every layer. The library
//! works on byte slices; only the `serve` binary embeds the model, so tests and benches never
//! link it.

pub mod batcher;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod cuda_libs;
pub mod engine;
pub mod harden;
pub mod http;
pub mod infer;
pub mod limits;
pub mod manifest;
pub mod memory;
pub mod model;
pub mod signature;
pub mod source;
pub mod spec;
pub mod telemetry;
