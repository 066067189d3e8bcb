//! The normalizer, compiled from the main package's own source files.
//!
//! `sync::normalize` is pure and total and uses nothing of the crate but
//! `domain` (ARCHITECTURE.md), so the fuzz build includes exactly those files
//! by path, at the module paths they have in `gmail_ingest`: the code fuzzed
//! is the code shipped, without building the daemon around it. Should the
//! normalizer ever import another module of the crate, this build fails and
//! `.ci/run` says so.

#[path = "../../src/domain.rs"]
pub mod domain;

pub mod sync;
