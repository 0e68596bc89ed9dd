//! The fuzz targets' checks, shared with the regression test of the main suite
//! (tests/fuzz_regressions.rs compiles src/checks.rs directly).

pub mod checks;
