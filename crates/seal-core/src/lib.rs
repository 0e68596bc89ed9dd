//! seal-core: what sealserve's build script and its `serve`/`seal` binaries must agree on, byte
//! for byte: the model pins (`spec`), the MANIFEST (`manifest`), keys and signatures
//! (`signature`), the bundle layout and its verification (`bundle`), and the build-side
//! resolution of pinned files (`source`), which keys may sign (`trust`), and where a bundle sits
//! in a `serve` binary (`placement`, feature `elf`).
//!
//! Why a crate of its own: build.rs writes the bundle and `serve` checks it. Both link this one
//! crate (build.rs as a build-dependency), so there is a single implementation of the format and
//! the build/serve boundary is a crate boundary.
//!
//! Layers, bottom up: `manifest` (names, hex, sha256) ← `signature`, `spec` ← `bundle` and
//! `trust` ← `source`. Nothing here reads the network or runs a model.

pub mod bundle;
pub mod manifest;
#[cfg(feature = "elf")]
pub mod placement;
pub mod signature;
pub mod source;
pub mod spec;
pub mod trust;
