//! Sync.

pub mod engine;
pub mod normalize;
