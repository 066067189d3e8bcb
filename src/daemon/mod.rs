//! Daemon.

pub mod lease;
pub mod scheduler;
pub mod worker;
