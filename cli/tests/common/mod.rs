//! The library's test helpers (inputs, GPU contexts, the f64 reference), shared
//! with the CLI tests, and the CLI's own helpers.
#![allow(dead_code, unused_imports)]

#[path = "../../../tests/common/mod.rs"]
mod library;

pub mod cli;

pub use library::*;
