//! Fuzz targets for everything voicegate parses off the network, one function per parser,
//! each taking arbitrary bytes and asserting only what must hold for any input: no panic,
//! and a few cheap consistency properties.
//!
//! Two drivers call them: `fuzz/` (cargo-fuzz with libFuzzer, nightly, coverage-guided; see
//! `fuzz/README.md`) and this crate's own test, a seeded mutation run over a corpus of valid
//! inputs that runs on stable in `cargo test` ([`mutate`]).

pub mod mutate;
pub mod targets;
