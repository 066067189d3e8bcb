//! The sync engine and the approved-OU gate.
//!
//! `engine` decides what to fetch and writes through the store's fenced
//! batches; `gate` is the approved-OU check; `context` is what engine and
//! gate share. RFC 822 bytes become rows in the `gmail-normalize` crate
//! (`crates/normalize`), which never does I/O.

pub mod context;
pub mod engine;
pub mod gate;
