//! The sync engine and the pure MIME normalizer.
//!
//! `engine` decides what to fetch and writes through the store's fenced
//! batches; `gate` is the approved-OU check; `normalize` turns RFC 822 bytes
//! into rows and never does I/O; `context` is what engine and gate share.

pub mod context;
pub mod engine;
pub mod gate;
pub mod normalize;
