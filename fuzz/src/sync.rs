//! `gmail_ingest::sync`, reduced to the normalizer.

#[path = "../../src/sync/normalize/mod.rs"]
pub mod normalize;
